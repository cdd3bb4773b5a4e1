"""The audit explorer (filters, keyset pagination, visibility), one event's page, "Did I do this
work?" (/audit/mine), and audit_explain on a real agent commit (command and page)."""

from __future__ import annotations

import html
import json
import re

import git
import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.urls import reverse

from agents.models import Status
from audit.log import record
from audit.models import AuditEvent
from reviews import digest as overnight
from tests.reviews.test_digest import Night, build_night, login, window_params


@pytest.fixture
def night(fleet) -> Night:
    return build_night(fleet)


def ids(events) -> list[int]:
    return [e.pk for e in events]


def explore(user, **filters) -> list[int]:
    f = overnight.ExplorerFilters(**filters)
    return ids(overnight.explore(user=user, filters=f, page_size=10_000).events)


def expected(**lookups) -> list[int]:
    return list(AuditEvent.objects.filter(**lookups).order_by("-id").values_list("id", flat=True))


# -- the explorer's filters -------------------------------------------------------------------------


def test_filtering_by_session_returns_exactly_its_events_newest_first(night):
    a = night.s["a"]
    assert explore(night.fleet.sto, session=a.pk) == expected(session_id=a.pk)


def test_filtering_by_pod_sto_and_delegator(night):
    f = night.fleet
    assert explore(f.manager, pod="bravo") == expected(pod_id=f.bravo.pk)
    assert explore(f.manager, sto="mia") == expected(session_id=night.s["m"].pk)
    lena = explore(f.manager, delegator="lena")
    assert lena == expected(on_behalf_of_id=f.lead.pk)
    assert {night.s["b"].pk, night.s["m"].pk} <= set(
        AuditEvent.objects.filter(pk__in=lena).values_list("session_id", flat=True)
    )


def test_filtering_denied_tool_calls_by_kind_and_decision(night):
    denials = explore(night.fleet.sto, kind="tool.call", decision="deny")
    assert len(denials) == 3  # one in A, two in B
    assert all(e.payload["decision"] == "deny" for e in AuditEvent.objects.filter(pk__in=denials))


def test_a_kind_ending_with_a_dot_matches_the_whole_family(night):
    got = explore(night.fleet.sto, kind="escalation.", session=night.s["a"].pk)
    assert [AuditEvent.objects.get(pk=i).kind for i in got] == ["escalation.decided", "escalation.opened"]


def test_filtering_by_time_range(night):
    inside = explore(night.fleet.manager, since=night.since, until=night.until)
    assert inside == expected(created_at__gte=night.since, created_at__lt=night.until)
    assert night.s["old"].pk not in set(AuditEvent.objects.filter(pk__in=inside).values_list("session_id", flat=True))


def test_unknown_names_in_filters_are_reported_and_match_nothing(night):
    page = overnight.explore(user=night.fleet.manager, filters=overnight.ExplorerFilters(pod="nope", delegator="ghost"))
    assert page.events == [] and "pod: no pod 'nope'" in page.errors and "delegator: no user 'ghost'" in page.errors


def test_keyset_pages_walk_every_event_once_in_order(night):
    user = night.fleet.sto
    seen, before = [], None
    while True:
        page = overnight.explore(user=user, filters=overnight.ExplorerFilters(before=before), page_size=7)
        assert len(page.events) <= 7
        seen += ids(page.events)
        if page.next_before is None:
            break
        assert page.next_before == page.events[-1].pk
        before = page.next_before
    visible_sessions = [s.pk for k, s in night.s.items() if k != "o"]
    assert seen == expected(session_id__in=visible_sessions)


def test_the_explorer_page_paginates_with_before_and_never_offset(client, night, django_assert_max_num_queries):
    login(client, night.fleet.manager)
    first = client.get(reverse("audit_explorer"))
    assert first.status_code == 200
    body = first.content.decode()
    rows = [int(i) for i in re.findall(r'<tr data-event-id="(\d+)"', body)]
    assert rows == expected()[:100] or rows == expected()  # 100 per page
    if len(expected()) > 100:
        before = rows[-1]
        assert f"before={before}" in body
        second = client.get(reverse("audit_explorer"), {"before": before, "more": "1"}, HTTP_HX_REQUEST="true")
        more = [int(i) for i in re.findall(r'<tr data-event-id="(\d+)"', second.content.decode())]
        assert more == expected(id__lt=before)[:100]
        assert "<html" not in second.content.decode()  # a partial for htmx
    with django_assert_max_num_queries(8) as queries:
        client.get(reverse("audit_explorer"), {"session": night.s["a"].pk, "before": 10**9})
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)


def test_the_explorer_page_filters_with_query_parameters(client, night):
    login(client, night.fleet.sto)
    response = client.get(
        reverse("audit_explorer"), {"session": night.s["b"].pk, "kind": "tool.call", "decision": "deny"}
    )
    rows = [int(i) for i in re.findall(r'<tr data-event-id="(\d+)"', response.content.decode())]
    assert rows == list(
        AuditEvent.objects.filter(session_id=night.s["b"].pk, kind="tool.call", payload__decision="deny")
        .order_by("-id")
        .values_list("id", flat=True)
    )
    assert len(rows) == 2


# -- visibility -------------------------------------------------------------------------------------


def test_a_member_of_another_pod_never_sees_pod_a_events(client, night):
    otto = night.fleet.outsider
    everything = explore(otto)
    assert everything == expected(session_id=night.s["o"].pk)
    assert explore(otto, session=night.s["a"].pk) == []
    assert explore(otto, pod="alpha") == []
    login(client, otto)
    alpha_event = AuditEvent.objects.filter(session_id=night.s["a"].pk).first()
    assert client.get(reverse("audit_event", args=[alpha_event.pk])).status_code == 403
    page = client.get(reverse("audit_explorer")).content.decode()
    assert "Fix the cart" not in page and f'data-event-id="{alpha_event.pk}"' not in page
    assert client.get(reverse("audit_mine")).content.decode().count("Fix the cart") == 0
    timeline = client.get(reverse("timeline"), window_params(night)).content.decode()
    assert "Fix the cart" not in timeline


def test_fleet_and_pod_events_are_for_managers_and_leaders_only(night):
    f = night.fleet
    with transaction.atomic():
        stop = record("fleet.stopped", user=f.manager, payload={"reason": "drill", "sessions": []})
        pod = record("pod.paused", user=f.lead, pod_id=f.alpha.pk, payload={"pod": "alpha"})
    for viewer in (f.manager, f.leader):
        assert {stop.pk, pod.pk} <= set(explore(viewer))
    for viewer in (f.lead, f.sto, f.outsider):
        assert not {stop.pk, pod.pk} & set(explore(viewer))


# -- one event ----------------------------------------------------------------------------------------


def test_the_event_page_shows_the_payload_the_hash_and_the_chain_position(client, night):
    login(client, night.fleet.sto)
    event = night.events["a_commit1"]
    response = client.get(reverse("audit_event", args=[event.pk]))
    assert response.status_code == 200
    page = html.unescape(response.content.decode())
    assert event.hash in page and event.prev_hash in page and "recomputed: matches" in page
    assert f"{event.chain} · event {event.seq} of" in page
    previous = AuditEvent.objects.get(chain=event.chain, seq=event.seq - 1)
    assert f'href="/audit/event/{previous.pk}"' in page
    assert '"message": "Fix rounding in cart total"' in page
    assert f'href="/audit/commit/{"a1" * 20}"' in page


def test_an_unknown_event_is_a_404_page(client, night):
    login(client, night.fleet.sto)
    assert client.get(reverse("audit_event", args=[10**9])).status_code == 404


# -- "Did I do this work?" ------------------------------------------------------------------------------


def test_mine_lists_exactly_the_actions_on_my_authority(client, night):
    sam = night.fleet.sto
    mine = overnight.actions_on_behalf_of(user=sam, window=night.window)
    listed = {line.event.pk for g in mine.groups for line in g.lines}
    assert listed == set(
        AuditEvent.objects.filter(on_behalf_of_id=sam.pk, created_at__gte=night.since)
        .exclude(kind="model.call")
        .values_list("id", flat=True)
    )
    assert not any(line.event.on_behalf_of_id != sam.pk for g in mine.groups for line in g.lines)
    # B runs on the lead's authority: none of its tool calls are sam's
    b_calls = set(AuditEvent.objects.filter(session_id=night.s["b"].pk, kind="tool.call").values_list("id", flat=True))
    assert b_calls and not (b_calls & listed)
    groups = {(g.session_id, g.grant_id): g for g in mine.groups}
    a = night.s["a"]
    a_group = groups[(a.pk, a.grants.get().pk)]
    assert a_group.model_calls == 3 and a_group.tokens == 360
    assert a_group.by_provenance == {"rule": 4, "guard": 1, "human": 1}


def test_mine_names_the_human_behind_a_human_approval(night):
    mine = overnight.actions_on_behalf_of(user=night.fleet.sto, window=night.window)
    lines = {line.event.pk: line for g in mine.groups for line in g.lines}
    human = lines[night.events["a_human"].pk]
    assert human.approval == "allow-once by lena" and human.approved_by == "lena"
    decided = next(line for line in lines.values() if line.event.kind == "escalation.decided")
    assert decided.approval == "done by lena"
    rule = next(line for line in lines.values() if line.event.kind == "tool.call" and line.event.provenance == "rule")
    assert rule.approval == "allowed by a grant rule Bash(pytest *)"


def test_the_mine_page_groups_by_session_and_grant(client, night):
    login(client, night.fleet.lead)
    response = client.get(reverse("audit_mine"), window_params(night))
    assert response.status_code == 200
    page = response.content.decode()
    sections = re.findall(
        r'<section class="group" data-session-id="(\d+)" data-grant-id="(\d+)" data-lines="(\d+)"', page
    )
    assert {int(s) for s, _, _ in sections} == {night.s["b"].pk, night.s["m"].pk}
    assert "Fix the cart" not in page  # sam's own authority, not lena's
    with_model = client.get(reverse("audit_mine"), {**window_params(night), "model_calls": "1"}).content.decode()
    assert with_model.count("<code>model.call</code>") == 2  # one in B, one in M


# -- audit_explain --------------------------------------------------------------------------------------


def test_audit_explain_of_an_unknown_sha_is_a_clear_error(night, client):
    with pytest.raises(CommandError, match="no commit deadbeef"):
        call_command("audit_explain", "deadbeef")
    with pytest.raises(CommandError, match="is not a commit sha"):
        call_command("audit_explain", "not-a-sha")
    login(client, night.fleet.sto)
    response = client.get(reverse("audit_commit", args=["deadbeef"]))
    assert response.status_code == 404 and "no commit deadbeef" in response.content.decode()


def test_audit_explain_from_the_audit_log_alone_when_git_lost_the_commit(night):
    from io import StringIO

    out = StringIO()
    call_command("audit_explain", "a1a1a1a1", stdout=out)
    text = out.getvalue()
    a = night.s["a"]
    assert f"session  #{a.pk} Fix the cart total" in text
    assert "on the authority of  sam" in text
    assert "human decisions:" in text and "lena: allow-once" in text
    assert "no longer in demo" in text


def test_an_outsider_cannot_read_the_explanation_of_a_pod_a_commit(client, night):
    login(client, night.fleet.outsider)
    response = client.get(reverse("audit_commit", args=["a1" * 20]))
    assert response.status_code == 404, "answered like a commit that does not exist (no existence oracle)"
    assert "Fix rounding" not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_audit_explain_names_the_session_delegator_and_grant_of_a_real_agent_commit(fleet, worktrees_dir, client):
    from io import StringIO

    from tests.agents.test_runtime import drive
    from tests.agents.test_runtime import launch as runtime_launch

    session = drive(runtime_launch(fleet))
    assert session.status == Status.SUCCEEDED, session.status_reason
    repo = git.Repo(fleet.repo.path)
    sha = next(repo.iter_commits(f"main..{session.branch}")).hexsha
    grant = session.grants.get()
    out = StringIO()
    call_command("audit_explain", sha[:10], stdout=out)
    text = out.getvalue()
    assert f"commit {sha}" in text
    assert f"session  #{session.pk} " in text
    assert f"agent    agent #{session.pk} (sim/engineer)" in text
    assert "on the authority of  sam" in text
    assert f"grant    #{grant.pk} version 1, mode edits, delegated by sam" in text
    assert "allow: Bash(python -m pytest *), Bash(pytest *), Git(commit)" in text
    assert "note:" not in text  # trailers and the audit log agree
    facts = json.loads(_call_json(sha))
    assert facts["session"] == session.pk and facts["delegator"] == "sam" and facts["grant"]["id"] == grant.pk
    assert facts["trailers"] == {"Agent-Session": str(session.pk), "Delegated-By": "sam", "Grant": str(grant.pk)}
    calls = AuditEvent.objects.filter(session_id=session.pk, kind="tool.call", id__lt=facts["commit_event"])
    assert [a["event"] for a in facts["approvals"]] == list(calls.order_by("id").values_list("id", flat=True))
    assert all(a["provenance"] in ("rule", "mode") for a in facts["approvals"])
    login(client, fleet.sto)
    page = client.get(reverse("audit_commit", args=[sha[:12]]))
    assert page.status_code == 200
    body = html.unescape(page.content.decode())
    assert f"#{session.pk} {session.name}" in body and "<strong>sam</strong>" in body and "version 1" in body


def _call_json(sha: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("audit_explain", sha, "--json", stdout=out)
    return out.getvalue()


def test_time_bounded_pages_are_exact_over_hours_of_events(fleet, monkeypatch):
    """The explorer starts a time-bounded search at the id matching the bound (ID_TIME_SKEW): over
    ten hours of events, every window still returns exactly the events inside it."""
    from datetime import timedelta

    from django.utils import timezone

    from tests.reviews.test_digest import launch, model_call

    start = timezone.now() - timedelta(hours=10)
    moments = iter(start + timedelta(minutes=3 * i) for i in range(10_000))
    monkeypatch.setattr(timezone, "now", lambda: next(moments))
    session = launch(fleet, name="A long night")
    for _ in range(190):
        model_call(session)
    monkeypatch.undo()
    for since_h, until_h in [(None, 2), (1, 3), (2.5, 2.6), (0, 9.5), (4, None), (-1, 11)]:
        since = start + timedelta(hours=since_h) if since_h is not None else None
        until = start + timedelta(hours=until_h) if until_h is not None else None
        lookups = {}
        if since:
            lookups["created_at__gte"] = since
        if until:
            lookups["created_at__lt"] = until
        seen, before = [], None
        while True:
            page = overnight.explore(
                user=fleet.manager,
                filters=overnight.ExplorerFilters(since=since, until=until, before=before),
                page_size=25,
            )
            seen += ids(page.events)
            if page.next_before is None:
                break
            before = page.next_before
        assert seen == expected(**lookups), (since_h, until_h)
