"""Explaining an agent's commit: its session, agent, delegator and grant (from the commit's
trailers and the audit log), and the approvals of the session's actions up to the commit."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.utils import timezone

from agents import params as strict
from agents.models import AgentSession, Grant, Repository, User
from audit.models import AuditEvent
from reviews import git_ops
from reviews.digest.events import describe, first_line, visible_session_ids
from reviews.digest.mine import authorised_by, human_decisions

SHA_RE = re.compile(r"^[0-9a-fA-F]{4,64}$")
TRAILER_KEYS = ("Agent-Session", "Delegated-By", "Grant")
GIT_TIMEOUT_S = 15


class CommitNotFound(LookupError):
    """The sha names no agent commit we know of (message says why, for a human)."""


@dataclass
class Approval:
    event: AuditEvent
    text: str
    approval: str
    approved_by: str
    in_commit: bool  # after the session's previous commit: part of what this commit contains


@dataclass
class CommitExplanation:
    sha: str
    message: str = ""
    author: str = ""
    authored_at: str = ""
    repository: str = ""
    trailers: dict[str, str] = field(default_factory=dict)
    session_id: int | None = None
    session: AgentSession | None = None
    delegator: str = ""
    grant_id: int | None = None
    grant: Grant | None = None
    commit_event: AuditEvent | None = None
    approvals: list[Approval] = field(default_factory=list)
    human_decisions: list[AuditEvent] = field(default_factory=list)
    grant_events: list[AuditEvent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # mismatches and what could not be read

    @property
    def agent(self) -> str:
        if self.session is None:
            return f"agent #{self.session_id}" if self.session_id else "unknown agent"
        return f"agent #{self.session.pk} ({self.session.model})"

    @property
    def subject(self) -> str:
        return first_line(self.message)


def _git_show(repo_path: Path, sha: str) -> dict:
    """The commit's author, date, message and trailers (GitPython, with a timeout)."""
    sep = "\x1f"
    out = git_ops.run(
        repo_path,
        "show",
        "-s",
        f"--format=%H{sep}%an <%ae>{sep}%aI{sep}%(trailers:only=true,unfold=true){sep}%B",
        sha,
        "--",
        what=f"reading commit {sha[:12]}",
        timeout_s=GIT_TIMEOUT_S,
    )
    full, author, date, trailer_text, message = (out.split(sep, 4) + ["", "", "", "", ""])[:5]
    trailers: dict[str, str] = {}
    for line in trailer_text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip():
            trailers.setdefault(key.strip(), value.strip())
    return {"sha": full.strip(), "author": author, "date": date, "trailers": trailers, "message": message.strip()}


def _resolve_in(repo_path: Path, sha: str) -> str | None:
    try:
        git_ops.check_repository(repo_path)
    except git_ops.GitOpsError:
        return None
    return git_ops.resolve(repo_path, sha)


def _not_found(sha: str) -> CommitNotFound:
    """The one answer for a commit that does not exist and for one the viewer may not see (the
    same words, so the answer tells nothing about other pods' commits)."""
    return CommitNotFound(f"no commit {sha} in the audit log's git.commit events or in any registered repository")


def commit_explain(*, sha: str, user: User | None = None) -> CommitExplanation:
    """Who is behind an agent's commit: its session, agent, delegator and grant (from the commit's
    trailers and the audit log), and the approvals of the session's actions up to the commit.

    ``sha`` may be abbreviated (4+ hex digits). The commit is found through the ``git.commit``
    events of the audit log (their payload's sha), else in the registered repositories. With a
    ``user``, only commits of sessions they may see are looked up: another pod's commit is
    CommitNotFound, in the same words as a commit that does not exist. CommitNotFound says why.
    """
    sha = (sha or "").strip()
    if not SHA_RE.match(sha):
        raise CommitNotFound(f"{sha[:80]!r} is not a commit sha: give 4 to 40 hexadecimal digits")
    sha = sha.lower()
    visible = visible_session_ids(user=user) if user is not None else None

    def may_see(session_id: int | None) -> bool:
        return visible is None or (session_id is not None and session_id in visible)

    commits = AuditEvent.objects.filter(kind="git.commit", payload__sha__startswith=sha)
    if visible is not None:
        commits = commits.filter(session_id__in=visible)
    found = list(commits.order_by("id")[:20])
    full_shas = sorted({str(e.payload.get("sha", "")) for e in found})
    if len(full_shas) > 1:
        raise CommitNotFound(f"{sha} is ambiguous: it starts {', '.join(s[:12] for s in full_shas)}; give more digits")
    explanation = CommitExplanation(sha=full_shas[0] if full_shas else sha)
    commit_event = found[-1] if found else None
    info = None
    if commit_event is not None:
        explanation.commit_event = commit_event
        explanation.session_id = commit_event.session_id
        session = (
            AgentSession.objects.select_related("repository", "pod", "sto").filter(pk=commit_event.session_id).first()  # type: ignore[misc]  # pk=None: no session
        )
        if session is not None:
            repo_path = Path(session.repository.path)
            full = _resolve_in(repo_path, explanation.sha)
            if full:
                info = _git_show(repo_path, full)
                explanation.repository = session.repository.name
            else:
                explanation.notes.append(
                    f"the commit is no longer in {session.repository.name} ({repo_path}): shown from the audit log only"
                )
    else:
        for repository in Repository.objects.order_by("pk"):
            full = _resolve_in(Path(repository.path), sha)
            if full:
                info = _git_show(Path(repository.path), full)
                explanation.repository = repository.name
                break
        if info is None:
            raise _not_found(sha)
        try:
            trailer_session = strict.integer(info["trailers"].get("Agent-Session", ""), name="Agent-Session", minimum=1)
        except strict.BadParameter:
            trailer_session = None
        if trailer_session is None:
            if visible is not None:  # whose commit it is cannot be told: not shown to a pod member
                raise _not_found(sha)
            raise CommitNotFound(
                f"commit {info['sha'][:12]} in {explanation.repository} has no Agent-Session trailer: no agent made it"
            )
        explanation.session_id = trailer_session
        if not may_see(explanation.session_id):
            raise _not_found(sha)
        explanation.commit_event = (
            AuditEvent.objects.filter(kind="git.commit", session_id=explanation.session_id, payload__sha=info["sha"])
            .order_by("id")
            .first()
        )
        if explanation.commit_event is None:
            explanation.notes.append("no git.commit event records this commit in the audit log")
    if info is not None:
        explanation.sha = info["sha"]
        explanation.message, explanation.author, explanation.authored_at = info["message"], info["author"], info["date"]
        explanation.trailers = info["trailers"]
    elif commit_event is not None:
        explanation.message = str(commit_event.payload.get("message", ""))
    explanation.session = (
        AgentSession.objects.select_related("repository", "pod", "sto").filter(pk=explanation.session_id).first()
        if explanation.session_id
        else None
    )
    _explain_authority(explanation)
    return explanation


def _explain_authority(x: CommitExplanation) -> None:
    trailers = x.trailers
    event = x.commit_event
    if trailers.get("Agent-Session") and x.session_id and trailers["Agent-Session"] != str(x.session_id):
        x.notes.append(f"the Agent-Session trailer says {trailers['Agent-Session']}, the audit log says {x.session_id}")
    grant_id = trailers.get("Grant", "")
    x.grant_id = int(grant_id) if grant_id.isascii() and grant_id.isdigit() else (event.grant_id if event else None)
    if event and x.grant_id and event.grant_id and event.grant_id != x.grant_id:
        x.notes.append(f"the Grant trailer says {x.grant_id}, the audit log says {event.grant_id}")
    x.grant = (
        Grant.objects.select_related("delegator", "issued_by").filter(pk=x.grant_id).first() if x.grant_id else None
    )
    if x.grant is not None and x.session_id and x.grant.session_id != x.session_id:
        x.notes.append(f"grant {x.grant.pk} belongs to session #{x.grant.session_id}, not #{x.session_id}")
    x.delegator = (
        trailers.get("Delegated-By")
        or (event.on_behalf_of_label if event else "")
        or (x.grant.delegator.username if x.grant else "")
    )
    if x.grant is not None and trailers.get("Delegated-By") and trailers["Delegated-By"] != x.grant.delegator.username:
        x.notes.append(
            f"the Delegated-By trailer says {trailers['Delegated-By']}, grant {x.grant.pk} was delegated by {x.grant.delegator.username}"
        )
    if not x.session_id:
        return
    history = AuditEvent.objects.filter(session_id=x.session_id)
    if event is not None:
        history = history.filter(id__lte=event.id)
    elif x.authored_at:
        try:
            history = history.filter(created_at__lte=datetime.fromisoformat(x.authored_at) + timedelta(seconds=1))
        except ValueError:
            x.notes.append(f"cannot read the commit's date {x.authored_at!r}")
    previous_commit = None
    if event is not None:
        previous_commit = (
            AuditEvent.objects.filter(session_id=x.session_id, kind="git.commit", id__lt=event.id)
            .order_by("-id")
            .values_list("id", flat=True)
            .first()
        )
    decisions = human_decisions([x.session_id])
    for e in history.filter(kind="tool.call").order_by("id"):
        approval, who = authorised_by(e, decisions)
        x.approvals.append(
            Approval(
                e,
                describe(e.kind, e.payload),
                approval,
                who,
                in_commit=previous_commit is None or e.id > previous_commit,
            )
        )
    x.human_decisions = list(history.filter(kind__in=("escalation.decided", "escalation.expired")).order_by("id"))
    x.grant_events = list(history.filter(kind__in=("grant.issued", "grant.revoked", "grant.expired")).order_by("id"))


def explanation_text(x: CommitExplanation) -> str:
    """The explanation as plain text (what ``manage.py audit_explain`` prints)."""
    out = [f"commit {x.sha}"]
    if x.subject:
        out.append(f"  {x.subject}")
    if x.author:
        out.append(f"  author {x.author}, {x.authored_at}" + (f", in {x.repository}" if x.repository else ""))
    s = x.session
    if s is not None:
        out.append(
            f"session  #{s.pk} {s.name} (pod {s.pod.name}, STO {s.sto.username}, status {s.status}, branch {s.branch})"
        )
    else:
        out.append(f"session  #{x.session_id} (no longer in the database)")
    out.append(f"agent    {x.agent}")
    out.append(f"on the authority of  {x.delegator or 'unknown'}")
    g = x.grant
    if g is not None:
        window = f"{timezone.localtime(g.not_before):%Y-%m-%d %H:%M}–{timezone.localtime(g.expires_at):%Y-%m-%d %H:%M}"
        state = (
            f"revoked {timezone.localtime(g.revoked_at):%Y-%m-%d %H:%M} ({g.revoke_reason})"
            if g.revoked_at
            else "in force"
        )
        out.append(
            f"grant    #{g.pk} version {g.version}, mode {g.mode}, delegated by {g.delegator.username}, "
            f"issued by {g.issued_by.username}, valid {window}, {state}"
        )
        out.append(f"  allow: {', '.join(g.allow) or '—'}")
        out.append(f"  ask:   {', '.join(g.ask) or '—'}")
        out.append(f"  deny:  {', '.join(g.deny) or '—'}")
    else:
        out.append(f"grant    #{x.grant_id} (not found)" if x.grant_id else "grant    unknown")
    if x.commit_event is not None:
        out.append(
            f"recorded as audit event #{x.commit_event.pk} ({x.commit_event.chain}#{x.commit_event.seq}) "
            f"at {timezone.localtime(x.commit_event.created_at):%Y-%m-%d %H:%M:%S}"
        )
    in_commit = [a for a in x.approvals if a.in_commit]
    out.append(f"tool calls behind it ({len(in_commit)} since the previous commit, {len(x.approvals)} in all):")
    for a in in_commit:
        out.append(f"  #{a.event.pk} {timezone.localtime(a.event.created_at):%H:%M:%S} {a.text}  [{a.approval}]")
    if x.human_decisions:
        out.append("human decisions:")
        for e in x.human_decisions:
            who = e.actor_label if e.actor_type == AuditEvent.Actor.USER else "nobody (expired)"
            out.append(f"  #{e.pk} {timezone.localtime(e.created_at):%H:%M:%S} {who}: {describe(e.kind, e.payload)}")
    else:
        out.append("human decisions: none")
    for note in x.notes:
        out.append(f"note: {note}")
    return "\n".join(out)
