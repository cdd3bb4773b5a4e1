"""Reads for reviewing agent output: the ranked review queue, the review capacity of each pod,
a session's diff, and the disk the worktrees take.

"Awaiting review" has ONE definition, ``awaiting_review_q()``, database-only so that the runtime
can count it cheaply before starting a pod's next session (its review WIP limit):

- a session that succeeded and is not reviewed yet (``review_state`` none), or that succeeded
  again after a change request (``changes_requested``: requesting changes sets the session
  running in the same transaction, so a succeeded session in that state has finished since);
- a session that stopped without succeeding (failed, cancelled, blocked) in one of those review
  states, after it committed something (a ``git_commit`` tool call, or ``git commit`` typed in a
  shell, that ran successfully).

Diff stats come from git at read time, never from a copy that could go stale: one
``git for-each-ref`` per repository resolves every branch, then one ``git diff --numstat base...tip``
per (base, tip) pair of commit shas not seen before. Stats are memoised by those shas, which
are immutable, so the memo can never go stale; new pairs are computed in parallel threads.
"""

from __future__ import annotations

import fnmatch
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from agents import selectors as agent_selectors
from agents.models import AgentSession, Escalation, Pod, ReviewState, Status, ToolCall, User
from agents.selectors import pods_visible_to, sessions_visible_to
from audit.models import AuditEvent
from reviews import git_ops
from reviews.models import Review

WIP_REASON_PREFIX = "review WIP limit"
# What the reviews of the demo's simulated past say (reviews.services.review_approve_without_git ...).
WITHOUT_GIT_NOTE = (
    "simulated past work (demo history): it has no branch in git, so nothing was merged, archived or reverted"
)

# The one definition of "awaiting review" lives with the runtime that enforces the WIP limit.
OPEN_REVIEW_STATES = agent_selectors.OPEN_REVIEW_STATES
STOPPED_STATUSES = agent_selectors.STOPPED_STATUSES
committed_q = agent_selectors.committed_q
awaiting_review_q = agent_selectors.awaiting_review_q
awaiting_review_count = agent_selectors.awaiting_review_count


def sessions_awaiting_review(*, user: User) -> QuerySet[AgentSession]:
    return sessions_visible_to(user=user).filter(awaiting_review_q())


# -- risk ----------------------------------------------------------------------------------------

DEPENDENCY_FILES = frozenset(
    {
        "pyproject.toml",
        "setup.py",
        "setup.cfg",
        "Pipfile",
        "Pipfile.lock",
        "poetry.lock",
        "uv.lock",
        "constraints.txt",
        "package.json",
        "package-lock.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "Cargo.toml",
        "Cargo.lock",
        "go.mod",
        "go.sum",
        "Gemfile",
        "Gemfile.lock",
        "Dockerfile",
    }
)
DEPENDENCY_GLOBS = ("requirements*.txt", "requirements*.in")

RISK_BASE = 1.0
RISK_PER_PROTECTED_FILE = 3.0
RISK_PROTECTED_CAP = 4  # files counted at most
RISK_PER_DENIAL = 1.0
RISK_PER_ESCALATION = 1.0
RISK_TESTS_FAILED = 2.0
RISK_NO_TESTS = 1.0
RISK_STOPPED = 1.0
SIZE_LINES_UNIT = 20  # lines changed for the size factor to reach 2
BINARY_FILE_LINES = 20  # a binary file weighs like this many lines
AGE_HOURS_UNIT = 12.0  # hours waited for the age factor to reach 2


def protected_reason(path: str) -> str | None:
    """Why a changed path deserves a closer look (CI, git config, migrations, dependencies), or None."""
    if not path:
        return None
    parts = path.split("/")
    name = parts[-1]
    if parts[0] in (".github", ".ci"):
        return "CI configuration"
    if any(part.startswith(".git") for part in parts):
        return "git configuration"
    if "migrations" in parts[:-1]:
        return "database migration"
    if name in DEPENDENCY_FILES or any(fnmatch.fnmatchcase(name, g) for g in DEPENDENCY_GLOBS):
        return "dependencies"
    return None


def protected_files(stat: git_ops.DiffStat) -> list[tuple[str, str]]:
    found = []
    for f in stat.files:
        reason = protected_reason(f.path) or protected_reason(f.old_path)
        if reason:
            found.append((f.path, reason))
    return found


@dataclass
class Ingredient:
    label: str
    value: float


@dataclass
class QueueRow:
    session: AgentSession
    own: bool
    stat: git_ops.DiffStat | None
    stat_error: str
    protected: list[tuple[str, str]]
    denials: int
    escalations: int
    tests: dict | None
    waited_hours: float
    risk: float = 1.0
    size: float = 1.0
    age: float = 1.0
    score: float = 1.0
    risk_ingredients: list[Ingredient] = field(default_factory=list)
    last_review: Review | None = None

    @property
    def why(self) -> str:
        """The score's ingredients in one line (shown on the row)."""
        risk = " + ".join(f"{i.value:g} {i.label}" for i in self.risk_ingredients)
        size = (
            f"{self.stat.additions}+ {self.stat.deletions}− in {len(self.stat.files)} file(s)"
            if self.stat
            else "size unknown"
        )
        return (
            f"risk {self.risk:g} ({risk}) × size {self.size:.1f} ({size}) × age {self.age:.1f} "
            f"(waited {self.waited_hours:.1f} h) = {self.score:.1f}"
        )


def _score(row: QueueRow) -> None:
    ingredients = [Ingredient("base", RISK_BASE)]
    if row.protected:
        counted = min(len(row.protected), RISK_PROTECTED_CAP)
        names = ", ".join(path for path, _ in row.protected[:3]) + ("…" if len(row.protected) > 3 else "")
        ingredients.append(Ingredient(f"protected path(s): {names}", counted * RISK_PER_PROTECTED_FILE))
    if row.denials:
        ingredients.append(Ingredient(f"denied tool call(s) ×{row.denials}", row.denials * RISK_PER_DENIAL))
    if row.escalations:
        ingredients.append(Ingredient(f"escalation(s) ×{row.escalations}", row.escalations * RISK_PER_ESCALATION))
    if row.tests is None:
        ingredients.append(Ingredient("no test run recorded", RISK_NO_TESTS))
    elif row.tests.get("exit_code") not in (0, "0"):
        ingredients.append(Ingredient("last test run failed", RISK_TESTS_FAILED))
    if row.session.status != Status.SUCCEEDED:
        ingredients.append(Ingredient(f"stopped ({row.session.status})", RISK_STOPPED))
    row.risk_ingredients = ingredients
    row.risk = sum(i.value for i in ingredients)
    lines = (row.stat.lines + BINARY_FILE_LINES * row.stat.binary_files) if row.stat else 0
    row.size = 1.0 + math.log2(1.0 + lines / SIZE_LINES_UNIT)
    row.age = 1.0 + max(0.0, row.waited_hours) / AGE_HOURS_UNIT
    row.score = round(row.risk * row.size * row.age, 1)


# -- diff stats, memoised by commit shas ---------------------------------------------------------

_STAT_MEMO: OrderedDict[tuple[str, str, str], git_ops.DiffStat] = OrderedDict()
_STAT_MEMO_MAX = 4096
_STAT_LOCK = threading.Lock()
STAT_THREADS = 8


def _memo_get(key: tuple[str, str, str]) -> git_ops.DiffStat | None:
    with _STAT_LOCK:
        stat = _STAT_MEMO.get(key)
        if stat is not None:
            _STAT_MEMO.move_to_end(key)
        return stat


def _memo_put(key: tuple[str, str, str], stat: git_ops.DiffStat) -> None:
    with _STAT_LOCK:
        _STAT_MEMO[key] = stat
        while len(_STAT_MEMO) > _STAT_MEMO_MAX:
            _STAT_MEMO.popitem(last=False)


def diff_stat(*, repo_path: str, base: str, tip: str) -> git_ops.DiffStat:
    """``git diff base...tip`` stats for two commit shas (memoised: shas never change meaning)."""
    key = (str(repo_path), base, tip)
    stat = _memo_get(key)
    if stat is None:
        stat = git_ops.diff_stat(Path(repo_path), base, tip)
        _memo_put(key, stat)
    return stat


def diff_stats(sessions: list[AgentSession]) -> dict[int, tuple[git_ops.DiffStat | None, str]]:
    """Session id → (stat of its branch against its base, or None with an error text)."""
    result: dict[int, tuple[git_ops.DiffStat | None, str]] = {}
    pending: dict[tuple[str, str, str], list[int]] = {}
    by_repo: dict[str, list[AgentSession]] = {}
    for session in sessions:
        by_repo.setdefault(session.repository.path, []).append(session)
    for repo_path, members in by_repo.items():
        try:
            known = git_ops.refs(Path(repo_path))
        except git_ops.GitOpsError as exc:
            for session in members:
                result[session.pk] = (None, str(exc))
            continue
        for session in members:
            base = known.get(f"refs/heads/{session.base_branch}")
            tip = known.get(f"refs/heads/{session.branch}") or known.get(git_ops.archive_ref_for(session.branch))
            if base is None:
                result[session.pk] = (None, f"base branch {session.base_branch!r} not found")
            elif tip is None:
                result[session.pk] = (None, f"branch {session.branch!r} not found (no work yet?)")
            else:
                key = (repo_path, base, tip)
                stat = _memo_get(key)
                if stat is not None:
                    result[session.pk] = (stat, "")
                else:
                    pending.setdefault(key, []).append(session.pk)
    if pending:

        def compute(key):
            try:
                return key, diff_stat(repo_path=key[0], base=key[1], tip=key[2]), ""
            except git_ops.GitOpsError as exc:
                return key, None, str(exc)

        with ThreadPoolExecutor(max_workers=min(STAT_THREADS, len(pending))) as pool:
            for key, stat, error in pool.map(compute, list(pending)):
                for session_id in pending[key]:
                    result[session_id] = (stat, error)
    return result


# -- the review queue ----------------------------------------------------------------------------


def _counted(model, **filters) -> Coalesce:
    rows = model.objects.filter(session_id=OuterRef("pk"), **filters).order_by().values("session_id")
    return Coalesce(Subquery(rows.annotate(n=Count("pk")).values("n")[:1], output_field=IntegerField()), Value(0))


def latest_test_runs(session_ids: list[int]) -> dict[int, dict]:
    """Session id → payload (plus ``at``) of its latest ``tests.run`` audit event."""
    latest: dict[int, dict] = {}
    events = (
        AuditEvent.objects.filter(session_id__in=session_ids, kind="tests.run")
        .order_by("session_id", "id")
        .values("session_id", "payload", "created_at")
    )
    for event in events:
        latest[cast(int, event["session_id"])] = {**event["payload"], "at": event["created_at"]}  # session_id__in
    return latest


def latest_reviews(session_ids: list[int]) -> dict[int, Review]:
    latest: dict[int, Review] = {}
    for review in (
        Review.objects.filter(session_id__in=session_ids)
        .select_related("reviewer")
        .order_by("session_id", "created_at", "id")
    ):
        latest[review.session_id] = review
    return latest


def review_queue(*, user: User, pod: str = "", sto: str = "", now: datetime | None = None) -> list[QueueRow]:
    """Sessions awaiting review that ``user`` may see, ranked: the viewer's own sessions (as STO)
    first, then by risk × size × age, highest first."""
    now = now or timezone.now()
    sessions: Any = sessions_awaiting_review(user=user)  # a QuerySet, then the list of its annotated rows
    if pod:
        sessions = sessions.filter(pod__slug=pod)
    if sto:
        sessions = sessions.filter(sto__username=sto)
    sessions = list(
        sessions.annotate(
            denial_count=_counted(ToolCall, decision="deny"),
            escalation_count=_counted(Escalation),
        )
    )
    ids = [s.pk for s in sessions]
    stats = diff_stats(sessions)
    tests = latest_test_runs(ids)
    reviews = latest_reviews(ids)
    rows = []
    for session in sessions:
        stat, error = stats.get(session.pk, (None, "not computed"))
        finished = session.finished_at or session.updated_at
        row = QueueRow(
            session=session,
            own=session.sto_id == user.pk,
            stat=stat,
            stat_error=error,
            protected=protected_files(stat) if stat else [],
            denials=session.denial_count,
            escalations=session.escalation_count,
            tests=tests.get(session.pk),
            waited_hours=max(0.0, (now - finished).total_seconds() / 3600),
            last_review=reviews.get(session.pk),
        )
        _score(row)
        rows.append(row)
    rows.sort(key=lambda r: (not r.own, -r.score, r.session.finished_at or r.session.updated_at, r.session.pk))
    return rows


# -- approving several at once -------------------------------------------------------------------

SAFE_APPROVAL_RULE = "succeeded, the latest test run passed, and touches no protected path"


def is_safe_to_approve(row: QueueRow) -> bool:
    """A diff that may be approved with others in one decision: the session succeeded, its latest
    recorded test run passed, git could diff it, and it touches no protected path (CI, git
    configuration, migrations, dependencies)."""
    return (
        row.session.status == Status.SUCCEEDED
        and row.tests is not None
        and row.tests.get("exit_code") in (0, "0")
        and row.stat is not None
        and not row.stat_error
        and bool(row.stat.files)
        and not row.protected
    )


def safe_approvals(rows: list[QueueRow], *, user: User) -> list[QueueRow]:
    """Of the review queue's rows, those safe to approve together that ``user`` may decide."""
    from agents.authority import refuse_session_control

    return [r for r in rows if is_safe_to_approve(r) and refuse_session_control(user=user, session=r.session) is None]


# -- review capacity -----------------------------------------------------------------------------


@dataclass
class WipState:
    pod: Pod
    awaiting: int
    limit: int | None
    waiting_to_start: int

    @property
    def full(self) -> bool:
        return self.limit is not None and self.awaiting >= self.limit


def wip_states(*, user: User, pod: str = "") -> list[WipState]:
    """Per visible pod: sessions awaiting review, the WIP limit, sessions held queued by it."""
    pods = list(pods_visible_to(user=user).filter(slug=pod) if pod else pods_visible_to(user=user))
    ids = [p.pk for p in pods]
    awaiting = dict(
        AgentSession.objects.filter(awaiting_review_q(), pod_id__in=ids)
        .order_by()
        .values_list("pod_id")
        .annotate(n=Count("pk"))
    )
    held = dict(
        AgentSession.objects.filter(pod_id__in=ids, status=Status.QUEUED, status_reason__startswith=WIP_REASON_PREFIX)
        .order_by()
        .values_list("pod_id")
        .annotate(n=Count("pk"))
    )
    return [
        WipState(pod=p, awaiting=awaiting.get(p.pk, 0), limit=p.review_wip_limit, waiting_to_start=held.get(p.pk, 0))
        for p in pods
    ]


# -- one session's diff --------------------------------------------------------------------------


@dataclass
class SessionDiff:
    base: str = ""  # where the reviewed range starts (the merge-base)
    tip: str = ""
    stat: git_ops.DiffStat = field(default_factory=git_ops.DiffStat)
    commits: list[git_ops.CommitInfo] = field(default_factory=list)
    error: str = ""
    archived: bool = False
    uncommitted: list[str] = field(default_factory=list)


def approval_of(session: AgentSession) -> Review | None:
    return session.reviews.filter(decision=Review.Decision.APPROVE).order_by("-created_at", "-id").first()


def diff_range(session: AgentSession) -> tuple[str, str, bool]:
    """(base, tip, archived) of the work to show: the branch against its merge-base with the base
    branch; for merged work, the range recorded when it was approved."""
    repo = Path(session.repository.path)
    if session.review_state in (ReviewState.APPROVED, ReviewState.REVERTED):
        approval = approval_of(session)
        details = approval.details if approval else {}
        if details.get("merge_base") and details.get("branch_tip"):
            return details["merge_base"], details["branch_tip"], False
    tip = git_ops.resolve(repo, f"refs/heads/{session.branch}")
    archived = False
    if tip is None:
        tip = git_ops.resolve(repo, git_ops.archive_ref_for(session.branch))
        archived = tip is not None
    if tip is None:
        if any(review.details.get("method") == "none" for review in session.reviews.all()):
            raise git_ops.GitOpsError(f"no diff to show: {WITHOUT_GIT_NOTE}")
        raise git_ops.GitOpsError(f"branch {session.branch!r} not found in {repo}: the agent has not started work yet")
    base = git_ops.resolve(repo, f"refs/heads/{session.base_branch}")
    if base is None:
        raise git_ops.GitOpsError(f"base branch {session.base_branch!r} not found in {repo}")
    fork = git_ops.merge_base(repo, base, tip)
    if fork is None:
        raise git_ops.GitOpsError(f"{session.branch!r} shares no history with {session.base_branch!r}")
    return fork, tip, archived


def session_diff(*, session: AgentSession, with_commits: bool = True) -> SessionDiff:
    try:
        git_ops.check_repository(Path(session.repository.path))
        base, tip, archived = diff_range(session)
        result = SessionDiff(
            base=base, tip=tip, archived=archived, stat=diff_stat(repo_path=session.repository.path, base=base, tip=tip)
        )
        if with_commits:
            result.commits = git_ops.commits(Path(session.repository.path), base, tip)
        if session.worktree_path and Path(session.worktree_path).is_dir():
            result.uncommitted = agent_selectors.uncommitted_work(git_ops.is_dirty(Path(session.worktree_path)))
        return result
    except git_ops.GitOpsError as exc:
        return SessionDiff(error=str(exc))


def recorded_test_runs(*, session: AgentSession) -> list[dict]:
    events = AuditEvent.objects.filter(session_id=session.pk, kind="tests.run").order_by("id")
    return [{**e.payload, "at": e.created_at, "passed": e.payload.get("exit_code") == 0} for e in events]


def reviews_of(*, session: AgentSession) -> QuerySet[Review]:
    return session.reviews.select_related("reviewer").order_by("created_at", "id")


# -- disk ----------------------------------------------------------------------------------------


def worktrees_disk_usage() -> int:
    """Bytes under ``settings.CONTROLROOM["WORKTREES_DIR"]`` (files, symlinks not followed)."""
    return agent_selectors.disk_usage(Path(settings.CONTROLROOM["WORKTREES_DIR"]))
