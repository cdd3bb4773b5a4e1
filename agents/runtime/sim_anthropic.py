"""The offline model (agents/runtime/sim.py) speaking the Anthropic Messages API, so it can drive the
real Claude Code CLI without any network (the demo's Claude Code sessions, tests).

The Claude Code runner's broker (agents/runtime/claude_code.py) answers a session's ``/v1/messages``
itself when the session's model is ``sim/…``, with :func:`answer` instead of forwarding upstream:

- the request's conversation (Anthropic content blocks: ``text``, ``tool_use``, ``tool_result``) is
  read back into the policy's own tools (``Read`` → ``read_file``, ``Bash`` → ``run_command``, a
  ``git add -A && git commit -m …`` → ``git_commit`` …), the ``<system-reminder>`` texts the CLI adds
  left out;
- the policy (``sim.decide``) gives the next call, written as Claude Code's tool (Read, Edit, Write,
  Bash; Glob and Grep when offered, else ``ls -R`` / ``grep -rn`` commands) in one ``tool_use`` block
  with absolute paths in the session's worktree; its
  ``finish`` is the final text answer (``end_turn``); its ``write_handoff`` has no Claude Code tool and
  is answered inside the policy (the summary says it all);
- a request that offers no tools (the CLI's side calls: titles, summaries) gets a short text;
- the answer is streamed as server-sent events when the request asks for it (``"stream": true``),
  with the token counts the broker meters (about four characters a token, like the policy's own).

Plain data in, bytes out: no Django, no database; the broker's HTTP thread calls it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from dataclasses import dataclass

from agents.runtime import sim

# the policy's own tools as commands, when the CLI offers no Glob / Grep (Claude Code 2.1 does not)
COMMIT_PREFIX = "git add -A && git commit -q -m "
LIST_PREFIX = "ls -R "
SEARCH_PREFIX = "grep -rn --exclude='.env*' -- "
APPROVED_MARKER = "A human approved this action"
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
MAX_INNER_TURNS = 4  # write_handoff answered inside the policy, at most this many times a request


def _clean(text: str) -> str:
    return _REMINDER.sub("", text or "").strip()


def _block_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text") or "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _relative(path: object, worktree: str) -> str:
    text = str(path or "")
    root = worktree.rstrip("/") + "/"
    if text.rstrip("/") == worktree.rstrip("/"):
        return "."
    return text[len(root) :] if text.startswith(root) else text


def _absolute(path: str, worktree: str) -> str:
    path = str(path or ".")
    if path.startswith("/"):
        return path
    if path in (".", "./", ""):
        return worktree
    return worktree.rstrip("/") + "/" + path.removeprefix("./")


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return []


def to_policy(name: str, tool_input: dict, worktree: str) -> tuple[str, dict]:
    """One of Claude Code's tool calls as the policy's own (name, arguments)."""
    get = tool_input.get if isinstance(tool_input, dict) else (lambda key, default=None: default)
    if name == "Bash":
        command = str(get("command") or "")
        words = _words(command)
        if command.startswith(COMMIT_PREFIX):
            return "git_commit", {"message": (_words(command[len(COMMIT_PREFIX) :]) or [""])[0]}
        if command.startswith(LIST_PREFIX) and len(words) == 3:
            return "list_files", {"path": words[2]}
        if command.startswith(SEARCH_PREFIX) and len(words) == 6:
            return "search", {"pattern": words[4], "path": words[5]}
        return "run_command", {"command": command}
    if name == "Read":
        return "read_file", {"path": _relative(get("file_path"), worktree)}
    if name == "Write":
        return "write_file", {"path": _relative(get("file_path"), worktree), "content": str(get("content") or "")}
    if name == "Edit":
        return "edit_file", {
            "path": _relative(get("file_path"), worktree),
            "old": str(get("old_string") or ""),
            "new": str(get("new_string") or ""),
        }
    if name in ("Glob", "LS"):
        return "list_files", {"path": _relative(get("path") or ".", worktree)}
    if name == "Grep":
        return "search", {"pattern": str(get("pattern") or ""), "path": _relative(get("path") or ".", worktree)}
    return name, dict(tool_input) if isinstance(tool_input, dict) else {}


def to_claude(call: sim._Call, worktree: str, offered: set[str]) -> tuple[str, dict]:
    """The policy's call as one of Claude Code's tools (name, input)."""
    args = call.args
    if call.name == "list_files":
        path = str(args.get("path") or ".")
        if "Glob" in offered:
            return "Glob", {"pattern": "**/*", "path": _absolute(path, worktree)}
        if "LS" in offered:
            return "LS", {"path": _absolute(path, worktree)}
        return "Bash", {"command": LIST_PREFIX + shlex.quote(path), "description": "List the repository"}
    if call.name == "search":
        pattern, path = str(args.get("pattern") or ""), str(args.get("path") or ".")
        if "Grep" in offered:
            return "Grep", {"pattern": pattern, "path": _absolute(path, worktree), "output_mode": "content", "-n": True}
        command = f"{SEARCH_PREFIX}{shlex.quote(pattern)} {shlex.quote(path)}"
        return "Bash", {"command": command, "description": "Search the code"}
    if call.name == "read_file":
        return "Read", {"file_path": _absolute(args["path"], worktree)}
    if call.name == "write_file":
        return "Write", {"file_path": _absolute(args["path"], worktree), "content": args.get("content", "")}
    if call.name == "edit_file":
        return "Edit", {
            "file_path": _absolute(args["path"], worktree),
            "old_string": args.get("old", ""),
            "new_string": args.get("new", ""),
        }
    if call.name == "git_commit":
        return "Bash", {
            "command": COMMIT_PREFIX + shlex.quote(str(args.get("message") or "work in progress")),
            "description": "Commit the work",
        }
    if call.name == "run_command":
        return "Bash", {"command": str(args.get("command") or ""), "description": call.say[:80] or "Run a command"}
    return call.name, dict(args)


def policy_messages(messages, worktree: str) -> list[dict]:
    """The Anthropic conversation as the OpenAI-shaped messages the policy reads."""
    out: list[dict] = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        role, content = message.get("role"), message.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
        if role == "assistant":
            text = _clean("\n".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text"))
            calls = []
            for block in blocks:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    name, args = to_policy(str(block.get("name") or ""), block.get("input") or {}, worktree)
                    calls.append({"id": str(block.get("id") or ""), "name": name, "arguments": args})
            out.append({"role": "assistant", "content": text, "tool_calls": calls})
            continue
        texts = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_result":
                result = _clean(_block_text(block.get("content")))
                if block.get("is_error") and not sim._failed(result):
                    result = f"error: {result}"
                out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id") or ""), "content": result})
            elif block.get("type") == "text":
                texts.append(_clean(str(block.get("text") or "")))
        text = "\n".join(t for t in texts if t)
        if not text:
            continue
        if APPROVED_MARKER in text:
            _forget_last_call(out)  # approved now: the policy makes the same call again
        out.append({"role": "user", "content": text})
    return out


def _forget_last_call(out: list[dict]) -> None:
    """Drop the last assistant turn and its results (the call a human has just approved)."""
    for index in range(len(out) - 1, -1, -1):
        if out[index]["role"] == "assistant" and out[index]["tool_calls"]:
            del out[index:]
            return
        if out[index]["role"] == "user":
            return


@dataclass(frozen=True)
class Answer:
    content: list[dict]  # Anthropic content blocks
    stop_reason: str
    model: str
    tokens_in: int
    tokens_out: int


def decide(body: dict, *, worktree: str, model: str) -> Answer:
    """The offline model's answer to one Messages API request."""
    model_name = str(body.get("model") or model or "sim/engineer")
    if not model_name.startswith("sim/"):
        model_name = model or "sim/engineer"
    persona, reported = sim._persona(model_name)
    raw_messages = body.get("messages")
    tokens_in = max(1, len(json.dumps(raw_messages, default=str)) // 4)
    tools = body.get("tools") or []
    if not tools:
        return Answer([{"type": "text", "text": "Claude Code session"}], "end_turn", reported, tokens_in, 5)
    offered = {str(t.get("name")) for t in tools if isinstance(t, dict)}
    messages = policy_messages(raw_messages, worktree)
    call = None
    for _ in range(MAX_INNER_TURNS):
        try:
            call = sim.decide(messages=messages, persona=persona)
        except Exception:  # the policy answers whatever the conversation holds
            call = sim._Call("finish", {"summary": "The offline model could not read this conversation."}, "")
        if call is None or call.name != "write_handoff":
            break
        inner = f"handoff_{len(messages)}"
        messages = messages + [
            {"role": "assistant", "content": call.say, "tool_calls": [{"id": inner, **_plain(call)}]},
            {"role": "tool", "tool_call_id": inner, "content": "handoff noted"},
        ]
    if call is None or call.name in ("finish", "write_handoff"):
        summary = (call.args.get("summary") if call is not None else "") or "Stopping here: a person should look."
        text = f"{call.say} {summary}".strip() if call is not None and call.say != "Done." else summary
        return Answer([{"type": "text", "text": text}], "end_turn", reported, tokens_in, max(1, len(text) // 4))
    name, tool_input = to_claude(call, worktree, offered)
    digest = hashlib.sha256(
        f"{tokens_in}|{name}|{json.dumps(tool_input, sort_keys=True)}".encode("utf-8", "surrogatepass")
    ).hexdigest()
    content: list[dict] = [
        {"type": "text", "text": call.say},
        {"type": "tool_use", "id": f"toolu_sim{digest[:21]}", "name": name, "input": tool_input},
    ]
    tokens_out = max(1, (len(call.say) + len(name) + len(json.dumps(tool_input))) // 4)
    return Answer(content, "tool_use", reported, tokens_in, tokens_out)


def _plain(call: sim._Call) -> dict:
    return {"name": call.name, "arguments": call.args}


def message_json(answer: Answer, message_id: str) -> bytes:
    return json.dumps(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": answer.content,
            "stop_reason": answer.stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": answer.tokens_in, "output_tokens": answer.tokens_out},
        }
    ).encode()


def sse_events(answer: Answer, message_id: str) -> list[bytes]:
    """The answer as the Messages API's stream of server-sent events."""

    def event(kind: str, data: dict) -> bytes:
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

    events = [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": answer.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": answer.tokens_in, "output_tokens": 1},
                },
            },
        )
    ]
    for index, block in enumerate(answer.content):
        start: dict[str, object]  # a tool_use block starts with a dict input, not only strings
        if block["type"] == "text":
            start, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events.append(
            event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
        )
        events.append(event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": answer.tokens_out},
            },
        )
    )
    events.append(event("message_stop", {"type": "message_stop"}))
    return events


@dataclass(frozen=True)
class Offline:
    """What the broker needs to answer a session's model calls itself (see the module docstring)."""

    worktree: str
    model: str
    pacing_s: float = 0.0

    def serve(self, handler, body: bytes, *, count_tokens: bool, tell) -> None:
        """Answer one request on ``handler`` (a ``BaseHTTPRequestHandler``); ``tell("model_done", usage)``
        for a metered call, as the broker does for a forwarded one."""
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return _send(handler, 400, "application/json", _error("the request body is not a JSON object"))
        if count_tokens:
            tokens = max(1, len(json.dumps(request.get("messages"), default=str)) // 4)
            return _send(handler, 200, "application/json", json.dumps({"input_tokens": tokens}).encode())
        started = time.monotonic()
        if self.pacing_s > 0:
            time.sleep(self.pacing_s)  # the demo's pace, like the built-in loop's offline model
        answer = decide(request, worktree=self.worktree, model=self.model)
        message_id = "msg_sim" + hashlib.sha256(message_json(answer, "").rstrip()).hexdigest()[:20]
        if request.get("stream"):
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-cache")
            handler.end_headers()
            for chunk in sse_events(answer, message_id):
                handler.wfile.write(chunk)
            handler.wfile.flush()
        else:
            _send(handler, 200, "application/json", message_json(answer, message_id))
        tell(
            "model_done",
            {
                "tokens_in": answer.tokens_in,
                "tokens_out": answer.tokens_out,
                "model": answer.model,
                "status": 200,
                "latency_ms": int((time.monotonic() - started) * 1000),
            },
        )


def _error(message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message}}).encode()


def _send(handler, status: int, content_type: str, data: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
