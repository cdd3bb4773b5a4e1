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
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from django.conf import settings

_litellm = None


_client_lock = threading.Lock()
_WARM_UP_TOOL = {
    "type": "function",
    "function": {"name": "noop", "description": "warm-up", "parameters": {"type": "object", "properties": {}}},
}


def _client():
    """LiteLLM, imported on first use (it takes seconds to import: pages never pay for it). A worker
    runs many steps in threads: the first caller imports, registers the offline model and makes one
    in-process call (no network: ``mock_response``) while the others wait, once.

    That call matters: LiteLLM builds its provider modules and HTTP client lazily on the first
    completion, and 64 threads doing that at once took 12.8 s for the first round of 5 s calls
    (5.1 s warm) in the fleet benchmark."""
    global _litellm
    if _litellm is not None:
        return _litellm
    with _client_lock:
        if _litellm is not None:
            return _litellm
        import litellm

        from agents.runtime import sim

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        sim.register()
        try:
            litellm.completion(
                model="openai/warm-up",
                messages=[{"role": "user", "content": "warm up"}],
                tools=[_WARM_UP_TOOL],
                mock_response="ok",
                api_key="none",
                api_base="http://127.0.0.1:9/v1",
            )
        except Exception:  # only a warm-up: the first real call reports what is wrong
            pass
        _litellm = litellm
    return _litellm


def warm_up() -> None:
    """Import LiteLLM ahead of the first model call (it takes seconds); never raises."""
    try:
        _client()
    except Exception:  # the first real call will report it
        pass


class ModelError(Exception):
    """A model call that produced no usable answer. ``transient`` errors are worth retrying.

    ``rate_limited``: the provider answered HTTP 429; ``retry_after`` is how long it asked us to wait
    (seconds, from its ``Retry-After`` / ``retry-after-ms`` header), or None when it did not say.
    """

    def __init__(
        self, message: str, *, transient: bool, rate_limited: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.rate_limited = rate_limited
        self.retry_after = retry_after


MAX_RETRY_AFTER_S = 600.0  # never park a step longer than this on a provider's word (Redis redelivers at 900 s)


def retry_after_seconds(headers) -> float | None:
    """Seconds a ``Retry-After`` (delta-seconds or HTTP date) or ``retry-after-ms`` header asks for."""
    if headers is None:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(millis) / 1000))
        value = headers.get("retry-after")
    except (AttributeError, TypeError, ValueError):
        return None
    if value is None:
        return None
    value = str(value).strip()
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, when.timestamp() - time.time()))


def _headers_of(exc: BaseException):
    for source in (exc, getattr(exc, "__cause__", None), getattr(exc, "__context__", None)):
        response = getattr(source, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            return headers
    return None


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
        # No retries inside the call: LiteLLM's and the OpenAI client's would sleep in this worker
        # thread (for a 429, as long as the provider asks). The step retries from the queue instead,
        # with backoff or the provider's Retry-After, holding nothing while it waits.
        "num_retries": 0,
        "max_retries": 0,
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
    except litellm.exceptions.RateLimitError as exc:
        raise ModelError(
            f"{type(exc).__name__}: {str(exc)[:500]}",
            transient=True,
            rate_limited=True,
            retry_after=retry_after_seconds(_headers_of(exc)),
        ) from None
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
