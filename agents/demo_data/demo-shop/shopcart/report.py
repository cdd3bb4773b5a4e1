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
    return "\n".join(line_item(name, quantity, unit) for name, quantity, unit in lines)
