"""Command effects: what each known command reads, edits, which hosts it contacts, which git
operations it is, and when it cannot be seen through.

One model per command family (``cat``/``head``..., ``grep``/``rg``, ``sed``, ``awk``, ``find``,
``cp``/``mv``, ``tar``, ``curl``, ``wget``, ``ssh``/``scp``/``rsync``, ``git``, ``pip``, ``npm``,
interpreters ...), all in one table, :data:`_HANDLERS`; a command not in it is :func:`_generic`
(its arguments that name existing files count as read). A model sees the argv (globs already
expanded) and a small file-system view (``exists``/``isdir`` relative to the command's working
directory) and fills an :class:`_Effects`; paths stay as written; resolving them against the
worktree is :mod:`agents.permissions.canonical`'s job.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agents.permissions.rules import _HOST_RE
from agents.permissions.shell import _ASSIGN_RE, _SHELLS, _STDIO, _HomePath, _ShellParser

MAX_GENERIC_ARGS = 256  # arguments of unmodelled commands inspected for file names


@dataclass
class _Effects:
    reads: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)
    rreads: list[str] = field(default_factory=list)  # read with everything below
    redits: list[str] = field(default_factory=list)  # edited with everything below
    hosts: list[str] = field(default_factory=list)
    git: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    aliases: list[list[str]] = field(default_factory=list)  # other spellings matched against Bash rules
    unmodelled: list[list[str]] = field(default_factory=list)  # argv of programs run without a model

    def unk(self, reason: str) -> None:
        if reason not in self.unknown:
            self.unknown.append(reason)

    def host(self, token: str, *, bare: bool = False) -> bool:
        """Record the host a network location names; False when the token is a local path."""
        host, problem = _remote_host(token, bare=bare)
        if problem:
            self.unk(problem)
            return True
        if host:
            self.hosts.append(host)
            return True
        return False


class _NullFs:
    """Used when only the words matter (split_command)."""

    def exists(self, path: str) -> bool:
        return False

    def isdir(self, path: str) -> bool:
        return False


def _getopt(
    args: list[str],
    *,
    short: str = "",
    long: Iterable[str] = (),
    optional: str = "",
    permute: bool = True,
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """A small GNU-style option parser.

    ``short`` lists the short options taking a value (attached or next word), ``optional`` the
    short options whose value can only be attached, ``long`` the long options taking a value
    (``--name=value`` or ``--name value``; unambiguous prefixes count). Returns (options,
    positionals); an option without value has value None.
    """
    long_values = frozenset(long)
    options: list[tuple[str, str | None]] = []
    positionals: list[str] = []
    value: str | None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            positionals.extend(args[i + 1 :])
            break
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            if eq:
                options.append((_long_name(name, long_values), value))
            elif _takes_value(name, long_values):
                options.append((_long_name(name, long_values), args[i + 1] if i + 1 < len(args) else None))
                i += 1
            else:
                options.append((name, None))
        elif a.startswith("-") and a != "-":
            j = 1
            while j < len(a):
                c = a[j]
                if c in short:
                    value = a[j + 1 :]
                    if not value:
                        value = args[i + 1] if i + 1 < len(args) else None
                        i += 1
                    options.append(("-" + c, value))
                    break
                if c in optional:
                    options.append(("-" + c, a[j + 1 :]))
                    break
                options.append(("-" + c, None))
                j += 1
        else:
            if not permute:
                positionals.extend(args[i:])
                break
            positionals.append(a)
        i += 1
    return options, positionals


def _takes_value(name: str, long_values: frozenset[str]) -> bool:
    if name in long_values:
        return True
    matches = [option for option in long_values if option.startswith(name)]
    return len(name) > 3 and len(matches) == 1


def _long_name(name: str, long_values: frozenset[str]) -> str:
    if name in long_values:
        return name
    matches = [option for option in long_values if option.startswith(name)]
    return matches[0] if len(name) > 3 and len(matches) == 1 else name


def _values(options: list[tuple[str, str | None]], *names: str) -> list[str]:
    return [value for name, value in options if name in names and value is not None]


def _has(options: list[tuple[str, str | None]], *names: str) -> bool:
    return any(name in names for name, _ in options)


_SCHEME_RE = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORT_RE = re.compile(r"\A[A-Za-z][A-Za-z0-9+.-]*::")
_SCP_RE = re.compile(r"\A(?:[^@/:\s]+@)?(\[[0-9A-Fa-f:.]+\]|[^@/:\s\[\]]+):")


def _remote_host(token: str, *, bare: bool = False) -> tuple[str | None, str | None]:
    """(host, None) for a network location, (None, None) for a local path, (None, problem) when unclear."""
    t = token.strip()
    if not t:
        return None, None
    if _TRANSPORT_RE.match(t) and not _SCHEME_RE.match(t):
        return None, f"the remote {token!r} goes through a git remote helper"
    scheme = _SCHEME_RE.match(t)
    if scheme:
        if scheme.group(1).lower() == "file":
            return None, None
        return _checked_host(_hostname("" + t), token)
    if bare:
        return _checked_host(_hostname("//" + t), token)
    if t.startswith(("/", ".", "~")):
        return None, None
    scp = _SCP_RE.match(t)
    if scp:
        return _checked_host(scp.group(1).strip("[]"), token)
    return None, None


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _checked_host(host: str | None, token: str) -> tuple[str | None, str | None]:
    host = (host or "").lower().rstrip(".")
    if not host or not _HOST_RE.match(host):
        return None, f"cannot tell which host {token!r} contacts"
    return host, None


# -- readers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileTool:
    short: str = ""  # short options taking a value
    long: frozenset[str] = frozenset()  # long options taking a value
    optional: str = ""  # short options with an optional attached value
    reads: frozenset[str] = frozenset()  # options whose value is a file read
    edits: frozenset[str] = frozenset()  # options whose value is a file written
    opaque: frozenset[str] = frozenset()  # options that make the command UNKNOWN
    default_dot: bool = False  # no file argument means the current directory
    recursive: frozenset[str] = frozenset()  # options that make the file arguments recursive


def _fs(*names: str) -> frozenset[str]:
    return frozenset(names)


_READERS: dict[str, _FileTool] = {
    "cat": _FileTool(),
    "head": _FileTool(short="nc", long=_fs("--lines", "--bytes")),
    "tail": _FileTool(
        short="ncs", long=_fs("--lines", "--bytes", "--pid", "--sleep-interval", "--max-unchanged-stats")
    ),
    "less": _FileTool(
        short="bhjkoOpPtTxyz#",
        long=_fs("--log-file", "--LOG-FILE", "--pattern", "--tag", "--lesskey-file"),
        edits=_fs("-o", "-O", "--log-file", "--LOG-FILE"),
        reads=_fs("-k", "--lesskey-file"),
    ),
    "more": _FileTool(short="n"),
    "wc": _FileTool(long=_fs("--files0-from"), opaque=_fs("--files0-from")),
    "stat": _FileTool(short="c", long=_fs("--format", "--printf")),
    "file": _FileTool(
        short="eFfmP",
        long=_fs("--exclude", "--separator", "--files-from", "--magic-file", "--parameter"),
        opaque=_fs("-f", "--files-from"),
        reads=_fs("-m", "--magic-file"),
    ),
    "ls": _FileTool(
        short="IwT",
        long=_fs(
            "--block-size",
            "--format",
            "--hide",
            "--ignore",
            "--quoting-style",
            "--sort",
            "--tabsize",
            "--time",
            "--time-style",
            "--width",
            "--indicator-style",
        ),
        default_dot=True,
    ),
    "tac": _FileTool(short="s", long=_fs("--separator")),
    "nl": _FileTool(
        short="bdfhilnsvw",
        long=_fs(
            "--body-numbering",
            "--section-delimiter",
            "--footer-numbering",
            "--header-numbering",
            "--line-increment",
            "--join-blank-lines",
            "--number-format",
            "--number-separator",
            "--starting-line-number",
            "--number-width",
        ),
    ),
    "od": _FileTool(
        short="AjNSt",
        optional="w",
        long=_fs("--address-radix", "--skip-bytes", "--read-bytes", "--strings", "--format", "--width", "--endian"),
    ),
    "hexdump": _FileTool(short="efns", reads=_fs("-f")),
    "strings": _FileTool(short="nteT", long=_fs("--bytes", "--radix", "--encoding", "--target", "--output-separator")),
    "base64": _FileTool(short="w", long=_fs("--wrap")),
    "md5sum": _FileTool(),
    "sha1sum": _FileTool(),
    "sha224sum": _FileTool(),
    "sha256sum": _FileTool(),
    "sha384sum": _FileTool(),
    "sha512sum": _FileTool(),
    "b2sum": _FileTool(short="l", long=_fs("--length")),
    "cksum": _FileTool(short="al", long=_fs("--algorithm", "--length")),
    "cmp": _FileTool(short="in", long=_fs("--ignore-initial", "--bytes")),
    "du": _FileTool(
        short="dBXt",
        long=_fs(
            "--max-depth", "--block-size", "--exclude", "--exclude-from", "--threshold", "--time-style", "--files0-from"
        ),
        reads=_fs("-X", "--exclude-from"),
        opaque=_fs("--files0-from"),
        default_dot=True,
    ),
    "tree": _FileTool(
        short="LIPoH",
        long=_fs("--filelimit", "--charset", "--sort", "--timefmt", "--fromfile"),
        edits=_fs("-o"),
        opaque=_fs("--fromfile"),
        default_dot=True,
    ),
    "diff": _FileTool(
        short="CUWFDIxXSL",
        long=_fs(
            "--ifdef",
            "--show-function-line",
            "--ignore-matching-lines",
            "--label",
            "--starting-file",
            "--width",
            "--exclude",
            "--exclude-from",
            "--from-file",
            "--to-file",
            "--tabsize",
            "--horizon-lines",
            "--line-format",
            "--old-line-format",
            "--new-line-format",
            "--unchanged-line-format",
            "--old-group-format",
            "--new-group-format",
            "--changed-group-format",
            "--unchanged-group-format",
            "--palette",
            "--context",
            "--unified",
        ),
        reads=_fs("-X", "--exclude-from", "--from-file", "--to-file"),
    ),
    "sort": _FileTool(
        short="kotST",
        long=_fs(
            "--batch-size",
            "--compress-program",
            "--files0-from",
            "--key",
            "--output",
            "--random-source",
            "--buffer-size",
            "--field-separator",
            "--temporary-directory",
            "--parallel",
            "--sort",
        ),
        edits=_fs("-o", "--output"),
        reads=_fs("--random-source"),
        opaque=_fs("--compress-program", "--files0-from"),
    ),
}

_WRITERS: dict[str, _FileTool] = {
    "rm": _FileTool(recursive=_fs("-r", "-R", "--recursive")),
    "rmdir": _FileTool(),
    "unlink": _FileTool(),
    "shred": _FileTool(short="ns", long=_fs("--iterations", "--size", "--random-source"), reads=_fs("--random-source")),
    "touch": _FileTool(short="dtr", long=_fs("--date", "--reference", "--time"), reads=_fs("-r", "--reference")),
    "mkdir": _FileTool(short="m", long=_fs("--mode")),
    "tee": _FileTool(),
    "truncate": _FileTool(short="sr", long=_fs("--size", "--reference"), reads=_fs("-r", "--reference")),
}

_GREP = _FileTool(
    short="efmABCdD",
    long=_fs(
        "--regexp",
        "--file",
        "--max-count",
        "--after-context",
        "--before-context",
        "--context",
        "--directories",
        "--devices",
        "--include",
        "--exclude",
        "--exclude-dir",
        "--exclude-from",
        "--label",
        "--group-separator",
        "--binary-files",
    ),
    reads=_fs("-f", "--file", "--exclude-from"),
)
_RG = _FileTool(
    short="eftTgmABCjMrEd",
    long=_fs(
        "--regexp",
        "--file",
        "--type",
        "--type-not",
        "--glob",
        "--iglob",
        "--max-count",
        "--after-context",
        "--before-context",
        "--context",
        "--threads",
        "--max-columns",
        "--replace",
        "--encoding",
        "--max-depth",
        "--pre",
        "--pre-glob",
        "--type-add",
        "--type-clear",
        "--ignore-file",
        "--max-filesize",
        "--path-separator",
        "--sort",
        "--sortr",
        "--engine",
        "--colors",
        "--color",
        "--context-separator",
        "--field-match-separator",
        "--field-context-separator",
        "--dfa-size-limit",
        "--regex-size-limit",
        "--hostname-bin",
    ),
    reads=_fs("-f", "--file", "--ignore-file"),
    opaque=_fs("--pre", "--hostname-bin"),
)


def _file_tool(spec: _FileTool, args: list[str], effects: _Effects, *, role: str) -> tuple[list, list[str]]:
    options, positionals = _getopt(args, short=spec.short, long=spec.long, optional=spec.optional)
    for name, value in options:
        if name in spec.opaque:
            effects.unk(f"the option {name} names files or programs that are not visible")
        if value is None:
            continue
        if name in spec.reads:
            effects.reads.append(value)
        if name in spec.edits:
            effects.edits.append(value)
    files = positionals
    if not files and spec.default_dot:
        files = ["."]
    recursive = _has(options, *spec.recursive)
    if role == "read":
        (effects.rreads if recursive else effects.reads).extend(files)
    else:
        (effects.redits if recursive else effects.edits).extend(files)
    return options, positionals


def _grep(name: str, args: list[str], fs, effects: _Effects) -> None:
    spec = _RG if name == "rg" else _GREP
    options, positionals = _getopt(args, short=spec.short, long=spec.long)
    for option, value in options:
        if option in spec.opaque:
            effects.unk(f"{name} {option} runs another program")
        if option in spec.reads and value is not None and value != _STDIO:
            effects.reads.append(value)
    explicit = _has(options, "-e", "--regexp", "-f", "--file")
    files = positionals if explicit else positionals[1:]
    recursive = name == "rg" or _has(options, "-r", "-R", "--recursive", "--dereference-recursive")
    if not files and recursive:
        files = ["."]
    (effects.rreads if recursive else effects.reads).extend(files)


def _reader(name: str, args: list[str], fs, effects: _Effects) -> None:
    _file_tool(_READERS[name], args, effects, role="read")


def _writer(name: str, args: list[str], fs, effects: _Effects) -> None:
    _file_tool(_WRITERS[name], args, effects, role="edit")


_SED_SIMPLE = set("=dDgGhHnNpPxzF")


def _sed_script_is_safe(script: str) -> bool:
    """False when a sed script may run commands or touch other files (e, w, W, r, R, s///w, s///e)."""
    i, n = 0, len(script)

    def skip_delimited(i: int, delimiter: str) -> int:
        while i < n:
            if script[i] == "\\":
                i += 2
                continue
            if script[i] == delimiter:
                return i + 1
            if script[i] == "\n":
                return -1
            i += 1
        return -1

    while i < n:
        c = script[i]
        if c in " \t\n;{}!":
            i += 1
            continue
        if c == "#":
            end = script.find("\n", i)
            i = n if end < 0 else end
            continue
        # addresses: numbers, $, /regex/, \cREGEXc, first~step, addr,+N
        if c.isdigit() or c in "$,~+":
            i += 1
            continue
        if c == "/" or c == "\\":
            if c == "\\":
                if i + 1 >= n:
                    return False
                delimiter, i = script[i + 1], i + 2
            else:
                delimiter, i = "/", i + 1
            i = skip_delimited(i, delimiter)
            if i < 0:
                return False
            while i < n and script[i] in "IM":
                i += 1
            continue
        if c in "wWrRe":
            return False
        if c in ":btT":
            i += 1
            while i < n and script[i] not in ";\n":
                i += 1
            continue
        if c in "aic":
            end = script.find("\n", i)
            while end > 0 and script[end - 1] == "\\":
                end = script.find("\n", end + 1)
            i = n if end < 0 else end
            continue
        if c in "sy":
            if i + 1 >= n or script[i + 1] in "\n\\":
                return False
            delimiter = script[i + 1]
            i = skip_delimited(i + 2, delimiter)
            if i < 0:
                return False
            i = skip_delimited(i, delimiter)
            if i < 0:
                return False
            if c == "s":
                while i < n and script[i] not in ";\n}":
                    if script[i] in "we":
                        return False
                    if not (script[i].isalnum() or script[i] in " \t"):
                        return False
                    i += 1
            continue
        if c in "qQlL":
            i += 1
            while i < n and (script[i].isdigit() or script[i] in " \t"):
                i += 1
            continue
        if c == "v":
            i += 1
            while i < n and script[i] not in ";\n}":
                i += 1
            continue
        if c in _SED_SIMPLE:
            i += 1
            continue
        return False
    return True


def _sed(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short="efl", optional="i", long=("--expression", "--file", "--line-length"))
    scripts = _values(options, "-e", "--expression")
    script_files = _values(options, "-f", "--file")
    for path in script_files:
        effects.reads.append(path)
        effects.unk("a sed script file is not visible")
    if not scripts and not script_files:
        if not positionals:
            return
        scripts, positionals = [positionals[0]], positionals[1:]
    if not _has(options, "--sandbox"):
        for script in scripts:
            if not _sed_script_is_safe(script):
                effects.unk("the sed script can run commands or write files (e, w or r)")
    effects.reads.extend(positionals)
    if _has(options, "-i", "--in-place"):
        effects.edits.extend(positionals)


_AWK_UNSAFE = re.compile(r"\bsystem\s*\(|\bgetline\b|\||\bprintf?\b[^;{}\n]*>|@load|@include")


def _awk(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(
        args,
        short="FvfeEilb",
        long=("--field-separator", "--assign", "--file", "--source", "--exec", "--include", "--load"),
    )
    if _has(options, "-f", "--file", "-E", "--exec", "-i", "--include", "-l", "--load"):
        effects.reads.extend(_values(options, "-f", "--file", "-E", "--exec"))
        effects.unk("an awk program file is not visible")
    programs = _values(options, "-e", "--source")
    if not programs and not _has(options, "-f", "--file", "-E", "--exec"):
        if not positionals:
            return
        programs, positionals = [positionals[0]], positionals[1:]
    if any(_AWK_UNSAFE.search(program) for program in programs):
        effects.unk("the awk program can run commands or write files")
    effects.reads.extend(p for p in positionals if not _ASSIGN_RE.match(p))


def _find(name: str, args: list[str], fs, effects: _Effects) -> None:
    i = 0
    while (i < len(args) and args[i] in ("-H", "-L", "-P")) or (i < len(args) and args[i].startswith(("-D", "-O"))):
        i += 2 if args[i] == "-D" else 1
    starts: list[str] = []
    while i < len(args) and not args[i].startswith(("-", "(", "!", ")", ",")):
        starts.append(args[i])
        i += 1
    starts = starts or ["."]
    effects.reads.extend(starts)
    expression = args[i:]
    j = 0
    while j < len(expression):
        token = expression[j]
        if token in ("-exec", "-execdir", "-ok", "-okdir"):
            inner: list[str] = []
            j += 1
            while j < len(expression) and expression[j] not in (";", "+"):
                inner.append(expression[j])
                j += 1
            if inner:
                effects.aliases.append(inner)
            effects.unk(f"find {token} runs a command on files that are not visible")
        elif token == "-delete":
            effects.redits.extend(starts)
        elif token in ("-fprint", "-fprint0", "-fls", "-fprintf") and j + 1 < len(expression):
            effects.edits.append(expression[j + 1])
            j += 1
        elif token == "-files0-from":
            effects.unk("find -files0-from names files that are not visible")
        j += 1


def _chmod(name: str, args: list[str], fs, effects: _Effects) -> None:
    flags = {
        "-R",
        "-v",
        "-c",
        "-f",
        "-h",
        "-H",
        "-L",
        "-P",
        "--recursive",
        "--verbose",
        "--changes",
        "--silent",
        "--quiet",
        "--no-preserve-root",
        "--preserve-root",
        "--dereference",
        "--no-dereference",
    }
    positionals: list[str] = []
    reference = recursive = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            positionals.extend(args[i + 1 :])
            break
        if a.startswith("--reference") or a.startswith("--from"):
            if "=" not in a:
                if a.startswith("--reference") and i + 1 < len(args):
                    effects.reads.append(args[i + 1])
                i += 1
            elif a.startswith("--reference"):
                effects.reads.append(a.split("=", 1)[1])
            reference = reference or a.startswith("--reference")
        elif a in flags or (re.fullmatch(r"-[RvcfhHLP]+", a) is not None):
            recursive = recursive or a == "--recursive" or (not a.startswith("--") and "R" in a)
        else:
            positionals.append(a)
        i += 1
    (effects.redits if recursive else effects.edits).extend(positionals if reference else positionals[1:])


def _copy_like(name: str, args: list[str], fs, effects: _Effects) -> None:
    """cp, mv, ln and install: sources are read, the destination (and name inside it) edited."""
    short, long = "tS", ["--target-directory", "--suffix"]
    if name == "install":
        short, long = "gmoSt", long + ["--group", "--mode", "--owner", "--strip-program"]
    if name == "cp":
        long += ["--sparse", "--no-preserve"]
    options, positionals = _getopt(args, short=short, long=long)
    if _has(options, "--strip-program"):
        effects.unk("install --strip-program runs another program")
    if name == "install" and _has(options, "-d", "--directory"):
        effects.edits.extend(positionals)
        return
    targets = _values(options, "-t", "--target-directory")
    no_target_dir = _has(options, "-T", "--no-target-directory")
    dest: str | None = None
    dest_dir: str | None = None
    if targets:
        sources, dest_dir = positionals, targets[-1]
    elif no_target_dir and len(positionals) >= 2:
        sources, dest = positionals[:-1], positionals[-1]
    elif len(positionals) >= 2:
        sources, last = positionals[:-1], positionals[-1]
        if len(sources) > 1 or last.endswith("/") or fs.isdir(last):
            dest_dir = last
        else:
            dest = last
    elif name == "ln" and positionals:
        sources, dest_dir = positionals, "."
    else:
        sources = positionals
    symbolic = name == "ln" and _has(options, "-s", "--symbolic")
    # mv moves whole trees; cp -r/-a copies them
    recursive = name == "mv" or (name == "cp" and _has(options, "-r", "-R", "--recursive", "-a", "--archive"))
    reads, edits = (effects.rreads, effects.redits) if recursive else (effects.reads, effects.edits)
    for source in sources:
        if dest_dir is not None:
            edits.append(posixpath.join(dest_dir, posixpath.basename(source.rstrip("/")) or "."))
        if symbolic and not source.startswith("/") and not isinstance(source, _HomePath):
            # a symlink's target is relative to the link's directory
            link = dest if dest is not None else posixpath.join(dest_dir or ".", "x")
            effects.reads.append(posixpath.join(posixpath.dirname(link) or ".", source))
        else:
            reads.append(source)
        if name == "mv":
            edits.append(source)
    if dest is not None:
        edits.append(dest)
    if dest_dir is not None:
        effects.edits.append(dest_dir)


def _dd(name: str, args: list[str], fs, effects: _Effects) -> None:
    for a in args:
        if a.startswith("if="):
            effects.reads.append(a[3:])
        elif a.startswith("of="):
            effects.edits.append(a[3:])


_TAR_PROGRAM_OPTIONS = (
    "--to-command",
    "--checkpoint-action",
    "--use-compress-program",
    "--info-script",
    "--new-volume-script",
    "--rsh-command",
    "--index-file",
)


def _tar(name: str, args: list[str], fs, effects: _Effects) -> None:
    """tar: creating reads the inputs and writes the archive; extracting writes unseen names (UNKNOWN)."""
    bundled = args[0] if args and not args[0].startswith("-") else ""  # old style: tar czf out.tgz src
    clusters = [a[1:] for a in args if a.startswith("-") and not a.startswith("--")]
    letters = bundled + "".join(clusters)
    if "x" in letters or any(a.split("=", 1)[0] in ("--extract", "--get") for a in args):
        effects.unk("tar extraction writes files named inside the archive")
    if "I" in letters or any(a.split("=", 1)[0] in _TAR_PROGRAM_OPTIONS for a in args):
        effects.unk("tar runs another program")
    archive: str | None = None
    rest = args[1:] if bundled else list(args)
    if "f" in bundled and rest:
        archive, rest = rest[0], rest[1:]
    for k, a in enumerate(rest):
        if a.startswith("--file="):
            archive = a.split("=", 1)[1]
        elif a == "--file" and k + 1 < len(rest):
            archive = rest[k + 1]
        elif a.startswith("-") and not a.startswith("--") and "f" in a:
            attached = a[a.index("f") + 1 :]
            archive = attached or (rest[k + 1] if k + 1 < len(rest) else None)
    creating = any(c in letters for c in "cruA") or any(a in ("--create", "--append", "--update") for a in args)
    if archive and archive != _STDIO:
        (effects.edits if creating else effects.reads).append(archive)
    inputs = [a for a in rest if a != archive and not a.startswith("-")]
    if creating:
        if any(a in ("-C", "--directory") or a.startswith(("--directory=", "-C")) for a in rest):
            effects.unk("tar -C changes the directory its inputs are read from")
        effects.rreads.extend(inputs)
    else:
        _generic(name, inputs, fs, effects)


# -- network ----------------------------------------------------------------------------------

_CURL_SHORT = "dHouXAebcFTxKwmrCEyYztUQDP"
_CURL_LONG = _fs(
    "--data",
    "--data-raw",
    "--data-binary",
    "--data-urlencode",
    "--data-ascii",
    "--json",
    "--header",
    "--output",
    "--user",
    "--request",
    "--user-agent",
    "--referer",
    "--cookie",
    "--cookie-jar",
    "--form",
    "--form-string",
    "--upload-file",
    "--proxy",
    "--preproxy",
    "--config",
    "--write-out",
    "--max-time",
    "--range",
    "--continue-at",
    "--cert",
    "--key",
    "--cacert",
    "--capath",
    "--connect-timeout",
    "--retry",
    "--retry-delay",
    "--retry-max-time",
    "--resolve",
    "--connect-to",
    "--dump-header",
    "--interface",
    "--limit-rate",
    "--max-filesize",
    "--output-dir",
    "--proxy-user",
    "--url",
    "--oauth2-bearer",
    "--time-cond",
    "--trace",
    "--trace-ascii",
    "--stderr",
    "--unix-socket",
    "--abstract-unix-socket",
    "--local-port",
    "--noproxy",
    "--quote",
    "--pass",
    "--ciphers",
    "--dns-servers",
    "--doh-url",
    "--max-redirs",
    "--speed-limit",
    "--speed-time",
    "--variable",
    "--netrc-file",
    "--socks4",
    "--socks4a",
    "--socks5",
    "--socks5-hostname",
    "--proxy-header",
    "--proto",
    "--proto-redir",
    "--telnet-option",
    "--ftp-port",
    "--cert-type",
    "--key-type",
    "--etag-save",
    "--etag-compare",
    "--alt-svc",
    "--hsts",
    "--expect100-timeout",
    "--happy-eyeballs-timeout-ms",
    "--keepalive-time",
    "--mail-from",
    "--mail-rcpt",
    "--mail-auth",
    "--sasl-authzid",
    "--aws-sigv4",
    "--tls-max",
    "--create-file-mode",
    "--request-target",
    "--login-options",
    "--service-name",
    "--proxy-cacert",
    "--proxy-cert",
    "--proxy-key",
    "--proxy-pass",
    "--proxy-service-name",
    "--socks5-gssapi-service",
    "--delegation",
    "--ftp-account",
    "--ftp-alternative-to-user",
    "--ftp-method",
    "--ftp-ssl-ccc-mode",
    "--hostpubmd5",
    "--hostpubsha256",
    "--krb",
    "--pinnedpubkey",
    "--pubkey",
    "--random-file",
    "--egd-file",
    "--engine",
    "--tlsuser",
    "--tlspassword",
    "--tls13-ciphers",
    "--curves",
    "--ipfs-gateway",
    "--ech",
)


def _url_basename(url: str) -> str:
    try:
        path = urlsplit(url if _SCHEME_RE.match(url) else "//" + url).path
    except ValueError:
        return ""
    return posixpath.basename(path)


def _curl(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short=_CURL_SHORT, long=_CURL_LONG)
    urls = positionals + _values(options, "--url")
    for url in urls:
        effects.host(url, bare=True)
    for proxy in _values(
        options, "-x", "--proxy", "--preproxy", "--socks4", "--socks4a", "--socks5", "--socks5-hostname"
    ):
        effects.host(proxy, bare=True)
    if _has(options, "--resolve", "--connect-to"):
        effects.unk("curl --resolve/--connect-to sends the request to another host")
    if _has(options, "-K", "--config"):
        effects.unk("a curl config file is not visible")
    if _has(options, "-J", "--remote-header-name"):
        effects.unk("curl -J lets the server choose the file name")
    output_dir = (_values(options, "--output-dir") or ["."])[-1]
    effects.edits.extend(_values(options, "--output-dir"))
    for out in _values(options, "-o", "--output"):
        if out != _STDIO:
            effects.edits.append(posixpath.join(output_dir, out))
    for out in _values(
        options, "-c", "--cookie-jar", "-D", "--dump-header", "--trace", "--trace-ascii", "--stderr", "--etag-save"
    ):
        if out != _STDIO:
            effects.edits.append(out)
    if _has(options, "-O", "--remote-name", "--remote-name-all"):
        for url in urls:
            base = _url_basename(url)
            if base:
                effects.edits.append(posixpath.join(output_dir, base))
            else:
                effects.unk("curl -O without a file name in the URL")
    for upload in _values(options, "-T", "--upload-file"):
        if upload not in (_STDIO, "."):
            effects.reads.append(upload)
    for data in _values(options, "-d", "--data", "--data-binary", "--data-ascii", "--json"):
        if data.startswith("@") and data[1:] not in ("", _STDIO):
            effects.reads.append(data[1:])
    for data in _values(options, "--data-urlencode"):
        match = re.fullmatch(r"([^=@]*)@(.+)", data, re.DOTALL)
        if match and match.group(2) != _STDIO:
            effects.reads.append(match.group(2))
    for form in _values(options, "-F", "--form"):
        match = re.search(r"=[@<]([^;]+)", form)
        if match and match.group(1) != _STDIO:
            effects.reads.append(match.group(1))
    for cookie in _values(options, "-b", "--cookie"):
        if "=" not in cookie and cookie != _STDIO:
            effects.reads.append(cookie)


_WGET_SHORT = "OoaPieUtTwQlARDIXB"
_WGET_LONG = _fs(
    "--output-document",
    "--output-file",
    "--append-output",
    "--directory-prefix",
    "--input-file",
    "--execute",
    "--user-agent",
    "--tries",
    "--timeout",
    "--wait",
    "--quota",
    "--level",
    "--accept",
    "--reject",
    "--domains",
    "--include-directories",
    "--exclude-directories",
    "--base",
    "--header",
    "--user",
    "--password",
    "--http-user",
    "--http-password",
    "--ftp-user",
    "--ftp-password",
    "--post-data",
    "--post-file",
    "--body-data",
    "--body-file",
    "--method",
    "--referer",
    "--load-cookies",
    "--save-cookies",
    "--ca-certificate",
    "--certificate",
    "--private-key",
    "--bind-address",
    "--limit-rate",
    "--waitretry",
    "--dns-timeout",
    "--connect-timeout",
    "--read-timeout",
    "--config",
    "--proxy-user",
    "--proxy-password",
    "--default-page",
    "--local-encoding",
    "--remote-encoding",
    "--restrict-file-names",
    "--cut-dirs",
    "--progress",
    "--secure-protocol",
    "--ca-directory",
    "--certificate-type",
    "--private-key-type",
    "--random-file",
    "--egd-file",
    "--max-redirect",
    "--rejected-log",
    "--accept-regex",
    "--reject-regex",
    "--regex-type",
    "--exclude-domains",
    "--follow-tags",
    "--ignore-tags",
    "--warc-file",
    "--warc-header",
    "--warc-max-size",
    "--warc-cdx",
    "--warc-dedup",
    "--warc-tempdir",
    "--use-askpass",
    "--retry-on-http-error",
    "--report-speed",
    "--hsts-file",
)


def _wget(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short=_WGET_SHORT, long=_WGET_LONG)
    for url in positionals:
        effects.host(url, bare=True)
    if _has(options, "-i", "--input-file"):
        effects.reads.extend(v for v in _values(options, "-i", "--input-file") if v != _STDIO)
        effects.unk("wget -i reads URLs that are not visible")
    if _has(options, "-e", "--execute", "--config", "--use-askpass"):
        effects.unk("wget -e/--config/--use-askpass runs settings or programs that are not visible")
    effects.reads.extend(_values(options, "--post-file", "--body-file", "--load-cookies"))
    effects.edits.extend(
        v
        for v in _values(options, "-o", "-a", "--output-file", "--append-output", "--save-cookies", "--rejected-log")
        if v != _STDIO
    )
    prefix = (_values(options, "-P", "--directory-prefix") or ["."])[-1]
    documents = _values(options, "-O", "--output-document")
    if documents:
        effects.edits.extend(d for d in documents if d != _STDIO)
    elif _has(options, "-r", "--recursive", "-m", "--mirror", "-p", "--page-requisites"):
        effects.edits.append(prefix)
    else:
        for url in positionals:
            effects.edits.append(posixpath.join(prefix, _url_basename(url) or "index.html"))


def _netcat(name: str, args: list[str], fs, effects: _Effects) -> None:
    if any(
        a in ("--exec", "--sh-exec", "--lua-exec") or a.startswith(("--exec=", "--sh-exec=", "--lua-exec="))
        for a in args
    ):
        effects.unk(f"{name} can run a program")
    options, positionals = _getopt(
        args,
        short="IiMmOPpsTVWwXxec",
        long=("--source", "--source-port", "--wait", "--proxy", "--proxy-type", "--output"),
    )
    if _has(options, "-e", "-c"):
        effects.unk(f"{name} can run a program")
    if _has(options, "-l", "--listen"):
        effects.unk(f"{name} -l listens for connections")
    if positionals:
        effects.host(positionals[0], bare=True)
    for proxy in _values(options, "-x", "--proxy"):
        effects.host(proxy, bare=True)


def _telnet(name: str, args: list[str], fs, effects: _Effects) -> None:
    _, positionals = _getopt(args, short="lneb")
    if positionals:
        effects.host(positionals[0], bare=True)


_SSH_SHORT = "BbcDEeFIiJLlmOoPpQRSWw"
_SSH_OPAQUE_OPTIONS = ("proxycommand", "localcommand", "permitlocalcommand", "knownhostscommand", "match")


def _ssh_options(options: list[tuple[str, str | None]], name: str, effects: _Effects) -> None:
    for option, value in options:
        if option == "-o" and value is not None:
            key = re.split(r"[\s=]", value.strip(), maxsplit=1)[0].lower()
            if key in _SSH_OPAQUE_OPTIONS:
                effects.unk(f"{name} -o {key} runs a local command")
            if key == "proxyjump":
                for hop in re.split(r"[\s=]", value.strip(), maxsplit=1)[1:2]:
                    for jump in hop.split(","):
                        effects.host(jump.split("@")[-1].split(":")[0], bare=True)
        elif option == "-F":
            effects.unk(f"an {name} config file is not visible")
        elif option == "-S" and name in ("scp", "rsync"):
            effects.unk(f"{name} -S runs another program")
        elif option == "-J" and value:
            for jump in value.split(","):
                effects.host(jump, bare=True)


def _ssh(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short=_SSH_SHORT, permute=False)
    _ssh_options(options, name, effects)
    effects.edits.extend(_values(options, "-E"))
    for forward in _values(options, "-W"):
        effects.host(forward.rsplit(":", 1)[0], bare=True)
    if positionals:
        effects.host(positionals[0], bare=True)


def _local_or_remote(token: str, effects: _Effects, *, role: str, recursive: bool = True) -> None:
    if effects.host(token):
        return
    if role == "read":
        (effects.rreads if recursive else effects.reads).append(token)
    else:
        (effects.redits if recursive else effects.edits).append(token)


def _scp(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short="cDFiJloPSX")
    _ssh_options(options, name, effects)
    if len(positionals) < 2:
        for token in positionals:
            _local_or_remote(token, effects, role="read")
        return
    for token in positionals[:-1]:
        _local_or_remote(token, effects, role="read")
    target = positionals[-1]
    if not effects.host(target):
        effects.redits.append(target)
        if fs.isdir(target) or target.endswith("/"):
            for token in positionals[:-1]:
                base = posixpath.basename(token.split(":", 1)[-1].rstrip("/"))
                if base:
                    effects.edits.append(posixpath.join(target, base))


_RSYNC_LONG = _fs(
    "--rsh",
    "--rsync-path",
    "--block-size",
    "--filter",
    "--exclude",
    "--include",
    "--exclude-from",
    "--include-from",
    "--files-from",
    "--temp-dir",
    "--log-file",
    "--log-file-format",
    "--password-file",
    "--port",
    "--partial-dir",
    "--backup-dir",
    "--suffix",
    "--chmod",
    "--chown",
    "--bwlimit",
    "--timeout",
    "--contimeout",
    "--compare-dest",
    "--copy-dest",
    "--link-dest",
    "--max-size",
    "--min-size",
    "--max-delete",
    "--out-format",
    "--remote-option",
    "--info",
    "--debug",
    "--iconv",
    "--checksum-choice",
    "--compress-choice",
    "--compress-level",
    "--skip-compress",
    "--usermap",
    "--groupmap",
    "--address",
    "--sockopts",
    "--outbuf",
    "--write-batch",
    "--only-write-batch",
    "--read-batch",
    "--protocol",
    "--stop-after",
    "--stop-at",
    "--max-alloc",
    "--modify-window",
    "--early-input",
    "--checksum-seed",
)


def _rsync(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short="eBfTM@", long=_RSYNC_LONG)
    for shell in _values(options, "-e", "--rsh"):
        words = shell.split()
        if not words or posixpath.basename(words[0]) != "ssh" or any("proxycommand" in w.lower() for w in words):
            effects.unk("rsync -e runs another program")
    if _has(options, "--files-from"):
        effects.unk("rsync --files-from names files that are not visible")
    effects.reads.extend(
        v
        for v in _values(options, "--exclude-from", "--include-from", "--files-from", "--password-file", "--read-batch")
        if v != _STDIO
    )
    effects.edits.extend(_values(options, "--log-file", "--write-batch", "--only-write-batch"))
    if len(positionals) < 2:
        for token in positionals:
            _local_or_remote(token, effects, role="read")
        return
    for token in positionals[:-1]:
        _local_or_remote(token, effects, role="read")
    _local_or_remote(positionals[-1], effects, role="edit")


def _pip(args: list[str], fs, effects: _Effects) -> None:
    global_values = {
        "--proxy",
        "--log",
        "--cache-dir",
        "--timeout",
        "--retries",
        "--exists-action",
        "--trusted-host",
        "--cert",
        "--client-cert",
        "--python",
        "--use-feature",
        "--use-deprecated",
        "--keyring-provider",
        "--log-file",
        "--local-log",
    }
    i = 0
    while i < len(args) and args[i].startswith("-"):
        name = args[i].split("=", 1)[0]
        if name == "--proxy":
            value = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else "")
            effects.host(value, bare=True)
        i += 2 if (name in global_values and "=" not in args[i]) else 1
    if i >= len(args) or args[i] not in ("install", "download", "wheel", "index", "search", "lock"):
        _generic("pip", args[i:], fs, effects)
        return
    options, positionals = _getopt(
        args[i + 1 :],
        short="rceitfCdw",
        long=(
            "--requirement",
            "--constraint",
            "--editable",
            "--target",
            "--index-url",
            "--extra-index-url",
            "--find-links",
            "--config-settings",
            "--dest",
            "--wheel-dir",
            "--prefix",
            "--root",
            "--src",
            "--upgrade-strategy",
            "--platform",
            "--python-version",
            "--implementation",
            "--abi",
            "--no-binary",
            "--only-binary",
            "--progress-bar",
            "--cache-dir",
            "--log",
            "--proxy",
            "--retries",
            "--timeout",
            "--trusted-host",
            "--cert",
            "--client-cert",
            "--exists-action",
            "--global-option",
            "--build-option",
            "--report",
            "--python",
            "--use-feature",
            "--use-deprecated",
            "--keyring-provider",
            "--group",
            "--output",
            "--index",
        ),
    )
    indexes = _values(options, "-i", "--index-url", "--index")
    if not indexes and not _has(options, "--no-index"):
        effects.hosts.append("pypi.org")
    for url in indexes + _values(options, "--extra-index-url", "--proxy"):
        effects.host(url, bare=True)
    for link in _values(options, "-f", "--find-links"):
        if not effects.host(link):
            effects.reads.append(link)
    effects.reads.extend(_values(options, "-r", "--requirement", "-c", "--constraint"))
    effects.edits.extend(
        _values(
            options,
            "-t",
            "--target",
            "--prefix",
            "--root",
            "--src",
            "-d",
            "--dest",
            "-w",
            "--wheel-dir",
            "--report",
            "--output",
        )
    )
    for spec in positionals + _values(options, "-e", "--editable"):
        if "://" in spec:
            effects.host(re.sub(r"\A[a-z]+\+", "", spec))
        elif spec.startswith((".", "/", "~")) or fs.exists(spec):
            effects.reads.append(spec)


_NPM_NETWORK = frozenset(
    {
        "install",
        "i",
        "in",
        "ins",
        "inst",
        "insta",
        "instal",
        "isnt",
        "isnta",
        "isntal",
        "add",
        "ci",
        "clean-install",
        "ic",
        "install-clean",
        "isntall-clean",
        "update",
        "up",
        "upgrade",
        "udpate",
        "exec",
        "x",
        "publish",
        "view",
        "info",
        "show",
        "v",
        "search",
        "outdated",
        "audit",
        "init",
        "create",
        "dlx",
        "install-test",
        "it",
        "cit",
        "install-ci-test",
        "dist-tag",
        "access",
        "login",
        "whoami",
        "unpublish",
        "deprecate",
        "owner",
        "team",
        "token",
        "ping",
    }
)


def _npm(name: str, args: list[str], fs, effects: _Effects) -> None:
    registries = [a.split("=", 1)[1] for a in args if a.startswith("--registry=")]
    registries += [args[k + 1] for k, a in enumerate(args[:-1]) if a == "--registry"]
    positionals = [a for a in args if not a.startswith("-")]
    sub = positionals[0] if positionals else ("install" if name == "yarn" else "")
    if name in ("npx", "pnpx", "bunx") or sub in _NPM_NETWORK:
        if registries:
            for registry in registries:
                effects.host(registry, bare=True)
        else:
            effects.hosts.append("registry.yarnpkg.com" if name == "yarn" else "registry.npmjs.org")
    _generic(name, args, fs, effects)


def _uv(name: str, args: list[str], fs, effects: _Effects) -> None:
    positionals = [a for a in args if not a.startswith("-")]
    sub = positionals[0] if positionals else ""
    if name == "uvx" or sub in ("add", "sync", "lock", "remove", "tool", "export"):
        effects.hosts.append("pypi.org")
    if sub == "pip":
        _pip(args[args.index("pip") + 1 :], fs, effects)
        return
    _generic(name, args, fs, effects)


# -- git --------------------------------------------------------------------------------------

_GIT_OPAQUE_SUBCOMMANDS = {
    "filter-branch": "git filter-branch runs commands",
    "send-email": "git send-email sends mail",
    "daemon": "git daemon serves repositories",
    "instaweb": "git instaweb starts a web server",
    "am": "git am applies patches whose files are not visible",
    "credential": "git credential handles secrets",
    "difftool": "git difftool runs another program",
    "mergetool": "git mergetool runs another program",
    "p4": "git p4 talks to another server",
    "svn": "git svn talks to another server",
}
_GIT_GLOBAL_VALUES = frozenset(
    {
        "-C",
        "-c",
        "--config-env",
        "--git-dir",
        "--work-tree",
        "--namespace",
        "--super-prefix",
        "--attr-source",
        "--list-cmds",
    }
)
# short options taking a value, per subcommand (git push -u is --set-upstream, git clone -u is --upload-pack)
_GIT_REMOTE_SHORT = {"push": "o", "fetch": "oj", "pull": "ojXs", "ls-remote": "o", "clone": "objcu", "archive": "o"}
_GIT_REMOTE_VALUES = (
    "--repo",
    "-o",
    "--push-option",
    "--server-option",
    "--depth",
    "--deepen",
    "--shallow-since",
    "--shallow-exclude",
    "-j",
    "--jobs",
    "--negotiation-tip",
    "--refmap",
    "-X",
    "--strategy-option",
    "-s",
    "--strategy",
    "--recurse-submodules-default",
    "--filter",
    "--upload-pack",
    "--receive-pack",
    "--exec",
    "--origin",
    "-b",
    "--branch",
    "--reference",
    "--reference-if-able",
    "--separate-git-dir",
    "--template",
    "--config",
    "--bundle-uri",
    "--sort",
    "--remote",
    "--output",
    "--prefix",
    "--format",
    "--add-file",
    "--add-virtual-file",
)


def _git(name: str, args: list[str], fs, effects: _Effects) -> None:
    base = ""  # accumulated -C directories
    i = 0
    while i < len(args) and args[i].startswith("-"):
        option, eq, attached = args[i].partition("=")
        takes_value = option in _GIT_GLOBAL_VALUES
        value = attached if eq else (args[i + 1] if takes_value and i + 1 < len(args) else "")
        if option == "-C" and value:
            absolute = value.startswith("/") or isinstance(value, _HomePath)
            base = value if absolute else posixpath.join(base, value)
            effects.reads.append(base)
        elif option in ("-c", "--config-env"):
            effects.unk("git -c can change configuration (aliases, hooks, programs) for one command")
        elif option in ("--git-dir", "--work-tree", "--namespace", "--super-prefix", "--attr-source"):
            effects.unk(f"git {option} points git at another repository or tree")
        elif option == "--exec-path" and eq:
            effects.unk("git --exec-path replaces git's programs")
        i += 2 if takes_value and not eq else 1
    if i >= len(args):
        return
    sub, rest = args[i], args[i + 1 :]
    if i > 0:
        effects.aliases.append(["git", sub, *rest])

    def at(path: str) -> str:
        if not base or path.startswith("/") or isinstance(path, _HomePath):
            return path
        return posixpath.join(base, path)

    if sub in _GIT_OPAQUE_SUBCOMMANDS:
        effects.unk(_GIT_OPAQUE_SUBCOMMANDS[sub])
        return
    if sub == "commit":
        effects.git.append("commit")
        options, _ = _getopt(
            rest,
            short="FmCcSt",
            long=(
                "--file",
                "--message",
                "--reuse-message",
                "--reedit-message",
                "--fixup",
                "--squash",
                "--author",
                "--date",
                "--template",
                "--trailer",
                "--cleanup",
                "--pathspec-from-file",
            ),
        )
        effects.reads.extend(at(v) for v in _values(options, "-F", "--file", "-t", "--template") if v != _STDIO)
        return
    if sub in ("push", "fetch", "pull", "ls-remote", "clone", "archive"):
        options, positionals = _getopt(rest, short=_GIT_REMOTE_SHORT[sub], long=_GIT_REMOTE_VALUES)
        if _has(options, "--upload-pack", "--receive-pack", "--exec") or (sub == "clone" and _has(options, "-u")):
            effects.unk(f"git {sub} --upload-pack/--receive-pack/--exec runs another program")
        if sub == "clone" and _has(options, "-c", "--config", "--template", "--separate-git-dir"):
            effects.unk("git clone -c/--template changes configuration or hooks")
        if sub == "archive":
            remotes = _values(options, "--remote")
            effects.edits.extend(at(v) for v in _values(options, "-o", "--output"))
            for remote in remotes:
                effects.host(remote)
            return
        repositories = _values(options, "--repo") + positionals[:1]
        for repository in repositories:
            if effects.host(repository):
                continue
            if repository.startswith(("/", ".", "~")) or isinstance(repository, _HomePath):
                (effects.edits if sub == "push" else effects.reads).append(at(repository))
        if sub == "clone" and positionals:
            target = positionals[1] if len(positionals) > 1 else _clone_directory(positionals[0])
            effects.edits.append(at(target))
        return
    if sub in ("remote", "submodule"):
        action = next((a for a in rest if not a.startswith("-")), "")
        if sub == "submodule" and action not in ("", "status", "summary"):
            effects.unk(f"git submodule {action} fetches or runs what .gitmodules names")
            return
        if sub == "remote" and action in (
            "add",
            "set-url",
            "rename",
            "remove",
            "rm",
            "set-head",
            "set-branches",
            "prune",
            "update",
        ):
            effects.edits.append(at(".git/config"))
        return
    if sub == "config":
        _git_config(rest, effects, at)
        return
    if sub in ("rm", "mv"):
        options, positionals = _getopt(rest, long=("--pathspec-from-file",))
        effects.redits.extend(at(p) for p in positionals)
        if sub == "mv":
            effects.rreads.extend(at(p) for p in positionals[:-1])
        return
    if sub in ("checkout", "restore"):
        if "--" in rest:
            effects.redits.extend(at(p) for p in rest[rest.index("--") + 1 :])
        elif sub == "restore":
            _, positionals = _getopt(rest, short="s", long=("--source", "--pathspec-from-file"))
            effects.redits.extend(at(p) for p in positionals)
        return
    if sub == "clean":
        _, positionals = _getopt(rest, short="e", long=("--exclude",))
        effects.redits.extend(at(p) for p in positionals or ["."])
        return
    if sub == "apply":
        if _has(_getopt(rest)[0], "--check", "--stat", "--numstat", "--summary") and "--apply" not in rest:
            effects.reads.extend(at(p) for p in _getopt(rest)[1])
            return
        effects.unk("git apply edits files named inside the patch")
        return
    if sub == "bisect" and rest[:1] == ["run"]:
        effects.unk("git bisect run runs a command")
        return
    if sub == "rebase" and any(a in ("-x", "--exec") or a.startswith("--exec=") for a in rest):
        effects.unk("git rebase --exec runs a command")
        return
    # everything else (status, log, diff, show, add, ...): existing paths among the arguments are read
    for a in rest:  # REV:PATH shows a file's committed content
        if ":" in a and not a.startswith("-") and "://" not in a:
            path = at(a.split(":", 1)[1])
            if path and fs.exists(path):
                effects.reads.append(path)
    _generic("git", [at(a) if not a.startswith("-") else a for a in rest], fs, effects)


def _git_config(rest: list[str], effects: _Effects, at: Callable[[str], str]) -> None:
    options, positionals = _getopt(
        rest, short="f", long=("--file", "--blob", "--type", "--default", "--comment", "--value", "--url")
    )
    mutators = (
        "--unset",
        "--unset-all",
        "--add",
        "--replace-all",
        "--rename-section",
        "--remove-section",
        "-e",
        "--edit",
    )
    readers = ("--get", "--get-all", "--get-regexp", "--get-urlmatch", "--list", "-l", "--get-color", "--get-colorbool")
    writes = (
        _has(options, *mutators)
        or (positionals[:1] and positionals[0] in ("set", "unset", "edit", "rename-section", "remove-section"))
        or (len(positionals) >= 2 and not _has(options, *readers) and positionals[0] not in ("get", "list"))
    )
    if not writes:
        return
    if _has(options, "--global", "--system"):
        effects.edits.append(_HomePath("~/.gitconfig"))
        return
    files = _values(options, "-f", "--file") or [".git/config"]
    effects.edits.extend(at(f) for f in files)


def _clone_directory(repository: str) -> str:
    path = repository.rstrip("/")
    if _SCP_RE.match(path) and not _SCHEME_RE.match(path):
        path = path.split(":", 1)[1]
    elif _SCHEME_RE.match(path):
        try:
            path = urlsplit(path).path
        except ValueError:
            path = ""
    name = posixpath.basename(path.rstrip("/"))
    if name.endswith(".git"):
        name = name[:-4]
    return name or "."


# -- interpreters -----------------------------------------------------------------------------

_INFO_FLAGS = frozenset({"-V", "--version", "-h", "--help", "-v", "-VV"})


@dataclass(frozen=True)
class _Interpreter:
    inline: str  # short option letters introducing inline code
    inline_long: tuple[str, ...] = ()  # long options introducing inline code
    values: str = ""  # short options taking a value
    stdin_unknown: bool = True  # no script means code from stdin


_INTERPRETERS: dict[str, _Interpreter] = {
    "python": _Interpreter(inline="c", values="WXm"),
    "node": _Interpreter(inline="ep", inline_long=("--eval", "--print"), values="rC"),
    "perl": _Interpreter(inline="eE"),
    "ruby": _Interpreter(inline="e"),
    "php": _Interpreter(inline="raBRFE", values="cdftz"),
    "lua": _Interpreter(inline="e", values="l"),
    "Rscript": _Interpreter(inline="e", inline_long=("--expr",)),
    "bun": _Interpreter(inline="ep", inline_long=("--eval", "--print"), stdin_unknown=False),
    "deno": _Interpreter(inline="", stdin_unknown=False),
    "osascript": _Interpreter(inline="e"),
}


def _interpreter_family(name: str) -> str | None:
    if re.fullmatch(r"(?:python|pypy)[0-9.]*", name):
        return "python"
    if name in ("node", "nodejs"):
        return "node"
    for family in ("perl", "ruby", "php", "lua"):
        if re.fullmatch(rf"{family}[0-9.]*", name):
            return family
    return name if name in _INTERPRETERS else None


def _interpreter(name: str, args: list[str], fs, effects: _Effects) -> None:
    family = _interpreter_family(name) or name
    spec = _INTERPRETERS[family]
    if family == "deno":
        if args[:1] == ["eval"]:
            effects.unk("deno eval runs inline code")
        _generic(name, args, fs, effects)
        return
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if a == "-" or not a.startswith("-"):
            break
        if a.startswith("--"):
            if a.split("=", 1)[0] in spec.inline_long:
                effects.unk(f"{name} {a.split('=', 1)[0]} runs inline code")
                return
            i += 1
            continue
        for j, letter in enumerate(a[1:], start=1):
            if letter in spec.inline:
                effects.unk(f"{name} -{letter} runs inline code")
                return
            if letter in spec.values:
                value = a[j + 1 :] or (args[i + 1] if i + 1 < len(args) else "")
                if not a[j + 1 :]:
                    i += 1
                if family == "python" and letter == "m":
                    if value == "pip":
                        _pip(args[i + 1 :], fs, effects)
                        return
                    _generic(name, args[i + 1 :], fs, effects)
                    return
                break
        i += 1
    script = args[i] if i < len(args) else None
    if script is None or script == "-":
        if spec.stdin_unknown and not any(a in _INFO_FLAGS for a in args):
            effects.unk(f"{name} reads its program from standard input")
        return
    effects.reads.append(script)
    _generic(name, args[i + 1 :], fs, effects)


# -- everything else --------------------------------------------------------------------------


def _generic(name: str, args: list[str], fs, effects: _Effects) -> None:
    """Arguments of commands we do not model: existing files inside the worktree count as read."""
    for a in args[:MAX_GENERIC_ARGS]:
        candidate = a
        if a.startswith("-"):
            if not a.startswith("--") or "=" not in a:
                continue
            candidate = a.split("=", 1)[1]
        if not candidate or "://" in candidate or "\x00" in candidate or isinstance(candidate, _HomePath):
            continue
        if fs.exists(candidate):
            effects.reads.append(candidate)


_Handler = Callable[[str, list[str], object, _Effects], None]
_HANDLERS: dict[str, _Handler] = {
    **dict.fromkeys(_READERS, _reader),
    **dict.fromkeys(_WRITERS, _writer),
    "grep": _grep,
    "egrep": _grep,
    "fgrep": _grep,
    "rg": _grep,
    "sed": _sed,
    "awk": _awk,
    "gawk": _awk,
    "mawk": _awk,
    "nawk": _awk,
    "find": _find,
    "chmod": _chmod,
    "chown": _chmod,
    "chgrp": _chmod,
    "cp": _copy_like,
    "mv": _copy_like,
    "ln": _copy_like,
    "install": _copy_like,
    "dd": _dd,
    "tar": _tar,
    "curl": _curl,
    "wget": _wget,
    "nc": _netcat,
    "ncat": _netcat,
    "netcat": _netcat,
    "telnet": _telnet,
    "ssh": _ssh,
    "scp": _scp,
    "rsync": _rsync,
    "git": _git,
    "npm": _npm,
    "npx": _npm,
    "pnpm": _npm,
    "pnpx": _npm,
    "yarn": _npm,
    "bunx": _npm,
    "uv": _uv,
    "uvx": _uv,
}


def _classify(argv: list[str], fs, effects: _Effects, *, xargs: bool) -> None:
    name = posixpath.basename(argv[0])
    args = argv[1:]
    if "/" in argv[0]:
        effects.aliases.append([name, *args])
        if fs.exists(argv[0]):
            effects.reads.append(argv[0])  # running a script reads it
    handler: _Handler | None = _HANDLERS.get(name)
    if handler is None and re.fullmatch(r"pip[0-9.]*", name):
        handler = lambda _n, a, f, e: _pip(a, f, e)  # noqa: E731
    if handler is None and _interpreter_family(name):
        handler = _interpreter
        effects.unmodelled.append(list(argv))  # a script does what it likes with its arguments
    if handler is None:
        effects.unmodelled.append(list(argv))
        _generic(name, args, fs, effects)
        if name in _SHELLS:
            effects.reads.extend(a for a in args[:1] if not a.startswith("-"))
        return
    handler(name, args, fs, effects)
    if xargs:
        effects.unk(f"xargs passes arguments that are not visible to {name}")


def split_command(command: str) -> list[list[str]] | None:
    """The individual simple commands (argv lists, wrappers removed), or None when UNKNOWN.

    ``nice git push && sh -c "ls -l"`` gives ``[["git", "push"], ["ls", "-l"]]``. Unknown means
    the command cannot be analysed: unparsable, command or process substitution, parameter
    expansion, brace groups, subshells, loops, functions, here-documents, background jobs,
    ``eval``/``source``/``sudo``..., or inline interpreter code such as ``python -c``.
    """
    if not isinstance(command, str):
        return None
    try:
        parser = _ShellParser()
        parser.parse(command)
        if parser.unknown:
            return None
        for cmd in parser.commands:
            if cmd.words and _semantic_unknown([w.text for w in cmd.words], xargs=cmd.xargs):
                return None
    except Exception:  # fail closed: anything surprising means "cannot be analysed"
        return None
    return [[w.text for w in cmd.words] for cmd in parser.commands if cmd.words]


def _semantic_unknown(argv: list[str], *, xargs: bool) -> list[str]:
    """Reasons a parsed command is still opaque, judged from its words alone."""
    effects = _Effects()
    _classify(argv, _NullFs(), effects, xargs=xargs)
    return effects.unknown
