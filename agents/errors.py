"""One readable sentence from a ValidationError, for pages, htmx fragments and the CLI."""

from __future__ import annotations

from django.core.exceptions import ValidationError


def validation_text(exc: ValidationError, *, with_fields: bool = False) -> str:
    """Pages show the messages beside their fields already; the CLI names the field."""
    if hasattr(exc, "message_dict"):
        if with_fields:
            return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
        return "; ".join(" ".join(messages) for messages in exc.message_dict.values())
    return " ".join(exc.messages)
