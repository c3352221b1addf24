"""What to load, in which order, with which parameters: the Resolver's probe list, made ready for the loader.

A name or alias is planned by :class:`kmodkit.index.resolver.Resolver`
exactly as ``modprobe`` plans it: modules.dep dependencies, softdeps (from
modules.softdep and modprobe.d), modprobe.d and kernel command-line options,
the blacklist (aliases only) and install commands.  A module *file* is
planned as modprobe would plan it once installed: its ``depends=`` are found
first among the files beside it (an out-of-tree project with several
modules), then in the tree, each planned by the Resolver; the softdep and
options lines of modprobe.d apply by its name; it is always inserted (an
install line names modules, not files).

A :class:`LoadPlan` wraps the :class:`~kmodkit.index.resolver.ProbeList`
the Resolver made (one step per probe-list step, its ``required`` flag
taken as it is) and adds what the loader needs:

* modules in the kernel already are marked.  When a module asked for (or a
  dependency planned for a file) is loaded, libkmod returns before it builds
  that module's probe list (``kmod_module_probe_insert_module``), so the plan
  holds that one step, marked;
* parameters, joined as :mod:`kmodkit.loader.params` describes;
* which steps are *required* comes from the probe list (libkmod's
  ``required``: the asked module and its modules.dep dependencies).
  Softdeps are not: libkmod ignores their failures, and so does the loader.  When
  an alias reaches several modules, each is required: modprobe goes on to
  the next one after a failure and exits with the last one's status, while
  kmodkit stops and rolls back, so a load never half-succeeds.

A module the Resolver lists twice (a dependency shared with a softdep) stays
listed twice, as ``modprobe --show-depends`` prints it; the loader skips the
second one.  How install commands run is described in :mod:`kmodkit.loader.loader`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from kmodkit.errors import NotFoundError, UserError
from kmodkit.index.config import ModprobeConfig
from kmodkit.index.lookup import ModuleTree
from kmodkit.index.resolver import ProbeList, ProbeStep, Resolver, StepKind, StepReason, show_line
from kmodkit.kbuild.manifest import Manifest
from kmodkit.loader.params import (check_params, find_manifest, is_module_path, join_params, manifest_defaults,
                                   split_words)
from kmodkit.modfile.module import MODULE_SUFFIXES, ModuleFile, module_name, normalize_name

#: steps that change the kernel (the others only say what the kernel has)
ACTING_KINDS = (StepKind.INSMOD, StepKind.INSTALL)


@dataclass(frozen=True)
class PlanStep:
    """One action of a load, in order."""

    kind: StepKind  #: insert a file, run an install command, or nothing (built in / no file)
    name: str  #: the module name (underscores)
    path: str | None  #: the module file for INSMOD, else None
    params: tuple[str, ...]  #: parameter words in the order the kernel gets them (for INSTALL: $CMDLINE_OPTS)
    command: str | None  #: the install command as modprobe.d writes it, for INSTALL; else None
    reason: StepReason  #: why the module is in the plan
    required: bool  #: True when a failure stops the load and rolls back; False for softdeps
    already_loaded: bool = False  #: True when the module is in the kernel already and the step is skipped

    @property
    def acts(self) -> bool:
        """Whether running the step changes the kernel (an insert or an install command not skipped)."""
        return self.kind in ACTING_KINDS and not self.already_loaded

    def command_line(self) -> str | None:
        """The install command with ``$CMDLINE_OPTS`` replaced by the parameters, as libkmod does; None for others."""
        if self.command is None:
            return None
        return self.command.replace("$CMDLINE_OPTS", " ".join(self.params))

    def show(self) -> str | None:
        """The line ``modprobe --show-depends`` prints for this step, or None when it prints nothing."""
        opts = " ".join(self.params)
        return show_line(self.kind, self.name, self.path, self.command, f"{opts} " if opts else "")

    def to_json(self) -> dict[str, object]:
        """The step as a JSON object."""
        return {"kind": self.kind.value, "name": self.name, "path": self.path, "params": list(self.params),
                "command": self.command, "reason": self.reason.value, "required": self.required,
                "already_loaded": self.already_loaded}


@dataclass(frozen=True)
class LoadPlan:
    """Everything a load does, in order: dependencies and softdeps around the asked module."""

    target: str  #: what was asked for (name, alias or path)
    steps: tuple[PlanStep, ...]  #: every step in order, skipped ones included
    blacklisted: tuple[str, ...] = ()  #: modules an alias reached that modprobe.d blacklists (left out)
    manifest: str | None = None  #: the kmodkit.toml whose parameter defaults apply, None when none does
    probe: ProbeList | None = None  #: the Resolver's probe list this plan wraps (None for a module file)

    @property
    def to_load(self) -> list[PlanStep]:
        """Steps that change the kernel (``[]`` when everything is loaded or built in)."""
        return [s for s in self.steps if s.acts]

    @property
    def builtin(self) -> list[str]:
        """Names of planned modules the kernel image holds (``[]`` when none)."""
        return [s.name for s in self.steps if s.kind is StepKind.BUILTIN]

    def show_depends(self) -> list[str]:
        """The lines ``modprobe --show-depends`` prints for this plan (skipped steps included)."""
        return [line for line in (s.show() for s in self.steps) if line is not None]

    def to_json(self) -> dict[str, object]:
        """The plan as a JSON object."""
        return {"target": self.target, "steps": [s.to_json() for s in self.steps], "builtin": self.builtin,
                "blacklisted": list(self.blacklisted), "manifest": self.manifest}


class Planner:
    """Plans loads in one kernel tree with its modprobe.d configuration.

    ``config`` defaults to the system's modprobe.d and ``/proc/cmdline``, as
    modprobe reads them; ``loaded`` names the modules in the kernel;
    ``manifest`` gives parameter defaults to the module it names (without it,
    a module file's own project manifest is looked for beside it).  Raises
    NotFoundError when ``moddir`` does not exist.
    """

    def __init__(self, moddir: str, config: ModprobeConfig | None = None, loaded: frozenset[str] = frozenset(),
                 manifest: Manifest | None = None) -> None:
        #: the tree and the configuration its lookups consult
        self.tree = ModuleTree(moddir, config if config is not None else ModprobeConfig.load(moddir))
        #: modprobe's planner over the tree
        self.resolver = Resolver(self.tree)
        #: modules in the kernel now
        self.loaded = loaded
        #: the manifest given explicitly, None to look for one beside a module file
        self.manifest = manifest

    @classmethod
    def for_running_kernel(cls, moddir: str, manifest: Manifest | None = None, procfs: str = "/proc") -> Planner:
        """The planner a load in the running kernel uses, ``--dry-run`` or not: the system's modprobe.d and
        /proc/cmdline, the modules ``procfs`` lists as loaded (none when the kernel has no module support)."""
        from kmodkit.runtime.modules import KernelModules

        loaded = KernelModules(procfs).loaded_names() if os.path.exists(f"{procfs}/modules") else frozenset()
        return cls(moddir, loaded=loaded, manifest=manifest)

    def plan(self, target: str, params: Sequence[str] = ()) -> LoadPlan:
        """The plan for ``target`` (a name, alias or module file), with ``params`` for the module asked for.

        Raises NotFoundError when the target or a dependency cannot be found,
        UserError when a parameter is not one the module declares or every
        module an alias names is blacklisted.
        """
        if is_module_path(target):
            plan = self._plan_file(target, list(params))
        else:
            plan = self._plan_name(target, list(params))
        if self.manifest is not None and all(s.name != self.manifest.name for s in plan.steps):
            raise UserError(str(self.manifest.path), f"is the manifest of module {self.manifest.name}, "
                            f"which loading {target} does not load", "name that module, or drop --manifest")
        return plan

    # --- names and aliases: the Resolver ----------------------------------------------

    def _plan_name(self, target: str, params: list[str]) -> LoadPlan:
        manifest = self.manifest
        steps, blacklisted, probe = self._resolve(target, StepReason.TARGET, True, params, manifest)
        if steps is None:
            raise NotFoundError(target, f"no module or alias of that name in {self.tree.dirname}",
                                "check the name with 'kmodkit deps', or give the module file's path")
        if not steps and blacklisted:
            raise UserError(target, f"every module this alias names is blacklisted ({', '.join(blacklisted)})",
                            "load the module by its own name: modprobe.d blacklists apply to aliases only")
        return LoadPlan(target, tuple(steps), blacklisted, str(manifest.path) if manifest else None, probe)

    def _resolve(self, request: str, reason: StepReason, required: bool, params: list[str],
                 manifest: Manifest | None) -> tuple[list[PlanStep] | None, tuple[str, ...], ProbeList]:
        """Steps for a name or alias, one per step of the Resolver's probe list (None when the tree has
        nothing by that name), the blacklisted modules the alias reached, and the probe list."""
        probe = self.resolver.probe_list(request)
        if probe.not_found:
            return None, (), probe
        out: list[PlanStep] = []
        for group, found in enumerate(probe.found):
            steps = [s for s in probe.steps if s.group == group]
            if not steps:
                continue  # blacklisted
            if found.name in self.loaded:
                # libkmod stops here: the module asked for is in the kernel, its probe list is not built
                first = next(s for s in steps if s.reason is StepReason.TARGET)
                out.append(self._step(first, reason, required, params, manifest, loaded=True))
                continue
            for s in steps:
                own = s.reason is StepReason.TARGET
                out.append(self._step(s, reason if own else s.reason, required and s.required,
                                      params if own else [], manifest))
        return out, probe.blacklisted, probe

    def _step(self, s: ProbeStep, reason: StepReason, required: bool, params: list[str], manifest: Manifest | None,
              loaded: bool = False) -> PlanStep:
        defaults = manifest_defaults(manifest) if manifest is not None and manifest.name == s.name else ()
        file = s.path or (self.tree.path_of(s.name) if s.kind is StepKind.INSTALL else None)
        if s.kind is StepKind.BUILTIN and params:
            raise UserError(s.name, "is built into the kernel: its parameters cannot be given at load time",
                            f"set them on the kernel command line as {s.name}.PARAM=VALUE")
        if file is not None and os.path.exists(file):
            if manifest is not None and defaults:
                check_params(file, defaults, origin=str(manifest.path))
            check_params(file, params)
        words = join_params(defaults, split_words(s.options), params)
        already = loaded or (s.kind in ACTING_KINDS and s.name in self.loaded)
        return PlanStep(s.kind, s.name, s.path, words, s.command, reason, required, already)

    # --- module files ------------------------------------------------------------------

    def _plan_file(self, target: str, params: list[str]) -> LoadPlan:
        if not os.path.isfile(target):
            raise NotFoundError(target, "no such module file", "check the path, or name the module instead")
        path = os.path.abspath(target)
        with ModuleFile.open(path) as mf:
            name = mf.name
        manifest = self.manifest or find_manifest(path, name)
        directory = os.path.dirname(path)
        siblings = {module_name(f): os.path.join(directory, f) for f in os.listdir(directory)
                    if f.endswith(MODULE_SUFFIXES)}
        steps: list[PlanStep] = []
        visited: set[str] = set()

        def visit(p: str, reason: StepReason) -> None:
            if p in visited:
                return
            visited.add(p)
            with ModuleFile.open(p) as mf:
                mname, depends = mf.name, mf.depends
            own = params if reason is StepReason.TARGET else []
            if mname in self.loaded:
                steps.append(self._file_step(p, mname, reason, own, manifest, loaded=True))
                return
            for dep in (normalize_name(d) for d in depends):
                if dep in siblings and siblings[dep] != p:
                    visit(siblings[dep], StepReason.DEPENDENCY)
                    continue
                found, _, _ = self._resolve(dep, StepReason.DEPENDENCY, True, [], manifest)
                if found is None:
                    raise NotFoundError(p, f"needs module '{dep}', found neither beside it nor in {self.tree.dirname}",
                                        "put the module beside it or install it in the kernel's tree")
                steps.extend(found)
            softdep = self.resolver.softdep(mname)
            for pre in softdep.pre if softdep else ():
                steps.extend(self._resolve(pre, StepReason.SOFTDEP_PRE, False, [], manifest)[0] or [])
            steps.append(self._file_step(p, mname, reason, own, manifest))
            for post in softdep.post if softdep else ():
                steps.extend(self._resolve(post, StepReason.SOFTDEP_POST, False, [], manifest)[0] or [])

        visit(path, StepReason.TARGET)
        return LoadPlan(target, tuple(steps), (), str(manifest.path) if manifest else None)

    def _file_step(self, path: str, name: str, reason: StepReason, params: list[str], manifest: Manifest | None,
                   loaded: bool = False) -> PlanStep:
        options = self.tree.config.options_for(name)
        step = ProbeStep(StepKind.INSMOD, name, path, options, None, reason)
        return self._step(step, reason, True, params, manifest, loaded)
