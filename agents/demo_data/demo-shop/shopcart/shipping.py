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
