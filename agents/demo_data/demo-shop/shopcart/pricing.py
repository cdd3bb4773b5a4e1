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
