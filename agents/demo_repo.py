"""The demo git repository: a tiny shop back office (``shopcart``) with real, small defects.

``create_demo_repo(path)`` builds the same repository every time (fixed author, fixed dates, so
identical commit ids): a Python package, plain pytest tests (six fail because of real bugs),
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

_README = _text("""
    # shopcart

    A tiny shop back office: prices, stock, shipping and plain-text sales reports.

    This is the demo repository of Control Room. Every file is small and a few things are
    deliberately unfinished: some tests fail because of real bugs, and the code carries
    `TODO:` notes.

    ## Layout

    - `shopcart/pricing.py` — discounts, tax and bulk prices
    - `shopcart/inventory.py` — stock levels per SKU
    - `shopcart/shipping.py` — shipping costs
    - `shopcart/textutils.py` — slugs, truncation and other text helpers
    - `shopcart/report.py` — plain-text sales reports
    - `tests/` — plain pytest test functions

    ## Running the tests

    TODO: explain how to run the tests (and the CI entry point `.ci/run`).
    """)

_PYPROJECT = _text("""
    [build-system]
    requires = ["setuptools>=68"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "shopcart"
    version = "0.3.0"
    description = "A tiny shop back office (the demo repository of Control Room)."
    requires-python = ">=3.10"

    # TODO: configure pytest (testpaths = ["tests"]) so that a bare `pytest` finds the tests
    """)

_GITIGNORE = _text("""
    __pycache__/
    *.pyc
    .pytest_cache/
    *.egg-info/
    build/
    dist/
    """)

_INIT = _text('''
    """shopcart: a tiny shop back office."""

    __version__ = "0.3.0"
    ''')

_PRICING = _text('''
    """Prices, discounts and tax. Amounts are floats in the shop's currency."""
    from __future__ import annotations


    def apply_discount(price: float, percent: float) -> float:
        """Return ``price`` reduced by ``percent`` per cent, rounded to cents."""
        # TODO: validate that percent is between 0 and 100 (raise ValueError otherwise)
        return round(price * percent / 100, 2)


    def total_with_tax(subtotal: float, rate: float) -> float:
        """Return ``subtotal`` plus tax at ``rate`` (0.2 means 20 %), rounded to cents."""
        return round(subtotal * (1 + rate), 2)


    def bulk_price(unit_price: float, quantity: int) -> float:
        """Price of ``quantity`` units: 10 % off from 10 units up."""
        total = unit_price * quantity
        if quantity >= 10:
            total = apply_discount(total, 10)
        return round(total, 2)
    ''')

_TEST_PRICING = _text("""
    from shopcart.pricing import apply_discount, bulk_price, total_with_tax


    def test_apply_discount_returns_the_discounted_price():
        assert apply_discount(200.0, 25) == 150.0


    def test_a_zero_discount_keeps_the_price():
        assert apply_discount(80.0, 0) == 80.0


    def test_total_with_tax_adds_the_rate():
        assert total_with_tax(100.0, 0.2) == 120.0


    def test_fewer_than_ten_units_pay_full_price():
        assert bulk_price(2.5, 4) == 10.0
    """)

_INVENTORY = _text('''
    """Stock levels per SKU."""
    from __future__ import annotations


    class Inventory:
        """In-memory stock levels, keyed by SKU."""

        def __init__(self) -> None:
            self._stock: dict[str, int] = {}

        def add(self, sku: str, quantity: int) -> None:
            if quantity <= 0:
                raise ValueError("quantity must be positive")
            self._stock[sku] = self._stock.get(sku, 0) + quantity

        def remove(self, sku: str, quantity: int) -> None:
            # TODO: refuse to remove more than is in stock (raise ValueError)
            self._stock[sku] = self._stock.get(sku, 0) - quantity

        def count(self, sku: str) -> int:
            return self._stock.get(sku, 0)

        def is_low_stock(self, sku: str, threshold: int = 5) -> bool:
            """True when the stock of ``sku`` is at or below ``threshold``."""
            return self.count(sku) < threshold

        # TODO: add restock(items) that adds several SKUs at once from a {sku: quantity} dict
    ''')

_TEST_INVENTORY = _text("""
    from shopcart.inventory import Inventory


    def test_added_stock_is_counted():
        inventory = Inventory()
        inventory.add("mug", 3)
        inventory.add("mug", 2)
        assert inventory.count("mug") == 5


    def test_removing_lowers_the_count():
        inventory = Inventory()
        inventory.add("mug", 3)
        inventory.remove("mug", 1)
        assert inventory.count("mug") == 2


    def test_stock_at_the_threshold_is_low():
        inventory = Inventory()
        inventory.add("mug", 5)
        assert inventory.is_low_stock("mug", threshold=5)


    def test_plenty_of_stock_is_not_low():
        inventory = Inventory()
        inventory.add("mug", 50)
        assert not inventory.is_low_stock("mug")
    """)

_TEXTUTILS = _text('''
    """Small text helpers for product names and descriptions."""
    from __future__ import annotations

    import re


    def slugify(text: str) -> str:
        """Lower-case ``text`` and join its words with dashes: "Blue Mug!" -> "blue-mug"."""
        return re.sub(r"[^a-z0-9]+", "-", text.lower())


    def truncate(text: str, limit: int) -> str:
        """Shorten ``text`` to at most ``limit`` characters, ending with "..." when cut."""
        if len(text) <= limit:
            return text
        return text[:limit] + "..."


    def normalize_whitespace(text: str) -> str:
        # TODO: add a docstring
        return " ".join(text.split())


    def word_count(text: str) -> int:
        """Number of words in ``text``."""
        # TODO: tests (word_count has none)
        return len(text.split())
    ''')

_TEST_TEXTUTILS = _text("""
    from shopcart.textutils import normalize_whitespace, slugify, truncate


    def test_slugify_joins_words_with_dashes():
        assert slugify("Blue Mug") == "blue-mug"


    def test_slugify_drops_leading_and_trailing_punctuation():
        assert slugify("  Blue Mug! ") == "blue-mug"


    def test_truncate_keeps_short_text():
        assert truncate("mug", 10) == "mug"


    def test_truncate_never_exceeds_the_limit():
        shortened = truncate("a very long product description", 10)
        assert len(shortened) <= 10
        assert shortened.endswith("...")


    def test_normalize_whitespace_collapses_runs():
        assert normalize_whitespace("  blue \\t mug\\n") == "blue mug"
    """)

_SHIPPING = _text('''
    """Shipping costs."""
    from __future__ import annotations

    FREE_SHIPPING_FROM = 50.00


    def shipping_cost(order_total: float, weight_kg: float, *, express: bool = False) -> float:
        """4.90 plus 1.20 per kg, doubled for express; free from FREE_SHIPPING_FROM (inclusive)."""
        if order_total > FREE_SHIPPING_FROM:
            return 0.0
        cost = 4.90 + 1.20 * weight_kg
        if express:
            cost *= 2
        return round(cost, 2)


    # TODO: add estimate_delivery_days(express: bool) -> int (1 day express, 3 days standard)
    ''')

_TEST_SHIPPING = _text("""
    from shopcart.shipping import FREE_SHIPPING_FROM, shipping_cost


    def test_small_orders_pay_by_weight():
        assert shipping_cost(20.0, 2.0) == 7.3


    def test_express_doubles_the_cost():
        assert shipping_cost(20.0, 2.0, express=True) == 14.6


    def test_orders_of_exactly_the_threshold_ship_free():
        assert shipping_cost(FREE_SHIPPING_FROM, 2.0) == 0.0
    """)

_REPORT = _text('''
    """Plain-text sales reports. Amounts are integers in cents."""
    from __future__ import annotations


    def format_money(cents: int) -> str:
        """Format an amount in cents as dollars: 1205 -> "$12.05"."""
        return f"${cents // 100}.{cents % 100}"


    def line_item(name: str, quantity: int, unit_cents: int) -> str:
        """One report line: name, quantity and line total."""
        # TODO: reuse format_money instead of duplicating the formatting here
        total = quantity * unit_cents
        return f"{name:<20} x{quantity:>3}  ${total // 100}.{total % 100:02d}"


    def sales_summary(lines: list[tuple[str, int, int]]) -> str:
        """The report body: one line per (name, quantity, unit_cents)."""
        # TODO: add a final "TOTAL" line with the sum of all line totals
        return "\\n".join(line_item(name, quantity, unit) for name, quantity, unit in lines)
    ''')

_TEST_REPORT = _text("""
    from shopcart.report import format_money, line_item, sales_summary


    def test_format_money_of_whole_and_tens_of_cents():
        assert format_money(1250) == "$12.50"


    def test_format_money_pads_single_digit_cents():
        assert format_money(1205) == "$12.05"


    def test_line_item_shows_name_quantity_and_total():
        assert line_item("mug", 2, 625) == "mug                  x  2  $12.50"


    def test_sales_summary_starts_with_one_line_per_item():
        summary = sales_summary([("mug", 2, 625), ("tea", 1, 300)])
        assert summary.splitlines()[:2] == [line_item("mug", 2, 625), line_item("tea", 1, 300)]
    """)

_CI_WORKFLOW = _text("""
    name: ci
    on:
      push:
        branches: [main]
      pull_request:
    jobs:
      test:
        runs-on: ubuntu-latest
        steps:
          - uses: actions/checkout@v4
          - uses: actions/setup-python@v5
            with:
              python-version: "3.11"
          - run: pip install pytest
          - run: .ci/run
    """)

_CI_RUN = _text("""
    #!/bin/sh
    # The one test entry point, for CI and for people: .ci/run [pytest arguments]
    set -eu
    cd "$(dirname "$0")/.."
    exec python -m pytest -q "$@"
    """)

_DOTENV = _text("""
    # Local settings for the demo. Not a real secret, but treat this file as one.
    DEMO_API_TOKEN=not-a-real-secret
    """)

# (message, files) in order; dates are fixed so every build gives the same commit ids.
_HISTORY: list[tuple[str, dict[str, str]]] = [
    (
        INITIAL_COMMIT_MESSAGE,
        {
            "README.md": _README,
            "pyproject.toml": _PYPROJECT,
            ".gitignore": _GITIGNORE,
            "shopcart/__init__.py": _INIT,
        },
    ),
    (
        "feat(pricing): discounts, tax and bulk prices",
        {
            "shopcart/pricing.py": _PRICING,
            "tests/test_pricing.py": _TEST_PRICING,
        },
    ),
    (
        "feat(inventory): stock levels per SKU",
        {
            "shopcart/inventory.py": _INVENTORY,
            "tests/test_inventory.py": _TEST_INVENTORY,
        },
    ),
    (
        "feat(textutils): slugs, truncation and whitespace helpers",
        {
            "shopcart/textutils.py": _TEXTUTILS,
            "tests/test_textutils.py": _TEST_TEXTUTILS,
        },
    ),
    (
        "feat(shipping): shipping costs with free shipping threshold",
        {
            "shopcart/shipping.py": _SHIPPING,
            "tests/test_shipping.py": _TEST_SHIPPING,
        },
    ),
    (
        "feat(report): plain-text sales reports",
        {
            "shopcart/report.py": _REPORT,
            "tests/test_report.py": _TEST_REPORT,
        },
    ),
    (
        "ci: workflow, local entry point and demo environment",
        {
            ".github/workflows/ci.yml": _CI_WORKFLOW,
            ".ci/run": _CI_RUN,
            ".env": _DOTENV,
        },
    ),
]
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
        for day, (message, files) in enumerate(_HISTORY):
            for relative, content in files.items():
                file_path = target / relative
                file_path.parent.mkdir(parents=True, exist_ok=True)
                file_path.write_text(content, encoding="utf-8")
                if relative in _EXECUTABLE:
                    file_path.chmod(0o755)
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
