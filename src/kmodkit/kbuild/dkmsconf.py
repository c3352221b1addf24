"""``dkms.conf`` read as data: a DKMS source tree described as a project, never run through a shell.

DKMS sources dkms.conf with bash.  kmodkit reads the part of bash that such files use for what they are,
assignments, and refuses the rest with the file and line (``FILE:LINE: ... is shell code``):

* read: ``NAME=value`` and ``NAME[N]=value``, one or more on a line, ``# comments``; values unquoted,
  ``"double-quoted"`` (``\\"``, ``\\$``, ``\\\\`` and backslash-newline as bash reads them) or ``'single-quoted'``;
  ``$NAME`` and ``${NAME}`` of a variable set earlier in the file (``$ARRAY`` is its element 0, as in bash);
  the variables DKMS sets for each kernel (:data:`RUNTIME`: ``$kernelver``, ``$kernel_source_dir``, ...)
  are kept as written, and allowed only in ``MAKE[N]`` and ``CLEAN``;
* refused: commands, ``if``/``case``/functions, ``$(...)`` and backquotes, ``${X:-y}`` and other parameter
  expansions, ``NAME=(...)`` arrays, ``$1``/``$@``, ``export``, variables never set.

:func:`read_tree` turns the assignments into a :class:`~kmodkit.kbuild.manifest.Manifest` (the one project
description every command reads; :meth:`Manifest.load` calls it for a directory with dkms.conf and no
kmodkit.toml): ``BUILT_MODULE_NAME[i]`` and ``BUILT_MODULE_LOCATION[i]`` name the modules, whose sources
come from the tree's Kbuild/Makefile obj-m lines (:class:`kmodkit.kbuild.adopt.Adoption`, the one reader of
those).  :data:`DIRECTIVES` says what is done with each other directive.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from kmodkit.errors import ConfigError, NotFoundError, UserError
from kmodkit.kbuild.manifest import Manifest, ModuleSpec

DKMS_CONF = "dkms.conf"
#: the largest dkms.conf read (real ones are a few hundred bytes)
MAX_BYTES = 256 * 1024
#: variables DKMS sets while it reads dkms.conf for one kernel: their values depend on the kernel and machine
RUNTIME = frozenset({"kernelver", "kernel_source_dir", "dkms_tree", "source_tree", "install_tree", "arch",
                     "module", "module_version", "kernel_config", "tmp_location"})
#: make variables a ``MAKE[0]`` may set that only say which kernel or directory to build in (kmodkit sets those)
_MAKE_VARS = frozenset({"M", "KERNELRELEASE", "KERNELVER", "KVER", "KVERSION", "KERNEL_VERSION", "KDIR",
                        "KERNELDIR", "KERNEL_DIR", "KSRC", "KERNEL_SRC", "KERNEL_SOURCE_DIR", "SRC", "src"})


class Policy(Enum):
    """What ``kmodkit build`` does with a dkms.conf directive."""

    USED = "used"  #: read into the project's description
    IGNORED = "ignored"  #: DKMS's business at install or boot time; the build is the same without it
    REFUSED = "refused"  #: it changes what is built in a way kmodkit does not do: the tree is refused


#: directive -> (policy, why); the module table (BUILT_MODULE_NAME, ...) and PACKAGE_* are read by read_tree.
#: A name that is no DKMS directive is a helper variable (``ver=1.2`` then ``PACKAGE_VERSION=$ver``).
DIRECTIVES: dict[str, tuple[Policy, str]] = {
    "PACKAGE_NAME": (Policy.USED, "the package's name"),
    "PACKAGE_VERSION": (Policy.USED, "every module's version"),
    "BUILT_MODULE_NAME": (Policy.USED, "the modules make builds"),
    "BUILT_MODULE_LOCATION": (Policy.USED, "each module's directory in the tree"),
    "DEST_MODULE_LOCATION": (Policy.USED, "where 'kmodkit install' puts the modules below /lib/modules/KVER"),
    "DEST_MODULE_NAME": (Policy.USED, "must equal BUILT_MODULE_NAME: kmodkit installs modules under their own name"),
    "MAKE": (Policy.USED, "not run: kmodkit runs Kbuild itself (make -C KDIR M=DIR modules), which is what a MAKE "
             "naming only the kernel and the directory does"),
    "CLEAN": (Policy.IGNORED, "kmodkit builds in a fresh copy, never cleaned"),
    "AUTOINSTALL": (Policy.IGNORED, "kmodkit's kernel hook ('kmodkit hook install') rebuilds registered projects"),
    "STRIP": (Policy.IGNORED, "kmodkit keeps debug information (kmodkit oops decodes with it)"),
    "POST_ADD": (Policy.IGNORED, "a DKMS add-time script"),
    "POST_BUILD": (Policy.IGNORED, "a DKMS script run on DKMS's own build directory"),
    "POST_INSTALL": (Policy.IGNORED, "a DKMS install-time script"),
    "POST_REMOVE": (Policy.IGNORED, "a DKMS remove-time script"),
    "PRE_INSTALL": (Policy.IGNORED, "a DKMS install-time script"),
    "OBSOLETE_BY": (Policy.IGNORED, "a DKMS install-time version check"),
    "NO_WEAK_MODULES": (Policy.IGNORED, "weak-modules is a Red Hat install-time tool"),
    "REMAKE_INITRD": (Policy.IGNORED, "deprecated by DKMS"),
    "MODULES_CONF": (Policy.IGNORED, "deprecated by DKMS"),
    "MODULES_CONF_OBSOLETES": (Policy.IGNORED, "deprecated by DKMS"),
    "MODULES_CONF_ALIAS_TYPE": (Policy.IGNORED, "deprecated by DKMS"),
    "MODULES_CONF_OBSOLETE_ONLY": (Policy.IGNORED, "deprecated by DKMS"),
    "SIGN_FILE": (Policy.IGNORED, "DKMS 3.0 reads signing settings from /etc/dkms/framework.conf only"),
    "MOK_SIGNING_KEY": (Policy.IGNORED, "DKMS 3.0 reads signing settings from /etc/dkms/framework.conf only"),
    "MOK_CERTIFICATE": (Policy.IGNORED, "DKMS 3.0 reads signing settings from /etc/dkms/framework.conf only"),
    "MAKE_MATCH": (Policy.REFUSED, "a make command chosen per kernel; give the tree one Kbuild that builds "
                   "for every kernel"),
    "PATCH": (Policy.REFUSED, "patches applied before the build; apply them to the tree first"),
    "PATCH_MATCH": (Policy.REFUSED, "patches applied per kernel; apply them to the tree first"),
    "PRE_BUILD": (Policy.REFUSED, "a script that changes the tree before make; run it once, or move its "
                  "work into the Kbuild"),
    "BUILD_DEPENDS": (Policy.REFUSED, "another DKMS package's exports; make it a kmodkit project and name it "
                      "in [project] depends of a kmodkit.toml"),
    "BUILD_EXCLUSIVE_KERNEL": (Policy.REFUSED, "kernels the package excludes; name the kernels with -k instead"),
    "BUILD_EXCLUSIVE_ARCH": (Policy.REFUSED, "architectures the package excludes; name the kernels with -k "
                             "instead"),
    "BUILD_EXCLUSIVE_CONFIG": (Policy.REFUSED, "kernel options the package needs; name the kernels with -k "
                               "instead"),
}
#: the module table: one entry per index
_MODULE_TABLE = ("BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION", "STRIP")


@dataclass(frozen=True)
class Assignment:
    """One ``NAME=value`` or ``NAME[N]=value`` of a dkms.conf."""

    name: str  #: the variable
    index: int | None  #: N of ``NAME[N]=``, None for ``NAME=``
    value: str  #: the value as bash would assign it; DKMS's per-kernel variables kept as ``${name}``
    line: int  #: the line the assignment starts on
    runtime: bool  #: whether the value holds a DKMS per-kernel variable (:data:`RUNTIME`)


@dataclass(frozen=True)
class DkmsConf:
    """A parsed dkms.conf: its assignments in order; a later one of the same name and index wins, as in bash."""

    path: Path  #: the dkms.conf file
    assignments: tuple[Assignment, ...]  #: every assignment, in file order

    def get(self, name: str, index: int | None = None) -> Assignment | None:
        """The last assignment of ``name`` (``name[index]``; index 0 and ``name=`` are one in bash), None if none."""
        want = index or 0
        found = None
        for a in self.assignments:
            if a.name == name and (a.index or 0) == want:
                found = a
        return found

    def indices(self, *names: str) -> list[int]:
        """Every index any of ``names`` is assigned at, sorted (``NAME=`` counts as index 0)."""
        return sorted({a.index or 0 for a in self.assignments if a.name in names})

    def error(self, a: Assignment | int, problem: str, fix: str | None = None) -> ConfigError:
        """A ConfigError whose subject is FILE:LINE of the assignment (or line)."""
        return ConfigError(f"{self.path}:{a if isinstance(a, int) else a.line}", problem, fix)


def read_conf(path: Path) -> DkmsConf:
    """Parse the dkms.conf at ``path``; NotFoundError when absent, ConfigError (FILE:LINE) for shell code."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(str(path), "no such dkms.conf", "name a DKMS source tree (a directory holding "
                            "dkms.conf)") from None
    except OSError as exc:
        raise UserError(str(path), f"cannot be read: {exc.strerror}") from None
    # opened without blocking and checked on the descriptor: a FIFO or a directory is refused, not read
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(str(path), "is not a regular file", "name the DKMS tree's dkms.conf")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ConfigError(str(path), f"is larger than {MAX_BYTES} bytes: not a dkms.conf")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}", "is not UTF-8 text") from None
    return parse_conf(text, path)


def parse_conf(text: str, path: Path) -> DkmsConf:
    """Parse dkms.conf ``text`` read from ``path`` (see the module's docstring for what is read and refused)."""
    return DkmsConf(path, tuple(_Parser(text, path).assignments()))


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN_HEAD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[([0-9]+)\])?=")
#: characters that end an unquoted word or are shell operators
_OPERATORS = set(";&|<>()")


class _Parser:
    def __init__(self, text: str, path: Path) -> None:
        self.text, self.path, self.pos, self.line = text, path, 0, 1
        self.scalars: dict[str, tuple[str, bool]] = {}  # name -> (value of element 0, runtime)

    def _refuse(self, what: str, line: int | None = None) -> ConfigError:
        line = line or self.line
        shown = self.text.splitlines()[line - 1].strip() if line <= len(self.text.splitlines()) else ""
        return ConfigError(f"{self.path}:{line}", f"{shown[:80]!r} is {what}: kmodkit reads dkms.conf as data and "
                           "never runs it through a shell",
                           'write it as NAME="value" or NAME[N]="value" assignments')

    def assignments(self) -> list[Assignment]:
        out: list[Assignment] = []
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t\r;":
                self.pos += 1
            elif c == "\n":
                self.pos += 1
                self.line += 1
            elif c == "\\" and text.startswith("\\\n", self.pos):
                self.pos += 2
                self.line += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                out.append(self._assignment())
                # after a value: blanks, then the end of the line, a comment, ';' or another assignment
                while self.pos < len(text) and text[self.pos] in " \t\r":
                    self.pos += 1
                if self.pos < len(text) and text[self.pos] not in "\n#;" and not _ASSIGN_HEAD.match(text, self.pos):
                    raise self._refuse("a command (a word after an assignment)")
        return out

    def _assignment(self) -> Assignment:
        m = _ASSIGN_HEAD.match(self.text, self.pos)
        if m is None:
            word = _NAME.match(self.text, self.pos)
            what = {"if": "a condition", "case": "a condition", "for": "a loop", "while": "a loop",
                    "function": "a function", "export": "an export", "source": "a source of another file",
                    "readonly": "a declaration", "declare": "a declaration", "local": "a declaration",
                    "unset": "an unset"}.get(word.group() if word else "", "shell code")
            if word and self.text.startswith("()", word.end()):
                what = "a function"
            raise self._refuse(what)
        start = self.line
        name, index = m.group(1), m.group(2)
        self.pos = m.end()
        if self.text.startswith("(", self.pos):
            raise self._refuse("an array written NAME=(...); write NAME[0]=... NAME[1]=...")
        value, runtime = self._value()
        if index is None or int(index) == 0:
            self.scalars[name] = (value, runtime)
        return Assignment(name, None if index is None else int(index), value, start, runtime)

    def _value(self) -> tuple[str, bool]:
        text, out, runtime = self.text, [], False
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t\r\n" or c in _OPERATORS:
                if c in "()&|<>":
                    raise self._refuse("shell code (an operator in a value)")
                break
            if c == "'":
                end = text.find("'", self.pos + 1)
                if end < 0:
                    raise self._refuse("a quote that is never closed")
                out.append(text[self.pos + 1:end])
                self.line += text.count("\n", self.pos, end)
                self.pos = end + 1
            elif c == '"':
                self.pos += 1
                opened = self.line
                while True:
                    if self.pos >= len(text):
                        raise self._refuse("a quote that is never closed", opened)
                    c = text[self.pos]
                    if c == '"':
                        self.pos += 1
                        break
                    if c == "\\" and self.pos + 1 < len(text) and text[self.pos + 1] in '$`"\\\n':
                        if text[self.pos + 1] == "\n":
                            self.line += 1
                        else:
                            out.append(text[self.pos + 1])
                        self.pos += 2
                    elif c == "$":
                        piece, rt = self._expansion()
                        out.append(piece)
                        runtime |= rt
                    elif c == "`":
                        raise self._refuse("a command substitution (`...`)")
                    else:
                        if c == "\n":
                            self.line += 1
                        out.append(c)
                        self.pos += 1
            elif c == "\\":
                if text.startswith("\\\n", self.pos):
                    self.line += 1
                elif self.pos + 1 < len(text):
                    out.append(text[self.pos + 1])
                self.pos += 2
            elif c == "$":
                piece, rt = self._expansion()
                out.append(piece)
                runtime |= rt
            elif c == "`":
                raise self._refuse("a command substitution (`...`)")
            else:
                out.append(c)
                self.pos += 1
        return "".join(out), runtime

    def _expansion(self) -> tuple[str, bool]:
        """``$NAME`` or ``${NAME}`` at self.pos: its value (a per-kernel variable kept as ``${NAME}``)."""
        text = self.text
        nxt = text[self.pos + 1:self.pos + 2]
        if nxt == "(":
            raise self._refuse("a command substitution ($(...))")
        if nxt == "{":
            m = _NAME.match(text, self.pos + 2)
            if m is None or not text.startswith("}", m.end()):
                raise self._refuse("a parameter expansion kmodkit does not evaluate (only ${NAME} is read)")
            name, end = m.group(), m.end() + 1
        else:
            m = _NAME.match(text, self.pos + 1)
            if m is None:
                if nxt and nxt not in " \t\n\"'":
                    raise self._refuse(f"a special parameter (${nxt})")
                self.pos += 1
                return "$", False
            name, end = m.group(), m.end()
        self.pos = end
        if name in RUNTIME:
            return "${" + name + "}", True
        if name not in self.scalars:
            raise self._refuse(f"a use of ${name}, which the file never sets")
        return self.scalars[name]


def read_tree(directory: Path) -> Manifest:
    """The project a DKMS source tree describes (``directory``/dkms.conf and its Kbuild files).

    Raises NotFoundError when there is no dkms.conf, ConfigError (FILE:LINE) for shell code, a directive
    kmodkit refuses (:data:`DIRECTIVES`) or a module make does not build; UserError when no obj-m is found.
    """
    from kmodkit.kbuild.adopt import Adoption

    directory = Path(directory)
    conf = read_conf(directory / DKMS_CONF)
    for a in conf.assignments:
        policy = DIRECTIVES.get(a.name)
        if policy is not None and policy[0] is Policy.REFUSED:
            raise conf.error(a, f"{a.name} is refused: {policy[1]}", _switch_hint(a.name))
        if a.runtime and a.name not in ("MAKE", "CLEAN") and (policy is not None or a.name in _MODULE_TABLE):
            raise conf.error(a, f"{a.name} depends on the kernel (it uses a variable DKMS sets per kernel)",
                             "give it one value for every kernel")
    name, version = conf.get("PACKAGE_NAME"), conf.get("PACKAGE_VERSION")
    for key, given in (("PACKAGE_NAME", name), ("PACKAGE_VERSION", version)):
        if given is None or not given.value.strip():
            raise conf.error(1, f"{key} is missing or empty (DKMS needs it too)", f'add {key}="..."')
    assert name is not None and version is not None
    make = conf.get("MAKE")
    if make is not None:
        _check_make(conf, make)
    indices = conf.indices("BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION")
    if not indices:
        raise conf.error(1, "names no module (no BUILT_MODULE_NAME or DEST_MODULE_LOCATION)",
                         'add BUILT_MODULE_NAME[0]="NAME" and DEST_MODULE_LOCATION[0]="/updates"')
    found = {m.name: m for m in Adoption(directory).modules}
    modules: list[ModuleSpec] = []
    locations: list[tuple[str, Assignment]] = []
    for i in indices:
        built = conf.get("BUILT_MODULE_NAME", i)
        dest_loc = conf.get("DEST_MODULE_LOCATION", i)
        # DKMS: an entry without BUILT_MODULE_NAME is the package's name when the package has one module
        module = built.value if built is not None and built.value else \
            name.value if len(conf.indices("DEST_MODULE_LOCATION")) == 1 else ""
        where = built or dest_loc or conf.get("BUILT_MODULE_LOCATION", i) or conf.get("DEST_MODULE_NAME", i)
        assert where is not None
        if not module:
            raise conf.error(where, f"entry {i} has no BUILT_MODULE_NAME[{i}]", f'add BUILT_MODULE_NAME[{i}]="NAME"')
        if module.endswith((".o", ".ko")):
            raise conf.error(where, f"BUILT_MODULE_NAME[{i}] '{module}' ends in .o or .ko (DKMS refuses it too)",
                             "name the module without its suffix")
        dest_name = conf.get("DEST_MODULE_NAME", i)
        if dest_name is not None and dest_name.value and dest_name.value != module:
            raise conf.error(dest_name, f"DEST_MODULE_NAME[{i}] renames {module} to {dest_name.value} at install, "
                             "which kmodkit does not do", f"rename the module in its Kbuild (obj-m += "
                             f"{dest_name.value}.o)")
        if dest_loc is None or not dest_loc.value:
            raise conf.error(where, f"entry {i} has no DEST_MODULE_LOCATION[{i}] (DKMS needs it too)",
                             f'add DEST_MODULE_LOCATION[{i}]="/updates"')
        locations.append((dest_loc.value, dest_loc))
        loc = conf.get("BUILT_MODULE_LOCATION", i)
        subdir = os.path.normpath(loc.value) if loc is not None and loc.value else "."
        if os.path.isabs(subdir) or subdir.split(os.sep)[0] == "..":
            assert loc is not None
            raise conf.error(loc, f"BUILT_MODULE_LOCATION[{i}] '{loc.value}' is outside the tree",
                             "name a directory relative to dkms.conf's")
        spec = found.get(module)
        if spec is None:
            raise conf.error(where, f"make builds no module '{module}' that kmodkit can read from the tree's "
                             f"Kbuild or Makefile obj-m lines ({', '.join(found) or 'none found'})",
                             f"add obj-m += {module}.o to the Kbuild of '{subdir}'")
        if (spec.subdir or ".") != subdir:
            raise conf.error(loc or where, f"BUILT_MODULE_LOCATION[{i}] says {module}.ko is built in '{subdir}', "
                             f"its Kbuild builds it in '{spec.subdir or '.'}'", "make the two agree")
        modules.append(ModuleSpec(name=module, version=version.value, description="", license="",
                                  sources=spec.sources, subdir=spec.subdir, include=(), cflags=(), parameters=(),
                                  load_at_boot=False, options=""))
    install = locations[0][0].strip("/")
    for value, a in locations[1:]:
        if value.strip("/") != install:
            raise conf.error(a, f"DEST_MODULE_LOCATION puts modules in both '{locations[0][0]}' and '{value}'; "
                             "kmodkit installs a project's modules into one directory",
                             "give every module the same DEST_MODULE_LOCATION")
    return Manifest(path=conf.path, modules=tuple(modules), depends=(), targets=(), signing=None, test_script=None,
                    install_location=install or "updates")


def _check_make(conf: DkmsConf, make: Assignment) -> None:
    """Refuse a MAKE[0] that does more than name the kernel and the directory (kmodkit runs Kbuild itself)."""
    words = make.value.split()
    if not words or words[0].strip("'") != "make":
        raise conf.error(make, f"MAKE[0] runs '{words[0] if words else ''}', not make: kmodkit builds with "
                         "Kbuild itself (make -C KDIR M=DIR modules)", "make the tree's Kbuild build the modules "
                         "and drop MAKE[0]")
    rest = iter(words[1:])
    for w in rest:
        if w == "-C":
            target = next(rest, "")
            if "${kernel_source_dir}" not in target and "${kernelver}" not in target:
                raise conf.error(make, f"MAKE[0] runs make in '{target}', not in the kernel's build directory",
                                 "make the tree's top Kbuild build the modules (obj-m += DIR/) and drop MAKE[0]")
        elif w in ("modules", "all", "default") or re.fullmatch(r"-j[0-9]*", w):
            continue
        elif "=" in w and w.split("=", 1)[0] in _MAKE_VARS:
            continue
        else:
            raise conf.error(make, f"MAKE[0] passes '{w}' to make, which kmodkit build would not",
                             "move it into the tree's Kbuild (e.g. ccflags-y += ...) and drop it from MAKE[0]")


def _switch_hint(name: str) -> str:
    return {"PATCH": "apply the patches to the tree and drop PATCH[]",
            "PATCH_MATCH": "apply the patches to the tree and drop PATCH[] and PATCH_MATCH[]",
            }.get(name, f"drop {name} from dkms.conf (or write a kmodkit.toml with 'kmodkit init')")
