"""Provider back-pressure: the slot semaphore on the real Redis, limits parsing, Retry-After parsing."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from agents.runtime import capacity
from agents.runtime.model import retry_after_seconds


def test_limits_are_parsed_and_normalised():
    limits = capacity.parse_limits(" http://127.0.0.1:11434/ = 2 , Anthropic=20,*=200")
    assert limits == {"http://127.0.0.1:11434": 2, "anthropic": 20, "*": 200}
    assert capacity.parse_limits("") == {}


@pytest.mark.parametrize("text", ["ollama", "x=", "=3", "x=two", "x=0", "x=-1"])
def test_a_bad_limit_names_the_entry(text):
    with pytest.raises(ValueError, match=r"expected|whole number|at least 1"):
        capacity.parse_limits(text)


def test_the_longest_matching_key_wins_and_sim_is_unlimited():
    limits = capacity.parse_limits("http://127.0.0.1:11434=2,http://127.0.0.1:11434/v2=5,openai=7,*=50")
    key = capacity.provider_key(model="openai/x", api_base="http://127.0.0.1:11434/v1")
    assert key == "http://127.0.0.1:11434/v1"
    assert capacity.limit_for(key, limits) == 2
    assert capacity.limit_for(capacity.provider_key(model="m", api_base="http://127.0.0.1:11434/v2/"), limits) == 5
    # another port is another provider; a path that only shares a prefix of a segment is too
    assert capacity.limit_for(capacity.provider_key(model="m", api_base="http://127.0.0.1:11435/v1"), limits) == 50
    assert capacity.limit_for(capacity.provider_key(model="m", api_base="http://127.0.0.1:11434/v22"), limits) == 2
    assert capacity.limit_for(capacity.provider_key(model="openai/gpt-x", api_base=""), limits) == 7
    assert capacity.limit_for(capacity.provider_key(model="anthropic/claude", api_base=""), limits) == 50
    assert capacity.limit_for("sim", limits) is None
    assert capacity.limit_for("openai", {}) is None


def test_slots_are_shared_lapse_on_their_own_and_release_wakes_the_first_waiter(settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "MODEL_CONCURRENCY": {"http://127.0.0.1:9": 2}}
    provider = capacity.provider_key(model="openai/x", api_base="http://127.0.0.1:9/v1")
    first = capacity.acquire(provider=provider, waiter="1:1:2", hold_s=30)
    second = capacity.acquire(provider=provider, waiter="2:1:2", hold_s=0.5)
    assert isinstance(first, capacity.Slot) and isinstance(second, capacity.Slot)
    third = capacity.acquire(provider=provider, waiter="3:1:2", hold_s=30)
    assert isinstance(third, capacity.Full)
    assert (third.limit, third.in_flight) == (2, 2)
    assert "waiting for model capacity" in third.activity
    again = capacity.acquire(provider=provider, waiter="3:1:2", hold_s=30)  # asking twice queues once
    assert isinstance(again, capacity.Full)
    fourth = capacity.acquire(provider=provider, waiter="4:7:0", hold_s=30)
    assert isinstance(fourth, capacity.Full)
    assert capacity.release(first) == "3:1:2"  # the first waiter is woken, once
    time.sleep(0.6)  # the second slot's holder "died": its slot lapses
    assert capacity.in_flight(provider) == 0
    assert isinstance(capacity.acquire(provider=provider, waiter="3:1:2", hold_s=30), capacity.Slot)
    assert capacity.release(second) == "4:7:0"


def test_an_unlimited_provider_takes_no_slot(settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "MODEL_CONCURRENCY": {}}
    slot = capacity.acquire(provider="openai", waiter="1:1:2", hold_s=30)
    assert isinstance(slot, capacity.Slot) and slot.limit is None
    assert capacity.release(slot) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "2500", "retry-after": "9"}, 2.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "999999"}, 600.0),  # never longer than Redis keeps an unacknowledged step
        ({"retry-after": "soon"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_is_read_from_either_header(headers, expected):
    assert retry_after_seconds(headers) == expected


def test_retry_after_may_be_an_http_date():
    seconds = retry_after_seconds({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert seconds is not None and 25 <= seconds <= 31
