"""Pages that look across the whole fleet."""
from __future__ import annotations

from itertools import groupby

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from agents import selectors


@require_GET
def canvas(request: HttpRequest) -> HttpResponse:
    sessions = selectors.sessions_visible_to(user=request.user).order_by("pod__name", "priority", "id")
    groups = [(pod, list(tiles)) for pod, tiles in groupby(sessions, key=lambda s: s.pod)]
    return render(request, "controlroom/canvas.html", {"groups": groups})
