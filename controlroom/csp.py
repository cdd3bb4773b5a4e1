"""The Content-Security-Policy of every page (django-csp, configured in settings.CONTENT_SECURITY_POLICY).

Scripts, styles, images and connections come from this site only: no inline ``<script>``, no
``eval`` (so no ``hx-on`` attributes: ``static/controlroom/app.js`` does what they did), no
inline ``<style>`` or ``style=""`` (the page styles are files under ``static/controlroom/``;
sizes the server computes go through ``data-width`` / ``data-height-px`` and the CSSOM). htmx
runs with ``includeIndicatorStyles`` and ``allowEval`` off (``<meta name="htmx-config">`` in
base.html).

``connect-src 'self'`` covers the canvas websocket in browsers that follow CSP Level 3 but not in
all of them, so ``SitePolicyMiddleware`` adds ``ws://`` and ``wss://`` of the host the request
was made to (``request.get_host()``: validated against ALLOWED_HOSTS, and the forwarded host when
``USE_X_FORWARDED_HOST`` says so). A request with a host Django refuses gets the policy without.
"""

from __future__ import annotations

from csp.middleware import CSPMiddleware, PolicyParts
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase


def websocket_sources(request: HttpRequest) -> list[str]:
    """``ws://host[:port]`` and ``wss://host[:port]`` of this request, or nothing for a refused host."""
    try:
        host = request.get_host()
    except DisallowedHost:
        return []
    return [f"ws://{host}", f"wss://{host}"]


class SitePolicyMiddleware(CSPMiddleware):
    """django-csp's middleware, with the request's own websocket origins in ``connect-src``."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request=request, response=response, report_only=report_only)
        sockets = websocket_sources(request)
        if sockets and not report_only:
            update = dict(parts.update or {})
            update["connect-src"] = [*update.get("connect-src", ()), *sockets]
            parts.update = update
        return parts
