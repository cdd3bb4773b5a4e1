"""The session drawer: what a human sees about one agent session, and who may act from it."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from django.db import transaction

from agents import services
from agents.models import Escalation, Status
from agents.runtime.worktrees import ensure_worktree
from agents.selectors import active_grant
from agents.services import transcript_append
from agents.views import AUDIT_PAGE, TRANSCRIPT_PAGE
from audit.log import record
from audit.models import AuditEvent
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def session(fleet, worktrees_dir):
    return services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal="Fix the rounding bug in shopcart totals",
        by=fleet.lead,
        repository=fleet.repo,
        success_criteria="tests/test_cart.py passes",
        grant=services.GrantSpec(mode="edits", allow=("Bash(pytest *)", "Git(commit)"), deny=("Bash(git push *)",)),
        start=False,
    )


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def drawer(client, session, **params):
    return client.get(f"/sessions/{session.pk}/", params, **HTMX)


def text(response) -> str:
    return response.content.decode()


def test_the_drawer_shows_goal_grant_transcript_audit_and_controls_to_the_sto(client, fleet, session):
    transcript_append(
        session_id=session.pk,
        iteration=1,
        step=1,
        role="assistant",
        content="Let me look at the cart.",
        tool_calls=[{"id": "c1", "name": "read_file", "arguments": json.dumps({"path": "shopcart/cart.py"})}],
    )
    transcript_append(
        session_id=session.pk,
        iteration=1,
        step=1,
        role="tool",
        name="read_file",
        tool_call_id="c1",
        content="def total(items): ...",
    )
    response = drawer(login(client, fleet.sto), session)
    assert response.status_code == 200
    page = text(response)
    assert "<html" not in page, "an htmx request gets the partial, not a page"
    assert "Fix the rounding bug in shopcart totals" in page
    assert "tests/test_cart.py passes" in page
    assert 'data-grant-version="1"' in page and "delegated by <strong>sam</strong>" in page
    assert "<code>Bash(pytest *)</code>" in page and "<code>Bash(git push *)</code>" in page
    assert "Steps</th><td>0 / 200" in page
    assert "Let me look at the cart." in page
    assert 'class="tool-name">read_file</code>' in page and "&quot;path&quot;: &quot;shopcart/cart.py&quot;" in page
    assert "def total(items): ..." in page
    assert 'data-kind="session.launched"' in page and 'data-kind="grant.issued"' in page
    for control in ("pause", "cancel"):
        assert f'data-control="{control}"' in page
    assert 'data-control="resume"' not in page, "a queued session is not paused"
    assert 'class="grant-editor"' in page
    assert "no worktree yet" in page


def test_a_plain_request_gets_the_full_page_that_can_be_linked(client, fleet, session):
    response = login(client, fleet.sto).get(f"/sessions/{session.pk}/")
    assert response.status_code == 200
    page = text(response)
    assert "<html" in page and 'id="drawer"' in page and f'id="drawer-{session.pk}"' in page


def test_a_leader_reads_the_drawer_without_controls_or_editor(client, fleet, session):
    page = text(drawer(login(client, fleet.leader), session))
    assert "Fix the rounding bug" in page
    assert "data-control=" not in page
    assert 'class="grant-editor"' not in page and 'data-action="revoke"' not in page
    assert "Leaders read the fleet" in page


def test_a_pod_member_who_is_not_the_sto_reads_without_controls(client, fleet, session):
    page = text(drawer(login(client, fleet.member), session))
    assert "data-control=" not in page
    assert "Only the session&#x27;s Single Task Owner (sam)" in page


@pytest.mark.parametrize("user", ["lead", "manager"])
def test_the_pod_lead_and_a_manager_get_the_controls(client, fleet, session, user):
    page = text(drawer(login(client, getattr(fleet, user)), session))
    assert 'data-control="pause"' in page and 'class="grant-editor"' in page


def test_a_member_of_another_pod_gets_403_on_the_drawer_and_every_post(client, fleet, session):
    grant = active_grant(session=session)
    escalation = Escalation.objects.create(
        session=session,
        grant=grant,
        tool="run_command",
        action="run_command: ls",
        action_hash="h",
        reason="commands ask",
        rule="Bash(ls)",
    )
    login(client, fleet.outsider)
    assert drawer(client, session).status_code == 403
    assert client.get(f"/sessions/{session.pk}/").status_code == 403
    assert client.get(f"/sessions/{session.pk}/transcript", {"before": 5}, **HTMX).status_code == 403
    assert client.get(f"/sessions/{session.pk}/audit", {"before": 5}, **HTMX).status_code == 403
    posts = {
        f"/sessions/{session.pk}/pause": {},
        f"/sessions/{session.pk}/resume": {},
        f"/sessions/{session.pk}/cancel": {},
        f"/escalations/{escalation.pk}/decide": {"decision": "allow-once"},
        f"/sessions/{session.pk}/grant/issue": {"mode": "edits", "on_unanswered": "wait"},
        f"/sessions/{session.pk}/grant/validate": {"field": "allow", "allow": "Bash(ls)"},
        f"/sessions/{session.pk}/grant/revoke": {"reason": "mine now"},
        f"/sessions/{session.pk}/priority": {"priority": "0"},
    }
    for url, data in posts.items():
        for headers in ({}, HTMX):
            response = client.post(url, data, **headers)
            assert response.status_code == 403, (url, headers, response.status_code)
            assert "sam" not in text(response), "an outsider learns nothing about the session"
    session.refresh_from_db()
    escalation.refresh_from_db()
    assert session.status == Status.QUEUED and escalation.state == Escalation.State.OPEN
    assert session.grants.count() == 1 and active_grant(session=session).pk == grant.pk


def test_the_transcript_is_newest_first_and_pages_to_older_messages(client, fleet, session):
    for n in range(45):
        transcript_append(
            session_id=session.pk, iteration=1, step=n, role="assistant", content=f"message number {n:02d}"
        )
    login(client, fleet.sto)
    page = text(drawer(client, session))
    shown = re.findall(r"message number (\d\d)", page)
    assert shown == [f"{n:02d}" for n in range(44, 44 - TRANSCRIPT_PAGE, -1)]
    older = re.search(r'hx-get="(/sessions/\d+/transcript\?before=(\d+))"', page)
    assert older, "an htmx 'older' link"
    assert f'href="/sessions/{session.pk}/?transcript_before={older.group(2)}' in page, "with a real href beside it"
    second = text(client.get(older.group(1).replace("&amp;", "&"), **HTMX))
    assert "<section" not in second, "only the next page of entries"
    assert re.findall(r"message number (\d\d)", second) == [
        f"{n:02d}" for n in range(44 - TRANSCRIPT_PAGE, 44 - 2 * TRANSCRIPT_PAGE, -1)
    ]
    third_link = re.search(r'hx-get="(/sessions/\d+/transcript\?before=\d+)"', second).group(1)
    third = text(client.get(third_link, **HTMX))
    # 45 assistant messages + the system prompt and the brief = 47 entries: the last page holds 7
    assert re.findall(r"message number (\d\d)", third) == [f"{n:02d}" for n in range(4, -1, -1)]
    assert "You are a careful software engineer" in third
    assert "transcript?before=" not in third, "no older link on the last page"
    # without htmx the link opens the drawer page at that point
    plain = text(client.get(f"/sessions/{session.pk}/transcript", {"before": older.group(2)}))
    assert "<html" in plain and "message number 24" in plain and "message number 25" not in plain


def test_long_messages_are_collapsed_and_everything_is_escaped(client, fleet, session):
    transcript_append(
        session_id=session.pk,
        iteration=1,
        step=1,
        role="tool",
        name="read_file",
        content="<script>alert('x')</script>" + "y" * 2000,
    )
    transcript_append(
        session_id=session.pk,
        iteration=1,
        step=1,
        role="assistant",
        content="",
        tool_calls=[{"id": "c", "name": "<b>evil</b>", "arguments": '{"path": "<img src=x onerror=alert(1)>"}'}],
    )
    page = text(drawer(login(client, fleet.sto), session))
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert '<details class="t-long">' in page
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page
    assert "<img src=x" not in page


def test_the_audit_trail_shows_the_session_events_newest_first_and_pages(client, fleet, session):
    with transaction.atomic():
        for n in range(AUDIT_PAGE + 5):
            record(
                "test.note", session=session, agent=True, on_behalf_of=fleet.sto, provenance="rule", payload={"n": n}
            )
    other = services.session_launch(
        pod=fleet.alpha, sto=fleet.sto, goal="Another goal", by=fleet.sto, repository=fleet.repo, start=False
    )
    with transaction.atomic():
        record("test.elsewhere", session=other, agent=True, payload={})
    login(client, fleet.sto)
    page = text(drawer(client, session))
    kinds = re.findall(r'data-kind="([^"]+)"', page)
    assert len(kinds) == AUDIT_PAGE and set(kinds) == {"test.note"}
    assert "test.elsewhere" not in page
    first = page.index("&quot;n&quot;: 29")
    assert first < page.index("&quot;n&quot;: 28"), "newest first"
    assert "[rule]" in page and "for sam" in page
    link = re.search(r'hx-get="(/sessions/\d+/audit\?before=\d+)"', page).group(1)
    older = text(client.get(link, **HTMX))
    assert re.findall(r'data-kind="([^"]+)"', older)[:5] == ["test.note"] * 5
    assert "session.launched" in older and "grant.issued" in older
    ids = [int(x) for x in re.findall(r'data-event-id="(\d+)"', page + older)]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    assert len(ids) == AuditEvent.objects.filter(session_id=session.pk).count()


def test_without_a_sandbox_the_drawer_says_commands_ask(client, fleet, session, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "SANDBOX": "none"}
    assert "No sandbox on this machine: commands ask." in text(drawer(login(client, fleet.sto), session))


def test_the_diff_stat_counts_the_branch_against_its_base(client, fleet, session):
    ensure_worktree(
        repo_path=Path(fleet.repo.path),
        base_branch="main",
        branch=session.branch,
        worktree_path=Path(session.worktree_path),
    )
    worktree = Path(session.worktree_path)
    (worktree / "NOTES.md").write_text("one\ntwo\n")
    import git

    repo = git.Repo(worktree)
    repo.git.add("NOTES.md")
    repo.git.commit(
        "-m",
        "notes",
        env={
            "GIT_AUTHOR_NAME": "a",
            "GIT_AUTHOR_EMAIL": "a@x",
            "GIT_COMMITTER_NAME": "a",
            "GIT_COMMITTER_EMAIL": "a@x",
        },
    )
    (worktree / "README.md").write_text("changed\n")
    page = text(drawer(login(client, fleet.sto), session))
    assert "1 file changed, 2 insertions(+)" in page
    assert "uncommitted: 1 file changed" in page


def test_the_handoff_note_is_shown(client, fleet, session):
    type(session).objects.filter(pk=session.pk).update(
        handoff={"status": "blocked", "next_action": "ask for push rights", "do_not": ["force-push"]}
    )
    page = text(drawer(login(client, fleet.sto), session))
    assert "ask for push rights" in page and "force-push" in page


def test_pause_from_the_drawer_rerenders_it_paused(client, fleet, session):
    response = login(client, fleet.sto).post(f"/sessions/{session.pk}/pause", **HTMX)
    assert response.status_code == 200
    page = text(response)
    assert 'data-status="paused"' in page and 'data-control="resume"' in page
    session.refresh_from_db()
    assert session.status == Status.PAUSED


def test_a_leader_pausing_by_hand_is_refused_with_the_reason_and_recorded(client, fleet, session):
    response = login(client, fleet.leader).post(f"/sessions/{session.pk}/pause", **HTMX)
    assert response.status_code == 403
    assert "Leaders read the fleet; they cannot act on agents." in text(response)
    assert AuditEvent.objects.filter(session_id=session.pk, kind="session.action_refused", actor_label="leo").exists()
    session.refresh_from_db()
    assert session.status == Status.QUEUED


def test_resuming_a_running_session_says_why_nothing_happened(client, fleet, session):
    response = login(client, fleet.sto).post(f"/sessions/{session.pk}/resume", **HTMX)
    assert response.status_code == 409
    assert "not paused" in text(response)


@pytest.mark.parametrize("user", ["sto", "lead", "manager"])
def test_the_sto_the_lead_or_a_manager_sets_the_priority_from_the_drawer(client, fleet, session, user):
    page = text(drawer(login(client, getattr(fleet, user)), session))
    assert 'data-control="priority"' in page and '<option value="2" selected>P2</option>' in page
    response = client.post(f"/sessions/{session.pk}/priority", {"priority": "0"}, **HTMX)
    assert response.status_code == 200
    assert '<option value="0" selected>P0</option>' in text(response) and "priority P0" in text(response)
    session.refresh_from_db()
    assert session.priority == 0
    event = AuditEvent.objects.get(session_id=session.pk, kind="session.priority_set")
    assert event.payload == {"from": 2, "to": 0} and event.actor_label == getattr(fleet, user).username


@pytest.mark.parametrize("user", ["member", "leader"])
def test_setting_the_priority_is_refused_to_a_member_or_a_leader_and_recorded(client, fleet, session, user):
    response = login(client, getattr(fleet, user)).post(f"/sessions/{session.pk}/priority", {"priority": "0"}, **HTMX)
    assert response.status_code == 403
    session.refresh_from_db()
    assert session.priority == 2
    assert AuditEvent.objects.filter(session_id=session.pk, kind="session.action_refused").exists()
    assert not AuditEvent.objects.filter(session_id=session.pk, kind="session.priority_set").exists()


@pytest.mark.parametrize("value", ["7", "", "P1", "-1", "01"])
def test_a_priority_outside_p0_to_p3_is_refused_with_the_reason(client, fleet, session, value):
    response = login(client, fleet.sto).post(f"/sessions/{session.pk}/priority", {"priority": value}, **HTMX)
    assert response.status_code == 400 and "P0 to P3" in text(response)
    session.refresh_from_db()
    assert session.priority == 2


def test_a_plain_form_post_redirects_back_to_the_drawer(client, fleet, session):
    response = login(client, fleet.sto).post(f"/sessions/{session.pk}/pause")
    assert response.status_code == 302 and response["Location"] == f"/sessions/{session.pk}/"
    assert "Paused." in text(client.get(response["Location"]))


# --- in a real browser ----------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_chromium_the_drawer_validates_refuses_decides_and_fits_a_phone(
    live_server, fleet, worktrees_dir, monkeypatch
):
    from playwright.sync_api import expect, sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    session = services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal="Fix the rounding bug in shopcart totals",
        by=fleet.lead,
        repository=fleet.repo,
        success_criteria="tests/test_cart.py passes",
        grant=services.GrantSpec(mode="edits", allow=("Bash(pytest *)", "Git(commit)"), deny=("Bash(git push *)",)),
        start=False,
    )
    transcript_append(
        session_id=session.pk,
        iteration=1,
        step=1,
        role="assistant",
        content="I will run the tests first.",
        tool_calls=[{"id": "c1", "name": "run_command", "arguments": json.dumps({"command": "pytest -q"})}],
    )
    transcript_append(
        session_id=session.pk,
        iteration=1,
        step=1,
        role="tool",
        name="run_command",
        tool_call_id="c1",
        content="F.\n" + "E   assert 10.0 == 9.99\n" * 60,
    )
    transcript_append(
        session_id=session.pk,
        iteration=1,
        step=2,
        role="assistant",
        content="",
        tool_calls=[{"id": "c2", "name": "run_command", "arguments": json.dumps({"command": "git push origin HEAD"})}],
    )
    with transaction.atomic():
        escalation = Escalation.objects.create(
            session=session,
            grant=active_grant(session=session),
            tool="run_command",
            action="run_command: git push origin HEAD",
            action_hash="b" * 64,
            reason="commands ask in edits mode",
            rule="Bash(git push origin HEAD)",
        )
        services.set_status(session, Status.NEEDS_APPROVAL, reason="waiting for a human: git push", agent=True)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{live_server.url}/login/?next=/")
            page.fill("input[name=username]", "sam")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{live_server.url}/")
            # the canvas's contract: the drawer is loaded into #drawer by an htmx GET of /sessions/<id>/
            page.evaluate(f"htmx.ajax('GET', '/sessions/{session.pk}/', '#drawer')")
            drawer = page.locator(f"#drawer #drawer-{session.pk}")
            expect(drawer).to_contain_text("Fix the rounding bug in shopcart totals")
            expect(drawer.locator("[data-key=approve]")).to_be_visible()

            # inline validation names the bad rule
            drawer.locator("details.grant-editor > summary").click()
            allow = drawer.locator(f"#grant-{session.pk}-allow")
            allow.fill("Bash(pytest *)\nFoo(bar)")
            allow.blur()
            expect(drawer.locator(f"#grant-check-{session.pk}-allow")).to_contain_text('"Foo(bar)": unknown tool "Foo"')

            # a refusal (403) is swapped in with its message; nothing changes
            allow.fill("Bash(pytest *)\nGit(commit)")
            drawer.locator("input[name=mode][value=autonomous]").check()
            drawer.locator("[data-action=issue-grant]").click()
            expect(page.locator("#drawer .flash")).to_contain_text(
                "Only the pod lead or a manager may delegate autonomous mode."
            )
            assert session.grants.count() == 1

            # allow once: the drawer re-renders, the question is answered, the session runs
            page.locator("#drawer [data-key=approve]").click()
            expect(page.locator("#drawer .flash")).to_contain_text("allowed once")
            expect(page.locator(f"#drawer-{session.pk}")).to_have_attribute("data-status", "running")
            expect(page.locator("#drawer [data-key=approve]")).to_have_count(0)
            escalation.refresh_from_db()
            assert escalation.state == Escalation.State.ALLOWED_ONCE

            # the transcript's "older" link is there only when there is more; the page is linkable
            page.goto(f"{live_server.url}/sessions/{session.pk}/")

            def ask_again() -> None:
                with transaction.atomic():
                    locked = type(session).objects.select_for_update().get(pk=session.pk)
                    Escalation.objects.create(
                        session=locked,
                        grant=active_grant(session=locked),
                        tool="run_command",
                        action="run_command: curl https://pypi.org/simple/",
                        action_hash="c" * 64,
                        reason="network access needs a Net allow rule",
                        rule="Net(pypi.org)",
                    )
                    services.set_status(locked, Status.NEEDS_APPROVAL, reason="waiting for a human", agent=True)

            # off Playwright's event-loop thread, so the live update after commit can be sent as in production
            worker = threading.Thread(target=ask_again)
            worker.start()
            worker.join(timeout=30)
            page.reload()
            page.locator("details.grant-history > summary").click()
            page.screenshot(path=str(ARTIFACTS / "drawer.png"), full_page=True)
            page.locator("details.grant-editor > summary").click()
            page.locator(f"#grant-{session.pk}-deny").fill("Bash(git push *)\nNet(https://evil.example/x)")
            page.locator(f"#grant-{session.pk}-deny").blur()
            expect(page.locator(f"#grant-check-{session.pk}-deny")).to_contain_text("not a URL")
            page.locator("details.grant-editor").screenshot(path=str(ARTIFACTS / "drawer-grant-editor.png"))

            phone = browser.new_page(
                viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
            )
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{live_server.url}/sessions/{session.pk}/")
            section = phone.locator(f"#drawer-{session.pk}")
            box = section.bounding_box()
            assert box["width"] >= 390 - 2 * 16 - 1, f"full width on a phone (inside the page margin): {box}"
            for selector in ("[data-key=approve]", "[data-key=deny]", "[data-control=pause]", "[data-control=cancel]"):
                button = phone.locator(selector).first.bounding_box()
                assert button["height"] >= 44 and button["width"] >= 44, (selector, button)
                assert button["x"] >= 0 and button["x"] + button["width"] <= 390, (selector, button)
            wide = phone.evaluate("""() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > 391)
                .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)).slice(0, 12)""")
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390, f"no sideways scrolling: {wide}"
            phone.screenshot(path=str(ARTIFACTS / "drawer-phone.png"))
        finally:
            browser.close()
