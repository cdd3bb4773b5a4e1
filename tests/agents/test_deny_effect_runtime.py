"""Deny by effect through the real runtime: a scripted model (real HTTP, real LiteLLM) drives the
step loop, the evaluator gives its verdict, and bubblewrap enforces the grant's masks. Every
attempt leaves an audit event: the evaluator's ``tool.call`` verdict, or, when the evaluator let a
command run and the sandbox refused a denied program, ``tool.denied_by_sandbox`` naming the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import services
from agents.models import ToolCall
from agents.runtime.sandbox import sandbox_available
from audit.models import AuditEvent
from tests.agents.test_runtime import drive, scripted
from tests.scripted_model import ScriptedModel, calls, finish

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SECRET = "not-a-real-secret"  # the demo repository's committed .env


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    if not sandbox_available("auto"):
        pytest.fail("bubblewrap is required for these tests (CI installs it)")


def spec(**kwargs) -> services.GrantSpec:
    return services.GrantSpec(mode="autonomous", on_unanswered="deny", **kwargs)


def run_all(fleet, commands: list[str], *, deny: tuple[str, ...], files: dict[str, str] | None = None):
    script = []
    if files:
        script.append(calls([("write_file", {"path": p, "content": c}) for p, c in files.items()]))
    script.append(calls([("run_command", {"command": command}) for command in commands]))
    script.append(finish())
    with ScriptedModel(script) as model:
        session = drive(scripted(fleet, model, spec=spec(deny=deny)))
    rows = list(ToolCall.objects.filter(session=session, name="run_command").order_by("index"))
    assert len(rows) == len(commands)
    return session, rows


def audit_for(session, row: ToolCall) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(
            session_id=session.pk,
            kind__in=("tool.call", "tool.denied_by_sandbox"),
            payload__step=row.step.number,
            payload__index=row.index,
        )
    )


READ_FAMILIES = [
    "cat .env",
    "head -c 100 .env",
    "python3 -c \"print(open('.env').read())\"",
    "sed -n p .env",
    "awk '{print}' .env",
    "grep -rn DEMO_API_TOKEN .",
    "rg -uu DEMO_API_TOKEN",
    "cp .env /tmp/e && cat /tmp/e",
    "tar cf - . | tar tvf - >/dev/null; tar cf - .env | od -c",
    "base64 .env",
    "dd if=.env",
    "od -c .env",
    "sh peek.sh",
    "python3 peek.py",
]
PEEK_SH = "cat .env; base64 .env; od -An -c .env; dd if=.env 2>/dev/null; sqlite3 :memory: \"select cast(readfile('.env') as text)\" 2>/dev/null\n"
PEEK_PY = (
    "import pathlib, subprocess\nprint(pathlib.Path('.env').read_text())\nsubprocess.run(['grep', '-r', 'DEMO', '.'])\n"
)


def test_a_read_denied_file_gets_no_bytes_through_the_runtime_whatever_reads_it(fleet, worktrees_dir):
    session, rows = run_all(
        fleet, READ_FAMILIES, deny=("Read(**/.env*)",), files={"peek.sh": PEEK_SH, "peek.py": PEEK_PY}
    )
    assert SECRET in Path(session.worktree_path, ".env").read_text()  # the file itself is untouched
    ran = []
    for row in rows:
        assert SECRET not in (row.result or ""), (row.action, row.result)
        assert audit_for(session, row), row.action
        if row.decision == "allow":
            ran.append(row.action.split("\n")[0])
    # the evaluator's verdict is the first line (cat .env is denied by the rule), the masks hold
    # for what it lets run: recursive searches and scripts the rules cannot see into
    assert rows[0].decision == "deny" and rows[0].rule == "Read(**/.env*)"
    assert {"run_command: grep -rn DEMO_API_TOKEN .", "run_command: sh peek.sh", "run_command: python3 peek.py"} <= set(
        ran
    ), ran
    grep = next(row for row in rows if row.action.startswith("run_command: grep -rn"))
    assert grep.state == ToolCall.State.DONE or "DEMO_API_TOKEN" not in grep.result


def test_grep_and_rg_under_a_read_deny_rule_are_allowed_and_never_show_the_env(fleet, worktrees_dir):
    commands = ["grep -rn TODO .", "rg TODO", "grep -rn -e TODO -e DEMO_API_TOKEN .", "rg --hidden -e TODO -e DEMO_API"]
    _session, rows = run_all(fleet, commands, deny=("Read(**/.env)",))
    for row in rows:
        assert row.decision == "allow", (row.action, row.reason)
        assert "TODO" in row.result and SECRET not in row.result and "DEMO_API_TOKEN" not in row.result


def test_writes_under_edit_denied_and_protected_paths_fail_through_the_runtime(fleet, worktrees_dir):
    writer = "import pathlib\npathlib.Path('.github/workflows/ci.yml').write_text('pwned')\n"
    session, rows = run_all(
        fleet,
        ["python3 w.py", "sh w.sh", "echo pwned > shopcart/__init__.py"],
        deny=("Edit(shopcart/**)",),
        files={"w.py": writer, "w.sh": "echo pwned >> .ci/run; cp w.sh shopcart/x.py\n"},
    )
    root = Path(session.worktree_path)
    assert "pwned" not in (root / ".github" / "workflows" / "ci.yml").read_text()
    assert "pwned" not in (root / ".ci" / "run").read_text()
    assert not (root / "shopcart" / "x.py").exists()
    assert rows[0].decision == "allow" and "Read-only file system" in rows[0].result
    assert rows[1].decision == "allow" and "Read-only file system" in rows[1].result
    assert rows[2].decision == "deny"  # named: the evaluator says it first


TOUCH_FAMILIES = [
    "touch a1",
    "bash -c 'touch a2'",
    "sh -c 'touch a3'",
    "env touch a4",
    "echo a5 | xargs touch",
    "find . -maxdepth 0 -exec touch a6 \\;",
    "nice touch a7",
    "timeout 5 touch a8",
    "nohup touch a9",
    "/usr/bin/touch a10",
    "python3 t.py",
    "sh t.sh",
    "busybox touch a13",
    "strace -f touch a14",
]
T_PY = "import subprocess\nsubprocess.run(['touch', 'a11'], capture_output=True)\n"
T_SH = "touch a12\n"


def test_a_denied_program_cannot_run_through_any_wrapper_and_each_attempt_is_audited(fleet, worktrees_dir):
    session, rows = run_all(fleet, TOUCH_FAMILIES, deny=("Bash(touch *)",), files={"t.py": T_PY, "t.sh": T_SH})
    root = Path(session.worktree_path)
    assert not [name for name in (f"a{i}" for i in range(1, 15)) if (root / name).exists()]
    by_sandbox = []
    for row in rows:
        events = audit_for(session, row)
        assert events, row.action
        refused = [e for e in events if e.kind == "tool.denied_by_sandbox"]
        if row.decision == "allow":
            # the evaluator let it run: the sandbox refused it, and said so on the grant's record
            assert [e.payload["rule"] for e in refused] == ["Bash(touch *)"], row.action
            assert refused[0].provenance == "rule" and refused[0].on_behalf_of_id == session.grants.get().delegator_id
            by_sandbox.append(row.action.split("\n")[0])
        else:
            assert row.decision in ("deny", "ask") and row.state == ToolCall.State.DENIED
    assert {"run_command: python3 t.py", "run_command: sh t.sh"} <= set(by_sandbox), by_sandbox
    # the unknown wrappers fail closed in the evaluator: they ask (denied here, nobody to answer)
    strace = rows[-1]
    assert strace.decision == "ask" and "Bash(touch *)" in strace.reason


def test_option_spellings_of_denied_commands_are_denied_through_the_runtime(fleet, worktrees_dir):
    commands = [
        "rm -fr shopcart",
        "rm -r -f shopcart",
        "rm --recursive --force shopcart",
        "rm -R -f shopcart",
        "git push -f origin HEAD",
        "git push --force origin HEAD",
        "git push --forc origin HEAD",
        "git push origin +HEAD:main",
    ]
    session, rows = run_all(fleet, commands, deny=("Bash(rm -rf *)", "Bash(git push --force *)"))
    for row in rows:
        assert (row.decision, row.state) == ("deny", ToolCall.State.DENIED), (row.action, row.reason)
        assert row.rule in ("Bash(rm -rf *)", "Bash(git push --force *)")
    assert Path(session.worktree_path, "shopcart").is_dir()
