"""Shared helpers: statistics, result rows, and a Django environment per benchmark process."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass


@dataclass
class Row:
    bench: str
    case: str
    n: int
    median: float
    p99: float
    unit: str
    rate: float | None = None  # per second, where it makes sense
    target: str = ""
    verdict: str = ""  # "met" / "MISSED" / ""

    def emit(self) -> None:
        print("BENCHROW " + json.dumps(asdict(self)), flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(values: list[float]) -> tuple[float, float]:
    return (statistics.median(values) if values else float("nan"), percentile(values, 99))


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlroom.settings")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import django

    django.setup()


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.start


def log(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)
