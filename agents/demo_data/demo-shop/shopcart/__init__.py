"""shopcart: a tiny shop back office."""

__version__ = "0.3.0"
