"""Benchmarks: real Redis, real workers, real databases. Run ``python -m bench`` (see README)."""
