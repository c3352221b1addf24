"""The library object behind ``kmodkit info``: turn arguments into modules and describe them."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from kmodkit.errors import KmodkitError, NotFoundError, UserError
from kmodkit.modfile.describe import Field, format_modinfo, modinfo_fields, to_json
from kmodkit.modfile.module import MODULE_SUFFIXES, ModuleFile

if TYPE_CHECKING:
    from kmodkit.modfile.cache import Key


class ModuleInfo:
    """One module to describe: a file (opened on first use), or a built-in module of a kernel tree."""

    def __init__(self, filename: str, path: str | None = None, builtin_name: str | None = None,
                 builtin_fields: tuple[Field, ...] = ()) -> None:
        #: the file name modinfo prints (absolute), or "(builtin)"
        self.filename = filename
        #: the path to open, None for a built-in module
        self.path = path
        #: the built-in module's name, None for a file
        self.builtin_name = builtin_name
        self._builtin_fields = builtin_fields
        self._module: ModuleFile | None = None

    @property
    def module(self) -> ModuleFile | None:
        """The open module file (opened now if needed), None for a built-in module."""
        if self._module is None and self.path is not None:
            self._module = ModuleFile.open(self.path)
        return self._module

    def fields(self) -> list[Field]:
        """The fields modinfo lists, in its order."""
        mod = self.module
        if mod is None:
            return list(self._builtin_fields)
        return modinfo_fields(mod)

    def modinfo_text(self, field: str | None = None, separator: bytes = b"\n") -> bytes:
        """The module printed exactly as kmod's modinfo prints it."""
        return format_modinfo(
            os.fsencode(self.filename), self.fields(), field=field, separator=separator,
            builtin_name=None if self.builtin_name is None else self.builtin_name.encode(),
        )

    def to_json(self) -> dict[str, Any]:
        """Every field plus symbols, versions, sections and the signature, as JSON data."""
        mod = self.module
        if mod is None:
            fields: dict[str, Any] = {}
            for k, v in self._builtin_fields:
                key, value = k.decode("utf-8", "replace"), v.decode("utf-8", "replace")
                fields[key] = fields[key] + [value] if isinstance(fields.get(key), list) else (
                    [fields[key], value] if key in fields else value)
            return {"filename": "(builtin)", "name": self.builtin_name, "builtin": True, "modinfo": fields}
        return to_json(mod, self.filename)

    def close(self) -> None:
        """Release the module file."""
        if self._module is not None:
            self._module.close()
            self._module = None


@dataclass
class InfoQuery:
    """What ``kmodkit info`` was asked: module files, names or aliases, and where to resolve names."""

    targets: list[str]  #: paths, names or aliases, in order
    kver: str | None = None  #: kernel release whose tree resolves names (default: running kernel)
    basedir: str | None = None  #: root under which lib/modules is found
    modname_only: bool = False  #: names are module names, never aliases or files
    cwd: str = field(default_factory=os.getcwd)  #: makes relative paths absolute, as kmod does

    def __post_init__(self) -> None:
        if not self.targets:
            raise UserError("info", "no module given", "name a module file, name or alias")

    @cached_property
    def tree(self) -> Any:
        """The kernel tree names are resolved in."""
        from kmodkit.index.lookup import ModuleTree, kernel_dir

        return ModuleTree(kernel_dir(self.kver, self.basedir))

    def is_path(self, target: str) -> bool:
        """Whether ``target`` is taken as a file path (else a name or alias)."""
        if self.modname_only:
            return False
        return os.sep in target or target.endswith(MODULE_SUFFIXES) or os.path.exists(target)

    def absolute(self, target: str) -> str:
        """A path target made absolute the way kmod does (no symlinks resolved)."""
        return target if os.path.isabs(target) else f"{self.cwd}/{target}"

    def resolve(self, target: str) -> list[ModuleInfo]:
        """The modules ``target`` stands for; raises NotFoundError when none."""
        if self.is_path(target):
            return [ModuleInfo(self.absolute(target), target)]
        if self.modname_only:
            hit = self.tree.lookup_name(target)
            found = [] if hit is None else [hit]
        else:
            found = self.tree.lookup(target)
        if not found:
            raise NotFoundError(target, f"no module or alias of that name in {self.tree.dirname}")
        return [
            ModuleInfo(h.path, h.path) if h.path is not None
            else ModuleInfo("(builtin)", None, h.name, h.builtin_info)
            for h in found
        ]


class View(enum.Enum):
    """How each module is rendered."""

    MODINFO = "modinfo"  #: kmod's modinfo text
    JSON = "json"  #: compact JSON documents


@dataclass(frozen=True)
class Rendered:
    """One target's result: rendered bytes, or the error that stopped it."""

    target: str  #: the argument as given
    output: bytes  #: modinfo text, or JSON documents joined by commas (b"" on error)
    error: KmodkitError | None  #: what went wrong, None on success


def render_all(query: InfoQuery, view: View, field: str | None = None, separator: bytes = b"\n",
               jobs: int | None = None, cache: bool = False) -> Iterator[Rendered]:
    """Render every target of ``query`` in order, in ``jobs`` processes for large batches.

    With ``cache`` (JSON only), files already described are taken from
    :class:`~kmodkit.modfile.cache.InfoCache`; only the others are rendered,
    and this process alone writes them to the cache.
    """
    if not (cache and view is View.JSON):
        yield from _render_many(query, query.targets, view, field, separator, jobs)
        return
    from kmodkit.modfile.cache import InfoCache, file_key

    store = InfoCache()
    keys: dict[str, Key] = {}
    for t in query.targets:
        if query.is_path(t):
            try:
                keys[t] = file_key(os.stat(t))
            except OSError:
                pass  # rendering reports it
    hits = store.get_many(keys.values())
    misses = [t for t in query.targets if keys.get(t) not in hits]
    fresh = {r.target: r for r in _render_many(query, misses, view, field, separator, jobs)}
    try:
        for t in query.targets:
            head = b'{"filename":' + json.dumps(query.absolute(t), ensure_ascii=False).encode() + b","
            key = keys.get(t)
            body = hits.get(key) if key is not None else None
            if body is not None:
                yield Rendered(t, head + body, None)
                continue
            r = fresh[t]
            if key is not None and r.error is None and r.output.startswith(head):
                # keep what follows the filename: the same file under another path reuses it
                store.put(key, r.output[len(head):])
            yield r
    finally:
        store.close()


def _render_many(query: InfoQuery, targets: list[str], view: View, field: str | None, separator: bytes,
                 jobs: int | None) -> Iterator[Rendered]:
    from kmodkit._util.pool import Cost, chunks, fan_out, jobs_for

    jobs = jobs_for(len(targets), Cost.READ, jobs)
    if not jobs:
        for t in targets:
            yield _render(query, t, view, field, separator)
        return
    for batch in fan_out(_render_chunk, [(query, c, view, field, separator) for c in chunks(targets, jobs)], jobs):
        yield from batch


def _render_chunk(args: tuple[InfoQuery, list[str], View, str | None, bytes]) -> list[Rendered]:
    query, chunk, view, field, separator = args
    return [_render(query, t, view, field, separator) for t in chunk]


def _render(query: InfoQuery, target: str, view: View, field: str | None, separator: bytes) -> Rendered:
    infos: list[ModuleInfo] = []
    parts: list[bytes] = []
    try:
        infos = query.resolve(target)
        for info in infos:
            if view is View.JSON:
                parts.append(json.dumps(info.to_json(), ensure_ascii=False, separators=(",", ":")).encode())
            else:
                parts.append(info.modinfo_text(field=field, separator=separator))
    except KmodkitError as exc:
        return Rendered(target, b"", exc)
    finally:
        for info in infos:
            info.close()
    return Rendered(target, (b"," if view is View.JSON else b"").join(parts), None)
