"""``kmodkit.toml``: the project manifest; every error names the key and FILE:LINE.

This is the one reader of kmodkit.toml: ``build``, ``lint``, ``load`` (parameter defaults), ``health``, the
exporter, ``install`` and the kernel hook all go through :func:`read_document`, which reads the file with
:mod:`kmodkit.kbuild.tomldoc` (the hardened TOML reader: no FIFO, no huge file, no key deep enough to hang
tomllib) and then this module says what the document means, refusing every key :data:`SCHEMA` does not know.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kmodkit.errors import ConfigError
from kmodkit.kbuild.kernels import release_problem
from kmodkit.kbuild.names import name_problem
from kmodkit.kbuild.tomldoc import MAX_BYTES, MAX_DEPTH, Document, parse_toml, read_toml

__all__ = ["MANIFEST", "MAX_BYTES", "MAX_DEPTH", "Document", "Manifest", "ModuleSpec", "ParameterSpec", "Signing",
           "Expectation", "load_expectations", "read_document", "parse", "check_keys"]

MANIFEST = "kmodkit.toml"
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
    test_script: str | None  #: script `kmodkit test` runs in booted kernels, relative to the project; None when absent
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
        regular file, too large, not UTF-8 or malformed.  A DKMS source tree (a directory with dkms.conf and no
        kmodkit.toml, or its dkms.conf) is read by :func:`kmodkit.kbuild.dkmsconf.read_tree`.
        """
        p = Path(path)
        if (p.name == "dkms.conf" and not p.is_dir()) or (p.is_dir() and not os.path.lexists(p / MANIFEST)
                                                          and os.path.lexists(p / "dkms.conf")):
            from kmodkit.kbuild.dkmsconf import read_tree

            return read_tree(p.parent if p.name == "dkms.conf" and not p.is_dir() else p)
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
    return read_toml(p / MANIFEST if p.is_dir() else p, "no such manifest",
                     "run 'kmodkit new NAME', or pass a kmodkit.toml or its project directory")


def parse(text: str, path: Path) -> Manifest:
    """Parse manifest ``text`` read from ``path``; ConfigError (subject FILE:LINE) when it is malformed."""
    return _manifest(parse_toml(text, path))


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
