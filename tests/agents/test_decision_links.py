"""Signed decision links (the "needs you" webhook and the queue): one escalation, one person, good
once, for a while; still behind that person's login and authority."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import signing

from agents import links, services
from agents.models import Escalation, Status, ToolCall
from agents.tasks import send_webhook
from audit.models import AuditEvent
from tests.decision_seed import CURL, ask, waiting_session
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def escalation(fleet, worktrees_dir):
    return ask(waiting_session(fleet, name="Refresh the index"), CURL, rule="Net(pypi.org)")


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def link_for(escalation, user) -> str:
    return services.escalation_link(escalation=escalation, user=user)


def test_the_sto_opens_the_link_sees_the_ask_and_decides_once(client, fleet, escalation):
    url = link_for(escalation, fleet.sto)
    page = login(client, fleet.sto).get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert CURL.split(": ", 1)[1] in text and 'value="allow-once"' in text and 'value="allow-always"' in text
    response = client.post(url, {"decision": "allow-once"})
    assert response.status_code == 200 and "allowed once" in response.content.decode()
    escalation.refresh_from_db()
    assert escalation.state == Escalation.State.ALLOWED_ONCE and escalation.decided_by == fleet.sto
    assert escalation.link_used_at is not None
    event = AuditEvent.objects.get(kind="escalation.decided", session_id=escalation.session_id)
    assert event.payload["via"] == "link" and event.actor_label == "sam"
    assert escalation.session.__class__.objects.get(pk=escalation.session_id).status == Status.RUNNING


def test_a_reused_link_is_refused_with_a_clear_page(client, fleet, escalation):
    url = link_for(escalation, fleet.sto)
    login(client, fleet.sto).post(url, {"decision": "deny"})
    for response in (client.get(url), client.post(url, {"decision": "allow-once"})):
        assert response.status_code == 410
        assert "This link was already used" in response.content.decode()
    escalation.refresh_from_db()
    assert escalation.state == Escalation.State.DENIED


def test_an_expired_link_is_refused(client, fleet, escalation, settings):
    url = link_for(escalation, fleet.sto)
    settings.CONTROLROOM = {**settings.CONTROLROOM, "DECISION_LINK_MAX_AGE_S": -1}
    response = login(client, fleet.sto).get(url)
    assert response.status_code == 410 and "This link has expired" in response.content.decode()
    assert client.post(url, {"decision": "allow-once"}).status_code == 410
    escalation.refresh_from_db()
    assert escalation.state == Escalation.State.OPEN


def test_another_users_link_is_refused_even_for_someone_who_may_decide(client, fleet, escalation):
    url = link_for(escalation, fleet.sto)
    for user in (fleet.lead, fleet.manager, fleet.member):
        client.logout()
        response = login(client, user).post(url, {"decision": "allow-once"})
        assert response.status_code == 403 and "This link is not yours" in response.content.decode()
    escalation.refresh_from_db()
    assert escalation.state == Escalation.State.OPEN and escalation.link_used_at is None
    assert AuditEvent.objects.filter(kind="session.action_refused", payload__action="decision link").count() == 3


def test_the_link_still_needs_the_login_and_the_authority(client, fleet, escalation):
    url = link_for(escalation, fleet.sto)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    # the link of someone who has no authority over the session (a member who is not its STO)
    member_url = link_for(escalation, fleet.member)
    response = login(client, fleet.member).post(member_url, {"decision": "allow-once"})
    assert response.status_code == 403 and "You may not decide this" in response.content.decode()
    escalation.refresh_from_db()
    assert escalation.state == Escalation.State.OPEN


def test_a_tampered_link_and_a_link_of_another_kind_are_refused(client, fleet, escalation):
    url = link_for(escalation, fleet.sto)
    login(client, fleet.sto)
    assert client.get(url[:-3] + "abc").status_code == 400
    other = signing.dumps({"e": escalation.pk, "u": fleet.sto.pk, "n": escalation.link_nonce}, salt="something-else")
    response = client.get(f"/d/{other}")
    assert response.status_code == 400 and "This link is not valid" in response.content.decode()


def test_a_link_of_an_escalation_decided_from_the_queue_says_so(client, fleet, escalation):
    url = link_for(escalation, fleet.sto)
    services.escalation_decide(escalation=escalation, by=fleet.lead, decision="deny")
    response = login(client, fleet.sto).get(url)
    assert response.status_code == 409 and "was denied by lena" in response.content.decode()


def test_a_failed_decision_leaves_the_link_usable(client, fleet, worktrees_dir):
    guard = ask(waiting_session(fleet, name="Edit CI"), "edit_file: .github/workflows/ci.yml")
    url = link_for(guard, fleet.sto)
    response = login(client, fleet.sto).post(url, {"decision": "allow-always"})
    assert response.status_code == 409 and "allowed once, not always" in response.content.decode()
    guard.refresh_from_db()
    assert guard.link_used_at is None and guard.state == Escalation.State.OPEN
    assert client.post(url, {"decision": "allow-once"}).status_code == 200


def test_bad_decisions_are_a_clear_error(client, fleet, escalation):
    url = link_for(escalation, fleet.sto)
    response = login(client, fleet.sto).post(url, {"decision": "perhaps"})
    assert response.status_code == 400 and "Choose allow once" in response.content.decode()


def test_the_canvas_queue_carries_the_viewers_own_link(client, fleet, escalation):
    page = login(client, fleet.sto).get("/").content.decode()
    marker = 'class="phone-link" href="'
    assert marker in page
    url = page.split(marker, 1)[1].split('"', 1)[0]
    claim = links.read_token(url.removeprefix("/d/"))
    assert (claim.escalation_id, claim.user_id) == (escalation.pk, fleet.sto.pk)


class _Hook:
    def __init__(self):
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_webhook_payload_carries_the_stos_decision_link(client, fleet, escalation, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "PUBLIC_URL": "https://cr.example"}
    hook = _Hook()
    try:
        fleet.alpha.webhook_url = hook.url
        fleet.alpha.save()
        send_webhook.apply(args=[escalation.session_id], kwargs={"escalation_id": escalation.pk}).get()
    finally:
        hook.server.shutdown()
    (body,) = hook.bodies
    assert body["decide_url"].startswith("https://cr.example/d/") and body["decide_url"] in body["text"]
    claim = links.read_token(body["decide_url"].removeprefix("https://cr.example/d/"))
    assert (claim.escalation_id, claim.user_id) == (escalation.pk, fleet.sto.pk)
    response = login(client, fleet.sto).get(body["decide_url"].removeprefix("https://cr.example"))
    assert response.status_code == 200


# -- when nobody answers: the grant's rule -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_grant_that_denies_unanswered_questions_denies_the_ask_at_once(fleet, worktrees_dir):
    from tests.agents.test_runtime import drive, scripted
    from tests.scripted_model import ScriptedModel, calls, finish

    spec = services.GrantSpec(mode="edits", on_unanswered="deny")
    with ScriptedModel([calls([("run_command", {"command": "git status --short"})]), finish("went on")]) as model:
        session = drive(scripted(fleet, model, spec=spec))
    assert session.status == Status.SUCCEEDED, session.status_reason
    escalation = Escalation.objects.get(session=session)
    assert escalation.state == Escalation.State.DENIED and escalation.decided_by is None
    assert "denies unanswered questions" in escalation.decision_reason
    assert ToolCall.objects.get(session=session, name="run_command").state == ToolCall.State.DENIED


@pytest.mark.django_db(transaction=True)
def test_a_grant_that_waits_keeps_the_question_open_until_the_tick_after_it_expires(fleet, worktrees_dir):
    from datetime import timedelta

    from django.utils import timezone

    from agents.models import Grant
    from agents.tasks import tick
    from tests.agents.test_runtime import drive, scripted
    from tests.scripted_model import ScriptedModel, calls

    spec = services.GrantSpec(mode="edits", on_unanswered="wait")
    with ScriptedModel([calls([("run_command", {"command": "git status --short"})])]) as model:
        session = drive(scripted(fleet, model, spec=spec))
    assert session.status == Status.NEEDS_APPROVAL
    tick.apply().get()
    assert Escalation.objects.get(session=session).state == Escalation.State.OPEN
    now = timezone.now()
    Grant.objects.filter(session=session).update(
        not_before=now - timedelta(hours=2), expires_at=now - timedelta(seconds=1)
    )
    tick.apply().get()
    escalation = Escalation.objects.get(session=session)
    assert escalation.state == Escalation.State.EXPIRED
    session.refresh_from_db()
    assert session.status == Status.BLOCKED
    assert AuditEvent.objects.filter(session_id=session.pk, kind="escalation.expired").exists()
