"""Codex sessions (``agent_kind="codex"``): the real Codex CLI (``codex exec --json``) under the
session's grant, sandbox, budget and audit, one run of the CLI per Celery step.

The same runner as Claude Code's (agents/runtime/claude_code.py: its broker, sandbox, trailers'
hook, stop switches, resume and records), with what differs for Codex:

- **Model traffic**: Codex speaks the OpenAI Responses API (``POST {base_url}/responses``, streamed
  SSE). Its ``config.toml`` (in the run's own ``CODEX_HOME``, pinned read-only in the sandbox) names
  one model provider whose ``base_url`` is the broker; the broker meters each call (the usage of
  ``response.completed``) and relays it to the session's ``api_base`` (default
  ``CONTROLROOM["OPENAI_API_BASE"]``) with the control room's key, never the agent's.
- **Tool calls**: Codex's ``PreToolUse`` command hooks (the ``hooks`` feature, on by default in
  0.171) run agents/hook.py before every shell command (``tool_name`` ``Bash``, whichever shell tool
  the model used) and every ``apply_patch`` (``tool_input.command`` is the patch), and before MCP
  tools. Hooks are trusted for the run with ``--dangerously-bypass-hook-trust`` (the config is the
  control room's, read-only to the agent). The hook answers in Codex's dialect (``CR_HOOK_FORMAT``):
  nothing for allow, a ``deny`` decision otherwise (Codex has no ``ask``: an ask is a deny that
  parks the session, as for Claude Code). Shell → ``run_command`` (``Bash(...)``), apply_patch →
  ``write_file``/``edit_file`` on each file it adds, updates, deletes or moves (``Edit(path)``; every
  one must be allowed), anything else → a human decides.
- **Codex fails open** (0.171, checked): a hook that exits with an error other than 2, prints
  something unreadable, is missing or is killed at its timeout lets the call run. So the hook
  command turns any failure to answer into exit 2 with a reason (the one failure Codex blocks on),
  Codex's hook timeout is well past the hook's own, and, in depth, a model request that carries the
  result of a command, patch or MCP call the hook never decided stops the session (``tool.unchecked``).
  The commands the agent runs do not see the run's secret (``shell_environment_policy``).
- **What the hooks do not see** (Codex 0.171): ``write_stdin`` (typing into a command started with
  a terminal) runs without a PreToolUse hook, so it could run what the grant denies. The broker
  takes it out of the tools offered to the model and drops any call of it from the model's answer
  before Codex sees it (an audit event says so). The other tools that bypass hooks (web search,
  images, sub-agents, plugins, apps, browser, goals) are switched off in the config. Codex's own
  sandbox and approvals are off (``danger-full-access``, ``approval_policy = "never"``): bubblewrap
  contains it, with no network but the broker.
- **Events**: ``thread.started`` (Codex's thread id: ``agent_ref``, for ``codex exec resume``),
  ``item.started``/``item.completed`` (``command_execution``, ``file_change``, ``agent_message``,
  ``mcp_tool_call``) → transcript and tile activity, the commands' results onto the tool calls the
  hook authorized; ``turn.completed`` → succeeded; ``turn.failed``/``error`` → failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path

from django.conf import settings
from django.db import transaction

from agents import services
from agents.models import AgentSession, ToolCall
from agents.permissions import Decision
from agents.runtime import claude_code
from agents.runtime.claude_code import HOOK_TIMEOUT_S, Broker, ClaudeCodeStep, RunFiles, control_files
from agents.runtime.loop import _summarize
from agents.tools.executor import agent_env

logger = logging.getLogger(__name__)

CODEX_VERSION = "0.171.0"  # what bin/codex-install installs
UPSTREAM_DEFAULT = "https://api.openai.com/v1"
KEY_ENV = "CR_CODEX_KEY"  # the run's secret, which Codex sends the broker as its API key
# tools Codex runs without a PreToolUse hook: never offered, never let through
UNHOOKED_TOOLS = frozenset({"write_stdin"})
# Codex's tools that run something (their results must come from calls the hook decided)
EXECUTING_TOOLS = frozenset({"exec_command", "shell", "shell_command", "local_shell_call", "apply_patch"})
# Codex features whose tools bypass the hooks or reach out of the worktree: off
FEATURES_OFF = (
    "multi_agent",
    "multi_agent_v2",
    "goals",
    "apps",
    "plugins",
    "remote_plugin",
    "browser_use",
    "browser_use_external",
    "computer_use",
    "in_app_browser",
    "image_generation",
    "view_image",
    "shell_snapshot",
    "memories",
)


def codex_binary() -> str | None:
    """The Codex CLI: ``CONTROLROOM["CODEX_BIN"]`` when set, else the native binary bin/codex-install
    put under ``<venv>/codex`` (npm ``@openai/codex``); None when neither."""
    configured = settings.CONTROLROOM.get("CODEX_BIN") or ""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    modules = Path(sys.prefix) / "codex" / "node_modules"
    for candidate in sorted((modules / "@openai").glob("codex-linux-*/vendor/*/bin/codex")):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    launcher = modules / ".bin" / "codex"
    return str(launcher) if os.access(launcher, os.X_OK) else None


# -- tools → the evaluator's tools ------------------------------------------------------------------
_PATCH_HEADER = re.compile(r"^\*\*\* (Add File|Update File|Delete File|Move to): (.+)$")


def patch_edits(patch: str, worktree: str) -> list[tuple[str, dict]] | None:
    """The evaluator's tool calls for one ``apply_patch`` (one per file it touches); None when the
    text is not a patch the control room can read (then a human decides)."""
    if not isinstance(patch, str) or "*** Begin Patch" not in patch:
        return None
    edits: list[tuple[str, dict]] = []
    current: dict | None = None

    def close() -> None:
        if current is None:
            return
        if current["kind"] == "Add File":
            edits.append(("write_file", {"path": current["path"], "content": "\n".join(current["new"]) + "\n"}))
        else:  # Update / Delete / the target of a Move
            edits.append(
                (
                    "edit_file",
                    {"path": current["path"], "old": "\n".join(current["old"]), "new": "\n".join(current["new"])},
                )
            )

    for line in patch.splitlines():
        header = _PATCH_HEADER.match(line)
        if header:
            kind, path = header.group(1), claude_code._relative(header.group(2).strip(), worktree)
            if kind == "Move to":
                edits.append(("edit_file", {"path": path, "old": "", "new": ""}))
                continue
            close()
            current = {"kind": kind, "path": path, "old": [], "new": []}
        elif current is not None and line[:1] == "+":
            current["new"].append(line[1:])
        elif current is not None and line[:1] == "-":
            current["old"].append(line[1:])
    close()
    return edits or None


def map_tool(name: str, tool_input: dict, worktree: str) -> list[tuple[str, dict]] | None:
    """(the evaluator's tool, its arguments) for each thing one of Codex's tool calls does; None
    when the control room cannot see what it does (then a human decides)."""
    if not isinstance(tool_input, dict):
        return None
    if name == "Bash":
        command = tool_input.get("command")
        if isinstance(command, list):
            command = " ".join(str(part) for part in command)
        return [("run_command", {"command": str(command or "")})] if command else None
    if name == "apply_patch":
        return patch_edits(str(tool_input.get("command") or tool_input.get("patch") or ""), worktree)
    return None


# -- the broker: Codex's model traffic -----------------------------------------------------------------
class CodexBroker(Broker):
    """The broker relaying the Responses API; it keeps the tools the hooks cannot see out of reach."""

    def __init__(self, **kwargs) -> None:
        self.refused: set[str] = set()
        super().__init__(**kwargs)

    def ran_calls(self, body: bytes) -> list[dict]:
        """The executing tool calls (shell, apply_patch, MCP) whose output the request carries."""
        try:
            request = json.loads(body)
        except ValueError:
            return []
        items = request.get("input") if isinstance(request, dict) else None
        if not isinstance(items, list):
            return []
        names = {
            str(i.get("call_id")): str(i.get("name") or i.get("type"))
            for i in items
            if isinstance(i, dict) and i.get("type") in ("function_call", "custom_tool_call", "local_shell_call")
        }
        ran = []
        for item in items:
            if not isinstance(item, dict) or item.get("type") not in (
                "function_call_output",
                "custom_tool_call_output",
            ):
                continue
            call_id = str(item.get("call_id") or "")
            name = names.get(call_id, "")
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output, default=str)
            if (name in EXECUTING_TOOLS or name.startswith("mcp__")) and "blocked by PreToolUse hook" not in text[:200]:
                ran.append({"call_id": call_id, "name": name})
        return ran

    def filter_request(self, body: bytes) -> bytes:
        try:
            request = json.loads(body)
        except ValueError:
            return body
        tools = request.get("tools") if isinstance(request, dict) else None
        if not isinstance(tools, list):
            return body
        kept = [t for t in tools if not (isinstance(t, dict) and t.get("name") in UNHOOKED_TOOLS)]
        if len(kept) == len(tools):
            return body
        request["tools"] = kept
        return json.dumps(request).encode()

    def filter_event(self, data: bytes) -> bytes | None:
        if not any(name.encode() in data for name in UNHOOKED_TOOLS):
            return None
        try:
            event = json.loads(data)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        item = event.get("item")
        if isinstance(item, dict) and item.get("name") in UNHOOKED_TOOLS:
            key = str(item.get("call_id") or item.get("id") or "")
            if key not in self.refused:  # said once per call (it is streamed as added, then done)
                self.refused.add(key)
                self.tell("unhooked_tool", {"name": item.get("name"), "arguments": str(item.get("arguments") or "")})
            return b""
        response = event.get("response")
        if isinstance(response, dict) and isinstance(response.get("output"), list):
            output = response["output"]
            kept = [i for i in output if not (isinstance(i, dict) and i.get("name") in UNHOOKED_TOOLS)]
            if len(kept) != len(output):
                response["output"] = kept
                return json.dumps(event).encode()
        return None


def _toml(value) -> str:
    return json.dumps(value)  # a JSON string or list is a TOML basic string or array


def hook_shell(hook_command: list[str]) -> str:
    """The hook as Codex runs it. Codex 0.171 fails open: a hook that exits with an error (other
    than 2), prints something unreadable or is killed at its timeout lets the call run. agents/hook.py
    always answers (exit 0), so anything else (no interpreter, no hook file, a crash) is turned into
    the one failure Codex treats as a refusal: exit status 2 with the reason on stderr."""
    failed = "echo 'the control room hook failed, so this tool call is denied' >&2; exit 2"
    return f"{shlex.join(hook_command)} || {{ {failed}; }}"


def config_toml(*, model: str, base_url: str, hook_command: list[str]) -> str:
    lines = [
        "# written by the control room for this run; read-only to the agent",
        f"model = {_toml(model)}",
        'model_provider = "controlroom"',
        'approval_policy = "never"',
        'sandbox_mode = "danger-full-access"',
        'web_search = "disabled"',
        "check_for_update_on_startup = false",
        "",
        "[model_providers.controlroom]",
        'name = "control room"',
        f"base_url = {_toml(base_url)}",
        f"env_key = {_toml(KEY_ENV)}",
        'wire_api = "responses"',
        "request_max_retries = 0",
        "stream_max_retries = 0",
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[shell_environment_policy]",
        # the commands the agent runs do not see the run's secret
        f"exclude = {_toml(['CR_HOOK_TOKEN', KEY_ENV])}",
        "",
        "[features]",
        "hooks = true",
        *(f"{name} = false" for name in FEATURES_OFF),
        "",
        "[[hooks.PreToolUse]]",
        'matcher = "*"',
        "[[hooks.PreToolUse.hooks]]",
        'type = "command"',
        f"command = {_toml(hook_shell(hook_command))}",
        # well past the hook's own deadline: Codex runs the call when it has to kill the hook
        f"timeout = {HOOK_TIMEOUT_S + 30}",
        "",
    ]
    return "\n".join(lines)


def prepare_files(*, session: AgentSession, grant, hook_command: list[str], base_url: str) -> RunFiles:
    home, control, hooks = control_files(session=session, grant=grant, label="Codex")
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    settings_file = control / "config.toml"
    settings_file.write_text(
        config_toml(model=session.model, base_url=base_url, hook_command=hook_command), encoding="utf-8"
    )
    # Codex's user config is the same file, pinned read-only over this one in the sandbox
    (codex_home / "config.toml").write_text(settings_file.read_text(encoding="utf-8"), encoding="utf-8")
    return RunFiles(home=home, control=control, settings=settings_file, hooks=hooks)


# -- the runner ---------------------------------------------------------------------------------------
class CodexStep(ClaudeCodeStep):
    """One run of ``codex exec --json`` as one step of the session (see the module docstring)."""

    AGENT = "codex"
    LABEL = "Codex"
    API = "openai"
    NOT_INSTALLED = "Codex is not installed on this worker: bin/codex-install (npm @openai/codex)"
    broker_class = CodexBroker

    def binary(self) -> str | None:
        return codex_binary()

    def upstream(self) -> str:
        return self.session.api_base or settings.CONTROLROOM.get("OPENAI_API_BASE") or UPSTREAM_DEFAULT

    def _resuming(self, files: RunFiles) -> bool:
        return bool(
            self.session.agent_ref
            and (files.home / ".codex" / "sessions").is_dir()
            and not (self.fresh_step and self.session.steps == 0)
        )

    def _command(self, binary: str, broker: Broker, token: str) -> tuple[list[str], dict[str, str]]:
        worktree = Path(self.session.worktree_path)
        hook_command = [sys.executable, "-I", str(claude_code.agent_dirs(self.session_id)[1] / "hook.py")]
        files = prepare_files(
            session=self.session, grant=self.grant, hook_command=hook_command, base_url=broker.url + "/v1"
        )
        argv = [binary, "exec"]
        if self._resuming(files):
            argv += ["resume", self.session.agent_ref]
        else:
            AgentSession.objects.filter(pk=self.session_id).update(agent_ref="")
            self.session.agent_ref = ""
        argv += ["--json", "--skip-git-repo-check", "--dangerously-bypass-hook-trust", self._prompt()]
        env = agent_env((f"Agent #{self.session_id}", f"agent-{self.session_id}@controlroom.invalid"))
        env.update(
            {
                "HOME": str(files.home),
                "CODEX_HOME": str(files.home / ".codex"),
                "TMPDIR": "/tmp",
                KEY_ENV: token,
                "CR_HOOK_URL": broker.url + "/hook",
                "CR_HOOK_TOKEN": token,
                "CR_HOOK_TIMEOUT_S": str(HOOK_TIMEOUT_S),
                "CR_HOOK_FORMAT": "codex",
                "NO_COLOR": "1",
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "core.hooksPath",
                "GIT_CONFIG_VALUE_0": str(files.hooks),
            }
        )
        return self._sandboxed(
            argv,
            env,
            broker=broker,
            files=files,
            pinned=[files.home / ".codex" / "config.toml", Path(binary).parent],
            pinned_dir=worktree / ".codex",
        )

    # -- tool calls -------------------------------------------------------------------------------
    def _mapped(self, name: str, tool_input: dict) -> list[tuple[str, dict]]:
        return map_tool(name, tool_input, self.session.worktree_path) or []

    def _decide(self, name: str, tool_input: dict, switch) -> Decision:
        mapped = map_tool(name, tool_input, self.session.worktree_path)
        if mapped is None:
            return self._unknown_tool(name, tool_input, switch)
        decisions = [self._authorize(tool, args) for tool, args in mapped]
        for verdict in ("deny", "ask"):
            for decision in decisions:
                if decision.decision == verdict:
                    return decision
        return decisions[0]

    def _unchecked_calls(self, ran: list[dict]) -> str:
        """Defence in depth (Codex runs a call whose hook failed to answer): a model request carrying
        the result of a command, patch or MCP call the hook never decided stops the session."""
        if not ran:
            return ""
        known = set(
            ToolCall.objects.filter(session_id=self.session_id, call_id__in=[r["call_id"] for r in ran]).values_list(
                "call_id", flat=True
            )
        )
        unchecked = [r for r in ran if r["call_id"] not in known]
        if not unchecked:
            return ""
        reason = (
            f"Codex ran {unchecked[0]['name']} ({unchecked[0]['call_id']}) without the control room's decision: "
            "the session is stopped"
        )
        with transaction.atomic():
            services.agent_event_record(
                kind="tool.unchecked",
                session=self.session,
                grant=self.grant,
                provenance="guard",
                payload={"step": self.number, "agent": self.AGENT, "calls": unchecked[:20], "reason": reason},
            )
        self.stop = ("block", reason)
        return reason

    def _unhooked_tool(self, info: dict) -> None:
        with transaction.atomic():
            services.agent_event_record(
                kind="tool.refused",
                session=self.session,
                grant=self.grant,
                provenance="guard",
                payload={
                    "step": self.number,
                    "agent": self.AGENT,
                    "tool": info.get("name"),
                    "arguments": _summarize(str(info.get("arguments") or ""), 400),
                    "reason": "Codex runs this tool without a PreToolUse hook: the control room never lets it through",
                },
            )

    # -- the CLI's events -------------------------------------------------------------------------
    def _pending_for(self, name: str, command: str = "") -> str | None:
        candidates = [call_id for call_id, row in self.pending.items() if row.name == name]
        for call_id in candidates:
            wanted = str((self.pending[call_id].arguments or {}).get("command") or "")
            if wanted and wanted in command:
                return call_id
        return candidates[0] if candidates else None

    def _on_line(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "thread.started" and event.get("thread_id"):
            ref = str(event["thread_id"])[:120]
            if ref != self.session.agent_ref:
                AgentSession.objects.filter(pk=self.session_id).update(agent_ref=ref)
                self.session.agent_ref = ref
        elif kind in ("item.started", "item.completed"):
            item = event["item"] if isinstance(event.get("item"), dict) else {}
            self._on_item(kind == "item.completed", item)
        elif kind == "turn.completed":
            self.result = {"subtype": "success", "result": getattr(self, "last_message", "") or "finished"}
        elif kind == "turn.failed":
            error = event["error"] if isinstance(event.get("error"), dict) else {}
            self.result = {"subtype": "error", "is_error": True, "result": str(error.get("message") or "turn failed")}
        elif kind == "error" and not self.result:
            self.last_error = str(event.get("message") or "")

    def _on_item(self, completed: bool, item: dict) -> None:
        itype = item.get("type")
        if itype == "agent_message" and completed:
            text = str(item.get("text") or "").strip()
            if text:
                self.last_message = text
                self._append_transcript(role="assistant", content=text)
                self._say_activity(_summarize(text, 200))
        elif itype == "command_execution":
            command = str(item.get("command") or "")
            if not completed:
                call = {"id": str(item.get("id") or ""), "name": "Bash", "arguments": json.dumps({"command": command})}
                self._append_transcript(role="assistant", content="", tool_calls=[call])
                self._say_activity(_summarize(f"Bash: {command}", 200))
                return
            call_id = self._pending_for("Bash", command)
            if call_id is None:
                return
            exit_code = item.get("exit_code")
            failed = item.get("status") == "failed" or (exit_code not in (0, None))
            text = str(item.get("aggregated_output") or "")
            if exit_code not in (0, None):
                text = f"{text}\n(exit code {exit_code})".strip()
            self._tool_result({"tool_use_id": call_id, "content": text, "is_error": failed}, {})
        elif itype == "file_change":
            changes = [c for c in item.get("changes") or [] if isinstance(c, dict)]
            shown = ", ".join(
                f"{c.get('kind')} {claude_code._relative(c.get('path'), self.session.worktree_path)}" for c in changes
            )
            if not completed:
                call = {
                    "id": str(item.get("id") or ""),
                    "name": "apply_patch",
                    "arguments": json.dumps({"changes": shown}),
                }
                self._append_transcript(role="assistant", content="", tool_calls=[call])
                self._say_activity(_summarize(f"apply_patch: {shown}", 200))
                return
            call_id = self._pending_for("apply_patch")
            if call_id is not None:
                failed = item.get("status") == "failed"
                self._tool_result({"tool_use_id": call_id, "content": shown, "is_error": failed}, {})
        elif itype == "mcp_tool_call" and completed:
            call_id = self._pending_for(f"mcp__{item.get('server')}__{item.get('tool')}")
            if call_id is not None:
                result = item.get("result") or item.get("error") or ""
                self._tool_result(
                    {
                        "tool_use_id": call_id,
                        "content": json.dumps(result, default=str)[:20000],
                        "is_error": bool(item.get("error")),
                    },
                    {},
                )

    def _finish(self, returncode: int | None) -> claude_code.StepOutcome:
        if self.result is None and getattr(self, "last_error", ""):  # type: ignore[arg-type]  # mypy picks getattr's bool overload from the left operand
            self.result = {"subtype": "error", "is_error": True, "result": self.last_error}
        return super()._finish(returncode)
