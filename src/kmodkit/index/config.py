"""modprobe.d configuration, read as libkmod reads it (libkmod-config.c, kmod 30).

Files come from ``/etc/modprobe.d``, ``/run/modprobe.d``,
``/usr/local/lib/modprobe.d`` and ``/lib/modprobe.d`` (or the ``-C`` paths):
every ``*.conf`` / ``*.alias`` file, sorted by file name, a name found in an
earlier directory hiding the same name later on.  The tree's
``modules.softdep`` joins that sorted list under its own name.  Options on
the kernel command line (``MODULE.PARAM=VALUE``, ``modprobe.blacklist=``)
come last.  A bad line is reported as ``FILE line N: ...`` and skipped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from kmodkit.index.depmodconf import config_files, pem_problem, read_wrapped
from kmodkit.index.glob import alias_normalize

log = logging.getLogger(__name__)

#: modprobe.d directories in libkmod's order
MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d", "/lib/modprobe.d")


@dataclass(frozen=True)
class Softdep:
    """A ``softdep MODULE pre: ... post: ...`` line."""

    module: str  #: the module name (a glob pattern, matched with fnmatch)
    pre: tuple[str, ...]  #: names/aliases to load before it
    post: tuple[str, ...]  #: names/aliases to load after it


@dataclass(frozen=True)
class Weakdep:
    """A ``weakdep MODULE MODULES...`` line (kmod 33 and later): modules an initramfs should carry along.

    modprobe never loads them: they matter to tools that gather modules
    (``kmod_module_get_weakdeps``), not to ``--show-depends``.
    """

    module: str  #: the module name (a glob pattern, matched with fnmatch)
    weak: tuple[str, ...]  #: names/aliases it may use


@dataclass(frozen=True)
class Command:
    """An ``install`` or ``remove`` line."""

    module: str  #: the module name (a glob pattern for install lookups of a module)
    command: str  #: the shell command, as written


@dataclass
class ModprobeConfig:
    """Everything modprobe.d (and the kernel command line) says, in file order."""

    aliases: list[tuple[str, str]] = field(default_factory=list)  #: (pattern, module)
    blacklist: list[str] = field(default_factory=list)  #: blacklisted module names
    options: list[tuple[str, str]] = field(default_factory=list)  #: (module or alias, options)
    install: list[Command] = field(default_factory=list)  #: install commands
    remove: list[Command] = field(default_factory=list)  #: remove commands
    softdeps: list[Softdep] = field(default_factory=list)  #: soft dependencies
    weakdeps: list[Weakdep] = field(default_factory=list)  #: weak dependencies (kmod 33+)
    problems: list[str] = field(default_factory=list)  #: "FILE line N: ..." for skipped lines
    files: list[str] = field(default_factory=list)  #: the files read, in order

    @classmethod
    def load(cls, moddir: str | None, paths: list[str] | None = None, cmdline: str | None = None) -> ModprobeConfig:
        """Read the configuration for the tree ``moddir``.

        ``paths`` replaces the default directories (modprobe's ``-C``);
        ``cmdline`` is the kernel command line (default: ``/proc/cmdline``
        when readable, as libkmod does; pass ``""`` to ignore it).
        """
        cfg = cls()
        dirs = list(paths) if paths is not None else list(MODPROBE_DIRS)
        files = config_files(dirs, (".conf", ".alias"))
        if moddir is not None:
            names = {os.path.basename(f): f for f in files}
            # the tree's files are listed first, so each hides a same-named file (modules.weakdep: kmod 33+)
            for own in ("modules.softdep", "modules.weakdep"):
                names[own] = os.path.join(moddir, own)
            files = [names[n] for n in sorted(names, key=os.fsencode)]
        for fname in files:
            if os.path.exists(fname):
                cfg._parse_file(fname)
        if cmdline is None:
            try:
                with open("/proc/cmdline", encoding="utf-8", errors="surrogateescape") as f:
                    cmdline = f.read()
            except OSError:
                cmdline = ""
        cfg._parse_cmdline(cmdline)
        return cfg

    def _parse_file(self, fname: str) -> None:
        self.files.append(fname)
        lines = read_wrapped(fname)
        pem = pem_problem(fname, lines, "modprobe.d")
        if pem is not None:
            self.problems.append(pem)
            log.warning("%s", pem)
            return
        for lineno, line in lines:
            if not line or line.startswith("#"):
                continue
            words = line.replace("\t", " ").split(" ")
            words = [w for w in words if w]
            if not words:
                continue
            cmd = words[0]
            rest = _rest_after(line, 2)
            ok = True
            if cmd == "alias":
                alias, mod = _underscores(_word(words, 1)), _underscores(_word(words, 2))
                ok = alias is not None and mod is not None
                if ok:
                    assert alias is not None and mod is not None
                    self.aliases.append((alias, mod))
            elif cmd == "blacklist":
                mod = _underscores(_word(words, 1))
                ok = mod is not None
                if mod is not None:
                    self.blacklist.append(mod)
            elif cmd in ("options", "install", "remove", "softdep", "weakdep"):
                mod = _underscores(_word(words, 1))
                ok = mod is not None and rest is not None
                if mod is not None and rest is not None:
                    if cmd == "options":
                        self.options.append((mod, rest.replace("\t", " ")))
                    elif cmd == "install":
                        self.install.append(Command(mod, rest))
                    elif cmd == "remove":
                        self.remove.append(Command(mod, rest))
                    elif cmd == "weakdep":
                        self.weakdeps.append(Weakdep(mod, tuple(rest.split())))
                    else:
                        self.softdeps.append(_parse_softdep(mod, rest))
            elif cmd in ("include", "config"):
                self.problems.append(f"{fname}: command {cmd} is deprecated and not parsed anymore")
                log.error("%s: command %s is deprecated and not parsed anymore", fname, cmd)
                continue
            else:
                ok = False
            if not ok:
                msg = f"{fname} line {lineno}: ignoring bad line starting with '{cmd}'"
                self.problems.append(msg)
                log.warning("%s", msg)

    def _parse_cmdline(self, cmdline: str) -> None:
        for modname, param, value in _cmdline_options(cmdline):
            if modname == "modprobe" and param.startswith("blacklist="):
                self.blacklist.extend((value or "").split(","))
                continue
            mod = _underscores(modname)
            if mod is None:
                log.error("Ignoring bad option on kernel command line while parsing module name: '%s'", modname)
                continue
            self.options.append((mod, param))

    def options_for(self, name: str, alias: str | None = None) -> str:
        """Options for module ``name`` (or the alias it was found by), joined by spaces; ``""`` when none."""
        found = [opts for mod, opts in self.options if (mod == name or (alias is not None and mod == alias)) and opts]
        return " ".join(found)

    def is_blacklisted(self, name: str) -> bool:
        """Whether ``name`` is blacklisted (modprobe applies this to aliases only)."""
        return name in self.blacklist


def _word(words: list[str], i: int) -> str | None:
    return words[i] if i < len(words) else None


def _rest_after(line: str, nwords: int) -> str | None:
    """What ``strtok_r(NULL, "\\0")`` returns after ``nwords`` words: the rest of the line, or None."""
    pos = 0
    n = len(line)
    for _ in range(nwords):
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos >= n:
            return None
        while pos < n and line[pos] not in " \t":
            pos += 1
        if pos < n:
            pos += 1  # strtok_r puts its NUL on the separator and steps past it
    return line[pos:] if pos < n else None


def _underscores(s: str | None) -> str | None:
    """kmod's ``underscores``: ``-`` to ``_`` outside brackets; None for a bad bracket or no word."""
    return None if s is None else alias_normalize(s)


def _parse_softdep(module: str, text: str) -> Softdep:
    pre: list[str] = []
    post: list[str] = []
    mode = None
    for word in text.split():
        if word == "pre:":
            mode = "pre"
        elif word == "post:":
            mode = "post"
        elif mode == "pre":
            pre.append(word)
        elif mode == "post":
            post.append(word)
    return Softdep(module, tuple(pre), tuple(post))


def _cmdline_options(cmdline: str) -> list[tuple[str, str, str | None]]:
    """``(module, "param=value", value)`` for each ``module.param[=value]`` word, as libkmod splits them."""
    out: list[tuple[str, str, str | None]] = []
    buf = cmdline
    state = "modname"
    modname_start = 0
    param_start = -1
    value_start = -1
    quoted = False
    quote_start = -1
    i = 0
    n = len(buf)
    while i <= n:
        c = buf[i] if i < n else "\0"
        complete = False
        if c == '"':
            quoted = not quoted
            if quoted and state == "modname" and i == modname_start:
                quote_start = i
                modname_start = i + 1
            elif state != "value":
                state = "ignore"
        elif c in "\0 \n\t\v\f\r":
            if quoted and state == "value":
                pass
            elif quoted:
                state = "ignore"
            elif state in ("value", "param"):
                complete = True
            else:
                modname_start = i + 1
                state = "modname"
                quote_start = -1
        elif c == ".":
            if state == "modname":
                param_start = i + 1
                state = "param"
            elif state == "param":
                state = "ignore"
        elif c == "=":
            if state == "param":
                value_start = i + 1
                state = "value"
            elif state == "modname":
                state = "ignore"
        if complete:
            modname = buf[modname_start:param_start - 1]
            param = buf[param_start:i]
            value = buf[value_start:i] if state == "value" else None
            if quote_start >= 0 and quote_start < modname_start and value is not None:
                # re-quote what a boot loader unquoted: param="value with spaces"
                key = param[:len(param) - len(value) - 1]
                param = f'{key}="{value}'
            out.append((modname, param, value))
            modname_start = i + 1
            state = "modname"
            quote_start = -1
        i += 1
    return out
