"""Module arguments as kmod's tools take them: a file, or a name or alias looked up in a kernel tree.

This sits above :mod:`kmodkit.modfile` (which reads module files) and
:mod:`kmodkit.index` (which finds names in a tree), so that neither imports
the other: ``kmodkit info`` hands a :class:`ModuleQuery` to
:func:`kmodkit.modfile.info.render_all`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from kmodkit.errors import NotFoundError, UserError, from_oserror
from kmodkit.modfile.info import ModuleInfo
from kmodkit.modfile.module import MODULE_SUFFIXES

if TYPE_CHECKING:
    from kmodkit.index.lookup import ModuleTree


@dataclass
class ModuleQuery:
    """What a command was asked: module files, names or aliases, and the tree names are resolved in."""

    targets: list[str]  #: paths, names or aliases, in order
    kver: str | None = None  #: kernel release whose tree resolves names (default: running kernel)
    basedir: str | None = None  #: root under which lib/modules is found
    modname_only: bool = False  #: names are module names, never aliases or files
    cwd: str = field(default_factory=os.getcwd)  #: makes relative paths absolute, as kmod does

    def __post_init__(self) -> None:
        if not self.targets:
            raise UserError("info", "no module given", "name a module file, name or alias")

    @cached_property
    def tree(self) -> ModuleTree:
        """The kernel tree names are resolved in; NotFoundError when it does not exist."""
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
        """The modules ``target`` stands for; raises NotFoundError when none.

        A path must exist (libkmod stats it before anything else); a name's
        file is the one the index lists, opened only when it is read.
        """
        if self.is_path(target):
            try:
                os.stat(target)
            except OSError as exc:
                raise from_oserror(exc, target) from None
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
