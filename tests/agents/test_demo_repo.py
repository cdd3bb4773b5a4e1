"""The demo repository: same every time, real history, real failing tests, a catalogue of honest work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import git
import pytest

from agents.demo_repo import (
    DEMO_AUTHOR_EMAIL,
    DEMO_RECIPES,
    DEMO_TASKS,
    DemoRepoError,
    create_demo_repo,
    is_demo_repo,
)

TASK_TYPES = {"feature", "fix", "docs", "tests", "refactor", "chore"}


def _pytest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def _pytest_env() -> dict[str, str]:
    # the demo's tests need no plugins; skipping this venv's plugins makes each run ~5x faster
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    return env


def run_pytest(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _pytest_command(*args), cwd=repo, capture_output=True, text=True, timeout=60, env=_pytest_env()
    )


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A demo repository of one's own, to change."""
    return create_demo_repo(tmp_path / "demo-shop")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo repository shared by the tests that only look at it."""
    return create_demo_repo(tmp_path_factory.mktemp("pristine") / "demo-shop")


def test_it_builds_a_git_repository_on_main_with_a_fixed_history(pristine: Path):
    repo = git.Repo(pristine)
    assert repo.active_branch.name == "main"
    commits = list(repo.iter_commits("main"))
    assert len(commits) >= 6
    assert {c.author.email for c in commits} == {DEMO_AUTHOR_EMAIL}
    assert {c.author.name for c in commits} == {"Demo Maintainer"}
    assert all(c.committed_date == c.authored_date for c in commits)
    assert not repo.is_dirty(untracked_files=True)


def test_two_builds_are_identical_down_to_the_commit_ids(tmp_path: Path):
    first = create_demo_repo(tmp_path / "one")
    second = create_demo_repo(tmp_path / "two")
    assert git.Repo(first).head.commit.hexsha == git.Repo(second).head.commit.hexsha


def test_creating_it_again_leaves_the_existing_repository_untouched(demo: Path):
    repo = git.Repo(demo)
    head = repo.head.commit.hexsha
    (demo / "scratch.txt").write_text("a maintainer's uncommitted work\n")
    assert create_demo_repo(demo) == demo
    assert repo.head.commit.hexsha == head
    assert (demo / "scratch.txt").read_text() == "a maintainer's uncommitted work\n"


def test_it_refuses_to_overwrite_a_directory_that_is_not_the_demo(tmp_path: Path):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(DemoRepoError, match="not the demo repository"):
        create_demo_repo(other)
    assert (other / "thesis.tex").read_text() == "do not delete"
    assert not is_demo_repo(other)


def test_it_builds_into_an_existing_empty_directory(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_demo_repo(create_demo_repo(empty))
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no staging directory left behind


@pytest.mark.parametrize(
    "relative",
    [
        "README.md",
        "pyproject.toml",
        ".github/workflows/ci.yml",
        ".ci/run",
        ".env",
        "shopcart/__init__.py",
        "shopcart/pricing.py",
        "shopcart/inventory.py",
        "shopcart/textutils.py",
        "shopcart/report.py",
        "shopcart/shipping.py",
        "tests/test_pricing.py",
    ],
)
def test_it_commits_the_files_the_demos_rely_on(pristine: Path, relative: str):
    tracked = set(git.Repo(pristine).git.ls_files().splitlines())
    assert relative in tracked


def test_the_committed_env_file_holds_the_fake_token(pristine: Path):
    assert "DEMO_API_TOKEN=not-a-real-secret" in (pristine / ".env").read_text()


def test_the_ci_entry_point_is_executable(pristine: Path):
    assert os.access(pristine / ".ci/run", os.X_OK)
    mode = git.Repo(pristine).git.ls_files("-s", ".ci/run").split()[0]
    assert mode == "100755"


def test_some_tests_fail_because_of_real_bugs_and_the_rest_pass(pristine: Path):
    result = run_pytest(pristine)
    assert result.returncode == 1, result.stdout
    assert "7 failed, 13 passed" in result.stdout
    for name in (
        "test_apply_discount_returns_the_discounted_price",
        "test_stock_at_the_threshold_is_low",
        "test_slugify_drops_leading_and_trailing_punctuation",
        "test_truncate_never_exceeds_the_limit",
        "test_format_money_pads_single_digit_cents",
        "test_orders_of_exactly_the_threshold_ship_free",
    ):
        assert name in result.stdout


def test_the_code_carries_todo_notes(pristine: Path):
    todos = [
        line
        for path in pristine.rglob("*")
        if path.is_file() and ".git" not in path.parts
        for line in path.read_text(encoding="utf-8").splitlines()
        if "TODO:" in line
    ]
    assert len(todos) >= 8


def test_the_catalogue_has_at_least_twelve_distinct_well_formed_tasks():
    assert len(DEMO_TASKS) >= 12
    assert len({t["id"] for t in DEMO_TASKS}) == len(DEMO_TASKS)
    assert len({t["title"] for t in DEMO_TASKS}) == len(DEMO_TASKS)
    for task in DEMO_TASKS:
        assert set(task) >= {"id", "title", "task_type", "file", "check", "commit", "criteria"}
        assert task["task_type"] in TASK_TYPES
        assert task["check"].startswith("python -m pytest -q")
        assert task["id"] in DEMO_RECIPES
    assert {t["task_type"] for t in DEMO_TASKS} == TASK_TYPES


def test_every_task_names_a_file_of_the_repository_and_its_recipe_applies_exactly_once(pristine: Path):
    for task in DEMO_TASKS:
        assert (pristine / task["file"]).is_file(), task["id"]
        for edit in DEMO_RECIPES[task["id"]].edits:
            assert (pristine / edit.path).read_text(encoding="utf-8").count(edit.old) == 1, (task["id"], edit.path)


def test_doing_all_the_work_makes_every_check_and_the_whole_suite_pass(demo: Path):
    for task in DEMO_TASKS:
        recipe = DEMO_RECIPES[task["id"]]
        for edit in recipe.edits:
            path = demo / edit.path
            path.write_text(path.read_text(encoding="utf-8").replace(edit.old, edit.new, 1), encoding="utf-8")
        for new_file in recipe.new_files:
            (demo / new_file.path).write_text(new_file.content, encoding="utf-8")
    checks = {  # every task's own check, run side by side
        task["id"]: subprocess.Popen(
            _pytest_command(*task["check"].split()[4:]),
            cwd=demo,
            env=_pytest_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for task in DEMO_TASKS
    }
    outcomes = {
        task_id: (process.communicate(timeout=60)[0], process.returncode) for task_id, process in checks.items()
    }
    assert {task_id: code for task_id, (_, code) in outcomes.items() if code != 0} == {}, outcomes
    result = run_pytest(demo)
    assert result.returncode == 0, result.stdout
    assert " failed" not in result.stdout


def test_every_file_of_the_data_folder_is_committed_once():
    from agents.demo_repo import DEMO_FILES, HISTORY

    committed = [path for _, files in HISTORY for path in files]
    on_disk = sorted(
        str(p.relative_to(DEMO_FILES))
        for p in DEMO_FILES.rglob("*")
        if p.is_file() and not {"__pycache__", ".pytest_cache"} & set(p.parts)
    )
    assert sorted(committed) == on_disk and len(set(committed)) == len(committed)
