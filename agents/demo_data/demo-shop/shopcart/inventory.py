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
