"""Pages that look across the whole fleet: the canvas (tiles, filters, "needs you", the summary bar)
and launching sessions from the browser. Views read through selectors and write through services."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from html import escape as _esc
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.http import HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents import authority, params, selectors, services
from agents.errors import validation_text
from agents.events import prepare_tiles
from agents.http import AuthenticatedHttpRequest
from agents.models import (
    NEEDS_HUMAN_STATUSES,
    AgentSession,
    Escalation,
    FleetControl,
    Pod,
    Status,
    User,
)
from controlroom.forms import BatchLaunchForm, CanvasFilterForm, LaunchForm

STATUS_ICONS: dict[str, str] = {
    Status.QUEUED: "◷",
    Status.RUNNING: "▶",
    Status.NEEDS_APPROVAL: "⚑",
    Status.BLOCKED: "■",
    Status.PAUSED: "❚❚",
    Status.SUCCEEDED: "✓",
    Status.FAILED: "✗",
    Status.CANCELLED: "⊘",
}
NEEDS_YOU_LIMIT = 100
CANVAS_VIEWS = ("tiles", "compact", "map")
VIEW_COOKIE = "cr_canvas_view"
# With no view chosen (query string or the remembered cookie), a canvas of more sessions than this
# opens as the fleet map: a thousand tiles are neither readable nor quick to draw.
MAP_ABOVE = 300
# What a fleet-map cell shows (and is stranded from): one narrow query for a thousand sessions, read
# as tuples (named like the model's fields, so agents.selectors.is_stranded reads them as it reads a session).
MAP_COLUMNS = (
    "id",
    "name",
    "status",
    "status_reason",
    "current_activity",
    "version",
    "pod_id",
    "heartbeat_at",
    "lease_until",
    "updated_at",
    "sto__username",
)


# --- reads for the canvas ------------------------------------------------------------------------


# where "tonight" starts (18:00 local): agents.selectors.tonight_start, also what the canvas shows by default
local_evening_start = selectors.tonight_start


@dataclass
class PodWip:
    pod: Pod
    awaiting: int

    @property
    def reached(self) -> bool:
        return self.pod.review_wip_limit is not None and self.awaiting >= self.pod.review_wip_limit


@dataclass
class FleetSummary:
    counts: list[tuple[str, str, str, int]]  # (status, label, icon, count)
    total: int
    needs_human: int
    stale: int
    cost_tonight: Decimal
    evening: datetime
    fleet: FleetControl | None
    older: bool = False  # the counts include the sessions closed before tonight
    paused_pods: list[Pod] = field(default_factory=list)
    wip: list[PodWip] = field(default_factory=list)

    @property
    def fleet_stopped(self) -> bool:
        return bool(self.fleet and self.fleet.stopped)


def fleet_summary(*, user: User, older: bool = False) -> FleetSummary:
    """Counts per status, stale sessions, cost tonight, stop switches and review WIP: a handful of queries.
    The counts are of what the canvas shows: tonight's work (``selectors.current_q``), or with
    ``older`` every session."""
    visible = selectors.sessions_visible_to(user=user).order_by()
    now = timezone.now()
    if not older:
        visible = visible.filter(selectors.current_q(now=now))
    by_status = dict(visible.values_list("status").annotate(n=Count("id")))
    evening = local_evening_start(now)
    aggregates = visible.aggregate(
        cost=Sum("cost_usd", filter=Q(updated_at__gte=evening)),
        stale=Count("id", filter=selectors.stale_q(now=now)),
    )
    pods = list(selectors.pods_visible_to(user=user).filter(Q(paused=True) | Q(review_wip_limit__isnull=False)))
    wip_pods = [p for p in pods if p.review_wip_limit is not None]
    awaiting = (
        dict(
            AgentSession.objects.filter(selectors.awaiting_review_q(), pod__in=wip_pods)
            .order_by()
            .values_list("pod_id")
            .annotate(n=Count("id"))
        )
        if wip_pods
        else {}
    )
    return FleetSummary(
        counts=[(value, label, STATUS_ICONS[value], by_status.get(value, 0)) for value, label in Status.choices],
        total=sum(by_status.values()),
        needs_human=sum(by_status.get(s, 0) for s in NEEDS_HUMAN_STATUSES),
        stale=aggregates["stale"] or 0,
        cost_tonight=aggregates["cost"] or Decimal(0),
        evening=evening,
        fleet=FleetControl.objects.filter(pk=1).select_related("changed_by").first(),
        paused_pods=[p for p in pods if p.paused],
        wip=[PodWip(pod=p, awaiting=awaiting.get(p.pk, 0)) for p in wip_pods],
        older=older,
    )


@dataclass
class Waiting:
    session: AgentSession
    since: datetime
    link: str = ""  # the signed, single-use decision link (phone-sized page) of its oldest question

    @property
    def seconds(self) -> int:
        return max(0, int((timezone.now() - self.since).total_seconds()))


def needs_you(*, user: User) -> list[Waiting]:
    """Sessions needing a human that this user may act on, the longest wait first.

    The wait starts at the oldest open escalation, or when the session last changed (blocked).
    """
    candidates = list(
        selectors.sessions_visible_to(user=user).filter(status__in=NEEDS_HUMAN_STATUSES).order_by("updated_at")
    )
    # refuse_session_control decides on the user's role, whether they are the session's STO and their
    # role in the session's pod; asking it once per (pod, is-STO) keeps this query count per pod, not per session.
    decided: dict[tuple[int, bool], bool] = {}
    mine = []
    for session in candidates:
        key = (session.pod_id, session.sto_id == user.pk)
        if key not in decided:
            decided[key] = authority.refuse_session_control(user=user, session=session) is None
        if decided[key]:
            mine.append(session)
    # the oldest open escalation of each: where the wait starts, and what its phone link decides
    escalation: Escalation | None
    first_open: dict[int, Escalation] = {}
    if mine:
        for escalation in (
            Escalation.objects.filter(session__in=[s.pk for s in mine], state=Escalation.State.OPEN)
            .order_by("created_at", "pk")
            .only("pk", "session_id", "created_at", "link_nonce")
        ):
            first_open.setdefault(escalation.session_id, escalation)
    waiting = []
    for s in mine:
        escalation = first_open.get(s.pk)
        waiting.append(
            Waiting(
                session=s,
                since=escalation.created_at if escalation else s.updated_at,
                link=services.escalation_link(escalation=escalation, user=user) if escalation else "",
            )
        )
    waiting.sort(key=lambda w: (w.since, w.session.pk))
    return waiting[:NEEDS_YOU_LIMIT]


def _filtered_sessions(*, user: User, filters: CanvasFilterForm) -> QuerySet[AgentSession]:
    sessions = selectors.sessions_visible_to(user=user)
    pod, sto, statuses = filters.value_of("pod"), filters.value_of("sto"), filters.value_of("status")
    if pod:
        sessions = sessions.filter(pod=pod)
    if sto:
        sessions = sessions.filter(sto=sto)
    if statuses:
        sessions = sessions.filter(status__in=statuses)
    return sessions.order_by("pod__name", "priority", "id")


@dataclass
class SharedAsks:
    """Open escalations of the "needs you" sessions that ask for an action another session asks too."""

    asks: int = 0
    actions: int = 0


def shared_asks(waiting: list[Waiting]) -> SharedAsks:
    ids = [w.session.pk for w in waiting if w.session.status == Status.NEEDS_APPROVAL]
    if not ids:
        return SharedAsks()
    counts: Any = (  # a QuerySet, then the list of its values
        Escalation.objects.filter(session__in=ids, state=Escalation.State.OPEN)
        .order_by()
        .values("action_hash")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("n", flat=True)
    )
    counts = list(counts)
    return SharedAsks(asks=sum(counts), actions=len(counts))


def _side_context(user: User, *, older: bool = False) -> dict:
    waiting = needs_you(user=user)
    return {
        "summary": fleet_summary(user=user, older=older),
        "waiting": waiting,
        "shared": shared_asks(waiting),
        "icons": STATUS_ICONS,
        "stale_after": settings.CONTROLROOM["STALE_AFTER_S"],
    }


# --- pages ---------------------------------------------------------------------------------------


def _epoch(moment: datetime | None) -> str:
    return str(int(moment.timestamp())) if moment else ""


CELL_HTML = (
    '<a id="cell-{id}" class="cell status-{status}{stranded}" href="{prefix}{id}/" data-session-id="{id}"'
    ' data-version="{version}" data-status="{status}" data-label="{label}" data-name="{name}" data-sto="{sto}"'
    ' data-activity="{activity}" data-seen="{seen}" data-lease="{lease}" aria-label="#{id} {name}: {shown}, STO {sto}"></a>'
)


def map_cells(rows: list, *, drawer_prefix: str, now: datetime) -> SafeString:
    """The fleet map's cells of one pod, from ``MAP_COLUMNS`` rows. Every interpolated value is
    escaped (``html.escape``, which Django's ``escape`` wraps) or an integer, as ``format_html`` would:
    a thousand cells through the template engine cost ~300 ms, through format_html ~60 ms, this
    ~10 ms (bench/pages_bench.py, "page canvas map"). canvas.js keeps them current from tile frames."""
    labels = dict(Status.choices)
    prefix = _esc(drawer_prefix)
    cells = []
    for row in rows:
        label = labels.get(row.status, row.status)
        stranded = selectors.is_stranded(row, now=now)
        name, sto = _esc(row.name), _esc(row.sto__username)
        cells.append(
            CELL_HTML.format(
                id=int(row.id),
                status=_esc(row.status),
                stranded=" stranded" if stranded else "",
                prefix=prefix,
                version=int(row.version),
                label=_esc(label),
                name=name,
                sto=sto,
                activity=_esc(row.current_activity or row.status_reason),
                seen=_epoch(row.heartbeat_at or row.updated_at),
                lease=_epoch(row.lease_until),
                shown="stranded" if stranded else _esc(label),
            )
        )
    return mark_safe("".join(cells))  # every value above is escaped


def _canvas_view(request: AuthenticatedHttpRequest, filters: CanvasFilterForm) -> tuple[str | None, bool]:
    """(the view asked for or remembered — None when neither —, whether the query string chose it)."""
    chosen = filters.value_of("view")
    if chosen:
        return chosen, True
    remembered = request.COOKIES.get(VIEW_COOKIE, "")
    return (remembered if remembered in CANVAS_VIEWS else None), False


@require_GET
@params.bad_parameter_400
def canvas(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Every session the user may see, grouped by pod, with the "needs you" queue and the fleet
    summary: as tiles, compact tiles (100 fit one 1920×1080 screen) or the fleet map (one cell per
    session). Filters (pod, sto=mine|username, status, repeatable) and ``view`` live in the query
    string; a view chosen there is remembered in a cookie."""
    live_ts = time.time()  # before reading: the websocket catches up on anything committed after it
    user = request.user
    filters = CanvasFilterForm(request.GET or None, user=user)
    view, chosen = _canvas_view(request, filters)
    sessions_qs = _filtered_sessions(user=user, filters=filters)
    now = timezone.now()
    # tonight's work by default; the sessions closed before tonight only when asked (?older=1)
    older = bool(filters.value_of("older"))
    current = selectors.current_q(now=now)
    older_count = 0 if older else sessions_qs.exclude(current).count()
    if not older:
        sessions_qs = sessions_qs.filter(current)
    if view is None:
        view = "map" if sessions_qs.count() > MAP_ABOVE else "tiles"
    if view == "map":
        sessions = list(sessions_qs.select_related(None).values_list(*MAP_COLUMNS, named=True))
    else:
        sessions = list(sessions_qs.prefetch_related(selectors.tile_grants()).annotate(**selectors.last_commit_q()))
        prepare_tiles(sessions, now=now)
    by_pod: dict[int, list[AgentSession]] = {}
    for session in sessions:
        by_pod.setdefault(session.pod_id, []).append(session)
    pods = selectors.pods_visible_to(user=user)
    if filters.value_of("pod"):
        pods = pods.filter(pk=filters.value_of("pod").pk)
    groups: list[tuple] = [(pod, by_pod.get(pod.pk, [])) for pod in pods.order_by("name")]
    drawer_prefix = reverse("session_drawer", args=[0]).removesuffix("0/")
    if view == "map":
        groups = [(pod, tiles, map_cells(tiles, drawer_prefix=drawer_prefix, now=now)) for pod, tiles in groups]
    statuses = filters.value_of("status") or []
    sto = filters.value_of("sto")
    context = {
        "groups": groups,
        "tile_count": len(sessions),
        "view": view,
        "views": [("tiles", "Tiles"), ("compact", "Compact"), ("map", "Fleet map")],
        "drawer_prefix": drawer_prefix,
        "filters": filters,
        "filter_problems": filters.problems() if filters.is_bound else [],
        "filter_statuses": statuses,
        "filter_sto": sto,
        "statuses": [(value, label, STATUS_ICONS[value]) for value, label in Status.choices],
        "live_ts": f"{live_ts:.6f}",
        "can_launch": user.role != User.Role.LEADER,
        "older": older,
        "older_count": older_count,
        **_side_context(user, older=older),
    }
    response = render(request, "controlroom/canvas.html", context)
    if chosen:
        response.set_cookie(VIEW_COOKIE, view, max_age=365 * 24 * 3600, samesite="Lax", httponly=True)
    return response


@require_GET
@params.bad_parameter_400
def canvas_side(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The summary bar and the "needs you" queue as out-of-band fragments (polled by the canvas);
    ``older=1`` counts the sessions closed before tonight too, as the canvas that polls shows them."""
    older = request.GET.get("older") == "1"
    return render(
        request,
        "controlroom/canvas.html#side",
        {**_side_context(request.user, older=older), "older": older, "oob": True},
    )


# --- grouped decisions ---------------------------------------------------------------------------

GROUP_DECIDED = {"allow-once": "allowed once", "allow-always": "allowed always", "deny": "denied"}


@require_GET
@params.bad_parameter_400
def decisions(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The open escalations the user may see, grouped by the canonical action they ask for: one
    decision per group, applied to each session of its preview."""
    groups = selectors.escalation_groups(user=request.user)
    return render(
        request,
        "controlroom/decisions.html",
        {
            "groups": groups,
            "asks": sum(len(g.members) for g in groups),
            "decidable_groups": sum(1 for g in groups if g.members),
        },
    )


@require_POST
@params.bad_parameter_400
def decisions_group(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Decide a group: the escalations of its preview (ids posted with the action hash they were
    shown with), each through the per-escalation service. Leaders read; they decide nothing."""
    if request.user.role == User.Role.LEADER:
        return HttpResponseForbidden("Leaders read the fleet; deciding asks is for its people and managers.")
    decision = request.POST.get("decision", "")
    action_hash = request.POST.get("action_hash", "")
    reason = request.POST.get("reason", "").strip()[:480]
    try:
        ids = [int(value) for value in request.POST.getlist("escalation")]
    except ValueError:
        ids = []
    try:
        outcomes = services.escalation_group_decide(
            escalation_ids=ids, action_hash=action_hash, by=request.user, decision=decision, reason=reason
        )
    except ValidationError as exc:
        messages.error(request, validation_text(exc))
        return redirect(reverse("decisions"))
    done = [o for o in outcomes if o.decided]
    if done:
        sessions = ", ".join(f"#{o.session_id}" for o in done)
        messages.success(request, f"{GROUP_DECIDED[decision].capitalize()} for {len(done)} session(s): {sessions}.")
    for outcome in outcomes:
        if not outcome.decided:
            messages.warning(request, f"Not decided: {outcome.text}")
    return redirect(reverse("decisions"))


# --- launching -----------------------------------------------------------------------------------

_SERVICE_FIELD = {"mode": "preset", "rules": "preset", "on_unanswered": None}


def _add_service_errors(form, exc: ValidationError) -> None:
    """Show a service's ValidationError beside the field it is about (or above the form)."""
    if hasattr(exc, "message_dict"):
        for key, errors in exc.message_dict.items():
            name = _SERVICE_FIELD.get(key, key)
            for error in errors:
                form.add_error(name if name in form.fields else None, error)
    else:
        for error in exc.messages:
            form.add_error(None, error)


def _launch_page(
    request: AuthenticatedHttpRequest, *, form: LaunchForm, batch: BatchLaunchForm, status: int = 200
) -> HttpResponse:
    return render(
        request,
        "controlroom/launch.html",
        {
            "form": form,
            "batch": batch,
            "is_leader": request.user.role == User.Role.LEADER,
        },
        status=status,
    )


def _initial(request: AuthenticatedHttpRequest) -> dict:
    initial: dict = {}
    slug = request.GET.get("pod", "")
    if slug:
        initial["pod"] = Pod.objects.filter(slug=slug).first()
    return initial


@require_http_methods(["GET", "POST"])
@params.bad_parameter_400
def launch(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Launch one session: ``agents.services.session_launch`` with a ``GrantSpec`` from the preset."""
    user = request.user
    batch = BatchLaunchForm(user=user, prefix="batch", initial=_initial(request))
    if request.method == "GET":
        return _launch_page(request, form=LaunchForm(user=user, initial=_initial(request)), batch=batch)
    if user.role == User.Role.LEADER:
        return HttpResponseForbidden("Leaders read the fleet; they cannot launch agents.")
    form = LaunchForm(request.POST, user=user)
    if form.is_valid():
        try:
            session = services.session_launch(**form.launch_kwargs())
        except authority.NotAllowed as exc:
            form.add_error(None, str(exc))
            return _launch_page(request, form=form, batch=batch, status=403)
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Launched #{session.pk} {session.name} (STO {session.sto.username}).")
            return redirect(reverse("canvas") + f"#tile-{session.pk}")
    return _launch_page(request, form=form, batch=batch, status=400)


class _BatchLineError(Exception):
    def __init__(self, number: int, exc: Exception):
        if isinstance(exc, ValidationError):
            text = (
                "; ".join(" ".join(m) for m in exc.message_dict.values())
                if hasattr(exc, "message_dict")
                else " ".join(exc.messages)
            )
        else:
            text = str(exc)
        super().__init__(f"Line {number}: {text} Nothing was launched.")


@require_POST
@params.bad_parameter_400
def launch_batch(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Plan the night: every line becomes a session, all in ONE transaction (one bad line: none)."""
    user = request.user
    if user.role == User.Role.LEADER:
        return HttpResponseForbidden("Leaders read the fleet; they cannot launch agents.")
    batch = BatchLaunchForm(request.POST, user=user, prefix="batch")
    if batch.is_valid():
        created: list[AgentSession] = []
        try:
            with transaction.atomic():
                for line in batch.lines:
                    try:
                        created.append(services.session_launch(**batch.launch_kwargs_for(line)))
                    except (authority.NotAllowed, ValidationError) as exc:
                        raise _BatchLineError(line.number, exc) from exc
        except _BatchLineError as exc:
            batch.add_error("tasks", str(exc))
            if isinstance(exc.__cause__, authority.NotAllowed):
                return _launch_page(request, form=LaunchForm(user=user), batch=batch, status=403)
        else:
            first = created[0].pk
            messages.success(request, f"Launched {len(created)} sessions (#{first}–#{created[-1].pk}).")
            return redirect(reverse("canvas") + f"?pod={batch.cleaned_data['pod'].slug}#tile-{first}")
    return _launch_page(request, form=LaunchForm(user=user), batch=batch, status=400)
