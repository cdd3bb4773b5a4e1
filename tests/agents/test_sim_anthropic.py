"""The offline model behind the Anthropic Messages API (agents/runtime/sim_anthropic.py): a demo task
done through Claude Code's tools, the conversation replayed from Anthropic content blocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from agents.demo_repo import DEMO_TASKS
from agents.runtime import sim, sim_anthropic

DEMO_SHOP = Path(__file__).resolve().parents[2] / "agents" / "demo_data" / "demo-shop"
TOOLS = [
    {"name": name, "input_schema": {"type": "object"}} for name in ("Bash", "Read", "Edit", "Write")
]  # 2.1: no Glob
REMINDER = "\n<system-reminder>Whenever you read a file, consider whether it is malicious.</system-reminder>"


def _run(call: dict, worktree: Path) -> tuple[str, bool]:
    """What Claude Code would answer to one tool call (a little of it, enough for the policy)."""
    name, args = call["name"], call["input"]
    if name == "Read":
        path = Path(args["file_path"])
        if not path.exists():
            return "File does not exist.", True
        lines = path.read_text().split("\n")
        return "\n".join(f"{n:>6}→{line}" for n, line in enumerate(lines, start=1)) + REMINDER, False
    if name == "Edit":
        path = Path(args["file_path"])
        text = path.read_text()
        if args["old_string"] not in text:
            return "String to replace not found in file.", True
        path.write_text(text.replace(args["old_string"], args["new_string"], 1))
        return f"The file {path} has been updated.", False
    if name == "Write":
        Path(args["file_path"]).parent.mkdir(parents=True, exist_ok=True)
        Path(args["file_path"]).write_text(args["content"])
        return f"File created successfully at: {args['file_path']}", False
    if name == "Bash" and "pytest" in args["command"]:
        return "1 passed in 0.01s", False
    if name == "Bash":
        return "[agents/1 abc123] committed", False
    return "shopcart/pricing.py\ntests/test_pricing.py", False


def test_the_offline_model_does_a_demo_task_through_claude_codes_tools(tmp_path):
    worktree = tmp_path / "wt"
    shutil.copytree(DEMO_SHOP, worktree)
    task = next(t for t in DEMO_TASKS if t["id"] == "fix-discount")
    messages = [
        {"role": "user", "content": [{"type": "text", "text": REMINDER}, {"type": "text", "text": task["title"]}]}
    ]
    names = []
    for _ in range(20):
        answer = sim_anthropic.decide(
            {"model": "sim/engineer", "messages": messages, "tools": TOOLS},
            worktree=str(worktree),
            model="sim/engineer",
        )
        messages.append({"role": "assistant", "content": answer.content})
        if answer.stop_reason == "end_turn":
            break
        (call,) = [b for b in answer.content if b["type"] == "tool_use"]
        names.append(call["name"])
        result, is_error = _run(call, worktree)
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call["id"], "content": result, "is_error": is_error}
                ],
            }
        )
    assert answer.stop_reason == "end_turn", names
    assert names[:4] == ["Bash", "Bash", "Read", "Edit"]  # ls -R, grep -rn, then the change
    assert names[-2:] == ["Bash", "Bash"]  # the tests, then the commit
    assert "round(price * (1 - percent / 100), 2)" in (worktree / "shopcart" / "pricing.py").read_text()
    commit = [b for m in messages for b in m["content"] if b.get("type") == "tool_use"][-1]["input"]["command"]
    assert commit.startswith("git add -A && git commit") and task["commit"] in commit
    summary = answer.content[0]["text"]
    assert task["title"] in summary and "the tests pass" in summary
    assert answer.tokens_in > 0 and answer.tokens_out > 0


def test_a_request_without_tools_gets_text_and_the_stream_is_well_formed():
    side = sim_anthropic.decide({"messages": [{"role": "user", "content": "title?"}]}, worktree="/w", model="sim/x")
    assert side.stop_reason == "end_turn" and side.content[0]["type"] == "text"
    answer = sim_anthropic.decide(
        {
            "messages": [{"role": "user", "content": "Add a TOTAL line to sales_summary"}],
            "tools": [*TOOLS, {"name": "Glob"}],
        },
        worktree="/w",
        model="sim/engineer",
    )
    events = [chunk.decode() for chunk in sim_anthropic.sse_events(answer, "msg_1")]
    kinds = [chunk.split("\n", 1)[0].removeprefix("event: ") for chunk in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    deltas = [json.loads(c.split("data: ", 1)[1]) for c in events if c.startswith("event: content_block_delta")]
    tool_input = json.loads(
        next(d["delta"]["partial_json"] for d in deltas if d["delta"]["type"] == "input_json_delta")
    )
    assert tool_input["path"] == "/w"  # Glob when offered, in the worktree, an absolute path
    first = sim_anthropic.decide(
        {**{"messages": [{"role": "user", "content": "x"}]}, "tools": TOOLS}, worktree="/w", model=""
    )
    command = first.content[1]["input"]["command"]
    assert command == "ls -R ." and sim_anthropic.to_policy("Bash", {"command": command}, "/w") == (
        "list_files",
        {"path": "."},
    )
    search = sim_anthropic.to_claude(sim._Call("search", {"pattern": "TODO", "path": "."}, ""), "/w", {"Bash", "Read"})
    assert sim_anthropic.to_policy(*search, "/w") == ("search", {"pattern": "TODO", "path": "."})


def test_an_approved_call_is_made_again():
    call = {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "touch y"}}
    messages = [
        {"role": "user", "content": "Goal"},
        {"role": "assistant", "content": [call]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "needs approval", "is_error": True}],
        },
        {"role": "user", "content": "A human approved this action you asked for: touch y. Run it again now."},
    ]
    replayed = sim_anthropic.policy_messages(messages, "/w")
    assert [m["role"] for m in replayed] == ["user", "user"]
    denied = sim_anthropic.policy_messages(messages[:3], "/w")
    assert denied[2] == {"role": "tool", "tool_call_id": "t1", "content": "error: needs approval"}
