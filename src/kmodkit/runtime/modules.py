"""What is loaded: /proc/modules and /sys/module/NAME, read into records.

Where /proc and /sys are mounted are parameters; :meth:`KernelModules.of` takes
them from a :class:`kmodkit.sysroot.Root` that stands for another machine (a
fake root in tests).  By default they are the running kernel's.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from kmodkit.errors import EnvironmentNotReady, NotFoundError
from kmodkit.modfile.module import normalize_name
from kmodkit.runtime.taint import TaintFlag, decode_letters, decode_mask, read_kernel_taint
from kmodkit.sysroot import Root


class ModuleState(enum.Enum):
    """A module's state (/proc/modules column 5; /sys/module/NAME/initstate in lower case)."""

    LIVE = "Live"
    LOADING = "Loading"
    UNLOADING = "Unloading"
    BUILTIN = "Builtin"  #: built into the kernel image: in /sys/module but not in /proc/modules


@dataclass(frozen=True)
class ProcModule:
    """One line of /proc/modules."""

    name: str  #: the module's name
    size: int  #: memory size in bytes
    refcount: int  #: how many users hold it (-1 when the kernel cannot unload it)
    holders: tuple[str, ...]  #: modules that use it
    state: ModuleState  #: Live, Loading or Unloading
    taint: str  #: its taint letters ("" when none)


@dataclass(frozen=True)
class ModuleStatus:
    """Everything the kernel tells about one module."""

    name: str  #: the module's name
    state: ModuleState  #: Live, Loading, Unloading or Builtin
    size: int  #: memory size in bytes (0 for a built-in module)
    refcount: int  #: users holding it (0 for a built-in module)
    holders: tuple[str, ...]  #: modules that use it
    taint: str  #: taint letters ("" when none)
    version: str | None  #: MODULE_VERSION, None when the module declares none
    srcversion: str | None  #: the checksum of its sources, None when absent
    initstate: str | None  #: /sys/module/NAME/initstate (live, coming, going), None for a built-in module
    parameters: tuple[tuple[str, str | None], ...]  #: (name, current value or None when not readable)

    @property
    def taint_flags(self) -> list[TaintFlag]:
        """The flags of :attr:`taint`."""
        return decode_letters(self.taint)

    def to_json(self) -> dict[str, object]:
        """The status as a JSON object."""
        return {"name": self.name, "state": self.state.value, "size": self.size, "refcount": self.refcount,
                "holders": list(self.holders), "taint": self.taint,
                "taint_flags": [f.to_json() for f in self.taint_flags], "version": self.version,
                "srcversion": self.srcversion, "initstate": self.initstate,
                "parameters": dict(self.parameters)}


def parse_proc_modules(text: str) -> list[ProcModule]:
    """Parse /proc/modules text (lines that do not parse are skipped)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        try:
            state = ModuleState(parts[4])
            size = int(parts[1])
            refcount = int(parts[2])
        except ValueError:
            continue
        holders = tuple(h for h in parts[3].split(",") if h and h != "-")
        taint = parts[6].strip("()") if len(parts) > 6 else ""
        out.append(ProcModule(parts[0], size, refcount, holders, state, taint))
    return out


class KernelModules:
    """The modules of the running kernel, read from ``procfs`` and ``sysfs``."""

    def __init__(self, procfs: str = "/proc", sysfs: str = "/sys") -> None:
        #: where /proc is mounted
        self.procfs = procfs
        #: where /sys is mounted
        self.sysfs = sysfs

    @classmethod
    def of(cls, root: Root) -> KernelModules:
        """The modules of the machine at ``root``, read from its /proc and /sys."""
        return cls(str(root.join("/proc")), str(root.join("/sys")))

    def proc_modules(self) -> list[ProcModule]:
        """Every line of /proc/modules; EnvironmentNotReady when the kernel has no module support."""
        path = f"{self.procfs}/modules"
        try:
            with open(path) as f:
                return parse_proc_modules(f.read())
        except FileNotFoundError:
            raise EnvironmentNotReady(path, "missing: the running kernel has no loadable module support",
                                      "run it inside a booted kernel: kmodkit vm run -k KVER -- kmodkit status") from None

    def loaded_names(self) -> frozenset[str]:
        """Names of the loaded modules."""
        return frozenset(m.name for m in self.proc_modules())

    def kernel_taint(self) -> int | None:
        """The kernel-wide taint mask, None when unreadable."""
        return read_kernel_taint(self.procfs)

    def kernel_taint_flags(self) -> list[TaintFlag]:
        """The flags set kernel-wide (``[]`` when untainted or unreadable)."""
        return decode_mask(self.kernel_taint() or 0)

    def _sys(self, name: str, attr: str) -> str | None:
        try:
            with open(f"{self.sysfs}/module/{name}/{attr}") as f:
                return f.read().rstrip("\n")
        except OSError:
            return None

    def _parameters(self, name: str) -> tuple[tuple[str, str | None], ...]:
        pdir = f"{self.sysfs}/module/{name}/parameters"
        try:
            names = sorted(os.listdir(pdir))
        except OSError:
            return ()
        return tuple((p, self._sys(name, f"parameters/{p}")) for p in names)

    def _status(self, m: ProcModule) -> ModuleStatus:
        return ModuleStatus(m.name, m.state, m.size, m.refcount, m.holders, m.taint, self._sys(m.name, "version"),
                            self._sys(m.name, "srcversion"), self._sys(m.name, "initstate"),
                            self._parameters(m.name))

    def status(self, names: list[str] | None = None) -> list[ModuleStatus]:
        """Status of the named modules (all loaded ones when ``names`` is None or empty), in /proc order.

        A named module that is built in is reported with state Builtin; one that
        is neither loaded nor built in raises NotFoundError.
        """
        mods = self.proc_modules()
        if not names:
            return [self._status(m) for m in mods]
        by_name = {m.name: m for m in mods}
        out = []
        for raw in names:
            name = normalize_name(raw)
            if name in by_name:
                out.append(self._status(by_name[name]))
            elif os.path.isdir(f"{self.sysfs}/module/{name}"):
                out.append(ModuleStatus(name, ModuleState.BUILTIN, 0, 0, (), "", self._sys(name, "version"),
                                        self._sys(name, "srcversion"), None, self._parameters(name)))
            else:
                raise NotFoundError(raw, "not loaded", f"load it with 'kmodkit load {raw}'")
        return out

    def find(self, name: str) -> ProcModule | None:
        """The /proc/modules line of ``name``, or None when it is not loaded."""
        name = normalize_name(name)
        for m in self.proc_modules():
            if m.name == name:
                return m
        return None
