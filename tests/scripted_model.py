"""A real HTTP server on loopback speaking the OpenAI chat-completions protocol, scripted by a test.

LiteLLM reaches it as ``openai/<name>`` with ``api_base=http://127.0.0.1:<port>/v1``: the whole
real HTTP path (client, retries, parsing) is exercised; only the model's answers are scripted.

Each script item answers one request:
- ``calls([("read_file", {"path": "x"}), ...])`` → an assistant message with those tool calls
  (arguments given as a dict are JSON-encoded; a str is sent verbatim, e.g. invalid JSON);
- ``{"status": 500}`` → that HTTP status with an error body;
- ``{"sleep": 3}`` → answer late (timeouts);
- ``{"raw": "..."}`` → a 200 with that body verbatim;
- ``{"empty_choices": True}`` → a 200 with ``choices: []``.
When the script runs out, the server answers with a ``finish`` call.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def calls(items, content: str = "") -> dict:
    tool_calls = []
    for index, (name, args) in enumerate(items):
        arguments = args if isinstance(args, str) else json.dumps(args)
        tool_calls.append(
            {"id": f"call_{index}_{name}", "type": "function", "function": {"name": name, "arguments": arguments}}
        )
    return {"tool_calls": tool_calls, "content": content}


def finish(summary: str = "done") -> dict:
    return calls([("finish", {"summary": summary})])


class ScriptedModel:
    def __init__(self, script: list[dict] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    request = {"unparseable": body.decode(errors="replace")}
                with model.lock:
                    model.requests.append(request)
                    item = model.script.pop(0) if model.script else finish("script exhausted")
                if "sleep" in item:
                    time.sleep(item["sleep"])
                    item = item.get("then", finish("late"))
                if "status" in item:
                    self._send(
                        item["status"],
                        json.dumps(
                            {"error": {"message": f"scripted HTTP {item['status']}", "type": "server_error"}}
                        ).encode(),
                    )
                    return
                if "raw" in item:
                    self._send(200, item["raw"].encode())
                    return
                choices = (
                    []
                    if item.get("empty_choices")
                    else [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": item.get("content", ""),
                                "tool_calls": item.get("tool_calls") or None,
                            },
                            "finish_reason": "tool_calls" if item.get("tool_calls") else "stop",
                        }
                    ]
                )
                payload = {
                    "id": f"chatcmpl-{len(model.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "scripted"),
                    "choices": choices,
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }
                self._send(200, json.dumps(payload).encode())

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedModel:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, *items: dict) -> None:
        with self.lock:
            self.script.extend(items)
