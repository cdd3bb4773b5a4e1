"""Request types for mypy: what the middleware guarantees on a view's ``request``."""

from __future__ import annotations

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails

from agents.models import User


class HtmxHttpRequest(HttpRequest):
    """A request that went through django-htmx's HtmxMiddleware (every request does)."""

    htmx: HtmxDetails


class AuthenticatedHttpRequest(HtmxHttpRequest):
    """A request behind LoginRequiredMiddleware (every view not marked login_not_required): a signed-in user."""

    user: User
