"""The websocket origin check: a socket is opened only by a page of this site.

Channels' ``AllowedHostsOriginValidator`` compares host names only, so a page served from another
port of the same host (``http://127.0.0.1:8001`` beside the control room on ``:8000``) or over
another scheme could open the canvas socket with the user's cookies. ``SiteOriginValidator``
compares scheme, host and port, and accepts exactly:

- the origin of the request itself: ``http://<Host header>`` for ``ws://`` (``https://`` for
  ``wss://``), when that host is one of ``ALLOWED_HOSTS`` (what a browser sends for a same-origin
  page);
- every origin in ``CSRF_TRUSTED_ORIGINS`` (Django's own list of trusted origins; a leading
  ``.`` in the host matches subdomains, as there), for deployments behind a TLS proxy;
- the origin of ``PUBLIC_URL`` when it is set.

No ``Origin`` header (not a browser) is refused.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host
from django.utils.http import is_same_domain

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, or None when it is not one."""
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return value.decode("latin1")
            except UnicodeDecodeError:  # pragma: no cover - latin1 decodes every byte
                return None
    return None


def own_origin(scope: dict) -> tuple[str, str, int] | None:
    """The origin a same-site page has for this request: scheme from the socket, host and port from Host."""
    host = _header(scope, b"host")
    if not host:
        return None
    scheme = "https" if scope.get("scheme") in {"wss", "https"} else "http"
    origin = _origin_tuple(f"{scheme}://{host}")
    if origin is None:
        return None
    allowed = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    hostname = origin[1]
    if ":" in hostname:  # urlsplit drops an IPv6 literal's brackets; ALLOWED_HOSTS spells them
        hostname = f"[{hostname}]"
    return origin if validate_host(hostname, allowed) else None


def origin_allowed(scope: dict, origin_header: str | None) -> bool:
    if not origin_header:
        return False
    origin = _origin_tuple(origin_header)
    if origin is None:
        return False
    if origin == own_origin(scope):
        return True
    public_url = settings.CONTROLROOM.get("PUBLIC_URL") or ""
    if public_url and origin == _origin_tuple(public_url):
        return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        pattern = _origin_tuple(trusted.replace("*", "", 1))
        if pattern is None:
            continue
        scheme, host, port = pattern
        if scheme == origin[0] and port == origin[2]:
            if trusted.split("://", 1)[-1].startswith("*.") and is_same_domain(origin[1], host):
                return True
            if host == origin[1]:
                return True
    return False


class SiteOriginValidator:
    """ASGI middleware: refuse a websocket whose ``Origin`` is not one of this site's origins."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("SiteOriginValidator only guards websocket connections")
        if origin_allowed(scope, _header(scope, b"origin")):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
