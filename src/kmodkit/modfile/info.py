"""The library behind ``kmodkit info``: describe the modules a query stands for, one target after another.

Which modules a target stands for (a file, or a name looked up in a tree)
is the query's business (:class:`kmodkit.names.ModuleQuery`): this package
reads files and never imports :mod:`kmodkit.index`.
"""

from __future__ import annotations

import enum
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kmodkit.errors import ItemError, KmodkitError
from kmodkit.modfile.describe import Field, format_modinfo, modinfo_fields, to_json
from kmodkit.modfile.module import ModuleFile

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
        """The module printed exactly as kmod's modinfo prints it.

        ``-F filename`` prints the file name without opening the file, as modinfo
        does: a name's path comes from the index even when the file is gone.
        """
        if field == "filename":
            return os.fsencode(self.filename) + separator
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


class Targets(Protocol):
    """What :func:`render_all` needs of a query (:class:`kmodkit.names.ModuleQuery` is the one kmodkit has)."""

    targets: list[str]  #: the arguments, in order

    def is_path(self, target: str) -> bool:
        """Whether ``target`` names a file."""
        ...

    def absolute(self, target: str) -> str:
        """A path target as modinfo prints it."""
        ...

    def resolve(self, target: str) -> list[ModuleInfo]:
        """The modules ``target`` stands for; raises a KmodkitError when none."""
        ...


class View(enum.Enum):
    """How each module is rendered."""

    MODINFO = "modinfo"  #: kmod's modinfo text
    JSON = "json"  #: compact JSON documents


@dataclass(frozen=True)
class Rendered:
    """One target's result: rendered bytes, or the error that stopped it."""

    target: str  #: the argument as given
    output: bytes  #: modinfo text, or compact JSON documents joined by commas (b"" on error)
    error: ItemError | None  #: what went wrong, None on success
    docs: tuple[dict[str, Any], ...] = ()  #: the JSON documents as data (JSON view, rendered now; () from the cache)


@functools.cache
def json_format() -> str:
    """What identifies the shape of ``info --json`` documents: kmodkit's version and the source that makes them.

    The cache of described files is keyed on it, so a changed document shape
    (in a release or in a working tree) is never served from an older run.
    """
    import hashlib

    from kmodkit import __version__

    digest = hashlib.sha256(__version__.encode())
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        for name in sorted(os.listdir(here)):
            if name.endswith(".py"):
                with open(os.path.join(here, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
    except OSError:
        pass  # installed without sources: the version alone
    return digest.hexdigest()[:32]


def render_all(query: Targets, view: View, field: str | None = None, separator: bytes = b"\n",
               jobs: int | None = None, cache: bool = False) -> Iterator[Rendered]:
    """Render every target of ``query`` in order, in ``jobs`` processes for large batches.

    With ``cache`` (JSON only), files already described are taken from
    :class:`~kmodkit.modfile.cache.InfoCache`, keyed on the file and on
    :func:`json_format`; only the others are rendered, and this process alone
    writes them to the cache.  One target or many, the documents are the same.
    """
    if not (cache and view is View.JSON):
        yield from _render_many(query, query.targets, view, field, separator, jobs)
        return
    from kmodkit.modfile.cache import InfoCache, file_key

    store = InfoCache(fmt=json_format())
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
            key = keys.get(t)
            rest = hits.get(key) if key is not None else None
            if rest is not None:
                # the file's document, named by the path it was asked by this time: spliced, not re-encoded
                name = json.dumps(query.absolute(t), ensure_ascii=False)
                text = f'{{"filename":{name}}}' if rest == "{}" else f'{{"filename":{name},{rest[1:]}'
                yield Rendered(t, text.encode(), None)
                continue
            r = fresh[t] if t in fresh else _render(query, t, view, field, separator)
            if key is not None and r.error is None and len(r.docs) == 1:
                store.put(key, {k: v for k, v in r.docs[0].items() if k != "filename"})
            yield r
    finally:
        store.close()


def _json_rendered(target: str, docs: list[dict[str, Any]]) -> Rendered:
    output = b",".join(json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode() for d in docs)
    return Rendered(target, output, None, tuple(docs))


def _render_many(query: Targets, targets: list[str], view: View, field: str | None, separator: bytes,
                 jobs: int | None) -> Iterator[Rendered]:
    from kmodkit._util.pool import Cost, chunks, fan_out, jobs_for

    jobs = jobs_for(len(targets), Cost.READ, jobs)
    if not jobs:
        for t in targets:
            yield _render(query, t, view, field, separator)
        return
    for batch in fan_out(_render_chunk, [(query, c, view, field, separator) for c in chunks(targets, jobs)], jobs):
        yield from batch


def _render_chunk(args: tuple[Targets, list[str], View, str | None, bytes]) -> list[Rendered]:
    query, chunk, view, field, separator = args
    return [_render(query, t, view, field, separator) for t in chunk]


def _render(query: Targets, target: str, view: View, field: str | None, separator: bytes) -> Rendered:
    infos: list[ModuleInfo] = []
    parts: list[bytes] = []
    docs: list[dict[str, Any]] = []
    try:
        infos = query.resolve(target)
        for info in infos:
            if view is View.JSON:
                docs.append(info.to_json())
            else:
                parts.append(info.modinfo_text(field=field, separator=separator))
    except KmodkitError as exc:
        return Rendered(target, b"", ItemError.from_error(exc.subject or target, exc))
    finally:
        for info in infos:
            info.close()
    if view is View.JSON:
        return _json_rendered(target, docs)
    return Rendered(target, b"".join(parts), None)
