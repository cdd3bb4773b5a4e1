"""Review decisions on agent output: approve and merge, request changes, reject, revert; and the
disk hygiene of worktrees. This layer sits above ``agents``: it calls agents' services (close a
session, send it back to work, re-create or remove its worktree), never agents' runtime, and
writes through ``audit.log``.

Who decides: the session's STO, the lead of its pod or a manager
(``agents.authority.refuse_session_control``), never an agent. A refused attempt is recorded
(``review.refused``) and raises ``agents.authority.NotAllowed``.

Order of work: git first (outside any database transaction: a merge can take seconds and must
not hold the database's write lock), then the decision in one transaction with its audit event,
then the disk hygiene (removing the worktree) once committed. A merge or revert conflict changes
nothing in git, is recorded (``review.merge_conflict`` / ``review.revert_conflict``) and raises
``ReviewConflict`` with the files. Audit kinds: review.approved, review.changes_requested,
review.rejected, review.reverted, review.refused, review.merge_conflict, review.revert_conflict,
review.git_failed, session.worktree_removed, session.branch_archived.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents import authority
from agents import selectors as agent_selectors
from agents import services as agent_services
from agents.models import AgentSession, ReviewState, Status, User
from agents.services import WorktreeError
from audit.log import record
from reviews import git_ops
from reviews.models import Review
from reviews.selectors import STOPPED_STATUSES, WITHOUT_GIT_NOTE, approval_of

logger = logging.getLogger(__name__)

AGENT_REFUSAL = "Agents cannot make review decisions: a person reviews an agent's work."
CLOSED_REVIEW_STATES = (ReviewState.APPROVED, ReviewState.REJECTED, ReviewState.REVERTED)
SCRATCH_DIRNAME = ".review-tmp"
SCRATCH_MAX_AGE_S = 3600


class ReviewError(Exception):
    """Git could not carry out a decision; the message says why and what to do. Nothing changed."""


class ReviewConflict(ReviewError):
    def __init__(self, message: str, *, files: list[str]) -> None:
        super().__init__(message)
        self.files = list(files)


# -- shared checks -------------------------------------------------------------------------------


def _scratch_dir() -> Path:
    return Path(settings.CONTROLROOM["WORKTREES_DIR"]) / SCRATCH_DIRNAME


def _commit_message(subject: str, body: str, comment: str, trailers: str) -> str:
    """A review's commit message: its paragraphs, the reviewer's comment only when there is one."""
    return "\n\n".join(filter(None, [subject, body, comment, trailers]))


def _author(user: User) -> tuple[str, str]:
    return (user.get_full_name() or user.username, user.email or f"{user.username}@controlroom.invalid")


_AGENT_EMAIL = re.compile(r"agent-(\d+)@controlroom\.invalid")


def acting_agent_session(*, environ: Mapping[str, str], cwd: Path) -> int | None:
    """The agent session a command-line process runs for, if any: agents' commands carry their
    agent identity (``GIT_AUTHOR_EMAIL=agent-<id>@controlroom.invalid``) and run inside a worktree
    under ``WORKTREES_DIR`` (``s<id>``). 0 when inside the worktrees but the session is unknown."""
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        match = _AGENT_EMAIL.fullmatch(environ.get(key, "").strip())
        if match:
            return int(match.group(1))
    root = Path(settings.CONTROLROOM["WORKTREES_DIR"]).resolve()
    here = Path(cwd).resolve()
    if here != root and root not in here.parents:
        return None
    parts = here.relative_to(root).parts
    match = re.fullmatch(r"s(\d+)", parts[0]) if parts else None
    return int(match.group(1)) if match else 0


def refuse_review(*, session: AgentSession, reviewer: User, acting_session_id: int | None = None) -> str | None:
    """Why ``reviewer`` may not decide on ``session`` (None when allowed)."""
    if acting_session_id is not None:
        return f"{AGENT_REFUSAL} (the request came from inside agent session #{acting_session_id})"
    return authority.refuse_session_control(user=reviewer, session=session)


def record_refusal(
    *, session: AgentSession, reviewer: User, decision: str, refusal: str, acting_session_id: int | None = None
) -> None:
    """Record a refused review decision (its own transaction: the refusal outlives the request)."""
    with transaction.atomic():
        record(
            "review.refused",
            session=session,
            user=reviewer if reviewer.is_authenticated else None,
            provenance="human",
            payload={
                "decision": decision,
                "refusal": refusal,
                "acting_session": acting_session_id,
                "who": getattr(reviewer, "username", ""),
            },
        )


def _require_authority(*, session: AgentSession, reviewer: User, decision: str, acting_session_id: int | None) -> None:
    refusal = refuse_review(session=session, reviewer=reviewer, acting_session_id=acting_session_id)
    if refusal:
        record_refusal(
            session=session, reviewer=reviewer, decision=decision, refusal=refusal, acting_session_id=acting_session_id
        )
        raise authority.NotAllowed(refusal)


def _fresh(session: AgentSession) -> AgentSession:
    return AgentSession.objects.select_related("pod", "sto", "repository").get(pk=session.pk)


def _locked(session: AgentSession) -> AgentSession:
    return AgentSession.objects.select_for_update().select_related("pod", "sto", "repository").get(pk=session.pk)


def _require_awaiting(session: AgentSession) -> None:
    if session.review_state in CLOSED_REVIEW_STATES:
        raise ValidationError(f"Session #{session.pk} was already {session.get_review_state_display().lower()}.")
    if session.status not in (Status.SUCCEEDED, *STOPPED_STATUSES):
        if session.review_state == ReviewState.CHANGES_REQUESTED:
            raise ValidationError(
                f"Session #{session.pk} is working on the requested changes "
                f"({session.get_status_display().lower()}): review it when it has finished."
            )
        raise ValidationError(
            f"Session #{session.pk} is {session.get_status_display().lower()}: "
            "its work can be reviewed once it has finished or stopped."
        )


def _record_git_failure(
    *, session: AgentSession, reviewer: User, decision: str, error: str, files: list[str] | None = None
) -> None:
    kind = (
        {"approve": "review.merge_conflict", "revert": "review.revert_conflict"}.get(decision)
        if files
        else "review.git_failed"
    )
    with transaction.atomic():
        record(
            cast(str, kind),  # files come with approve and revert only
            session=session,
            user=reviewer,
            provenance="human",
            payload={
                "decision": decision,
                "error": error,
                "files": files or [],
                "branch": session.branch,
                "base_branch": session.base_branch,
            },
        )


# -- worktree hygiene ----------------------------------------------------------------------------


def _archive_and_drop_branch(*, session: AgentSession, by: User | None) -> str | None:
    """Keep the branch's commits under ``refs/archive/<branch>`` and delete the branch, once no
    worktree has it checked out. The archive sha, or None when there was no branch."""
    repo = Path(session.repository.path)
    if git_ops.resolve(repo, f"refs/heads/{session.branch}") is None:
        return None
    if session.worktree_path and Path(session.worktree_path).exists():
        sha = git_ops.archive_branch(repo_path=repo, branch=session.branch, delete_branch=False)
        deleted = False
    else:
        sha = git_ops.archive_branch(repo_path=repo, branch=session.branch, delete_branch=True)
        deleted = True
    with transaction.atomic():
        record(
            "session.branch_archived",
            session=session,
            user=by,
            payload={
                "branch": session.branch,
                "archive_ref": git_ops.archive_ref_for(session.branch),
                "sha": sha,
                "branch_deleted": deleted,
            },
        )
    return sha


# -- decisions -----------------------------------------------------------------------------------


def review_approve(
    *, session: AgentSession, reviewer: User, comment: str = "", acting_session_id: int | None = None
) -> Review:
    """Merge the session's branch into its base branch (fast-forward when possible, a merge
    commit otherwise), record the approval, remove the worktree (the branch stays)."""
    _require_authority(session=session, reviewer=reviewer, decision="approve", acting_session_id=acting_session_id)
    session = _fresh(session)
    _require_awaiting(session)
    comment = (comment or "").strip()
    message = _commit_message(
        f"Merge session #{session.pk}: {session.name}",
        f"Work of agent session #{session.pk} on {session.branch}, approved by {reviewer.username}.",
        comment,
        f"Agent-Session: {session.pk}\nReviewed-By: {reviewer.username}",
    )
    try:
        merged = git_ops.merge_branch(
            repo_path=Path(session.repository.path),
            base_branch=session.base_branch,
            branch=session.branch,
            message=message,
            author=_author(reviewer),
            scratch_dir=_scratch_dir(),
        )
    except git_ops.Conflict as exc:
        _record_git_failure(session=session, reviewer=reviewer, decision="approve", error=str(exc), files=exc.files)
        raise ReviewConflict(
            f"Not merged: {exc}. Nothing was changed; ask the agent to rebase (request changes) or resolve it by hand.",
            files=exc.files,
        ) from None
    except git_ops.GitOpsError as exc:
        _record_git_failure(session=session, reviewer=reviewer, decision="approve", error=str(exc))
        raise ReviewError(f"Not merged: {exc}") from None
    review = _approval_recorded(
        session=session,
        reviewer=reviewer,
        comment=comment,
        details=merged.__dict__,
        reason=f"approved and merged by {reviewer.username}",
    )
    agent_services.session_worktree_remove(session=_fresh(session), reason="approved and merged", by=reviewer)
    return review


def _approval_recorded(*, session: AgentSession, reviewer: User, comment: str, details: dict, reason: str) -> Review:
    """The approval's rows and audit event, in one transaction (its git work, if any, is done)."""
    with transaction.atomic():
        session = _locked(session)
        if session.review_state in CLOSED_REVIEW_STATES:
            raise ValidationError(f"Session #{session.pk} was already {session.get_review_state_display().lower()}.")
        details = {**details, "branch": session.branch}
        review = Review.objects.create(
            session=session, reviewer=reviewer, decision=Review.Decision.APPROVE, comment=comment, details=details
        )
        previous = agent_services.session_close(session=session, by=reviewer, reason=reason)
        record(
            "review.approved",
            session=session,
            user=reviewer,
            provenance="human",
            payload={"review": review.pk, "comment": comment, "previous_status": previous, **details},
        )
        agent_services.session_update(session, review_state=ReviewState.APPROVED)
    return review


def review_request_changes(
    *, session: AgentSession, reviewer: User, comment: str, acting_session_id: int | None = None
) -> Review:
    """Send the work back: a fresh iteration whose context says ``Changes requested: <comment>``,
    the session running again (its worktree re-created if it was removed), its next step enqueued."""
    _require_authority(
        session=session, reviewer=reviewer, decision="request_changes", acting_session_id=acting_session_id
    )
    comment = (comment or "").strip()
    if not comment:
        raise ValidationError({"comment": "Say what should change: the comment is what the agent receives."})
    session = _fresh(session)
    _require_awaiting(session)
    try:
        agent_services.session_worktree_ensure(session=session)
    except WorktreeError as exc:
        _record_git_failure(session=session, reviewer=reviewer, decision="request_changes", error=str(exc))
        raise ReviewError(f"The agent cannot get back to work: its worktree cannot be re-created ({exc}).") from None
    with transaction.atomic():
        session = _locked(session)
        _require_awaiting(session)
        grant = agent_selectors.active_grant(session=session)
        now = timezone.now()
        if grant is None:
            warning = "The session has no active grant: issue one so the agent can work on the changes."
        elif grant.expires_at <= now:
            warning = (
                f"Its grant expired at {timezone.localtime(grant.expires_at):%Y-%m-%d %H:%M}: issue a new grant "
                "so the agent can work on the changes."
            )
        else:
            exhausted = agent_selectors.budget_exhausted(session=session, grant=grant, now=now)
            warning = (
                f"Its grant's {exhausted}: issue a new grant so the agent can work on the changes." if exhausted else ""
            )
        previous = session.status
        review = Review.objects.create(
            session=session,
            reviewer=reviewer,
            decision=Review.Decision.REQUEST_CHANGES,
            comment=comment,
            details={"previous_status": previous, "iteration": session.iteration + 1, "warning": warning},
        )
        record(
            "review.changes_requested",
            session=session,
            user=reviewer,
            provenance="human",
            payload={"review": review.pk, "comment": comment, "previous_status": previous, "warning": warning},
        )
        agent_services.session_back_to_work(
            session=session,
            by=reviewer,
            reason=f"changes requested by {reviewer.username}",
            iteration_reason="changes requested",
            note=f"Changes requested: {comment}",
            activity=f"changes requested: {comment}",
            review_state=ReviewState.CHANGES_REQUESTED,
        )
    return review


def review_reject(
    *, session: AgentSession, reviewer: User, comment: str = "", acting_session_id: int | None = None
) -> Review:
    """Close the session without merging: cancelled if it had not ended, its worktree removed, its
    branch kept under ``refs/archive/<branch>`` (every commit stays reachable)."""
    _require_authority(session=session, reviewer=reviewer, decision="reject", acting_session_id=acting_session_id)
    session = _fresh(session)
    if session.review_state in CLOSED_REVIEW_STATES:
        raise ValidationError(f"Session #{session.pk} was already {session.get_review_state_display().lower()}.")
    repo = Path(session.repository.path)
    archived_sha = None
    try:
        git_ops.check_repository(repo)
        if git_ops.resolve(repo, f"refs/heads/{session.branch}") is not None:
            # Archived first: whatever happens next, the commits stay reachable.
            archived_sha = git_ops.archive_branch(repo_path=repo, branch=session.branch, delete_branch=False)
    except (git_ops.GitOpsError, WorktreeError) as exc:
        _record_git_failure(session=session, reviewer=reviewer, decision="reject", error=str(exc))
        raise ReviewError(f"Not rejected: the branch could not be archived ({exc}).") from None
    comment = (comment or "").strip()
    review = _rejection_recorded(
        session=session,
        reviewer=reviewer,
        comment=comment,
        details={
            "archive_ref": git_ops.archive_ref_for(session.branch) if archived_sha else "",
            "archived_sha": archived_sha or "",
        },
    )
    session = _fresh(session)
    agent_services.session_worktree_remove(session=session, reason="rejected", by=reviewer)
    try:
        _archive_and_drop_branch(session=session, by=reviewer)
    except (git_ops.GitOpsError, WorktreeError) as exc:
        logger.warning("branch of rejected session %s kept as is: %s", session.pk, exc)
    return review


def _rejection_recorded(*, session: AgentSession, reviewer: User, comment: str, details: dict) -> Review:
    """The rejection's rows and audit event, in one transaction (its branch, if any, is archived)."""
    with transaction.atomic():
        session = _locked(session)
        if session.review_state in CLOSED_REVIEW_STATES:
            raise ValidationError(f"Session #{session.pk} was already {session.get_review_state_display().lower()}.")
        details = {**details, "branch": session.branch}
        review = Review.objects.create(
            session=session, reviewer=reviewer, decision=Review.Decision.REJECT, comment=comment, details=details
        )
        previous = agent_services.session_close(session=session, by=reviewer, reason=f"rejected by {reviewer.username}")
        record(
            "review.rejected",
            session=session,
            user=reviewer,
            provenance="human",
            payload={"review": review.pk, "comment": comment, "previous_status": previous, **details},
        )
        agent_services.session_update(session, review_state=ReviewState.REJECTED)
    return review


def review_revert(
    *, session: AgentSession, reviewer: User, comment: str = "", acting_session_id: int | None = None
) -> Review:
    """Undo merged work with one revert commit on the base branch (the merge commit reverted with
    ``-m 1``, or the fast-forwarded range)."""
    _require_authority(session=session, reviewer=reviewer, decision="revert", acting_session_id=acting_session_id)
    session = _fresh(session)
    if session.review_state != ReviewState.APPROVED:
        raise ValidationError(
            f"Only approved (merged) work can be reverted; session #{session.pk} is "
            f"{session.get_review_state_display().lower()}."
        )
    approval = approval_of(session)
    merged = approval.details if approval else {}
    if merged.get("method") not in ("fast-forward", "merge"):
        raise ValidationError(f"Session #{session.pk}'s approval merged no commits: there is nothing to revert.")
    comment = (comment or "").strip()
    message = _commit_message(
        f"Revert session #{session.pk}: {session.name}",
        f"This reverts the work of agent session #{session.pk} ({session.branch}), merged into "
        f"{session.base_branch} at {merged['base_after'][:12]} ({merged['method']}).",
        comment,
        f"Agent-Session: {session.pk}\nReverted-By: {reviewer.username}",
    )
    try:
        reverted = git_ops.revert_merge(
            repo_path=Path(session.repository.path),
            base_branch=session.base_branch,
            merged=merged,
            message=message,
            author=_author(reviewer),
            scratch_dir=_scratch_dir(),
        )
    except git_ops.Conflict as exc:
        _record_git_failure(session=session, reviewer=reviewer, decision="revert", error=str(exc), files=exc.files)
        raise ReviewConflict(f"Not reverted: {exc}. Nothing was changed.", files=exc.files) from None
    except git_ops.GitOpsError as exc:
        _record_git_failure(session=session, reviewer=reviewer, decision="revert", error=str(exc))
        raise ReviewError(f"Not reverted: {exc}") from None
    assert approval is not None  # without one nothing was merged: refused above
    return _revert_recorded(
        session=session,
        reviewer=reviewer,
        comment=comment,
        details={**reverted.__dict__, "reverted": merged, "approval": approval.pk},
        payload={
            "revert_commit": reverted.revert_commit,
            "base_branch": reverted.base_branch,
            "base_before": reverted.base_before,
            "merged_method": merged["method"],
            "merged_at": merged["base_after"],
        },
    )


def _revert_recorded(*, session: AgentSession, reviewer: User, comment: str, details: dict, payload: dict) -> Review:
    """The revert's row and audit event, in one transaction (its git work, if any, is done)."""
    with transaction.atomic():
        session = _locked(session)
        review = Review.objects.create(
            session=session, reviewer=reviewer, decision=Review.Decision.REVERT, comment=comment, details=details
        )
        record(
            "review.reverted",
            session=session,
            user=reviewer,
            provenance="human",
            payload={"review": review.pk, "comment": comment, **payload},
        )
        agent_services.session_update(session, review_state=ReviewState.REVERTED)
    return review


# -- the demo's simulated past -------------------------------------------------------------------


def review_approve_without_git(*, session: AgentSession, reviewer: User, comment: str = "") -> Review:
    """An approval recorded exactly as ``review_approve`` records one (same checks, rows and audit
    event), of work that has no branch in git: the demo's simulated past (controlroom/demo_history.py).
    Its details and event say so (``method`` "none", ``note``): they never name a merge that was not made."""
    _require_authority(session=session, reviewer=reviewer, decision="approve", acting_session_id=None)
    session = _fresh(session)
    _require_awaiting(session)
    return _approval_recorded(
        session=session,
        reviewer=reviewer,
        comment=(comment or "").strip(),
        details={"method": "none", "note": WITHOUT_GIT_NOTE},
        reason=f"approved by {reviewer.username} ({WITHOUT_GIT_NOTE})",
    )


def review_reject_without_git(*, session: AgentSession, reviewer: User, comment: str = "") -> Review:
    """A rejection recorded as ``review_reject`` records one, of work that has no branch in git
    (nothing to archive; the details say so)."""
    _require_authority(session=session, reviewer=reviewer, decision="reject", acting_session_id=None)
    session = _fresh(session)
    return _rejection_recorded(
        session=session,
        reviewer=reviewer,
        comment=(comment or "").strip(),
        details={"archive_ref": "", "archived_sha": "", "method": "none", "note": WITHOUT_GIT_NOTE},
    )


def review_revert_without_git(*, session: AgentSession, reviewer: User, comment: str = "") -> Review:
    """A revert recorded as ``review_revert`` records one, of an approval made by
    ``review_approve_without_git`` (nothing to undo in git; the details and event say so)."""
    _require_authority(session=session, reviewer=reviewer, decision="revert", acting_session_id=None)
    session = _fresh(session)
    if session.review_state != ReviewState.APPROVED:
        raise ValidationError(
            f"Only approved work can be reverted; session #{session.pk} is {session.get_review_state_display().lower()}."
        )
    approval = approval_of(session)
    if approval is None or approval.details.get("method") != "none":
        raise ValidationError(f"Session #{session.pk}'s approval merged commits: revert them with review_revert.")
    return _revert_recorded(
        session=session,
        reviewer=reviewer,
        comment=(comment or "").strip(),
        details={"method": "none", "note": WITHOUT_GIT_NOTE, "approval": approval.pk},
        payload={"revert_commit": "", "merged_method": "none", "note": WITHOUT_GIT_NOTE},
    )


@dataclass(frozen=True)
class GroupApproval:
    session_id: int
    approved: bool
    text: str


def review_approve_group(*, session_ids: list[int], reviewer: User, comment: str = "") -> list[GroupApproval]:
    """Approve several diffs in one decision: each session still safe to approve together
    (``selectors.is_safe_to_approve``, re-checked now) is merged separately through
    ``review_approve`` (its own merge, review and audit event); one that conflicts or is no longer
    safe is reported and left for its own review."""
    if not session_ids:
        raise ValidationError("Choose at least one diff to approve.")
    from reviews import selectors

    safe = {r.session.pk: r for r in selectors.safe_approvals(selectors.review_queue(user=reviewer), user=reviewer)}
    outcomes = []
    for session_id in dict.fromkeys(session_ids):
        row = safe.get(session_id)
        if row is None:
            outcomes.append(
                GroupApproval(
                    session_id,
                    False,
                    f"#{session_id} is not (or no longer) {selectors.SAFE_APPROVAL_RULE}: review it on its own.",
                )
            )
            continue
        try:
            review_approve(session=row.session, reviewer=reviewer, comment=comment)
        except (ReviewError, ValidationError, authority.NotAllowed) as exc:
            text = exc.messages[0] if isinstance(exc, ValidationError) else str(exc)
            outcomes.append(GroupApproval(session_id, False, f"#{session_id}: {text}"))
        else:
            outcomes.append(GroupApproval(session_id, True, ""))
    return outcomes


DECISIONS: dict[str, Callable[..., Review]] = {
    "approve": review_approve,
    "request-changes": review_request_changes,
    "reject": review_reject,
    "revert": review_revert,
}


# -- disk hygiene --------------------------------------------------------------------------------


@dataclass
class CleanupItem:
    session_id: int
    path: str
    reason: str
    bytes: int
    removed: bool = False


@dataclass
class CleanupReport:
    dry_run: bool
    bytes_before: int
    bytes_after: int
    items: list[CleanupItem] = field(default_factory=list)
    scratch_removed: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(item.bytes for item in self.items if item.removed)


def closed_sessions_with_worktrees(*, older_than_hours: float, now: datetime | None = None):
    """Sessions whose worktree is no longer needed: reviewed (approved, rejected, reverted), or
    failed/cancelled more than ``older_than_hours`` ago. Sessions inside a step are skipped."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=older_than_hours)
    return (
        AgentSession.objects.select_related("repository")
        .exclude(worktree_path="")
        .filter(
            Q(review_state__in=CLOSED_REVIEW_STATES)
            | Q(status__in=[Status.FAILED, Status.CANCELLED], finished_at__lt=cutoff)
        )
        .exclude(status__in=[Status.RUNNING, Status.QUEUED, Status.NEEDS_APPROVAL])
        .exclude(lease_until__gt=now)
        .order_by("pk")
    )


def worktrees_cleanup(
    *, older_than_hours: float = 24.0, dry_run: bool = False, now: datetime | None = None
) -> CleanupReport:
    """Remove the worktrees of closed sessions (branches stay; a rejected session's branch moves
    under its archive ref), and temporary review worktrees left by a crash. Reports the disk used."""
    from reviews.selectors import worktrees_disk_usage

    now = now or timezone.now()
    report = CleanupReport(dry_run=dry_run, bytes_before=worktrees_disk_usage(), bytes_after=0)
    for session in closed_sessions_with_worktrees(older_than_hours=older_than_hours, now=now):
        path = Path(session.worktree_path)
        if session.review_state == ReviewState.REJECTED and not dry_run and not path.exists():
            try:
                _archive_and_drop_branch(session=session, by=None)
            except (git_ops.GitOpsError, WorktreeError) as exc:
                logger.warning("branch of rejected session %s kept as is: %s", session.pk, exc)
        if not path.exists():
            continue
        reason = (
            f"review {session.review_state}"
            if session.review_state in CLOSED_REVIEW_STATES
            else f"{session.status} over {older_than_hours:g} h ago"
        )
        item = CleanupItem(session_id=session.pk, path=str(path), reason=reason, bytes=agent_selectors.disk_usage(path))
        report.items.append(item)
        if dry_run:
            continue
        freed = agent_services.session_worktree_remove(session=session, reason=f"cleanup: {reason}")
        item.removed = freed is not None
        if freed is not None and session.review_state == ReviewState.REJECTED:
            try:
                _archive_and_drop_branch(session=session, by=None)
            except (git_ops.GitOpsError, WorktreeError) as exc:
                logger.warning("branch of rejected session %s kept as is: %s", session.pk, exc)
    for leftover in git_ops.scratch_leftovers(_scratch_dir()):
        try:
            age = now.timestamp() - leftover.stat().st_mtime
        except FileNotFoundError:
            continue
        if age < SCRATCH_MAX_AGE_S:
            continue  # a merge may be using it right now
        report.scratch_removed.append(str(leftover))
        if not dry_run:
            try:
                shutil.rmtree(leftover)
            except OSError as exc:
                logger.warning("temporary review worktree %s not removed: %s", leftover, exc)
    report.bytes_after = report.bytes_before if dry_run else worktrees_disk_usage()
    return report
