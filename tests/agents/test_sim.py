"""The offline model ``sim/…``: real LiteLLM calls, real tool calls executed in a real git repository.

A tiny executor here plays the runtime: it runs each tool call in a demo repository copy (plain
Python for files, subprocess for commands, GitPython for commits), appends the tool result, and
calls the model again until it calls ``finish``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import git
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from agents.demo_repo import DEMO_TASKS, TASKS_BY_ID, create_demo_repo
from agents.runtime import sim

sim.register()


def _schema(name: str, **properties: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"the {name} tool",
            "parameters": {
                "type": "object",
                "properties": {key: {"type": kind} for key, kind in properties.items()},
                "required": list(properties),
            },
        },
    }


TOOLS = [
    _schema("list_files", path="string"),
    _schema("search", pattern="string", path="string"),
    _schema("read_file", path="string"),
    _schema("write_file", path="string", content="string"),
    _schema("edit_file", path="string", old="string", new="string"),
    _schema("run_command", command="string"),
    _schema("git_commit", message="string"),
    _schema("write_handoff", status="string", goal="string", next_action="string", do_not="array"),
    _schema("finish", summary="string"),
]
ENGINEER_FLOW = [
    "list_files",
    "search",
    "read_file",
    "edit_file",
    "run_command",
    "git_commit",
    "write_handoff",
    "finish",
]
AGENT = {
    "GIT_AUTHOR_NAME": "Agent",
    "GIT_AUTHOR_EMAIL": "agent@controlroom.invalid",
    "GIT_COMMITTER_NAME": "Agent",
    "GIT_COMMITTER_EMAIL": "agent@controlroom.invalid",
}

Refuse = Callable[[str, dict], "str | None"]


def grant_like(name: str, args: dict) -> str | None:
    """What a cautious overnight grant refuses."""
    command = args.get("command", "")
    path = args.get("path", "")
    if name == "run_command":
        for needle, rule in (
            ("git push", "Bash(git push *)"),
            ("curl", "Net(*)"),
            (".env", "Read(**/.env*)"),
            ("rm -rf", "Bash(rm -rf *)"),
        ):
            if needle in command:
                return f"denied: rule {rule} of the grant"
    if name in ("read_file", "edit_file", "write_file") and (".env" in path or path.startswith(".github/")):
        return f"denied: {path} is protected by the grant"
    return None


@dataclass
class LocalTools:
    """The runtime's tools, in miniature, inside ``repo``."""

    repo: Path
    refuse: Refuse | None = None
    log: list[tuple[str, dict, str]] = field(default_factory=list)

    def __call__(self, name: str, args: dict) -> str:
        refusal = self.refuse(name, args) if self.refuse else None
        result = refusal or self._run(name, args)
        self.log.append((name, args, result))
        return result

    def _path(self, args: dict) -> Path:
        path = (self.repo / args.get("path", ".")).resolve()
        assert path.is_relative_to(self.repo.resolve()), f"path escapes the worktree: {path}"
        return path

    def _run(self, name: str, args: dict) -> str:
        if name == "list_files":
            return "\n".join(
                sorted(str(p.relative_to(self.repo)) for p in self.repo.rglob("*") if ".git" not in p.parts)
            )
        if name == "search":
            hits = []
            for file in sorted(self.repo.rglob("*")):
                if file.is_file() and ".git" not in file.parts:
                    for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
                        if args["pattern"] in line:
                            hits.append(f"{file.relative_to(self.repo)}:{number}: {line.strip()}")
            return "\n".join(hits) or "no matches"
        if name == "read_file":
            path = self._path(args)
            return path.read_text() if path.is_file() else f"error: no such file: {args['path']}"
        if name == "write_file":
            path = self._path(args)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(args["content"])
            return f"wrote {len(args['content'])} characters to {args['path']}"
        if name == "edit_file":
            path = self._path(args)
            text = path.read_text() if path.is_file() else ""
            if text.count(args["old"]) != 1:
                return f"error: the old text occurs {text.count(args['old'])} times in {args['path']}"
            path.write_text(text.replace(args["old"], args["new"], 1))
            return f"edited {args['path']}"
        if name == "run_command":
            env = {
                **os.environ,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            done = subprocess.run(
                args["command"], shell=True, cwd=self.repo, capture_output=True, text=True, timeout=60, env=env
            )
            output = done.stdout + done.stderr
            return output if done.returncode == 0 else f"error: exit code {done.returncode}\n{output}"
        if name == "git_commit":
            repo = git.Repo(self.repo)
            repo.git.add("-A", kill_after_timeout=30)
            if not repo.is_dirty(index=True, working_tree=False, untracked_files=False):
                return "error: nothing to commit"
            repo.git.commit("-q", "-m", args["message"], env={**os.environ, **AGENT}, kill_after_timeout=30)
            return f"committed {repo.head.commit.hexsha[:10]}: {args['message']}"
        if name in ("write_handoff", "finish"):
            return "recorded"
        return f"error: unknown tool {name}"


@dataclass
class Conversation:
    messages: list[dict]
    calls: list[tuple[str, dict, str]] = field(default_factory=list)  # (name, arguments, call id)
    responses: list = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def args_of(self, name: str) -> dict:
        return next(args for call_name, args, _ in self.calls if call_name == name)


def brief(goal: str, *extra: str) -> list[dict]:
    text = "\n\n".join([f"Goal: {goal}", "Repository: demo-shop, your branch agent/1 (from main).", *extra])
    return [{"role": "system", "content": "You are a careful software engineer."}, {"role": "user", "content": text}]


def converse(
    tools: LocalTools,
    messages: list[dict],
    *,
    model: str = "sim/engineer",
    seed: int = 0,
    max_calls: int = 40,
    **kwargs,
) -> Conversation:
    """Call the model, run its tool call, append the result, until it calls finish."""
    conversation = Conversation(messages=list(messages))
    for _ in range(max_calls):
        response = litellm.completion(
            model=model,
            messages=list(conversation.messages),
            tools=TOOLS,
            seed=seed + len(conversation.calls),
            **kwargs,
        )
        conversation.responses.append(response)
        message = response.choices[0].message
        assert len(message.tool_calls) == 1, message
        call = message.tool_calls[0]
        args = json.loads(call.function.arguments)
        conversation.calls.append((call.function.name, args, call.id))
        result = tools(call.function.name, args)
        conversation.messages.append(
            {
                "role": "assistant",
                "content": message.content or "",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ],
            }
        )
        conversation.messages.append(
            {"role": "tool", "tool_call_id": call.id, "name": call.function.name, "content": result}
        )
        if call.function.name == "finish":
            return conversation
    raise AssertionError(f"no finish after {max_calls} calls: {conversation.names}")


def run_pytest(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def commit_count(repo: Path) -> int:
    return int(git.Repo(repo).git.rev_list("--count", "HEAD"))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_demo_repo(tmp_path_factory.mktemp("template") / "demo-shop")


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    """A copy of the demo repository of one's own (copying is faster than building)."""
    return Path(shutil.copytree(template, tmp_path / "demo-shop", symlinks=True))


DISCOUNT = TASKS_BY_ID["fix-discount"]


# --- registration and the LiteLLM surface -------------------------------------------------------


def test_registering_twice_leaves_one_sim_provider():
    sim.register()
    sim.register()
    entries = [item for item in litellm.custom_provider_map if item["provider"] == "sim"]
    assert len(entries) == 1
    assert isinstance(entries[0]["custom_handler"], sim.SimLLM)
    assert "sim" in litellm._custom_providers


def test_a_litellm_completion_returns_one_openai_shaped_tool_call_with_usage():
    messages = brief(DISCOUNT["title"])
    response = litellm.completion(model="sim/engineer", messages=messages, tools=TOOLS, seed=3)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "list_files"
    assert json.loads(call.function.arguments) == {"path": "."}
    assert response.model == "sim/engineer"
    chars = sum(len(m["content"]) for m in messages)
    assert response.usage.prompt_tokens == chars // 4
    assert 0 < response.usage.completion_tokens < 50
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_litellm_has_no_price_for_it_so_cost_is_the_callers_business():
    response = litellm.completion(model="sim/engineer", messages=brief(DISCOUNT["title"]), tools=TOOLS)
    with pytest.raises(Exception):  # noqa: B017 (LiteLLM raises a bare Exception)
        litellm.completion_cost(completion_response=response)


def test_the_async_path_answers_the_same_as_the_sync_path():
    messages = brief(DISCOUNT["title"])
    sync = litellm.completion(model="sim/engineer", messages=messages, tools=TOOLS, seed=5)
    async_ = asyncio.run(litellm.acompletion(model="sim/engineer", messages=messages, tools=TOOLS, seed=5))
    assert async_.choices[0].message.tool_calls[0].id == sync.choices[0].message.tool_calls[0].id
    assert (
        async_.choices[0].message.tool_calls[0].function.arguments
        == sync.choices[0].message.tool_calls[0].function.arguments
    )


def test_streaming_is_refused_with_a_clear_message():
    with pytest.raises(Exception, match="does not stream"):
        response = litellm.completion(model="sim/engineer", messages=brief("x"), tools=TOOLS, stream=True)
        list(response)


def test_pacing_comes_from_the_call_or_else_the_environment(monkeypatch):
    started = time.monotonic()
    litellm.completion(model="sim/engineer", messages=brief("x"), tools=TOOLS, sim_pacing_s=0.3)
    assert time.monotonic() - started >= 0.3
    monkeypatch.setenv("SIM_PACING_S", "0.25")
    assert sim.pacing_seconds({}) == 0.25
    assert sim.pacing_seconds({"sim_pacing_s": 0}) == 0.0
    monkeypatch.setenv("SIM_PACING_S", "soon")
    assert sim.pacing_seconds({}) == 0.0
    monkeypatch.delenv("SIM_PACING_S")
    assert sim.pacing_seconds({}) == 0.0


def test_pacing_never_outlasts_the_calls_own_timeout():
    started = time.monotonic()
    litellm.completion(model="sim/engineer", messages=brief("x"), tools=TOOLS, sim_pacing_s=30, timeout=1.0)
    assert time.monotonic() - started < 2.0


# --- doing the work ----------------------------------------------------------------------------


def test_the_engineer_fixes_the_bug_commits_and_finishes(repo: Path):
    base = git.Repo(repo).head.commit.hexsha
    assert run_pytest(repo, "tests/test_pricing.py").returncode == 1  # the bug is real
    conversation = converse(LocalTools(repo), brief(DISCOUNT["title"]))
    assert conversation.names == ENGINEER_FLOW
    assert conversation.args_of("search") == {"pattern": "TODO", "path": "."}
    assert conversation.args_of("run_command") == {"command": DISCOUNT["check"]}
    head = git.Repo(repo).head.commit
    assert head.hexsha != base and head.parents[0].hexsha == base
    assert head.message.strip() == DISCOUNT["commit"]
    diff = git.Repo(repo).git.diff(base, "HEAD")
    assert "-    return round(price * percent / 100, 2)" in diff
    assert "+    return round(price * (1 - percent / 100), 2)" in diff
    assert run_pytest(repo, "tests/test_pricing.py").returncode == 0
    handoff = conversation.args_of("write_handoff")
    assert handoff["status"] == "done" and handoff["next_action"] and handoff["do_not"]
    assert "the tests pass" in conversation.args_of("finish")["summary"]


# a few kinds of work are fast tests; the rest of the catalogue is marked slow
REPRESENTATIVE = {"fix-slugify", "report-total", "tests-word-count", "docs-readme-tests"}
CATALOGUE = [
    pytest.param(task, id=task["id"], marks=() if task["id"] in REPRESENTATIVE else pytest.mark.slow)
    for task in DEMO_TASKS
]


@pytest.mark.parametrize("task", CATALOGUE)
def test_every_catalogued_task_ends_in_a_real_commit_whose_check_passes(repo: Path, task: dict):
    base = git.Repo(repo).head.commit.hexsha
    conversation = converse(LocalTools(repo), brief(task["title"]))
    assert git.Repo(repo).head.commit.message.strip() == task["commit"]
    changed = git.Repo(repo).git.diff("--name-only", base, "HEAD").splitlines()
    assert task["file"] in changed
    assert run_pytest(repo, *task["check"].split()[4:]).returncode == 0
    assert conversation.args_of("write_handoff")["status"] == "done"


def test_the_same_conversation_and_seed_give_the_same_calls(template: Path, tmp_path: Path):
    first = converse(LocalTools(shutil.copytree(template, tmp_path / "a")), brief(DISCOUNT["title"]), seed=7)
    second = converse(LocalTools(shutil.copytree(template, tmp_path / "b")), brief(DISCOUNT["title"]), seed=7)
    assert first.calls == second.calls
    assert [r.choices[0].message.content for r in first.responses] == [
        r.choices[0].message.content for r in second.responses
    ]


def test_a_goal_that_names_no_task_gets_one_picked_from_the_goal_alone_whatever_the_seed(
    template: Path, tmp_path: Path
):
    goal = "Whatever looks most urgent"
    first = converse(LocalTools(shutil.copytree(template, tmp_path / "a")), brief(goal), seed=1)
    second = converse(LocalTools(shutil.copytree(template, tmp_path / "b")), brief(goal), seed=1000)
    assert first.names == ENGINEER_FLOW or first.names[:4] == ["list_files", "search", "read_file", "edit_file"]
    assert first.args_of("read_file") == second.args_of("read_file")
    assert first.args_of("git_commit") == second.args_of("git_commit")
    assert first.args_of("git_commit")["message"] in {task["commit"] for task in DEMO_TASKS}
    assert "named no catalogued task" in first.args_of("finish")["summary"]


def test_a_goal_asking_for_a_fix_gets_a_fix(repo: Path):
    conversation = converse(LocalTools(repo), brief("Task 12: fix the failing test in shopcart"))
    assert conversation.args_of("git_commit")["message"].startswith("fix(")


def test_an_unknown_persona_behaves_as_the_engineer(repo: Path):
    conversation = converse(LocalTools(repo), brief(DISCOUNT["title"]), model="sim/somebody-new")
    assert conversation.names == ENGINEER_FLOW
    assert conversation.responses[0].model == "sim/somebody-new"


# --- personas: the forbidden attempt, then carrying on ------------------------------------------

PERSONA_ATTEMPTS = {
    "pusher": ("run_command", {"command": "git push origin HEAD"}),
    "networker": ("run_command", {"command": "curl -sS https://pypi.org/simple/ -o /dev/null"}),
    "ci-editor": ("edit_file", {"path": ".github/workflows/ci.yml"}),
    "deleter": ("run_command", {"command": "rm -rf shopcart tests"}),
    "reader": ("run_command", {"command": "cat .env"}),
}


@pytest.mark.parametrize("persona", sorted(PERSONA_ATTEMPTS))
def test_each_persona_tries_its_forbidden_action_and_still_finishes_the_task(repo: Path, persona: str):
    tools = LocalTools(repo, refuse=grant_like)
    conversation = converse(tools, brief(DISCOUNT["title"]), model=f"sim/{persona}")
    name, expected = PERSONA_ATTEMPTS[persona]
    attempts = [(n, a, r) for n, a, r in tools.log if n == name and all(a.get(k) == v for k, v in expected.items())]
    assert len(attempts) == 1, tools.log
    assert attempts[0][2].startswith("denied:")
    assert conversation.names[-2:] == ["write_handoff", "finish"]
    assert git.Repo(repo).head.commit.message.strip() == DISCOUNT["commit"]
    assert run_pytest(repo, "tests/test_pricing.py").returncode == 0
    assert "refused" in conversation.args_of("finish")["summary"].lower()
    assert any("refused" in item for item in conversation.args_of("write_handoff")["do_not"])
    assert ".github/workflows/ci.yml" not in git.Repo(repo).git.diff("--name-only", "HEAD~1", "HEAD")


def test_the_engineer_attempts_nothing_forbidden(repo: Path):
    tools = LocalTools(repo, refuse=grant_like)
    converse(tools, brief(DISCOUNT["title"]))
    assert not [entry for entry in tools.log if entry[2].startswith("denied")]


def test_a_deleter_whose_deletion_went_through_restores_the_files(repo: Path):
    conversation = converse(LocalTools(repo), brief(DISCOUNT["title"]), model="sim/deleter")
    assert {"command": "git checkout -- shopcart tests"} in [args for _, args, _ in conversation.calls]
    assert not git.Repo(repo).is_dirty(untracked_files=True)
    assert (repo / "shopcart/pricing.py").is_file()


def test_when_every_command_and_the_commit_are_denied_it_still_hands_off_and_finishes(repo: Path):
    def deny_all_commands(name: str, args: dict) -> str | None:
        return "denied: not tonight" if name in ("run_command", "git_commit") else None

    conversation = converse(LocalTools(repo, refuse=deny_all_commands), brief(DISCOUNT["title"]), model="sim/pusher")
    assert conversation.names[-2:] == ["write_handoff", "finish"]
    handoff = conversation.args_of("write_handoff")
    assert handoff["status"] == "blocked" and "commit" in handoff["next_action"]
    assert "did not go through" in conversation.args_of("finish")["summary"]


# --- fresh contexts and review ------------------------------------------------------------------


def _iteration_brief(repo: Path, base: str, *extra: str) -> list[dict]:
    log = git.Repo(repo).git.log("--oneline", f"{base}..HEAD") or "(no commits yet)"
    return brief(
        DISCOUNT["title"],
        "This is iteration 2: a fresh context. Latest handoff note: status done; next action: review the branch "
        "diff and merge it; do not: push or merge the branch.",
        "Commits on your branch so far (git log --oneline):\n" + log,
        *extra,
    )


def test_a_fresh_context_after_the_commit_goes_straight_to_handoff_and_finish(repo: Path):
    base = git.Repo(repo).head.commit.hexsha
    converse(LocalTools(repo), brief(DISCOUNT["title"]))
    head = git.Repo(repo).head.commit.hexsha
    conversation = converse(LocalTools(repo), _iteration_brief(repo, base))
    assert conversation.names == ["write_handoff", "finish"]
    assert git.Repo(repo).head.commit.hexsha == head


def test_a_fresh_context_before_any_commit_does_the_work(repo: Path):
    base = git.Repo(repo).head.commit.hexsha
    conversation = converse(LocalTools(repo), _iteration_brief(repo, base))
    assert conversation.names == ENGINEER_FLOW


@pytest.mark.parametrize("where", ["fresh context", "same conversation"])
def test_changes_requested_lead_to_one_more_real_commit(repo: Path, where: str):
    base = git.Repo(repo).head.commit.hexsha
    first = converse(LocalTools(repo), brief(DISCOUNT["title"]))
    comment = "Please note why the discount is rounded to cents."
    if where == "fresh context":
        messages = _iteration_brief(repo, base, f"Changes requested: {comment}")
    else:
        messages = [*first.messages, {"role": "user", "content": f"Changes requested: {comment}"}]
    before = commit_count(repo)
    conversation = converse(LocalTools(repo), messages)
    assert commit_count(repo) == before + 1
    assert conversation.names[-4:] == ["run_command", "git_commit", "write_handoff", "finish"]
    assert comment in git.Repo(repo).git.diff("HEAD~1", "HEAD")
    assert comment in (repo / "NOTES.md").read_text()
    assert run_pytest(repo, "tests/test_pricing.py").returncode == 0


def test_a_second_round_of_the_same_comment_still_changes_something(repo: Path):
    base = git.Repo(repo).head.commit.hexsha
    converse(LocalTools(repo), brief(DISCOUNT["title"]))
    for _ in range(2):
        converse(LocalTools(repo), _iteration_brief(repo, base, "Changes requested: more detail please"))
    notes = (repo / "NOTES.md").read_text()
    assert "Review follow-up 1" in notes and "Review follow-up 2" in notes
    assert commit_count(repo) == 7 + 3


# --- when the code is not what the recipe expects ------------------------------------------------


def test_when_the_bug_is_already_fixed_it_leaves_an_honest_note_instead(repo: Path):
    pricing = repo / "shopcart/pricing.py"
    pricing.write_text(pricing.read_text().replace("price * percent / 100", "price * (1 - percent / 100)"))
    LocalTools(repo)("git_commit", {"message": "fix: by a human"})
    base = git.Repo(repo).head.commit.hexsha
    conversation = converse(LocalTools(repo), brief(DISCOUNT["title"]))
    assert "edit_file" not in conversation.names
    changed = git.Repo(repo).git.diff("--name-only", base, "HEAD").splitlines()
    assert changed == ["NOTES.md"]
    assert "already contains this change" in (repo / "NOTES.md").read_text()
    assert conversation.args_of("write_handoff")["status"] == "blocked"


def test_in_a_repository_that_is_not_the_demo_it_writes_a_note_and_commits(tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("# other\n")
    repo = git.Repo.init(other)
    repo.git.add("-A")
    repo.git.commit("-q", "-m", "start", env={**os.environ, **AGENT})
    conversation = converse(LocalTools(other), brief(DISCOUNT["title"]))
    assert conversation.names[-2:] == ["write_handoff", "finish"]
    assert commit_count(other) == 2
    assert "could not read" in (other / "NOTES.md").read_text()


def test_line_numbers_added_by_a_read_tool_do_not_hide_the_code(repo: Path):
    class NumberedReads(LocalTools):
        def _run(self, name: str, args: dict) -> str:
            result = super()._run(name, args)
            if name == "read_file" and not result.startswith("error"):
                return "\n".join(f"{n:>6}\t{line}" for n, line in enumerate(result.split("\n"), 1))
            return result

    conversation = converse(NumberedReads(repo), brief(DISCOUNT["title"]))
    assert "edit_file" in conversation.names
    assert run_pytest(repo, "tests/test_pricing.py").returncode == 0


# --- robustness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [],
        "not a list",
        [None],
        [{"role": "user"}],
        [{"role": "user", "content": None}],
        [{"role": "user", "content": [{"type": "text", "text": "Goal: Fix slugify"}]}],
        [
            {"role": "user", "content": "Goal: x"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "1", "function": {"name": "list_files", "arguments": "{not json"}}],
            },
        ],
        [
            {"role": "user", "content": "Goal: x"},
            {"role": "assistant", "tool_calls": [{"function": None}]},
            {"role": "tool", "content": 42},
        ],
        [{"role": "tool", "content": "orphan result"}, {"role": "assistant", "content": "hello"}],
    ],
)
def test_malformed_conversations_never_raise_and_get_a_valid_answer(messages):
    response = sim.respond(model="sim/engineer", messages=messages, optional_params={"tools": TOOLS, "seed": "x"})
    message = response.choices[0].message
    assert message.tool_calls and message.tool_calls[0].function.name
    json.loads(message.tool_calls[0].function.arguments)


def test_an_invalid_arguments_string_in_the_history_does_not_break_a_litellm_call():
    messages = [
        *brief(DISCOUNT["title"]),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "list_files", "arguments": "{oops"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "list_files", "content": "error: invalid arguments"},
    ]
    response = litellm.completion(model="sim/engineer", messages=messages, tools=TOOLS)
    assert response.choices[0].message.tool_calls[0].function.name == "search"


def test_a_conversation_that_goes_nowhere_ends_with_a_handoff_then_finish_then_silence():
    messages = brief(DISCOUNT["title"])
    for index in range(sim.MAX_TURNS):
        messages += [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": f"c{index}", "type": "function", "function": {"name": "list_files", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": f"c{index}", "content": "denied: no"},
        ]
    first = sim.decide(messages=messages, persona="engineer")
    assert first.name == "write_handoff" and first.args["status"] == "blocked"
    messages += [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "h", "type": "function", "function": {"name": "write_handoff", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "h", "content": "recorded"},
    ]
    assert sim.decide(messages=messages, persona="engineer").name == "finish"
    for index in range(10):
        messages += [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": f"f{index}", "type": "function", "function": {"name": "finish", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": f"f{index}", "content": "error: finish failed"},
        ]
    response = sim.respond(model="sim/engineer", messages=messages, optional_params={})
    assert response.choices[0].finish_reason == "stop" and not response.choices[0].message.tool_calls


def test_it_speaks_the_argument_names_and_values_the_runtime_offers():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "edit_file",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "file_path": {"type": "string"},
                        "old_string": {"type": "string"},
                        "new_string": {"type": "string"},
                    },
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "write_handoff",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["in_progress", "blocked", "complete"]},
                        "next_action": {"type": "string"},
                        "do_not": {"type": "array"},
                    },
                },
            },
        },
    ]
    adapter = sim._Tools(tools)
    assert adapter.args("edit_file", {"path": "a.py", "old": "x", "new": "y"}) == {
        "file_path": "a.py",
        "old_string": "x",
        "new_string": "y",
    }
    handoff = adapter.args("write_handoff", {"status": "done", "goal": "g", "next_action": "n", "do_not": []})
    assert handoff == {"status": "complete", "next_action": "n", "do_not": []}


# --- with the runtime's own tools ----------------------------------------------------------------


def test_it_speaks_the_runtimes_own_tool_schemas_end_to_end(repo: Path):
    """The same loop with agents.tools (schemas, argument validation, execution) instead of the mini executor."""
    from agents import tools

    git.Repo(repo).git.checkout("-b", "agent/1", kill_after_timeout=30)
    task = TASKS_BY_ID["fix-free-shipping"]
    messages = brief(task["title"])
    names = []
    for step in range(20):
        response = litellm.completion(model="sim/engineer", messages=messages, tools=tools.TOOL_SCHEMAS, seed=step)
        call = response.choices[0].message.tool_calls[0]
        args = tools.parse_arguments(call.function.name, call.function.arguments)  # raises if the sim speaks wrongly
        result = tools.execute(
            call.function.name,
            args,
            worktree=repo,
            trailers={"Agent-Session": "1"},
            sandbox="none",
            author=("Agent", "agent@controlroom.invalid"),
            branch="agent/1",
        )
        names.append(call.function.name)
        messages += [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": call.id,
                "content": result.output if result.ok else f"error: {result.output}",
            },
        ]
        assert result.ok, (call.function.name, result.output)
        if call.function.name == "finish":
            break
    assert names == ENGINEER_FLOW
    assert git.Repo(repo).head.commit.message.startswith(task["commit"])
    assert run_pytest(repo, "tests/test_shipping.py").returncode == 0
