"""The layers (docs/ARCHITECTURE.md): controlroom looks across, reviews sits above agents, and the
audit log is the ground floor. Each may import the layers below it, never one above: the contracts
in pyproject.toml ([tool.importlinter]) say so and `lint-imports` checks them on the import graph;
a fresh interpreter running only Django and ``audit`` shows that nothing else comes along."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PROJECT_APPS = ("agents", "reviews", "controlroom")


def lint_imports(*, cwd: Path) -> subprocess.CompletedProcess:
    """Check the project's contracts (its pyproject.toml) against the packages importable from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "--config", str(ROOT / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_project_keeps_its_import_contracts():
    result = lint_imports(cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def stub_project(root: Path, imports: dict[str, list[str]]) -> None:
    """Four empty packages named like the project's apps; ``imports[app]`` is what ``app.mod`` imports."""
    for app in ("controlroom", "reviews", "agents", "audit"):
        (root / app).mkdir()
        (root / app / "__init__.py").write_text("")
        (root / app / "mod.py").write_text("".join(f"import {name}\n" for name in imports.get(app, [])))


def test_the_contracts_allow_every_import_down_the_layers(tmp_path):
    stub_project(
        tmp_path,
        {"controlroom": ["reviews", "agents", "audit"], "reviews": ["agents", "audit"], "agents": ["audit"]},
    )
    result = lint_imports(cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("app", "above"),
    [
        ("audit", "agents"),
        ("audit", "reviews"),
        ("audit", "controlroom"),
        ("agents", "reviews"),
        ("agents", "controlroom"),
        ("reviews", "controlroom"),
    ],
)
def test_the_contracts_refuse_an_import_up_the_layers(tmp_path, app, above):
    stub_project(tmp_path, {app: [above]})
    result = lint_imports(cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{app}.mod -> {above}" in result.stdout


AUDIT_ALONE = """
import json, sys, tempfile
import django
from django.conf import settings

data_dir = tempfile.mkdtemp()
settings.configure(
    INSTALLED_APPS=[
        "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
        "django.contrib.sessions", "django.contrib.messages", "audit",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    MIGRATION_MODULES={"audit": None},  # its migrations follow reviews' history: build the tables directly
    USE_TZ=True,
    DATA_DIR=data_dir,
    AUDIT_SIGNING_KEY=b"a key for this probe only",
)
django.setup()

import audit.admin, audit.chain, audit.log, audit.models, audit.tasks, audit.triggers
from django.core.management import call_command
from django.db import connection, transaction

call_command("migrate", run_syncdb=True, skip_checks=True, verbosity=0)
audit.triggers.install(connection)
with transaction.atomic():
    audit.log.record("probe.system", payload={"n": 1})
    audit.log.record("probe.session", session=type("S", (), {"pk": 7, "pod_id": 1})(), agent=True)
call_command("audit_checkpoint", file=data_dir + "/checkpoints.jsonl", verbosity=0)
call_command("audit_verify", workers=1, checkpoints=data_dir + "/checkpoints.jsonl")
call_command("audit_export", output=data_dir + "/export.jsonl")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {PROJECT_APPS})
print(json.dumps(loaded))
"""


def test_audit_runs_with_django_alone_and_loads_no_other_app_of_the_project():
    """Django set up with ``audit`` as its only app of the project: record, checkpoint, verify and
    export work, and no module of agents, reviews or controlroom was imported on the way."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    probe = textwrap.dedent(AUDIT_ALONE).replace("{PROJECT_APPS}", repr(set(PROJECT_APPS)))
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    *output, loaded = result.stdout.strip().splitlines()
    assert json.loads(loaded) == []
    assert any(line.startswith("OK 2 events in 2 chains, 1 checkpoints") for line in output), result.stdout
