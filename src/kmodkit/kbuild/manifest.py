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
from dataclasses import dataclass, replace
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
class ModuleSpec:
    """One module a project builds (one ``[[module]]`` table, or the one ``[module]`` table)."""

    name: str  #: module name (a C identifier): make builds NAME.ko
    version: str  #: module version (MODULE_VERSION)
    description: str  #: one-line description, "" when absent
    license: str  #: MODULE_LICENSE string, "" when absent
    sources: tuple[str, ...]  #: its .c files, relative to the project
    subdir: str  #: the directory (relative to the project) whose Kbuild builds it; "" for the project's own
    include: tuple[str, ...]  #: extra include directories, relative to the project (may lead out of it)
    cflags: tuple[str, ...]  #: extra compiler flags for its objects
    parameters: tuple[ParameterSpec, ...]  #: declared parameters and their defaults
    load_at_boot: bool  #: whether ``install`` lists it in modules-load.d
    options: str  #: what ``install`` writes as its ``options`` line in modprobe.d, "" for none

    def objects(self) -> list[str]:
        """Its objects as its Kbuild names them: sources relative to :attr:`subdir`, ``.c`` made ``.o``."""
        base = Path(self.subdir)
        return [str(Path(s).relative_to(base).with_suffix(".o")) for s in self.sources]


@dataclass(frozen=True)
class Manifest:
    """A module project's manifest."""

    path: Path  #: the kmodkit.toml file
    modules: tuple[ModuleSpec, ...]  #: every module the project builds, in the manifest's order (at least one)
    depends: tuple[str, ...]  #: other kmodkit projects whose exports the modules use (paths relative to this one)
    targets: tuple[str, ...]  #: default target kernels; empty means every installed kernel
    signing: Signing | None  #: None when no signing key is named
    test_script: str | None  #: script the VM harness runs, relative to the project; None when absent
    install_location: str  #: where ``install`` puts modules below /lib/modules/KVER ("updates" unless told)

    @property
    def project(self) -> Path:
        """The project directory (the manifest's directory)."""
        return self.path.parent

    # the first module stands for the project where one name is needed (load, health, the build's cache tag)
    @property
    def name(self) -> str:
        """The first module's name."""
        return self.modules[0].name

    @property
    def version(self) -> str:
        """The first module's version."""
        return self.modules[0].version

    @property
    def description(self) -> str:
        """The first module's description."""
        return self.modules[0].description

    @property
    def license(self) -> str:
        """The first module's license."""
        return self.modules[0].license

    @property
    def sources(self) -> tuple[str, ...]:
        """Every module's sources, in order."""
        return tuple(s for m in self.modules for s in m.sources)

    @property
    def parameters(self) -> tuple[ParameterSpec, ...]:
        """The first module's parameters."""
        return self.modules[0].parameters

    def module(self, name: str) -> ModuleSpec | None:
        """The module called ``name``, None when the project builds none of that name."""
        return next((m for m in self.modules if m.name == name), None)

    def source_paths(self) -> list[Path]:
        """Every module's sources as paths inside the project."""
        return [self.project / s for s in self.sources]

    def dependency_paths(self) -> list[Path]:
        """The projects named in ``depends``, as absolute directories."""
        return [Path(os.path.normpath(self.project / d)) for d in self.depends]

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

    Its modules (``[module]`` or every ``[[module]]``: name, version when written) when it has them, checked as :meth:`Manifest.load` checks it, then
    every ``[[health.modules]]`` entry (name; version, srcversion, allow_taint optional); ``[health]
    allow_taint`` sets the default letters (:data:`DEFAULT_ALLOWED_TAINT`).  Raises NotFoundError when
    absent, ConfigError when malformed or expecting nothing.
    """
    r = read_document(path)
    check_keys(r)
    default_taint = r.string("health", "allow_taint", default=DEFAULT_ALLOWED_TAINT)
    out: list[Expectation] = []
    if "module" in r.doc:
        m = _manifest(r)
        tables = r.doc["module"] if isinstance(r.doc["module"], list) else [r.doc["module"]]
        for spec, table in zip(m.modules, tables):  # a version is expected only where the manifest writes one
            out.append(Expectation(spec.name, table.get("version") or None, None, default_taint))
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


#: every key a manifest may hold: table -> key -> the keys of its sub-table (None for a value); "*" stands for
#: any name (a parameter's).  README.md's "kmodkit.toml" section documents each with an example.
_PARAMETER: dict[str, Any] = {"type": None, "default": None, "description": None}
_MODULE: dict[str, Any] = {
    "name": None, "version": None, "description": None, "license": None, "sources": None, "subdir": None,
    "include": None, "cflags": None, "parameters": {"*": _PARAMETER}, "load_at_boot": None, "options": None,
}
SCHEMA: dict[str, Any] = {
    "project": {"depends": None},
    "module": _MODULE,
    "parameters": {"*": _PARAMETER},
    "kernels": {"targets": None},
    "signing": {"key": None, "cert": None, "hash": None},
    "test": {"script": None},
    "health": {"allow_taint": None, "modules": {"name": None, "version": None, "srcversion": None,
                                                "allow_taint": None}},
    "install": {"location": None},
}
#: a cflag the manifest may give: how objects compile (-D -U -I -W -f -g -O -m -std=), in characters that mean
#: nothing to make or the shell Kbuild runs the compiler through (no $ # ; ` quotes or blanks)
_CFLAG = re.compile(r"^-(?:[DUIWfgOm]|std=)[A-Za-z0-9_=.,+/:@-]*$")


def check_keys(r: Document) -> None:
    """Refuse the first key :data:`SCHEMA` does not know: ``FILE:LINE: unknown key 'x'; did you mean 'y'?``."""
    def walk(node: dict[str, Any], schema: dict[str, Any], table: str, entry: int | None) -> None:
        for key, value in node.items():
            sub = schema.get(key, schema.get("*", KeyError)) if key in schema or "*" in schema else KeyError
            if sub is KeyError:
                import difflib

                close = difflib.get_close_matches(key, [k for k in schema if k != "*"], n=1, cutoff=0.6)
                where = f"under [{table}]" if table else "at the top"
                fix = f"did you mean '{close[0]}'?" if close else \
                    f"the keys {where} are: {', '.join(k for k in schema if k != '*')} (see README.md, kmodkit.toml)"
                line = r.line_of(table, key, entry) if table else r.line_of(key, "", entry)
                raise ConfigError(f"{r.path}:{line}", f"unknown key '{key}'" + (f" in [{table}]" if table else ""),
                                  fix)
            child = f"{table}.{key}" if table else key
            if isinstance(sub, dict):
                if isinstance(value, dict):
                    walk(value, sub, child, entry)
                elif isinstance(value, list) and all(isinstance(v, dict) for v in value) and value:
                    for i, item in enumerate(value):
                        walk(item, sub, child, i if entry is None else entry)

    walk(r.doc, SCHEMA, "", None)


def _manifest(r: Document) -> Manifest:
    check_keys(r)
    node = r.doc.get("module")
    if isinstance(node, list):
        if not node or not all(isinstance(e, dict) for e in node):
            raise r.error("module", "", "must be tables", "write one [[module]] table per module")
        modules = [_module(r, e, i) for i, e in enumerate(node)]
    else:
        r.table("module")
        if "module" not in r.doc:
            raise ConfigError(f"{r.path}:1", "names no module", 'add [module] name = "NAME" (or [[module]] tables)')
        modules = [_module(r, r.doc["module"], None)]
    seen: dict[str, int] = {}
    for i, m in enumerate(modules):
        if m.name in seen:
            raise r.error("module", "name", f"'{m.name}' is named twice", "give each module its own name", entry=i)
        seen[m.name] = i
    if r.doc.get("parameters"):
        if len(modules) > 1:
            raise r.error("parameters", "", "belongs to one module, and there are several",
                          "write [module.parameters.NAME] after the module's [[module]]")
        modules[0] = replace(modules[0], parameters=modules[0].parameters + tuple(_parameters(r, r.table("parameters"),
                                                                                       "parameters", None)))
    depends = r.strings("project", "depends", default=[])
    for d in depends:
        if Path(d).is_absolute() or not d.strip():
            raise r.error("project", "depends", f"{d!r} is not a path relative to the project",
                          'name the other project\'s directory, e.g. "../core"')
    key = r.string("signing", "key", default="")
    signing = Signing(key, r.string("signing", "cert", default=""), r.string("signing", "hash", default="sha256")) \
        if key else None
    script = r.string("test", "script", default="") or None
    targets = r.strings("kernels", "targets", default=[])
    for t in targets:
        problem = release_problem(t)
        if problem is not None:
            raise r.error("kernels", "targets", f"{t!r} {problem}", 'name releases as /lib/modules does, or "running"')
    location = r.string("install", "location", default="updates")
    if not location or Path(location).is_absolute() or ".." in Path(location).parts:
        raise r.error("install", "location", f"{location!r} is not a directory below /lib/modules/KVER",
                      'name one such as "updates" or "extra"')
    return Manifest(path=r.path, modules=tuple(modules), depends=tuple(depends), targets=tuple(targets),
                    signing=signing, test_script=script, install_location=location)


def _module(r: Document, node: dict[str, Any], entry: int | None) -> ModuleSpec:
    def get(key: str, kind: type, default: Any) -> Any:
        value = node.get(key, default)
        if value is None:
            raise r.error("module", key, "is missing", f'add {key} = "..." under the module\'s table', entry=entry)
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise r.error("module", key, "must be a list of strings", f'write {key} = ["..."]', entry=entry)
        elif not isinstance(value, kind):
            raise r.error("module", key, f"must be a {'string' if kind is str else 'boolean'}, not {type(value).__name__}",
                          f'quote it: {key} = "..."' if kind is str else f"write {key} = true or false", entry=entry)
        return value

    def inside(key: str, rel: str, may_leave: bool = False) -> str:
        if Path(rel).is_absolute() or (not may_leave and ".." in Path(rel).parts) or not rel.strip():
            raise r.error("module", key, f"'{rel}' is outside the project", "name paths relative to the project",
                          entry=entry)
        return os.path.normpath(rel)

    name = get("name", str, None)
    problem = name_problem(name)
    if problem is not None:
        raise r.error("module", "name", f"'{name}' {problem}", "name the module with letters, digits and _",
                      entry=entry)
    subdir = inside("subdir", get("subdir", str, ".")) if "subdir" in node else "."
    default_source = str(Path(subdir) / f"{name}.c") if subdir != "." else f"{name}.c"
    sources = [inside("sources", s) for s in get("sources", list, [default_source])]
    if not sources:
        raise r.error("module", "sources", "is empty", "list the module's .c files", entry=entry)
    for s in sources:
        if subdir != "." and Path(subdir) not in Path(s).parents:
            raise r.error("module", "sources", f"'{s}' is not in the module's subdir '{subdir}'",
                          f'name sources with their directory, e.g. "{subdir}/{Path(s).name}"', entry=entry)
        if not s.endswith(".c"):
            raise r.error("module", "sources", f"'{s}' is not a .c file", "list the C files make compiles",
                          entry=entry)
    include = [inside("include", d, may_leave=True) for d in get("include", list, [])]
    cflags = get("cflags", list, [])
    for flag in cflags:
        if not _CFLAG.match(flag):
            raise r.error("module", "cflags", f"{flag!r} is not a -D/-U/-I/-W/-f/-g/-O/-m/-std= flag of one word"
                          " in letters, digits and _=.,+/:@-", 'write one flag per string, e.g. "-DDEBUG=1"',
                          entry=entry)
    options = get("options", str, "")
    if "\n" in options or "\\" in options:
        raise r.error("module", "options", "must be one line", 'write options = "param=value ..."', entry=entry)
    params_node = node.get("parameters", {})
    if not isinstance(params_node, dict):
        raise r.error("module", "parameters", "must be a table", "write [module.parameters.NAME]", entry=entry)
    return ModuleSpec(
        name=name, version=get("version", str, "0.1.0"), description=get("description", str, ""),
        license=get("license", str, ""), sources=tuple(sources), subdir="" if subdir == "." else subdir,
        include=tuple(include), cflags=tuple(cflags),
        parameters=tuple(_parameters(r, params_node, "module.parameters", entry)),
        load_at_boot=get("load_at_boot", bool, False), options=options,
    )


def _parameters(r: Document, table: dict[str, Any], where: str, entry: int | None) -> list[ParameterSpec]:
    params = []
    for pname, spec in table.items():
        if not isinstance(spec, dict):
            raise r.error(where, pname, "must be a table", f'write [{where}.NAME] with type = "int"', entry=entry)
        here = f"{where}.{pname}"
        ptype = spec.get("type")
        if not isinstance(ptype, str):
            raise r.error(here, "type", "is missing" if ptype is None else "must be a string",
                          'add type = "int" (or another module_param type)', entry=entry)
        if ptype not in PARAM_TYPES:
            raise r.error(here, "type", f"'{ptype}' is not a module_param type",
                          f"use one of {', '.join(PARAM_TYPES)}", entry=entry)
        default = spec.get("default")
        if default is not None and not isinstance(default, (str, int, bool)):
            raise r.error(here, "default", "must be a string, integer or boolean", entry=entry)
        if isinstance(default, int) and not isinstance(default, bool) \
                and not PARAM_INT_RANGE[0] <= default <= PARAM_INT_RANGE[1]:
            raise r.error(here, "default", "does not fit in 64 bits", "give a smaller default", entry=entry)
        description = spec.get("description", "")
        if not isinstance(description, str):
            raise r.error(here, "description", "must be a string", 'quote it: description = "..."', entry=entry)
        params.append(ParameterSpec(pname, ptype, default, description))
    return params


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

    def error(self, table: str, key: str, problem: str, fix: str | None = None,
              entry: int | None = None) -> ConfigError:
        """A ConfigError about ``[table] key`` (of the ``entry``-th ``[[...]]`` table), its subject FILE:LINE."""
        dotted = f"{table}.{key}" if key else table
        return ConfigError(f"{self.path}:{self.line_of(table, key, entry)}", f"{dotted}: {problem}", fix)

    def line_of(self, table: str, key: str, entry: int | None = None) -> int:
        """Line of ``key`` in ``[table]`` (or of the table's header, or 1 when neither is written).

        ``entry``: look only in the ``entry``-th (from 0) ``[[T]]`` table of the array T that ``table`` starts with.
        """
        current = ""
        header_line = 0
        array = table.split(".")[0]
        count, inside = -1, entry is None
        for i, raw in enumerate(self.lines, 1):
            line = raw.strip()
            m = re.match(r"^\[(\[?)\s*([^\]]+?)\s*\]", line)
            if m:
                current = m.group(2).replace('"', "").replace(" ", "")
                if entry is not None and m.group(1) and current == array:
                    count += 1
                    inside = count == entry
                if inside and (current == table or not key and current.startswith(f"{table}.")) and not header_line:
                    header_line = i  # a table's own header, else (for the table itself) its first sub-table's
                continue
            if inside and current == table and key and re.match(rf'^"?{re.escape(key)}"?\s*=', line):
                return i
        # dotted keys under a parent table: [parameters] repeat = {...}
        parent, _, child = table.rpartition(".")
        if parent and not header_line:
            return self.line_of(parent, child, entry)
        return header_line or 1
