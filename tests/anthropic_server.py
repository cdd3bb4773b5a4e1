"""A real HTTP server on loopback speaking the Anthropic Messages API (streaming SSE), scripted by a test.

The real Claude Code CLI reaches it through the control room's broker (``api_base`` of the session):
only the model's answers are scripted. Each script item answers one ``/v1/messages`` request that
offers tools (the agent's turns), in order:

- ``bash("cmd")``, ``write("path", "text")``, ``tool("Name", {...})`` → one ``tool_use`` block;
  ``turn(block, block, ...)`` several;
- ``text("...")`` → a final text answer (``end_turn``).

When the script runs out, the server answers ``text("done")``. Requests without tools (the CLI's
side calls: titles, summaries) get a short text and do not use up the script. Every request body is
kept in ``requests``; ``usage`` says what each answer reports (input 100, output 20 tokens).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INPUT_TOKENS = 100
OUTPUT_TOKENS = 20

_ids = iter(range(1, 1_000_000))


def tool(name: str, tool_input: dict) -> dict:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": tool_input}


def bash(command: str) -> dict:
    return tool("Bash", {"command": command, "description": "run a command"})


def write(path: str, content: str) -> dict:
    return tool("Write", {"file_path": path, "content": content})


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def turn(*blocks: dict) -> list[dict]:
    return list(blocks)


class AnthropicServer:
    def __init__(self, script: list | None = None) -> None:
        self.script = [item if isinstance(item, list) else [item] for item in (script or [])]
        self.requests: list[dict] = []
        self.agent_turns = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                if "count_tokens" in self.path:
                    data = json.dumps({"input_tokens": INPUT_TOKENS}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                with server.lock:
                    if body.get("tools"):
                        blocks = server.script.pop(0) if server.script else [text("done")]
                        server.agent_turns += 1
                    else:
                        blocks = [text("Session")]
                self._stream(body.get("model") or "claude-sonnet-4-5", blocks)

            def _event(self, kind: str, data: dict) -> None:
                self.wfile.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

            def _stream(self, model: str, blocks: list[dict]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                usage = {"input_tokens": INPUT_TOKENS, "output_tokens": 1}
                self._event(
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": f"msg_{next(_ids)}",
                            "type": "message",
                            "role": "assistant",
                            "model": model,
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": usage,
                        },
                    },
                )
                for index, block in enumerate(blocks):
                    if block["type"] == "text":
                        start, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
                    else:
                        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
                    self._event(
                        "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
                    )
                    self._event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                    self._event("content_block_stop", {"type": "content_block_stop", "index": index})
                stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
                self._event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop, "stop_sequence": None},
                        "usage": {"output_tokens": OUTPUT_TOKENS},
                    },
                )
                self._event("message_stop", {"type": "message_stop"})
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def tool_results(self) -> list[dict]:
        """The tool_result blocks the agent sent back, in order (what it saw of each tool call)."""
        seen, results = set(), []
        for request in self.requests:
            for message in request["body"].get("messages") or []:
                content = message.get("content")
                for block in content if isinstance(content, list) else []:
                    if block.get("type") == "tool_result" and block["tool_use_id"] not in seen:
                        seen.add(block["tool_use_id"])
                        results.append(block)
        return results

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
