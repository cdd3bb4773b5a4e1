"""The night at a glance: swimlanes of the sessions a viewer may see that lived during a window,
grouped by pod (status over time, commits, denials, budget stops, failures, escalation waits), as
SVG geometry the template draws."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Max, Q
from django.utils import timezone

from agents.formatting import format_duration
from agents.models import AgentSession, Escalation, Pod, Status, User
from agents.selectors import sessions_visible_to
from agents.windows import Window
from audit.models import AuditEvent
from reviews.digest.events import describe, payload_is, short

LABEL_W = 250  # px for the lane labels
PLOT_W = 1000  # px for the time axis
LANE_H = 12
LANE_GAP = 3
POD_H = 20
AXIS_H = 24
MAX_LANES = 400
TIMELINE_KINDS = (
    "session.status",
    "git.commit",
    "budget.exhausted",
    "tool.interrupted",
    "session.error",
    "escalation.opened",
    "grant.expired",
)
STATUS_LABELS = dict(Status.choices)


@dataclass
class Segment:
    x: float
    w: float
    status: str
    title: str
    href: str = ""


@dataclass
class Marker:
    x: float
    cls: str  # commit / deny / budget / fail
    title: str
    href: str
    y: float = 0.0  # the lane's middle

    @property
    def shape(self) -> str:
        return "circle" if self.cls in ("commit", "fail") else "rect"

    @property
    def r(self) -> float:
        return 4.0 if self.cls == "commit" else 3.5

    @property
    def rect(self) -> tuple[float, float, float, float]:
        """x, y, width, height of a square (denial) or a bar across the lane (budget stop)."""
        if self.cls == "budget":
            return self.x - 1.5, self.y - LANE_H / 2 - 2, 3.0, LANE_H + 4.0
        return self.x - 3.5, self.y - 3.5, 7.0, 7.0

    @property
    def rect_x(self) -> float:
        return round(self.rect[0], 1)

    @property
    def rect_y(self) -> float:
        return round(self.rect[1], 1)

    @property
    def rect_w(self) -> float:
        return self.rect[2]

    @property
    def rect_h(self) -> float:
        return self.rect[3]


@dataclass
class Span:
    x: float
    w: float
    cls: str  # "esc" or "esc open"
    title: str
    href: str
    y: float = 0.0
    h: float = LANE_H + 2.0


@dataclass
class LaneView:
    session: AgentSession
    y: float
    label: str
    segments: list[Segment] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)

    @property
    def mid(self) -> float:
        return self.y + LANE_H / 2

    @property
    def text_y(self) -> float:
        return self.y + LANE_H - 2


@dataclass
class PodBlock:
    pod: Pod
    y: float
    lanes: list[LaneView]

    @property
    def text_y(self) -> float:
        return self.y + POD_H - 6


@dataclass
class Tick:
    x: float
    label: str
    major: bool


@dataclass
class Timeline:
    window: Window
    pods: list[PodBlock]
    ticks: list[Tick]
    width: int
    height: int
    lane_count: int
    truncated: int  # sessions left out beyond MAX_LANES
    now_x: float | None
    label_w: int = LABEL_W
    plot_w: int = PLOT_W
    lane_h: int = LANE_H
    axis_h: int = AXIS_H

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for block in self.pods:
            for lane in block.lanes:
                for m in lane.markers:
                    counts[m.cls] += 1
                counts["esc"] += len(lane.spans)
        return dict(counts)


def _hm(value: datetime, tz=None) -> str:
    local = value.astimezone(tz or timezone.get_current_timezone())
    return f"{local.hour:02d}:{local.minute:02d}"


def _ticks(window: Window, x) -> list[Tick]:
    hours = window.seconds / 3600
    step = 1 if hours <= 18 else 2 if hours <= 36 else 6 if hours <= 96 else 24
    local = timezone.localtime(window.start)
    first = local.replace(minute=0, second=0, microsecond=0)
    if first < local:
        first += timedelta(hours=1)
    while first.hour % step:
        first += timedelta(hours=1)
    ticks: list = []
    t = first
    while t <= timezone.localtime(window.end):
        major = t.hour == 0 or not ticks
        label = t.strftime("%a %H:%M") if major else t.strftime("%H:%M")
        ticks.append(Tick(x(t), label, major))
        t = timezone.localtime(t + timedelta(hours=step))
    return ticks


def timeline(*, user: User, window: Window, pod: str = "", event_url=None, session_url=None) -> Timeline:
    """Swimlanes of the sessions ``user`` may see that lived during ``window``, grouped by pod:
    status over time (from ``session.status`` events), commits, denials, budget stops, failures,
    and escalation waits (from the question until a human answered, or until now)."""
    tz = timezone.get_current_timezone()
    event_url = event_url or (lambda event_id: f"/audit/event/{event_id}")
    session_url = session_url or (lambda session_id: f"/sessions/{session_id}/")
    now = timezone.now()
    sessions: Any = (  # a QuerySet, then the list of its first rows
        sessions_visible_to(user=user)
        .filter(created_at__lt=window.end)
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=window.start))
    )
    if pod:
        sessions = sessions.filter(pod__slug=pod)
    sessions = list(sessions.order_by("pod__name", "pod_id", "priority", "pk")[: MAX_LANES + 1])
    truncated = 0
    if len(sessions) > MAX_LANES:
        total = (
            sessions_visible_to(user=user)
            .filter(created_at__lt=window.end)
            .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=window.start))
        )
        truncated = (total.filter(pod__slug=pod) if pod else total).count() - MAX_LANES
        sessions = sessions[:MAX_LANES]
    ids = [s.pk for s in sessions]
    span = window.seconds
    end_at = min(window.end, now)

    def x(at: datetime) -> float:
        offset = (at - window.start).total_seconds()
        return round(LABEL_W + max(0.0, min(1.0, offset / span)) * PLOT_W, 1)

    # status at the start of the window: the last status change before it
    last_before = (
        AuditEvent.objects.filter(kind="session.status", session_id__in=ids, created_at__lt=window.start)
        .order_by()
        .values("session_id")
        .annotate(m=Max("id"))
        .values_list("m", flat=True)
    )
    start_status = {
        sid: (payload or {}).get("to", Status.QUEUED)
        for sid, payload in AuditEvent.objects.filter(pk__in=list(last_before)).values_list("session_id", "payload")
    }
    # one query per family, each through the (kind, created_at) index
    in_window = AuditEvent.objects.filter(session_id__in=ids, created_at__gte=window.start, created_at__lt=window.end)
    fields = ("id", "session_id", "kind", "created_at", "actor_label", "payload")
    events = sorted(
        [
            *in_window.filter(kind__in=TIMELINE_KINDS).values_list(*fields),
            *in_window.filter(Q(kind="model.error") & payload_is("final", True)).values_list(*fields),
            *in_window.filter(Q(kind="tool.call") & payload_is("decision", "deny")).values_list(*fields),
        ]
    )
    by_session: dict[int, list[tuple]] = defaultdict(list)
    for row in events:
        by_session[row[1]].append(row)
    escalations = (
        Escalation.objects.filter(session_id__in=ids, created_at__lt=window.end)
        .filter(Q(decided_at__isnull=True) | Q(decided_at__gte=window.start))
        .select_related("decided_by")
        .order_by("created_at")
    )
    esc_by_session: dict[int, list[Escalation]] = defaultdict(list)
    for e in escalations:
        esc_by_session[e.session_id].append(e)
    opened_events = {}  # escalation id -> the event that opened it
    for rows in by_session.values():
        for event_id, _sid, kind, _at, _actor, payload in rows:
            if kind == "escalation.opened":
                opened_events[(payload or {}).get("escalation")] = event_id

    blocks: list[PodBlock] = []
    y = AXIS_H + 4
    for s in sessions:
        if not blocks or blocks[-1].pod.pk != s.pod_id:
            blocks.append(PodBlock(pod=s.pod, y=y, lanes=[]))
            y += POD_H
        lane = LaneView(session=s, y=y, label=short(f"#{s.pk} {s.name}", 38))
        y += LANE_H + LANE_GAP
        blocks[-1].lanes.append(lane)
        # status segments
        cursor = max(window.start, s.created_at)
        status = start_status.get(s.pk, Status.QUEUED)
        opened_by = None
        changes = [r for r in by_session.get(s.pk, ()) if r[2] == "session.status"]
        for event_id, _sid, _kind, at, _actor, payload in changes:
            _segment(lane, x, cursor, at, status, opened_by, event_url, tz)
            status, cursor, opened_by = (payload or {}).get("to", status), at, event_id
        if cursor < end_at:
            _segment(lane, x, cursor, end_at, status, opened_by, event_url, tz)
        # markers
        for event_id, _sid, kind, at, _actor, payload in by_session.get(s.pk, ()):
            payload = payload or {}
            when = f"{_hm(at, tz)} — "
            if kind == "git.commit":
                lane.markers.append(Marker(x(at), "commit", when + describe(kind, payload), event_url(event_id)))
            elif kind == "tool.call":
                lane.markers.append(
                    Marker(x(at), "deny", when + "denied: " + describe(kind, payload), event_url(event_id))
                )
            elif kind == "budget.exhausted" or kind == "grant.expired":
                lane.markers.append(Marker(x(at), "budget", when + describe(kind, payload), event_url(event_id)))
            elif kind in ("tool.interrupted", "session.error", "model.error"):
                lane.markers.append(Marker(x(at), "fail", when + describe(kind, payload), event_url(event_id)))
            elif kind == "session.status" and payload.get("to") == Status.FAILED:
                lane.markers.append(
                    Marker(x(at), "fail", when + "failed: " + short(payload.get("reason"), 140), event_url(event_id))
                )
        # escalation waits
        for e in esc_by_session.get(s.pk, ()):
            start = max(e.created_at, window.start)
            stop = max(start, min(e.decided_at or end_at, end_at))
            who = (
                f"{e.get_state_display().lower()} by {e.decided_by.username}"
                if e.decided_by
                else e.get_state_display().lower()
            )
            waited = (e.decided_at or now) - e.created_at
            title = (
                f"{_hm(e.created_at, tz)} asked: {short(e.action, 100)} — "
                f"{who if e.state != Escalation.State.OPEN else 'still open'}"
                f"{' at ' + _hm(e.decided_at, tz) if e.decided_at else ''} (waited {format_duration(waited.total_seconds())})"
            )
            opener = opened_events.get(e.pk)
            href = event_url(opener) if opener else f"/audit/?session={s.pk}&kind=escalation."
            lane.spans.append(
                Span(
                    x(start),
                    max(2.0, round(x(stop) - x(start), 1)),
                    "esc open" if e.state == Escalation.State.OPEN else "esc",
                    title,
                    href,
                    y=lane.y - 1,
                )
            )
        for m in lane.markers:
            m.y = lane.mid
    now_x = x(now) if window.start <= now <= window.end else None
    return Timeline(
        window=window,
        pods=blocks,
        ticks=_ticks(window, x),
        width=LABEL_W + PLOT_W + 10,
        height=int(y + 8),
        lane_count=len(sessions),
        truncated=truncated,
        now_x=now_x,
    )


def _segment(lane: LaneView, x, start: datetime, stop: datetime, status: str, event_id, event_url, tz) -> None:
    if stop <= start and lane.segments:
        return
    x0, x1 = x(start), x(stop)
    label = STATUS_LABELS.get(status, status)
    title = f"{label} {_hm(start, tz)}–{_hm(stop, tz)} ({format_duration((stop - start).total_seconds())})"
    lane.segments.append(
        Segment(x0, max(1.0, round(x1 - x0, 1)), status, title, event_url(event_id) if event_id else "")
    )
