"""Installed kernels, their headers (the Kbuild tree), their configuration and the compiler they were built with.

:func:`kernel` is the one seam that turns a release into a :class:`Kernel`: a kernel installed on this
machine, else one fetched from the archive into kmodkit's cache (``kmodkit kernels fetch``), whose
directory stands for the machine root it would be installed in.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from kmodkit.sysroot import HOST, Root

log = logging.getLogger(__name__)

#: files a Kbuild tree needs to build an out-of-tree module
HEADER_FILES = ("Makefile", "Module.symvers", ".config")


@dataclass(frozen=True)
class Kernel:
    """A kernel installed below a root: its module directory and its headers."""

    release: str  #: e.g. 6.1.0-56-cloud-amd64
    moddir: Path  #: ROOT/lib/modules/RELEASE (may not exist for a kernel that was only named)
    build_link: Path  #: ROOT/lib/modules/RELEASE/build
    headers: Path | None  #: the Kbuild tree the build link points to (within the root), None when absent
    missing: tuple[str, ...]  #: what the headers lack: "build link", "Makefile", "Module.symvers", ".config"
    root: Root = HOST  #: the machine root its files are below (a fetched kernel's directory in the cache)
    fetched: bool = False  #: whether it comes from the cache (kmodkit kernels fetch), not installed here

    @property
    def installed(self) -> bool:
        """Whether the kernel's module directory exists (for a fetched kernel: in its directory in the cache)."""
        return self.moddir.is_dir()

    @property
    def headers_complete(self) -> bool:
        """Whether the headers can build a module (build link and every file of HEADER_FILES)."""
        return self.headers is not None and not self.missing

    @property
    def flavour(self) -> str:
        """The flavour suffix of the release (``cloud-amd64``, ``amd64``, ``default``), or "" when none."""
        return flavour_of(self.release)


def flavour_of(release: str) -> str:
    """The flavour suffix of a release (``cloud-amd64``, ``amd64``, ``default``), or "" when none."""
    m = re.search(r"-((?:cloud-|rt-)?[a-z][a-z0-9_]*)$", release)
    return m.group(1) if m else ""


def release_problem(release: str) -> str | None:
    """Why ``release`` cannot be a kernel release (a directory name under /lib/modules), or None when it can."""
    if not release or release in (".", ".."):
        return "is not a kernel release"
    if "/" in release:
        return "holds a /: a kernel release is one directory name under /lib/modules"
    if any(not c.isprintable() or c.isspace() for c in release):
        return "holds blanks or control characters"
    return None


def kernel(release: str, root: Root = HOST) -> Kernel:
    """The kernel ``release`` below ``root``; a kernel that is not installed comes back with everything missing.

    On this machine a kernel that is not installed but was fetched (``kmodkit kernels fetch``) comes from
    kmodkit's cache; an installed kernel wins over a fetched one of the same release.
    """
    moddir = root.join("/lib/modules") / release
    if root.is_host and not os.path.lexists(moddir):
        fetched = fetched_root(release)
        if fetched is not None:
            return _kernel(release, fetched, True)
    return _kernel(release, root, False)


def _kernel(release: str, root: Root, fetched: bool) -> Kernel:
    moddir = root.join("/lib/modules") / release
    link = moddir / "build"
    headers = root.resolve_link(link)
    if headers is None:
        return Kernel(release, moddir, link, None, ("build link",) + HEADER_FILES, root, fetched)
    missing = tuple(f for f in HEADER_FILES if not (headers / f).exists())
    return Kernel(release, moddir, link, headers, missing, root, fetched)


def fetched_root(release: str) -> Root | None:
    """The machine root of the kernel ``release`` fetched into kmodkit's cache; None when it was not fetched."""
    from kmodkit.archive.store import root_of

    path = root_of(release)
    return Root(path) if path is not None else None


def kernel_root(release: str, root: Root = HOST) -> Root:
    """The machine root holding the files of kernel ``release`` (/lib/modules, /boot): ``root``, or the cache's
    directory of a fetched kernel when ``root`` is this machine and the kernel is not installed here."""
    return kernel(release, root).root


def installed_kernels(root: Root = HOST) -> list[Kernel]:
    """Kernels with a module directory below ``root``, newest first; empty when there are none."""
    base = root.join("/lib/modules")
    try:
        names = [p.name for p in base.iterdir() if p.is_dir()]
    except OSError:
        return []
    return [kernel(n, root) for n in sorted(names, key=version_key, reverse=True)]


def check_installed(releases: Collection[str], root: Root = HOST) -> None:
    """Refuse the first of ``releases`` (named with -k) that is not installed below ``root``: a typo until shown
    otherwise, so the UserError names the installed kernels closest to it."""
    import difflib

    from kmodkit.errors import UserError

    installed = [k.release for k in installed_kernels(root)]
    for release in releases:
        if kernel(release, root).installed:
            continue
        close = difflib.get_close_matches(release, installed, n=3, cutoff=0.6)
        raise UserError(f"-k {release}", f"is not an installed kernel (no {root.join('/lib/modules')}/{release})",
                        f"did you mean {' or '.join(close)}?" if close else
                        ("the installed kernels are " + ", ".join(installed)
                         + f"; or fetch it from the archive: kmodkit kernels fetch {release}") if installed else
                        f"install the kernel and its headers, or fetch them: kmodkit kernels fetch {release}")


def version_key(release: str) -> list[int]:
    """A sort key ordering releases by their numbers (6.1.0-9 before 6.1.0-10)."""
    return [int(x) for x in re.findall(r"\d+", release)]


def running_release(root: Root = HOST) -> str | None:
    """The running kernel's release (ROOT/proc/sys/kernel/osrelease); None when unknown."""
    try:
        return root.join("/proc/sys/kernel/osrelease").read_text().strip() or None
    except OSError:
        return os.uname().release if root.is_host else None


def module_support(root: Root = HOST) -> bool:
    """Whether the running kernel can load modules (it has /proc/modules)."""
    return root.join("/proc/modules").exists()


# --- kernel configuration -------------------------------------------------------------------

_CONF_LINE = re.compile(r'^(CONFIG_\w+)=(.*)$')
_NOT_SET = re.compile(r'^# (CONFIG_\w+) is not set$')
_DEFINE = re.compile(r'^#define (CONFIG_\w+) (.*)$')


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X -> value ('y', 'm', 'n' for "is not set", strings unquoted) of a .config or auto.conf."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _CONF_LINE.match(line)
        if m:
            out[m.group(1)] = _unquote(m.group(2))
            continue
        m = _NOT_SET.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


def parse_autoconf(text: str) -> dict[str, str]:
    """CONFIG_X -> value of include/generated/autoconf.h (``1`` becomes 'y', ``CONFIG_X_MODULE`` 'm')."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _DEFINE.match(line)
        if not m:
            continue
        name, value = m.group(1), m.group(2).strip()
        if name.endswith("_MODULE") and value == "1":
            out[name[: -len("_MODULE")]] = "m"
        elif value == "1":
            out.setdefault(name, "y")
        else:
            out[name] = _unquote(value)
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def kernel_config(headers: Path, only: Collection[str] = ()) -> dict[str, str]:
    """The configuration of a Kbuild tree: .config, else include/config/auto.conf, else autoconf.h; empty if none.

    ``only``: just these options, read without parsing the other ~9,000 lines of a distro's .config.
    """
    for name, parse in ((".config", parse_config), ("include/config/auto.conf", parse_config),
                        ("include/generated/autoconf.h", parse_autoconf)):
        try:
            text = (headers / name).read_text(errors="replace")
        except OSError:
            continue
        if not only:
            return parse(text)
        return {k: v for k, v in parse("\n".join(_lines_naming(text, only))).items() if k in only}
    return {}


def _lines_naming(text: str, names: Collection[str]) -> list[str]:
    # str.find over the text is ~50x faster than a line-anchored regex over 9,000 lines
    out = []
    for name in names:
        i = text.find(name)
        while i >= 0:
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            out.append(text[text.rfind("\n", 0, i) + 1:end])
            i = text.find(name, end)
    return out


# --- compilers ------------------------------------------------------------------------------


class CompilerKind(Enum):
    """Which compiler family built a kernel."""

    GCC = "gcc"
    CLANG = "clang"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CompilerId:
    """A compiler named by its version text (CONFIG_CC_VERSION_TEXT or the first line of ``--version``)."""

    text: str  #: the whole text, e.g. "x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
    program: str  #: the program name it starts with ("x86_64-linux-gnu-gcc-12"); "" for clang's text
    kind: CompilerKind  #: gcc or clang
    version: str  #: "12.2.0"; "" when the text holds no version
    major: int | None  #: 12; None when the text holds no version

    @classmethod
    def parse(cls, text: str) -> CompilerId:
        """Parse a version text; unknown texts give kind UNKNOWN and no version."""
        text = text.strip()
        vm = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\s|$)", text)
        version = vm.group(0).strip() if vm else ""
        major = int(vm.group(1)) if vm else None
        if "clang" in text.split("(", 1)[0]:
            return cls(text, "", CompilerKind.CLANG, version, major)
        first = text.split(" ", 1)[0] if text else ""
        kind = CompilerKind.GCC if re.search(r"(^|-)(gcc|cc)(-\d+)?$", first) else CompilerKind.UNKNOWN
        return cls(text, first if kind is CompilerKind.GCC else "", kind, version, major)


def kernel_compiler(config: dict[str, str]) -> CompilerId | None:
    """The compiler a kernel was built with (CONFIG_CC_VERSION_TEXT); None when the config does not say."""
    text = config.get("CONFIG_CC_VERSION_TEXT")
    return CompilerId.parse(text) if text else None


class CompilerMatch(Enum):
    """How the compiler chosen for a kernel relates to the one that built it."""

    EXACT = "exact"  #: the very program named in CONFIG_CC_VERSION_TEXT
    SAME_MAJOR = "same-major"  #: another program of the same major version (gcc-N, or gcc itself)
    MISSING = "missing"  #: no compiler of that major version on PATH
    UNKNOWN = "unknown"  #: the kernel's config does not name its compiler; gcc on PATH is used


@dataclass(frozen=True)
class CompilerChoice:
    """The compiler to build a kernel's modules with."""

    wanted: CompilerId | None  #: what built the kernel, None when unknown
    program: str | None  #: program to pass as CC=..., None when MISSING
    path: Path | None  #: where it was found, None when MISSING
    found: CompilerId | None  #: its own ``--version`` first line, None when MISSING or not runnable
    match: CompilerMatch  #: how it relates to ``wanted``


def which(name: str, root: Root = HOST, path: str | None = None) -> Path | None:
    """``name`` on PATH (entries re-rooted below ``root``) as an executable file; None when absent."""
    search = path if path is not None else os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    dirs = search.split(os.pathsep)
    if not root.is_host:
        dirs = [str(root.join(d)) for d in dirs if d.startswith("/")]
        dirs += [str(root.join(d)) for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin")]
    else:
        dirs += ["/usr/sbin", "/sbin"]
    for d in dirs:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def version_of(program: Path) -> CompilerId | None:
    """The first line of ``program --version`` parsed; None when it cannot run."""
    try:
        st = program.stat()
    except OSError:
        return None
    return _version_of(str(program), st.st_dev, st.st_ino, st.st_mtime_ns)


# asked once per process and file: kernels built with one compiler share it (a build for three kernels
# ran gcc-12 --version twice); the file's identity is in the key, so a compiler replaced on disk is asked again
@functools.lru_cache(maxsize=64)
def _version_of(program: str, dev: int, ino: int, mtime_ns: int) -> CompilerId | None:
    try:
        out = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return CompilerId.parse(first) if first else None


def choose_compiler(wanted: CompilerId | None, root: Root = HOST) -> CompilerChoice:
    """The compiler for a kernel built by ``wanted``: the same program, else ``gcc-N``, else ``gcc`` of major N.

    Comes back with match MISSING (and no program) when nothing of that major version is on PATH.
    """
    if wanted is None or wanted.kind is CompilerKind.UNKNOWN or wanted.major is None:
        path = which("gcc", root)
        found = version_of(path) if path else None
        return CompilerChoice(wanted, "gcc" if path else None, path, found,
                              CompilerMatch.UNKNOWN if path else CompilerMatch.MISSING)
    base = "clang" if wanted.kind is CompilerKind.CLANG else "gcc"
    candidates = ([wanted.program] if wanted.program else []) + [f"{base}-{wanted.major}", base]
    for i, name in enumerate(dict.fromkeys(candidates)):
        path = which(name, root)
        if path is None:
            continue
        found = version_of(path)
        if found is None or found.major != wanted.major:
            continue
        match = CompilerMatch.EXACT if i == 0 and name == wanted.program else CompilerMatch.SAME_MAJOR
        return CompilerChoice(wanted, name, path, found, match)
    return CompilerChoice(wanted, None, None, None, CompilerMatch.MISSING)


def headers_identity(headers: Path) -> str:
    """A string that changes when a Kbuild tree changes: its real path and the size/mtime of its key files."""
    parts = [str(headers.resolve())]
    for name in HEADER_FILES + ("include/generated/utsrelease.h", "include/config/auto.conf"):
        try:
            st = (headers / name).stat()
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:-")
    return "|".join(parts)
