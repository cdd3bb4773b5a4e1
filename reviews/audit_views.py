"""Pages of the overnight record: the morning digest (with attestation), "Did I do this work?",
the night's timeline, the audit explorer, one event, and the explanation of a commit.

Views only parse the request, call the selectors of ``reviews.digest`` (which take the viewer)
and the attestation service, and render templates (autoescaped; the timeline's SVG too).
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from agents import params
from agents import services as agent_services
from agents.authority import NotAllowed
from agents.errors import validation_text
from agents.http import AuthenticatedHttpRequest
from agents.models import AgentSession
from agents.selectors import pods_visible_to, session_visible_to
from reviews import digest as overnight
from reviews.attest import session_attest


def _window(request: AuthenticatedHttpRequest, *, default: str) -> overnight.Window:
    q = request.GET if request.method == "GET" else request.POST
    return overnight.window_from(
        since=q.get("since", ""), until=q.get("until", ""), preset=q.get("preset", ""), default=default
    )


def _window_context(window: overnight.Window, *, default: str) -> dict:
    from django.utils import timezone

    return {
        "window": window,
        "presets": overnight.PRESETS.items(),
        "default_preset": default,
        "since_value": timezone.localtime(window.start).strftime("%Y-%m-%dT%H:%M"),
        "until_value": timezone.localtime(window.end).strftime("%Y-%m-%dT%H:%M"),
    }


# -- the morning digest --------------------------------------------------------------------------


@require_GET
@params.bad_parameter_400
@vary_on_headers("HX-Request")
def digest_page(request: AuthenticatedHttpRequest) -> HttpResponse:
    window = _window(request, default="overnight")
    scope = "all" if request.GET.get("scope") == "all" else "mine"
    result = overnight.digest(user=request.user, window=window, scope=scope)
    return render(
        request,
        "reviews/digest.html",
        {
            "digest": result,
            "rows": result.rows,
            "totals": result.totals,
            "scope": scope,
            "scope_keep": [("scope", "all")] if scope == "all" else [],
            **_window_context(window, default="overnight"),
        },
    )


@require_POST
@params.bad_parameter_400
def digest_attest(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    """The STO accepts or disowns a session's work (htmx: the session's row comes back)."""
    session = session_visible_to(user=request.user, session_id=session_id)
    if session is None:
        if not AgentSession.objects.filter(pk=session_id).exists():
            raise Http404("No such session")
        session = AgentSession.objects.select_related("sto", "pod").get(pk=session_id)
    window = _window(request, default="overnight")
    verdict, reason = request.POST.get("verdict", ""), request.POST.get("reason", "")
    try:
        session_attest(session=session, by=request.user, verdict=verdict, reason=reason)
    except NotAllowed as exc:
        agent_services.record_refused_action(
            session=session, by=request.user, action=f"attest {verdict}"[:40], refusal=str(exc)
        )
        return _attest_answer(request, session_id, window, error=str(exc), status=403)
    except ValidationError as exc:
        return _attest_answer(request, session_id, window, error=validation_text(exc), status=422, reason=reason)
    if not request.htmx:
        messages.success(request, f"#{session_id}: {'accepted as yours' if verdict == 'accepted' else 'disowned'}.")
        return redirect(f"{reverse('digest')}?{window.query()}")
    return _attest_answer(request, session_id, window)


def _attest_answer(
    request: AuthenticatedHttpRequest,
    session_id: int,
    window: overnight.Window,
    *,
    error: str = "",
    status: int = 200,
    reason: str = "",
) -> HttpResponse:
    row = overnight.digest_row(user=request.user, session_id=session_id, window=window)
    if request.htmx and row is not None:
        return render(
            request,
            "reviews/digest.html#row",
            {
                "r": row,
                "window": window,
                "attest_error": error,
                "attest_reason": reason,
            },
            status=status,
        )
    return render(
        request,
        "reviews/audit_error.html",
        {
            "title": "Refused" if status == 403 else "Not recorded",
            "error": error or "Recorded.",
            "back": f"{reverse('digest')}?{window.query()}",
            "recorded": status == 403,
        },
        status=status,
    )


# -- "Did I do this work?" -----------------------------------------------------------------------


@require_GET
@params.bad_parameter_400
def audit_mine(request: AuthenticatedHttpRequest) -> HttpResponse:
    window = _window(request, default="overnight")
    include_model = request.GET.get("model_calls") == "1"
    mine = overnight.actions_on_behalf_of(user=request.user, window=window, include_model_calls=include_model)
    return render(
        request,
        "reviews/audit_mine.html",
        {
            "mine": mine,
            "include_model": include_model,
            **_window_context(window, default="overnight"),
        },
    )


# -- the night at a glance -----------------------------------------------------------------------


@require_GET
@params.bad_parameter_400
def timeline_page(request: AuthenticatedHttpRequest) -> HttpResponse:
    window = _window(request, default="night")
    pod = params.query_text(request.GET, "pod", max_length=100)
    result = overnight.timeline(
        user=request.user,
        window=window,
        pod=pod,
        event_url=lambda event_id: reverse("audit_event", args=[event_id]),
        session_url=lambda session_id: reverse("session_drawer", args=[session_id]),
    )
    return render(
        request,
        "reviews/timeline.html",
        {
            "t": result,
            "pod": pod,
            "pods": pods_visible_to(user=request.user),
            "statuses": overnight.STATUS_LABELS.items(),
            **_window_context(window, default="night"),
        },
    )


# -- the audit explorer --------------------------------------------------------------------------


@require_GET
@params.bad_parameter_400
@vary_on_headers("HX-Request")
def audit_explorer(request: AuthenticatedHttpRequest) -> HttpResponse:
    filters = overnight.ExplorerFilters.from_query(request.GET)
    page = overnight.explore(user=request.user, filters=filters)
    context = {
        "page": page,
        "f": filters,
        "events": page.events,
        "kinds": overnight.known_kinds(),
        "decision_choices": overnight.DECISION_CHOICES,
        "pods": pods_visible_to(user=request.user),
        "next_url": f"{reverse('audit_explorer')}?{filters.query(before=page.next_before)}" if page.next_before else "",
    }
    if request.htmx and filters.before and request.GET.get("more") == "1":
        return render(request, "reviews/audit_explorer.html#rows", context)
    return render(request, "reviews/audit_explorer.html", context)


@require_GET
@params.bad_parameter_400
def audit_event(request: AuthenticatedHttpRequest, event_id: int) -> HttpResponse:
    from audit.models import AuditEvent

    event = overnight.event_visible_to(user=request.user, event_id=event_id)
    if event is None:
        if AuditEvent.objects.filter(pk=event_id).exists():
            return render(
                request,
                "reviews/audit_error.html",
                {
                    "title": "Not yours to see",
                    "error": "This event belongs to a session of a pod you are not a member of.",
                    "back": reverse("audit_explorer"),
                },
                status=403,
            )
        return render(
            request,
            "reviews/audit_error.html",
            {
                "title": "No such event",
                "error": f"There is no audit event #{event_id}.",
                "back": reverse("audit_explorer"),
            },
            status=404,
        )
    return render(request, "reviews/audit_event.html", {"d": overnight.event_detail(event=event)})


# -- explaining a commit -------------------------------------------------------------------------


@require_GET
@params.bad_parameter_400
def audit_commit(request: AuthenticatedHttpRequest, sha: str) -> HttpResponse:
    """Who is behind a commit. Another pod's commit and one that does not exist get the same 404."""
    try:
        x = overnight.commit_explain(sha=sha, user=request.user)
    except overnight.CommitNotFound as exc:
        return render(
            request,
            "reviews/audit_error.html",
            {
                "title": "Unknown commit",
                "error": str(exc),
                "back": reverse("audit_explorer"),
            },
            status=404,
        )
    in_commit = [a for a in x.approvals if a.in_commit]
    return render(
        request,
        "reviews/audit_commit.html",
        {"x": x, "in_commit": in_commit, "earlier": [a for a in x.approvals if not a.in_commit]},
    )
