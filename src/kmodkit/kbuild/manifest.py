"""``kmodkit.toml``: the project manifest, read with tomllib; every error names the key and FILE:LINE."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodkit.errors import ConfigError, NotFoundError

MANIFEST = "kmodkit.toml"
#: a module name is a C identifier (it becomes KBUILD_MODNAME); the kernel keeps 55 characters
#: (MODULE_NAME_LEN is 64 - sizeof(unsigned long))
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,54}")
#: module_param types the kernel knows (include/linux/moduleparam.h)
PARAM_TYPES = ("byte", "short", "ushort", "int", "uint", "long", "ulong", "ullong", "hexint", "charp", "bool",
               "invbool")


@dataclass(frozen=True)
class Parameter:
    """One module parameter as the manifest declares it."""

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
    parameters: tuple[Parameter, ...]  #: declared parameters
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

        Raises NotFoundError when it is absent and ConfigError (subject FILE:LINE) when it is malformed.
        """
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise NotFoundError(str(p), "no such manifest", "run 'kmodkit new NAME' or pass the project directory")
        except OSError as exc:
            raise ConfigError(str(p), exc.strerror or str(exc)) from exc
        return parse(text, p)


def parse(text: str, path: Path) -> Manifest:
    """Parse manifest ``text`` read from ``path``; ConfigError (subject FILE:LINE) when it is malformed."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        where = f"{path}:{m.group(1)}" if m else str(path)
        raise ConfigError(where, f"not valid TOML: {re.sub(r' [(]at line.*', '', str(exc))}",
                          "fix the syntax (see https://toml.io)") from None
    r = _Reader(text, path, doc)
    name = r.string("module", "name")
    if not NAME_RE.fullmatch(name):
        raise r.error("module", "name", f"'{name}' is not a C identifier of at most 55 characters",
                      "use letters, digits and underscores, starting with a letter")
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
        params.append(Parameter(pname, ptype, default, r.string(f"parameters.{pname}", "description", default="")))
    key = r.string("signing", "key", default="")
    signing = Signing(key, r.string("signing", "cert", default=""), r.string("signing", "hash", default="sha256")) \
        if key else None
    script = r.string("test", "script", default="") or None
    return Manifest(
        path=path, name=name, version=r.string("module", "version", default="0.1.0"),
        description=r.string("module", "description", default=""), license=r.string("module", "license", default=""),
        sources=tuple(sources), parameters=tuple(params), targets=tuple(r.strings("kernels", "targets", default=[])),
        signing=signing, test_script=script,
    )


class _Reader:
    """Typed access to a parsed TOML document, with errors that point at FILE:LINE."""

    def __init__(self, text: str, path: Path, doc: dict[str, Any]) -> None:
        self.lines = text.splitlines()
        self.path = path
        self.doc = doc

    def table(self, table: str) -> dict[str, Any]:
        node: Any = self.doc
        for part in table.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise self.error(table, "", "must be a table", f"write it as [{table}]")
        return dict(node)

    def string(self, table: str, key: str, default: str | None = None) -> str:
        value = self.table(table).get(key, default)
        if value is None:
            raise self.error(table, key, "is missing", f'add {key} = "..." under [{table}]')
        if not isinstance(value, str):
            raise self.error(table, key, f"must be a string, not {type(value).__name__}", f'quote it: {key} = "..."')
        return value

    def strings(self, table: str, key: str, default: list[str]) -> list[str]:
        value = self.table(table).get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(table, key, "must be a list of strings", f'write {key} = ["..."]')
        return value

    def error(self, table: str, key: str, problem: str, fix: str | None = None) -> ConfigError:
        dotted = f"{table}.{key}" if key else table
        return ConfigError(f"{self.path}:{self.line_of(table, key)}", f"{dotted}: {problem}", fix)

    def line_of(self, table: str, key: str) -> int:
        """Line of ``key`` in ``[table]`` (or of the table's header, or 1 when neither is written)."""
        current = ""
        header_line = 0
        for i, raw in enumerate(self.lines, 1):
            line = raw.strip()
            m = re.match(r"^\[\s*([^\]]+?)\s*\]", line)
            if m and not line.startswith("[["):
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
