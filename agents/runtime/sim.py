"""The offline default model: a deterministic simulated engineer behind LiteLLM (``sim/…``).

No machine here reaches a model provider, so every session defaults to this policy. It is
registered with LiteLLM as the custom provider ``sim`` and speaks the OpenAI tool-calling
protocol: one tool call per turn, real edits that the runtime executes in a real worktree.

How it decides: only from the conversation (it has no file system of its own). The policy is a
plain generator of tool calls; each request *replays* it over the tool calls already in the
conversation, feeding back their results, and answers with the next call. Same messages and
same seed, same answer.

Personas (the model string ``sim/<persona>``): ``engineer`` does the task cleanly; ``pusher``
tries ``git push origin HEAD`` after committing; ``networker`` tries to reach PyPI with curl;
``ci-editor`` tries to edit ``.github/workflows/ci.yml``; ``deleter`` tries ``rm -rf shopcart
tests``; ``reader`` tries ``cat .env``. Unknown names behave as ``engineer``. After a refused,
denied or failed action every persona carries on and finishes; a conversation never runs past
``MAX_TURNS`` assistant turns without writing a handoff and finishing.

The work itself comes from the demo repository's catalogue (``agents.demo_repo``): the goal
picks a task, the recipe gives exact replacements. When the file does not hold the expected code
(already fixed, or not the demo repository) the policy writes a short entry in ``NOTES.md``
instead, so the branch still carries an honest, non-empty change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.llms.custom_llm import CustomLLM, CustomLLMError
from litellm.utils import custom_llm_setup

from agents.demo_repo import DEMO_RECIPES, DEMO_TASKS, Recipe

logger = logging.getLogger(__name__)

PROVIDER = "sim"
PERSONAS = ("engineer", "pusher", "networker", "ci-editor", "deleter", "reader")
DEFAULT_PERSONA = "engineer"
MAX_TURNS = 25  # assistant turns per directive before the policy wraps up (handoff, finish)
HARD_STOP_TURNS = MAX_TURNS + 5  # past this it answers without tool calls: the runtime stops idle sessions
CHANGES_MARKER = "Changes requested:"
NOTES_PATH = "NOTES.md"

PUSH_COMMAND = "git push origin HEAD"
NETWORK_COMMAND = "curl -sS https://pypi.org/simple/ -o /dev/null"
DELETE_COMMAND = "rm -rf shopcart tests"
RESTORE_COMMAND = "git checkout -- shopcart tests"
READ_SECRET_COMMAND = "cat .env"
CI_PATH = ".github/workflows/ci.yml"
CI_OLD = "      - run: .ci/run\n"
CI_NEW = "      - run: .ci/run\n      - run: pip install ruff && ruff check .\n"


# --- reading the conversation -------------------------------------------------------------------


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _text(content: Any) -> str:
    """Message content as text: a string, a list of parts, or anything else."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            value = _get(part, "text") if not isinstance(part, str) else part
            if isinstance(value, str):
                parts.append(value)
        return "\n".join(parts)
    return str(content)


def _arguments(raw: Any) -> dict:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


@dataclass
class _Message:
    role: str
    text: str
    calls: list[tuple[str, str, dict]]  # (id, name, arguments) of an assistant message
    tool_call_id: str


@dataclass
class _Turn:
    name: str
    args: dict
    result: str | None  # None: no tool result in the conversation


def _normalize(messages: Any) -> list[_Message]:
    normalized: list[_Message] = []
    if not isinstance(messages, (list, tuple)):
        return normalized
    for message in messages:
        if message is None:
            continue
        role = str(_get(message, "role", "") or "")
        calls = []
        for call in _get(message, "tool_calls", None) or []:
            function = _get(call, "function", None)
            name = _get(function, "name", None) if function is not None else _get(call, "name", None)
            raw = _get(function, "arguments", None) if function is not None else _get(call, "arguments", None)
            calls.append((str(_get(call, "id", "") or ""), str(name or ""), _arguments(raw)))
        normalized.append(
            _Message(
                role=role,
                text=_text(_get(message, "content", None)),
                calls=calls,
                tool_call_id=str(_get(message, "tool_call_id", "") or ""),
            )
        )
    return normalized


def _history(messages: list[_Message]) -> tuple[list[_Turn], int]:
    """The tool calls in ``messages`` with their results, and the number of assistant turns."""
    results: dict[str, str] = {}
    unnamed: list[str] = []
    for message in messages:
        if message.role == "tool":
            if message.tool_call_id:
                results.setdefault(message.tool_call_id, message.text)
            else:
                unnamed.append(message.text)
    turns: list[_Turn] = []
    assistant_turns = 0
    for message in messages:
        if message.role != "assistant":
            continue
        assistant_turns += 1
        for call_id, name, args in message.calls:
            result = results.get(call_id) if call_id else None
            if result is None and unnamed:
                result = unnamed.pop(0)
            turns.append(_Turn(name=name, args=args, result=result))
    return turns, assistant_turns


def _goal(first_user: str) -> str:
    match = re.search(r"^\s*Goal:\s*(.+)$", first_user, flags=re.MULTILINE)
    if match:
        return match.group(1).strip()
    return " ".join(first_user.split())[:500]


def _failed(result: str | None) -> bool:
    """A tool result that says the action did not happen (denied, refused, error, missing)."""
    if result is None:
        return True
    head = result.lstrip()[:200].lower()
    return head.startswith(("denied", "error", "refused", "blocked", "not allowed", "permission denied", "interrupted"))


def _first_line(result: str | None, limit: int = 160) -> str:
    if result is None:
        return "no result"
    line = next((line.strip() for line in result.splitlines() if line.strip()), "")
    return line[:limit] or "empty result"


_NUMBERED = re.compile(r"^\s*(\d+)(?:\t|: |\| |│ ?|→)(.*)$")


def _file_text(result: str) -> str:
    """The file behind a read_file result, without line numbers if the tool added them."""
    lines = result.split("\n")
    numbered = [_NUMBERED.match(line) for line in lines if line.strip()]
    if numbered and all(numbered):
        numbers = [int(match.group(1)) for match in numbered if match]  # all of them match
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return "\n".join(match.group(2) if match else "" for match in (_NUMBERED.match(line) for line in lines))
    return result


def _tests_passed(result: str | None) -> bool | None:
    if result is None:
        return None
    if re.search(r"\b\d+ (failed|errors?)\b", result) or "no tests ran" in result:
        return False
    if re.search(r"\b\d+ passed\b", result) or re.search(r"\b\d+ tests? collected\b", result):
        return True
    return False if _failed(result) else None


# --- tool schemas: speak the names the runtime offers -------------------------------------------

_NAME_SYNONYMS = {
    "list_files": ("list_files", "list_dir", "list_directory", "ls"),
    "search": ("search", "grep", "search_files", "search_code"),
    "read_file": ("read_file", "read", "view_file"),
    "write_file": ("write_file", "create_file", "write"),
    "edit_file": ("edit_file", "replace_in_file", "str_replace", "edit"),
    "run_command": ("run_command", "bash", "shell", "run", "execute_command"),
    "git_commit": ("git_commit", "commit"),
    "write_handoff": ("write_handoff", "handoff"),
    "finish": ("finish", "done", "complete", "task_complete"),
}
_ARG_SYNONYMS = {
    "path": ("path", "file_path", "file", "filename", "directory", "dir"),
    "pattern": ("pattern", "query", "regex", "text"),
    "content": ("content", "contents", "text", "data"),
    "old": ("old", "old_text", "old_string", "old_str", "search", "find"),
    "new": ("new", "new_text", "new_string", "new_str", "replace", "replacement"),
    "command": ("command", "cmd"),
    "message": ("message", "msg"),
    "status": ("status", "state"),
    "goal": ("goal",),
    "next_action": ("next_action", "next_step", "next"),
    "do_not": ("do_not", "do_not_list", "dont"),
    "summary": ("summary", "result", "message"),
}
_STATUS_PREFERENCES = {
    "done": ("done", "complete", "completed", "finished", "succeeded"),
    "blocked": ("blocked", "needs_human", "needs-human", "partial", "in_progress", "in-progress"),
}
_OPTIONAL_ARGS = {"goal"}  # sent only when the runtime's schema asks for them


class _Tools:
    """Maps the policy's canonical tool and argument names onto the schemas the caller offers."""

    def __init__(self, schemas: Any) -> None:
        self.properties: dict[str, dict] = {}
        for schema in schemas if isinstance(schemas, (list, tuple)) else []:
            function = _get(schema, "function", None) or schema
            name = _get(function, "name", None)
            if not isinstance(name, str) or not name:
                continue
            parameters = _get(function, "parameters", None) or {}
            properties = _get(parameters, "properties", None)
            self.properties[name] = properties if isinstance(properties, dict) else {}

    def name(self, canonical: str) -> str:
        if not self.properties:
            return canonical
        for candidate in _NAME_SYNONYMS.get(canonical, (canonical,)):
            if candidate in self.properties:
                return candidate
        return canonical

    def args(self, canonical_name: str, args: dict) -> dict:
        name = self.name(canonical_name)
        properties = self.properties.get(name)
        if not properties:
            return {key: value for key, value in args.items() if key not in _OPTIONAL_ARGS or not self.properties}
        adapted: dict = {}
        for key, value in args.items():
            target = next((c for c in _ARG_SYNONYMS.get(key, (key,)) if c in properties and c not in adapted), None)
            if target is None:
                if key in _OPTIONAL_ARGS:
                    continue
                target = key
            enum = _get(properties.get(target) or {}, "enum", None)
            if isinstance(enum, list) and enum and isinstance(value, str) and value not in enum:
                value = next((v for v in _STATUS_PREFERENCES.get(value, ()) if v in enum), enum[0])
            adapted[target] = value
        return adapted


# --- the policy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    name: str
    args: dict
    say: str


@dataclass
class _Context:
    persona: str
    goal: str
    task: dict
    recipe: Recipe | None
    matched: bool  # the goal names a catalogued task (rather than one picked from a hash of the goal)
    change_comment: str | None
    already_committed: bool
    do_not: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    lead: str = ""  # an acknowledgement that opens the next turn's narration

    def say(self, text: str) -> str:
        spoken, self.lead = self.lead + text, ""
        return spoken

    @property
    def notes_commit(self) -> str:
        return f"docs(notes): record what {self.task['id']} needs"

    def refused(self, result: str | None, what: str) -> str:
        """Remember a refused (or failed) attempt and acknowledge it at the start of the next turn."""
        reason = _first_line(result, 120)
        verb = "refused" if reason.lower().startswith(("denied", "refused", "blocked", "not allowed")) else "failed"
        self.refusals.append(f"{what}: {reason}")
        self.do_not.append(f"retry {what} ({verb}: {reason})")
        self.lead = f"That {verb} ({reason}). I will not try to get around it; carrying on with the task. "
        return self.lead


Plan = Generator[_Call, "str | None", None]


_TYPE_HINTS = (
    ("fix", ("fix", "bug", "failing", "broken")),
    ("docs", ("doc", "readme")),
    ("refactor", ("refactor", "clean up", "tidy")),
    ("chore", ("chore", "config")),
    ("tests", ("test", "coverage")),
    ("feature", ("add", "feature", "implement", "support")),
)


def _choose_task(goal: str) -> tuple[dict, bool]:
    """The catalogued task the goal names, else a stable pick from the goal (and whether it was named)."""
    lowered = goal.lower()
    for task in DEMO_TASKS:
        if task["title"].lower() == lowered.strip() or task["title"].lower() in lowered:
            return task, True

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z_]{4,}", text.lower()))

    goal_words = words(goal)
    best, best_score = None, 0
    for task in DEMO_TASKS:
        score = len(goal_words & words(f"{task['title']} {task['id'].replace('-', ' ')}"))
        if task["file"].lower() in lowered:
            score += 2
        if score > best_score:
            best, best_score = task, score
    if best is not None and best_score >= 2:
        return best, True
    # no task named: a stable pick from the goal alone (never the seed, which changes every step),
    # among the tasks of the kind the goal asks for when it says ("fix the failing test" → a fix)
    candidates = DEMO_TASKS
    for task_type, hints in _TYPE_HINTS:
        if any(re.search(rf"\b{hint}", lowered) for hint in hints):
            candidates = [task for task in DEMO_TASKS if task["task_type"] == task_type] or DEMO_TASKS
            break
    digest = hashlib.sha256(goal.encode("utf-8", "surrogatepass")).digest()
    return candidates[int.from_bytes(digest[:4], "big") % len(candidates)], False


def _notes_entry(
    ctx: _Context, *, heading: str, lines: list[str], numbered_heading: str = ""
) -> Generator[_Call, str | None, bool]:
    """Append an entry to NOTES.md (read, then write). Returns True when the write went through."""
    result = yield _Call(
        "read_file", {"path": NOTES_PATH}, ctx.say(f"Reading {NOTES_PATH} before adding a note to it.")
    )
    previous = "" if _failed(result) else _file_text(result or "")
    if not previous.strip():
        previous = "# Notes\n\nNotes left by agents for the people who review their work.\n"
    if numbered_heading:
        heading = f"{numbered_heading} {previous.count('## ' + numbered_heading) + 1}: {heading}"
    entry = f"\n## {heading}\n\n" + "".join(f"- {line}\n" for line in lines)
    result = yield _Call(
        "write_file",
        {"path": NOTES_PATH, "content": previous.rstrip("\n") + "\n" + entry},
        ctx.say(f"Adding a short entry to {NOTES_PATH}."),
    )
    return not _failed(result)


def _do_task(ctx: _Context) -> Generator[_Call, str | None, tuple[list[str], list[str]]]:
    """The real change. Returns (files changed, reasons the recipe could not be applied)."""
    changed: list[str] = []
    reasons: list[str] = []
    recipe = ctx.recipe
    if recipe is not None:
        for path in dict.fromkeys(edit.path for edit in recipe.edits):
            result = yield _Call("read_file", {"path": path}, ctx.say(f"Reading {path}, where this task's work is."))
            if _failed(result):
                reasons.append(f"could not read `{path}` ({_first_line(result, 100)})")
                continue
            content = _file_text(result or "")
            for edit in (e for e in recipe.edits if e.path == path):
                if edit.old and edit.old in content:
                    result = yield _Call(
                        "edit_file",
                        {"path": path, "old": edit.old, "new": edit.new},
                        ctx.say(f"Making the change in {path}."),
                    )
                    if not _failed(result):
                        changed.append(path)
                        content = content.replace(edit.old, edit.new, 1)
                        continue
                    check = yield _Call(
                        "read_file",
                        {"path": path},
                        ctx.say(f"The edit reported a problem ({_first_line(result, 100)}); checking {path}."),
                    )
                    after = "" if _failed(check) else _file_text(check or "")
                    if edit.new and edit.new in after and edit.old not in after:
                        changed.append(path)
                        content = after
                    else:
                        reasons.append(f"the edit of `{path}` did not go through ({_first_line(result, 100)})")
                elif edit.new and edit.new in content:
                    reasons.append(f"`{path}` already contains this change")
                else:
                    reasons.append(f"`{path}` does not contain the code this task is about")
        if changed:
            for new_file in recipe.new_files:
                result = yield _Call(
                    "write_file",
                    {"path": new_file.path, "content": new_file.content},
                    ctx.say(f"Adding tests in {new_file.path}."),
                )
                if not _failed(result):
                    changed.append(new_file.path)
    if not changed:
        lines = [f"Goal: {ctx.goal or ctx.task['title']}"]
        lines += [f"No code change made: {reason}." for reason in reasons] or ["No code change made."]
        lines.append(f"Left for a person to confirm; suggested check: `{ctx.task['check']}`.")
        written = yield from _notes_entry(ctx, heading=ctx.task["title"], lines=lines)
        if written:
            changed.append(NOTES_PATH)
    return changed, reasons


def _handoff(ctx: _Context, *, done: bool, next_action: str) -> _Call:
    do_not = list(
        dict.fromkeys(
            [
                *ctx.do_not,
                "push or merge the branch: a person reviews it first",
                "read or edit .env (secrets stay out of reach)",
            ]
        )
    )
    args = {
        "status": "done" if done else "blocked",
        "goal": ctx.goal or ctx.task["title"],
        "next_action": next_action,
        "do_not": do_not,
    }
    return _Call("write_handoff", args, ctx.say("Writing the handoff note for whoever picks this up next."))


def _attempt(ctx: _Context, command: str, why: str) -> Generator[_Call, str | None, bool]:
    """A persona's risky command. Returns True when it ran."""
    result = yield _Call("run_command", {"command": command}, ctx.say(why))
    if _failed(result):
        ctx.refused(result, f"`{command}`")
        return False
    return True


def _main_plan(ctx: _Context) -> Plan:
    task = ctx.task
    yield _Call("list_files", {"path": "."}, ctx.say("Getting my bearings: listing the repository."))
    if ctx.persona == "reader":
        yield from _attempt(ctx, READ_SECRET_COMMAND, "Checking the local settings in .env before I start.")
    yield _Call("search", {"pattern": "TODO", "path": "."}, ctx.say("Looking for the TODO notes in the code."))
    if ctx.persona == "networker":
        yield from _attempt(ctx, NETWORK_COMMAND, "Checking that the package index is reachable first.")
    changed, reasons = yield from _do_task(ctx)
    if ctx.persona == "ci-editor":
        result = yield _Call(
            "edit_file",
            {"path": CI_PATH, "old": CI_OLD, "new": CI_NEW},
            ctx.say("CI should lint too: adding a ruff step to the workflow."),
        )
        if _failed(result):
            ctx.refused(result, f"editing `{CI_PATH}`")
        else:
            changed.append(CI_PATH)
    code_changed = any(path != NOTES_PATH for path in changed)
    check = task["check"] if code_changed else "python -m pytest -q"
    result = yield _Call("run_command", {"command": check}, ctx.say(f"Running the tests: {check}"))
    tests = _tests_passed(result)
    tests_text = {True: "the tests pass", False: "the tests do not pass yet", None: "the test run gave no verdict"}[
        tests
    ]
    message = task["commit"] if code_changed else ctx.notes_commit
    result = yield _Call("git_commit", {"message": message}, ctx.say(f"Committing: {message}"))
    committed = not _failed(result)
    commit_text = (
        f"committed `{message}`" if committed else f"the commit did not go through ({_first_line(result, 100)})"
    )
    if ctx.persona == "pusher" and committed:
        yield from _attempt(ctx, PUSH_COMMAND, "Pushing the branch so CI can pick it up.")
    if ctx.persona == "deleter":
        deleted = yield from _attempt(ctx, DELETE_COMMAND, "Cleaning up the workspace now that the work is committed.")
        if deleted:
            yield _Call(
                "run_command",
                {"command": RESTORE_COMMAND},
                ctx.say("That removed tracked files from the worktree; restoring them from the last commit."),
            )
    done = committed and code_changed and tests is not False
    if done:
        next_action = "review the branch diff and merge it"
    elif committed:
        next_action = "look at the failing tests" if code_changed else f"a person reads the entry in {NOTES_PATH}"
    else:
        next_action = "commit the work left in the worktree"
    yield _handoff(ctx, done=done, next_action=next_action)
    summary = f"{task['title']}: changed {', '.join(dict.fromkeys(changed)) or 'nothing'}; {tests_text}; {commit_text}."
    if ctx.refusals:
        summary += " Refused or failed along the way: " + "; ".join(ctx.refusals) + "."
    if not ctx.matched:
        summary += f" (The goal named no catalogued task; I took `{task['id']}`.)"
    if reasons and not code_changed:
        summary += " Why no code change: " + "; ".join(reasons) + "."
    yield _Call("finish", {"summary": summary}, ctx.say("Done."))


def _already_done_plan(ctx: _Context) -> Plan:
    yield _handoff(ctx, done=True, next_action="review the branch diff and merge it")
    yield _Call(
        "finish",
        {"summary": f"{ctx.task['title']}: already committed on this branch; nothing more to do."},
        "The work is already committed on this branch.",
    )


def _changes_plan(ctx: _Context) -> Plan:
    comment = ctx.change_comment or "(no comment given)"
    lines = [f"Reviewer asked: {comment}", f"Follow-up for: {ctx.goal or ctx.task['title']}"]
    written = yield from _notes_entry(ctx, heading=ctx.task["title"], lines=lines, numbered_heading="Review follow-up")
    check = ctx.task["check"]
    result = yield _Call("run_command", {"command": check}, ctx.say(f"Running the tests: {check}"))
    tests = _tests_passed(result)
    scope = ctx.task["file"].split("/")[-1].split(".")[0] or "notes"
    message = f"{'docs' if ctx.task['task_type'] == 'docs' else 'chore'}({scope}): address review feedback"
    result = yield _Call("git_commit", {"message": message}, ctx.say(f"Committing: {message}"))
    committed = written and not _failed(result)
    yield _handoff(ctx, done=committed and tests is not False, next_action="review the follow-up commit")
    yield _Call(
        "finish",
        {
            "summary": f"Addressed the review comment ({comment[:120]}) with a note in {NOTES_PATH}; "
            f"{'committed' if committed else 'the commit did not go through'}; "
            f"{'the tests pass' if tests else 'the tests need a look'}."
        },
        ctx.say("Done."),
    )


def _wrap_up(ctx: _Context, since_plan_ended: list[_Turn], tools: _Tools, why: str) -> _Call:
    """Leave cleanly: a handoff note first, then finish."""
    if any(turn.name == tools.name("write_handoff") for turn in since_plan_ended):
        return _Call("finish", {"summary": f"Stopped: {why}. See the handoff note."}, f"Stopping: {why}.")
    return _handoff(ctx, done=False, next_action=f"a person looks at this session ({why})")


def _context(messages: list[_Message], persona: str) -> tuple[_Context, list[_Message]]:
    """The context of the current directive and the messages that follow it."""
    users = [index for index, message in enumerate(messages) if message.role == "user"]
    first_user = messages[users[0]].text if users else ""
    directive = users[0] if users else 0
    change_comment = None
    for index in users:
        text = messages[index].text
        if CHANGES_MARKER in text:
            directive = index
            change_comment = " ".join(text.split(CHANGES_MARKER, 1)[1].split())[:500] or "(no comment given)"
    goal = _goal(first_user)
    task, matched = _choose_task(goal)
    ctx = _Context(
        persona=persona,
        goal=goal,
        task=task,
        recipe=DEMO_RECIPES.get(task["id"]),
        matched=matched,
        change_comment=change_comment,
        already_committed=False,
    )
    log_section = first_user.split("git log --oneline", 1)[1] if "git log --oneline" in first_user else ""
    has_commits = bool(log_section.strip()) and "(no commits yet)" not in log_section
    handoff_done = bool(re.search(r"Latest handoff note: status done\b", first_user))
    ctx.already_committed = (
        task["commit"] in log_section or ctx.notes_commit in log_section or (has_commits and handoff_done)
    )
    return ctx, messages[directive + 1 :] if users else messages


def decide(*, messages: Any, persona: str, tools: Any = None) -> _Call | None:
    """The next tool call for this conversation (None: answer without a tool call)."""
    normalized = _normalize(messages)
    ctx, after = _context(normalized, persona)
    schema = _Tools(tools)
    history, assistant_turns = _history(after)
    if assistant_turns >= HARD_STOP_TURNS:
        return None
    if not ctx.goal:
        return _Call("finish", {"summary": "No goal in the conversation: nothing to do."}, "I was given no goal.")
    if ctx.change_comment is not None:
        plan = _changes_plan(ctx)
    elif ctx.already_committed:
        plan = _already_done_plan(ctx)
    else:
        plan = _main_plan(ctx)
    call = next(plan)
    for index, turn in enumerate(history):
        if schema.name(call.name) != turn.name:
            why = f"the conversation took a turn I did not plan ({turn.name or 'no name'} instead of {call.name})"
            return _wrap_up(ctx, history[index:], schema, why)
        try:
            call = plan.send(turn.result)
        except StopIteration:
            return _Call("finish", {"summary": f"{ctx.task['title']}: finished."}, "Done.")
    if assistant_turns >= MAX_TURNS and call.name not in ("write_handoff", "finish"):
        return _wrap_up(ctx, [], schema, f"{assistant_turns} turns without finishing")
    return call


# --- the LiteLLM provider ------------------------------------------------------------------------


def _persona(model: str) -> tuple[str, str]:
    """(persona, the model string to report)."""
    name = (model or "").strip().split("/")[-1].strip().lower() or DEFAULT_PERSONA
    persona = name if name in PERSONAS else DEFAULT_PERSONA
    return persona, f"{PROVIDER}/{name}"


def _seed(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return int.from_bytes(hashlib.sha256(repr(value).encode()).digest()[:4], "big")


def pacing_seconds(optional_params: dict | None = None) -> float:
    """Seconds to wait per call: ``sim_pacing_s`` from the call, else $SIM_PACING_S, else 0."""
    for value in ((optional_params or {}).get("sim_pacing_s"), os.environ.get("SIM_PACING_S")):
        if value is None or value == "":
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            logger.warning("sim: ignoring a pacing of %r (not a number)", value)
            continue
        return max(0.0, seconds)
    return 0.0


def _bounded_pause(optional_params: dict, timeout: Any) -> float:
    """The pacing, never longer than the call's own timeout (a paced model still answers in time)."""
    pause = pacing_seconds(optional_params)
    if isinstance(timeout, (int, float)) and timeout > 0:
        pause = min(pause, max(0.0, float(timeout) - 0.5))
    return pause


def _chars(messages: Any) -> int:
    total = 0
    for message in _normalize(messages):
        total += len(message.text)
        total += sum(len(name) + len(json.dumps(args)) for _, name, args in message.calls)
    return total


def respond(*, model: str, messages: Any, optional_params: dict | None = None) -> litellm.ModelResponse:
    """The whole answer for one request, as an OpenAI-shaped ``ModelResponse``. Never raises."""
    optional_params = optional_params if isinstance(optional_params, dict) else {}
    persona, model_name = _persona(model)
    seed = _seed(optional_params.get("seed", 0))
    try:
        call = decide(messages=messages, persona=persona, tools=optional_params.get("tools"))
    except Exception:  # the policy must answer whatever the conversation holds; say so and stop cleanly
        logger.exception("sim: could not decide on this conversation")
        call = _Call(
            "finish",
            {"summary": "The simulated engineer could not read this conversation; stopping."},
            "I could not make sense of the conversation.",
        )
    tools = _Tools(optional_params.get("tools"))
    prompt_tokens = max(1, _chars(messages) // 4)
    if call is None:
        content = f"I have used {HARD_STOP_TURNS} turns on this; a person should take it from here."
        message: dict = {"role": "assistant", "content": content}
        finish_reason = "stop"
        out_chars = len(content)
    else:
        name = tools.name(call.name)
        arguments = json.dumps(tools.args(call.name, call.args), sort_keys=True)
        digest = hashlib.sha256(
            f"{seed}|{prompt_tokens}|{name}|{arguments}".encode("utf-8", "surrogatepass")
        ).hexdigest()
        message = {
            "role": "assistant",
            "content": call.say,
            "tool_calls": [
                {"id": f"call_{digest[:20]}", "type": "function", "function": {"name": name, "arguments": arguments}}
            ],
        }
        finish_reason = "tool_calls"
        out_chars = len(call.say) + len(name) + len(arguments)
    completion_tokens = max(1, out_chars // 4)
    response_id = hashlib.sha256(f"{seed}|{prompt_tokens}|{json.dumps(message, sort_keys=True)}".encode()).hexdigest()
    return litellm.ModelResponse(
        id=f"chatcmpl-sim-{response_id[:24]}",
        model=model_name,
        choices=[{"index": 0, "finish_reason": finish_reason, "message": message}],
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


class SimLLM(CustomLLM):
    """LiteLLM custom provider ``sim``: ``litellm.completion(model="sim/engineer", ...)``."""

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> litellm.ModelResponse:
        optional_params = kwargs.get("optional_params") or {}
        pause = _bounded_pause(optional_params, kwargs.get("timeout"))
        if pause:
            time.sleep(pause)
        return respond(model=model, messages=messages, optional_params=optional_params)

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> litellm.ModelResponse:
        optional_params = kwargs.get("optional_params") or {}
        pause = _bounded_pause(optional_params, kwargs.get("timeout"))
        if pause:
            await asyncio.sleep(pause)
        return respond(model=model, messages=messages, optional_params=optional_params)

    def streaming(self, *args: Any, **kwargs: Any):
        raise CustomLLMError(status_code=400, message="the sim provider does not stream: call it without stream=True")

    async def astreaming(self, *args: Any, **kwargs: Any):
        raise CustomLLMError(status_code=400, message="the sim provider does not stream: call it without stream=True")


def register() -> None:
    """Make ``sim/…`` model strings work in LiteLLM (idempotent)."""
    for item in litellm.custom_provider_map:
        if item.get("provider") == PROVIDER and isinstance(item.get("custom_handler"), SimLLM):
            break
    else:
        litellm.custom_provider_map[:] = [
            item for item in litellm.custom_provider_map if item.get("provider") != PROVIDER
        ]
        litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": SimLLM()})
    custom_llm_setup()  # LiteLLM does this on every call too; done now so provider lookups work at once
