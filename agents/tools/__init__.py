"""The agent's tools: OpenAI schemas, argument validation, path confinement, execution.

Pure of Django and the database (plain values in, a ``ToolResult`` out), so the runtime can call it
from a Celery task. See ``schemas`` (what the model may send), ``paths`` (where it may touch) and
``executor`` (what each tool does).
"""

from agents.tools.executor import ToolResult, agent_env, commit_message, execute, format_trailers
from agents.tools.paths import PathEscapeError, resolve_path
from agents.tools.schemas import TOOL_NAMES, TOOL_SCHEMAS, ToolArgumentError, parse_arguments

__all__ = [
    "TOOL_NAMES",
    "TOOL_SCHEMAS",
    "PathEscapeError",
    "ToolArgumentError",
    "ToolResult",
    "agent_env",
    "commit_message",
    "execute",
    "format_trailers",
    "parse_arguments",
    "resolve_path",
]
