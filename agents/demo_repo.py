"""The demo git repository: a tiny shop back office (``shopcart``) with real, small defects.

``create_demo_repo(path)`` builds the same repository every time (fixed author, fixed dates, so
identical commit ids) from the files under ``agents/demo_data/demo-shop/``: a Python package, plain pytest tests (six fail because of real bugs),
``TODO:`` notes, a README, a CI workflow, a local CI entry point and a committed ``.env`` holding a
fake token, so that permission demos have a secret file to deny.

``DEMO_TASKS`` is the catalogue of honest work in that repository; seeding gives sessions these
titles as goals. ``DEMO_RECIPES`` holds how each task is done (exact replacements and new files):
the offline model (``agents/runtime/sim.py``) uses it, and the tests apply every recipe to prove
that the whole suite passes once all the work is done.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import dedent

import git

DEMO_AUTHOR_NAME = "Demo Maintainer"
DEMO_AUTHOR_EMAIL = "maintainer@demo.invalid"
DEFAULT_BRANCH = "main"
INITIAL_COMMIT_MESSAGE = "chore: start shopcart, a tiny shop back office"
GIT_TIMEOUT_S = 30


class DemoRepoError(Exception):
    """The demo repository cannot be created at the requested place."""


def _text(block: str) -> str:
    return dedent(block).lstrip("\n")


# --- the files, commit by commit ------------------------------------------------------------

# The repository's files are real files under agents/demo_data/demo-shop/ (shipped with the
# package; ruff and pytest leave them alone: their bugs are the agents' work).
DEMO_FILES = Path(__file__).resolve().parent / "demo_data" / "demo-shop"

# (message, files) in order; dates are fixed so every build gives the same commit ids.
HISTORY: tuple[tuple[str, tuple[str, ...]], ...] = (
    (INITIAL_COMMIT_MESSAGE, ("README.md", "pyproject.toml", ".gitignore", "shopcart/__init__.py")),
    ("feat(pricing): discounts, tax and bulk prices", ("shopcart/pricing.py", "tests/test_pricing.py")),
    ("feat(inventory): stock levels per SKU", ("shopcart/inventory.py", "tests/test_inventory.py")),
    (
        "feat(textutils): slugs, truncation and whitespace helpers",
        ("shopcart/textutils.py", "tests/test_textutils.py"),
    ),
    (
        "feat(shipping): shipping costs with free shipping threshold",
        ("shopcart/shipping.py", "tests/test_shipping.py"),
    ),
    ("feat(report): plain-text sales reports", ("shopcart/report.py", "tests/test_report.py")),
    ("ci: workflow, local entry point and demo environment", (".github/workflows/ci.yml", ".ci/run", ".env")),
)
_EXECUTABLE = {".ci/run"}
_FIRST_DATE = (2024, 3, 4)  # one commit a day from here, at 09:30 UTC


# --- the work catalogue -----------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (exact text, present once) with ``new`` in ``path``."""

    path: str
    old: str
    new: str


@dataclass(frozen=True)
class NewFile:
    path: str
    content: str


@dataclass(frozen=True)
class Recipe:
    """How a demo task is done: exact replacements, new files, and the commit message."""

    edits: tuple[Edit, ...]
    new_files: tuple[NewFile, ...] = field(default_factory=tuple)


def _task(task_id: str, title: str, task_type: str, file: str, check: str, commit: str, criteria: str) -> dict:
    return {
        "id": task_id,
        "title": title,
        "task_type": task_type,
        "file": file,
        "check": check,
        "commit": commit,
        "criteria": criteria,
    }


DEMO_TASKS: list[dict] = [
    _task(
        "fix-discount",
        "Fix apply_discount: it returns the discount instead of the discounted price",
        "fix",
        "shopcart/pricing.py",
        "python -m pytest -q tests/test_pricing.py",
        "fix(pricing): apply_discount returns the discounted price",
        "tests/test_pricing.py passes",
    ),
    _task(
        "fix-low-stock",
        "Fix is_low_stock: stock exactly at the threshold must count as low",
        "fix",
        "shopcart/inventory.py",
        "python -m pytest -q tests/test_inventory.py",
        "fix(inventory): stock at the threshold counts as low",
        "tests/test_inventory.py passes",
    ),
    _task(
        "fix-slugify",
        "Fix slugify: strip leading and trailing dashes from slugs",
        "fix",
        "shopcart/textutils.py",
        "python -m pytest -q tests/test_textutils.py -k slugify",
        "fix(textutils): slugify strips leading and trailing dashes",
        "the slugify tests pass",
    ),
    _task(
        "fix-truncate",
        "Fix truncate: shortened text must never exceed the limit",
        "fix",
        "shopcart/textutils.py",
        "python -m pytest -q tests/test_textutils.py -k truncate",
        "fix(textutils): truncate stays within the limit",
        "the truncate tests pass",
    ),
    _task(
        "fix-format-money",
        "Fix format_money: pad single-digit cents ($12.05, not $12.5)",
        "fix",
        "shopcart/report.py",
        "python -m pytest -q tests/test_report.py",
        "fix(report): format_money pads single-digit cents",
        "tests/test_report.py passes",
    ),
    _task(
        "fix-free-shipping",
        "Fix shipping_cost: orders of exactly the free-shipping threshold ship free",
        "fix",
        "shopcart/shipping.py",
        "python -m pytest -q tests/test_shipping.py",
        "fix(shipping): free shipping from the threshold, inclusive",
        "tests/test_shipping.py passes",
    ),
    _task(
        "validate-discount",
        "Validate the discount percent in apply_discount (0 to 100, else ValueError)",
        "feature",
        "shopcart/pricing.py",
        "python -m pytest -q tests/test_pricing_validation.py",
        "feat(pricing): refuse discount percentages outside 0-100",
        "tests/test_pricing_validation.py passes",
    ),
    _task(
        "inventory-restock",
        "Add Inventory.restock to add several SKUs at once",
        "feature",
        "shopcart/inventory.py",
        "python -m pytest -q tests/test_inventory_restock.py",
        "feat(inventory): restock several SKUs at once",
        "tests/test_inventory_restock.py passes",
    ),
    _task(
        "inventory-remove-check",
        "Refuse to remove more stock than there is in Inventory.remove",
        "feature",
        "shopcart/inventory.py",
        "python -m pytest -q tests/test_inventory_remove.py",
        "feat(inventory): refuse to remove more than is in stock",
        "tests/test_inventory_remove.py passes",
    ),
    _task(
        "report-total",
        "Add a TOTAL line to sales_summary",
        "feature",
        "shopcart/report.py",
        "python -m pytest -q tests/test_report_total.py",
        "feat(report): sales_summary ends with a TOTAL line",
        "tests/test_report_total.py passes",
    ),
    _task(
        "delivery-estimate",
        "Add estimate_delivery_days to shipping (1 day express, 3 standard)",
        "feature",
        "shopcart/shipping.py",
        "python -m pytest -q tests/test_delivery.py",
        "feat(shipping): estimate_delivery_days",
        "tests/test_delivery.py passes",
    ),
    _task(
        "docs-normalize-whitespace",
        "Document normalize_whitespace with a docstring",
        "docs",
        "shopcart/textutils.py",
        "python -m pytest -q tests/test_textutils.py -k normalize",
        "docs(textutils): docstring for normalize_whitespace",
        "the docstring says what the function does",
    ),
    _task(
        "docs-readme-tests",
        "Explain how to run the tests in the README",
        "docs",
        "README.md",
        "python -m pytest -q --collect-only",
        "docs(readme): how to run the tests",
        "the README says how to run the tests and .ci/run",
    ),
    _task(
        "tests-word-count",
        "Write tests for textutils.word_count",
        "tests",
        "shopcart/textutils.py",
        "python -m pytest -q tests/test_word_count.py",
        "test(textutils): cover word_count",
        "tests/test_word_count.py exists and passes",
    ),
    _task(
        "refactor-line-item",
        "Refactor line_item to reuse format_money",
        "refactor",
        "shopcart/report.py",
        "python -m pytest -q tests/test_report.py -k line_item",
        "refactor(report): line_item reuses format_money",
        "the line_item tests still pass",
    ),
    _task(
        "chore-pytest-config",
        "Configure pytest testpaths in pyproject.toml",
        "chore",
        "pyproject.toml",
        "python -m pytest -q --collect-only",
        "chore: configure pytest testpaths",
        "a bare pytest collects tests/ only",
    ),
]

DEMO_RECIPES: dict[str, Recipe] = {
    "fix-discount": Recipe(
        edits=(
            Edit(
                "shopcart/pricing.py",
                "    return round(price * percent / 100, 2)\n",
                "    return round(price * (1 - percent / 100), 2)\n",
            ),
        )
    ),
    "fix-low-stock": Recipe(
        edits=(
            Edit(
                "shopcart/inventory.py",
                "        return self.count(sku) < threshold\n",
                "        return self.count(sku) <= threshold\n",
            ),
        )
    ),
    "fix-slugify": Recipe(
        edits=(
            Edit(
                "shopcart/textutils.py",
                '    return re.sub(r"[^a-z0-9]+", "-", text.lower())\n',
                '    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")\n',
            ),
        )
    ),
    "fix-truncate": Recipe(
        edits=(
            Edit(
                "shopcart/textutils.py",
                '    return text[:limit] + "..."\n',
                '    return text[: max(limit - 3, 0)] + "..."\n',
            ),
        )
    ),
    "fix-format-money": Recipe(
        edits=(
            Edit(
                "shopcart/report.py",
                '    return f"${cents // 100}.{cents % 100}"\n',
                '    return f"${cents // 100}.{cents % 100:02d}"\n',
            ),
        )
    ),
    "fix-free-shipping": Recipe(
        edits=(
            Edit(
                "shopcart/shipping.py",
                "    if order_total > FREE_SHIPPING_FROM:\n",
                "    if order_total >= FREE_SHIPPING_FROM:\n",
            ),
        )
    ),
    "validate-discount": Recipe(
        edits=(
            Edit(
                "shopcart/pricing.py",
                "    # TODO: validate that percent is between 0 and 100 (raise ValueError otherwise)\n",
                "    if not 0 <= percent <= 100:\n"
                '        raise ValueError(f"percent must be between 0 and 100, got {percent}")\n',
            ),
        ),
        new_files=(
            NewFile(
                "tests/test_pricing_validation.py",
                _text("""
            import pytest

            from shopcart.pricing import apply_discount


            def test_a_negative_percent_is_refused():
                with pytest.raises(ValueError):
                    apply_discount(10.0, -5)


            def test_more_than_100_percent_is_refused():
                with pytest.raises(ValueError):
                    apply_discount(10.0, 150)
            """),
            ),
        ),
    ),
    "inventory-restock": Recipe(
        edits=(
            Edit(
                "shopcart/inventory.py",
                "    # TODO: add restock(items) that adds several SKUs at once from a {sku: quantity} dict\n",
                "    def restock(self, items: dict[str, int]) -> None:\n"
                '        """Add several SKUs at once from a ``{sku: quantity}`` mapping."""\n'
                "        for sku, quantity in items.items():\n"
                "            self.add(sku, quantity)\n",
            ),
        ),
        new_files=(
            NewFile(
                "tests/test_inventory_restock.py",
                _text("""
            from shopcart.inventory import Inventory


            def test_restock_adds_every_sku():
                inventory = Inventory()
                inventory.add("mug", 1)
                inventory.restock({"mug": 4, "tea": 10})
                assert (inventory.count("mug"), inventory.count("tea")) == (5, 10)
            """),
            ),
        ),
    ),
    "inventory-remove-check": Recipe(
        edits=(
            Edit(
                "shopcart/inventory.py",
                "        # TODO: refuse to remove more than is in stock (raise ValueError)\n",
                "        if quantity > self.count(sku):\n"
                '            raise ValueError(f"only {self.count(sku)} of {sku} in stock, cannot remove {quantity}")\n',
            ),
        ),
        new_files=(
            NewFile(
                "tests/test_inventory_remove.py",
                _text("""
            import pytest

            from shopcart.inventory import Inventory


            def test_removing_more_than_the_stock_is_refused():
                inventory = Inventory()
                inventory.add("mug", 2)
                with pytest.raises(ValueError):
                    inventory.remove("mug", 3)
                assert inventory.count("mug") == 2
            """),
            ),
        ),
    ),
    "report-total": Recipe(
        edits=(
            Edit(
                "shopcart/report.py",
                '    # TODO: add a final "TOTAL" line with the sum of all line totals\n'
                '    return "\\n".join(line_item(name, quantity, unit) for name, quantity, unit in lines)\n',
                "    body = [line_item(name, quantity, unit) for name, quantity, unit in lines]\n"
                "    total = sum(quantity * unit for _, quantity, unit in lines)\n"
                "    body.append(f\"{'TOTAL':<20}       {format_money(total)}\")\n"
                '    return "\\n".join(body)\n',
            ),
        ),
        new_files=(
            NewFile(
                "tests/test_report_total.py",
                _text("""
            from shopcart.report import sales_summary


            def test_the_last_line_is_the_total():
                summary = sales_summary([("mug", 2, 625), ("tea", 1, 300)])
                assert summary.splitlines()[-1].split() == ["TOTAL", "$15.50"]
            """),
            ),
        ),
    ),
    "delivery-estimate": Recipe(
        edits=(
            Edit(
                "shopcart/shipping.py",
                "# TODO: add estimate_delivery_days(express: bool) -> int (1 day express, 3 days standard)\n",
                "def estimate_delivery_days(*, express: bool = False) -> int:\n"
                '    """Working days until delivery: 1 with express shipping, 3 otherwise."""\n'
                "    return 1 if express else 3\n",
            ),
        ),
        new_files=(
            NewFile(
                "tests/test_delivery.py",
                _text("""
            from shopcart.shipping import estimate_delivery_days


            def test_express_arrives_next_day():
                assert estimate_delivery_days(express=True) == 1


            def test_standard_takes_three_days():
                assert estimate_delivery_days() == 3
            """),
            ),
        ),
    ),
    "docs-normalize-whitespace": Recipe(
        edits=(
            Edit(
                "shopcart/textutils.py",
                "    # TODO: add a docstring\n",
                '    """Collapse runs of whitespace (spaces, tabs, newlines) into one space and trim both ends."""\n',
            ),
        )
    ),
    "docs-readme-tests": Recipe(
        edits=(
            Edit(
                "README.md",
                "TODO: explain how to run the tests (and the CI entry point `.ci/run`).\n",
                "From the repository root, with pytest installed:\n\n"
                "    python -m pytest -q\n\n"
                "CI runs the same thing through `.ci/run`, which passes its arguments on to pytest\n"
                "(for example `.ci/run -k pricing`).\n",
            ),
        )
    ),
    "tests-word-count": Recipe(
        edits=(Edit("shopcart/textutils.py", "    # TODO: tests (word_count has none)\n", ""),),
        new_files=(
            NewFile(
                "tests/test_word_count.py",
                _text("""
            from shopcart.textutils import word_count


            def test_words_are_separated_by_any_whitespace():
                assert word_count("blue  mug\\twith\\nlid") == 4


            def test_empty_text_has_no_words():
                assert word_count("   ") == 0
            """),
            ),
        ),
    ),
    "refactor-line-item": Recipe(
        edits=(
            Edit(
                "shopcart/report.py",
                "    # TODO: reuse format_money instead of duplicating the formatting here\n"
                "    total = quantity * unit_cents\n"
                '    return f"{name:<20} x{quantity:>3}  ${total // 100}.{total % 100:02d}"\n',
                '    return f"{name:<20} x{quantity:>3}  {format_money(quantity * unit_cents)}"\n',
            ),
        )
    ),
    "chore-pytest-config": Recipe(
        edits=(
            Edit(
                "pyproject.toml",
                '# TODO: configure pytest (testpaths = ["tests"]) so that a bare `pytest` finds the tests\n',
                '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
            ),
        )
    ),
}

TASKS_BY_ID: dict[str, dict] = {task["id"]: task for task in DEMO_TASKS}


# --- building the repository ------------------------------------------------------------------


def _git_env(day: int) -> dict[str, str]:
    year, month, first_day = _FIRST_DATE
    date = f"{year:04d}-{month:02d}-{first_day + day:02d}T09:30:00+00:00"
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": DEMO_AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": DEMO_AUTHOR_EMAIL,
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_NAME": DEMO_AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": DEMO_AUTHOR_EMAIL,
        "GIT_COMMITTER_DATE": date,
        # no hooks, no signing, whatever the machine's git configuration says
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "core.hooksPath",
        "GIT_CONFIG_VALUE_0": os.devnull,
        "GIT_CONFIG_KEY_1": "commit.gpgsign",
        "GIT_CONFIG_VALUE_1": "false",
    }


def is_demo_repo(path: Path) -> bool:
    """True when ``path`` is a git repository whose first commit is the demo's."""
    if not (Path(path) / ".git").exists():
        return False
    try:
        repo = git.Repo(path)
        try:
            roots = repo.git.rev_list("--max-parents=0", DEFAULT_BRANCH, kill_after_timeout=GIT_TIMEOUT_S).split()
            if len(roots) != 1:
                return False
            root = repo.commit(roots[0])
            return root.message.strip() == INITIAL_COMMIT_MESSAGE and root.author.email == DEMO_AUTHOR_EMAIL
        finally:
            repo.close()
    except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return False


def _build(target: Path) -> None:
    repo = git.Repo.init(target)
    try:
        repo.git.symbolic_ref("HEAD", f"refs/heads/{DEFAULT_BRANCH}", kill_after_timeout=GIT_TIMEOUT_S)
        for day, (message, files) in enumerate(HISTORY):
            for relative in files:
                file_path = target / relative
                file_path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(DEMO_FILES / relative, file_path)
                except FileNotFoundError:
                    raise DemoRepoError(f"the demo file {relative} is missing from {DEMO_FILES}") from None
                file_path.chmod(0o755 if relative in _EXECUTABLE else 0o644)
            env = _git_env(day)
            repo.git.add("-A", env=env, kill_after_timeout=GIT_TIMEOUT_S)
            repo.git.commit("-q", "-m", message, env=env, kill_after_timeout=GIT_TIMEOUT_S)
    finally:
        repo.close()


def create_demo_repo(path: Path) -> Path:
    """Create the demo repository at ``path`` (idempotent) and return its path.

    If ``path`` already holds the demo repository it is left untouched. Any other non-empty
    ``path`` is refused (DemoRepoError) rather than overwritten. The repository is built in a
    sibling temporary directory and moved into place, so a crash never leaves half a repository.
    """
    path = Path(path)
    if is_demo_repo(path):
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DemoRepoError(f"{path} exists and is not the demo repository; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        _build(staging)
        try:
            if path.exists():
                path.rmdir()  # empty (checked above); rename cannot replace it on every platform
            staging.rename(path)
        except OSError:
            if is_demo_repo(path):  # another process built it at the same moment
                return path
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path
