"""``kmodkit doctor``: can this machine build modules for these kernels, and what fixes it when not.

:class:`Doctor` reads everything below a root (``/`` on a real machine, a fake root in tests) and
returns a :class:`DoctorReport`: the platform, one :class:`KernelReport` per target kernel and a flat
list of :class:`DoctorFinding` records, each with the exact command that fixes it on this distro.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from kmodkit.errors import UserError
from kmodkit.kbuild import kernels as kern
from kmodkit.kbuild.platform import Platform, ShellText, detect
from kmodkit.sysroot import HOST, Root

#: efivars file of the Secure Boot variable (EFI global variable GUID)
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
#: below this much free space in /dev/shm, --shm builds are discouraged
SHM_LOW = 512 * 1024 * 1024
#: tools a module build or its checks use: name -> (what for, whether a build cannot go on without it)
TOOLS: dict[str, tuple[str, bool]] = {
    "make": ("runs Kbuild", True),
    "modinfo": ("kmod: reads module metadata", False),
    "depmod": ("kmod: writes the module index", False),
    "openssl": ("makes signing keys", False),
    "pahole": ("adds BTF to modules of kernels with CONFIG_DEBUG_INFO_BTF_MODULES", False),
}
#: the package that holds a tool, for tools not named after their package
TOOL_PACKAGE = {"modinfo": "kmod", "depmod": "kmod"}


class Status(Enum):
    """How a finding bears on building."""

    OK = "ok"
    INFO = "info"  #: a fact worth knowing, not a problem
    WARN = "warn"  #: builds work, something else (signing, loading, BTF) may not
    FAIL = "fail"  #: blocks building for a requested kernel


class Archive(Enum):
    """Whether the distro's archive still offers a kernel's headers."""

    AVAILABLE = "available"
    GONE = "gone"  #: the package is no longer in the archive (an old ABI rotated out)
    UNKNOWN = "unknown"  #: not asked (fake root, or a package manager we do not query)


@dataclass(frozen=True)
class DoctorFinding:
    """One checked fact, with the command that fixes it when it is a problem."""

    check: str  #: what was checked: distro, cloud, running-kernel, headers, compiler, tool, signing, ...
    subject: str  #: the kernel release or tool it is about; "" for the machine
    status: Status  #: ok, info, warn, fail
    message: str  #: what was found, one sentence
    fix: str | None = None  #: the exact command (or action) that fixes it, None when nothing to fix

    def to_json(self) -> dict[str, Any]:
        """The finding as a JSON object."""
        return {"check": self.check, "subject": self.subject, "status": self.status.value,
                "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class KernelReport:
    """What the doctor found about one target kernel."""

    kernel: kern.Kernel  #: the kernel and its headers
    config: dict[str, str]  #: its configuration (empty without headers)
    compiler: kern.CompilerChoice | None  #: the compiler to build with; None without headers
    archive: Archive  #: whether its headers are still in the distro's archive
    running: bool  #: whether it is the running kernel

    @property
    def ready(self) -> bool:
        """Whether a module can be built for this kernel here."""
        return (self.kernel.headers_complete and self.compiler is not None
                and self.compiler.match is not kern.CompilerMatch.MISSING)

    def to_json(self) -> dict[str, Any]:
        """The kernel report as a JSON object."""
        c = self.compiler
        return {
            "release": self.kernel.release,
            "running": self.running,
            "installed": self.kernel.installed,
            "headers": str(self.kernel.headers) if self.kernel.headers else None,
            "headers_missing": list(self.kernel.missing),
            "archive": self.archive.value,
            "compiler": None if c is None else {
                "kernel_built_with": c.wanted.text if c.wanted else None,
                "use": c.program,
                "path": str(c.path) if c.path else None,
                "version": c.found.text if c.found else None,
                "match": c.match.value,
            },
            "module_sig": self.config.get("CONFIG_MODULE_SIG", "n") == "y",
            "module_sig_force": self.config.get("CONFIG_MODULE_SIG_FORCE", "n") == "y",
            "module_sig_hash": self.config.get("CONFIG_MODULE_SIG_HASH"),
            "ready": self.ready,
        }


@dataclass(frozen=True)
class DoctorReport:
    """Everything the doctor found."""

    platform: Platform  #: distro and cloud
    running: str | None  #: running kernel release, None when unknown
    module_support: bool  #: whether the running kernel can load modules (/proc/modules)
    kernels: tuple[KernelReport, ...]  #: one per target kernel, in the order asked
    findings: tuple[DoctorFinding, ...]  #: every finding, machine first, then per kernel
    cpus: int | None  #: CPU count, None when unknown
    shm_free: int | None  #: free bytes in /dev/shm, None when absent
    tools: dict[str, str | None] = field(default_factory=dict)  #: tool -> path, None when missing

    @property
    def ready(self) -> bool:
        """Whether nothing blocks building for every target kernel (no FAIL finding, at least one kernel)."""
        return bool(self.kernels) and not any(f.status is Status.FAIL for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        d = self.platform.distro
        return {
            "ready": self.ready,
            "distro": {"id": d.id, "id_like": list(d.id_like), "version_id": d.version_id,
                       "name": d.pretty_name, "family": d.family.key if d.family else None,
                       "package_manager": d.manager},
            "cloud": ({"key": self.platform.cloud.key, "name": self.platform.cloud.name}
                      if self.platform.cloud else None),
            "dmi": self.platform.dmi,
            "running_kernel": self.running,
            "module_support": self.module_support,
            "cpus": self.cpus,
            "shm_free_bytes": self.shm_free,
            "tools": self.tools,
            "kernels": [k.to_json() for k in self.kernels],
            "findings": [f.to_json() for f in self.findings],
        }


class Doctor:
    """The checks of one machine (below ``root``) for some target kernels.

    ``kernels`` empty means: every installed kernel, plus the running one when it can load modules.
    ``probe_archive`` asks the package manager whether missing headers are still in the archive
    (only on the real root, and only through apt-cache, which answers from its local cache).
    """

    def __init__(self, root: Root | str | Path = HOST, kernels: list[str] | None = None,
                 probe_archive: bool = True) -> None:
        #: the machine checked
        self.root = Root.of(root)
        if not self.root.path.is_dir():
            raise UserError(str(root), "is not a directory", "pass --root the directory a machine's / is copied to")
        self.requested = list(dict.fromkeys(kernels or []))
        self.probe_archive = probe_archive and self.root.is_host

    def run(self) -> DoctorReport:
        """Run every check and return the report."""
        platform = detect(self.root)
        distro = platform.distro
        findings: list[DoctorFinding] = []
        family = distro.family
        findings.append(DoctorFinding(
            "distro", "", Status.OK if family else Status.WARN,
            f"{distro.pretty_name or 'unknown distro'}" + (f" ({family.name} family, {distro.manager})" if family else
                                                          ": not a distro family kmodkit knows; fixes are not distro-specific"),
        ))
        cloud = platform.cloud
        findings.append(DoctorFinding("cloud", "", Status.INFO,
                                cloud.name if cloud else "no cloud detected" + ("" if platform.dmi else " (no DMI)")))

        running = kern.running_release(self.root)
        support = kern.module_support(self.root)
        if running is None:
            findings.append(DoctorFinding("running-kernel", "", Status.INFO, "running kernel unknown (no /proc)"))
        elif support:
            findings.append(DoctorFinding("running-kernel", running, Status.OK,
                                          f"running {running}, which can load modules"))
        else:
            findings.append(DoctorFinding(
                "running-kernel", running, Status.INFO,
                f"running {running}, which has no module support (no /proc/modules): modules cannot be loaded here;"
                " the installed kernels are build targets (load them under 'kmodkit vm')"))

        installed = kern.installed_kernels(self.root)
        if self.requested:
            targets = self.requested
        else:
            targets = [k.release for k in installed]
            if running and support and running not in targets:
                targets.insert(0, running)
        if not targets:
            findings.append(DoctorFinding("kernels", "", Status.FAIL, "no kernel installed under /lib/modules",
                                    distro.command("headers", kver=running or ShellText("$(uname -r)"),
                                                   flavour="default")))

        tools = {name: self._which(name) for name in TOOLS}
        for name, (purpose, needed) in TOOLS.items():
            if tools[name] is None:
                findings.append(DoctorFinding("tool", name, Status.FAIL if needed else Status.WARN,
                                        f"{name} is missing ({purpose})",
                                        distro.tool_command(TOOL_PACKAGE.get(name, name))))
            else:
                findings.append(DoctorFinding("tool", name, Status.OK, f"{name}: {tools[name]}"))

        reports = []
        for release in targets:
            report = self._kernel(release, running, platform)
            reports.append(report)
            findings.extend(self._kernel_findings(report, platform))

        findings.extend(self._runtime_findings())
        shm = self._shm_free()
        if shm is None:
            findings.append(DoctorFinding("shm", "", Status.INFO, "/dev/shm is absent: --shm builds are not possible"))
        else:
            findings.append(DoctorFinding("shm", "", Status.WARN if shm < SHM_LOW else Status.OK,
                                    f"/dev/shm has {shm / 2**30:.1f} GiB free"
                                    + (" (too little for --shm builds)" if shm < SHM_LOW else "")))
        cpus = self._cpus()
        findings.append(DoctorFinding("cpus", "", Status.INFO, f"{cpus} CPUs (default build parallelism)" if cpus
                                else "CPU count unknown"))
        return DoctorReport(platform, running, support, tuple(reports), tuple(findings), cpus, shm,
                            {k: str(v) if v else None for k, v in tools.items()})

    # --- per kernel ---------------------------------------------------------------------

    def _kernel(self, release: str, running: str | None, platform: Platform) -> KernelReport:
        k = kern.kernel(release, self.root)
        config = kern.kernel_config(k.headers) if k.headers else {}
        compiler = kern.choose_compiler(kern.kernel_compiler(config), self.root) if k.headers_complete else None
        archive = Archive.UNKNOWN
        if not k.headers_complete and self.probe_archive and platform.distro.manager == "apt-get":
            archive = _apt_has(f"linux-headers-{release}")
        return KernelReport(k, config, compiler, archive, release == running)

    def _kernel_findings(self, r: KernelReport, platform: Platform) -> list[DoctorFinding]:
        distro = platform.distro
        k = r.kernel
        out: list[DoctorFinding] = []
        if not k.headers_complete:
            what = ("no headers (no build link)" if k.headers is None
                    else f"incomplete headers in {k.headers} (missing {', '.join(k.missing)})")
            if not k.installed:
                what = "not installed (no /lib/modules/" + k.release + ") and " + what
            fix = distro.command("headers", kver=k.release, flavour=k.flavour or "default")
            if r.archive is Archive.GONE:
                what += f"; linux-headers-{k.release} is not in the archive (rotated out, or not a distro kernel)"
                fix = (f"install the current kernel with its headers ({distro.command('current', flavour=_meta_flavour(k))})"
                       " and boot it, or build for the installed kernels")
            out.append(DoctorFinding("headers", k.release, Status.FAIL, f"{k.release}: {what}", fix))
            return out
        out.append(DoctorFinding("headers", k.release, Status.OK, f"{k.release}: headers complete in {k.headers}"))
        c = r.compiler
        assert c is not None
        if c.match is kern.CompilerMatch.MISSING:
            w = c.wanted
            major = str(w.major) if w and w.major is not None else "?"
            out.append(DoctorFinding("compiler", k.release, Status.FAIL,
                               f"{k.release}: built with '{w.text if w else '?'}', and no {w.kind.value if w else 'gcc'}"
                               f" {major} is on PATH", distro.command("compiler", major=major)))
        elif c.match is kern.CompilerMatch.UNKNOWN:
            out.append(DoctorFinding("compiler", k.release, Status.WARN,
                               f"{k.release}: its config does not name its compiler; using {c.program}"))
        else:
            out.append(DoctorFinding("compiler", k.release, Status.OK,
                               f"{k.release}: built with '{c.wanted.text if c.wanted else '?'}';"
                               f" building with {c.program} ({c.found.version if c.found else '?'}, {c.match.value})"))
        cfg = r.config
        if cfg.get("CONFIG_MODULE_SIG") == "y":
            force = cfg.get("CONFIG_MODULE_SIG_FORCE") == "y"
            out.append(DoctorFinding(
                "signing", k.release, Status.WARN if force else Status.INFO,
                f"{k.release}: module signing on (hash {cfg.get('CONFIG_MODULE_SIG_HASH', '?')})"
                + (", enforced: unsigned modules are refused" if force else ", not enforced: unsigned modules taint"),
                "sign the module with a key the kernel trusts (kmodkit sign)" if force else None))
        else:
            out.append(DoctorFinding("signing", k.release, Status.INFO, f"{k.release}: module signing off"))
        if cfg.get("CONFIG_DEBUG_INFO_BTF_MODULES") == "y" and self._which("pahole") is None:
            out.append(DoctorFinding("btf", k.release, Status.WARN, f"{k.release}: modules get no BTF without pahole",
                               distro.tool_command("pahole")))
        return out

    # --- the running system -------------------------------------------------------------

    def _runtime_findings(self) -> list[DoctorFinding]:
        out = []
        enforce = _read(self.root.join("/sys/module/module/parameters/sig_enforce"))
        if enforce is not None:
            on = enforce.strip().upper() == "Y"
            out.append(DoctorFinding("sig-enforce", "", Status.WARN if on else Status.OK,
                               "module.sig_enforce=1: the running kernel loads only signed modules" if on
                               else "module.sig_enforce=0", "sign modules before loading (kmodkit sign)" if on else None))
        lockdown = _read(self.root.join("/sys/kernel/security/lockdown"))
        if lockdown is not None:
            mode = next((w.strip("[]") for w in lockdown.split() if w.startswith("[")), "none")
            out.append(DoctorFinding("lockdown", "", Status.OK if mode == "none" else Status.WARN,
                               f"kernel lockdown: {mode}" + ("" if mode == "none" else
                                                            " (unsigned modules are refused)")))
        if self.root.join("/sys/firmware/efi").is_dir():
            raw = _read_bytes(self.root.join(SECURE_BOOT_VAR))
            if raw is None or len(raw) < 5:
                out.append(DoctorFinding("secure-boot", "", Status.INFO, "EFI boot; Secure Boot state not visible"))
            else:
                on = raw[4] == 1  # 4 bytes of attributes, then the value
                out.append(DoctorFinding("secure-boot", "", Status.WARN if on else Status.OK,
                                   "Secure Boot enabled: modules must be signed by a key in the kernel's or MOK keyring"
                                   if on else "Secure Boot disabled",
                                   "enroll your key with 'mokutil --import CERT' and sign modules" if on else None))
        else:
            out.append(DoctorFinding("secure-boot", "", Status.INFO, "not booted through EFI: no Secure Boot"))
        return out

    def _which(self, name: str) -> Path | None:
        return kern.which(name, self.root)

    def _shm_free(self) -> int | None:
        shm = self.root.join("/dev/shm")
        if not shm.is_dir():
            return None
        try:
            st = os.statvfs(shm)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _cpus(self) -> int | None:
        text = _read(self.root.join("/sys/devices/system/cpu/online"))
        if text is not None:
            return _count_cpus(text)
        return (os.cpu_count() or None) if self.root.is_host else None


def _meta_flavour(k: kern.Kernel) -> str:
    # Debian's meta-packages are named by flavour (linux-image-cloud-amd64); a custom kernel gets the arch's
    if re.fullmatch(r"(cloud-|rt-)?(amd64|arm64|686-pae|686|armmp|armmp-lpae|powerpc64le|s390x)", k.flavour):
        return k.flavour
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def _count_cpus(text: str) -> int:
    # a cpu list: "0-3,6,8-9"
    n = 0
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            n += int(hi) - int(lo) + 1
        elif part:
            n += 1
    return n


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _apt_has(package: str) -> Archive:
    apt = shutil.which("apt-cache")
    if apt is None:
        return Archive.UNKNOWN
    try:
        out = subprocess.run([apt, "show", "--no-all-versions", package], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return Archive.UNKNOWN
    return Archive.AVAILABLE if out.returncode == 0 and out.stdout.strip() else Archive.GONE
