"""Review pages: the ranked queue, a session's diff (files loaded one by one with htmx), and the
decisions. Views only call selectors and services; the diff's syntax colouring is presentation
and lives here."""

from __future__ import annotations

from functools import lru_cache
from html import escape
from pathlib import Path

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

from agents import authority, params
from agents import selectors as agent_selectors
from agents.errors import validation_text
from agents.http import AuthenticatedHttpRequest
from agents.models import AgentSession, User
from agents.selectors import pods_visible_to, session_visible_to
from reviews import git_ops, selectors, services

INLINE_FILES = 3  # files rendered with the page (if small); the others load when scrolled to
INLINE_MAX_LINES = 150  # a file larger than this is never inlined
INLINE_TOTAL_LINES = 400
MAX_FILE_LINES = 3000  # diff lines shown per file; the rest is cut with a note
PLACEHOLDER_LINE_PX = 18


# -- syntax colouring ----------------------------------------------------------------------------


def pygments_css() -> str:
    """The colours of the syntax classes: static/controlroom/pygments.css holds exactly this (a test
    checks), served as a file because the Content-Security-Policy allows no inline <style>."""
    return HtmlFormatter(style="default").get_style_defs(".code")


@lru_cache(maxsize=512)
def _css_class(ttype) -> str:
    while ttype is not None:
        name = STANDARD_TYPES.get(ttype)
        if name is not None:
            return name
        ttype = ttype.parent
    return ""


def _lexer_for(path: str):
    try:
        return get_lexer_for_filename(path, stripnl=False, stripall=False, ensurenl=False)
    except ClassNotFound:
        return TextLexer(stripnl=False, ensurenl=False)


def highlight_lines(texts: list[str], lexer) -> list[str]:
    """Each line as escaped HTML with Pygments token classes, lexed as one stream (so strings and
    comments spanning lines are coloured right)."""
    if not texts:
        return []
    lines: list[list[str]] = [[]]
    for ttype, value in lexer.get_tokens("\n".join(texts)):
        css = _css_class(ttype)
        for index, part in enumerate(value.split("\n")):
            if index:
                lines.append([])
            if part:
                text = escape(part, quote=False)
                lines[-1].append(f'<span class="{css}">{text}</span>' if css else text)
    html = ["".join(parts) for parts in lines]
    html += [""] * (len(texts) - len(html))
    return html[: len(texts)]


def render_patch(patch: git_ops.FilePatch) -> list[dict]:
    """Hunks ready for the template: each line with its marker, numbers and coloured HTML. The old
    side (context and removals) and the new side (context and additions) are lexed separately."""
    lexer = _lexer_for(patch.path)
    hunks = []
    for hunk in patch.hunks:
        old = [line.text for line in hunk.lines if line.kind in " -"]
        new = [line.text for line in hunk.lines if line.kind in " +"]
        old_html, new_html = iter(highlight_lines(old, lexer)), iter(highlight_lines(new, lexer))
        rows: list[dict[str, object]] = []
        for line in hunk.lines:
            if line.kind == "\\":
                rows.append({"kind": "meta", "marker": "", "html": escape(line.text), "old": "", "new": ""})
                continue
            if line.kind == " ":
                next(old_html)
                html = next(new_html)
            elif line.kind == "-":
                html = next(old_html)
            else:
                html = next(new_html)
            rows.append(
                {
                    "kind": {"+": "add", "-": "del", " ": "ctx"}[line.kind],
                    "marker": line.kind,
                    "html": mark_safe(html),
                    "old": line.old_no or "",
                    "new": line.new_no or "",
                }
            )
        hunks.append({"header": hunk.header, "rows": rows})
    return hunks


# -- helpers -------------------------------------------------------------------------------------


def _visible(request: AuthenticatedHttpRequest, session_id: int) -> AgentSession:
    session = session_visible_to(user=request.user, session_id=session_id)
    if session is None:
        if AgentSession.objects.filter(pk=session_id).exists():
            raise PermissionError("This session belongs to a pod you are not a member of.")
        raise Http404("No such session")
    return session


def _file_anchor(index: int) -> str:
    return f"file-{index}"


def _file_context(session: AgentSession, diff: selectors.SessionDiff, stat: git_ops.FileStat, index: int) -> dict:
    patch = git_ops.file_patch(
        Path(session.repository.path),
        diff.base,
        diff.tip,
        path=stat.path,
        old_path=stat.old_path,
        max_lines=MAX_FILE_LINES,
    )
    return {
        "f": stat,
        "index": index,
        "anchor": _file_anchor(index),
        "patch": patch,
        "hunks": render_patch(patch),
        "binary": stat.binary or patch.binary,
        "max_lines": MAX_FILE_LINES,
        "range_base": diff.base,
        "range_tip": diff.tip,
    }


def _handoff_rows(handoff) -> list[tuple[str, str]]:
    """The handoff note as (field, text) rows: lists joined with "; ", nested values as text."""
    if not isinstance(handoff, dict):
        return []
    rows = []
    for key, value in handoff.items():
        if isinstance(value, (list, tuple)):
            text = "; ".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = "; ".join(f"{k}: {v}" for k, v in value.items())
        else:
            text = "" if value is None else str(value)
        rows.append((str(key).replace("_", " "), text))
    return rows


# -- pages ---------------------------------------------------------------------------------------


@require_GET
@params.bad_parameter_400
def review_queue(request: AuthenticatedHttpRequest) -> HttpResponse:
    pod = params.query_text(request.GET, "pod", max_length=100)
    sto = params.query_text(request.GET, "sto", max_length=150)
    rows = selectors.review_queue(user=request.user, pod=pod, sto=sto)
    pods = list(pods_visible_to(user=request.user))
    stos = User.objects.filter(memberships__pod__in=pods).distinct().order_by("username")
    return render(
        request,
        "reviews/queue.html",
        {
            "rows": rows,
            "wip": selectors.wip_states(user=request.user, pod=pod),
            "pods": pods,
            "stos": stos,
            "pod": pod,
            "sto": sto,
            "own_count": sum(1 for r in rows if r.own),
            "safe": selectors.safe_approvals(rows, user=request.user),
            "safe_rule": selectors.SAFE_APPROVAL_RULE,
        },
    )


@require_POST
@params.bad_parameter_400
def review_approve_safe(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Approve the diffs of the queue's "safe" preview the reviewer kept ticked, each merged
    separately through the approve service."""
    if request.user.role == User.Role.LEADER:
        return HttpResponseForbidden("Leaders read the fleet; approving work is for its people and managers.")
    try:
        ids = [int(value) for value in request.POST.getlist("session")]
    except ValueError:
        ids = []
    try:
        outcomes = services.review_approve_group(
            session_ids=ids, reviewer=request.user, comment=request.POST.get("comment", "")
        )
    except ValidationError as exc:
        messages.error(request, validation_text(exc))
        return redirect(reverse("review_queue"))
    merged = [o for o in outcomes if o.approved]
    if merged:
        messages.success(
            request,
            f"Approved and merged {len(merged)} diff(s), each separately: "
            + ", ".join(f"#{o.session_id}" for o in merged)
            + ".",
        )
    for outcome in outcomes:
        if not outcome.approved:
            messages.warning(request, f"Not approved: {outcome.text}")
    return redirect(reverse("review_queue"))


@require_GET
@params.bad_parameter_400
def review_diff(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    try:
        session = _visible(request, session_id)
    except PermissionError as exc:
        return HttpResponseForbidden(str(exc))
    return _render_diff(request, session)


def _render_diff(
    request: AuthenticatedHttpRequest,
    session: AgentSession,
    *,
    status: int = 200,
    conflict: list[str] | None = None,
    error: str = "",
) -> HttpResponse:
    diff = selectors.session_diff(session=session)
    files = []
    inlined = inline_lines = 0
    inlining = True
    for index, stat in enumerate(diff.stat.files):
        inlining = (
            inlining
            and inlined < INLINE_FILES
            and stat.lines <= INLINE_MAX_LINES
            and inline_lines + stat.lines <= INLINE_TOTAL_LINES
        )
        entry = {
            "f": stat,
            "index": index,
            "anchor": _file_anchor(index),
            "inline": inlining,
            "protected": selectors.protected_reason(stat.path) or selectors.protected_reason(stat.old_path),
            "placeholder_px": min(max(stat.lines, 3), 40) * PLACEHOLDER_LINE_PX,
        }
        if inlining:
            try:
                entry.update(_file_context(session, diff, stat, index))
            except git_ops.GitOpsError as exc:
                entry["error"] = str(exc)
            inlined += 1
            inline_lines += stat.lines
        files.append(entry)
    overlaps = agent_selectors.overlaps_for(
        [session.pk], also_edited={session.pk: [p for f in diff.stat.files for p in (f.path, f.old_path) if p]}
    ).get(session.pk, [])
    refusal = services.refuse_review(session=session, reviewer=request.user)
    return render(
        request,
        "reviews/diff.html",
        {
            "s": session,
            "diff": diff,
            "files": files,
            "tests": selectors.recorded_test_runs(session=session),
            "reviews": selectors.reviews_of(session=session),
            "can_decide": refusal is None,
            "refusal": refusal,
            "awaiting": session.review_state in selectors.OPEN_REVIEW_STATES
            and session.status in ("succeeded", *selectors.STOPPED_STATUSES),
            "closable": session.review_state not in services.CLOSED_REVIEW_STATES,
            "conflict": conflict,
            "error": error,
            "handoff": _handoff_rows(session.handoff),
            "overlaps": overlaps,
            "sees_everything": agent_selectors.sees_everything(request.user),
        },
        status=status,
    )


@require_GET
@params.bad_parameter_400
def review_file(request: AuthenticatedHttpRequest, session_id: int) -> HttpResponse:
    """One file's hunks (the htmx partial the diff page loads when the file is scrolled into view)."""
    try:
        session = _visible(request, session_id)
    except PermissionError as exc:
        return HttpResponseForbidden(str(exc))
    path = params.query_text(request.GET, "path", max_length=params.MAX_TEXT)
    diff = selectors.session_diff(session=session, with_commits=False)
    # htmx swaps only 2xx answers: an error comes back as 200 so the reviewer sees it in place.
    error_status = 200 if request.htmx else 409
    if diff.error:
        return render(request, "reviews/diff.html#file_error", {"error": diff.error, "path": path}, status=error_status)
    index = next((i for i, f in enumerate(diff.stat.files) if f.path == path), None)
    if index is None:
        raise Http404("This file is not part of the session's changes.")
    stat = diff.stat.files[index]
    try:
        context = _file_context(session, diff, stat, index)
    except git_ops.GitOpsError as exc:
        return render(request, "reviews/diff.html#file_error", {"error": str(exc), "path": path}, status=error_status)
    context["protected"] = selectors.protected_reason(stat.path) or selectors.protected_reason(stat.old_path)
    if request.htmx:
        return render(request, "reviews/diff.html#file", context)
    return render(request, "reviews/file_page.html", {**context, "s": session})


@require_POST
@params.bad_parameter_400
def review_decide(request: AuthenticatedHttpRequest, session_id: int, decision: str) -> HttpResponse:
    service = services.DECISIONS.get(decision)
    if service is None:
        raise Http404("Unknown decision: use approve, request-changes, reject or revert.")
    try:
        session = _visible(request, session_id)
    except PermissionError as exc:
        # Someone outside the pod tried to decide: refused, and recorded like every refusal.
        session = AgentSession.objects.select_related("sto", "pod").get(pk=session_id)
        refusal = services.refuse_review(session=session, reviewer=request.user) or str(exc)
        services.record_refusal(session=session, reviewer=request.user, decision=decision, refusal=refusal)
        return render(request, "reviews/refused.html", {"s": None, "refusal": refusal}, status=403)
    comment = request.POST.get("comment", "")
    try:
        review = service(session=session, reviewer=request.user, comment=comment)
    except authority.NotAllowed as exc:
        return render(request, "reviews/refused.html", {"s": session, "refusal": str(exc)}, status=403)
    except services.ReviewConflict as exc:
        return _render_diff(request, session, status=409, conflict=exc.files, error=str(exc))
    except services.ReviewError as exc:
        return _render_diff(request, session, status=409, error=str(exc))
    except ValidationError as exc:
        return _render_diff(request, session, status=400, error=validation_text(exc))
    messages.success(request, _done_text(review, session))
    if review.details.get("warning"):
        messages.warning(request, review.details["warning"])
    if decision == "request-changes":
        return redirect(reverse("review_diff", args=[session.pk]))
    return redirect(reverse("review_queue"))


def _done_text(review, session: AgentSession) -> str:
    d = review.details
    if review.decision == "approve":
        if d.get("method") == "up-to-date":
            return f"#{session.pk} approved: {session.base_branch} already had its commits."
        return (
            f"#{session.pk} merged into {session.base_branch} ({d.get('method')}, now at {d.get('base_after', '')[:10]}); "
            "its worktree was removed, its branch kept."
        )
    if review.decision == "request_changes":
        return f"#{session.pk} is back at work with your comment (iteration {d.get('iteration')})."
    if review.decision == "reject":
        return (
            f"#{session.pk} rejected; its commits are kept under {d.get('archive_ref') or 'no archive (no commits)'}."
        )
    return f"#{session.pk} reverted on {session.base_branch} by {d.get('revert_commit', '')[:10]}."
