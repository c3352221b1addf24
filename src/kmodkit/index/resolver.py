"""modprobe's resolution without loading: what ``modprobe --show-depends`` would do, as a probe list.

:class:`Resolver` builds libkmod's probe list (``kmod_module_probe_insert_module``
with ``KMOD_PROBE_DRY_RUN``, kmod 30; unchanged in kmod 34) for a name or alias:

* for each module the lookup finds: its modules.dep dependencies farthest
  first, each preceded by its own ``softdep pre:`` modules and followed by
  its ``post:`` modules, then the module itself the same way;
* a module is expanded once per request (softdeps reached twice are
  skipped), but a dependency shared by a softdep is listed again, as libkmod
  lists it;
* ``options`` lines (by name, or by the alias it was found by) and kernel
  command-line options are joined; an ``install`` line replaces insmod unless
  the module has softdeps; ``blacklist`` stops a request only when it came
  through an alias;
* the module asked for and its modules.dep dependencies are *required*
  (libkmod's ``mod->required``): the others are softdeps, whose failures
  modprobe ignores;
* a dependency whose file is missing drops that module's whole dependency
  list (``kmod_module_parse_depline``); a missing file of the module itself
  is still listed.  Both are named in :attr:`ProbeList.missing`.

``weakdep`` (kmod 33+, modprobe.d and modules.weakdep) never enters a probe
list: kmod 34's modprobe neither loads nor shows weak dependencies; they are
answered by :meth:`Resolver.weakdeps`.

The result is a :class:`ProbeList`; :mod:`kmodkit.loader.plan` wraps it into
the loader's :class:`~kmodkit.loader.plan.LoadPlan`.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from dataclasses import dataclass, field

from kmodkit.errors import UserError
from kmodkit.index.config import Softdep, Weakdep
from kmodkit.index.glob import fnmatch, is_pattern
from kmodkit.index.lookup import FoundModule, ModuleTree
from kmodkit.modfile.module import module_name


class StepKind(enum.Enum):
    """What a load step does."""

    INSMOD = "insmod"  #: insert the module file with options
    BUILTIN = "builtin"  #: nothing to load: the kernel image has it
    INSTALL = "install"  #: run the configured install command instead
    NONE = "none"  #: a configured name with no file and not built in: nothing happens


class StepReason(enum.Enum):
    """Why a module is in a probe list (and in the load plan made from it)."""

    TARGET = "target"  #: the module asked for (or found by the alias asked for)
    DEPENDENCY = "dependency"  #: a modules.dep dependency
    SOFTDEP_PRE = "softdep-pre"  #: a ``softdep ... pre:`` module
    SOFTDEP_POST = "softdep-post"  #: a ``softdep ... post:`` module


def show_line(kind: StepKind, name: str, path: str | None, command: str | None, options: str) -> str | None:
    """The line ``modprobe --show-depends`` prints for a step (``options`` as printed), None when it prints none."""
    if kind is StepKind.INSTALL:
        return f"install {command} {options}"
    if kind is StepKind.INSMOD:
        return f"insmod {path} {options}"
    if kind is StepKind.BUILTIN:
        return f"builtin {name}"
    return None


@dataclass(frozen=True)
class ProbeStep:
    """One entry of a probe list, in order."""

    kind: StepKind  #: what to do
    name: str  #: module name
    path: str | None  #: module file for INSMOD, else None
    options: str  #: module options (``""`` when none); for INSTALL, $CMDLINE_OPTS material
    command: str | None  #: the install command for INSTALL, else None
    reason: StepReason  #: why the module is in the list
    group: int = 0  #: index in ``ProbeList.found`` of the module whose probe list holds this step
    required: bool = True  #: libkmod's ``required``: the module asked for or one of its modules.dep dependencies

    def show(self) -> str | None:
        """The line ``modprobe --show-depends`` prints for this step, or None when it prints nothing."""
        return show_line(self.kind, self.name, self.path, self.command, self.options)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {"kind": self.kind.value, "name": self.name, "path": self.path, "options": self.options,
                "command": self.command, "reason": self.reason.value, "required": self.required}


@dataclass(frozen=True)
class ProbeList:
    """What ``modprobe`` would do for ``request``, in order: libkmod's probe list of each module found."""

    request: str  #: the name or alias asked for
    found: tuple[FoundModule, ...]  #: what the lookup found ((): not found)
    steps: tuple[ProbeStep, ...]  #: actions in order
    blacklisted: tuple[str, ...] = ()  #: modules skipped because an alias reached a blacklisted one
    missing: tuple[str, ...] = ()  #: module files modules.dep names that do not exist, in the order met

    @property
    def not_found(self) -> bool:
        """Whether the lookup found nothing."""
        return not self.found

    def show_depends(self) -> list[str]:
        """The lines ``modprobe --show-depends`` prints, in order."""
        return [line for line in (s.show() for s in self.steps) if line is not None]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {"request": self.request, "found": [f.name for f in self.found],
                "blacklisted": list(self.blacklisted), "missing": list(self.missing),
                "steps": [s.to_json() for s in self.steps]}


_Key = tuple[str, str | None]


@dataclass
class _Probe:
    tree: ModuleTree
    items: list[tuple[FoundModule, StepReason]] = field(default_factory=list)
    visited: set[_Key] = field(default_factory=set)
    ignorecmd: dict[_Key, bool] = field(default_factory=dict)


class Resolver:
    """modprobe's planner over one tree and its configuration (``tree.config``)."""

    def __init__(self, tree: ModuleTree) -> None:
        #: the tree (its ``config`` is the modprobe.d configuration)
        self.tree = tree
        self._softdep_cache: dict[str, tuple[list[FoundModule], list[FoundModule]]] = {}
        self._softdep_table: tuple[dict[str, int], list[int]] | None = None
        self._exists: dict[str, bool] = {}

    def probe_list(self, request: str) -> ProbeList:
        """The probe list for a name or alias; one with no ``found`` modules when nothing matches."""
        try:
            found = self.tree.lookup(request)
        except UserError:
            found = []
        steps: list[ProbeStep] = []
        skipped: list[str] = []
        for group, mod in enumerate(found):
            if mod.alias is not None and self.tree.config.is_blacklisted(mod.name):
                skipped.append(mod.name)
                continue
            probe = _Probe(self.tree)
            self._probe_list(probe, mod, StepReason.TARGET)
            required = {mod.name, *(module_name(p) for p in self.tree.dependencies(mod.name))}
            steps += [self._step(probe, m, reason, group, m.name in required) for m, reason in probe.items]
        missing = [p for p in dict.fromkeys(self._listed_paths(steps)) if not self._file_exists(p)]
        return ProbeList(request, tuple(found), tuple(steps), tuple(skipped), tuple(missing))

    def probe_lists(self, requests: list[str]) -> list[ProbeList]:
        """One probe list per request, as ``modprobe -a`` handles each name in turn."""
        return [self.probe_list(r) for r in requests]

    def weakdeps(self, name: str) -> list[FoundModule]:
        """The modules the first ``weakdep`` line matching ``name`` names (kmod 34's
        ``kmod_module_get_weakdeps``), each looked up; ``[]`` when no line matches."""
        line = self.weakdep(name)
        return [m for weak in line.weak for m in self._lookup_quiet(weak)] if line is not None else []

    def weakdep(self, name: str) -> Weakdep | None:
        """The weakdep line that applies to module ``name`` (the first whose pattern matches), None when none does."""
        return next((w for w in self.tree.config.weakdeps if fnmatch(w.module.encode(), name.encode())), None)

    def _file_exists(self, path: str) -> bool:
        ok = self._exists.get(path)
        if ok is None:
            ok = self._exists[path] = os.path.exists(path)
        return ok

    def _listed_paths(self, steps: list[ProbeStep]) -> list[str]:
        # every file a step's modules.dep line names: its own and its dependencies'
        out: list[str] = []
        for s in steps:
            own = self.tree.path_of(s.name)
            if own is not None:
                out.append(own)
                out.extend(self.tree.dependencies(s.name))
        return out

    # --- libkmod's probe list --------------------------------------------------------

    def _dep_modules(self, mod: FoundModule) -> list[FoundModule]:
        deps = self.tree.dependencies(mod.name)
        # libkmod creates each dependency from its path and gives up the whole
        # list when one file is missing (kmod_module_parse_depline)
        for p in deps:
            if not self._file_exists(p):
                return []
        return [FoundModule(module_name(p), p) for p in reversed(deps)]

    def _softdeps(self, mod: FoundModule) -> tuple[list[FoundModule], list[FoundModule]]:
        hit = self._softdep_cache.get(mod.name)
        if hit is not None:
            return hit
        pre: list[FoundModule] = []
        post: list[FoundModule] = []
        sd = self._first_softdep(mod.name)
        if sd is not None:
            pre = [m for name in sd.pre for m in self._lookup_quiet(name)]
            post = [m for name in sd.post for m in self._lookup_quiet(name)]
        self._softdep_cache[mod.name] = (pre, post)
        return pre, post

    def softdep(self, name: str) -> Softdep | None:
        """The softdep line that applies to module ``name`` (the first that matches), None when none does."""
        return self._first_softdep(name)

    def _first_softdep(self, name: str) -> Softdep | None:
        # libkmod takes the first softdep line whose pattern matches; plain
        # names are looked up in a table, only glob patterns are matched
        if self._softdep_table is None:
            exact: dict[str, int] = {}
            globs: list[int] = []
            for i, sd in enumerate(self.tree.config.softdeps):
                if is_pattern(sd.module.encode()):
                    globs.append(i)
                else:
                    exact.setdefault(sd.module, i)
            self._softdep_table = (exact, globs)
        exact, globs = self._softdep_table
        best = exact.get(name)
        encoded = name.encode()
        for i in globs:
            if best is not None and i > best:
                break
            if fnmatch(self.tree.config.softdeps[i].module.encode(), encoded):
                best = i
                break
        return self.tree.config.softdeps[best] if best is not None else None

    def _lookup_quiet(self, name: str) -> list[FoundModule]:
        try:
            return self.tree.lookup(name)
        except UserError:
            return []

    def _probe_list(self, probe: _Probe, mod: FoundModule, reason: StepReason) -> None:
        key = (mod.name, mod.alias)
        if key in probe.visited:
            return
        probe.visited.add(key)
        for dep in self._dep_modules(mod):
            self._fill_softdep(probe, dep, StepReason.DEPENDENCY)
        self._fill_softdep(probe, mod, reason)

    def _fill_softdep(self, probe: _Probe, mod: FoundModule, reason: StepReason) -> None:
        pre, post = self._softdeps(mod)
        for m in pre:
            self._probe_list(probe, m, StepReason.SOFTDEP_PRE)
        probe.items.append((mod, reason))
        probe.ignorecmd[(mod.name, mod.alias)] = bool(pre or post)
        for m in post:
            self._probe_list(probe, m, StepReason.SOFTDEP_POST)

    def _step(self, probe: _Probe, mod: FoundModule, reason: StepReason, group: int, required: bool) -> ProbeStep:
        cfg = self.tree.config
        opts = cfg.options_for(mod.name, mod.alias)
        options = f"{opts} " if opts else ""  # libkmod joins "OPTS" and the (absent) extra options with a space
        command = mod.install
        if command is None:
            command = next((c.command for c in cfg.install if fnmatch(c.module.encode(), mod.name.encode())), None)
        if command is not None and not probe.ignorecmd.get((mod.name, mod.alias), False):
            return ProbeStep(StepKind.INSTALL, mod.name, None, options, command, reason, group, required)
        path = mod.path if mod.path is not None else self.tree.path_of(mod.name)
        if path is not None:
            return ProbeStep(StepKind.INSMOD, mod.name, path, options, None, reason, group, required)
        if mod.builtin or self.tree.is_builtin(mod.name):
            return ProbeStep(StepKind.BUILTIN, mod.name, None, options, None, reason, group, required)
        return ProbeStep(StepKind.NONE, mod.name, None, options, None, reason, group, required)

    # --- beyond modprobe -------------------------------------------------------------

    def direct_dependencies(self, name: str) -> list[str]:
        """Names ``name`` needs directly (modules.dep minus what its dependencies already bring)."""
        deps = [module_name(p) for p in self.tree.dependencies(name)]
        indirect = {module_name(p) for d in deps for p in self.tree.dependencies(d)}
        return [d for d in deps if d not in indirect]

    def reverse_dependencies(self, name: str) -> list[str]:
        """Modules whose modules.dep line lists ``name`` (sorted); [] when none."""
        index = self.tree.dep_index
        if index is None:
            return []
        out = []
        for key, values in index.items():
            line = values[0][1].decode("utf-8", "surrogateescape")
            deps = line.split(":", 1)[1].split() if ":" in line else []
            if any(module_name(d) == name for d in deps):
                out.append(key.decode())
        return sorted(out)

    def why(self, start: str, target: str) -> list[str] | None:
        """The shortest chain of direct dependencies from ``start`` to ``target``, or None when unrelated."""
        prev: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            cur = queue.popleft()
            if cur == target:
                chain = [cur]
                while prev[chain[-1]] is not None:
                    chain.append(prev[chain[-1]])  # type: ignore[arg-type]
                return list(reversed(chain))
            for nxt in self.direct_dependencies(cur):
                if nxt not in prev:
                    prev[nxt] = cur
                    queue.append(nxt)
        return None

    def tree_lines(self, name: str) -> list[str]:
        """``name`` and its direct dependencies as an indented tree (a repeated subtree is marked ``...``)."""
        lines: list[str] = []
        seen: set[str] = set()

        def walk(mod: str, depth: int, stack: tuple[str, ...]) -> None:
            if mod in stack:
                lines.append("  " * depth + f"{mod} (cycle: {' -> '.join(stack[stack.index(mod):] + (mod,))})")
                return
            more = mod in seen and bool(self.direct_dependencies(mod))
            lines.append("  " * depth + mod + (" ..." if more else ""))
            if more:
                return
            seen.add(mod)
            for d in self.direct_dependencies(mod):
                walk(d, depth + 1, stack + (mod,))

        walk(name, 0, ())
        return lines

    def softdep_cycles(self, name: str) -> list[list[str]]:
        """Loops among softdeps and dependencies reachable from ``name``, each naming its modules."""
        cycles: list[list[str]] = []
        state: dict[str, int] = {}
        path: list[str] = []

        def edges(mod: str) -> list[str]:
            found = self.tree.lookup_name(mod)
            if found is None:
                return []
            pre, post = self._softdeps(found)
            return self.direct_dependencies(mod) + [m.name for m in pre + post]

        def visit(mod: str) -> None:
            state[mod] = 1
            path.append(mod)
            for nxt in edges(mod):
                if state.get(nxt) == 1:
                    cycles.append(path[path.index(nxt):] + [nxt])
                elif nxt not in state:
                    visit(nxt)
            path.pop()
            state[mod] = 2

        visit(name)
        return cycles
