"""Loading a plan into the running kernel, rolling back on failure, and unloading.

Kernel rules this follows:

* finit_module takes a compressed file only when the kernel decompresses
  modules itself: it then shows the one algorithm it knows in
  /sys/module/compression and accepts MODULE_INIT_COMPRESSED_FILE (kernel
  commit b1ae6dc41eaa, "module: add in-kernel support for decompressing").
  Otherwise kmodkit decompresses and hands the image to init_module.
* delete_module with O_NONBLOCK fails with EWOULDBLOCK/EBUSY while the module is
  held; kmodkit checks holders first to name them.

Install commands.  An ``install NAME COMMAND`` line of modprobe.d replaces
inserting NAME.  kmodkit runs it exactly as modprobe does (libkmod's
``command_do``): ``/bin/sh -c COMMAND`` with ``$CMDLINE_OPTS`` replaced by
the module's options and ``MODPROBE_MODULE=NAME`` in the environment; a
non-zero exit fails the step.  The command is never a kmodkit argument: it
comes from the system's modprobe.d, which only root writes, and running it
is what the system asked for (``install cramfs /bin/false`` is how
administrators forbid a module; skipping the line would load what they
forbade).  The command's output is captured into the result, not printed.
What a command loads is not kmodkit's to roll back: only modules this call
inserted itself are unloaded when a later step fails.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from dataclasses import dataclass, field

from kmodkit.errors import KmodkitError, SyscallError, UserError
from kmodkit.loader import syscalls
from kmodkit.index.resolver import StepKind
from kmodkit.kbuild.manifest import Manifest
from kmodkit.loader.explain import Explanation, explain, explain_install
from kmodkit.loader.kmsg import KmsgWatcher
from kmodkit.loader.plan import LoadPlan, Planner, PlanStep
from kmodkit.modfile.compress import Compression
from kmodkit.modfile.module import ModuleFile, normalize_name
from kmodkit.runtime.modules import KernelModules

log = logging.getLogger(__name__)

#: /sys/module/compression words -> the compression they name (kernel/module/decompress.c)
KERNEL_COMPRESSION = {"gzip": Compression.GZIP, "xz": Compression.XZ, "zstd": Compression.ZSTD}


class LoadFailed(KmodkitError):
    """A module of a plan failed to load; what this call had loaded was unloaded again."""

    exit_status = 1

    def __init__(self, explanation: Explanation, rolled_back: list[str], left_loaded: list[str]) -> None:
        super().__init__(explanation.module, explanation.problem, explanation.fix)
        #: why the module failed
        self.explanation = explanation
        #: modules this call loaded and then unloaded, in unload order
        self.rolled_back = rolled_back
        #: modules this call loaded that could not be unloaded again (``[]`` normally)
        self.left_loaded = left_loaded


@dataclass(frozen=True)
class InstallRun:
    """An install command of modprobe.d that a load ran."""

    module: str  #: the module the command stands for
    command: str  #: the command as shown (``$CMDLINE_OPTS`` written out; the shell got it from the environment)
    status: int  #: its exit status (0: success)
    output: str  #: what it wrote to stdout and stderr

    def to_json(self) -> dict[str, object]:
        """The run as a JSON object."""
        return {"module": self.module, "command": self.command, "status": self.status, "output": self.output}


@dataclass(frozen=True)
class LoadResult:
    """What a load did."""

    plan: LoadPlan  #: the plan that ran
    loaded: tuple[str, ...]  #: modules this call inserted, in order
    skipped: tuple[str, ...]  #: modules that were in the kernel already
    installed: tuple[InstallRun, ...] = field(default=())  #: install commands that ran, in order
    softdep_failures: tuple[Explanation, ...] = field(default=())  #: softdeps that failed (ignored, as modprobe)
    kernel_lines: tuple[str, ...] = field(default=())  #: warnings the kernel logged meanwhile

    def to_json(self) -> dict[str, object]:
        """The result as a JSON object."""
        return {"plan": self.plan.to_json(), "loaded": list(self.loaded), "skipped": list(self.skipped),
                "installed": [r.to_json() for r in self.installed],
                "softdep_failures": [e.to_json() for e in self.softdep_failures],
                "kernel_lines": list(self.kernel_lines)}


def kernel_decompresses(sysfs: str = "/sys") -> Compression | None:
    """The compression the running kernel decompresses in finit_module, None when it does not."""
    try:
        with open(f"{sysfs}/module/compression") as f:
            return KERNEL_COMPRESSION.get(f.read().strip())
    except OSError:
        return None


class Loader:
    """Loads plans into, and unloads modules from, the running kernel.

    Construction checks that the kernel has module support and raises
    EnvironmentNotReady otherwise: kmodkit never tries a syscall there.
    """

    def __init__(self, procfs: str = "/proc", sysfs: str = "/sys") -> None:
        syscalls.require_module_support(f"{procfs}/modules")
        #: the running kernel's modules
        self.kernel = KernelModules(procfs, sysfs)
        self._sysfs = sysfs
        self._procfs = procfs

    def planner(self, moddir: str, manifest: Manifest | None = None) -> Planner:
        """A planner for the tree ``moddir`` that knows what the running kernel has loaded."""
        return Planner(moddir, loaded=self.kernel.loaded_names(), manifest=manifest)

    def plan(self, target: str, params: list[str], moddir: str, manifest: Manifest | None = None) -> LoadPlan:
        """The plan for ``target`` in the tree ``moddir``, with loaded modules marked."""
        return self.planner(moddir, manifest).plan(target, params)

    def load(self, plan: LoadPlan, check: bool = True) -> LoadResult:
        """Run every step not loaded yet; when a required one fails, unload what was loaded and raise LoadFailed.

        With ``check``, every module is first checked against the running kernel
        (:mod:`kmodkit.loader.precheck`): a predicted refusal raises LoadFailed
        before anything is loaded.  A softdep that fails is recorded in the
        result and the load goes on, as modprobe ignores failures of modules
        that are not required.
        """
        if check:
            from kmodkit.loader.precheck import precheck

            predicted = precheck(plan, self._procfs, self._sysfs)
            if predicted is not None:
                raise LoadFailed(predicted, [], [])
        done: list[str] = []
        skipped: list[str] = []
        installed: list[InstallRun] = []
        soft_failures: list[Explanation] = []
        with KmsgWatcher() as kmsg:
            for step in plan.steps:
                if step.kind not in (StepKind.INSMOD, StepKind.INSTALL) or step.name in done \
                        or any(r.module == step.name for r in installed):
                    continue  # built in, nothing to do, or listed again (a dependency shared with a softdep)
                if step.already_loaded or step.name in skipped:
                    if step.name not in skipped:
                        skipped.append(step.name)
                    continue
                why: Explanation | None = None
                if step.kind is StepKind.INSTALL:
                    run = run_install_command(step)
                    installed.append(run)
                    if run.status != 0:
                        why = explain_install(step.name, run.command, run.status, run.output, self._sysfs)
                else:
                    try:
                        self._load_one(step)
                    except SyscallError as exc:
                        records = kmsg.new_records()
                        if exc.errno == errno.EEXIST:
                            # loaded meanwhile (or by the kernel's own request_module): not ours to roll back
                            skipped.append(step.name)
                            continue
                        why = explain(step.name, exc.errno, records, self._sysfs, step.path)
                    else:
                        done.append(step.name)
                        log.info("loaded %s", step.name)
                if why is None:
                    continue
                if not step.required:
                    log.warning("softdep %s failed, going on as modprobe does: %s", step.name, why.problem)
                    soft_failures.append(why)
                    continue
                rolled, left = self._rollback(done)
                raise LoadFailed(why, rolled, left)
            # notices too: the kernel's "module verification failed ... tainting kernel" is a <5> line
            warnings = [r.message for r in kmsg.new_records() if r.priority <= 5]
        return LoadResult(plan, tuple(done), tuple(skipped), tuple(installed), tuple(soft_failures), tuple(warnings))

    def _load_one(self, step: PlanStep) -> None:
        params = " ".join(step.params)
        assert step.path is not None, "an insmod step names its file"
        fd = os.open(step.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with ModuleFile.open(step.path) as mf:
                kind = mf.compression
                if kind is Compression.NONE:
                    syscalls.finit_module(fd, params, syscalls.InitFlags.NONE, step.name)
                elif kind is kernel_decompresses(self._sysfs):
                    syscalls.finit_module(fd, params, syscalls.InitFlags.COMPRESSED_FILE, step.name)
                else:
                    syscalls.init_module(bytes(mf.data), params, step.name)
        finally:
            os.close(fd)

    def _rollback(self, done: list[str]) -> tuple[list[str], list[str]]:
        rolled, left = [], []
        for name in reversed(done):
            try:
                syscalls.delete_module(name)
                rolled.append(name)
            except SyscallError as exc:
                log.warning("cannot unload %s while rolling back: %s", name, exc)
                left.append(name)
        return rolled, left

    def unload(self, name: str, with_deps: bool = False) -> list[str]:
        """Unload ``name`` (and, with ``with_deps``, the dependencies nothing else holds); the names unloaded.

        Raises UserError when it is not loaded or still held (naming the holders),
        SyscallError when the kernel refuses.
        """
        name = normalize_name(name)
        mods = {m.name: m for m in self.kernel.proc_modules()}
        mod = mods.get(name)
        if mod is None:
            raise UserError(name, "not loaded", "see what is loaded with 'kmodkit status'")
        if mod.holders or mod.refcount > 0:
            held = f"held by {', '.join(mod.holders)}" if mod.holders else f"in use (refcount {mod.refcount})"
            fix = f"unload {', '.join(mod.holders)} first" if mod.holders else "stop what uses it first"
            raise UserError(name, held, fix)
        deps = self._uses_closure(name) if with_deps else set()
        syscalls.delete_module(name)
        removed = [name]
        # modprobe -r: remove a dependency once nothing holds it any more, closest users first
        progress = True
        while progress:
            progress = False
            current = {m.name: m for m in self.kernel.proc_modules()}
            for dep in sorted(deps - set(removed)):
                m = current.get(dep)
                if m is None or m.holders or m.refcount > 0:
                    continue
                try:
                    syscalls.delete_module(dep)
                except SyscallError as exc:
                    log.info("kept %s: %s", dep, exc)
                    deps.discard(dep)
                    continue
                removed.append(dep)
                progress = True
        return removed

    def _uses_closure(self, name: str) -> set[str]:
        """Every module ``name`` uses, directly or not (from /sys/module/DEP/holders/NAME)."""
        sysmod = f"{self._sysfs}/module"
        uses: dict[str, set[str]] = {}
        for dep in os.listdir(sysmod):
            try:
                holders = os.listdir(f"{sysmod}/{dep}/holders")
            except OSError:
                continue
            for h in holders:
                uses.setdefault(h, set()).add(dep)
        out: set[str] = set()
        todo = [name]
        while todo:
            for dep in uses.get(todo.pop(), ()):
                if dep not in out:
                    out.add(dep)
                    todo.append(dep)
        return out


def run_install_command(step: PlanStep) -> InstallRun:
    """Run an install step's modprobe.d command as modprobe does; the result holds its status and output.

    libkmod's command_do runs the line through ``/bin/sh -c`` (system(3)).  The line is root's
    configuration; the parameters may come from whoever runs kmodkit, so unlike libkmod they are not
    pasted into the line: ``$CMDLINE_OPTS`` is an environment variable the shell expands (split into words
    the same way, but a value such as ``$(cmd)`` stays text instead of running).
    """
    command = step.command_line() or ""
    log.info("install %s: %s", step.name, command)
    env = {**os.environ, "MODPROBE_MODULE": step.name, "CMDLINE_OPTS": " ".join(step.params)}
    try:
        done = subprocess.run(["/bin/sh", "-c", step.command or ""], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    except OSError as exc:
        return InstallRun(step.name, command, 127, f"cannot run /bin/sh: {exc.strerror}")
    return InstallRun(step.name, command, done.returncode, done.stdout.decode("utf-8", "replace"))
