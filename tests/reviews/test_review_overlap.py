"""The review page warns, before merge, when another unmerged session of the repository edited a
file of this branch's diff (its recorded edits), naming the other session and the files."""

from __future__ import annotations

import pytest

from agents.models import AgentSession, AgentStep, Status, ToolCall
from tests.reviews.test_review_decisions import login, make_session

pytestmark = pytest.mark.django_db


def _edit(session: AgentSession, path: str) -> None:
    step, _ = AgentStep.objects.get_or_create(session=session, number=1)
    ToolCall.objects.create(
        session=session,
        step=step,
        index=step.tool_calls.count(),
        call_id=f"e{step.tool_calls.count()}",
        name="write_file",
        arguments={"path": path, "content": "x"},
        state=ToolCall.State.DONE,
    )


def test_the_review_page_names_the_other_session_and_the_files_both_edited(client, fleet, worktrees_dir):
    # the reviewed session changed the file by a shell command: only its branch diff shows it
    reviewed = make_session(fleet, files={"shopcart/helper.py": "def helper():\n    return 1\n"}, name="helper")
    other = make_session(fleet, status=Status.RUNNING, name="other helper")
    _edit(other, "shopcart/helper.py")
    page = login(client, fleet.sto).get(f"/reviews/{reviewed.pk}/").content.decode()
    warning = page.split('class="alert warn overlap-warning"', 1)[1].split("</div>", 1)[0]
    assert f"#{other.pk} other helper" in warning and "<code>shopcart/helper.py</code>" in warning
    # the other session's review page says so too (its tool call against this one's diff + edits)
    _edit(reviewed, "shopcart/helper.py")
    AgentSession.objects.filter(pk=other.pk).update(status=Status.SUCCEEDED)
    page = client.get(f"/reviews/{other.pk}/").content.decode()
    assert "overlap-warning" in page and f"#{reviewed.pk} helper" in page


def test_no_warning_once_the_other_session_is_merged_or_when_it_edited_other_files(client, fleet, worktrees_dir):
    reviewed = make_session(fleet, files={"shopcart/helper.py": "def helper():\n    return 1\n"}, name="helper")
    other = make_session(fleet, status=Status.RUNNING, name="elsewhere")
    _edit(other, "docs/other.md")
    assert "overlap-warning" not in login(client, fleet.sto).get(f"/reviews/{reviewed.pk}/").content.decode()
    _edit(other, "shopcart/helper.py")
    assert "overlap-warning" in client.get(f"/reviews/{reviewed.pk}/").content.decode()
    AgentSession.objects.filter(pk=other.pk).update(status=Status.SUCCEEDED, review_state="approved")
    assert "overlap-warning" not in client.get(f"/reviews/{reviewed.pk}/").content.decode()
