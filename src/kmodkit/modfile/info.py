"""The library object behind ``kmodkit info``: turn arguments into modules and describe them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kmodkit.errors import NotFoundError, UserError
from kmodkit.modfile.describe import Field, format_modinfo, modinfo_fields, to_json
from kmodkit.modfile.module import MODULE_SUFFIXES, ModuleFile


class ModuleInfo:
    """One module to describe: a file, or a built-in module of a kernel tree."""

    def __init__(self, filename: str, module: ModuleFile | None = None, builtin_name: str | None = None,
                 builtin_fields: tuple[Field, ...] = ()) -> None:
        #: the file name modinfo prints (absolute), or "(builtin)"
        self.filename = filename
        #: the open module file, None for a built-in module
        self.module = module
        #: the built-in module's name, None for a file
        self.builtin_name = builtin_name
        self._builtin_fields = builtin_fields

    def fields(self) -> list[Field]:
        """The fields modinfo lists, in its order."""
        if self.module is None:
            return list(self._builtin_fields)
        return modinfo_fields(self.module)

    def modinfo_text(self, field: str | None = None, separator: bytes = b"\n") -> bytes:
        """The module printed exactly as kmod's modinfo prints it."""
        return format_modinfo(
            os.fsencode(self.filename), self.fields(), field=field, separator=separator,
            builtin_name=None if self.builtin_name is None else self.builtin_name.encode(),
        )

    def to_json(self) -> dict[str, Any]:
        """Every field plus symbols, versions, sections and the signature, as JSON data."""
        if self.module is None:
            fields: dict[str, Any] = {}
            for k, v in self._builtin_fields:
                key, value = k.decode("utf-8", "replace"), v.decode("utf-8", "replace")
                fields[key] = fields[key] + [value] if isinstance(fields.get(key), list) else (
                    [fields[key], value] if key in fields else value)
            return {"filename": "(builtin)", "name": self.builtin_name, "builtin": True, "modinfo": fields}
        return to_json(self.module, self.filename)

    def close(self) -> None:
        """Release the module file."""
        if self.module is not None:
            self.module.close()


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

    def resolve(self, target: str) -> list[ModuleInfo]:
        """The modules ``target`` stands for; raises NotFoundError when none."""
        if self.is_path(target):
            path = target if os.path.isabs(target) else f"{self.cwd}/{target}"
            return [ModuleInfo(path, ModuleFile.open(target))]
        if self.modname_only:
            hit = self.tree.lookup_name(target)
            found = [] if hit is None else [hit]
        else:
            found = self.tree.lookup(target)
        if not found:
            raise NotFoundError(target, f"no module or alias of that name in {self.tree.dirname}")
        return [
            ModuleInfo(h.path, ModuleFile.open(h.path)) if h.path is not None
            else ModuleInfo("(builtin)", None, h.name, h.builtin_info)
            for h in found
        ]
