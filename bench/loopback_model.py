"""A loopback OpenAI-compatible model that takes its time, for fleet benchmarks and tests.

Hosted models answer in 5–60 s; the offline ``sim`` model answers at once, so it hides whether the
fleet keeps every session's model call in flight. This server speaks the chat-completions protocol
over real HTTP on 127.0.0.1 and answers each request after ``latency_s``. Its policy is stateless
(it reads the conversation it is sent): while the conversation holds fewer than ``steps - 1``
assistant turns it asks for one tool call (writing ``notes/step-<n>.txt``, or with ``tool="run_command"``
appending a line to ``runs.log``), then it calls ``finish``.
So a session of ``steps`` model calls makes ``steps - 1`` file edits and then finishes.

It records when each call started and ended, so callers can compute how many calls were in flight
at any moment (``in_flight_series``, ``peak``), and it can play a rate-limited provider:
``rate_limit_first`` answers the first N calls of each conversation with HTTP 429 and a
``Retry-After`` header.

    python -m bench.loopback_model --latency 5 --port 8011   # stand-alone, for trying by hand
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Call:
    started: float
    ended: float | None = None
    status: int = 200
    conversation: str = ""


@dataclass
class LoopbackModel:
    latency_s: float = 5.0
    steps: int = 4
    rate_limit_first: int = 0  # per conversation: answer this many calls with 429 first
    retry_after_s: float = 2.0
    tool: str = "write_file"  # or "run_command": `echo step-<n> >> runs.log` (each run leaves a line)
    # or a plan: the tool call of each step in turn ("{n}" in string arguments becomes the step
    # number), then finish; ``steps`` is then len(plan) + 1
    plan: list[tuple[str, dict]] | None = None
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.plan is not None:
            self.steps = len(self.plan) + 1
        self.lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0
        self._refused: dict[str, int] = {}
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    request = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
                    return
                model._serve(self, request)

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            # a hundred sessions connect at once: socketserver's default listen backlog (5) would drop
            # SYNs and cost the clients seconds of TCP retransmission, which a real provider does not
            request_queue_size = 1024

        self._handler = Handler
        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="loopback-model", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> LoopbackModel:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the policy -------------------------------------------------------------------------------
    def _serve(self, handler, request: dict) -> None:
        messages = request.get("messages") or []
        conversation = _conversation_key(messages)
        call = Call(started=time.time(), conversation=conversation)
        with self.lock:
            self.calls.append(call)
            refused = self._refused.get(conversation, 0)
            limited = refused < self.rate_limit_first
            if limited:
                self._refused[conversation] = refused + 1
            else:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
        if limited:
            call.status, call.ended = 429, time.time()
            handler._send(
                429,
                {"error": {"message": "rate limited (loopback)", "type": "rate_limit_error"}},
                {"Retry-After": f"{self.retry_after_s:g}"},
            )
            return
        try:
            time.sleep(self.latency_s)
            done = sum(1 for m in messages if m.get("role") == "assistant")
            if done + 1 >= self.steps:
                name, arguments = "finish", {"summary": f"loopback session done after {done + 1} model calls"}
            elif self.plan is not None:
                name, template = self.plan[done]
                arguments = {
                    k: v.replace("{n}", str(done + 1)) if isinstance(v, str) else v for k, v in template.items()
                }
            elif self.tool == "run_command":
                name, arguments = "run_command", {"command": f"echo step-{done + 1} >> runs.log"}
            else:
                name, arguments = "write_file", {"path": f"notes/step-{done + 1}.txt", "content": f"step {done + 1}\n"}
            payload = {
                "id": f"chatcmpl-loopback-{len(self.calls)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", "loopback"),
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "",
                            "tool_calls": [
                                {
                                    "id": f"call_{done + 1}",
                                    "type": "function",
                                    "function": {"name": name, "arguments": json.dumps(arguments)},
                                }
                            ],
                        },
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220},
            }
            handler._send(200, payload)
        finally:
            with self.lock:
                self._in_flight -= 1
                call.ended = time.time()

    # -- what happened ----------------------------------------------------------------------------
    def served(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.status == 200]

    def in_flight_at(self, moment: float) -> int:
        return sum(1 for c in self.served() if c.started <= moment and (c.ended is None or c.ended > moment))

    def in_flight_series(self, start: float, end: float, every_s: float = 0.1) -> list[int]:
        calls = self.served()
        series = []
        moment = start
        while moment <= end:
            series.append(sum(1 for c in calls if c.started <= moment and (c.ended is None or c.ended > moment)))
            moment += every_s
        return series


def _conversation_key(messages: list[dict]) -> str:
    """The first user message identifies a session's conversation (its brief names the session)."""
    for message in messages:
        if message.get("role") == "user":
            return str(message.get("content", ""))[:400]
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    with LoopbackModel(latency_s=args.latency, steps=args.steps) as model:
        print(f"loopback model at {model.api_base} ({args.latency:g} s per call); Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
