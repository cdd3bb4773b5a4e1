"""Who works a session: one runner per agent kind (``AgentSession.agent_kind``).

Every kind runs as Celery steps (``agents.tasks.agent_step``) with the same claim, lease, checks
(stop switches, grant window, WIP limit, budget) and worktree as the built-in loop
(``agents.runtime.loop._Step``); a runner is the subclass whose ``work()`` does the step's own work:

- ``builtin``: the control room's own loop: one model call and its tool calls per step.
- ``claude-code``: the Claude Code CLI (agents/runtime/claude_code.py): one run of the CLI per step,
  every tool call through the session's grant (a PreToolUse hook), model traffic through the
  control room's metering proxy, inside the sandbox.
- ``codex``: the Codex CLI (agents/runtime/codex.py): ``codex exec --json`` per step, the same way.
"""

from __future__ import annotations

from agents.models import AgentKind, AgentSession, Status
from agents.runtime import loop
from agents.runtime.loop import StepOutcome


class _Unavailable(loop._Step):
    def work(self) -> StepOutcome:
        return self.park(
            Status.FAILED,
            f"agent {self.session.get_agent_kind_display()} is not available on this control room",
            event="session.error",
            payload={"error": f"no runner for agent kind {self.session.agent_kind!r}"},
        )


def runner_class(agent_kind: str) -> type[loop._Step]:
    if agent_kind == AgentKind.BUILTIN:
        return loop._Step
    if agent_kind == AgentKind.CLAUDE_CODE:
        from agents.runtime.claude_code import ClaudeCodeStep

        return ClaudeCodeStep
    if agent_kind == AgentKind.CODEX:
        from agents.runtime.codex import CodexStep

        return CodexStep
    return _Unavailable


def agent_kind_of(session_id: int) -> str | None:
    """One primary-key read per step (not cached: ids restart after a test database flush)."""
    return AgentSession.objects.filter(pk=session_id).values_list("agent_kind", flat=True).first()


def run_step(session_id: int, step: int, *, owner: str | None = None) -> StepOutcome:
    """Run step ``step`` of the session with the runner of its agent kind."""
    kind = agent_kind_of(session_id)
    if kind is None:
        return StepOutcome("gone")
    return loop.run_step(session_id, step, owner=owner, runner_class=runner_class(kind))
