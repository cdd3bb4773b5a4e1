"""Confine every path a model names to its worktree."""

from __future__ import annotations

import os
from pathlib import Path


class PathEscapeError(ValueError):
    """A path that leaves the worktree (absolute, "..", a symlink pointing out) or enters .git."""


def _is_git_component(part: str) -> bool:
    # Case-folded: git itself treats ".GIT" as ".git" on case-insensitive file systems.
    return part.casefold() == ".git"


def resolve_path(worktree: Path, path: str) -> Path:
    """The absolute, symlink-free path that ``path`` (relative to the worktree) names.

    Refused with ``PathEscapeError``: absolute paths, paths that resolve outside the worktree
    (through ".." or a symlink anywhere along the way, dangling ones included), and anything inside
    a ``.git`` file or directory. "" and "." name the worktree itself.
    """
    if not isinstance(path, str):
        raise PathEscapeError(f"path must be a string, got {type(path).__name__}")
    if "\x00" in path:
        raise PathEscapeError("path contains a NUL byte")
    if path.startswith("/") or path == "~" or path.startswith("~/"):
        raise PathEscapeError(f"{path!r}: absolute paths are not allowed; use a path relative to the repository root")
    root = Path(os.path.realpath(worktree))
    if any(_is_git_component(part) for part in Path(path).parts):
        raise PathEscapeError(f"{path!r}: the .git directory is off limits; use git_commit to commit")
    # realpath follows every symlink it can, including a dangling last one, so a link to a file that
    # does not exist yet outside the worktree is caught too.
    resolved = Path(os.path.realpath(root / path))
    if resolved != root and root not in resolved.parents:
        raise PathEscapeError(f"{path!r} points outside the repository")
    relative = resolved.relative_to(root)
    if any(_is_git_component(part) for part in relative.parts):
        raise PathEscapeError(f"{path!r}: the .git directory is off limits; use git_commit to commit")
    return resolved


def display_path(worktree: Path, resolved: Path) -> str:
    """How a resolved path is shown to the model: relative to the worktree root, "." for the root."""
    root = Path(os.path.realpath(worktree))
    return resolved.relative_to(root).as_posix()
