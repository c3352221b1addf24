"""``kmodkit check`` as a library object: many modules against many kernels, every pair its own result."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kmodkit.check.checker import Checker, Machine, Provider, provider
from kmodkit.check.target import TargetKernel
from kmodkit.check.verdict import Prediction
from kmodkit.errors import KmodkitError, UserError
from kmodkit.sysroot import Root


def target_kernel(name: str, root: Root | str | Path | None = None) -> TargetKernel:
    """The kernel ``name``: a directory holding its files when ``name`` contains a slash, else an installed release."""
    if os.sep in name:
        return TargetKernel.from_dir(name)
    return TargetKernel.installed(name, root)


@dataclass(frozen=True)
class PairResult:
    """One (module, kernel) pair: a prediction, or the error that kept it from being made."""

    module: str  #: the module file, as named
    kernel: str  #: the kernel, as named (release or directory)
    prediction: Prediction | None  #: the verdict, None when an error stopped it
    error: KmodkitError | None  #: why there is no verdict, None when there is one

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        if self.prediction is not None:
            return self.prediction.to_json()
        assert self.error is not None
        return {"path": self.module, "kernel": self.kernel, "error": self.error.to_json()}


class CheckRun:
    """Predict the verdict of every kernel in ``kernels`` on every module in ``modules``.

    ``kernels`` are releases of installed kernels or directories holding a kernel's Module.symvers and
    .config; with ``all_installed`` every installed kernel is added.  Modules in the same directory as a
    checked module, every checked module and those of ``loaded_first`` may provide its symbols: the kernel
    then needs them loaded first, and the prediction says so.  Raises :class:`UserError` when nothing is to be checked.
    """

    def __init__(self, modules: list[str], kernels: list[str], machine: Machine | None = None,
                 all_installed: bool = False, root: Root | str | Path | None = None,
                 loaded_first: list[str] | None = None) -> None:
        from kmodkit.kbuild.kernels import installed_kernels

        if not modules:
            raise UserError("check", "no module named", "name one or more module files")
        names = list(dict.fromkeys(kernels))
        if all_installed:
            names += [k.release for k in installed_kernels(Root.of(root)) if k.release not in names]
        if not names:
            raise UserError("check", "no kernel named", "pass -k KVER (repeatable) or --all-installed")
        #: the module files
        self.modules = modules
        #: the kernels, as named
        self.kernels = names
        #: the machine the kernels run on
        self.machine = machine or Machine()
        self.root = Root.of(root)
        #: more module files that may be loaded first for their exports (another project's builds)
        self.loaded_first = list(loaded_first or [])
        self._providers: dict[str, Provider | None] = {}
        self._checkers: dict[tuple[str, bool], Checker] = {}

    def _target(self, name: str) -> TargetKernel:
        return target_kernel(name, self.root)

    def _provider(self, path: str) -> Provider | None:
        if path not in self._providers:
            try:
                self._providers[path] = provider(path)
            except KmodkitError:
                self._providers[path] = None
        return self._providers[path]

    def providers_for(self, module: str) -> list[Provider]:
        """The modules that may provide symbols to ``module``: the other named ones and its directory's."""
        from kmodkit.modfile.module import MODULE_SUFFIXES

        here = os.path.dirname(os.path.abspath(module))
        try:
            siblings = sorted(os.path.join(here, f) for f in os.listdir(here) if f.endswith(MODULE_SUFFIXES))
        except OSError:
            siblings = []
        me = os.path.abspath(module)
        found = []
        named = [os.path.abspath(m) for m in self.modules + self.loaded_first]
        for path in dict.fromkeys(named + siblings):
            if path != me:
                p = self._provider(path)
                if p is not None:
                    found.append(p)
        return found

    def results(self, jobs: int | None = None) -> Iterator[PairResult]:
        """Every (module, kernel) pair, kernel by kernel, in the order named; large batches in ``jobs`` workers."""
        global _WORK
        from kmodkit._util.pool import Cost, chunks, fan_out, jobs_for

        for kname in self.kernels:
            try:
                target = self._target(kname)
            except KmodkitError as exc:
                for m in self.modules:
                    yield PairResult(m, kname, None, exc)
                continue
            workers = jobs_for(len(self.modules), Cost.READ, jobs)
            if workers:
                # read once here what every worker needs, so the forked workers share it
                _ = target.exports, target.struct_module_size, target.sysfs_builtin
            _WORK = (self, target, kname)
            try:
                for batch in fan_out(_check_batch, chunks(self.modules, workers), workers):
                    yield from batch
            finally:
                _WORK = None

    def check_one(self, target: TargetKernel, kname: str, module: str) -> PairResult:
        """The result of one module on one kernel."""
        in_tree = target.source.moddir is not None and \
            os.path.abspath(module).startswith(str(target.source.moddir) + os.sep)
        checker = self._checkers.get((kname, in_tree))
        if checker is None or checker.kernel is not target:
            checker = Checker(target, self.machine)
            self._checkers[(kname, in_tree)] = checker
        checker.providers = [] if in_tree else self.providers_for(module)
        try:
            return PairResult(module, kname, checker.check(module), None)
        except KmodkitError as exc:
            return PairResult(module, kname, None, exc)


#: the run a batch of workers serves (set before forking, so it reaches them without pickling)
_WORK: tuple[CheckRun, TargetKernel, str] | None = None


def _check_batch(modules: list[str]) -> list[PairResult]:
    assert _WORK is not None
    run, target, kname = _WORK
    return [run.check_one(target, kname, m) for m in modules]
