"""Every page requires a logged-in user: walk every URL pattern as an anonymous visitor."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

PUBLIC = {"login"}  # the login page itself
LOGIN_EXEMPT = {"healthz"}  # a bare status to everyone; details only to a token or a logged-in user


def _patterns(resolver=None, prefix=""):
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from _patterns(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.name


def _example(pattern: str) -> str:
    import re

    path = re.sub(r"<int:[^>]+>", "1", pattern)
    path = re.sub(r"<slug:[^>]+>", "alpha", path)
    path = re.sub(r"<(?:str:)?[^>]+>", "x", path)
    path = path.lstrip("^").rstrip("$").replace("\\Z", "")
    return "/" + path


def test_the_walk_covers_the_app(client):
    names = {name for _, name in _patterns()}
    assert {"canvas", "healthz", "pods", "session_drawer", "session_control", "session_assign_sto"} <= names


@pytest.mark.parametrize("method", ["get", "post"])
def test_every_url_refuses_or_redirects_an_anonymous_visitor(client, method):
    checked = 0
    for pattern, name in _patterns():
        if name in PUBLIC or "(?P" in pattern:
            continue
        url = _example(pattern)
        response = getattr(client, method)(url, REMOTE_ADDR="203.0.113.9")
        loopback = getattr(client, method)(url, REMOTE_ADDR="127.0.0.1")
        assert loopback.status_code == response.status_code, (url, "loopback is not special")
        location = response.headers.get("Location", "")
        allowed = (200, 405, 503) if name in LOGIN_EXEMPT else (302, 401, 403)
        assert response.status_code in allowed, (url, response.status_code)
        if name in LOGIN_EXEMPT and response.status_code != 405:
            assert set(response.json()) == {"status"}, (url, response.content[:200])
        if response.status_code == 302:
            assert "login" in location, (url, location)
        checked += 1
    assert checked > 10
