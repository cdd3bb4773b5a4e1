"""Reads of the overnight record, one module per read model: the morning digest (``morning``),
"Did I do this work?" (``mine``), the audit explorer (``explorer``), one event (``event``), the
night's timeline (``timeline``) and the explanation of an agent's commit (``commits``); the window a
page reads (``windows``) and which events a viewer may see and how one reads (``events``).

Every function takes the viewer (or, for the command line, none) and reads only what the viewer
may see (``events.events_visible_to``). Pages and commands import this package
(``from reviews import digest``) and use the names below.
"""

from reviews.digest.commits import CommitExplanation, CommitNotFound, commit_explain, explanation_text
from reviews.digest.event import EventDetail, event_detail
from reviews.digest.events import PROVENANCE_LABELS, describe, event_visible_to, events_visible_to, visible_session_ids
from reviews.digest.explorer import DECISION_CHOICES, PAGE_SIZE, ExplorerFilters, ExplorerPage, explore, known_kinds
from reviews.digest.mine import Mine, MineGroup, MineLine, actions_on_behalf_of
from reviews.digest.morning import Digest, DigestRow, EscalationLine, Line, digest, digest_row, digest_sessions
from reviews.digest.timeline import (
    AXIS_H,
    LABEL_W,
    LANE_GAP,
    LANE_H,
    MAX_LANES,
    PLOT_W,
    POD_H,
    STATUS_LABELS,
    LaneView,
    Marker,
    PodBlock,
    Segment,
    Span,
    Tick,
    Timeline,
    timeline,
)
from reviews.digest.windows import EVENING_HOUR, MORNING_HOUR, PRESETS, Window, parse_time, preset_window, window_from

__all__ = [
    "AXIS_H",
    "DECISION_CHOICES",
    "EVENING_HOUR",
    "LABEL_W",
    "LANE_GAP",
    "LANE_H",
    "MAX_LANES",
    "MORNING_HOUR",
    "PAGE_SIZE",
    "PLOT_W",
    "POD_H",
    "PRESETS",
    "PROVENANCE_LABELS",
    "STATUS_LABELS",
    "CommitExplanation",
    "CommitNotFound",
    "Digest",
    "DigestRow",
    "EscalationLine",
    "EventDetail",
    "ExplorerFilters",
    "ExplorerPage",
    "LaneView",
    "Line",
    "Marker",
    "Mine",
    "MineGroup",
    "MineLine",
    "PodBlock",
    "Segment",
    "Span",
    "Tick",
    "Timeline",
    "Window",
    "actions_on_behalf_of",
    "commit_explain",
    "describe",
    "digest",
    "digest_row",
    "digest_sessions",
    "event_detail",
    "event_visible_to",
    "events_visible_to",
    "explanation_text",
    "explore",
    "known_kinds",
    "parse_time",
    "preset_window",
    "timeline",
    "visible_session_ids",
    "window_from",
]
