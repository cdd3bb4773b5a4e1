"""Shell parsing: a command string becomes simple commands, wrappers unwrapped (bashlex).

Independent of the worktree and of what any command does: :class:`_ShellParser` walks bashlex's
tree, quote-removes words the way bash does, unwraps ``env``, ``nice``, ``timeout``, ``xargs``,
``sh -c`` ... and records, in ``unknown``, every construct it cannot see through (substitutions,
parameter expansion, subshells, loops, here-documents, ``eval`` ...). What each resulting command
touches is :mod:`agents.permissions.effects`' business.
"""

from __future__ import annotations

import glob as _glob
import posixpath
import re
from dataclasses import dataclass, field

import bashlex

MAX_COMMAND_CHARS = 20_000  # longer commands are not analysed (UNKNOWN)
MAX_NESTING = 4  # sh -c "sh -c '...'" depth


class _HomePath(str):
    """A shell word that started with an unquoted ``~``: the shell puts it in a home directory."""


_STDIO = "-"  # a file argument naming standard input or output


@dataclass(frozen=True)
class _Word:
    text: str  # after quote removal
    pattern: str | None = None  # glob pattern (quoted parts escaped) when the word has unquoted * ? [...]
    home: bool = False  # starts with an unquoted ~


@dataclass
class _Cmd:
    """One simple command after unwrapping, with what the wrappers and redirections added."""

    words: list[_Word]
    redirects: list[tuple[str, _Word]] = field(default_factory=list)
    chdirs: list[_Word] = field(default_factory=list)  # env -C DIR
    extra_reads: list[_Word] = field(default_factory=list)  # xargs -a FILE
    extra_edits: list[_Word] = field(default_factory=list)  # time -o FILE
    xargs: bool = False  # arguments also come from stdin
    isolated: bool = False  # runs in a subshell (its cd does not last)


class _Unparsable(Exception):
    pass


_BRACE_RE = re.compile(r"\{[^{}]*?(?:,|\.\.)[^{}]*?\}")
_ASSIGN_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*=")


def _scan_word(source: str) -> tuple[str, str | None, bool]:
    """Quote-remove a word's source text like bash does.

    Returns the text, a glob pattern when unquoted ``*``, ``?`` or ``[...]`` occur (with the
    quoted parts escaped), and whether an unquoted brace expansion (``{a,b}``, ``{1..3}``) occurs.
    """
    text: list[str] = []
    pattern: list[str] = []
    shape: list[str] = []  # unquoted characters as they are, quoted ones as NUL

    def quoted(chars: str) -> None:
        text.append(chars)
        pattern.append(_glob.escape(chars))
        shape.append("\0" * len(chars))

    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            if i + 1 < n:
                if source[i + 1] != "\n":
                    quoted(source[i + 1])
                i += 2
            else:
                quoted("\\")
                i += 1
        elif c == "'":
            end = source.find("'", i + 1)
            if end < 0:
                raise _Unparsable("unterminated single quote")
            quoted(source[i + 1 : end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise _Unparsable("unterminated double quote")
                d = source[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and source[i + 1] in '$`"\\\n':
                    if source[i + 1] != "\n":
                        quoted(source[i + 1])
                    i += 2
                    continue
                quoted(d)
                i += 1
        else:
            text.append(c)
            pattern.append(c)
            shape.append(c)
            i += 1
    flat = "".join(shape)
    has_glob = "*" in flat or "?" in flat or re.search(r"\[.*\]", flat) is not None
    return "".join(text), ("".join(pattern) if has_glob else None), _BRACE_RE.search(flat) is not None


_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash"})
_OPAQUE_COMMANDS = {
    "exec": "exec replaces the shell",
    "eval": "eval runs a string as shell code",
    "source": "source runs a file as shell code",
    ".": ". runs a file as shell code",
    "sudo": "sudo runs a command as another user",
    "doas": "doas runs a command as another user",
    "su": "su runs a command as another user",
    "trap": "trap runs shell code later",
    "builtin": "builtin bypasses command lookup",
    "alias": "alias redefines commands",
    "enable": "enable redefines builtins",
    "shopt": "shopt changes how the shell expands words",
    "coproc": "coproc runs a background command",
    "watch": "watch runs a string as shell code",
    "script": "script runs a shell",
    "parallel": "parallel builds commands from its input",
    "chroot": "chroot changes the root directory",
    "nsenter": "nsenter enters other namespaces",
    "unshare": "unshare runs a command in new namespaces",
    "pushd": "pushd changes the directory stack",
    "popd": "popd changes the directory stack",
    "patch": "patch edits files named inside the patch",
    "unzip": "unzip writes files named inside the archive",
    "vi": "an interactive editor",
    "vim": "an interactive editor",
    "nvim": "an interactive editor",
    "view": "an interactive editor",
    "nano": "an interactive editor",
    "emacs": "an interactive editor",
    "pico": "an interactive editor",
    "ed": "a line editor reading commands",
    "ex": "a line editor reading commands",
    "tmux": "a terminal multiplexer",
    "screen": "a terminal multiplexer",
    "sftp": "sftp reads transfer commands from its input",
    "ftp": "ftp reads transfer commands from its input",
}


class _ShellParser:
    """Turns a command string into simple commands; records why it may be UNKNOWN."""

    def __init__(self) -> None:
        self.commands: list[_Cmd] = []
        self.unknown: list[str] = []
        self._isolated = 0  # > 0 inside subshells, pipelines, substitutions, nested shells

    def _isolated_node(self, node, source: str, depth: int) -> None:
        self._isolated += 1
        try:
            self._node(node, source, depth)
        finally:
            self._isolated -= 1

    def unk(self, reason: str) -> None:
        if reason not in self.unknown:
            self.unknown.append(reason)

    def parse(self, command: str, depth: int = 0) -> None:
        if depth > MAX_NESTING:
            self.unk("shell commands are nested too deeply")
            return
        if len(command) > MAX_COMMAND_CHARS:
            self.unk(f"the command is longer than {MAX_COMMAND_CHARS} characters")
            return
        if not command.strip():
            return
        try:
            trees = bashlex.parse(command)
        except Exception as exc:  # bashlex raises many types; all mean "cannot see through"
            self.unk(f"the shell syntax could not be analysed ({_short_error(exc)})")
            return
        for tree in trees:
            self._node(tree, command, depth)

    # -- tree walking -------------------------------------------------------------------------

    def _node(self, node, source: str, depth: int) -> None:
        kind = getattr(node, "kind", None)
        if kind == "list":
            for part in node.parts:
                if part.kind == "operator":
                    if part.op == "&":
                        self.unk("a background job (&) outlives the tool call")
                    continue
                self._node(part, source, depth)
        elif kind == "pipeline":
            parts = [part for part in node.parts if part.kind not in ("pipe", "reservedword")]
            for part in parts:
                if len(parts) > 1:
                    self._isolated_node(part, source, depth)  # each element runs in a subshell
                else:
                    self._node(part, source, depth)
        elif kind == "command":
            self._command(node, source, depth)
        elif kind == "compound":
            first = node.list[0] if node.list else None
            opener = getattr(first, "word", "")
            self.unk({"{": "a brace group { ...; }", "(": "a subshell ( ... )"}.get(opener, "a compound command"))
            for part in node.list:
                self._isolated_node(part, source, depth)
            redirects: list[tuple[str, _Word]] = []
            self._redirects(getattr(node, "redirects", []) or [], source, depth, redirects)
            if redirects:
                self.commands.append(_Cmd(words=[], redirects=redirects))
        elif kind in ("if", "for", "while", "until", "function"):
            self.unk({"function": "a function definition"}.get(kind, f"a shell {kind} statement"))
            for part in node.parts:
                self._isolated_node(part, source, depth)
        elif kind == "word":
            self._word(node, source, depth)
        elif kind in ("reservedword", "operator", "pipe"):
            return
        else:
            self.unk(f"an unsupported shell construct ({kind})")
            for part in getattr(node, "parts", []) or []:
                self._node(part, source, depth)

    def _word(self, node, source: str, depth: int, *, in_assignment: bool = False) -> _Word:
        for part in getattr(node, "parts", []) or []:
            if part.kind == "parameter" and not in_assignment:
                self.unk(f"parameter expansion in {node.word!r}")
            elif part.kind == "commandsubstitution":
                self.unk("command substitution")
                self._isolated_node(part.command, source, depth)
            elif part.kind == "processsubstitution":
                self.unk("process substitution")
                self._isolated_node(part.command, source, depth)
        start, end = node.pos
        try:
            text, pattern, brace = _scan_word(source[start:end])
        except _Unparsable as exc:
            self.unk(f"unusual quoting ({exc})")
            return _Word(node.word)
        if text != node.word:
            self.unk(f"unusual quoting in {node.word!r}")
            text, pattern = node.word, None
        if brace:
            self.unk(f"brace expansion in {text!r}")
        return _Word(text, pattern, source[start:end].startswith("~"))

    def _redirects(self, nodes, source: str, depth: int, out: list[tuple[str, _Word]]) -> None:
        for node in nodes:
            op = node.type
            if op in ("<<", "<<-"):
                self.unk("a here-document")
                continue
            target = node.output
            if not hasattr(target, "kind"):
                continue  # 2>&1: a file descriptor, not a file
            word = self._word(target, source, depth)
            if op in (">&", "<&") and (word.text.isdigit() or word.text == "-"):
                continue
            out.append((op, word))

    def _command(self, node, source: str, depth: int) -> None:
        words: list[_Word] = []
        redirects: list[tuple[str, _Word]] = []
        for part in node.parts:
            if part.kind == "assignment":
                word = self._word(part, source, depth, in_assignment=not words)
                if words:
                    words.append(word)
            elif part.kind == "word":
                words.append(self._word(part, source, depth))
            elif part.kind == "redirect":
                self._redirects([part], source, depth, redirects)
            else:
                self.unk(f"an unsupported shell construct ({part.kind})")
        self._unwrap(_Cmd(words=words, redirects=redirects, isolated=self._isolated > 0), depth)

    # -- unwrapping ---------------------------------------------------------------------------

    def _unwrap(self, cmd: _Cmd, depth: int) -> None:
        """Strip wrappers (env, nice, timeout, nohup, stdbuf, command, time, xargs, sh -c)."""
        while cmd.words:
            first = cmd.words[0]
            if first.pattern is not None:
                self.unk(f"a glob in the command name {first.text!r}")
                break
            if not first.text:
                self.unk("an empty command name")
                break
            name = posixpath.basename(first.text)
            args = cmd.words[1:]
            if name in _OPAQUE_COMMANDS:
                self.unk(_OPAQUE_COMMANDS[name])
                break
            if name == "env":
                rest = self._unwrap_env(args, cmd)
            elif name == "nice":
                rest = _skip_options(args, values={"-n", "--adjustment"}, numeric=True)
            elif name == "timeout":
                rest = _skip_options(args, values={"-s", "--signal", "-k", "--kill-after"})
                rest = (rest[1:] or None) if rest else None  # drop the duration
            elif name in ("nohup", "setsid"):
                rest = _skip_options(args, values=set())
            elif name == "stdbuf":
                rest = _skip_options(args, values={"-i", "-o", "-e", "--input", "--output", "--error"})
            elif name == "command":
                if any(w.text in ("-v", "-V") for w in args[:2]):
                    break
                rest = _skip_options(args, values=set())
            elif name == "time":
                rest = self._unwrap_time(args, cmd)
            elif name == "xargs":
                rest = self._unwrap_xargs(args, cmd)
            elif name in _SHELLS:
                if self._unwrap_shell(name, args, cmd, depth):
                    return
                break
            else:
                break
            if rest is None:  # the wrapper itself is the command (e.g. `env` alone prints the environment)
                break
            cmd.words = rest
        self.commands.append(cmd)

    def _unwrap_env(self, args: list[_Word], cmd: _Cmd) -> list[_Word] | None:
        i = 0
        while i < len(args):
            a = args[i].text
            if a == "--":
                i += 1
                break
            if a in ("-", "-i", "--ignore-environment", "-0", "--null", "-v", "--debug"):
                i += 1
            elif a in ("-u", "--unset"):
                i += 2
            elif a.startswith("--unset=") or (a.startswith("-u") and len(a) > 2):
                i += 1
            elif a in ("-C", "--chdir"):
                if i + 1 < len(args):
                    cmd.chdirs.append(args[i + 1])
                i += 2
            elif a.startswith("--chdir="):
                cmd.chdirs.append(_Word(a.split("=", 1)[1]))
                i += 1
            elif a.startswith("-C") and len(a) > 2:
                cmd.chdirs.append(_Word(a[2:]))
                i += 1
            elif a.startswith(("-S", "--split-string")):
                self.unk("env -S splits a string into a command")
                return None
            elif a.startswith("-") and len(a) > 1 and set(a[1:]) <= set("i0v"):
                i += 1
            elif a.startswith("-") and len(a) > 1:
                self.unk(f"an unknown env option {a!r}")
                return None
            else:
                break
        while i < len(args) and _ASSIGN_RE.match(args[i].text):
            i += 1
        return args[i:] or None

    def _unwrap_time(self, args: list[_Word], cmd: _Cmd) -> list[_Word] | None:
        i = 0
        while i < len(args):
            a = args[i].text
            if a == "--":
                i += 1
                break
            if a in ("-o", "--output", "-f", "--format"):
                if a in ("-o", "--output") and i + 1 < len(args):
                    cmd.extra_edits.append(args[i + 1])
                i += 2
            elif a.startswith("--output="):
                cmd.extra_edits.append(_Word(a.split("=", 1)[1]))
                i += 1
            elif a.startswith("-") and len(a) > 1:
                i += 1
            else:
                break
        return args[i:] or None

    def _unwrap_xargs(self, args: list[_Word], cmd: _Cmd) -> list[_Word]:
        short_values, optional = "nLIdEsPa", "ile"
        long_values = {
            "--max-args",
            "--max-lines",
            "--delimiter",
            "--max-chars",
            "--max-procs",
            "--arg-file",
            "--process-slot-var",
        }
        i = 0
        while i < len(args):
            a = args[i].text
            if a == "--":
                i += 1
                break
            if a.startswith("--"):
                name, eq, value = a.partition("=")
                if name == "--arg-file":
                    file_word = _Word(value) if eq else (args[i + 1] if i + 1 < len(args) else None)
                    if file_word is not None:
                        cmd.extra_reads.append(file_word)
                i += 2 if (name in long_values and not eq) else 1
                continue
            if a.startswith("-") and len(a) > 1:
                j, consumed_next = 1, False
                while j < len(a):
                    c = a[j]
                    if c in short_values:
                        value = a[j + 1 :]
                        if not value and i + 1 < len(args):
                            value, consumed_next = args[i + 1].text, True
                        if c == "a" and value:
                            cmd.extra_reads.append(_Word(value))
                        break
                    if c in optional:
                        break
                    j += 1
                i += 2 if consumed_next else 1
                continue
            break
        cmd.xargs = True
        return args[i:] or [_Word("echo")]

    def _unwrap_shell(self, name: str, args: list[_Word], cmd: _Cmd, depth: int) -> bool:
        """`sh -c STRING` is parsed recursively (returns True); `sh script` stays a command."""
        inline, i = False, 0
        while i < len(args):
            a = args[i].text
            if a in ("--", "-"):
                i += 1
                break
            if a in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
                i += 2
            elif a.startswith("--"):
                i += 1
            elif a[:1] in ("-", "+") and len(a) > 1:
                letters = a[1:]
                if "c" in letters:
                    inline = True
                if "s" in letters or "i" in letters:
                    self.unk(f"{name} {a} reads commands from standard input")
                i += 1
            else:
                break
        positional = args[i:]
        if inline:
            if not positional:
                self.unk(f"{name} -c without a command")
                return True
            if cmd.xargs:
                self.unk(f"xargs passes arguments that are not visible to {name} -c")
            if cmd.redirects or cmd.extra_reads or cmd.extra_edits:
                # the wrapper's own redirections apply to everything inside
                self.commands.append(
                    _Cmd(
                        words=[],
                        redirects=cmd.redirects,
                        chdirs=list(cmd.chdirs),
                        extra_reads=cmd.extra_reads,
                        extra_edits=cmd.extra_edits,
                    )
                )
            before = len(self.commands)
            self._isolated += 1  # a new shell: its `cd` does not move this one
            try:
                self.parse(positional[0].text, depth + 1)
            finally:
                self._isolated -= 1
            for sub in self.commands[before:]:
                sub.chdirs = cmd.chdirs + sub.chdirs
            return True
        if not positional:
            self.unk(f"{name} reads commands from standard input")
        return False


def _skip_options(args: list[_Word], *, values: set[str], numeric: bool = False) -> list[_Word] | None:
    """Skip a wrapper's options (those in ``values`` take a separate argument unless attached)."""
    i = 0
    while i < len(args):
        a = args[i].text
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        takes_next = a in values and not (numeric and re.fullmatch(r"--?\d+", a))
        i += 2 if takes_next else 1
    return args[i:] or None


def _short_error(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = message[:120]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
