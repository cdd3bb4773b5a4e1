"""Pages and actions about pods and single sessions. Views only call selectors and services."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import Truncator
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents import authority, gitcli, links, params, selectors, services
from agents.errors import validation_text
from agents.formatting import format_duration
from agents.forms import (
    MODE_HELP,
    RULE_LISTS,
    EscalationDecisionForm,
    GrantForm,
    RevokeForm,
    rule_lines,
    rule_list_errors,
)
from agents.http import AuthenticatedHttpRequest
from agents.models import AgentSession, Escalation, Grant, Pod, PodMembership, Priority, TranscriptEntry, User
from agents.runtime.sandbox import sandbox_available
from audit.models import AuditEvent


def _visible_session_or_404(request: AuthenticatedHttpRequest, session_id: int) -> AgentSession:
    session = selectors.session_visible_to(user=request.user, session_id=session_id)
    if session is None:
        if AgentSession.objects.filter(pk=session_id).exists():
            raise PermissionError
        raise Http404("No such session")
    return session


@require_GET
@params.bad_parameter_400
def pods(request: AuthenticatedHttpRequest) -> HttpResponse:
    visible = selectors.pods_visible_to(user=request.user).prefetch_related("memberships__user")
    return render(request, "agents/pods.html", {"pods": visible})


@require_GET
@params.bad_parameter_400
def pod_detail(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    pod = get_object_or_404(Pod, slug=slug)
    if not selectors.pods_visible_to(user=request.user).filter(pk=pod.pk).exists():
        return HttpResponseForbidden("You are not a member of this pod.")
    memberships = list(pod.memberships.select_related("user").order_by("-role", "user__username"))
    sessions = list(pod.sessions.select_related("sto").order_by("priority", "-created_at"))
    owned = {m.user_id: [s for s in sessions if s.sto_id == m.user_id] for m in memberships}
    can_admin = authority.refuse_pod_admin(user=request.user, pod_id=pod.pk) is None
    candidates = User.objects.exclude(pk__in=[m.user_id for m in memberships]).order_by("username") if can_admin else []
    return render(
        request,
        "agents/pod.html",
        {
            "pod": pod,
            "rows": [(m, owned[m.user_id]) for m in memberships],
            "sessions": sessions,
            "members": [m.user for m in memberships],
            "can_admin": can_admin,
            "candidates": candidates,
            "roles": PodMembership.Role.choices,
        },
    )


@require_POST
@params.bad_parameter_400
def session_assign_sto(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    try:
        session = _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden("You cannot see this session.")
    new_sto = User.objects.filter(username=request.POST.get("sto", "")).first()
    if new_sto is None:
        messages.error(request, "Choose the new Single Task Owner.")
    else:
        try:
            services.sto_assign(session=session, new_sto=new_sto, by=request.user)
            messages.success(request, f"#{session.pk} is now owned by {new_sto.username}.")
        except authority.NotAllowed as exc:
            services.record_refused_action(session=session, by=request.user, action="assign STO", refusal=str(exc))
            messages.error(request, str(exc))
            return redirect_back(request, session.pod.slug, status=403)
        except ValidationError as exc:
            messages.error(request, validation_text(exc))
    return redirect_back(request, session.pod.slug)


def redirect_back(request: AuthenticatedHttpRequest, slug: str, status: int = 302) -> HttpResponse:
    target = request.POST.get("next") or f"/pods/{slug}/"
    # a path of this site only: "//host" and "/\\host" (browsers read both as another site) are refused
    if not target.startswith("/") or not url_has_allowed_host_and_scheme(target, allowed_hosts=None):
        target = f"/pods/{slug}/"
    if status == 403:
        response = render(request, "agents/refused.html", {"back": target}, status=403)
        return response
    return redirect(target)


@require_POST
@params.bad_parameter_400
def pod_control(request: AuthenticatedHttpRequest, slug: str, action: str) -> HttpResponse:
    """Pause or resume a whole pod (its lead or a manager). Pausing parks every queued or running
    session of the pod before its next tool call; resuming lets the ones it parked carry on. htmx
    gets the pod's controls re-rendered with the outcome, a plain form post a redirect to the page."""
    pod = get_object_or_404(Pod, slug=slug)
    if not selectors.pods_visible_to(user=request.user).filter(pk=pod.pk).exists():
        return HttpResponseForbidden("You are not a member of this pod.")
    try:
        if action == "pause":
            count = services.pod_pause(pod=pod, by=request.user, reason=request.POST.get("reason", "").strip()[:200])
            done = f"Pod {pod.name} paused: {count} session(s) parked before their next tool call."
        else:
            count = services.pod_resume(pod=pod, by=request.user)
            done = f"Pod {pod.name} resumed: {count} session(s) back at work."
    except authority.NotAllowed as exc:
        if request.htmx:
            return _pod_controls(request, pod, flash=[("error", str(exc))], status=403)
        messages.error(request, str(exc))
        return redirect_back(request, pod.slug, status=403)
    if request.htmx:
        return _pod_controls(request, pod, flash=[("success", done)])
    messages.success(request, done)
    return redirect("pod_detail", slug=pod.slug)


def _pod_controls(request: AuthenticatedHttpRequest, pod: Pod, *, flash: list, status: int = 200) -> HttpResponse:
    pod.refresh_from_db(fields=["paused"])
    can_admin = authority.refuse_pod_admin(user=request.user, pod_id=pod.pk) is None
    return render(
        request, "agents/pod.html#controls", {"pod": pod, "can_admin": can_admin, "flash": flash}, status=status
    )


@require_POST
@params.bad_parameter_400
def pod_membership(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    pod = get_object_or_404(Pod, slug=slug)
    user = User.objects.filter(username=request.POST.get("username", "")).first()
    action = request.POST.get("action", "set")
    try:
        if user is None:
            raise ValidationError("Choose a user.")
        if action == "remove":
            services.membership_remove(pod=pod, user=user, by=request.user)
            messages.success(request, f"{user.username} left {pod.name}.")
        else:
            services.membership_set(pod=pod, user=user, role=request.POST.get("role", "member"), by=request.user)
            messages.success(request, f"{user.username} is now {request.POST.get('role', 'member')} of {pod.name}.")
    except authority.NotAllowed as exc:
        messages.error(request, str(exc))
        return redirect_back(request, pod.slug, status=403)
    except ValidationError as exc:
        messages.error(request, validation_text(exc))
    return redirect(f"/pods/{pod.slug}/")


# --- the session drawer ---------------------------------------------------------------------
#
# One URL serves the drawer: the ``drawer`` partial for htmx (the canvas loads it into #drawer)
# and a full page otherwise, so a drawer can be linked and reopened. Every action in the drawer
# answers with the re-rendered drawer (htmx) or a redirect back to it (plain form posts); a
# refusal answers 403 with the drawer and the message, so the person sees why.

TRANSCRIPT_PAGE = 20
AUDIT_PAGE = 25
LONG_CONTENT_CHARS = 600
PREVIEW_CHARS = 160
PAYLOAD_CHARS = 180
DIFF_TIMEOUT_S = 5
OUTSIDER_REFUSAL = "You cannot see this session: it belongs to another pod."


def _before(request: AuthenticatedHttpRequest, name: str = "before") -> int | None:
    """A keyset cursor from the query string (a positive integer), or None for the newest page.
    BadParameter (a 400) for anything else."""
    return params.query_int(request.GET, name, minimum=1)


def _pretty_arguments(arguments: object) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return cast(str, arguments)  # not JSON: still the str
    return json.dumps(arguments, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _tool_calls_of(entry: TranscriptEntry) -> list[dict]:
    """Name and arguments of each tool call (stored as {id, name, arguments}, or OpenAI's nested form)."""
    shown = []
    for call in entry.tool_calls or []:
        if not isinstance(call, dict):
            shown.append({"name": "?", "arguments": str(call)})
            continue
        function = cast(dict, call.get("function")) if isinstance(call.get("function"), dict) else call
        shown.append(
            {"name": str(function.get("name") or "?"), "arguments": _pretty_arguments(function.get("arguments"))}
        )
    return shown


def _transcript_page(*, session: AgentSession, before: int | None) -> dict:
    """Newest first, TRANSCRIPT_PAGE entries below the ``before`` sequence number."""
    entries = TranscriptEntry.objects.filter(session=session)
    if before is not None:
        entries = entries.filter(seq__lt=before)
    rows = list(entries.order_by("-seq")[: TRANSCRIPT_PAGE + 1])
    older = rows[TRANSCRIPT_PAGE - 1].seq if len(rows) > TRANSCRIPT_PAGE else None
    items = []
    for entry in rows[:TRANSCRIPT_PAGE]:
        content = entry.content or ""
        items.append(
            {
                "entry": entry,
                "content": content,
                "long": len(content) > LONG_CONTENT_CHARS,
                "preview": Truncator(" ".join(content.split())).chars(PREVIEW_CHARS),
                "calls": _tool_calls_of(entry),
            }
        )
    return {"items": items, "older": older, "total": session.transcript.count() if before is None else None}


def _audit_page(*, session: AgentSession, before: int | None) -> dict:
    """The session's audit events, newest first, AUDIT_PAGE below the ``before`` event id."""
    events = AuditEvent.objects.filter(session_id=session.pk)
    if before is not None:
        events = events.filter(id__lt=before)
    rows = list(events.order_by("-id")[: AUDIT_PAGE + 1])
    older = rows[AUDIT_PAGE - 1].pk if len(rows) > AUDIT_PAGE else None
    items = [
        {
            "event": event,
            "payload": Truncator(json.dumps(event.payload, ensure_ascii=False, sort_keys=True, default=str)).chars(
                PAYLOAD_CHARS
            ),
        }
        for event in rows[:AUDIT_PAGE]
    ]
    return {"items": items, "older": older}


def _git_quiet(cwd: Path, *argv: str) -> tuple[int, str]:
    """Run one read-only git command with a timeout; (status, output or error text)."""
    try:
        result = gitcli.run(cwd, *argv, check=False, timeout_s=DIFF_TIMEOUT_S)
    except gitcli.GitError as exc:  # git missing, the directory gone, or too slow
        return 127, str(exc)
    return result.status, (result.out if result.ok else (result.detail() or f"exit status {result.status}")).strip()


def _diff_stat(*, session: AgentSession) -> dict:
    """``git diff --shortstat base...branch`` (committed work) and the worktree's uncommitted changes."""
    worktree = Path(session.worktree_path) if session.worktree_path else None
    has_worktree = bool(worktree and (worktree / ".git").exists())
    repo_path = Path(session.repository.path)
    if not repo_path.is_dir():
        return {"state": "error", "text": f"repository {session.repository.name} not found at {repo_path}"}
    if not session.branch:
        return {"state": "none", "text": "no worktree yet"}
    status, _ = _git_quiet(repo_path, "rev-parse", "--verify", "-q", f"refs/heads/{session.branch}")
    if status != 0:
        return {
            "state": "none",
            "text": "no worktree yet" if not has_worktree else f"branch {session.branch} not found",
        }
    base = session.base_commit or session.base_branch
    status, out = _git_quiet(repo_path, "diff", "--shortstat", f"{base}...refs/heads/{session.branch}", "--")
    if status != 0:
        return {"state": "error", "text": f"git diff failed: {Truncator(out).chars(200)}"}
    result = {"state": "ok", "text": out or "no committed changes yet", "uncommitted": ""}
    if has_worktree:
        assert worktree is not None  # has_worktree: there is one
        status, out = _git_quiet(worktree, "diff", "--shortstat", "HEAD", "--")
        if status == 0 and out:
            result["uncommitted"] = out
    if not has_worktree:
        result["note"] = "the worktree has been removed"
    return result


def _budget_rows(*, session: AgentSession, grant: Grant | None) -> list[dict]:
    if grant is None:
        return []
    wall = None
    if session.started_at is not None:
        end = session.finished_at or timezone.now()
        wall = int((end - session.started_at).total_seconds())
    rows: list[tuple[str, Any, Any, str, str]] = [
        ("Steps", session.steps, grant.max_steps, str(session.steps), str(grant.max_steps or "")),
        (
            "Tokens",
            session.tokens,
            grant.max_tokens,
            f"{session.tokens:,}",
            f"{grant.max_tokens:,}" if grant.max_tokens else "",
        ),
        (
            "Cost",
            session.cost_usd,
            grant.max_cost_usd,
            f"${session.cost_usd:.4f}",
            f"${grant.max_cost_usd}" if grant.max_cost_usd else "",
        ),
        (
            "Wall time",
            wall or 0,
            grant.max_wall_seconds,
            format_duration(wall, empty="not started"),
            format_duration(grant.max_wall_seconds) if grant.max_wall_seconds else "",
        ),
        (
            "Tool calls",
            session.tool_calls,
            grant.max_tool_calls,
            str(session.tool_calls),
            str(grant.max_tool_calls or ""),
        ),
    ]
    shown = []
    for label, used, limit, used_text, limit_text in rows:
        percent = min(100, int(used * 100 / limit)) if limit else None
        shown.append(
            {
                "label": label,
                "used": used_text,
                "limit": limit_text or "no limit",
                "percent": percent,
                "exhausted": bool(limit) and used >= limit,
            }
        )
    return shown


BUDGET_FIELDS = (
    ("max_steps", "max steps"),
    ("max_tokens", "max tokens"),
    ("max_cost_usd", "max cost USD"),
    ("max_wall_seconds", "max wall seconds"),
    ("max_tool_calls", "max tool calls"),
)


def _grant_history(*, session: AgentSession) -> list[dict]:
    """Every version, newest first, with what changed against the version before it."""
    grants = list(session.grants.select_related("delegator", "issued_by", "revoked_by").order_by("version"))
    history, previous = [], None
    for grant in grants:
        rules = []
        for name in ("allow", "ask", "deny"):
            old: list = list(getattr(previous, name)) if previous else []
            new = list(getattr(grant, name))
            added = [rule for rule in new if rule not in old]
            removed = [rule for rule in old if rule not in new]
            if added or removed:
                rules.append({"list": name, "added": added, "removed": removed})
        changes: list = []
        if previous is not None:
            if previous.mode != grant.mode:
                changes.append(f"mode {previous.mode} → {grant.mode}")
            for field_name, label in BUDGET_FIELDS:
                old, new = getattr(previous, field_name), getattr(grant, field_name)
                if old != new:
                    changes.append(
                        f"{label} {old if old is not None else 'no limit'} → {new if new is not None else 'no limit'}"
                    )
            if (previous.not_before, previous.expires_at) != (grant.not_before, grant.expires_at):
                changes.append("window changed")
            if previous.on_unanswered != grant.on_unanswered:
                changes.append(f"unanswered: {previous.on_unanswered} → {grant.on_unanswered}")
        history.append({"grant": grant, "rules": rules, "changes": changes, "first": previous is None})
        previous = grant
    return list(reversed(history))


def _escalation_rows(*, session: AgentSession) -> tuple[list[dict], list[dict]]:
    rows = list(
        session.escalations.select_related("grant__delegator", "decided_by", "tool_call").order_by("-created_at")
    )
    open_rows, decided = [], []
    for escalation in rows:
        call = escalation.tool_call
        item = {
            "e": escalation,
            "matched_rule": call.rule if call else "",
            "reason_type": call.reason_type if call else "",
            "rules_to_add": [line.strip() for line in escalation.rule.splitlines() if line.strip()],
        }
        if escalation.state == Escalation.State.OPEN:
            open_rows.append(item)
        else:
            if escalation.decided_by_id:
                item["provenance"] = "human"
            elif escalation.state == Escalation.State.EXPIRED:
                item["provenance"] = "expired"
            else:
                item["provenance"] = "grant (deny when unanswered)"
            decided.append(item)
    open_rows.reverse()  # the oldest question first: it has waited longest
    return open_rows, decided


def _drawer_context(request: AuthenticatedHttpRequest, session: AgentSession, **extra) -> dict:
    grant = selectors.active_grant(session=session)
    can_act = authority.refuse_session_control(user=request.user, session=session) is None
    open_rows, decided = _escalation_rows(session=session)
    if session.pushed_call_id:
        session.last_commit_arguments = session.pushed_call.arguments  # type: ignore[attr-defined,union-attr]  # for the template; pushed_call_id is set
    context: dict[str, Any] = {
        "s": session,
        "grant": grant,
        "now": timezone.now(),
        "stranded": selectors.is_stranded(session),
        "last_commit": selectors.last_commit_of(session),
        "overlaps": selectors.overlaps_for([session.pk]).get(session.pk, []),
        "stale_after": settings.CONTROLROOM["STALE_AFTER_S"],
        "escalations": [row["e"] for row in open_rows],
        "open_escalations": open_rows,
        "decided_escalations": decided,
        "can_act": can_act,
        "actor_refusal": None if can_act else authority.refuse_session_control(user=request.user, session=session),
        "sandbox": sandbox_available(settings.CONTROLROOM["SANDBOX"]),
        "budget": _budget_rows(session=session, grant=grant),
        "transcript": _transcript_page(session=session, before=extra.pop("transcript_before", None)),
        "audit": _audit_page(session=session, before=extra.pop("audit_before", None)),
        "diff": _diff_stat(session=session),
        "handoff": session.handoff if isinstance(session.handoff, dict) else {},
        "grant_history": _grant_history(session=session),
        "mode_help": [(value, label, MODE_HELP[value]) for value, label in Grant.Mode.choices],
        "priorities": Priority.choices,
        "steering": list(session.steering.select_related("author").order_by("-created_at", "-pk")[:10]),
        "steer_max": services.STEER_MAX_CHARS,
        "flash": [],
    }
    if can_act:
        context["grant_form"] = extra.pop("grant_form", None) or GrantForm(
            initial=GrantForm.initial_from(grant), session_id=session.pk
        )
        context["autonomous_refusal"] = authority.refuse_delegation(
            delegator=request.user, session=session, mode="autonomous"
        )
        context["revoke_form"] = extra.pop("revoke_form", None) or RevokeForm()
    context.update(extra)
    return context


def _render_drawer(request: AuthenticatedHttpRequest, session_id: int, *, status: int = 200, **extra) -> HttpResponse:
    """The drawer of a session (re-read from the database), as partial or page."""
    session = selectors.session_visible_to(user=request.user, session_id=session_id)
    if session is None:
        return HttpResponseForbidden(OUTSIDER_REFUSAL)
    template = "agents/drawer.html#drawer" if request.htmx else "agents/drawer_page.html"
    return render(request, template, _drawer_context(request, session, **extra), status=status)


def _after_action(request: AuthenticatedHttpRequest, session_id: int, *, success: str) -> HttpResponse:
    """A successful action: the re-rendered drawer for htmx, else Post/Redirect/Get to the drawer page."""
    if request.htmx:
        return _render_drawer(request, session_id, flash=[("success", success)])
    messages.success(request, success)
    return redirect("session_drawer", session_id=session_id)


def _refused(
    request: AuthenticatedHttpRequest, session_id: int, message: str, *, status: int = 403, **extra
) -> HttpResponse:
    """An action that was refused or failed: the drawer with the message, under a 4xx status."""
    return _render_drawer(request, session_id, status=status, flash=[("error", message)], **extra)


@require_GET
@params.bad_parameter_400
def session_drawer(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    try:
        _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden(OUTSIDER_REFUSAL)
    return _render_drawer(
        request,
        session_id,
        transcript_before=_before(request, "transcript_before"),
        audit_before=_before(request, "audit_before"),
    )


def _older_page(
    request: AuthenticatedHttpRequest, session_id: int, *, drawer_arg: str, partial: str, key: str, page
) -> HttpResponse:
    """One page of older rows for htmx; the drawer page opened at that page otherwise."""
    try:
        session = _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden(OUTSIDER_REFUSAL)
    before = _before(request)
    if not request.htmx:
        return _render_drawer(request, session_id, **{drawer_arg: before})  # type: ignore[arg-type]  # an **extra key, not status
    return render(request, partial, {"s": session, key: page(session=session, before=before)})


@require_GET
@params.bad_parameter_400
def session_transcript(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    """One page of the transcript (older entries)."""
    return _older_page(
        request,
        session_id,
        drawer_arg="transcript_before",
        partial="agents/_transcript.html#page",
        key="transcript",
        page=_transcript_page,
    )


@require_GET
@params.bad_parameter_400
def session_audit(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    """One page of the session's audit trail (older events)."""
    return _older_page(
        request,
        session_id,
        drawer_arg="audit_before",
        partial="agents/drawer.html#audit_page",
        key="audit",
        page=_audit_page,
    )


CONTROLS: dict[str, Callable[..., Any]] = {
    "pause": services.session_pause,
    "resume": services.session_resume,
    "cancel": services.session_cancel,
    "recover": services.session_recover,
}
CONTROL_DONE = {
    "pause": "Paused.",
    "resume": "Resumed.",
    "cancel": "Cancelled.",
    "recover": "Recovery sent: its next step is on the queue again.",
}


@require_POST
@params.bad_parameter_400
def session_control(request: AuthenticatedHttpRequest, session_id: int, action: str) -> HttpResponse:
    try:
        session = _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden(OUTSIDER_REFUSAL)
    service = CONTROLS.get(action)
    if service is None:
        raise Http404("Unknown control")
    try:
        service(session=session, by=request.user)
    except authority.NotAllowed as exc:
        services.record_refused_action(session=session, by=request.user, action=action, refusal=str(exc))
        return _refused(request, session_id, str(exc))
    except ValidationError as exc:
        return _refused(request, session_id, validation_text(exc), status=409)
    return _after_action(request, session_id, success=f"#{session_id}: {CONTROL_DONE[action]}")


@require_POST
@params.bad_parameter_400
def session_priority(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    """Set the session's priority (P0 first): its STO, the pod lead or a manager. Its next steps
    are enqueued with it."""
    try:
        session = _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden(OUTSIDER_REFUSAL)
    raw = request.POST.get("priority", "")
    try:  # one ASCII digit, else -1: the service refuses it (after checking who asks)
        priority = params.integer(raw, name="priority", maximum=9) if len(raw) == 1 else -1
    except params.BadParameter:
        priority = -1
    try:
        services.session_set_priority(session=session, priority=priority, by=request.user)
    except authority.NotAllowed as exc:
        services.record_refused_action(session=session, by=request.user, action="set priority", refusal=str(exc))
        return _refused(request, session_id, str(exc))
    except ValidationError as exc:
        return _refused(request, session_id, validation_text(exc), status=400)
    return _after_action(request, session_id, success=f"#{session_id}: priority P{priority}.")


@require_POST
@params.bad_parameter_400
def session_steer(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    """Send the running agent a message (its STO, the pod lead or a manager): in its context at its
    next step."""
    try:
        session = _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden(OUTSIDER_REFUSAL)
    try:
        services.session_steer(session=session, by=request.user, text=request.POST.get("text", ""))
    except authority.NotAllowed as exc:
        services.record_refused_action(session=session, by=request.user, action="steer", refusal=str(exc))
        return _refused(request, session_id, str(exc))
    except ValidationError as exc:
        return _refused(request, session_id, validation_text(exc), status=400)
    return _after_action(request, session_id, success="Message sent: the agent reads it at its next step.")


# --- decision links (phone-sized) -------------------------------------------------------------


def _link_refused(request: AuthenticatedHttpRequest, title: str, text: str, *, status: int) -> HttpResponse:
    return render(request, "agents/decision_link_refused.html", {"title": title, "text": text}, status=status)


@require_http_methods(["GET", "POST"])
@params.bad_parameter_400
def decision_link(request: AuthenticatedHttpRequest, token: str) -> HttpResponse:
    """The page a signed decision link opens: one escalation, three buttons, sized for a phone.
    Refused with a clear page when the link was tampered with, has expired, was made for someone
    else, was used already, or the person may not decide."""
    try:
        claim = links.read_token(token)
    except links.LinkExpired:
        return _link_refused(
            request,
            "This link has expired",
            "Decision links are good for a limited time. Open the escalation from the queue instead.",
            status=410,
        )
    except links.LinkInvalid:
        return _link_refused(
            request, "This link is not valid", "It is not a decision link, or it was altered.", status=400
        )
    escalation = (
        Escalation.objects.select_related("session__pod", "session__sto", "grant__delegator", "decided_by")
        .filter(pk=claim.escalation_id)
        .first()
    )
    if escalation is None:
        return _link_refused(request, "No such escalation", "The escalation of this link does not exist.", status=404)
    session = escalation.session
    refusal: str | None
    if claim.user_id != request.user.pk:
        refusal = "this decision link was made for another person; open the escalation from the queue instead."
        services.record_refused_action(session=session, by=request.user, action="decision link", refusal=refusal)
        return _link_refused(request, "This link is not yours", refusal[0].upper() + refusal[1:], status=403)
    refusal = authority.refuse_session_control(user=request.user, session=session)
    if refusal:
        services.record_refused_action(session=session, by=request.user, action="decision link", refusal=refusal)
        return _link_refused(request, "You may not decide this", refusal, status=403)
    if escalation.link_used_at is not None or escalation.link_nonce != claim.nonce:
        return _link_refused(
            request,
            "This link was already used",
            "Each decision link decides once."
            + (
                f" #{escalation.pk} is {escalation.get_state_display().lower()}"
                + (f" by {escalation.decided_by.username}." if escalation.decided_by else ".")
                if escalation.state != Escalation.State.OPEN
                else ""
            ),
            status=410,
        )
    context = {
        "e": escalation,
        "s": session,
        "token": token,
        "rules_to_add": [r for r in escalation.rule.splitlines() if r.strip()],
    }
    if escalation.state != Escalation.State.OPEN:
        by = f" by {escalation.decided_by.username}" if escalation.decided_by else ""
        return _link_refused(
            request,
            "Already decided",
            f"Escalation #{escalation.pk} was {escalation.get_state_display().lower()}{by}. Nothing to do.",
            status=409,
        )
    if request.method == "GET":
        return render(request, "agents/decision_link.html", context)
    form = EscalationDecisionForm(request.POST)
    if not form.is_valid():
        return render(
            request, "agents/decision_link.html", {**context, "error": _formvalidation_text(form)}, status=400
        )
    decision, reason = form.cleaned_data["decision"], form.cleaned_data["reason"]
    try:
        services.escalation_decide_by_link(
            escalation=escalation, by=request.user, nonce=claim.nonce, decision=decision, reason=reason
        )
    except services.LinkUsed as exc:
        return _link_refused(request, "This link was already used", validation_text(exc), status=410)
    except authority.NotAllowed as exc:
        return _link_refused(request, "You may not decide this", str(exc), status=403)
    except ValidationError as exc:
        return render(request, "agents/decision_link.html", {**context, "error": validation_text(exc)}, status=409)
    except IntegrityError:
        return render(
            request,
            "agents/decision_link.html",
            {**context, "error": "The grant changed since the agent asked: allow it once, or edit the grant."},
            status=409,
        )
    return render(
        request, "agents/decision_link.html", {**context, "done": f"#{escalation.pk} {DECIDED_TEXT[decision]}."}
    )


# --- escalations ------------------------------------------------------------------------------

DECIDED_TEXT = {"allow-once": "allowed once", "allow-always": "allowed always", "deny": "denied"}


@require_POST
@params.bad_parameter_400
def escalation_decide(request: AuthenticatedHttpRequest, escalation_id: int) -> HttpResponse:
    """Allow once, allow always or deny an escalation. Refusals are recorded by the service and
    answered 403; a question someone already answered is answered 409 with who and how."""
    escalation = get_object_or_404(
        Escalation.objects.select_related("session__pod", "session__sto", "grant__delegator"), pk=escalation_id
    )
    session_id = escalation.session_id
    visible = selectors.session_visible_to(user=request.user, session_id=session_id) is not None
    form = EscalationDecisionForm(request.POST)
    if not form.is_valid():
        if not visible:
            return HttpResponseForbidden("You cannot act on this escalation: its session belongs to another pod.")
        return _refused(request, session_id, _formvalidation_text(form), status=400)
    decision, reason = form.cleaned_data["decision"], form.cleaned_data["reason"]
    try:
        services.escalation_decide(escalation=escalation, by=request.user, decision=decision, reason=reason)
    except authority.NotAllowed as exc:
        if not visible:
            return HttpResponseForbidden("You cannot act on this escalation: its session belongs to another pod.")
        return _refused(request, session_id, str(exc))
    except ValidationError as exc:
        escalation.refresh_from_db()
        status = 409 if escalation.state != Escalation.State.OPEN else 400
        message = validation_text(exc)
        if status == 409 and escalation.decided_by_id:
            assert escalation.decided_by is not None  # decided_by_id is set
            message = (
                f"Escalation #{escalation.pk} was already decided: {escalation.get_state_display().lower()} by "
                f"{escalation.decided_by.username} {timezone.localtime(escalation.decided_at):%H:%M}. Nothing changed."
            )
        return _refused(request, session_id, message, status=status)
    except IntegrityError:
        # allow-always issues the version after the escalation's grant; if the grant changed since the
        # question was asked, that version exists already (see the report on services.escalation_decide)
        return _refused(
            request,
            session_id,
            f"Escalation #{escalation.pk} was asked under grant v{escalation.grant.version}, "
            "which has changed since: nothing was decided. Allow it once, or add the rule in the grant editor.",
            status=409,
        )
    return _after_action(request, session_id, success=f"Escalation #{escalation.pk} {DECIDED_TEXT[decision]}.")


def _formvalidation_text(form) -> str:
    return " ".join(" ".join(messages_) for messages_ in form.errors.values())


# --- the grant editor -------------------------------------------------------------------------


def _acting_session(request: AuthenticatedHttpRequest, session_id: int) -> AgentSession | HttpResponse:
    """The session when the user may see it (else a 403 response)."""
    try:
        return _visible_session_or_404(request, session_id)
    except PermissionError:
        return HttpResponseForbidden(OUTSIDER_REFUSAL)


@require_POST
@params.bad_parameter_400
def session_grant_validate(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    """Inline validation of one rule list (or all): the errors naming each bad rule, or a count of good ones."""
    session = _acting_session(request, session_id)
    if isinstance(session, HttpResponse):
        return session
    refusal = authority.refuse_session_control(user=request.user, session=session)
    if refusal:
        return HttpResponseForbidden(refusal)
    requested = request.POST.get("field", "")
    lists = [requested] if requested in RULE_LISTS else list(RULE_LISTS)
    checks = []
    for name in lists:
        rules = rule_lines(request.POST.get(name, ""))
        checks.append({"list": name, "count": len(rules), "errors": rule_list_errors(rules)})
    return render(request, "agents/_grant.html#check", {"s": session, "checks": checks, "field": requested})


@require_POST
@params.bad_parameter_400
def session_grant_issue(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    """Save the editor: revoke the current grant and issue the next version, delegated by the user."""
    session = _acting_session(request, session_id)
    if isinstance(session, HttpResponse):
        return session
    form = GrantForm(request.POST, session_id=session.pk)
    if not form.is_valid():
        return _refused(
            request,
            session_id,
            "The grant was not changed: fix the fields marked below.",
            status=422,
            grant_form=form,
            editor_open=True,
        )
    spec = form.to_spec()
    try:
        grant = services.grant_issue(
            session=session,
            spec=spec,
            by=request.user,
            delegator=request.user,
            reason=spec.justification or f"edited by {request.user.username}",
        )
    except authority.NotAllowed as exc:
        services.record_refused_action(
            session=session, by=request.user, action=f"issue grant ({spec.mode})", refusal=str(exc)
        )
        return _refused(request, session_id, f"Refused, nothing changed: {exc}", grant_form=form, editor_open=True)
    except ValidationError as exc:
        for field_name, field_messages in getattr(exc, "message_dict", {}).items():
            if field_name in form.fields:
                form.add_error(field_name, field_messages)
        return _refused(
            request,
            session_id,
            f"The grant was not changed: {validation_text(exc)}",
            status=422,
            grant_form=form,
            editor_open=True,
        )
    except IntegrityError:
        return _refused(
            request,
            session_id,
            "The grant was not changed: another version was issued at the same "
            "moment, or none is active to supersede. Reload and try again.",
            status=409,
            grant_form=form,
            editor_open=True,
        )
    return _after_action(
        request, session_id, success=f"Grant v{grant.version} issued ({grant.mode}); the previous version is revoked."
    )


@require_POST
@params.bad_parameter_400
def session_grant_revoke(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    """Revoke the active grant with a reason: the agent stops at its next step (no active grant)."""
    session = _acting_session(request, session_id)
    if isinstance(session, HttpResponse):
        return session
    grant = selectors.active_grant(session=session)
    if grant is None:
        return _refused(request, session_id, "There is no active grant to revoke.", status=409)
    form = RevokeForm(request.POST)
    if not form.is_valid():
        return _refused(request, session_id, _formvalidation_text(form), status=422, revoke_form=form)
    try:
        services.grant_revoke(grant=grant, by=request.user, reason=form.cleaned_data["reason"])
    except authority.NotAllowed as exc:
        services.record_refused_action(session=session, by=request.user, action="revoke grant", refusal=str(exc))
        return _refused(request, session_id, str(exc))
    except ValidationError as exc:
        return _refused(request, session_id, validation_text(exc), status=422, revoke_form=form)
    return _after_action(
        request, session_id, success=f"Grant v{grant.version} revoked: the agent stops before its next step."
    )
