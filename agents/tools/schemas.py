"""The tools an agent may call: their OpenAI schemas and the validation of a model's arguments.

Everything a model sends is untrusted input. ``parse_arguments`` turns it into a plain dict or raises
``ToolArgumentError`` with a message written for the model (it is shown to it verbatim), and never
raises anything else. Unknown fields are refused (a typo such as ``timeout`` for ``timeout_s``
would otherwise be silently ignored); the schemas say so with ``additionalProperties: false``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_RAW_BYTES = 2 * 1024 * 1024
MAX_CONTENT_BYTES = 1024 * 1024
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 600
HANDOFF_STATUSES = ("active", "blocked", "done", "stale")
HANDOFF_FILE = "HANDOFF.md"  # where write_handoff puts the note, in the worktree (also kept on the session)
MAX_DO_NOT_ITEMS = 50


class ToolArgumentError(ValueError):
    """The model's arguments for a tool are unusable; the message says why, for the model to read."""


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # "string" | "integer" | "string_list"
    required: bool
    description: str
    non_empty: bool = False
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class _Tool:
    name: str
    description: str
    fields: tuple[_Field, ...]


_PATH_HELP = 'Path relative to the repository root (the worktree), e.g. "src/app.py". Absolute paths, ".." escapes and .git are refused.'

_TOOLS: tuple[_Tool, ...] = (
    _Tool(
        "list_files",
        "List files and directories under a path of the repository, recursively (directories end with "
        '"/"; .git is skipped; at most about 500 entries, list a subdirectory for more).',
        (_Field("path", "string", True, 'Directory (or file) relative to the repository root; "." for the root.'),),
    ),
    _Tool(
        "read_file",
        "Read a text file of the repository (files over about 200 KB are truncated, with a note).",
        (_Field("path", "string", True, _PATH_HELP, non_empty=True),),
    ),
    _Tool(
        "search",
        "Search text files of the repository for a regular expression (Perl/Python syntax; an invalid "
        'regex is searched as plain text). Results are "path:line: text", capped.',
        (
            _Field(
                "pattern", "string", True, 'Regular expression to look for, e.g. "def \\\\w+_view".', non_empty=True
            ),
            _Field(
                "path",
                "string",
                False,
                "Directory or file to search, relative to the repository root (default: the whole repository).",
            ),
        ),
    ),
    _Tool(
        "write_file",
        "Create or overwrite a file with the given content (parent directories are created).",
        (
            _Field("path", "string", True, _PATH_HELP, non_empty=True),
            _Field("content", "string", True, "The complete new content of the file (at most 1 MB)."),
        ),
    ),
    _Tool(
        "edit_file",
        "Replace one exact occurrence of `old` with `new` in a file. `old` must occur exactly once: "
        "include enough surrounding lines to make it unique.",
        (
            _Field("path", "string", True, _PATH_HELP, non_empty=True),
            _Field(
                "old",
                "string",
                True,
                "The exact text to replace, including whitespace and indentation.",
                non_empty=True,
            ),
            _Field("new", "string", True, "The replacement text."),
        ),
    ),
    _Tool(
        "run_command",
        "Run a shell command (bash -c) in the repository root, in a sandbox: no network unless granted, "
        "nothing writable outside the repository, a timeout, output capped. Use it to run tests, linters, builds.",
        (
            _Field("command", "string", True, 'The shell command, e.g. "python -m pytest -q".', non_empty=True),
            _Field(
                "timeout_s",
                "integer",
                False,
                "Timeout in seconds (1-600; the operator's limit applies if lower).",
                minimum=MIN_TIMEOUT_S,
                maximum=MAX_TIMEOUT_S,
            ),
        ),
    ),
    _Tool(
        "git_commit",
        "Stage every change in the repository (git add -A) and commit it on your branch. The commit is "
        "signed with trailers naming the session, the person who delegated the work and the grant.",
        (
            _Field(
                "message",
                "string",
                True,
                "Commit message: a short summary line, optionally a blank line and details.",
                non_empty=True,
            ),
        ),
    ),
    _Tool(
        "write_handoff",
        "Write the handoff note (HANDOFF.md) that the next iteration starts from: status, the next "
        "action, and what not to do.",
        (
            _Field(
                "status",
                "string",
                True,
                "active: work continues; blocked: needs a human; done: goal met; stale: no longer relevant.",
                enum=HANDOFF_STATUSES,
            ),
            _Field("next_action", "string", True, "The single next thing to do, concretely."),
            _Field("goal", "string", False, "The goal being worked on, restated for the next iteration (optional)."),
            _Field("do_not", "string_list", True, "Things the next iteration must not do or retry (may be empty)."),
        ),
    ),
    _Tool(
        "finish",
        "Declare the goal met and stop. Commit your work first.",
        (
            _Field(
                "summary",
                "string",
                True,
                "What was done, for the human reviewer: changes, tests, open questions.",
                non_empty=True,
            ),
        ),
    ),
)

_BY_NAME = {tool.name: tool for tool in _TOOLS}
TOOL_NAMES: frozenset[str] = frozenset(_BY_NAME)


def _json_schema(field: _Field) -> dict:
    if field.kind == "string_list":
        schema: dict = {"type": "array", "items": {"type": "string"}, "maxItems": MAX_DO_NOT_ITEMS}
    else:
        schema = {"type": field.kind}
    if field.enum:
        schema["enum"] = list(field.enum)
    if field.minimum is not None:
        schema["minimum"] = field.minimum
    if field.maximum is not None:
        schema["maximum"] = field.maximum
    if field.non_empty:
        schema["minLength"] = 1
    schema["description"] = field.description
    return schema


TOOL_SCHEMAS: list[dict] = [
    {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": {
                "type": "object",
                "properties": {field.name: _json_schema(field) for field in tool.fields},
                "required": [field.name for field in tool.fields if field.required],
                "additionalProperties": False,
            },
        },
    }
    for tool in _TOOLS
]


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _check_text(tool: str, where: str, value: str) -> None:
    if "\x00" in value:
        raise ToolArgumentError(f"{tool}: {where} contains a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ToolArgumentError(f"{tool}: {where} is not valid Unicode (lone surrogate escape)") from None


def _decode(tool: str, raw: str | bytes | dict | None) -> dict:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_RAW_BYTES:
            raise ToolArgumentError(f"{tool}: arguments are too large ({len(raw):,} bytes; limit {MAX_RAW_BYTES:,})")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ToolArgumentError(f"{tool}: arguments are not valid UTF-8 (byte {exc.start})") from None
    if not isinstance(raw, str):
        raise ToolArgumentError(f"{tool}: arguments must be a JSON object, got {type(raw).__name__}")
    if len(raw) > MAX_RAW_BYTES or len(raw.encode("utf-8", errors="surrogatepass")) > MAX_RAW_BYTES:
        raise ToolArgumentError(f"{tool}: arguments are too large (over {MAX_RAW_BYTES:,} bytes)")
    if "\x00" in raw:
        raise ToolArgumentError(f"{tool}: arguments contain a NUL byte")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ToolArgumentError(f"{tool}: arguments are nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ToolArgumentError(f"{tool}: arguments are not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ToolArgumentError(
            f'{tool}: arguments must be a JSON object like {{"path": "..."}}, got {_json_type(value)}'
        )
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _validate(tool: _Tool, args: dict) -> dict:
    known = {field.name for field in tool.fields}
    for key in args:
        if not isinstance(key, str):
            raise ToolArgumentError(f"{tool.name}: field names must be strings")
        _check_text(tool.name, "a field name", key)
    unknown = sorted(key for key in args if key not in known)
    if unknown:
        expected = ", ".join(field.name for field in tool.fields)
        raise ToolArgumentError(f'{tool.name}: unknown field "{unknown[0]}" (expected: {expected})')
    clean: dict = {}
    for field in tool.fields:
        if field.name not in args or (args[field.name] is None and not field.required):
            if field.required:
                raise ToolArgumentError(f'{tool.name}: missing required field "{field.name}"')
            continue
        value = args[field.name]
        label = f'"{field.name}"'
        if field.kind == "string":
            if not isinstance(value, str):
                raise ToolArgumentError(f"{tool.name}: {label} must be a string, got {_json_type(value)}")
            _check_text(tool.name, label, value)
            if field.non_empty and not value.strip():
                raise ToolArgumentError(f"{tool.name}: {label} must not be empty")
            if field.enum and value not in field.enum:
                raise ToolArgumentError(
                    f"{tool.name}: {label} must be one of {', '.join(field.enum)}; got {value[:40]!r}"
                )
        elif field.kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ToolArgumentError(f"{tool.name}: {label} must be an integer, got {_json_type(value)}")
            if (field.minimum is not None and value < field.minimum) or (
                field.maximum is not None and value > field.maximum
            ):
                raise ToolArgumentError(
                    f"{tool.name}: {label} must be between {field.minimum} and {field.maximum}, got {value}"
                )
        elif field.kind == "string_list":
            if not isinstance(value, list):
                raise ToolArgumentError(f"{tool.name}: {label} must be an array of strings, got {_json_type(value)}")
            if len(value) > MAX_DO_NOT_ITEMS:
                raise ToolArgumentError(f"{tool.name}: {label} has {len(value)} items; at most {MAX_DO_NOT_ITEMS}")
            for index, item in enumerate(value):
                if not isinstance(item, str):
                    raise ToolArgumentError(f"{tool.name}: {label}[{index}] must be a string, got {_json_type(item)}")
                _check_text(tool.name, f"{label}[{index}]", item)
            value = list(value)
        clean[field.name] = value
    size = sum(len(v.encode("utf-8")) for v in clean.values() if isinstance(v, str))
    size += sum(len(item.encode("utf-8")) for v in clean.values() if isinstance(v, list) for item in v)
    if size > MAX_RAW_BYTES:
        raise ToolArgumentError(f"{tool.name}: arguments are too large ({size:,} bytes; limit {MAX_RAW_BYTES:,})")
    content = clean.get("content")
    if isinstance(content, str) and len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise ToolArgumentError(
            f'{tool.name}: "content" is too large ({len(content.encode("utf-8")):,} bytes; limit {MAX_CONTENT_BYTES:,}); '
            "write the file in smaller pieces or generate it with a command"
        )
    return clean


def parse_arguments(name: str, raw: str | bytes | dict | None) -> dict:
    """Validated arguments for tool ``name`` from what the model sent (JSON text, bytes, a dict or
    nothing). Raises ``ToolArgumentError`` (only) with a message meant for the model."""
    if not isinstance(name, str) or name not in _BY_NAME:
        shown = name[:60] if isinstance(name, str) else type(name).__name__
        raise ToolArgumentError(f'unknown tool "{shown}"; available tools: {", ".join(sorted(TOOL_NAMES))}')
    tool = _BY_NAME[name]
    try:
        return _validate(tool, _decode(name, raw))
    except ToolArgumentError:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:  # a malformed value we did not foresee
        raise ToolArgumentError(f"{name}: unusable arguments ({type(exc).__name__}: {str(exc)[:200]})") from None
