"""Sessions waiting for a human, asking the same things (what a night of the demo leaves): shared
by the grouped-decision and decision-link tests."""

from __future__ import annotations

import hashlib

from django.db import transaction

from agents import links, services
from agents.models import AgentSession, Escalation, Status
from agents.selectors import active_grant

CURL = "run_command: curl -sS https://pypi.org/simple/ -o /dev/null"
CI_EDIT = "edit_file: .github/workflows/ci.yml"


def waiting_session(fleet, *, name: str, sto=None, pod=None, on_unanswered: str = "wait") -> AgentSession:
    return services.session_launch(
        pod=pod or fleet.alpha,
        sto=sto or fleet.sto,
        goal=name,
        name=name,
        by=fleet.manager,
        repository=fleet.repo,
        grant=services.GrantSpec(mode="edits", on_unanswered=on_unanswered),
        start=False,
    )


def ask(session: AgentSession, action: str, *, rule: str = "", tool: str = "") -> Escalation:
    """What the runtime leaves when a tool call asks: an open escalation, the session needing approval."""
    with transaction.atomic():
        escalation = Escalation.objects.create(
            session=session,
            grant=active_grant(session=session),
            tool=tool or action.split(":", 1)[0],
            action=action,
            action_hash=hashlib.sha256(action.encode()).hexdigest(),
            reason="commands ask in edits mode" if rule else "protected path: CI configuration",
            rule=rule,
            link_nonce=links.new_nonce(),
        )
        services.set_status(session, Status.NEEDS_APPROVAL, reason=f"waiting for a human: {action}", agent=True)
    return escalation


def seed_waiting_night(fleet) -> dict[str, list[Escalation]]:
    """Seven sessions: four ask the same curl, two the same CI edit, one something of its own; one
    more of pod bravo (an outsider's) asks the same curl."""
    asked: dict[str, list[Escalation]] = {"curl": [], "ci": [], "own": [], "bravo": []}
    for i in range(4):
        session = waiting_session(
            fleet, name=f"Refresh the package index {i}", sto=fleet.sto if i % 2 else fleet.member
        )
        asked["curl"].append(ask(session, CURL, rule="Net(pypi.org)"))
    for i in range(2):
        session = waiting_session(fleet, name=f"Speed up CI {i}")
        asked["ci"].append(ask(session, CI_EDIT))
    session = waiting_session(fleet, name="Clean the build directory")
    asked["own"].append(ask(session, "run_command: rm -rf build/", rule="Bash(rm -rf build/)"))
    session = waiting_session(fleet, name="Bravo refreshes the index", sto=fleet.outsider, pod=fleet.bravo)
    asked["bravo"].append(ask(session, CURL, rule="Net(pypi.org)"))
    return asked
