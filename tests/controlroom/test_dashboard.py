"""The leaders' dashboard (/dashboard): who may see it, that it shows what ``manage.py metrics --json``
computes, its CSV tables, its filters, and that a leader can read but never act."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser
from unittest import mock

import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver

from agents import services
from agents.models import AgentSession, Escalation, Grant, Pod, PodMembership, Status, User
from agents.selectors import active_grant
from audit.models import AuditEvent
from controlroom.dashboard_views import CSV_TABLES
from reviews.models import Review
from tests.controlroom.test_metrics import NOW, build_fleet
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def fixture_fleet():
    return build_fleet()


def login(client, username: str):
    assert client.login(username=username, password=PASSWORD)
    return client


def frozen():
    """The page, the command and the fixture agree on "now" (open escalations count until now)."""
    return mock.patch("django.utils.timezone.now", return_value=NOW)


class DataAttributes(HTMLParser):
    """Collects the figures the page carries in data-* attributes: headline cards and table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.headline: dict[str, dict] = {}
        self.tables: dict[str, dict[str, dict[str, dict]]] = {}
        self.split: dict[str, str] = {}
        self.charts: list[str] = []
        self._table = self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-table" in a:
            self._table = a["data-table"]
            self.tables[self._table] = {}
        elif tag == "tr" and self._table and "data-key" in a:
            self._row = a["data-key"]
            self.tables[self._table][self._row] = {}
        elif "data-metric" in a and tag == "article":
            self.headline[a["data-metric"]] = a
        elif "data-metric" in a and tag == "td" and self._table and self._row:
            self.tables[self._table][self._row][a["data-metric"]] = a
        elif "data-part" in a:
            self.split[a["data-part"]] = a.get("data-value", "")
        elif tag == "figure" and "data-chart" in a:
            self.charts.append(a["data-chart"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "tr":
            self._row = None


def parse(response) -> DataAttributes:
    parser = DataAttributes()
    parser.feed(response.content.decode())
    return parser


def _value(attr: str) -> float | None:
    return None if attr == "" else float(attr)


def _figure_of(block: dict, key: str) -> tuple[float | None, int]:
    if key == "lead_time":
        return block["lead_time"]["total"]["median"], block["lead_time"]["total"]["n"]
    figure = block[key]
    return (figure["median"] if "median" in figure else figure["value"]), figure["n"]


# --- who sees it ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("username, status", [("leo", 200), ("max", 200), ("a1", 403)])
def test_leaders_and_managers_see_the_dashboard_and_a_member_is_refused(client, fixture_fleet, username, status):
    response = login(client, username).get("/dashboard")
    assert response.status_code == status
    if status == 403:
        assert "for leaders and managers" in response.content.decode()
        assert "data-metric" not in response.content.decode()


def test_a_member_cannot_download_the_csv_either(client, fixture_fleet):
    assert login(client, "a1").get("/dashboard", {"format": "csv", "table": "stos"}).status_code == 403


def test_an_anonymous_visitor_is_sent_to_log_in(client, db):
    response = client.get("/dashboard")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


# --- the page shows what the command computes ---------------------------------------------------------------


def test_the_page_and_metrics_json_agree_on_the_same_data(client, fixture_fleet, capsys):
    login(client, "leo")
    with frozen():
        page = parse(client.get("/dashboard", {"window": "30d"}))
        call_command("metrics", "--window", "30d", "--json")
    data = json.loads(capsys.readouterr().out)
    keys = [
        "accepted_throughput",
        "acceptance_yield",
        "first_pass_acceptance",
        "revert_rate",
        "lead_time",
        "escalation_response",
        "autonomy_rate",
        "cost_per_accepted",
        "wasted_spend_share",
        "supervision_load",
    ]
    assert sorted(page.headline) == sorted(keys)
    for key in keys:
        value, n = _figure_of(data["overall"], key)
        assert _value(page.headline[key]["data-value"]) == pytest.approx(value), key
        assert int(page.headline[key]["data-n"]) == n, key
    # the hand-computed fixture answers, read off the page
    assert _value(page.headline["acceptance_yield"]["data-value"]) == pytest.approx(21 / 31)
    assert _value(page.headline["lead_time"]["data-upper"]) == pytest.approx(49 * 3600)
    assert _value(page.split["waiting"]) == pytest.approx(10 * 3600)
    assert _value(page.split["waiting_share"]) == pytest.approx(638.5 / 863)
    for table, block in (("pods", "by_pod"), ("stos", "by_sto"), ("task_types", "by_task_type")):
        rows = {row["key"]: row for row in data[block]}
        assert set(page.tables[table]) == set(rows), table
        for row_key, cells in page.tables[table].items():
            for key in keys:
                value, n = _figure_of(rows[row_key], key)
                assert _value(cells[key]["data-value"]) == pytest.approx(value), (table, row_key, key)
                assert int(cells[key]["data-n"]) == n, (table, row_key, key)
    assert _value(page.tables["pods"]["alpha"]["acceptance_yield"]["data-value"]) == pytest.approx(7 / 11)


def test_small_samples_are_greyed_with_their_note(client, fixture_fleet):
    login(client, "leo")
    with frozen():
        html = client.get("/dashboard", {"window": "30d"}).content.decode()
    # the fleet's escalation response rests on 9 escalations, alpha's yield on 11 closed sessions
    assert 'class="kpi small" data-metric="escalation_response"' in html
    assert "n = 9 &lt; 20: too few to rely on" in html
    assert 'class="kpi" data-metric="acceptance_yield"' in html
    assert (
        'class="small" data-metric="acceptance_yield" data-value="0.6363636363636364" data-n="11" title="n = 11 &lt; 20'
    ) in html


def test_the_charts_are_server_side_svg_speed_beside_stability(client, fixture_fleet):
    login(client, "leo")
    with frozen():
        response = client.get("/dashboard", {"window": "30d"})
    page = parse(response)
    html = response.content.decode()
    assert page.charts[:2] == ["throughput", "revert_rate"]  # the first pair: speed beside stability
    assert {
        "lead_time",
        "first_pass",
        "escalation_response",
        "supervision_load",
        "cost",
        "pod_yield",
        "pod_throughput",
        "pod_revert",
        "pod_cost",
    } <= set(page.charts)
    assert html.count('<svg class="chart"') == len(page.charts) >= 13
    assert "<rect" in html and "<path" in html and "<circle" in html
    assert "lines generated" not in html.lower() and "lines of code" not in html.lower()
    # no chart library, no CDN
    assert "cdn" not in html.lower() and "chart.js" not in html.lower()


def test_names_are_escaped_in_tables_and_charts(client, fixture_fleet):
    Pod.objects.filter(slug="alpha").update(name='<script>alert("x")</script>')
    login(client, "leo")
    with frozen():
        html = client.get("/dashboard", {"window": "30d"}).content.decode()
    assert '<script>alert("x")' not in html
    assert "&lt;script&gt;alert(" in html


# --- CSV ----------------------------------------------------------------------------------------------------


def _csv(client, **params) -> list[dict]:
    with frozen():
        response = client.get("/dashboard", {"format": "csv", **params})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_every_table_exports_as_csv_with_the_same_figures(client, fixture_fleet):
    login(client, "leo")
    tables = {table: _csv(client, window="30d", table=table) for table in CSV_TABLES}
    assert [r["key"] for r in tables["pods"]] == ["alpha", "bravo", "charlie"]
    alpha = tables["pods"][0]
    assert float(alpha["acceptance_yield"]) == pytest.approx(7 / 11)
    assert int(alpha["acceptance_yield_n"]) == 11
    assert float(alpha["acceptance_yield_ci95_low"]) == pytest.approx(0.3538, abs=1e-4)
    assert alpha["acceptance_yield_small_sample"] == "1"
    overall = tables["overall"][0]
    assert float(overall["acceptance_yield"]) == pytest.approx(21 / 31)
    assert float(overall["lead_time_median_h"]) == pytest.approx(23)
    assert float(overall["lead_time_p85_h"]) == pytest.approx(49)
    assert float(overall["escalation_response_p90_h"]) == pytest.approx(16)
    assert float(overall["cost_per_accepted"]) == pytest.approx(61 / 21)
    assert float(overall["wasted_spend_share"]) == pytest.approx(18 / 61)
    assert float(overall["supervision_load"]) == pytest.approx(19 / 21)
    assert sorted(r["key"] for r in tables["stos"]) == ["a1", "a2", "b1", "b2", "c1", "c2"]
    assert [r["key"] for r in tables["task_types"]] == ["feature", "fix", "docs", "tests", "refactor", "chore"]
    assert len(tables["trend"]) == 8
    assert float(tables["trend"][-1]["acceptance_yield"]) == pytest.approx(1 / 3)
    assert tables["trend"][-1]["revert_rate"] == "0.0"


def test_the_csv_follows_the_filters(client, fixture_fleet):
    login(client, "leo")
    rows = _csv(client, window="30d", table="pods", pod="bravo")
    assert [r["key"] for r in rows] == ["bravo"]
    assert float(rows[0]["acceptance_yield"]) == pytest.approx(7 / 10)


# --- filters ------------------------------------------------------------------------------------------------


def test_filters_choose_the_window_pod_task_type_and_tag(client, fixture_fleet):
    login(client, "leo")
    with frozen():
        alpha = parse(client.get("/dashboard", {"window": "30d", "pod": "alpha"}))
        features = parse(client.get("/dashboard", {"window": "30d", "task_type": "feature"}))
        tagged = parse(client.get("/dashboard", {"window": "30d", "tag": "pod-charlie"}))
        dated = parse(client.get("/dashboard", {"from": "2025-03-01", "to": "2025-03-31"}))
        week = parse(client.get("/dashboard", {"window": "7d"}))
    assert _value(alpha.headline["acceptance_yield"]["data-value"]) == pytest.approx(7 / 11)
    assert list(alpha.tables["pods"]) == ["alpha"]
    assert _value(features.headline["acceptance_yield"]["data-value"]) == pytest.approx(10 / 14)
    assert _value(tagged.headline["acceptance_yield"]["data-value"]) == pytest.approx(7 / 10)
    # 1 March 00:00 to 1 April 00:00: the 30-day window (from 1 March 12:00) and 12 hours before it,
    # when F3 was cancelled (-10 h): 31 + 1 closed, the same 21 accepted
    assert int(dated.headline["acceptance_yield"]["data-n"]) == 32
    assert _value(dated.headline["acceptance_yield"]["data-value"]) == pytest.approx(21 / 32)
    # the last 7 days: A17 accepted; A17, D5, E3 closed
    assert _value(week.headline["acceptance_yield"]["data-value"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"window": "fortnight"}, "Select a valid choice"),
        ({"from": "2025-03-01"}, "Give both a from and a to date"),
        ({"from": "2025-03-31", "to": "2025-03-01"}, "ends (2025-03-01) before it starts"),
        ({"from": "yesterday", "to": "2025-03-01"}, "Enter a valid date"),
        ({"pod": "zulu"}, "Select a valid choice"),
        ({"task_type": "poetry"}, "Select a valid choice"),
        ({"format": "xml"}, "Unknown format"),
        ({"format": "csv", "table": "people"}, "Unknown table"),
    ],
)
def test_a_bad_filter_answers_400_with_the_reason(client, fixture_fleet, params, message):
    response = login(client, "leo").get("/dashboard", params)
    assert response.status_code == 400
    assert message in response.content.decode()


# --- leaders read, never act ---------------------------------------------------------------------------------


def _patterns(resolvers, prefix=""):
    for entry in resolvers:
        if isinstance(entry, URLResolver):
            yield from _patterns(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def _concrete(route: str, values: dict[str, list[str]]) -> list[str]:
    """Every path a route pattern gives with the values for its parameters."""
    import re

    paths = ["/" + route]
    for converter_name, param in re.findall(r"<(?:(\w+):)?(\w+)>", route):
        placeholder = f"<{converter_name + ':' if converter_name else ''}{param}>"
        if param not in values:
            raise AssertionError(f"the leader walk does not know how to fill <{param}> in {route!r}: add it")
        paths = [p.replace(placeholder, v) for p in paths for v in values[param]]
    return paths


# Routes that are not agent controls and are not walked: signing in and out, Django's admin (staff only).
NOT_WALKED = ("login/", "logout/", "admin/")
# Known answers other than 403 for a leader's POST; everything else must be 403 (act) or 405 (read-only page).
KNOWN: dict = {}
AGENT_CONTROLS = {
    "sessions/<int:session_id>/<str:action>",
    "escalations/<int:escalation_id>/decide",
    "sessions/<int:session_id>/sto",
    "sessions/<int:session_id>/grant/issue",
    "sessions/<int:session_id>/grant/revoke",
    "sessions/<int:session_id>/grant/validate",
}


def test_a_leader_posting_to_any_agent_control_or_decision_is_refused_and_nothing_changes(client, fleet, worktrees_dir):
    session = services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal="Fix the rounding bug",
        by=fleet.lead,
        repository=fleet.repo,
        grant=services.GrantSpec(mode="edits", allow=("Bash(pytest *)",)),
        start=False,
    )
    escalation = Escalation.objects.create(
        session=session,
        grant=active_grant(session=session),
        tool="run_command",
        action="run_command: git push",
        action_hash="c" * 64,
        reason="commands ask",
        rule="Bash(git push *)",
    )
    AgentSession.objects.filter(pk=session.pk).update(status=Status.NEEDS_APPROVAL)
    before = {
        "session": AgentSession.objects.values("status", "sto_id", "hold", "review_state", "attestation").get(
            pk=session.pk
        ),
        "escalation": Escalation.objects.values("state", "decided_by_id").get(pk=escalation.pk),
        "grants": list(Grant.objects.filter(session=session).values_list("id", "revoked_at")),
        "reviews": Review.objects.count(),
        "sessions": AgentSession.objects.count(),
        "memberships": sorted(PodMembership.objects.values_list("pod_id", "user_id", "role")),
    }
    values = {
        "session_id": [str(session.pk)],
        "escalation_id": [str(escalation.pk)],
        # the leader's own decision link for that escalation: a leader decides nothing, even by link
        "token": [
            services.escalation_link(escalation=escalation, user=User.objects.get(username="leo"))
            .rstrip("/")
            .split("/")[-1]
        ],
        "slug": ["alpha"],
        "action": ["pause", "resume", "cancel"],
        "decision": ["approve", "request-changes", "reject", "revert"],
        "event_id": [str(AuditEvent.objects.filter(session_id=session.pk).values_list("id", flat=True).first())],
        "sha": ["0" * 40],
    }
    form = {
        "decision": "allow-once",
        "reason": "because",
        "sto": "mia",
        "username": "mia",
        "role": "lead",
        "comment": "looks fine",
        "verdict": "accepted",
        "mode": "autonomous",
        "max_steps": "10",
        "on_unanswered": "wait",
        "justification": "more",
        "pod": str(fleet.alpha.pk),
        "goal": "do more",
        "repository": str(fleet.repo.pk),
        "batch-pod": str(fleet.alpha.pk),
        "batch-tasks": "one more thing",
    }
    login(client, "leo")
    answers: dict[str, int] = {}
    for route, _ in _patterns(get_resolver().url_patterns):
        if route.startswith(NOT_WALKED):
            continue
        for path in _concrete(route, values):
            for decision in ["allow-once", "allow-always", "deny"] if route.startswith("escalations/") else [None]:
                data = dict(form, decision=decision) if decision else form
                status = client.post(path, data).status_code
                answers[f"{path} {decision or ''}".strip()] = status
                expected = KNOWN.get(route, (403, 405))
                assert status in (expected if isinstance(expected, tuple) else (expected,)), (
                    f"a leader's POST to {path} ({route}) answered {status}"
                )
                if route in AGENT_CONTROLS or route.startswith("reviews/<int:session_id>/decide"):
                    assert status == 403, f"a leader's POST to {path} answered {status}, not 403"
    walked = " ".join(answers)
    for needle in (
        "/pause",
        "/resume",
        "/cancel",
        "/decide allow-once",
        "/decide deny",
        "/grant/revoke",
        "/decide/approve",
        "/decide/revert",
        f"/sessions/{session.pk}/sto",
        "/pods/alpha/members",
    ):
        assert needle in walked, f"the walk did not reach {needle}"
    assert answers[f"/escalations/{escalation.pk}/decide allow-always"] == 403
    assert answers["/pods/alpha/members"] == 403
    after = {
        "session": AgentSession.objects.values("status", "sto_id", "hold", "review_state", "attestation").get(
            pk=session.pk
        ),
        "escalation": Escalation.objects.values("state", "decided_by_id").get(pk=escalation.pk),
        "grants": list(Grant.objects.filter(session=session).values_list("id", "revoked_at")),
        "reviews": Review.objects.count(),
        "sessions": AgentSession.objects.count(),
        "memberships": sorted(PodMembership.objects.values_list("pod_id", "user_id", "role")),
    }
    assert after == before
    # and the leader still reads the dashboard
    assert client.get("/dashboard").status_code == 200


# --- speed ----------------------------------------------------------------------------------------------------
