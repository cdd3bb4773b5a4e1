"""The Content-Security-Policy: the header on every page, and pages that need nothing it forbids
(tests/controlroom/test_csp_browser.py opens them in Chromium and watches for violations)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agents import services
from reviews.views import pygments_css

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "default-src": {"'self'"},
    "script-src": {"'self'"},
    "style-src": {"'self'"},
    "img-src": {"'self'", "data:"},
    "connect-src": {"'self'", "ws://testserver", "wss://testserver"},
    "frame-ancestors": {"'none'"},
    "form-action": {"'self'"},
    "base-uri": {"'self'"},
}
#: what a page may not carry under the policy: inline script, inline event handlers and hx-on
#: (eval), inline <style> and style attributes
FORBIDDEN = {
    "inline <script>": re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),
    "<style> element": re.compile(r"<style\b", re.I),
    "style attribute": re.compile(r"<[a-z][^>]*\sstyle\s*=", re.I),
    "hx-on attribute": re.compile(r"\shx-on[:-]", re.I),
    "inline event handler": re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I),
    "javascript: URL": re.compile(r"(?:href|src|action)\s*=\s*[\"']?\s*javascript:", re.I),
}


def _policy(response) -> dict[str, set[str]]:
    header = response.headers["Content-Security-Policy"]
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = set(values)
    return directives


def _forbidden_in(html: str) -> list[str]:
    return [f"{what}: {m.group(0)[:120]}" for what, rx in FORBIDDEN.items() for m in rx.finditer(html)]


def test_the_login_page_of_an_anonymous_visitor_carries_the_policy(client):
    policy = _policy(client.get("/login/"))
    for directive, values in EXPECTED.items():
        assert policy[directive] == values, directive
    assert not any("unsafe" in value for values in policy.values() for value in values)


def test_the_websocket_sources_follow_the_host_the_page_was_asked_for(client, settings):
    settings.ALLOWED_HOSTS = ["cr.example.org"]
    policy = _policy(client.get("/login/", HTTP_HOST="cr.example.org:8443"))
    assert policy["connect-src"] == {"'self'", "ws://cr.example.org:8443", "wss://cr.example.org:8443"}


def test_a_refused_host_gets_the_policy_without_websocket_sources(client, settings):
    settings.ALLOWED_HOSTS = ["cr.example.org"]
    response = client.get("/login/", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert _policy(response)["connect-src"] == {"'self'"}


def test_the_forwarded_host_counts_only_when_use_x_forwarded_host_says_so(client, settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "cr.example.org"]
    asked = {"HTTP_HOST": "127.0.0.1:8000", "HTTP_X_FORWARDED_HOST": "cr.example.org"}
    assert "ws://cr.example.org" not in _policy(client.get("/login/", **asked))["connect-src"]
    settings.USE_X_FORWARDED_HOST = True
    assert _policy(client.get("/login/", **asked))["connect-src"] >= {"ws://cr.example.org", "wss://cr.example.org"}


def test_every_template_is_free_of_inline_script_style_and_handlers():
    found = {}
    for template in sorted((ROOT / "templates").rglob("*.html")):
        problems = _forbidden_in(template.read_text())
        if problems:
            found[str(template.relative_to(ROOT))] = problems
    assert found == {}


def _pages(fleet) -> list[str]:
    session = services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        by=fleet.lead,
        goal="Add notes to the README",
        repository=fleet.repo,
        start=False,
    )
    return [
        "/",
        "/?view=compact",
        "/?view=map",
        f"/sessions/{session.pk}/",
        "/decisions",
        "/launch",
        "/reviews/",
        f"/reviews/{session.pk}/",
        "/digest",
        "/timeline",
        "/audit/",
        "/dashboard",
        "/pods/",
        "/pods/alpha/",
        "/admin/",
        "/admin/agents/agentsession/",
        f"/admin/agents/agentsession/{session.pk}/change/",
        "/admin/audit/auditevent/",
    ]


def test_the_main_pages_carry_the_policy_and_nothing_it_forbids(client, fleet):
    fleet.manager.is_staff = fleet.manager.is_superuser = True
    fleet.manager.save()
    client.force_login(fleet.manager)
    for url in _pages(fleet):
        response = client.get(url)
        assert response.status_code == 200, url
        assert _policy(response)["script-src"] == {"'self'"}, url
        problems = [p for p in _forbidden_in(response.content.decode()) if not _django_admin_own(url, p)]
        assert problems == [], url


def _django_admin_own(url: str, problem: str) -> bool:
    """Django's admin ships a few ``<script id=… type="application/json">``-style data blocks and
    ``<script src>``; none is inline code. Nothing else is let through."""
    return url.startswith("/admin/") and 'type="application/json"' in problem


def test_the_pygments_stylesheet_is_the_one_the_diffs_are_coloured_with():
    shipped = (ROOT / "static" / "controlroom" / "pygments.css").read_text()
    body = shipped.split("*/", 1)[1].strip()
    assert body == pygments_css().strip()
