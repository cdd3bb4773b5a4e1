"""A real HTTP server on loopback speaking the OpenAI Responses API (streaming SSE), scripted by a test.

The real Codex CLI reaches it through the control room's broker (``api_base`` of the session): only
the model's answers are scripted. Each script item answers one ``POST /v1/responses`` that offers
tools (the agent's turns), in order:

- ``shell("cmd")`` → one ``exec_command``/``shell`` function call (whichever the CLI offers);
  ``patch("*** Begin Patch ...")`` → one ``apply_patch`` call; ``call("name", {...})`` any function;
  ``turn(item, item, ...)`` several;
- ``text("...")`` → a final assistant message.

When the script runs out, the server answers ``text("done")``. Requests without tools (the CLI's
side calls) get a short text and do not use up the script. Every request body is kept in
``requests``; each answer reports input 100, output 20 tokens.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INPUT_TOKENS = 100
OUTPUT_TOKENS = 20

_ids = iter(range(1, 1_000_000))


def call(name: str, arguments: dict) -> dict:
    return {"type": "function_call", "call_id": f"call_{next(_ids):04d}", "name": name, "arguments": arguments}


def shell(command: str) -> dict:
    """A shell command, as whichever shell tool the CLI offers (filled in when it is answered)."""
    return {"type": "shell", "call_id": f"call_{next(_ids):04d}", "command": command}


def patch(body: str) -> dict:
    return {"type": "patch", "call_id": f"call_{next(_ids):04d}", "patch": body}


def add_file(path: str, content: str) -> dict:
    lines = "".join(f"+{line}\n" for line in content.splitlines())
    return patch(f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n")


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def turn(*items: dict) -> list[dict]:
    return list(items)


def _tool_names(body: dict) -> dict[str, dict]:
    names = {}
    for tool in body.get("tools") or []:
        name = tool.get("name") or (tool.get("function") or {}).get("name")
        if name:
            names[name] = tool
    return names


def _output_item(item: dict, offered: dict[str, dict]) -> dict:
    if item["type"] == "text":
        return {
            "type": "message",
            "id": f"msg_{next(_ids)}",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": item["text"], "annotations": []}],
        }
    if item["type"] == "shell":
        if "exec_command" in offered:
            name, arguments = "exec_command", {"cmd": item["command"]}
        elif "shell_command" in offered:
            name, arguments = "shell_command", {"command": item["command"]}
        else:
            name, arguments = "shell", {"command": ["bash", "-lc", item["command"]]}
        item = {"type": "function_call", "call_id": item["call_id"], "name": name, "arguments": arguments}
    if item["type"] == "patch":
        tool = offered.get("apply_patch") or {}
        if tool.get("type") == "custom":
            return {
                "type": "custom_tool_call",
                "id": f"ctc_{next(_ids)}",
                "status": "completed",
                "call_id": item["call_id"],
                "name": "apply_patch",
                "input": item["patch"],
            }
        item = {
            "type": "function_call",
            "call_id": item["call_id"],
            "name": "apply_patch",
            "arguments": {"input": item["patch"]},
        }
    return {
        "type": "function_call",
        "id": f"fc_{next(_ids)}",
        "status": "completed",
        "call_id": item["call_id"],
        "name": item["name"],
        "arguments": json.dumps(item["arguments"]),
    }


class ResponsesServer:
    def __init__(self, script: list | None = None) -> None:
        self.script = [item if isinstance(item, list) else [item] for item in (script or [])]
        self.requests: list[dict] = []
        self.agent_turns = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.requests.append({"path": self.path, "body": {}, "headers": dict(self.headers)})
                data = json.dumps({"object": "list", "data": [], "models": []}).encode()
                self.send_response(200 if "/models" in self.path else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) or b"{}"
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_raw": raw[:2000].decode("utf-8", "replace")}
                with server.lock:
                    server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    if body.get("tools"):
                        items = server.script.pop(0) if server.script else [text("done")]
                        server.agent_turns += 1
                    else:
                        items = [text("Session")]
                offered = _tool_names(body)
                self._stream(body.get("model") or "gpt-5-codex", [_output_item(i, offered) for i in items])

            def _event(self, data: dict) -> None:
                chunk = f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")

            def _stream(self, model: str, output: list[dict]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                rid = f"resp_{next(_ids)}"
                base = {"id": rid, "object": "response", "model": model, "status": "in_progress", "output": []}
                self._event({"type": "response.created", "response": base})
                for index, item in enumerate(output):
                    self._event({"type": "response.output_item.added", "output_index": index, "item": item})
                    self._event({"type": "response.output_item.done", "output_index": index, "item": item})
                usage = {
                    "input_tokens": INPUT_TOKENS,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": OUTPUT_TOKENS,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
                }
                done = {**base, "status": "completed", "output": output, "usage": usage}
                self._event({"type": "response.completed", "response": done})
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def tool_outputs(self) -> list[dict]:
        """The function_call_output items the agent sent back, in order (what it saw of each call)."""
        seen, results = set(), []
        for request in self.requests:
            for item in request["body"].get("input") or []:
                if isinstance(item, dict) and item.get("type") in ("function_call_output", "custom_tool_call_output"):
                    if item.get("call_id") not in seen:
                        seen.add(item.get("call_id"))
                        results.append(item)
        return results

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
