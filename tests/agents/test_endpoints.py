"""agents.endpoints: which api_base a session may name; session_launch applies it to every caller."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from agents import services
from agents.endpoints import api_base_problem, parse_allow_list
from agents.models import AgentSession
from audit.models import AuditEvent


@pytest.mark.parametrize(
    "value",
    [
        "",
        "http://127.0.0.1:11434/v1",
        "https://api.openai.com/v1",
        "http://[::1]:8000/v1/",
        "http://ollama:11434",
        "HTTPS://LLM.example.com/v1?api-version=1",
    ],
)
def test_it_accepts_an_http_url_with_a_host(value):
    assert api_base_problem(value, allowed=[]) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("ftp://files.example.com/v1", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("gopher://127.0.0.1:6379/_PING", "http:// or https://"),
        ("localhost:11434", "http:// or https://"),
        ("//127.0.0.1/v1", "http:// or https://"),
        ("http:///v1", "names no host"),
        ("http://:8080", "names no host"),
        ("http://[::1/v1", "not a URL"),
        ("http://127.0.0.1:99999/v1", "not a URL"),
        ("http://127.0.0.1:port/v1", "not a URL"),
        ("http://u:p@127.0.0.1/v1", "user name or password"),
        ("http://u@127.0.0.1/v1", "user name or password"),
        ("http://127.0.0.1/v1#frag", "fragment"),
        ("http://127.0.0.1/v 1", "spaces or control characters"),
        ("http://127.0.0.1/v1\x00", "spaces or control characters"),
        ("http://127.0.0.1/" + "a" * 300, "longer than 200"),
    ],
)
def test_it_refuses_anything_else_saying_why(value, why):
    problem = api_base_problem(value, allowed=[])
    assert problem is not None and why in problem


def test_the_allow_list_compares_scheme_host_port_and_whole_path_segments():
    allowed = parse_allow_list(["http://127.0.0.1:11434", "https://llm.example.com/v1/"])
    inside = [
        "http://127.0.0.1:11434",
        "http://127.0.0.1:11434/v1",
        "HTTP://127.0.0.1:11434/v1/",
        "https://llm.example.com/v1",
        "https://LLM.example.com:443/v1/chat",
    ]
    outside = [
        "https://127.0.0.1:11434/v1",  # another scheme
        "http://127.0.0.1:11435/v1",  # another port
        "http://127.0.0.1/v1",  # the default port is another port
        "http://127.0.0.1.evil.example:11434/v1",
        "http://localhost:11434/v1",  # the same machine under another name is another entry
        "https://llm.example.com/v12",
        "https://llm.example.com/",
        "https://llm.example.com.evil.example/v1",
        "http://llm.example.com/v1",
    ]
    assert [v for v in inside if api_base_problem(v, allowed=allowed)] == []
    # not a string prefix: port 1143 does not allow port 11434
    assert "MODEL_API_BASES" in api_base_problem(
        "http://127.0.0.1:11434/v1", allowed=parse_allow_list(["http://127.0.0.1:1143"])
    )
    for value in outside:
        problem = api_base_problem(value, allowed=allowed)
        assert problem and "MODEL_API_BASES" in problem and "http://127.0.0.1:11434" in problem, value


@pytest.mark.parametrize("entry", ["ftp://x.example", "127.0.0.1:11434", "http://", "http://u:p@h/v1"])
def test_a_bad_allow_list_entry_is_refused_at_startup(entry):
    with pytest.raises(ValueError) as refused:
        parse_allow_list(["http://127.0.0.1:11434", entry])
    assert str(refused.value).startswith(repr(entry))


def test_settings_name_the_variable_of_a_bad_allow_list(monkeypatch):
    from controlroom import settings as settings_module

    monkeypatch.setenv("MODEL_API_BASES", "http://127.0.0.1:11434, ftp://x.example")
    with pytest.raises(ImproperlyConfigured, match=re.escape("MODEL_API_BASES: 'ftp://x.example'")):
        settings_module._model_api_bases()
    monkeypatch.setenv("MODEL_API_BASES", "http://127.0.0.1:11434/v1,")
    assert [str(b) for b in settings_module._model_api_bases()] == ["http://127.0.0.1:11434/v1"]


@pytest.mark.django_db
def test_session_launch_refuses_a_bad_api_base_whoever_calls_it(fleet, settings):
    kwargs = dict(pod=fleet.alpha, sto=fleet.sto, by=fleet.lead, goal="Add notes", repository=fleet.repo, start=False)
    with pytest.raises(ValidationError) as refused:
        services.session_launch(**kwargs, api_base="ftp://files.example.com/")
    assert "http:// or https://" in refused.value.message_dict["api_base"][0]

    settings.CONTROLROOM = {**settings.CONTROLROOM, "MODEL_API_BASES": parse_allow_list(["http://127.0.0.1:11434"])}
    with pytest.raises(ValidationError) as refused:
        services.session_launch(**kwargs, api_base="http://10.0.0.1:11434/v1")
    assert "MODEL_API_BASES" in refused.value.message_dict["api_base"][0]
    assert not AgentSession.objects.exists()
    assert not AuditEvent.objects.filter(kind="session.launched").exists()

    session = services.session_launch(**kwargs, api_base=" http://127.0.0.1:11434/v1 ")
    assert session.api_base == "http://127.0.0.1:11434/v1"
