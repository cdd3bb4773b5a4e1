"""Pausing a whole pod: its lead or a manager parks every queued or running session of the pod
before its next tool call, from the pod page or the command line; resuming lets them carry on."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction

from agents import services
from agents.authority import NotAllowed
from agents.models import AgentSession, Pod, Status
from audit.models import AuditEvent
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def sessions(fleet, worktrees_dir):
    def launch(goal):
        return services.session_launch(
            pod=fleet.alpha, sto=fleet.sto, goal=goal, by=fleet.lead, repository=fleet.repo, start=False
        )

    queued, running, mine = launch("Fix the pricing bug"), launch("Fix the slug bug"), launch("Write the docs")
    with transaction.atomic():
        services.set_status(running, Status.RUNNING, reason="working")
    services.session_pause(session=mine, by=fleet.sto)
    return {"queued": queued, "running": running, "paused_by_hand": mine}


def statuses(sessions) -> dict[str, tuple[str, str]]:
    return {
        name: tuple(AgentSession.objects.filter(pk=s.pk).values_list("status", "hold").get())
        for name, s in sessions.items()
    }


def paused(pod) -> bool:
    return Pod.objects.get(pk=pod.pk).paused


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


# --- the services ---------------------------------------------------------------------------------


def test_the_lead_pauses_the_pod_and_every_queued_or_running_session_is_parked(fleet, sessions):
    assert services.pod_pause(pod=fleet.alpha, by=fleet.lead, reason="bad deploy") == 2
    assert paused(fleet.alpha)
    assert statuses(sessions) == {
        "queued": (Status.PAUSED, "pod"),
        "running": (Status.PAUSED, "pod"),
        "paused_by_hand": (Status.PAUSED, "user"),
    }
    event = AuditEvent.objects.get(kind="pod.paused")
    assert event.actor_label == "lena" and event.payload["reason"] == "bad deploy"
    assert sorted(event.payload["sessions"]) == sorted([sessions["queued"].pk, sessions["running"].pk])


def test_resuming_the_pod_lets_what_it_parked_carry_on_and_leaves_a_hand_pause_standing(fleet, sessions):
    services.pod_pause(pod=fleet.alpha, by=fleet.lead)
    assert services.pod_resume(pod=fleet.alpha, by=fleet.manager) == 2
    assert not paused(fleet.alpha)
    assert statuses(sessions) == {
        "queued": (Status.RUNNING, ""),
        "running": (Status.RUNNING, ""),
        "paused_by_hand": (Status.PAUSED, "user"),
    }
    assert AuditEvent.objects.filter(kind="pod.resumed", actor_label="max").exists()


@pytest.mark.parametrize("who", ["sto", "member", "outsider", "leader"])
def test_it_refuses_anyone_but_the_pod_lead_or_a_manager(fleet, sessions, who):
    with pytest.raises(NotAllowed):
        services.pod_pause(pod=fleet.alpha, by=getattr(fleet, who))
    assert not paused(fleet.alpha)
    assert statuses(sessions)["running"] == (Status.RUNNING, "")
    assert not AuditEvent.objects.filter(kind="pod.paused").exists()


# --- the pod page ---------------------------------------------------------------------------------


def test_the_pod_page_offers_pause_to_the_lead_and_not_to_a_member(client, fleet, sessions):
    assert 'data-control="pause-pod"' in login(client, fleet.lead).get("/pods/alpha/").content.decode()
    client.logout()
    page = login(client, fleet.member).get("/pods/alpha/").content.decode()
    assert 'data-control="pause-pod"' not in page and 'data-control="resume-pod"' not in page


def test_the_lead_pauses_from_the_page_and_htmx_gets_the_controls_back_with_resume(client, fleet, sessions):
    response = login(client, fleet.lead).post("/pods/alpha/pause", {"reason": "bad deploy"}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="pod-controls"' in html and 'data-control="resume-pod"' in html and "<html" not in html
    assert "2 session(s) parked before their next tool call" in html
    assert paused(fleet.alpha) and statuses(sessions)["running"] == (Status.PAUSED, "pod")
    response = client.post("/pods/alpha/resume", **HTMX)
    assert response.status_code == 200 and 'data-control="pause-pod"' in response.content.decode()
    assert not paused(fleet.alpha) and statuses(sessions)["running"] == (Status.RUNNING, "")


def test_a_plain_form_post_redirects_back_to_the_pod_page(client, fleet, sessions):
    response = login(client, fleet.manager).post("/pods/alpha/pause")
    assert response.status_code == 302 and response["Location"] == "/pods/alpha/"
    page = client.get(response["Location"]).content.decode()
    assert "Pod Alpha paused: 2 session(s)" in page and 'data-control="resume-pod"' in page


@pytest.mark.parametrize("headers", [{}, HTMX], ids=["form", "htmx"])
def test_a_member_is_refused_with_the_reason_and_nothing_changes(client, fleet, sessions, headers):
    response = login(client, fleet.member).post("/pods/alpha/pause", follow=not headers, **headers)
    assert response.status_code == 403
    assert "Only the pod&#x27;s lead or a manager may do this." in response.content.decode()
    assert not paused(fleet.alpha) and statuses(sessions)["running"] == (Status.RUNNING, "")


def test_a_member_of_another_pod_gets_403_and_learns_nothing(client, fleet, sessions):
    for action in ("pause", "resume"):
        response = login(client, fleet.outsider).post(f"/pods/alpha/{action}", **HTMX)
        assert response.status_code == 403 and "sam" not in response.content.decode()
    assert not paused(fleet.alpha)


def test_pausing_needs_a_post(client, fleet):
    assert login(client, fleet.lead).get("/pods/alpha/pause").status_code == 405


# --- the command line -----------------------------------------------------------------------------


def test_the_cli_pauses_and_resumes_a_pod_as_its_lead(fleet, sessions, capsys):
    call_command("pause_pod", "alpha", "--as", "lena", "--reason", "bad deploy")
    assert "pod alpha paused: 2 session(s) parked" in capsys.readouterr().out
    assert paused(fleet.alpha)
    assert AuditEvent.objects.get(kind="pod.paused").payload["reason"] == "bad deploy"
    call_command("resume_pod", "alpha", "--as", "lena")
    assert "pod alpha resumed: 2 session(s) back at work" in capsys.readouterr().out
    assert not paused(fleet.alpha) and statuses(sessions)["queued"] == (Status.RUNNING, "")


def test_the_cli_refuses_a_member_with_a_clear_message(fleet, sessions):
    with pytest.raises(CommandError, match="refused: Only the pod's lead or a manager"):
        call_command("pause_pod", "alpha", "--as", "sam")
    assert not paused(fleet.alpha)


def test_the_cli_names_an_unknown_pod(fleet):
    with pytest.raises(CommandError, match="no pod with slug 'nope'"):
        call_command("resume_pod", "nope", "--as", "lena")


# --- in a real browser ----------------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_chromium_the_lead_confirms_and_pauses_the_pod_then_resumes_it(live_server, fleet, sessions, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop here
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{live_server.url}/login/?next=/pods/alpha/")
            page.fill("input[name=username]", "lena")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{live_server.url}/pods/alpha/")
            asked: list[str] = []
            page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
            page.click("[data-control=pause-pod]")
            expect(page.locator("#pod-controls")).to_have_attribute("data-paused", "false")
            assert asked and "parked before its next tool call" in asked[0]
            assert not paused(fleet.alpha), "dismissing the confirmation changes nothing"

            page.once("dialog", lambda dialog: dialog.accept())
            page.fill("#pod-controls input[name=reason]", "bad deploy")
            page.click("[data-control=pause-pod]")
            expect(page.locator("#pod-controls")).to_have_attribute("data-paused", "true")
            expect(page.locator("#pod-controls .flash")).to_contain_text("2 session(s) parked")
            assert page.url == f"{live_server.url}/pods/alpha/", "htmx swapped the controls in place"
            assert paused(fleet.alpha) and statuses(sessions)["running"] == (Status.PAUSED, "pod")
            assert AuditEvent.objects.get(kind="pod.paused").payload["reason"] == "bad deploy"

            page.once("dialog", lambda dialog: dialog.accept())
            page.click("[data-control=resume-pod]")
            expect(page.locator("#pod-controls")).to_have_attribute("data-paused", "false")
            assert not paused(fleet.alpha) and statuses(sessions)["running"] == (Status.RUNNING, "")
        finally:
            browser.close()
