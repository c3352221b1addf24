"""``kmodkit.toml``: the project manifest, read with tomllib; every error names the key and FILE:LINE.

This is the one reader of kmodkit.toml: ``build``, ``lint``, ``load`` (parameter defaults), ``health`` and
the exporter all go through :func:`read_document`, which refuses, with one error line and at once, what
would hang or exhaust the parser: a file that is not a regular file (a FIFO, /dev/zero), one larger than
:data:`MAX_BYTES`, bytes that are not UTF-8, keys of more than :data:`MAX_DEPTH` dotted parts (tomllib's
time grows with the square of their count) and nesting deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodkit.errors import ConfigError, NotFoundError, from_oserror
from kmodkit.kbuild.kernels import release_problem
from kmodkit.kbuild.names import name_problem

MANIFEST = "kmodkit.toml"
#: the largest manifest read: a project's is about 1 KB, and tomllib needs ~0.1 s per 64 KB of many keys
MAX_BYTES = 128 * 1024
#: the most parts a dotted key may have, and the deepest nesting of tables and arrays
MAX_DEPTH = 32
#: module_param types the kernel knows (include/linux/moduleparam.h)
PARAM_TYPES = ("byte", "short", "ushort", "int", "uint", "long", "ulong", "ullong", "hexint", "charp", "bool",
               "invbool")
#: what a parameter's integer default must fit in: the widest module_param types (long, ullong)
PARAM_INT_RANGE = (-(2**63), 2**64 - 1)
#: taint letters a health check expects when the manifest does not say (out-of-tree, unsigned)
DEFAULT_ALLOWED_TAINT = "OE"


@dataclass(frozen=True)
class ParameterSpec:
    """One module parameter as the manifest declares it (what a .ko declares is modfile's Parameter)."""

    name: str  #: the parameter's name
    type: str  #: its module_param type (int, charp, bool, ...)
    default: str | int | bool | None  #: its default value, None when not given
    description: str  #: its MODULE_PARM_DESC text, "" when not given


@dataclass(frozen=True)
class Signing:
    """How built modules are signed."""

    key: str  #: private key: a path (relative to the project) or a pkcs11: URI
    cert: str  #: the certificate matching the key: a path, "" when the key holds it
    hash: str  #: digest algorithm, e.g. sha256


@dataclass(frozen=True)
class Manifest:
    """A module project's manifest."""

    path: Path  #: the kmodkit.toml file
    name: str  #: module name (a C identifier)
    version: str  #: module version (MODULE_VERSION)
    description: str  #: one-line description, "" when absent
    license: str  #: MODULE_LICENSE string, "" when absent
    sources: tuple[str, ...]  #: source files, relative to the project
    parameters: tuple[ParameterSpec, ...]  #: declared parameters
    targets: tuple[str, ...]  #: default target kernels; empty means every installed kernel
    signing: Signing | None  #: None when no signing key is named
    test_script: str | None  #: script the VM harness runs, relative to the project; None when absent

    @property
    def project(self) -> Path:
        """The project directory (the manifest's directory)."""
        return self.path.parent

    def source_paths(self) -> list[Path]:
        """The sources as paths inside the project."""
        return [self.project / s for s in self.sources]

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest file, or the kmodkit.toml of a project directory.

        Raises NotFoundError when it is absent and ConfigError (subject FILE or FILE:LINE) when it is not a
        regular file, too large, not UTF-8 or malformed.
        """
        return _manifest(read_document(path))


@dataclass(frozen=True)
class Expectation:
    """One module a manifest expects loaded: what ``kmodkit health`` and the exporter check."""

    name: str  #: the module's name
    version: str | None  #: the expected MODULE_VERSION, None for any
    srcversion: str | None  #: the expected srcversion, None for any
    allow_taint: str  #: taint letters that are not a problem


def load_expectations(path: str | Path) -> list[Expectation]:
    """What the manifest at ``path`` (a file or a project directory) expects loaded, in order.

    Its ``[module]`` (name, version) when it has one, checked as :meth:`Manifest.load` checks it, then
    every ``[[health.modules]]`` entry (name; version, srcversion, allow_taint optional); ``[health]
    allow_taint`` sets the default letters (:data:`DEFAULT_ALLOWED_TAINT`).  Raises NotFoundError when
    absent, ConfigError when malformed or expecting nothing.
    """
    r = read_document(path)
    default_taint = r.string("health", "allow_taint", default=DEFAULT_ALLOWED_TAINT)
    out: list[Expectation] = []
    if "module" in r.doc:
        m = _manifest(r)
        out.append(Expectation(m.name, r.string("module", "version", default="") or None, None, default_taint))
    entries = r.table("health").get("modules", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise r.error("health", "modules", "must be an array of tables", "write [[health.modules]] entries")
    for i, entry in enumerate(entries, 1):
        def field(key: str, entry: dict[str, Any] = entry, i: int = i) -> str | None:
            value = entry.get(key)
            if value is not None and not isinstance(value, str):
                raise r.error("health.modules", key, f"must be a string, not {type(value).__name__} (entry {i})",
                              f'quote it: {key} = "..."')
            return value or None

        name = field("name")
        if name is None:
            raise r.error("health.modules", "name", f"is missing or empty (entry {i})", 'add name = "MODULE"')
        out.append(Expectation(name, field("version"), field("srcversion"),
                               default_taint if entry.get("allow_taint") is None else field("allow_taint") or ""))
    if not out:
        raise ConfigError(str(r.path), "expects no module", "add [module] name = ... or [[health.modules]] entries")
    return out


def read_document(path: str | Path) -> Document:
    """The TOML document of the manifest at ``path`` (a file or a project directory), with typed access.

    Raises NotFoundError when absent, ConfigError (FILE or FILE:LINE) when it is not a regular file, is larger
    than :data:`MAX_BYTES`, is not UTF-8, has keys or nesting deeper than :data:`MAX_DEPTH` or is not TOML.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    data = _read_bytes(p)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{p}:{line}", f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                          "save the manifest as UTF-8") from None
    return Document(text.splitlines(), p, _parse_toml(text, p))


def parse(text: str, path: Path) -> Manifest:
    """Parse manifest ``text`` read from ``path``; ConfigError (subject FILE:LINE) when it is malformed."""
    return _manifest(Document(text.splitlines(), path, _parse_toml(text, path)))


def _read_bytes(p: Path) -> bytes:
    try:
        st = os.stat(p)
        _check_file(p, st)
        # O_NONBLOCK: were a FIFO put in its place since the stat, open must not wait for a writer
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(str(p), "no such manifest",
                            "run 'kmodkit new NAME', or pass a kmodkit.toml or its project directory") from None
    except OSError as exc:  # EACCES: not ready (exit 3), as every reader says it
        raise from_oserror(exc, str(p)) from None
    try:
        _check_file(p, os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise from_oserror(exc, str(p)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise _too_large(p)
    return data


def _check_file(p: Path, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(str(p), "is a directory", f"pass the {MANIFEST} file or its project directory")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a special file")
        raise ConfigError(str(p), f"is {kind}, not a regular file", f"pass the {MANIFEST} file itself")
    if st.st_size > MAX_BYTES:
        raise _too_large(p)


def _too_large(p: Path) -> ConfigError:
    return ConfigError(str(p), f"is larger than a manifest may be ({MAX_BYTES // 1024} KiB)",
                       f"pass the project's {MANIFEST}")


#: strings and comments, which may hold anything; what remains is keys, values' syntax and brackets
_STRINGS_AND_COMMENTS = re.compile(
    r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*', re.S)
#: a key of more than MAX_DEPTH dotted parts (strings already replaced by one letter)
_DEEP_KEY = re.compile(r"(?<![\w.-])[\w-]*+(?:[ \t]*+\.[ \t]*+[\w-]*+){%d}" % MAX_DEPTH)  # possessive: linear
_BRACKETS = re.compile(r"[\[\]{}]")
#: an integer too long for int() (sys.get_int_max_str_digits(): 4300)
_LONG_NUMBER = re.compile(r"[0-9_]{4000,}")


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    _check_shape(text, path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        where = f"{path}:{m.group(1)}" if m else str(path)
        raise ConfigError(where, f"not valid TOML: {re.sub(r' [(]at line.*', '', str(exc))}",
                          "fix the syntax (see https://toml.io)") from None
    except RecursionError:
        raise ConfigError(str(path), "is nested too deeply", f"nest tables and arrays at most {MAX_DEPTH} deep") \
            from None
    except ValueError:  # int() refuses more than 4300 digits
        m = _LONG_NUMBER.search(text)
        where = f"{path}:{text.count(chr(10), 0, m.start()) + 1}" if m else str(path)
        raise ConfigError(where, "holds a number too long to read", "write numbers of at most 20 digits") from None


def _check_shape(text: str, path: Path) -> None:
    """Refuse, before tomllib sees them, keys and nesting that would take it minutes or the whole stack."""
    bare = _STRINGS_AND_COMMENTS.sub(lambda m: "" if m.group().startswith("#") else "s" + "\n" * m.group().count("\n"),
                                     text)
    m = _DEEP_KEY.search(bare)
    if m:
        raise ConfigError(f"{path}:{bare.count(chr(10), 0, m.start()) + 1}",
                          f"a dotted key has more than {MAX_DEPTH} parts", "write shorter keys")
    depth = 0
    for b in _BRACKETS.finditer(bare):
        depth = depth + 1 if b.group() in "[{" else max(0, depth - 1)
        if depth > MAX_DEPTH:
            raise ConfigError(f"{path}:{bare.count(chr(10), 0, b.start()) + 1}", "is nested too deeply",
                              f"nest tables and arrays at most {MAX_DEPTH} deep")


def _manifest(r: Document) -> Manifest:
    name = r.string("module", "name")
    problem = name_problem(name)
    if problem is not None:
        raise r.error("module", "name", f"'{name}' {problem}", "name the module with letters, digits and _")
    sources = r.strings("module", "sources", default=[f"{name}.c"])
    if not sources:
        raise r.error("module", "sources", "is empty", "list the module's .c files")
    for s in sources:
        if Path(s).is_absolute() or ".." in Path(s).parts:
            raise r.error("module", "sources", f"'{s}' is outside the project", "name files relative to the project")
    params = []
    for pname, spec in r.table("parameters").items():
        if not isinstance(spec, dict):
            raise r.error("parameters", pname, "must be a table", 'write [parameters.NAME] with type = "int"')
        ptype = r.string(f"parameters.{pname}", "type")
        if ptype not in PARAM_TYPES:
            raise r.error(f"parameters.{pname}", "type", f"'{ptype}' is not a module_param type",
                          f"use one of {', '.join(PARAM_TYPES)}")
        default = spec.get("default")
        if default is not None and not isinstance(default, (str, int, bool)):
            raise r.error(f"parameters.{pname}", "default", "must be a string, integer or boolean")
        if isinstance(default, int) and not isinstance(default, bool) \
                and not PARAM_INT_RANGE[0] <= default <= PARAM_INT_RANGE[1]:
            raise r.error(f"parameters.{pname}", "default", "does not fit in 64 bits", "give a smaller default")
        params.append(ParameterSpec(pname, ptype, default,
                                    r.string(f"parameters.{pname}", "description", default="")))
    key = r.string("signing", "key", default="")
    signing = Signing(key, r.string("signing", "cert", default=""), r.string("signing", "hash", default="sha256")) \
        if key else None
    script = r.string("test", "script", default="") or None
    targets = r.strings("kernels", "targets", default=[])
    for t in targets:
        problem = release_problem(t)
        if problem is not None:
            raise r.error("kernels", "targets", f"{t!r} {problem}", 'name releases as /lib/modules does, or "running"')
    return Manifest(
        path=r.path, name=name, version=r.string("module", "version", default="0.1.0"),
        description=r.string("module", "description", default=""), license=r.string("module", "license", default=""),
        sources=tuple(sources), parameters=tuple(params), targets=tuple(targets),
        signing=signing, test_script=script,
    )


class Document:
    """A parsed kmodkit.toml with typed access; every error it raises points at FILE:LINE."""

    def __init__(self, lines: list[str], path: Path, doc: dict[str, Any]) -> None:
        #: the manifest's lines, to find where a key is written
        self.lines = lines
        #: the manifest file
        self.path = path
        #: the parsed document
        self.doc = doc

    def table(self, table: str) -> dict[str, Any]:
        """The table ``table`` (dotted), ``{}`` when absent; ConfigError when it is not a table."""
        node: Any = self.doc
        for part in table.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise self.error(table, "", "must be a table", f"write it as [{table}]")
        return dict(node)

    def string(self, table: str, key: str, default: str | None = None) -> str:
        """``[table] key``, a string; ``default`` when absent (ConfigError when absent and no default)."""
        value = self.table(table).get(key, default)
        if value is None:
            raise self.error(table, key, "is missing", f'add {key} = "..." under [{table}]')
        if not isinstance(value, str):
            raise self.error(table, key, f"must be a string, not {type(value).__name__}", f'quote it: {key} = "..."')
        return value

    def strings(self, table: str, key: str, default: list[str]) -> list[str]:
        """``[table] key``, a list of strings; ``default`` when absent."""
        value = self.table(table).get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(table, key, "must be a list of strings", f'write {key} = ["..."]')
        return value

    def error(self, table: str, key: str, problem: str, fix: str | None = None) -> ConfigError:
        """A ConfigError about ``[table] key``, its subject FILE:LINE."""
        dotted = f"{table}.{key}" if key else table
        return ConfigError(f"{self.path}:{self.line_of(table, key)}", f"{dotted}: {problem}", fix)

    def line_of(self, table: str, key: str) -> int:
        """Line of ``key`` in ``[table]`` (or of the table's header, or 1 when neither is written)."""
        current = ""
        header_line = 0
        for i, raw in enumerate(self.lines, 1):
            line = raw.strip()
            m = re.match(r"^\[\[?\s*([^\]]+?)\s*\]", line)
            if m:
                current = m.group(1).replace('"', "").replace(" ", "")
                if current == table:
                    header_line = i
                continue
            if current == table and key and re.match(rf'^"?{re.escape(key)}"?\s*=', line):
                return i
        # dotted keys under a parent table: [parameters] repeat = {...}
        parent, _, child = table.rpartition(".")
        if parent and not header_line:
            return self.line_of(parent, child)
        return header_line or 1
