"""The permission evaluator: may this one agent tool call run under this delegated grant?

This module is pure. It reads no database, opens no socket and changes nothing: the caller
hands in the tool call and an :class:`EvalContext` (the grant, kill switches, budget state,
the human approvals that apply) and gets a :class:`Decision` back. The only outside world it
looks at is the file system of the worktree, read-only, to resolve symlinks
(``os.path.realpath``), to expand shell globs the way the shell would and to know which
arguments name existing files.

It fails closed: :func:`evaluate` never raises. Anything unexpected inside becomes a ``deny``
with ``reason_type="error"``; anything it cannot see through (a shell construct it does not
model, inline interpreter code) becomes at best an ``ask``.

Evaluation order (:func:`evaluate`); the first step that decides wins:

1. **Canonicalise** the call (:func:`canonicalize`) into resources such as ``Read(src/a.py)``,
   ``Edit(src/a.py)``, ``Bash(git push)``, ``Git(commit)``, ``Net(pypi.org)``, ``Meta``.
   Paths are resolved against the worktree following symlinks; shell commands are parsed into
   simple commands, wrappers (``nice``, ``env``, ``sh -c`` ...) are unwrapped, and the files and
   hosts the known commands touch become resources of their own. Errors -> deny ``error``.
2. **Global stops**: no grant -> deny ``revoked``; fleet stopped, pod paused or session stopped
   -> deny ``guard``; grant revoked -> deny ``revoked``; outside the grant window -> deny
   ``expired``; delegator no longer active -> deny ``revoked``. These also stop ``finish``.
3. **Outside the worktree** (absolute paths, ``..``, symlinks leading out) -> deny ``guard``.
   **Deny rules**: if any resource matches any deny rule -> deny ``rule``. Nothing overrides
   this, not even a human's allow-once.
4. **Budget** exhausted -> deny ``budget`` for everything but ``finish`` and ``write_handoff``.
5. **Human approval**: the action's hash is among ``approved_action_hashes`` -> allow ``human``.
6. **Ask rules** matching any resource -> ask ``rule``.
7. **Mode and allow rules**, per resource: an allow rule covers it, else the mode's default.
   A resource the mode denies -> deny ``mode`` (``plan`` is read only). Then the guards, which
   ask even where rules or the mode would allow: a command that cannot be analysed, an edit of a
   protected path (:data:`PROTECTED_PATTERNS`) or a read of ``.env*``, and network access that
   no ``Net(...)`` allow rule covers -> ask ``guard``. Then any resource the mode asks about ->
   ask ``mode``. Otherwise allow: ``rule`` when an allow rule was needed, else ``mode``.
   ``finish`` and ``write_handoff`` (``Meta``) are allowed.

Mode defaults: ``plan`` allows reads and denies everything else; ``ask`` allows reads and asks
for everything else; ``edits`` allows reads and edits and asks for commands, commits and
network; ``autonomous`` allows everything (network still needs a ``Net`` allow rule). Without a
sandbox (``sandbox_available=False``) commands are at most ``ask`` by default, in every mode.

Rule syntax (``Tool(specifier)``): ``Read(glob)``, ``Edit(glob)``, ``Bash(command pattern)``,
``Git(commit)`` or ``Git(*)``, ``Net(host)`` / ``Net(*.example.com)`` / ``Net(*)``. Globs match
worktree-relative POSIX paths: ``*`` and ``?`` stay within one directory, ``**`` crosses
directories, ``**/`` matches zero or more directories and a trailing ``/**`` also matches the
directory itself. Bash patterns match the command line (argv joined by single spaces): ``*``
matches anything and a trailing `` *`` also matches no arguments at all.

Where this is stricter than a plain reading of the rules, deliberately (fail closed):

* In ``plan`` mode a resource the mode denies is denied even if a guard would have asked: a human
  is not woken up for something plan mode forbids anyway. Explicit ask rules still ask.
* ``edit_file`` is also a ``Read`` (whether ``old`` matched tells the agent what the file holds);
  ``mv``, ``cp`` and ``ln`` sources are reads; ``git commit`` typed in a shell is ``Git(commit)``.
* UNKNOWN also covers parameter expansion anywhere (``git $X``), brace expansion, background
  jobs (``&``), ``xargs``/``find -exec`` feeding files to a command that reads, writes or talks to
  the network, ``git -c``, ``sed`` scripts with ``e``/``w``/``r``, ``awk`` programs calling
  ``system``/``getline``/pipes/redirections, ``tar -x``, ``patch``, ``git apply`` and the like.
* Commands that act on whole trees (``rm -r``, ``cp -r``, ``mv``, ``chmod -R``, ``grep -r``, ``rg``,
  ``find -delete``, ``tar c``, ``rsync``, ``git clean``...) are listed in
  :attr:`CanonicalAction.recursive`; deny and ask rules and protected paths are also checked
  against what exists below them (``grep -r KEY .`` reads ``.env``).
* Unquoted globs are expanded against the worktree as the shell would (``cat .e*`` reads ``.env``).

Known limits (the sandbox, not this module, is the containment boundary):

* The ``search`` and ``list_files`` tools are checked against their directory, not every file
  below it; the tools themselves should skip paths a deny rule covers (see :func:`path_denied`).
* Bash rules match command names: a different program doing the same thing (``gh``, ``hub``,
  ``git send-pack`` instead of ``git push``) needs its own rule. Git commands that restore tracked
  content (``reset --hard``, ``stash``, switching branches) are not checked against Edit rules.
* ``git push origin`` names no host: the remote's URL lives in git's configuration.
* Files are resolved at evaluation time; a symlink swapped afterwards is the executor's problem
  (open with ``O_NOFOLLOW`` or re-check).
* Arguments of commands this module does not model are only inspected for existing files inside
  the worktree (so ``python dump.py .env`` is seen as reading ``.env``); what a program does with
  them, or which other files it opens, is not visible.

Layout (each module imports only those above it; this package re-exports the public API):

* :mod:`~agents.permissions.rules`: the rule grammar (:func:`parse_rule`, :func:`validate_rules`),
  :class:`Resource`, glob/Bash/host matching, :func:`exact_rule`, :func:`path_denied` and the
  protected paths.
* :mod:`~agents.permissions.shell`: the shell parser over bashlex (words, wrappers, ``sh -c``).
* :mod:`~agents.permissions.effects`: per-command models, one table of them (``_HANDLERS``), and
  :func:`split_command`.
* :mod:`~agents.permissions.canonical`: a tool call as resources against the worktree
  (:func:`canonicalize`, :class:`CanonicalAction`).
* :mod:`~agents.permissions.evaluation`: :class:`EvalContext`, :class:`Decision`, the mode
  defaults and :func:`evaluate`.
"""

from __future__ import annotations

from agents.permissions.canonical import TOOLS, CanonicalAction, canonicalize
from agents.permissions.effects import split_command
from agents.permissions.evaluation import MODES, Decision, EvalContext, GrantView, evaluate
from agents.permissions.rules import (
    PROTECTED_PATTERNS,
    RULE_KINDS,
    Resource,
    Rule,
    RuleError,
    exact_rule,
    parse_rule,
    path_denied,
    validate_rules,
)

__all__ = [
    "MODES",
    "PROTECTED_PATTERNS",
    "RULE_KINDS",
    "TOOLS",
    "CanonicalAction",
    "Decision",
    "EvalContext",
    "GrantView",
    "Resource",
    "Rule",
    "RuleError",
    "canonicalize",
    "evaluate",
    "exact_rule",
    "parse_rule",
    "path_denied",
    "split_command",
    "validate_rules",
]
