"""Every model call goes through LiteLLM, here.

Any LiteLLM model string works; ``api_base`` points at a local or self-hosted OpenAI-compatible
endpoint (Ollama, vLLM, a test server); the key is read from the environment variable the session
names (never stored). The offline ``sim/…`` provider is registered on import. Tokens are
recorded per call; cost comes from LiteLLM's local cost map and is *unknown* (None) for models it
has no price for.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from decimal import Decimal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from django.conf import settings

_litellm = None


def _client():
    """LiteLLM, imported on first use (it takes seconds to import: pages never pay for it)."""
    global _litellm
    if _litellm is None:
        import litellm

        from agents.runtime import sim

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        sim.register()
        _litellm = litellm
    return _litellm


class ModelError(Exception):
    """A model call that produced no usable answer. ``transient`` errors are worth retrying."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class ModelReply:
    message: dict  # {"role": "assistant", "content": str, "tool_calls": [{"id", "name", "arguments"}]}
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal | None
    latency_ms: int
    model: str


def _transient(litellm) -> tuple:
    return (
        litellm.exceptions.Timeout,
        litellm.exceptions.APIConnectionError,
        litellm.exceptions.InternalServerError,
        litellm.exceptions.ServiceUnavailableError,
        litellm.exceptions.RateLimitError,
    )


def _cost(response) -> Decimal | None:
    litellm = _client()
    try:
        value = litellm.completion_cost(completion_response=response)
    except Exception:  # no price for this model (local, scripted): cost unknown, never a crash
        return None
    return Decimal(str(value)) if value is not None else None


def _tool_calls(message) -> list[dict]:
    calls = []
    for index, call in enumerate(getattr(message, "tool_calls", None) or []):
        function = getattr(call, "function", None)
        name = getattr(function, "name", None) or ""
        arguments = getattr(function, "arguments", None)
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments) if arguments is not None else ""
        calls.append({"id": getattr(call, "id", None) or f"call_{index}", "name": str(name), "arguments": arguments})
    return calls


def complete(
    *,
    model: str,
    messages: list[dict],
    tools: list[dict],
    api_base: str = "",
    api_key_env: str = "",
    fallbacks: list[str] | None = None,
    seed: int = 0,
    timeout_s: float | None = None,
) -> ModelReply:
    litellm = _client()
    config = settings.CONTROLROOM
    kwargs: dict = {
        "model": model,
        "messages": messages,
        "tools": tools,
        "timeout": timeout_s or config["MODEL_TIMEOUT_S"],
        "num_retries": config["MODEL_RETRIES"],
        "seed": seed,
    }
    if api_base:
        kwargs["api_base"] = api_base
    if api_key_env:
        kwargs["api_key"] = os.environ.get(api_key_env, "")
    elif api_base:
        kwargs["api_key"] = "none"  # local endpoints usually take any key; the OpenAI client insists on one
    if fallbacks:
        kwargs["fallbacks"] = list(fallbacks)
    if model.startswith("sim/"):
        kwargs["sim_pacing_s"] = config["SIM_PACING_S"]
    started = time.monotonic()
    try:
        response = litellm.completion(**kwargs)
    except _transient(litellm) as exc:
        raise ModelError(f"{type(exc).__name__}: {str(exc)[:500]}", transient=True) from None
    except litellm.exceptions.APIError as exc:
        status = getattr(exc, "status_code", None) or 0
        raise ModelError(f"{type(exc).__name__}: {str(exc)[:500]}", transient=status >= 500) from None
    except (
        litellm.exceptions.BadRequestError,
        litellm.exceptions.AuthenticationError,
        litellm.exceptions.NotFoundError,
        litellm.exceptions.PermissionDeniedError,
    ) as exc:
        raise ModelError(f"{type(exc).__name__}: {str(exc)[:500]}", transient=False) from None
    except Exception as exc:  # malformed responses surface as assorted exceptions inside LiteLLM
        raise ModelError(f"unreadable model response: {type(exc).__name__}: {str(exc)[:500]}", transient=True) from None
    latency_ms = int((time.monotonic() - started) * 1000)
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise ModelError("the model returned no choices", transient=True)
    message = choices[0].message
    usage = getattr(response, "usage", None)
    return ModelReply(
        message={
            "role": "assistant",
            "content": getattr(message, "content", None) or "",
            "tool_calls": _tool_calls(message),
        },
        tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
        tokens_out=int(getattr(usage, "completion_tokens", 0) or 0),
        cost_usd=_cost(response),
        latency_ms=latency_ms,
        model=getattr(response, "model", None) or model,
    )


def to_openai_message(message: dict) -> dict:
    """Our stored assistant message → the OpenAI wire shape for the next call."""
    if message.get("role") != "assistant" or not message.get("tool_calls"):
        return message
    return {
        "role": "assistant",
        "content": message.get("content") or "",
        "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in message["tool_calls"]
        ],
    }
