"""The PreToolUse hook a supervised Claude Code or Codex session calls before every tool call.

Run by Claude Code (``.claude`` settings written by agents/runtime/claude_code.py) or Codex (the
``[hooks]`` of its ``config.toml``, written by agents/runtime/codex.py) as
``python -I hook.py`` (a copy of this file; -I: the stdlib, never a neighbour module), inside the session's sandbox, with the tool call as JSON on stdin. It asks
the control room (the session's runner, on loopback, authenticated with the session's own secret in
``CR_HOOK_TOKEN``) and prints Claude Code's decision JSON on stdout::

    {"hookSpecificOutput": {"hookEventName": "PreToolUse",
                            "permissionDecision": "allow" | "deny",
                            "permissionDecisionReason": "..."}}

Both CLIs send the same input (``hook_event_name``, ``tool_name``, ``tool_input``, ``tool_use_id``).
With ``CR_HOOK_FORMAT=codex`` the answer is in Codex's dialect instead: Codex 0.171 does not
support ``"ask"`` (it logs it as unsupported and runs the call), so an allow is an empty answer
(exit 0, nothing on stdout: the call runs) and anything else is the ``deny`` JSON above (Codex then
blocks the call and shows the model the reason).

It fails closed: the control room unreachable, slow (``CR_HOOK_TIMEOUT_S``), answering an error or
anything unreadable → ``deny``. Plain standard library on purpose: no Django, no database, nothing of
the project imported, so it starts fast and has nothing to misconfigure.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_S = 30.0


def _output(decision: str, reason: str) -> str:
    return json.dumps(
        {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": decision,
                "permissionDecisionReason": reason,
            }
        }
    )


def decide(payload: bytes, *, url: str, token: str, timeout_s: float) -> tuple[str, str]:
    """(decision, reason) from the control room; ``deny`` whenever it cannot give one."""
    if not url or not token:
        return "deny", "control room: the hook is not configured (no CR_HOOK_URL / CR_HOOK_TOKEN), so nothing runs"
    request = urllib.request.Request(
        url,
        data=payload,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        return "deny", f"control room refused the check (HTTP {exc.code}), so this tool call is denied"
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return "deny", f"control room unreachable ({reason}), so this tool call is denied"
    except ValueError:
        return "deny", "control room answered something unreadable, so this tool call is denied"
    decision = answer.get("decision") if isinstance(answer, dict) else None
    reason = str(answer.get("reason") or "") if isinstance(answer, dict) else ""
    if decision != "allow":
        return "deny", reason or "denied by the control room"
    return "allow", reason or "allowed by the session's grant"


def _render(decision: str, reason: str, dialect: str) -> str:
    if dialect == "codex" and decision == "allow":
        return ""
    return _output(decision, reason) + "\n"


def main() -> int:
    try:
        payload = sys.stdin.buffer.read()
        try:
            timeout_s = float(os.environ.get("CR_HOOK_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
        except ValueError:
            timeout_s = DEFAULT_TIMEOUT_S
        decision, reason = decide(
            payload,
            url=os.environ.get("CR_HOOK_URL", ""),
            token=os.environ.get("CR_HOOK_TOKEN", ""),
            timeout_s=timeout_s,
        )
    except Exception as exc:  # whatever happens here, the tool call does not run
        decision, reason = "deny", f"the control room's hook failed ({type(exc).__name__}), so this tool call is denied"
    sys.stdout.write(_render(decision, reason, os.environ.get("CR_HOOK_FORMAT", "")))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
