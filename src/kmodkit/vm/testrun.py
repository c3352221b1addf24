"""``kmodkit test``: a project's ``[test] script`` run in a booted kernel, per kernel, with its built modules.

For each kernel the script is run by :class:`kmodkit.vm.machine.Vm` (the library of ``vm run``): the
kernel boots under QEMU with the host's root shared read-only, the script runs in the project
directory, and its arguments are every module file the test needs, in an order ``insmod`` can load
them one after another: the modules of the projects named in ``[project] depends`` first (their own
out/KVER/), then the project's, each after the modules its ``depends=`` names.  ``$KMODKIT_KVER``
is the kernel's release.  A kernel passes when the script exits 0, the guest did not panic and its
kernel logged no report (oops, BUG, WARNING...): a module that crashes while the script carries on
has still failed.  Reports are decoded to source lines with the built modules (vm run does that).

Kernels run one after another by default: a TCG guest keeps one host CPU busy for the whole run, and
boots of several at once on a busy machine only slow each other down (``jobs`` runs more at once).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmodkit.errors import EnvironmentNotReady, ItemError, KmodkitError, UserError
from kmodkit.kbuild.manifest import MANIFEST, Manifest

if TYPE_CHECKING:
    from kmodkit.klog.diagnose import Diagnosis

log = logging.getLogger(__name__)

#: lines of the script's output a result keeps (the whole output stays in the run directory)
OUTPUT_TAIL_LINES = 20


@dataclass(frozen=True)
class KernelTest:
    """The test of a project in one booted kernel."""

    kernel: str  #: the kernel release
    passed: bool  #: the script exited 0, the guest did not panic, its kernel logged no report
    exit_status: int | None  #: the script's exit status (124 timed out, 5 panicked); None when it never ran
    seconds: float | None  #: host time of the boot and the script, None when it never ran
    modules: tuple[str, ...]  #: the module files given to the script, in load order
    run_dir: str | None  #: the vm run directory with every log, None when it never ran
    output_tail: str = ""  #: the last lines of the script's output
    timed_out: bool = False  #: the run was stopped at the timeout
    panicked: bool = False  #: the guest's kernel panicked
    reports: tuple[Diagnosis, ...] = ()  #: the kernel's reports, decoded
    error: ItemError | None = None  #: why the script did not run (not built, no kernel image...), None when it did

    @property
    def verdict(self) -> str:
        """One word: pass, fail, timeout, panic, crash (a report while the script went on), error."""
        if self.passed:
            return "pass"
        if self.error is not None:
            return "error"
        if self.panicked:
            return "panic"
        if self.timed_out:
            return "timeout"
        if self.reports:
            return "crash"
        return "fail"

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object."""
        return {"kernel": self.kernel, "passed": self.passed, "verdict": self.verdict,
                "exit_status": self.exit_status,
                "seconds": None if self.seconds is None else round(self.seconds, 3), "modules": list(self.modules),
                "run_dir": self.run_dir, "output_tail": self.output_tail, "timed_out": self.timed_out,
                "panicked": self.panicked, "reports": [d.to_json() for d in self.reports],
                "error": self.error.to_json() if self.error else None}


@dataclass(frozen=True)
class TestReport:
    """Every kernel's test, in the order the kernels were named."""

    project: Path  #: the project directory
    script: Path  #: the test script
    results: tuple[KernelTest, ...]  #: one per kernel
    jobs: int  #: kernels booted at once

    @property
    def ok(self) -> bool:
        """Whether every kernel passed."""
        return all(r.passed for r in self.results)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return {"project": str(self.project), "script": str(self.script), "ok": self.ok, "jobs": self.jobs,
                "passed": sum(r.passed for r in self.results), "total": len(self.results),
                "results": [r.to_json() for r in self.results]}


@dataclass
class ProjectTest:
    """The test of one project in booted kernels; validated on construction.

    ``kernels`` empty and ``all_installed`` false: the manifest's targets, else every installed kernel
    (as ``kmodkit build`` chooses).  ``jobs``: kernels booted at once (default 1).
    """

    project: Path
    kernels: list[str] = field(default_factory=list)
    all_installed: bool = False
    jobs: int = 1
    timeout: float = 600.0  #: seconds each kernel's boot and script may take
    memory_mb: int = 1024  #: guest memory
    runs_dir: str | None = None  #: where run directories go (default: vm run's)

    def __post_init__(self) -> None:
        from kmodkit.kbuild import kernels as kern
        from kmodkit.vm.machine import QEMU_BINARIES

        self.project = Path(self.project).resolve()
        self.manifest = Manifest.load(self.project)
        if self.kernels and self.all_installed:
            raise UserError("-k/--all-installed", "name kernels or ask for all installed ones, not both")
        if self.jobs < 1:
            raise UserError(f"-j {self.jobs}", "the number of kernels booted at once must be at least 1")
        if self.manifest.test_script is None:
            raise UserError(str(self.manifest.path), "names no test script",
                            'add [test] script = "tests/vm-test.sh" (kmodkit new writes one)')
        self.script = Path(os.path.normpath(self.project / self.manifest.test_script))
        if not self.script.is_file():
            raise UserError(str(self.script), f"the test script {MANIFEST} names does not exist",
                            f"create it, or fix [test] script in {self.manifest.path}")
        for release in self.kernels:
            problem = kern.release_problem(release)
            if problem is not None:
                raise UserError(f"-k {release!r}", problem, "name a kernel as /lib/modules does")
        kern.check_installed(self.kernels)
        self.targets = self._targets()
        if not self.targets:
            raise UserError("/lib/modules", "no kernel is installed to test in", "install one or name one with -k")
        binary, package = QEMU_BINARIES.get(os.uname().machine, ("qemu-system-x86_64", "qemu-system-x86"))
        if shutil.which(binary) is None:
            raise EnvironmentNotReady(binary, "not installed", f"install it: apt-get install {package}")
        self.depends = self.manifest.dependency_paths()
        for dep in self.depends:
            if not (dep / MANIFEST).is_file():
                raise UserError(str(dep), f"is named in [project] depends of {self.manifest.path} but holds no "
                                f"{MANIFEST}", "name the directory of another kmodkit project")

    def _targets(self) -> list[str]:
        from kmodkit.kbuild import kernels as kern

        if self.kernels:
            return list(dict.fromkeys(self.kernels))
        if not self.all_installed and self.manifest.targets:
            running = kern.running_release() or ""
            return list(dict.fromkeys(running if t == "running" else t for t in self.manifest.targets))
        return [k.release for k in kern.installed_kernels()]

    def modules_for(self, release: str) -> list[Path] | ItemError:
        """The module files the script gets for ``release``, in load order; an ItemError when one is not built."""
        files: list[Path] = []
        for project in [*self.depends, self.project]:
            manifest = self.manifest if project == self.project else Manifest.load(project)
            for m in manifest.modules:
                ko = project / "out" / release / f"{m.name}.ko"
                if not ko.is_file():
                    return ItemError(str(ko), f"is not built for {release}",
                                     f"kmodkit build {shlex.quote(str(project))} -k {release}")
                files.append(ko)
        return load_order(files)

    def run(self, listener: Callable[[KernelTest], None] | None = None) -> TestReport:
        """Test in every kernel (``jobs`` at once); ``listener`` hears each result as it comes."""
        lock = threading.Lock()

        def one(release: str) -> KernelTest:
            result = self._test(release)
            if listener is not None:
                with lock:
                    listener(result)
            return result

        jobs = max(1, min(self.jobs, len(self.targets)))
        if jobs == 1:
            results = [one(r) for r in self.targets]
        else:
            with ThreadPoolExecutor(jobs) as pool:
                results = list(pool.map(one, self.targets))
        return TestReport(self.project, self.script, tuple(results), jobs)

    def _test(self, release: str) -> KernelTest:
        from kmodkit.vm.machine import Vm, VmSpec

        modules = self.modules_for(release)
        if isinstance(modules, ItemError):
            return KernelTest(release, False, None, None, (), None, error=modules)
        paths = tuple(str(p) for p in modules)
        log.info("%s: running %s with %s", release, self.script, " ".join(paths))
        # a script that lost its x bit (an archive, a copy) still runs: sh reads it
        command = (str(self.script), *paths) if os.access(self.script, os.X_OK) else ("/bin/sh", str(self.script),
                                                                                      *paths)
        start = time.monotonic()
        try:
            spec = VmSpec(release, command, memory_mb=self.memory_mb, timeout=self.timeout, cwd=str(self.project),
                          env=(("KMODKIT_KVER", release),), runs_dir=self.runs_dir,
                          module_paths=tuple(dict.fromkeys(str(p.parent) for p in modules)))
            result = Vm(spec).run()
        except KmodkitError as exc:
            return KernelTest(release, False, None, time.monotonic() - start, paths, None,
                              error=ItemError.from_error(release, exc))
        tail = "\n".join(result.output().rstrip("\n").splitlines()[-OUTPUT_TAIL_LINES:])
        passed = result.exit_status == 0 and not result.panicked and not result.timed_out and not result.reports
        return KernelTest(release, passed, result.exit_status, result.wall_seconds, paths, result.run_dir, tail,
                          result.timed_out, result.panicked, result.reports)


def load_order(files: list[Path]) -> list[Path]:
    """``files`` (module files) ordered so that each comes after the ones among them its ``depends=`` names.

    The given order is kept where the dependencies allow; a file that cannot be read, or a cycle, keeps
    its place (insmod then says what is wrong).
    """
    from kmodkit.modfile.module import ModuleFile, module_name, normalize_name

    by_name = {normalize_name(module_name(str(f))): f for f in files}
    needs: dict[Path, list[Path]] = {}
    for f in files:
        try:
            with ModuleFile.open(f) as mf:
                deps = [normalize_name(d) for d in mf.depends]
        except (KmodkitError, OSError):
            deps = []
        needs[f] = [by_name[d] for d in deps if d in by_name and by_name[d] != f]
    ordered: list[Path] = []

    def visit(f: Path, path: tuple[Path, ...]) -> None:
        if f in ordered or f in path:
            return
        for d in needs[f]:
            visit(d, (*path, f))
        ordered.append(f)

    for f in files:
        visit(f, ())
    return ordered
