"""Claude Code sessions (``agent_kind="claude-code"``): the real Claude Code CLI under the session's
grant, sandbox, budget and audit, one run of the CLI per Celery step.

    step (claim, checks, worktree: agents/runtime/loop.py) ─► broker on loopback (this thread's queue)
      ─► claude -p … --output-format stream-json, inside bubblewrap
           │  PreToolUse hook (agents/hook.py) ──POST /hook──► broker ─► evaluator ─► allow / deny
           │                                                   (ask → escalation, the run ends, parks)
           │  model calls (ANTHROPIC_BASE_URL) ──POST /v1/messages──► broker ─► budget ─► upstream
           │                                                   (usage metered: counters + audit)
           └─ stream-json events ─► transcript entries, tile activity, tool results
      ─► the CLI's result: succeeded (summary) · budget → blocked · stop switch → paused · error → failed

- **The broker** is a small HTTP server on 127.0.0.1 (a free port) that lives as long as the run. It
  only hands requests to this step's thread (a queue) and waits for the answer: every decision and
  every database write happens in the step's own thread. Both endpoints need the run's own secret
  (a new one per run: the hook sends it as a bearer token, the CLI as its API key), never a shared one.
- **Fail closed**: the hook denies when the broker is unreachable, slow or erroring (agents/hook.py);
  a tool the control room cannot map onto its resources asks a human; a tool call already
  authorized once (the same ``tool_use_id``) is refused, so a resumed run never runs one twice.
- **Tools → resources**: Bash → ``run_command`` (``Bash(...)`` and what the command touches),
  Write/Edit/MultiEdit/NotebookEdit → ``Edit(path)``, Read/Grep/Glob/LS → ``Read(path)``,
  WebFetch → ``Net(host)`` (evaluated as ``curl URL``), the CLI's own bookkeeping (TodoWrite, tasks)
  → allowed, anything else → ask.
- **Asks**: the hook answers deny ("waits for a human"), the run is ended and the session waits in
  ``needs_approval`` with an escalation bound to the exact action; the decision re-enqueues the
  step, which resumes the CLI's own session (``--resume <agent_ref>``) and tells it to try again:
  the approval then lets that exact action through once.
- **Sandbox**: the CLI runs in bubblewrap with the worktree writable, its own home (its session files,
  for ``--resume``) writable, the git objects and the agents' branch refs writable (so it can
  commit), its settings pinned read-only (the agent cannot switch the hook off), and no network:
  the sandbox has its own network namespace, whose loopback agents/relay.py relays to the broker's
  Unix socket (bound in), so the model endpoint and the hook are all it reaches. The grant's masks
  (agents/permissions/masks.py) are bound in it, computed over the worktree at the run's start;
  standing human approvals lift their guards for the run (``_run_masks``). Known limit:
  ``Net(...)`` rules do not give a Claude Code session network (WebFetch and ``curl`` fail there).
- **Commits** carry the trailers through a ``prepare-commit-msg`` hook the CLI's git uses
  (``core.hooksPath`` given in the environment, the hook read-only in the sandbox).
- **Offline**: a ``sim/…`` session's model calls are answered by the broker itself, the offline
  model speaking the Messages API with tool_use (agents/runtime/sim_anthropic.py), metered alike.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib.util
import json
import logging
import os
import queue
import secrets
import shlex
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone
from django.utils.text import Truncator

from agents import gitcli, services
from agents.models import AgentSession, AgentStep, Escalation, Grant, Status, ToolCall
from agents.permissions import CanonicalAction, Decision, canonicalize
from agents.permissions.masks import Masks, compute_masks, lifted_guards
from agents.runtime import sandbox
from agents.runtime.authorize import ToolCallRequest, authorize
from agents.runtime.loop import StepOutcome, _grant, _looks_like_tests, _sha, _Step, _summarize
from agents.selectors import budget_exhausted, standing_approvals_q
from agents.tools.executor import agent_env

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how often the run looks at the stop switches while the CLI works
HOOK_ANSWER_S = 20.0  # the broker answers "deny" when the step's thread has not decided by then
HOOK_TIMEOUT_S = 30  # the hook's own timeout (agents/hook.py); Claude Code's for the hook command
MAX_BODY = 64 * 1024 * 1024
KILL_GRACE_S = 2.0
UPSTREAM_DEFAULT = "https://api.anthropic.com"
# Claude Code's own bookkeeping: no file, command or network behind them
BOOKKEEPING_TOOLS = frozenset({"TodoWrite", "TaskCreate", "TaskUpdate", "TaskList", "TaskGet", "ToolSearch"})


class ClaudeCodeUnavailable(RuntimeError):
    pass


def claude_binary() -> str | None:
    """The Claude Code CLI: ``CONTROLROOM["CLAUDE_CODE_BIN"]`` when set, else the one the
    ``claude-agent-sdk`` wheel ships (``pip install 'controlroom[agents]'``); None when neither."""
    configured = settings.CONTROLROOM.get("CLAUDE_CODE_BIN") or ""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    spec = importlib.util.find_spec("claude_agent_sdk")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bundled" / "claude"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                with contextlib.suppress(OSError):
                    candidate.chmod(0o755)
            return str(candidate) if os.access(candidate, os.X_OK) else None
    return None


# -- tools → the evaluator's tools ------------------------------------------------------------------
def _relative(path: object, worktree: str) -> str:
    text = str(path or "")
    root = worktree.rstrip("/") + "/"
    if text == worktree.rstrip("/"):
        return "."
    return text[len(root) :] if text.startswith(root) else text


def map_tool(name: str, tool_input: dict, worktree: str) -> tuple[str, dict] | None:
    """(the evaluator's tool, its arguments) for one of Claude Code's tools; None when the control
    room cannot see what the tool does (then a human decides)."""
    if not isinstance(tool_input, dict):
        return None
    get = tool_input.get
    if name == "Bash":
        return "run_command", {"command": str(get("command") or "")}
    if name == "Write":
        return "write_file", {"path": _relative(get("file_path"), worktree), "content": str(get("content") or "")}
    if name == "Edit":
        return "edit_file", {
            "path": _relative(get("file_path"), worktree),
            "old": str(get("old_string") or ""),
            "new": str(get("new_string") or ""),
        }
    if name == "MultiEdit":
        edits = cast(list, get("edits")) if isinstance(get("edits"), list) else []
        return "edit_file", {
            "path": _relative(get("file_path"), worktree),
            "old": json.dumps([e.get("old_string") for e in edits if isinstance(e, dict)]),
            "new": json.dumps([e.get("new_string") for e in edits if isinstance(e, dict)]),
        }
    if name == "NotebookEdit":
        return "edit_file", {
            "path": _relative(get("notebook_path"), worktree),
            "old": "",
            "new": str(get("new_source") or ""),
        }
    if name == "Read":
        return "read_file", {"path": _relative(get("file_path"), worktree)}
    if name == "Grep":
        return "search", {"pattern": str(get("pattern") or ""), "path": _relative(get("path") or ".", worktree)}
    if name in ("Glob", "LS"):
        return "list_files", {"path": _relative(get("path") or ".", worktree)}
    if name == "WebFetch":
        return "run_command", {"command": f"curl -sS -- {shlex.quote(str(get('url') or ''))}"}
    if name in BOOKKEEPING_TOOLS:
        return "write_handoff", {"tool": name}
    return None


def _unknown_tool_action(name: str, tool_input) -> CanonicalAction:
    text = f"{name}: {json.dumps(tool_input, ensure_ascii=False, sort_keys=True, default=repr)}"
    return CanonicalAction(
        tool=name,
        resources=(),
        unknown="a tool the control room cannot check",
        outside=None,
        text=text,
        hash=_sha(text),
    )


# -- the broker ---------------------------------------------------------------------------------------
class _Ask:
    """A request handed to the step's thread; the HTTP thread waits for ``answer``."""

    def __init__(self, kind: str, payload) -> None:
        self.kind, self.payload = kind, payload
        self.answer = None
        self.done = threading.Event()

    def reply(self, answer) -> None:
        self.answer = answer
        self.done.set()


class _Handler(BaseHTTPRequestHandler):
    server_version = "controlroom-broker"

    def log_message(self, format, *args):
        logger.debug("broker: " + format, *args)

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _anthropic_error(self, status: int, kind: str, message: str) -> None:
        self._json(status, {"type": "error", "error": {"type": kind, "message": message}})

    def _openai_error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": code, "code": code}})

    def _api_error(self, status: int, message: str) -> None:
        if self.server.broker.api == "openai":  # type: ignore[attr-defined]  # Broker.__init__ sets it on both its servers
            return self._openai_error(status, "api_error", message)
        return self._anthropic_error(status, "api_error", message)

    def do_POST(self):
        broker: Broker = self.server.broker
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            return self._json(400, {"decision": "deny", "reason": "request too large or malformed"})
        body = self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        if path == "/hook":
            auth = self.headers.get("Authorization", "")
            if not broker.authentic(auth.removeprefix("Bearer ")):
                return self._json(403, {"decision": "deny", "reason": "wrong session secret"})
            try:
                payload = json.loads(body.decode("utf-8"))
            except ValueError:
                return self._json(400, {"decision": "deny", "reason": "the hook sent unreadable JSON"})
            answer = broker.ask("hook", payload, timeout=HOOK_ANSWER_S)
            if answer is None:
                answer = {"decision": "deny", "reason": "the control room did not decide in time, so this is denied"}
            return self._json(200, answer)
        if broker.api == "openai" and path.rstrip("/").endswith("/responses"):
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if not broker.authentic(key):
                return self._openai_error(401, "invalid_api_key", "wrong session secret")
            verdict = broker.ask("model", {"path": path, "ran": broker.ran_calls(body)}, timeout=HOOK_ANSWER_S) or {
                "ok": False,
                "reason": "the control room did not answer",
            }
            if not verdict.get("ok"):
                return self._openai_error(400, "invalid_request_error", verdict.get("reason", "refused"))
            return self._forward(broker, broker.filter_request(body), metered=True)
        if broker.api == "anthropic" and path.startswith("/v1/messages"):
            key = self.headers.get("x-api-key") or self.headers.get("Authorization", "").removeprefix("Bearer ")
            if not broker.authentic(key):
                return self._anthropic_error(401, "authentication_error", "wrong session secret")
            metered = not path.endswith("/count_tokens")
            if metered:
                verdict = broker.ask("model", {"path": path}, timeout=HOOK_ANSWER_S) or {
                    "ok": False,
                    "reason": "the control room did not answer",
                }
                if not verdict.get("ok"):
                    return self._anthropic_error(400, "invalid_request_error", verdict.get("reason", "refused"))
            if broker.offline is not None:  # the offline model answers here (agents/runtime/sim_anthropic.py)
                return broker.offline.serve(self, body, count_tokens=not metered, tell=broker.tell)
            return self._forward(broker, body, metered=metered)
        return self._json(404, {"error": "not found"})

    def _forward(self, broker: Broker, body: bytes, *, metered: bool) -> None:
        headers = {
            key: self.headers[key]
            for key in ("Content-Type", "anthropic-version", "anthropic-beta", "Accept", "OpenAI-Beta")
            if self.headers.get(key)
        }
        if broker.upstream_key:
            if broker.api == "openai":
                headers["Authorization"] = f"Bearer {broker.upstream_key}"
            else:
                headers["x-api-key"] = broker.upstream_key
        # the agent's path below the broker's root (an OpenAI base URL carries its own /v1)
        target = broker.upstream + (self.path.removeprefix("/v1") if broker.api == "openai" else self.path)
        request = urllib.request.Request(target, data=body, headers=headers, method="POST")
        started = time.monotonic()
        usage = {"tokens_in": 0, "tokens_out": 0, "model": "", "status": 0}
        try:
            response = urllib.request.urlopen(request, timeout=settings.CONTROLROOM["MODEL_TIMEOUT_S"])
        except urllib.error.HTTPError as exc:
            data = exc.read()
            self.send_response(exc.code)
            self.send_header("Content-Type", exc.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if metered:
                broker.tell("model_error", {"error": f"HTTP {exc.code}", "status": exc.code})
            return
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            self._api_error(502, f"the model endpoint is unreachable: {exc}")
            if metered:
                broker.tell("model_error", {"error": str(exc), "status": 502})
            return
        with response:
            usage["status"] = response.status
            content_type = response.headers.get("Content-Type", "")
            self.send_response(response.status)
            self.send_header("Content-Type", content_type or "application/json")
            if "event-stream" in content_type:
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                event: list[bytes] = []  # one SSE event (up to its blank line): relayed whole, or dropped
                for line in response:
                    event.append(line)
                    if line.strip() != b"":
                        continue
                    data = b"".join(part[5:] for part in event if part.startswith(b"data:"))
                    if data:
                        _usage_of_event(data, usage)
                    forwarded = broker.filter_event(data) if data else None
                    if forwarded is None:
                        self.wfile.write(b"".join(event))
                    elif forwarded:
                        kind = [part for part in event if part.startswith(b"event:")]
                        self.wfile.write(b"".join(kind) + b"data: " + forwarded + b"\n\n")
                    event = []
                    self.wfile.flush()
                if event:
                    self.wfile.write(b"".join(event))
                self.wfile.flush()
            else:
                data = response.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with contextlib.suppress(ValueError, AttributeError):
                    message = json.loads(data)
                    usage["model"] = str(message.get("model") or "")
                    counts = message.get("usage") or {}
                    usage["tokens_in"] = _input_tokens(counts)
                    usage["tokens_out"] = int(counts.get("output_tokens") or 0)
        if metered:
            usage["latency_ms"] = int((time.monotonic() - started) * 1000)
            broker.tell("model_done", usage)


def _input_tokens(counts: dict) -> int:
    return sum(
        int(counts.get(key) or 0) for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _usage_of_event(data: bytes, usage: dict) -> None:
    try:
        event = json.loads(data)
    except ValueError:
        return
    if not isinstance(event, dict):
        return
    if event.get("type") in ("response.completed", "response.incomplete", "response.failed"):
        # the OpenAI Responses API: the usage comes with the finished response
        response = event.get("response") or {}
        counts = response.get("usage") or {}
        usage["model"] = str(response.get("model") or usage["model"])
        usage["tokens_in"] = int(counts.get("input_tokens") or 0)
        usage["tokens_out"] = int(counts.get("output_tokens") or 0)
    elif event.get("type") == "message_start":
        message = event.get("message") or {}
        usage["model"] = str(message.get("model") or usage["model"])
        usage["tokens_in"] = _input_tokens(message.get("usage") or {})
        usage["tokens_out"] = int((message.get("usage") or {}).get("output_tokens") or 0)
    elif event.get("type") == "message_delta":
        counts = event.get("usage") or {}
        if counts.get("output_tokens") is not None:
            usage["tokens_out"] = int(counts["output_tokens"])
        if counts.get("input_tokens"):
            usage["tokens_in"] = _input_tokens(counts)


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    broker: Broker


class Broker:
    """The run's endpoints (hook decisions, metered model calls), on 127.0.0.1 and on a Unix socket
    (``socket_path``: what the sandboxed agent reaches through agents/relay.py). Requests go to
    ``inbox``, which the step's thread serves; nothing here touches the database."""

    def __init__(
        self,
        *,
        token: str,
        upstream: str,
        upstream_key: str,
        inbox: queue.Queue,
        api: str = "anthropic",
        offline=None,
    ) -> None:
        self.token, self.upstream, self.upstream_key, self.inbox = token, upstream.rstrip("/"), upstream_key, inbox
        self.api = api  # the model API relayed: "anthropic" (Messages) or "openai" (Responses)
        self.offline = offline  # a sim_anthropic.Offline: the offline model answers instead of an upstream
        self.closed = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.broker = self  # type: ignore[attr-defined]  # read by _Handler as self.server.broker
        # a short private directory: a Unix socket's path has at most 107 bytes
        self.socket_dir = Path(tempfile.mkdtemp(prefix="cr-broker-"))
        self.socket_path = self.socket_dir / "broker.sock"
        self.unix_server = _UnixHTTPServer(str(self.socket_path), _Handler)
        self.unix_server.broker = self
        self.threads = [
            threading.Thread(target=server.serve_forever, name="claude-code-broker", daemon=True)
            for server in (self.server, self.unix_server)
        ]
        for thread in self.threads:
            thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"  # type: ignore[str-bytes-safe]  # an AF_INET server: host is a str

    def authentic(self, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.token.encode())

    def ask(self, kind: str, payload, *, timeout: float):
        if self.closed:
            return None
        request = _Ask(kind, payload)
        self.inbox.put(("ask", request))
        return request.answer if request.done.wait(timeout) else None

    def tell(self, kind: str, payload) -> None:
        self.inbox.put((kind, payload))

    def ran_calls(self, body: bytes) -> list[dict]:
        """The tool calls whose results a model request carries (a subclass reads its API's format)."""
        return []

    def filter_request(self, body: bytes) -> bytes:
        """A model request as relayed upstream (a subclass may take tools out of it)."""
        return body

    def filter_event(self, data: bytes) -> bytes | None:
        """One streamed event's data as relayed to the agent: None unchanged, b"" dropped, else replaced."""
        return None

    def close(self) -> None:
        self.closed = True
        for server in (self.server, self.unix_server):
            server.shutdown()
            server.server_close()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


# -- the files a run needs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFiles:
    home: Path  # the CLI's HOME: its session files (for --resume); writable in the sandbox
    control: Path  # settings, the hook and the git hook: read-only in the sandbox
    settings: Path
    hooks: Path


HOOK_TEMPLATE = """#!/bin/sh
# prepare-commit-msg, installed by the control room for {label} session {session}: every commit
# made in this worktree carries whose work it is and under which authority (replacing any forged value).
exec git interpret-trailers --in-place --if-exists replace \\
    --trailer {agent} --trailer {delegator} --trailer {grant} "$1"
"""


def agent_dirs(session_id: int) -> tuple[Path, Path]:
    base = Path(settings.CONTROLROOM["WORKTREES_DIR"]) / ".agents" / f"s{session_id}"
    return base / "home", base / "control"


def control_files(*, session: AgentSession, grant: Grant, label: str) -> tuple[Path, Path, Path]:
    """(home, control, git hooks) of a supervised CLI's run: the hook and the relay copied into the
    control directory, and the trailers' ``prepare-commit-msg`` hook (shared by the CLIs' runners)."""
    home, control = agent_dirs(session.pk)
    home.mkdir(parents=True, exist_ok=True)
    hooks = control / "git-hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    for script in ("hook.py", "relay.py"):
        shutil.copyfile(Path(__file__).resolve().parent.parent / script, control / script)
    git_hook = hooks / "prepare-commit-msg"
    git_hook.write_text(
        HOOK_TEMPLATE.format(
            label=label,
            session=session.pk,
            agent=shlex.quote(f"Agent-Session: {session.pk}"),
            delegator=shlex.quote(f"Delegated-By: {grant.delegator.username}"),
            grant=shlex.quote(f"Grant: {grant.pk}"),
        ),
        encoding="utf-8",
    )
    git_hook.chmod(0o755)
    return home, control, hooks


def prepare_files(*, session: AgentSession, grant: Grant, hook_command: list[str]) -> RunFiles:
    home, control, hooks = control_files(session=session, grant=grant, label="Claude Code")
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    config = {
        "hooks": {
            "PreToolUse": [
                {
                    "matcher": "*",
                    "hooks": [{"type": "command", "command": shlex.join(hook_command), "timeout": HOOK_TIMEOUT_S + 5}],
                }
            ]
        },
        "permissions": {"defaultMode": "dontAsk"},
        "includeCoAuthoredBy": False,
    }
    settings_file = control / "settings.json"
    settings_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # the CLI's user settings are the same file, pinned read-only over this one in the sandbox
    (home / ".claude" / "settings.json").write_text(settings_file.read_text(encoding="utf-8"), encoding="utf-8")
    return RunFiles(home=home, control=control, settings=settings_file, hooks=hooks)


def _git_writable(worktree: Path) -> list[Path]:
    """What ``git commit`` on the session's branch writes outside the worktree: the objects, and the
    refs (and reflogs) of the agents' branches. Configuration, hooks and other branches stay read-only."""
    common, _admin, in_tree = sandbox._git_dirs(worktree)
    root = common or in_tree
    if root is None:
        return []
    paths = []
    for relative in ("objects", "refs/heads/agents", "logs/refs/heads/agents"):
        path = root / relative
        with contextlib.suppress(OSError):
            path.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            paths.append(path)
    return paths


def _offline_model(session: AgentSession):
    """The offline model behind the broker for a ``sim/…`` session (no upstream at all), else None."""
    if not (session.model or "").startswith("sim/"):
        return None
    from agents.runtime.sim_anthropic import Offline

    return Offline(worktree=session.worktree_path, model=session.model, pacing_s=settings.CONTROLROOM["SIM_PACING_S"])


# -- the runner ---------------------------------------------------------------------------------------
class ClaudeCodeStep(_Step):
    """One run of the Claude Code CLI as one step of the session (see the module docstring).

    The Codex runner (agents/runtime/codex.py) is a subclass: what differs between the two CLIs is
    in the class attributes and the methods marked "per CLI"."""

    AGENT = "claude-code"
    LABEL = "Claude Code"
    API = "anthropic"
    NOT_INSTALLED = "Claude Code is not installed on this worker: pip install 'controlroom[agents]'"
    broker_class: type[Broker] | None = None  # Broker

    def binary(self) -> str | None:  # per CLI
        return claude_binary()

    def upstream(self) -> str:  # per CLI
        return self.session.api_base or settings.CONTROLROOM.get("ANTHROPIC_API_BASE") or UPSTREAM_DEFAULT

    def work(self) -> StepOutcome:
        binary = self.binary()
        if binary is None:
            reason = self.NOT_INSTALLED
            return self.park(Status.FAILED, reason, event="session.error", payload={"error": reason})
        from agents.runtime.model import warm_up

        warm_up()  # LiteLLM (its price map costs each call) imported now, not while a hook call waits
        step_row = self._step_row()
        self.step_row = step_row
        last = ToolCall.objects.filter(step=step_row).aggregate(last=Max("index"))["last"]
        self.index = 0 if last is None else last + 1
        self.pending: dict[str, ToolCall] = {}
        self.log_from: dict[str, int | None] = {}  # per call in flight: the refusal log's size when allowed
        self.masks: Masks | None = None  # the grant's masks bound in the run's sandbox (_sandboxed)
        self.denial_log: str | None = None  # the stubs' refusal log, on the host
        self.stop: tuple[str, str] | None = None  # (kind, reason): approval / block / pause / user / deadline
        self.result: dict | None = None
        self.stderr_tail = ""
        # the price map (LiteLLM's first import takes seconds) is loaded before the CLI starts, so
        # metering the first model call never holds up the hook decisions queued behind it
        _cost(self.session.model, 0, 0)
        token = secrets.token_urlsafe(32)
        inbox: queue.Queue = queue.Queue()
        upstream_key = os.environ.get(self.session.api_key_env, "") if self.session.api_key_env else ""
        broker = (self.broker_class or Broker)(
            token=token,
            upstream=self.upstream(),
            upstream_key=upstream_key,
            inbox=inbox,
            api=self.API,
            # the offline model speaks the Anthropic Messages API only (agents/runtime/sim_anthropic.py)
            offline=_offline_model(self.session) if self.API == "anthropic" else None,
        )
        try:
            return self._run(binary, broker, token, inbox)
        finally:
            broker.close()

    # -- setting up -------------------------------------------------------------------------------
    def _step_row(self) -> AgentStep:
        session = self.session
        try:
            with transaction.atomic():
                row = AgentStep.objects.create(
                    session=session,
                    number=self.number,
                    iteration=session.iteration,
                    worker=self.owner,
                    model=session.model,
                    started_at=timezone.now(),
                )
            self.fresh_step = True
            return row
        except IntegrityError:
            pass
        self.fresh_step = False
        row = AgentStep.objects.get(session=session, number=self.number)
        AgentStep.objects.filter(pk=row.pk).update(worker=self.owner)
        # a tool call authorized by an earlier run of this step whose result never came (the worker
        # died while it ran): interrupted, never run again (the hook refuses its tool_use_id)
        for call in ToolCall.objects.filter(step=row, state=ToolCall.State.INTENDED):
            with transaction.atomic():
                self.mark_interrupted(call, "interrupted: the worker stopped while this ran; it was not run again")
        return row

    def _prompt(self) -> str:
        session = self.session
        if not session.agent_ref or (self.fresh_step and session.steps == 0):
            parts = [session.goal.strip()]
            if session.success_criteria:
                parts.append(f"Success criteria: {session.success_criteria.strip()}")
            parts.append(
                "Work in this repository. Commit your work with git when it is done (short, clear messages), "
                "then answer with a one-paragraph summary of what you did."
            )
            return "\n\n".join(parts)
        decided = (
            Escalation.objects.filter(session=session)
            .exclude(state=Escalation.State.OPEN)
            .order_by("-decided_at", "-pk")
            .first()
        )
        if decided is None:
            return "Carry on with the task where you left off."
        if decided.state in (Escalation.State.ALLOWED_ONCE, Escalation.State.ALLOWED_ALWAYS):
            return (
                f"A human approved this action you asked for: {decided.action.splitlines()[0]}. "
                "Run it again now, exactly as before, then carry on with the task."
            )
        why = decided.decision_reason or "no reason given"
        return (
            f"A human refused this action: {decided.action.splitlines()[0]} ({why}). "
            "Do not try it again; carry on with the task another way, or finish with what you have."
        )

    def _argv(self, binary: str, files: RunFiles) -> list[str]:
        session = self.session
        argv = [
            binary,
            "-p",
            self._prompt(),
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            session.model,
            "--permission-mode",
            "dontAsk",
            "--settings",
            str(files.settings),
        ]
        if (
            session.agent_ref
            and (files.home / ".claude" / "projects").is_dir()
            and not (self.fresh_step and session.steps == 0)
        ):
            argv += ["--resume", session.agent_ref]
        else:
            ref = str(uuid.uuid4())
            AgentSession.objects.filter(pk=self.session_id).update(agent_ref=ref)
            session.agent_ref = ref
            argv += ["--session-id", ref]
        return argv

    def _env(self, broker: Broker, token: str, files: RunFiles) -> dict[str, str]:
        env = agent_env((f"Agent #{self.session_id}", f"agent-{self.session_id}@controlroom.invalid"))
        env.update(
            {
                "HOME": str(files.home),
                "TMPDIR": "/tmp",
                "ANTHROPIC_BASE_URL": broker.url,
                "ANTHROPIC_API_KEY": token,
                "CR_HOOK_URL": broker.url + "/hook",
                "CR_HOOK_TOKEN": token,
                "CR_HOOK_TIMEOUT_S": str(HOOK_TIMEOUT_S),
                "DISABLE_AUTOUPDATER": "1",
                "DISABLE_TELEMETRY": "1",
                "DISABLE_ERROR_REPORTING": "1",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                # the trailers' hook for the git the CLI runs (nothing written to the repository's config)
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "core.hooksPath",
                "GIT_CONFIG_VALUE_0": str(files.hooks),
            }
        )
        return env

    def _command(self, binary: str, broker: Broker, token: str) -> tuple[list[str], dict[str, str]]:
        worktree = Path(self.session.worktree_path)
        hook_command = [sys.executable, "-I", str(agent_dirs(self.session_id)[1] / "hook.py")]
        assert self.grant is not None  # a step without a grant is parked before it runs
        files = prepare_files(session=self.session, grant=self.grant, hook_command=hook_command)
        argv = self._argv(binary, files)
        env = self._env(broker, token, files)
        return self._sandboxed(
            argv,
            env,
            broker=broker,
            files=files,
            pinned=[files.home / ".claude" / "settings.json", Path(binary).parent],
            pinned_dir=worktree / ".claude",
        )

    def _sandboxed(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        broker: Broker,
        files: RunFiles,
        pinned: list[Path],
        pinned_dir: Path,
    ) -> tuple[list[str], dict[str, str]]:
        """The CLI's command line inside bubblewrap (shared by the CLIs' runners): the worktree, the
        CLI's home and the git objects writable; the control files, ``pinned`` and ``pinned_dir`` (the
        CLI's project settings directory in the worktree, created empty) read-only; no network but the
        broker, through agents/relay.py."""
        worktree = Path(self.session.worktree_path)
        mode = settings.CONTROLROOM["SANDBOX"]
        if not sandbox.sandbox_available(mode):
            if mode == "bwrap":
                raise sandbox.SandboxError("sandbox mode is 'bwrap' but bubblewrap does not work here")
            return argv, env
        pinned_claude = pinned_dir
        with contextlib.suppress(OSError):
            pinned_claude.mkdir(exist_ok=True)  # empty and untracked: git does not see it
        # no network: the sandbox's own loopback, relayed to the broker's Unix socket, is the only way out
        relayed = [
            sys.executable,
            "-I",
            str(files.control / "relay.py"),
            str(broker.socket_path),
            str(broker.port),
            "--",
            *argv,
        ]
        masks = self._run_masks(env, keep=_own_programs(argv[0], env))
        denial_log = None
        if masks.programs:
            handle, denial_log = tempfile.mkstemp(prefix="controlroom-denied-")
            os.close(handle)
        self.masks, self.denial_log = masks, denial_log
        wrapped = sandbox.bwrap_argv(
            bwrap=sandbox.bwrap_path() or "bwrap",
            command="",
            cwd=worktree,
            allow_network=False,
            env=env,
            hide_paths=[settings.DATA_DIR],
            masks=masks,
            denial_log=denial_log,
            writable=[files.home, broker.socket_dir, *_git_writable(worktree)],
            read_only=[files.control, *pinned, *([pinned_claude] if pinned_claude.is_dir() else [])],
            exec_argv=relayed,
        )
        return wrapped, {"PATH": "/usr/bin:/bin"}

    def _run_masks(self, env: dict[str, str], *, keep: set[str]) -> Masks:
        """The grant's masks (agents/permissions/masks.py) over the worktree as it is at the run's
        start, as the built-in loop computes them per command: ``Read`` denies and the secret guard
        hidden, ``Edit`` denies and the protected paths read-only, denied programs stubbed. The
        guards of the session's standing human approvals are lifted (so an approved edit of a
        protected path can happen in the resumed run); deny rules' masks never are. ``keep``: the
        files the run itself needs (the CLI, the Python that runs the hook and the relay), which a
        program deny cannot stub without ending the run."""
        assert self.grant is not None  # a step without a grant is parked before it runs
        root = os.path.realpath(self.session.worktree_path)
        masks = compute_masks(tuple(self.grant.deny), root, path=env.get("PATH", ""), lift=self._approved_lift(root))
        return replace(masks, programs=tuple(p for p in masks.programs if p.path not in keep))

    def _approved_lift(self, root: str) -> tuple[str, ...]:
        """The guard patterns the session's standing approvals (allowed once and not used yet, or
        allowed always) name: each approval's tool call mapped and canonicalised again, and its guards
        lifted only when that gives the approved action itself (the same hash)."""
        found: list[str] = []
        approvals = Escalation.objects.filter(
            standing_approvals_q(), session_id=self.session_id, tool_call__isnull=False
        ).select_related("tool_call")
        for escalation in approvals:
            call = escalation.tool_call
            assert call is not None  # filtered above
            for tool, args in self._mapped(call.name, call.arguments if isinstance(call.arguments, dict) else {}):
                try:
                    action = canonicalize(tool, args, str(Path(self.session.worktree_path)))
                except (ValueError, TypeError):
                    continue
                if action.hash == escalation.action_hash:
                    found += lifted_guards(action.resources, action.recursive, root=root)
        return tuple(dict.fromkeys(found))

    def _mapped(self, name: str, tool_input: dict) -> list[tuple[str, dict]]:  # per CLI (the tools' mapping)
        """The evaluator's tool calls for one of the CLI's tool calls (none when unmappable)."""
        mapped = map_tool(name, tool_input, self.session.worktree_path)
        return [mapped] if mapped else []

    def _release_masks(self) -> None:
        """After the run: the empty mount points bwrap made for missing protected directories, and
        the refusal log."""
        masks, log = self.masks, self.denial_log
        for path in masks.missing if masks else ():
            with contextlib.suppress(OSError):
                os.rmdir(path)
        if log:
            with contextlib.suppress(OSError):
                os.unlink(log)
        self.masks, self.denial_log = None, None

    def _sandbox_refusals(self, row: ToolCall, text: str, log_from: int | None) -> None:
        """``tool.denied_by_sandbox`` for each denied program a tool call tried (the evaluator let it
        run; a stub refused): the stubs' lines in its output, and the refusal log's lines written
        while it was the only call running (``log_from``: the log's size when it was allowed)."""
        masks, log = self.masks, self.denial_log
        if not masks or not masks.programs:
            return
        logged = sandbox.read_denial_log(log, log_from) if log and log_from is not None else []
        for program, rule in sandbox.denials(masks, logged, text):
            services.agent_event_record(
                kind="tool.denied_by_sandbox",
                session=self.session,
                grant=self.grant,
                provenance="rule",
                payload={
                    "step": self.number,
                    "index": row.index,
                    "tool": row.name,
                    "action": row.action,
                    "action_hash": row.action_hash,
                    "program": program,
                    "rule": rule,
                },
            )

    # -- running ----------------------------------------------------------------------------------
    def _run(self, binary: str, broker: Broker, token: str, inbox: queue.Queue) -> StepOutcome:
        try:
            argv, env = self._command(binary, broker, token)
        except (OSError, sandbox.SandboxError) as exc:
            self._release_masks()
            return self.park(Status.FAILED, f"{self.LABEL}: {exc}", event="session.error", payload={"error": str(exc)})
        self._say_activity(f"{self.LABEL}: starting", force=True)
        stderr = (agent_dirs(self.session_id)[0].parent / f"stderr-{self.number}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            cwd=self.session.worktree_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
            close_fds=True,
        )

        def read() -> None:
            assert proc.stdout is not None  # stdout=PIPE
            try:
                for line in proc.stdout:
                    inbox.put(("line", line))
            finally:
                inbox.put(("eof", None))

        reader = threading.Thread(target=read, name=f"claude-code-{self.session_id}", daemon=True)
        reader.start()
        deadline = time.monotonic() + max(10, settings.CONTROLROOM["STEP_TIME_LIMIT_S"] - 30)
        last_look = time.monotonic()
        try:
            while True:
                try:
                    kind, item = inbox.get(timeout=POLL_S)
                except queue.Empty:
                    kind, item = "idle", None
                if kind == "eof":
                    break
                if kind == "line":
                    self._on_line(item)
                elif kind == "ask":
                    item.reply(self._answer(item))
                elif kind == "model_done":
                    self._metered(item)
                elif kind == "model_error":
                    self._model_error(item)
                elif kind == "unhooked_tool":
                    self._unhooked_tool(item)
                now = time.monotonic()
                if self.stop is None and now - last_look >= POLL_S:
                    last_look = now
                    self.facts = self.read_facts()
                    switch = self.stop_switch()
                    if switch:
                        self.stop = ("user" if switch[0] == "user" else "pause", switch[1])
                        self._pause_hold = switch[0]
                    elif now >= deadline:
                        self.stop = ("deadline", "the run reached the step's time limit; the next step resumes it")
                if self.stop is not None and proc.poll() is None:
                    _terminate(proc)
        finally:
            _terminate(proc)
            reader.join(timeout=5)
            stderr.close()
            self._release_masks()
            with contextlib.suppress(OSError):
                self.stderr_tail = Path(stderr.name).read_bytes()[-2000:].decode("utf-8", "replace")
        # answers still queued (a model call whose usage came after the exit) are metered too
        while True:
            try:
                kind, item = inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "model_done":
                self._metered(item)
            elif kind == "unhooked_tool":
                self._unhooked_tool(item)
            elif kind == "ask":
                item.reply({"decision": "deny", "reason": "the run has ended"})
        self._interrupt_pending()
        return self._finish(proc.returncode)

    def _interrupt_pending(self) -> None:
        """Tool calls the CLI started whose result never came (the run was ended under them: a pause,
        cancel, fleet stop, the time limit, a crash): interrupted, never run again (the hook refuses
        their tool_use_id), as a later step would find them."""
        why = self.stop[1] if self.stop else "the CLI ended"
        for row in list(self.pending.values()):
            with transaction.atomic():
                self.mark_interrupted(
                    row, f"interrupted: the run was ended while this ran ({why}); it was not run again"
                )
        self.pending.clear()
        self.log_from.clear()

    def _unchecked_calls(self, ran: list[dict]) -> str:  # per CLI: tool calls run without the hook
        return ""

    def _unhooked_tool(self, info: dict) -> None:  # per CLI: a tool call the broker kept from the CLI
        pass

    def _answer(self, request: _Ask) -> dict:
        if request.kind == "hook":
            try:
                return self._on_hook(request.payload)
            except Exception:  # fail closed, and say so
                logger.exception("session %s: hook decision failed", self.session_id)
                return {"decision": "deny", "reason": "the control room could not decide (an error), so this is denied"}
        if request.kind == "model":
            unchecked = self._unchecked_calls(request.payload.get("ran") or [])
            if unchecked:
                return {"ok": False, "reason": unchecked}
            return self._model_begin()
        return {"decision": "deny", "reason": "unknown request"}

    # -- tool calls -------------------------------------------------------------------------------
    def _on_hook(self, payload: dict) -> dict:
        if not isinstance(payload, dict):
            return {"decision": "deny", "reason": "unreadable hook input"}
        if payload.get("hook_event_name", "PreToolUse") != "PreToolUse":
            return {"decision": "deny", "reason": "unexpected hook event"}
        if self.stop is not None:
            return {"decision": "deny", "reason": f"the session is stopping: {self.stop[1]}"}
        name = str(payload.get("tool_name") or "")[:80]
        tool_input = cast(dict, payload.get("tool_input")) if isinstance(payload.get("tool_input"), dict) else {}
        call_id = str(payload.get("tool_use_id") or "")[:120] or f"hook-{self.number}-{self.index}"
        if ToolCall.objects.filter(session_id=self.session_id, call_id=call_id).exists():
            return {"decision": "deny", "reason": "this tool call was already authorized once; it is never run twice"}
        raw = json.dumps(tool_input, sort_keys=True, ensure_ascii=False, default=repr)
        raw_hash = _sha(raw)
        call = {"id": call_id, "name": name, "arguments": raw}
        index = self.index
        self.index += 1
        self.facts = self.read_facts()
        switch = self.stop_switch()
        if switch:
            self.stop = ("user" if switch[0] == "user" else "pause", switch[1])
            self._pause_hold = switch[0]
        self.grant = _grant(self.facts)
        if self.grant is None:
            self._deny(self.step_row, index, call, tool_input, raw_hash, None, "no active grant")
            self.stop = ("block", "no active grant: issue one to continue")
            return {"decision": "deny", "reason": "there is no active grant for this session"}
        decision = self._decide(name, tool_input, switch)
        if decision.decision == "ask":
            refused = (
                Escalation.objects.filter(session_id=self.session_id, action_hash=decision.action.hash)
                .order_by("-pk")
                .first()
                if decision.action
                else None
            )
            if refused is not None and refused.state in (Escalation.State.DENIED, Escalation.State.EXPIRED):
                who = refused.decided_by.username if refused.decided_by else "a human"
                reason = (
                    f"denied by {who}: {refused.decision_reason or 'no reason given'}"
                    if refused.state == Escalation.State.DENIED
                    else "nobody answered before the grant expired"
                )
                provenance = "human" if refused.state == Escalation.State.DENIED else "expired"
                self._deny(self.step_row, index, call, tool_input, raw_hash, decision, reason, provenance=provenance)
                return {"decision": "deny", "reason": reason}
            if self.grant.on_unanswered == Grant.OnUnanswered.DENY:
                self._escalate(self.step_row, index, call, tool_input, raw_hash, decision, None, deny_now=True)
                return {
                    "decision": "deny",
                    "reason": f"this needs a human's approval ({decision.reason}) and nobody is available",
                }
            self._escalate(self.step_row, index, call, tool_input, raw_hash, decision, None)
            self.stop = ("approval", f"asks: {decision.action.text if decision.action else name}")
            return {
                "decision": "deny",
                "reason": f"this needs a human's approval ({decision.reason}); the session waits for their decision",
            }
        if decision.decision == "deny":
            rule = f" (rule {decision.rule})" if decision.rule else ""
            self._deny(self.step_row, index, call, tool_input, raw_hash, decision, decision.reason)
            if decision.reason_type in ("expired", "revoked"):
                self.stop = ("block", decision.reason)
            return {"decision": "deny", "reason": f"{decision.reason}{rule}"}
        return self._allow(index, call, tool_input, raw_hash, decision)

    def _decide(self, name: str, tool_input: dict, switch) -> Decision:  # per CLI (the tools' mapping)
        """The evaluator's decision on one of the CLI's tool calls."""
        mapped = map_tool(name, tool_input, self.session.worktree_path)
        if mapped is None:
            return self._unknown_tool(name, tool_input, switch)
        tool, args = mapped
        return self._authorize(tool, args)

    def _authorize(self, tool: str, args: dict) -> Decision:
        return authorize(
            self.session,
            ToolCallRequest(name=tool, args=args),
            grant=self.grant,
            switches=self.switches(),
            read_approvals=self.facts.has_approvals,
        )

    def _unknown_tool(self, name: str, tool_input, switch) -> Decision:
        """A tool the control room cannot see into: a human decides (or approved this exact call)."""
        action = _unknown_tool_action(name, tool_input)
        if switch:
            return Decision("deny", "guard", f"The session is stopped ({switch[1]}).", action=action)
        approved = Escalation.objects.filter(
            standing_approvals_q(), session_id=self.session_id, action_hash=action.hash
        ).exists()
        if approved:
            return Decision("allow", "human", "A human allowed this exact action.", action=action)
        return Decision(
            "ask",
            "guard",
            f"{self.LABEL}'s tool {name!r} is not one the control room can check: a human decides.",
            action=action,
        )

    def _allow(self, index: int, call: dict, tool_input: dict, raw_hash: str, decision: Decision) -> dict:
        grant = self.grant
        assert grant is not None  # the hook returned before authorizing without one
        activity = _summarize(f"{call['name']}: {_shown(call['name'], tool_input, self.session.worktree_path)}", 200)
        with transaction.atomic():
            if not services.tool_call_reserve(
                session_id=self.session_id, limit=grant.max_tool_calls, activity=activity
            ):
                reason = f"budget: max tool calls ({grant.max_tool_calls}) reached"
                self._deny(self.step_row, index, call, tool_input, raw_hash, decision, reason, provenance="budget")
                self.stop = ("block", reason)
                return {"decision": "deny", "reason": reason}
            self.session.tool_calls += 1
            if decision.reason_type == "human" and not services.approval_consume(
                session_id=self.session_id,
                action_hash=cast(CanonicalAction, decision.action).hash,  # approved: an action
            ):
                raise RuntimeError("approval vanished")  # the caller denies
            row = self._tool_row(self.step_row, index, call, tool_input, raw_hash, decision, ToolCall.State.INTENDED)
        self.session.current_activity = activity
        self.pending[row.call_id] = row
        log = self.denial_log
        # where the refusal log stood when this call was allowed, read back with its result when it
        # was the only call in flight all along (two calls at once: only their output's stub lines count)
        alone = len(self.pending) == 1
        for other in self.log_from:
            self.log_from[other] = None
        self.log_from[row.call_id] = os.path.getsize(log) if alone and log and os.path.exists(log) else None
        return {"decision": "allow", "reason": decision.reason}

    def _tool_result(self, block: dict, event: dict) -> None:
        call_id = str(block.get("tool_use_id") or "")
        content = block.get("content")
        if isinstance(content, list):
            content = "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        text = str(content or "")
        is_error = bool(block.get("is_error"))
        row = (
            self.pending.pop(call_id, None)
            or ToolCall.objects.filter(session_id=self.session_id, call_id=call_id).first()
        )
        log_from = self.log_from.pop(call_id, None)
        if row is None:
            with transaction.atomic():
                self._append_transcript(role="tool", tool_call_id=call_id, name="", content=text)
                services.agent_event_record(
                    kind="tool.unchecked",
                    session=self.session,
                    grant=self.grant,
                    provenance="guard",
                    payload={"step": self.number, "tool_use_id": call_id, "result": _summarize(text, 400)},
                )
            return
        if row.state != ToolCall.State.INTENDED:
            return  # denied or escalated: recorded (and shown) when it was decided
        started = row.created_at
        with transaction.atomic():
            outcome = dict(
                state=ToolCall.State.ERROR if is_error else ToolCall.State.DONE,
                result=Truncator(text).chars(20000),
                finished_at=timezone.now(),
                duration_ms=max(0, int((timezone.now() - started).total_seconds() * 1000)),
            )
            ToolCall.objects.filter(pk=row.pk, state=ToolCall.State.INTENDED).update(**outcome)
            for key, value in outcome.items():
                setattr(row, key, value)
            self._append_transcript(
                role="tool", tool_call_id=row.call_id, name=row.name, content=text if not is_error else f"error: {text}"
            )
            self._audit_tool(row, provenance=row.reason_type, result=text)
            self._sandbox_refusals(row, text, log_from)
            command = (row.arguments or {}).get("command", "") if row.name == "Bash" else ""
            if command and _looks_like_tests(command):
                services.agent_event_record(
                    kind="tests.run",
                    session=self.session,
                    grant=self.grant,
                    payload={
                        "command": command,
                        "exit_code": 1 if is_error else 0,
                        "passed": not is_error,
                        "summary": _summarize(text, 300),
                    },
                )

    # -- the CLI's events -------------------------------------------------------------------------
    def _on_line(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init" and event.get("session_id"):
            ref = str(event["session_id"])[:120]
            if ref != self.session.agent_ref:
                AgentSession.objects.filter(pk=self.session_id).update(agent_ref=ref)
                self.session.agent_ref = ref
        elif kind == "assistant":
            message = event.get("message") or {}
            blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
            text = "\n".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text").strip()
            calls = [
                {
                    "id": str(b.get("id") or ""),
                    "name": str(b.get("name") or ""),
                    "arguments": json.dumps(b.get("input") or {}, ensure_ascii=False),
                }
                for b in blocks
                if b.get("type") == "tool_use"
            ]
            if text or calls:
                self._append_transcript(role="assistant", content=text, tool_calls=calls or None)
            if calls:
                last = calls[-1]
                self._say_activity(
                    _summarize(
                        f"{last['name']}: "
                        f"{_shown(last['name'], json.loads(last['arguments']), self.session.worktree_path)}",
                        200,
                    )
                )
            elif text:
                self._say_activity(_summarize(text, 200))
        elif kind == "user":
            message = event.get("message") or {}
            for block in message.get("content") or []:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    self._tool_result(block, event)
        elif kind == "result":
            self.result = event

    # -- model calls ------------------------------------------------------------------------------
    def _model_begin(self) -> dict:
        """Before each model call: the budget (steps of a Claude Code session are its model calls)."""
        if self.stop is not None:
            return {"ok": False, "reason": f"the session is stopping: {self.stop[1]}"}
        grant = self.grant or _grant(self.read_facts())
        if grant is None:
            self.stop = ("block", "no active grant: issue one to continue")
            return {"ok": False, "reason": "no active grant"}
        session = self.session
        reason = None
        if grant.max_steps is not None and session.model_calls >= grant.max_steps:
            reason = f"budget: max model calls ({grant.max_steps}) reached"
        else:
            reason = budget_exhausted(session=session, grant=grant)
        if reason:
            self.stop = ("block", reason)
            return {"ok": False, "reason": reason}
        AgentSession.objects.filter(pk=self.session_id).update(
            model_calls=F("model_calls") + 1, heartbeat_at=timezone.now()
        )
        session.model_calls += 1
        return {"ok": True}

    def _metered(self, usage: dict) -> None:
        tokens_in, tokens_out = int(usage.get("tokens_in") or 0), int(usage.get("tokens_out") or 0)
        model = usage.get("model") or self.session.model
        cost = _cost(model, tokens_in, tokens_out)
        with transaction.atomic():
            AgentSession.objects.filter(pk=self.session_id).update(
                tokens_in=F("tokens_in") + tokens_in,
                tokens_out=F("tokens_out") + tokens_out,
                cost_usd=F("cost_usd") + (cost or Decimal(0)),
                cost_unknown_calls=F("cost_unknown_calls") + (1 if cost is None else 0),
                heartbeat_at=timezone.now(),
            )
            AgentStep.objects.filter(pk=self.step_row.pk).update(
                tokens_in=F("tokens_in") + tokens_in,
                tokens_out=F("tokens_out") + tokens_out,
                model=model[:200],
                latency_ms=F("latency_ms") + int(usage.get("latency_ms") or 0),
            )
            services.agent_event_record(
                kind="model.call",
                session=self.session,
                grant=self.grant,
                payload={
                    "step": self.number,
                    "agent": self.AGENT,
                    "call": self.session.model_calls,
                    "model": model,
                    "tokens_in": tokens_in,
                    "tokens_out": tokens_out,
                    "cost_usd": cost,
                    "cost_known": cost is not None,
                    "latency_ms": usage.get("latency_ms"),
                    "status": usage.get("status"),
                },
            )
        self.session.tokens_in += tokens_in
        self.session.tokens_out += tokens_out
        self.session.cost_usd = (self.session.cost_usd or Decimal(0)) + (cost or Decimal(0))

    def _model_error(self, info: dict) -> None:
        with transaction.atomic():
            services.agent_event_record(
                kind="model.error",
                session=self.session,
                grant=self.grant,
                payload={"step": self.number, "agent": self.AGENT, "error": str(info.get("error", ""))[:500]},
            )

    # -- the end of a run -------------------------------------------------------------------------
    def _record_commits(self) -> None:
        worktree = Path(self.session.worktree_path)
        since = self.session.pushed_commit or self.session.base_commit
        try:
            head = gitcli.run(worktree, "rev-parse", "HEAD", what="the branch's head", timeout_s=10).out.strip()
            if not head or head == since:
                return
            listing = gitcli.run(
                worktree,
                "log",
                "--reverse",
                "--format=%H%x1f%B%x1e",
                f"{since}..{head}" if since else head,
                what="the agent's commits",
                timeout_s=10,
            ).out
        except gitcli.GitError as exc:
            logger.warning("session %s: could not read the agent's commits: %s", self.session_id, exc)
            return
        pushed, push_error = self._push()
        direct = settings.CONTROLROOM["WORKTREE_SOURCE"] != "clone"
        with transaction.atomic():
            for record in listing.split("\x1e"):
                if "\x1f" not in record:
                    continue
                sha, message = record.strip().split("\x1f", 1)
                services.agent_event_record(
                    kind="git.commit",
                    session=self.session,
                    grant=self.grant,
                    payload={
                        "sha": sha,
                        "message": message.strip(),
                        "branch": self.session.branch,
                        "host": settings.CONTROLROOM["WORKER_HOST"],
                        "in_central_repository": direct or pushed is not None,
                        "agent": self.AGENT,
                        "trailers": f"Agent-Session: {self.session_id}" in message,
                    },
                )
            if direct or pushed is not None:
                AgentSession.objects.filter(pk=self.session_id).update(pushed_commit=pushed or head)
                self.session.pushed_commit = pushed or head
            else:
                services.agent_event_record(
                    kind="git.push_failed",
                    session=self.session,
                    grant=self.grant,
                    payload={"sha": head, "branch": self.session.branch, "error": push_error},
                )

    def _finish(self, returncode: int | None) -> StepOutcome:
        self._record_commits()
        stop = self.stop
        if stop is not None:
            kind, reason = stop
            if kind == "approval":
                return StepOutcome("parked", detail="needs approval")
            if kind == "block":
                event = "budget.exhausted" if reason.startswith("budget") else None
                return self.park(Status.BLOCKED, reason, event=event, payload={"reason": reason} if event else None)
            if kind == "user":
                return StepOutcome("parked", detail=reason)
            if kind == "pause":
                return self.park(Status.PAUSED, reason, hold=getattr(self, "_pause_hold", ""))
            if kind == "deadline":
                return self._complete_step(self.step_row, [True], None, None)
        result = self.result or {}
        if result.get("subtype") == "success" and not result.get("is_error"):
            summary = str(result.get("result") or "").strip() or "finished"
            return self._complete_step(self.step_row, [True], summary, None)
        why = str(result.get("result") or result.get("subtype") or "").strip()
        if not why:
            why = f"the CLI exited with status {returncode}" + (
                f": {self.stderr_tail.strip()[-300:]}" if self.stderr_tail.strip() else ""
            )
        return self.park(
            Status.FAILED,
            _summarize(f"{self.LABEL}: {why}", 480),
            event="session.error",
            payload={"error": why[:2000], "exit_code": returncode},
        )


def _own_programs(binary: str, env: dict[str, str]) -> set[str]:
    """The files a CLI's run cannot do without (resolved): the CLI itself (and the interpreter of a
    launcher script) and the Python that runs the hook and the relay."""
    keep = {os.path.realpath(sys.executable), os.path.realpath(binary)}
    first = b""
    with contextlib.suppress(OSError), open(binary, "rb") as handle:
        first = handle.read(256).split(b"\n", 1)[0]
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        if words and os.path.basename(words[0]) == "env":
            words = [w for w in words[1:] if not w.startswith("-")]
        if words:
            found = shutil.which(words[0], path=env.get("PATH", "")) if "/" not in words[0] else words[0]
            if found:
                keep.add(os.path.realpath(found))
    return keep


def _shown(name: str, tool_input: dict, worktree: str | None = None) -> str:
    """What a tile says a tool call is about: its command, path, pattern or URL. The CLI names
    files by absolute path; those inside the worktree are shown relative to it, as the built-in
    loop's are (``Read: src/a.py``, not the host's worktree directory)."""
    if not isinstance(tool_input, dict):
        return ""
    for key in ("command", "file_path", "notebook_path", "pattern", "url", "path"):
        if tool_input.get(key):
            shown = str(tool_input[key])
            if not worktree or key in ("pattern", "url"):
                return shown
            if key == "command":
                return shown.replace(worktree.rstrip("/") + "/", "")
            return _relative(shown, worktree)
    return ""


def _cost(model: str, tokens_in: int, tokens_out: int) -> Decimal | None:
    """From LiteLLM's local price map; None (unknown) for a model it has no price for."""
    try:
        from agents.runtime.model import _client

        prompt, completion = _client().cost_per_token(
            model=model, prompt_tokens=tokens_in, completion_tokens=tokens_out
        )
        return Decimal(str(prompt + completion)).quantize(Decimal("0.000001"))
    except Exception:
        return None


def _terminate(proc: subprocess.Popen) -> None:
    """End the CLI and everything it started (its own process group): TERM, then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
