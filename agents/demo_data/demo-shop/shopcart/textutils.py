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
