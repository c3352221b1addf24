"""What to load, in which order: a module, its dependencies, and the parameters each one gets.

Names resolve in the target kernel's tree (``modules.dep``, ``modules.alias``);
a path resolves its ``depends=`` first among the files beside it (an
out-of-tree project with several modules), then in the tree.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from functools import cached_property

from kmodkit.errors import NotFoundError, UserError
from kmodkit.index.lookup import ModuleTree
from kmodkit.modfile.module import MODULE_SUFFIXES, ModuleFile, module_name, normalize_name


@dataclass(frozen=True)
class PlanStep:
    """One module to load."""

    name: str  #: the module name (underscores)
    path: str  #: the module file
    params: tuple[str, ...] = ()  #: ``key=value`` parameters for this module, in the order given
    already_loaded: bool = False  #: True when the module is loaded already and the step is skipped

    def to_json(self) -> dict[str, object]:
        """The step as a JSON object."""
        return {"name": self.name, "path": self.path, "params": list(self.params),
                "already_loaded": self.already_loaded}


@dataclass(frozen=True)
class LoadPlan:
    """Modules in load order: dependencies first, the asked module last."""

    target: str  #: what was asked for (name, alias or path)
    steps: tuple[PlanStep, ...]  #: every module, dependencies first
    builtin: tuple[str, ...] = field(default=())  #: needed modules built into the kernel (nothing to load)

    @property
    def to_load(self) -> list[PlanStep]:
        """Steps that are not loaded yet (``[]`` when everything is)."""
        return [s for s in self.steps if not s.already_loaded]

    def to_json(self) -> dict[str, object]:
        """The plan as a JSON object."""
        return {"target": self.target, "steps": [s.to_json() for s in self.steps], "builtin": list(self.builtin)}


class DependencyTree:
    """Dependencies of the modules of one kernel tree, as ``modules.dep`` lists them."""

    def __init__(self, moddir: str) -> None:
        #: the lookup of names and aliases in the tree
        self.tree = ModuleTree(moddir)
        #: ``/lib/modules/KVER``
        self.moddir = moddir

    @cached_property
    def _deps(self) -> dict[str, tuple[str, list[str]]]:
        out: dict[str, tuple[str, list[str]]] = {}
        try:
            with open(os.path.join(self.moddir, "modules.dep"), encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    path, colon, rest = line.partition(":")
                    if colon:
                        out.setdefault(module_name(path), (self._abs(path), [self._abs(p) for p in rest.split()]))
        except FileNotFoundError:
            pass
        return out

    def _abs(self, rel: str) -> str:
        return rel if rel.startswith("/") else f"{self.moddir}/{rel}"

    def resolve(self, target: str) -> list[str]:
        """Module names for a name or alias, ``[]`` when the tree has none."""
        return [f.name for f in self.tree.lookup(target)]

    def is_builtin(self, name: str) -> bool:
        """Whether ``name`` is built into the kernel image."""
        found = self.tree.lookup_name(name)
        return found is not None and found.is_builtin

    def chain(self, name: str) -> list[str] | None:
        """Paths to load for ``name``, dependencies first; None when the tree has no such module file."""
        entry = self._deps.get(normalize_name(name))
        if entry is None:
            return None
        path, deps = entry
        # modules.dep lists the closest dependency first: modprobe loads the list backwards
        return [*reversed(deps), path]


def plan_names(tree: DependencyTree, names: list[str]) -> tuple[list[str], list[str]]:
    """Paths to load for several tree modules in order (no repeats) and the names that are built in.

    Raises NotFoundError for a name the tree does not know.
    """
    paths: list[str] = []
    builtin: list[str] = []
    for name in names:
        chain = tree.chain(name)
        if chain is None:
            if tree.is_builtin(name):
                builtin.append(normalize_name(name))
                continue
            raise NotFoundError(name, f"no such module in {tree.moddir}", "check the name with 'kmodkit info'")
        for p in chain:
            if p not in paths:
                paths.append(p)
    return paths, builtin


def _is_path(target: str) -> bool:
    return os.sep in target or target.endswith(MODULE_SUFFIXES)


def build_plan(target: str, params: list[str], tree: DependencyTree, loaded: frozenset[str] = frozenset()) -> LoadPlan:
    """The load plan for ``target`` (a name, alias or module file) with ``params`` for the target itself.

    Modules named in ``loaded`` are marked already loaded.  Raises NotFoundError
    when the target or a dependency cannot be found, UserError when a parameter
    is not one the module declares.
    """
    builtin: list[str] = []
    if _is_path(target):
        if not os.path.isfile(target):
            raise NotFoundError(target, "no such module file")
        paths = _chain_of_file(os.path.abspath(target), tree, builtin)
    else:
        names = tree.resolve(target)
        if not names:
            raise NotFoundError(target, f"no module or alias of that name in {tree.moddir}",
                                "check the name with 'kmodkit info', or give the module file's path")
        paths, builtin = plan_names(tree, names[:1])
        if not paths:
            return LoadPlan(target, (), tuple(builtin))
    check_params(paths[-1], params)
    steps = []
    for i, p in enumerate(paths):
        name = module_name(p)
        steps.append(PlanStep(name, p, tuple(params) if i == len(paths) - 1 else (), name in loaded))
    return LoadPlan(target, tuple(steps), tuple(builtin))


def _chain_of_file(path: str, tree: DependencyTree, builtin: list[str]) -> list[str]:
    order: list[str] = []
    visiting: set[str] = set()
    siblings = {module_name(f): os.path.join(os.path.dirname(path), f)
                for f in os.listdir(os.path.dirname(path)) if f.endswith(MODULE_SUFFIXES)}

    def visit(p: str) -> None:
        if p in order or p in visiting:
            return
        visiting.add(p)
        with ModuleFile.open(p) as mf:
            depends = mf.depends
        for dep in depends:
            dep = normalize_name(dep)
            if dep in siblings:
                visit(siblings[dep])
                continue
            chain = tree.chain(dep)
            if chain is None:
                if tree.is_builtin(dep):
                    builtin.append(dep)
                    continue
                raise NotFoundError(p, f"needs module '{dep}', found neither beside it nor in {tree.moddir}",
                                    "put the module beside it or install it in the kernel's tree")
            for c in chain:
                if c not in order:
                    order.append(c)
        order.append(p)

    visit(path)
    return order


def check_params(path: str, params: list[str]) -> None:
    """Refuse ``key=value`` parameters the module at ``path`` does not declare (close names are suggested)."""
    if not params:
        return
    with ModuleFile.open(path) as mf:
        declared = [p.name for p in mf.parameters]
        name = mf.name
    for item in params:
        key, eq, _ = item.partition("=")
        if not key:
            raise UserError(item, "is not a parameter", "write NAME=VALUE")
        # the kernel compares parameter names with '-' and '_' alike (parameq)
        if normalize_name(key) in (normalize_name(d) for d in declared):
            continue
        if not declared:
            raise UserError(f"{name}: {key}", "unknown parameter: the module declares no parameters",
                            "load it without parameters")
        close = difflib.get_close_matches(key, declared, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(f"{name}: {key}", "unknown parameter",
                        f"{hint}the module declares: {', '.join(declared)}")
