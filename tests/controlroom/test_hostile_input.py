"""Hostile input never answers 5xx: every URL of the site walked with a table of bad values per
query parameter (unicode digits, huge numbers, far dates, NUL, 100 kB strings), every form posted
with bad values, the timeline asked for a far window (shortened, with a notice), and the
explanation of another pod's commit answered exactly like a commit that does not exist.

One small night per test; requests go through Django's test client."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from agents import params
from agents.models import AgentSession, Escalation, Grant
from agents.services import transcript_append
from audit.models import AuditEvent
from reviews.digest.windows import MAX_WINDOW, window_from
from tests.reviews.test_digest import Night, commit, escalate, launch

pytestmark = pytest.mark.django_db

HUGE = str(2**70)
LONG = "x" * 100_000
#: Hostile values by what the parameter holds: numbers, times, and text (choices, names, free text).
NUMBERS = ["²", "١٢", "#²", "-1", "1e20", str(2**63), HUGE]
TIMES = ["9999-12-31T23:59", "0001-01-01T00:00", "2025-13-45T99:99", "²"]
TEXTS = ["\x00", "1\x00", LONG, "' OR 1=1 --", "%", "²"]
#: Sent in every parameter of a page at once.
EVERYWHERE = ["²", HUGE, "9999-12-31T23:59", "\x00", LONG]
KIND = {
    **dict.fromkeys(["session", "before", "transcript_before", "audit_before"], NUMBERS),
    **dict.fromkeys(["since", "until", "from", "to"], TIMES),
}


def hostile(param: str) -> list[str]:
    """The table of hostile values for one parameter."""
    return KIND.get(param, TEXTS)


#: The query parameters each GET page reads (the walk below fails when a URL is missing here).
QUERY = {
    "canvas": ["pod", "sto", "status"],
    "canvas_side": [],
    "launch": ["pod"],
    "dashboard": ["window", "pod", "task_type", "tag", "from", "to", "format", "table"],
    "review_queue": ["pod", "sto"],
    "review_diff": [],
    "review_file": ["path"],
    "digest": ["preset", "since", "until", "scope"],
    "timeline": ["preset", "since", "until", "pod"],
    "audit_explorer": ["session", "pod", "sto", "delegator", "kind", "decision", "since", "until", "before", "more"],
    "audit_mine": ["preset", "since", "until", "model_calls"],
    "audit_event": [],
    "audit_commit": [],
    "pods": [],
    "pod_detail": [],
    "session_drawer": ["transcript_before", "audit_before"],
    "session_transcript": ["before"],
    "session_audit": ["before"],
    "decisions": [],
}

#: The fields each POST-only URL reads (forms with many fields have their own tests below).
POST = {
    "launch_batch": [],  # test_the_batch_plan_refuses_hostile_values
    "session_grant_issue": [],  # test_the_grant_editor_refuses_hostile_values
    "digest_attest": ["verdict", "reason", "since", "until", "preset"],
    "pod_membership": ["username", "role", "action"],
    "pod_pause": ["reason", "next"],
    "pod_resume": ["next"],
    "session_assign_sto": ["sto", "next"],
    "session_grant_validate": ["field", "allow", "ask", "deny"],
    "session_grant_revoke": ["reason"],
    "session_priority": ["priority"],
    "escalation_decide": ["decision", "reason"],
    "session_control": [],
    "review_decide": ["comment"],
    "decisions_group": ["action_hash", "decision", "reason", "escalation"],
    "session_steer": ["text"],
    "review_approve_safe": ["comment", "session"],
}

#: Not walked here: Django's own views (login, logout, admin), /healthz and the signed decision link
#: (a token, not parameters) have their own tests.
NOT_WALKED = {"login", "logout", "healthz", "decision_link"}  # tests/agents/test_decision_links.py: hostile tokens


def _patterns(resolvers=None, prefix: str = "") -> list[tuple[str, URLPattern]]:
    found = []
    for entry in resolvers if resolvers is not None else get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            if entry.app_name == "admin":
                continue
            found += _patterns(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            found.append((prefix + str(entry.pattern), entry))
    return found


PATTERNS = {p.name: route for route, p in _patterns() if p.name not in NOT_WALKED}


def test_every_url_of_the_site_is_in_a_table():
    assert set(PATTERNS) == set(QUERY) | set(POST), "a new URL: add its parameters to QUERY or POST"


def _args(name: str, night: Night, *, huge: bool = False) -> dict:
    a = night.s["a"]
    escalation = Escalation.objects.filter(session=a).first()
    event = AuditEvent.objects.filter(session_id=a.pk).first()
    values = {
        "session_id": HUGE if huge else a.pk,
        "escalation_id": HUGE if huge else escalation.pk,
        "event_id": HUGE if huge else event.pk,
        "slug": "alpha",
        "sha": "a1" * 20,
        "action": "pause",
        "decision": "request-changes",
    }
    route = PATTERNS[name]
    return {key: value for key, value in values.items() if f":{key}>" in route}


def _url(name: str, night: Night, *, huge: bool = False) -> str:
    kwargs = _args(name, night, huge=huge)
    url = reverse(name, kwargs=kwargs) if not huge else "/" + PATTERNS[name]
    if huge:
        for key, value in kwargs.items():
            url = url.replace(f"<int:{key}>", str(value)).replace(f"<slug:{key}>", str(value))
            url = url.replace(f"<str:{key}>", str(value))
    return url


@pytest.fixture
def night(fleet, monkeypatch) -> Night:
    """A small night: sam's session with an escalation, a transcript entry and a commit in pod
    alpha, otto's session with a commit in pod bravo. The drawer's git diff stat is not read (the
    requests here are about parsing, and git would make each one slow)."""
    monkeypatch.setattr("agents.views._diff_stat", lambda *, session: {"state": "none", "text": "not read"})
    night = Night(fleet=fleet, since=timezone.now() - timedelta(minutes=1))
    a = launch(fleet, name="Fix the cart total")
    b = launch(fleet, name="Add search filters")
    escalate(a)
    transcript_append(session_id=a.pk, iteration=1, step=1, role="assistant", content="Looking.")
    commit(a, sha="a1" * 20, message="Fix rounding in cart total")
    o = launch(fleet, name="Bravo billing", sto=fleet.outsider, by=fleet.outsider, pod=fleet.bravo)
    commit(o, sha="0b" * 20, message="Bravo commit")
    night.s.update(a=a, b=b, o=o)
    night.until = timezone.now() + timedelta(seconds=1)
    return night


def _no_5xx(responses: list[tuple[str, int]]) -> None:
    failed = [(what, status) for what, status in responses if status >= 500]
    assert not failed, f"{len(failed)} request(s) answered 5xx: {failed[:10]}"


@pytest.mark.postgres  # NUL in a lookup fails only on PostgreSQL
@pytest.mark.parametrize("name", sorted(QUERY))
def test_a_get_page_answers_every_hostile_query_value_without_a_5xx(client, night, name):
    client.force_login(night.fleet.manager)
    url = _url(name, night)
    seen = []
    for param in QUERY[name]:
        for value in hostile(param):
            seen.append((f"{url}?{param}={value[:20]!r}", client.get(url, {param: value}).status_code))
    for value in EVERYWHERE if QUERY[name] else []:  # every parameter at once
        seen.append((f"{url} all={value[:20]!r}", client.get(url, dict.fromkeys(QUERY[name], value)).status_code))
    seen.append((f"{url} NUL name", client.get(url, {"a\x00b": "1"}).status_code))
    seen.append((f"{url} huge ids", client.get(_url(name, night, huge=True)).status_code))
    _no_5xx(seen)


def test_a_malformed_cursor_is_a_400_that_says_which_parameter(client, night):
    client.force_login(night.fleet.manager)
    a = night.s["a"]
    for url, param in (
        (f"/sessions/{a.pk}/", "transcript_before"),
        (f"/sessions/{a.pk}/", "audit_before"),
        (f"/sessions/{a.pk}/transcript", "before"),
        (f"/sessions/{a.pk}/audit", "before"),
    ):
        response = client.get(url, {param: "²"})
        assert response.status_code == 400, (url, param)
        assert f"{param}: &#x27;²&#x27; is not a number" in response.content.decode()
        assert client.get(url, {param: str(2**63)}).status_code == 400
    assert client.get(f"/sessions/{a.pk}/", {"transcript_before": "5"}).status_code == 200


def test_the_explorer_reports_a_unicode_digit_instead_of_failing(client, night):
    client.force_login(night.fleet.manager)
    response = client.get(reverse("audit_explorer"), {"session": "²", "before": "²"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "session: &#x27;²&#x27; is not a number" in body and "before: &#x27;²&#x27; is not a number" in body


@pytest.mark.postgres  # NUL in a lookup fails only on PostgreSQL
@pytest.mark.parametrize("name", sorted(n for n in POST if POST[n]))
def test_a_post_answers_every_hostile_field_value_without_a_5xx(client, night, name):
    client.force_login(night.fleet.manager)
    url = _url(name, night)
    seen = []
    for field in POST[name]:
        for value in hostile(field):
            seen.append((f"{url} {field}={value[:20]!r}", client.post(url, {field: value}).status_code))
    seen.append((f"{url} NUL name", client.post(url, {"a\x00b": "1"}).status_code))
    seen.append((f"{url} huge ids", client.post(_url(name, night, huge=True), {}).status_code))
    _no_5xx(seen)


def test_the_control_and_batch_urls_answer_huge_ids_and_nul_fields_without_a_5xx(client, night):
    client.force_login(night.fleet.manager)
    seen = []
    for name in ("session_control", "launch_batch", "session_grant_issue"):
        seen.append((name, client.post(_url(name, night, huge=True), {"x": "\x00"}).status_code))
    _no_5xx(seen)


# -- the forms -----------------------------------------------------------------------------------------

FUTURE = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
FORM_NUMBERS = ["²", "-1", "1e20", "1" + "0" * 30, str(2**63), HUGE]
FORM_TIMES = ["9999-12-31T23:59", "0001-01-01T00:00", "2000-01-01T00:00", "2101-01-01T00:00", "2025-13-45T99:99"]
FORM_TEXTS = ["\x00", LONG, "²"]
FORM_KIND = {
    **dict.fromkeys(
        ["max_steps", "max_cost_usd", "max_tokens", "max_wall_minutes", "max_tool_calls", "priority"], FORM_NUMBERS
    ),
    **dict.fromkeys(["not_before", "expires_at"], FORM_TIMES),
}


def form_hostile(field: str) -> list[str]:
    return FORM_KIND.get(field, FORM_TEXTS)


def _launch_data(night: Night) -> dict:
    f = night.fleet
    return {
        "pod": f.alpha.pk,
        "sto": f.sto.username,
        "goal": "Fix the cart",
        "repository": f.repo.pk,
        "model": "sim/engineer",
        "task_type": "feature",
        "priority": "2",
        "preset": "edits",
        "max_steps": "20",
        "max_cost_usd": "1.00",
    }


LAUNCH_FIELDS = [
    "pod",
    "sto",
    "name",
    "goal",
    "success_criteria",
    "repository",
    "base_branch",
    "model",
    "task_type",
    "priority",
    "preset",
    "not_before",
    "expires_at",
    "max_steps",
    "max_cost_usd",
]


@pytest.mark.postgres  # NUL in a lookup fails only on PostgreSQL
def test_the_launch_form_refuses_hostile_values(client, night):
    client.force_login(night.fleet.manager)
    seen = []
    for field in LAUNCH_FIELDS:
        for value in form_hostile(field):
            response = client.post("/launch", {**_launch_data(night), field: value})
            seen.append((f"{field}={value[:20]!r}", response.status_code))
    _no_5xx(seen)


def test_a_far_window_start_without_an_end_is_a_form_error_not_an_overflow(client, night):
    client.force_login(night.fleet.manager)
    before = AgentSession.objects.count()
    response = client.post("/launch", {**_launch_data(night), "not_before": "9999-12-31T23:59"})
    assert response.status_code == 400
    assert "Choose a time between the years 2000 and 2100." in response.content.decode()
    batch = {f"batch-{k}": v for k, v in _launch_data(night).items() if k not in ("sto", "goal")}
    response = client.post(
        "/launch/batch", {**batch, "batch-tasks": "@sam Fix it", "batch-not_before": "9999-12-31T23:59"}
    )
    assert response.status_code == 400
    assert "Choose a time between the years 2000 and 2100." in response.content.decode()
    assert AgentSession.objects.count() == before


@pytest.mark.postgres  # NUL in a lookup fails only on PostgreSQL
def test_the_batch_plan_refuses_hostile_values(client, night):
    client.force_login(night.fleet.manager)
    batch = {f"batch-{k}": v for k, v in _launch_data(night).items() if k not in ("sto", "goal")}
    batch["batch-tasks"] = "@sam Fix it"
    seen = []
    for field in [*(f for f in LAUNCH_FIELDS if f not in ("goal", "name", "success_criteria")), "tasks"]:
        for value in form_hostile(field):
            response = client.post("/launch/batch", {**batch, f"batch-{field}": value})
            seen.append((f"{field}={value[:20]!r}", response.status_code))
    seen.append(("5000 lines", client.post("/launch/batch", {**batch, "batch-tasks": "@sam x\n" * 5000}).status_code))
    _no_5xx(seen)


GRANT_FIELDS = [
    "mode",
    "allow",
    "ask",
    "deny",
    "max_steps",
    "max_tokens",
    "max_cost_usd",
    "max_wall_minutes",
    "max_tool_calls",
    "not_before",
    "expires_at",
    "on_unanswered",
    "justification",
]


def _grant_data() -> dict:
    return {"mode": "edits", "on_unanswered": "wait", "allow": "Bash(pytest *)", "max_steps": "50"}


@pytest.mark.postgres  # NUL in a lookup fails only on PostgreSQL
def test_the_grant_editor_refuses_hostile_values(client, night):
    client.force_login(night.fleet.manager)
    url = reverse("session_grant_issue", args=[night.s["b"].pk])
    seen = []
    for field in GRANT_FIELDS:
        for value in form_hostile(field):
            seen.append((f"{field}={value[:20]!r}", client.post(url, {**_grant_data(), field: value}).status_code))
    _no_5xx(seen)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_steps", str(10**30), "less than or equal to 100000"),
        ("max_tokens", str(2**63), "less than or equal to 1000000000000"),
        ("max_tool_calls", str(10**20), "less than or equal to 1000000"),
        ("allow", "Read(" + "a" * 100_000 + ")", "A rule is at most 500 characters"),
        ("allow", "Read(" + "a" * 200_000 + ")", "Ensure this value has at most"),
        ("allow", "Read(" + "a" * 600 + ")", "A rule is at most 500 characters"),
        ("allow", "\n".join(f"Read(src/{i}.py)" for i in range(5000)), "At most 200 rules in one list (5000 given)."),
        ("allow", "\n".join(f"Read(src/{i}.py)" for i in range(201)), "At most 200 rules in one list (201 given)."),
        ("not_before", "9999-12-31T23:59", "Choose a time between the years 2000 and 2100."),
    ],
)
def test_the_grant_editor_bounds_numbers_rules_and_times(client, night, field, value, message):
    session = night.s["b"]
    client.force_login(night.fleet.manager)
    versions = Grant.objects.filter(session=session).count()
    response = client.post(reverse("session_grant_issue", args=[session.pk]), {**_grant_data(), field: value})
    assert response.status_code == 422
    assert message in response.content.decode()
    assert Grant.objects.filter(session=session).count() == versions, "nothing issued"


def test_the_grant_editor_refuses_a_window_that_already_ended_like_the_launch_form(client, night):
    session = night.s["b"]
    client.force_login(night.fleet.manager)
    response = client.post(
        reverse("session_grant_issue", args=[session.pk]),
        {**_grant_data(), "not_before": "2000-01-01T00:00", "expires_at": "2000-01-02T00:00"},
    )
    assert response.status_code == 422
    assert "The window has already closed" in response.content.decode()


def test_the_rule_check_refuses_a_huge_list_with_a_message(client, night):
    client.force_login(night.fleet.manager)
    url = reverse("session_grant_validate", args=[night.s["b"].pk])
    response = client.post(url, {"field": "allow", "allow": "\n".join(f"Read({i})" for i in range(5000))})
    assert response.status_code == 200
    assert "At most 200 rules in one list (5000 given)." in response.content.decode()


# -- windows -------------------------------------------------------------------------------------------


def test_the_timeline_shortens_a_far_window_and_says_so(client, night):
    client.force_login(night.fleet.manager)
    response = client.get(reverse("timeline"), {"since": "2000-01-01T00:00"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "Window shortened: a window is at most 31 days" in body
    assert "asked from 2000-01-01T00:00" in body


def test_a_window_beyond_the_years_falls_back_with_a_message_on_every_window_page(client, night):
    client.force_login(night.fleet.manager)
    for name in ("timeline", "digest", "audit_mine"):
        for since, until in (("0001-01-01T00:00", ""), ("", "9999-12-31T23:59")):
            response = client.get(reverse(name), {"since": since, "until": until})
            assert response.status_code == 200, name
            assert "Showing the default window" in response.content.decode()
            assert "out of range: choose a year from 2000 to 2100" in response.content.decode()


def test_window_from_keeps_the_end_of_a_window_longer_than_the_maximum():
    window = window_from(since="2020-01-01T00:00", until="2021-01-01T00:00")
    assert window.end - window.start == MAX_WINDOW
    assert timezone.localtime(window.end).year == 2021 and window.notice and not window.error
    assert window_from(since="2020-01-01T00:00", until="2020-01-20T00:00").notice == ""


def test_the_dashboard_refuses_a_date_beyond_the_years(client, night):
    client.force_login(night.fleet.manager)
    response = client.get(reverse("dashboard"), {"from": "9999-12-30", "to": "9999-12-31"})
    assert response.status_code == 400
    assert "Choose a time between the years 2000 and 2100." in response.content.decode()


# -- the strict helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["²", "١", "1.0", "+1", "-1", " 1 2", "0x10", str(2**62 + 1), "\x001", "9" * 41])
def test_integer_refuses_anything_but_ascii_digits_in_range(raw):
    with pytest.raises(params.BadParameter):
        params.integer(raw, name="n")


def test_integer_and_moment_accept_what_the_pages_write():
    assert params.integer(" 42 ", name="n") == 42 and params.integer(str(2**62), name="n") == 2**62
    assert params.moment("2025-01-31T18:00", name="t").hour == 18
    assert params.moment("2025-01-31", name="t").day == 31
    assert params.moment("2025-01-31T18:00Z", name="t").utcoffset() == timedelta(0)
    with pytest.raises(params.BadParameter, match="year from 2000 to 2100"):
        params.moment("9999-12-31T23:59", name="until")


# -- no existence oracle --------------------------------------------------------------------------------


def _page(response, sha: str) -> str:
    """The page with the asked sha and the (per-request masked) CSRF token blanked out."""
    body = response.content.decode().replace(sha, "SHA")
    return re.sub(r"[A-Za-z0-9]{64}", "TOKEN", body)


def test_commit_explain_answers_another_pods_commit_exactly_like_a_missing_one(client, night):
    client.force_login(night.fleet.sto)  # pod alpha; "0b…" is a commit of pod bravo's session
    other = client.get(reverse("audit_commit", args=["0b" * 6]))
    missing = client.get(reverse("audit_commit", args=["0c" * 6]))
    assert other.status_code == missing.status_code == 404
    assert _page(other, "0b" * 6) == _page(missing, "0c" * 6)
    full = client.get(reverse("audit_commit", args=["0b" * 20]))
    assert full.status_code == 404 and "Bravo" not in full.content.decode()
    client.force_login(night.fleet.outsider)  # bravo's lead sees it
    assert client.get(reverse("audit_commit", args=["0b" * 6])).status_code == 200


def test_a_refusal_to_someone_of_another_pod_names_nobody_of_the_pod(client, night):
    a = night.s["a"]
    client.force_login(night.fleet.outsider)
    responses = [
        client.post(reverse("digest_attest", args=[a.pk]), {"verdict": "accepted"}),
        client.post(reverse("review_decide", args=[a.pk, "reject"]), {"comment": "no"}),
    ]
    for response in responses:
        assert response.status_code == 403
        assert not re.search(r"\bsam\b", response.content.decode()), "the STO of pod alpha is not named"


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "https://evil.example/", "/\\/evil"])
def test_next_never_leads_to_another_site(client, night, target):
    client.force_login(night.fleet.manager)
    url = reverse("session_assign_sto", args=[night.s["a"].pk])
    response = client.post(url, {"sto": night.fleet.member.username, "next": target})
    assert response.status_code == 302 and response["Location"] == "/pods/alpha/"
