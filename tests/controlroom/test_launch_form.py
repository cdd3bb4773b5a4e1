"""Launching from the browser: one session, or a night's batch in one transaction."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents import dispatch
from agents.models import AgentSession, Grant, Status
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def enqueued(monkeypatch):
    """Record every step enqueued (after commit), and still send it to the real broker."""
    calls: list[dict] = []
    original = dispatch.enqueue_step_now

    def record(**kwargs):
        calls.append(kwargs)
        original(**kwargs)

    monkeypatch.setattr(dispatch, "enqueue_step_now", record)
    return calls


def _form(fleet, **overrides) -> dict:
    data = {
        "pod": fleet.alpha.pk,
        "sto": "sam",
        "name": "",
        "goal": "Fix the rounding bug in cart totals",
        "success_criteria": "the tests pass",
        "repository": fleet.repo.pk,
        "base_branch": "",
        "model": "sim/engineer",
        "api_base": "",
        "task_type": "fix",
        "priority": "1",
        "preset": "edits",
        "not_before": "",
        "expires_at": "",
        "max_steps": "40",
        "max_cost_usd": "2.50",
    }
    data.update(overrides)
    return data


def _batch(fleet, tasks: str, **overrides) -> dict:
    data = {f"batch-{k}": v for k, v in _form(fleet).items() if k not in ("name", "goal", "success_criteria")}
    data["batch-tasks"] = tasks
    data.update({f"batch-{k}": v for k, v in overrides.items()})
    return data


def _nothing_created():
    assert not AgentSession.objects.exists()
    assert not Grant.objects.exists()
    assert not AuditEvent.objects.filter(kind__in=["session.launched", "grant.issued"]).exists()


def test_the_launch_page_offers_the_default_model_and_the_presets(client, fleet, settings):
    client.force_login(fleet.lead)
    html = client.get("/launch").content.decode()
    assert f'value="{settings.CONTROLROOM["DEFAULT_MODEL"]}"' in html
    for preset in ("plan", "ask", "edits", "autonomous"):
        assert f'<option value="{preset}"' in html
    assert 'id="batch-form"' in html and 'action="/launch/batch"' in html


def test_a_valid_launch_creates_the_session_and_its_grant_and_enqueues_the_first_step(
    client, fleet, enqueued, django_capture_on_commit_callbacks
):
    client.force_login(fleet.lead)
    start = timezone.localtime() + timedelta(hours=1)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/launch",
            _form(
                fleet,
                not_before=start.strftime("%Y-%m-%dT%H:%M"),
                expires_at=(start + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M"),
            ),
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    session = AgentSession.objects.get()
    assert response["Location"] == f"/#tile-{session.pk}"
    assert (session.pod, session.sto, session.created_by) == (fleet.alpha, fleet.sto, fleet.lead)
    assert session.goal == "Fix the rounding bug in cart totals" and session.success_criteria == "the tests pass"
    assert (session.model, session.task_type, session.priority, session.status) == (
        "sim/engineer",
        "fix",
        1,
        Status.QUEUED,
    )
    assert session.base_branch == "main"
    grant = session.grants.get()
    assert grant.mode == "edits" and "Git(commit)" in grant.allow and "Bash(pytest *)" in grant.allow
    assert (grant.max_steps, grant.max_cost_usd) == (40, Decimal("2.5000"))
    assert grant.delegator == fleet.sto and grant.issued_by == fleet.lead
    assert abs(grant.not_before - start.replace(second=0, microsecond=0)) < timedelta(seconds=1)
    assert grant.expires_at - grant.not_before == timedelta(hours=8)
    assert enqueued == [{"session_id": session.pk, "step": 1, "priority": 1}]


def test_an_autonomous_launch_is_delegated_by_the_pod_lead_with_push_and_network_denied(client, fleet):
    client.force_login(fleet.lead)
    assert client.post("/launch", _form(fleet, preset="autonomous")).status_code == 302
    grant = Grant.objects.get()
    assert grant.mode == "autonomous" and grant.delegator == fleet.lead
    assert "Bash(git push *)" in grant.deny and "Net(*)" in grant.deny


def test_a_member_may_not_delegate_autonomous_mode(client, fleet):
    client.force_login(fleet.sto)
    response = client.post("/launch", _form(fleet, preset="autonomous"))
    assert response.status_code == 403  # refused by authority, shown in the form
    assert "Only the pod lead or a manager may delegate autonomous mode." in response.content.decode()
    _nothing_created()


def test_an_sto_from_another_pod_is_refused_beside_the_field_and_nothing_is_created(client, fleet):
    client.force_login(fleet.manager)
    response = client.post("/launch", _form(fleet, sto="otto"))
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_sto_errors"' in html
    assert "otto is not a member of pod Alpha" in html
    _nothing_created()


def test_an_empty_goal_is_refused_and_nothing_is_created(client, fleet):
    client.force_login(fleet.lead)
    response = client.post("/launch", _form(fleet, goal="   "))
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_goal_errors"' in html and "Give the agent a goal." in html
    assert "the tests pass</textarea>" in html and '<option value="sam" selected>' in html  # the rest is kept
    _nothing_created()


def test_a_window_that_ends_before_it_starts_is_refused(client, fleet):
    client.force_login(fleet.lead)
    response = client.post("/launch", _form(fleet, not_before="2031-01-02T22:00", expires_at="2031-01-02T21:00"))
    assert response.status_code == 400
    assert "The window must end after it starts." in response.content.decode()
    _nothing_created()


def test_a_leader_cannot_launch(client, fleet):
    client.force_login(fleet.leader)
    html = client.get("/launch").content.decode()
    assert "Leaders read the fleet; they cannot launch agents." in html
    response = client.post("/launch", _form(fleet))
    assert response.status_code == 403
    assert client.post("/launch/batch", _batch(fleet, "Task one", sto="sam")).status_code == 403
    _nothing_created()


def test_a_member_cannot_launch_into_another_pod(client, fleet):
    client.force_login(fleet.member)
    response = client.post("/launch", _form(fleet, pod=fleet.bravo.pk, sto="otto"))
    assert response.status_code == 400
    _nothing_created()


# --- the night's batch ----------------------------------------------------------------------------


def test_a_batch_launches_every_line_with_its_owner_priority_and_criteria(
    client, fleet, enqueued, django_capture_on_commit_callbacks
):
    client.force_login(fleet.lead)
    tasks = "# tonight\n@mia P0 Fix the flaky checkout test | it passes ten times in a row\n\nAdd docstrings to cart.py\n@lena Update the README"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/launch/batch", _batch(fleet, tasks))
    assert response.status_code == 302, response.content.decode()[:3000]
    sessions = list(AgentSession.objects.order_by("pk"))
    assert [(s.sto.username, s.priority, s.goal, s.success_criteria) for s in sessions] == [
        ("mia", 0, "Fix the flaky checkout test", "it passes ten times in a row"),
        ("sam", 1, "Add docstrings to cart.py", ""),
        ("lena", 1, "Update the README", ""),
    ]
    assert Grant.objects.count() == 3
    assert sorted(call["session_id"] for call in enqueued) == [s.pk for s in sessions]


def test_a_batch_with_a_bad_line_creates_nothing_and_names_the_line(client, fleet, enqueued):
    client.force_login(fleet.lead)
    response = client.post("/launch/batch", _batch(fleet, "Task one\nTask two\n@otto Task three\nTask four"))
    assert response.status_code == 400
    assert "Line 3: @otto is not a member of pod Alpha." in response.content.decode()
    _nothing_created()
    assert enqueued == []


def test_a_batch_refused_by_the_service_halfway_rolls_back_the_lines_before(
    client, fleet, enqueued, django_capture_on_commit_callbacks
):
    # sam (a member) may launch sessions he owns; line 3 makes mia the owner, which only a lead may do
    client.force_login(fleet.sto)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/launch/batch", _batch(fleet, "@sam Task one\nTask two\n@mia Task three", sto="sam"))
    assert response.status_code == 403
    html = response.content.decode()
    assert "Line 3: Members launch sessions they own themselves" in html and "Nothing was launched." in html
    _nothing_created()
    assert enqueued == []


def test_a_batch_line_without_an_owner_is_refused(client, fleet):
    client.force_login(fleet.lead)
    response = client.post("/launch/batch", _batch(fleet, "Task one\nTask two", sto=""))
    assert response.status_code == 400
    html = response.content.decode()
    assert "Line 1: no Single Task Owner" in html and "Line 2: no Single Task Owner" in html
    _nothing_created()


def test_an_empty_batch_is_refused(client, fleet):
    client.force_login(fleet.lead)
    response = client.post("/launch/batch", _batch(fleet, "\n# only a comment\n"))
    assert response.status_code == 400
    assert "Write at least one task." in response.content.decode()


def test_the_agent_is_chosen_at_launch_and_shown_on_the_tile_and_the_drawer(client, fleet):
    client.force_login(fleet.lead)
    page = client.get("/launch").content.decode()
    assert '<option value="claude-code"' in page and '<option value="codex"' in page
    response = client.post("/launch", _form(fleet, agent_kind="claude-code", model="claude-sonnet-4-5"))
    assert response.status_code == 302, response.content.decode()[:2000]
    session = AgentSession.objects.get()
    assert session.agent_kind == "claude-code"
    assert AuditEvent.objects.get(kind="session.launched").payload["agent_kind"] == "claude-code"
    assert 'class="agent-kind"' in client.get("/").content.decode()
    assert "Claude Code" in client.get(f"/sessions/{session.pk}/").content.decode()
    response = client.post("/launch", _form(fleet, agent_kind="nonsense"))
    assert response.status_code == 400 and AgentSession.objects.count() == 1  # a form error, nothing lost
    assert "nonsense" in response.content.decode()


def test_a_batch_plan_launches_claude_code_sessions_and_refuses_an_unknown_agent(
    client, fleet, enqueued, django_capture_on_commit_callbacks
):
    from agents.runtime.claude_code import ClaudeCodeStep
    from agents.runtime.runners import runner_class

    client.force_login(fleet.lead)
    assert 'name="batch-agent_kind"' in client.get("/launch").content.decode()
    for agent in ("nonsense", "claude"):  # not an agent kind: a form error beside the field
        response = client.post("/launch/batch", _batch(fleet, "Task one\nTask two", agent_kind=agent))
        assert response.status_code == 400 and agent in response.content.decode()
        _nothing_created()
    tasks = "@mia Fix the flaky checkout test\nAdd docstrings to cart.py"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/launch/batch", _batch(fleet, tasks, agent_kind="claude-code", model="claude-sonnet-4-5")
        )
    assert response.status_code == 302, response.content.decode()[:3000]
    sessions = list(AgentSession.objects.order_by("pk"))
    assert [s.agent_kind for s in sessions] == ["claude-code", "claude-code"]
    assert all(runner_class(s.agent_kind) is ClaudeCodeStep for s in sessions)  # the Claude Code runner works them
    launched = AuditEvent.objects.filter(kind="session.launched")
    assert [e.payload["agent_kind"] for e in launched] == ["claude-code", "claude-code"]
    assert sorted(call["session_id"] for call in enqueued) == [s.pk for s in sessions]


def test_launch_agent_takes_the_agent_and_refuses_an_unknown_one(fleet):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command(
        "launch_agent",
        "--pod",
        "alpha",
        "--sto",
        "sam",
        "--goal",
        "Add notes",
        "--agent",
        "claude-code",
        "--no-start",
        stdout=out,
    )
    assert AgentSession.objects.get(pk=int(out.getvalue().split()[-1])).agent_kind == "claude-code"
    out = StringIO()
    call_command(
        "launch_agent", "--pod", "alpha", "--sto", "sam", "--goal", "x", "--agent", "codex", "--no-start", stdout=out
    )
    assert AgentSession.objects.get(pk=int(out.getvalue().split()[-1])).agent_kind == "codex"
    with pytest.raises(CommandError):
        call_command("launch_agent", "--pod", "alpha", "--sto", "sam", "--goal", "x", "--agent", "nope", "--no-start")
    assert AgentSession.objects.count() == 2


# --- the model endpoint (api_base) ------------------------------------------------------------------

REFUSED_API_BASES = {
    "ftp": ("ftp://files.example.com/v1", "is not an http:// or https:// URL"),
    "file": ("file:///etc/passwd", "is not an http:// or https:// URL"),
    "javascript": ("javascript:alert(1)", "is not an http:// or https:// URL"),
    "no-host": ("http://:8080/v1", "names no host"),
    "credentials": ("http://user:secret@127.0.0.1:11434/v1", "may not carry a user name or password"),
}


def _allow_only(settings, *bases: str) -> None:
    from agents.endpoints import parse_allow_list

    settings.CONTROLROOM = {**settings.CONTROLROOM, "MODEL_API_BASES": parse_allow_list(list(bases))}


@pytest.mark.parametrize("case", sorted(REFUSED_API_BASES))
def test_the_launch_form_refuses_an_api_base_that_is_not_an_http_url_with_a_host(client, fleet, case):
    value, message = REFUSED_API_BASES[case]
    client.force_login(fleet.lead)
    response = client.post("/launch", _form(fleet, api_base=value))
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_api_base_errors"' in html and message in html
    _nothing_created()


def test_the_launch_form_refuses_an_api_base_outside_model_api_bases(client, fleet, settings):
    _allow_only(settings, "http://127.0.0.1:11434", "https://llm.example.com/v1")
    client.force_login(fleet.lead)
    for outside in ("http://10.0.0.5/v1", "http://127.0.0.1:11435/v1", "https://llm.example.com/v12"):
        response = client.post("/launch", _form(fleet, api_base=outside))
        assert response.status_code == 400, outside
        html = response.content.decode()
        assert 'id="id_api_base_errors"' in html
        assert "is not one of the model endpoints this control room allows (MODEL_API_BASES)" in html
    _nothing_created()
    response = client.post("/launch", _form(fleet, api_base="http://127.0.0.1:11434/v1"))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert AgentSession.objects.get().api_base == "http://127.0.0.1:11434/v1"


@pytest.mark.parametrize("case", ["ftp", "javascript", "no-host"])
def test_a_batch_with_a_refused_api_base_creates_nothing(client, fleet, enqueued, case):
    value, message = REFUSED_API_BASES[case]
    client.force_login(fleet.lead)
    response = client.post("/launch/batch", _batch(fleet, "@sam Task one\n@mia Task two", api_base=value))
    assert response.status_code == 400
    assert message in response.content.decode()
    _nothing_created()
    assert enqueued == []


def test_a_batch_outside_model_api_bases_creates_nothing(client, fleet, settings, enqueued):
    _allow_only(settings, "http://127.0.0.1:11434/v1")
    client.force_login(fleet.lead)
    response = client.post("/launch/batch", _batch(fleet, "@sam Task one", api_base="http://169.254.169.254/v1"))
    assert response.status_code == 400
    assert "MODEL_API_BASES" in response.content.decode()
    _nothing_created()
    assert enqueued == []


@pytest.mark.parametrize("case", sorted(REFUSED_API_BASES))
def test_launch_agent_refuses_a_bad_api_base_and_registers_nothing(fleet, tmp_path, case):
    import git
    from django.core.management import CommandError, call_command

    from agents.models import Repository

    value, message = REFUSED_API_BASES[case]
    other = git.Repo.init(tmp_path / "other")  # a new --repo would be registered by a launch that goes ahead
    repositories = Repository.objects.count()
    with pytest.raises(CommandError, match=f"--api-base: .*{message}"):
        call_command(
            "launch_agent",
            "--pod",
            "alpha",
            "--sto",
            "sam",
            "--goal",
            "x",
            "--api-base",
            value,
            "--repo",
            other.working_tree_dir,
            "--no-start",
        )
    _nothing_created()
    assert Repository.objects.count() == repositories


def test_launch_agent_refuses_an_api_base_outside_model_api_bases(fleet, settings):
    from django.core.management import CommandError, call_command

    _allow_only(settings, "http://127.0.0.1:11434")
    args = ["launch_agent", "--pod", "alpha", "--sto", "sam", "--goal", "x", "--no-start", "--api-base"]
    with pytest.raises(CommandError, match="MODEL_API_BASES"):
        call_command(*args, "http://127.0.0.1.evil.example:11434/v1")
    _nothing_created()
    call_command(*args, "http://127.0.0.1:11434/v1", stdout=__import__("io").StringIO())
    assert AgentSession.objects.get().api_base == "http://127.0.0.1:11434/v1"
