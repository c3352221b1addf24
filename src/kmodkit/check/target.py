"""A target kernel, as ``check`` needs to know it: everything read from files, nothing from the running kernel.

:class:`TargetKernel` gathers, lazily, the facts ``load_module()`` decides with: the version magic it
was built with (include/linux/vermagic.h, assembled from the configuration), ``sizeof(struct module)``
(the size of ``.gnu.linkonce.this_module`` in any of its own modules), the exports and CRCs of the
kernel and its in-tree modules (Module.symvers), the built-in modules that own a ``/sys/module``
directory (modules.builtin.modinfo) and the certificates compiled into its image.

A kernel is named either by release (an installed kernel: ``/lib/modules/K``, its headers through the
``build`` link, ``/boot/vmlinuz-K``) or by a directory holding at least ``Module.symvers`` and ``.config``
(and optionally ``include/generated/utsrelease.h``, a ``vmlinuz`` image and one module of that kernel, for
the trusted keys and ``sizeof(struct module)``): that is how a kernel that is not installed is named.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from kmodkit.check.symvers import Export, read_symvers
from kmodkit.errors import EnvironmentNotReady, NotFoundError, UserError
from kmodkit.sysroot import Root

#: configuration options check reads (the rest of a distro's ~9,000 lines is never parsed)
CONFIG_OPTIONS = (
    "CONFIG_SMP", "CONFIG_PREEMPT_BUILD", "CONFIG_PREEMPT_RT", "CONFIG_MODULE_UNLOAD", "CONFIG_MODVERSIONS",
    "CONFIG_RANDSTRUCT_NONE", "CONFIG_X86_64", "CONFIG_ARM64", "CONFIG_MODULE_SIG", "CONFIG_MODULE_SIG_FORCE",
    "CONFIG_MODULE_FORCE_LOAD", "CONFIG_LIVEPATCH", "CONFIG_STRICT_MODULE_RWX",
    "CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS", "CONFIG_SECURITY_LOCKDOWN_LSM",
    "CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY", "CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY",
    "CONFIG_INTEGRITY_PLATFORM_KEYRING", "CONFIG_MODULE_DECOMPRESS", "CONFIG_LOCALVERSION",
)

#: e_machine the kernel's elf_check_arch() accepts, by the configuration option that names the architecture
_MACHINES = {"CONFIG_X86_64": 62, "CONFIG_ARM64": 183}

#: the first kernel version with the ELF validation of v6.11's kernel/module/main.c refactor
#: (elf_validity_cache_copy: section name table type, exactly one .gnu.linkonce.this_module of
#: sizeof(struct module), one SYMTAB, strtab type) and early_mod_check() (vermagic and the
#: already-loaded check before allocation, taints after the module joins the list).  Nothing in a
#: kernel's headers tells the two apart, so this one rule compares versions.
NEW_ELF_CHECKS = (6, 11)


@dataclass(frozen=True)
class KernelSource:
    """Where a target kernel's files are."""

    release: str  #: UTS_RELEASE (``6.1.0-57-amd64``)
    headers: Path | None  #: the Kbuild tree (Module.symvers, .config), None when absent
    moddir: Path | None  #: /lib/modules/RELEASE, None for a kernel named by a directory without one
    image: Path | None  #: the kernel image (vmlinuz), None when unknown


class TargetKernel:
    """The facts ``load_module()`` of one kernel decides with, read lazily from its files.

    Use :meth:`installed` (by release) or :meth:`from_dir` (a directory of files); both raise
    :class:`NotFoundError` / :class:`EnvironmentNotReady` naming what is missing and how to get it.
    """

    def __init__(self, source: KernelSource, config: dict[str, str]) -> None:
        #: where the files are
        self.source = source
        #: the configuration options of :data:`CONFIG_OPTIONS` that are set
        self.config = config

    @classmethod
    def installed(cls, release: str, root: Root | str | Path | None = None) -> TargetKernel:
        """The installed kernel ``release`` of the machine at ``root`` (this one by default); needs its headers
        (Module.symvers, .config)."""
        from kmodkit.kbuild.kernels import kernel

        machine = Root.of(root)
        k = kernel(release, machine)
        if not k.installed and k.headers is None:
            raise NotFoundError(release, "no such kernel is installed (no /lib/modules/" + release + ")",
                                "fetch it (kmodkit kernels fetch " + release + "), install linux-image-" + release
                                + " and linux-headers-" + release
                                + ", or name a directory holding its Module.symvers and .config")
        if k.headers is None or not (k.headers / "Module.symvers").is_file():
            raise EnvironmentNotReady(release, "its headers (Module.symvers, .config) are not installed",
                                      "install linux-headers-" + release)
        image = k.root.join(f"/boot/vmlinuz-{release}")  # a fetched kernel's image is in its cache directory
        source = KernelSource(release, k.headers, k.moddir if k.installed else None,
                              image if image.exists() else None)
        return cls(source, _read_config(k.headers))

    @classmethod
    def from_dir(cls, directory: str | Path) -> TargetKernel:
        """A kernel named by a directory holding its ``Module.symvers`` and ``.config``."""
        d = Path(directory)
        missing = [f for f in ("Module.symvers", ".config") if not (d / f).is_file()]
        if missing:
            raise UserError(str(d), "does not describe a kernel: " + " and ".join(missing) + " missing",
                            "copy Module.symvers and .config from the kernel's headers into it")
        release = _utsrelease(d) or d.name
        image = next((p for p in (d / "vmlinuz", d / f"vmlinuz-{release}") if p.is_file()), None)
        moddir = d if any(d.glob("**/*.ko*")) else None
        return cls(KernelSource(release, d, moddir, image), _read_config(d))

    # --- facts --------------------------------------------------------------------------

    @property
    def release(self) -> str:
        """The kernel's release string."""
        return self.source.release

    def enabled(self, option: str) -> bool:
        """Whether ``CONFIG_<option>`` is y."""
        return self.config.get(f"CONFIG_{option}") == "y"

    @cached_property
    def version(self) -> tuple[int, int]:
        """``(major, minor)`` of the release; (0, 0) when it does not start with a version."""
        m = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    @property
    def new_elf_checks(self) -> bool:
        """Whether this kernel validates modules as v6.11+ does (see :data:`NEW_ELF_CHECKS`)."""
        return self.version >= NEW_ELF_CHECKS

    @cached_property
    def machine(self) -> int | None:
        """The e_machine its elf_check_arch() accepts; None for an architecture not in the table."""
        return next((m for opt, m in _MACHINES.items() if self.config.get(opt) == "y"), None)

    @cached_property
    def vermagic(self) -> str:
        """VERMAGIC_STRING (include/linux/vermagic.h): release, SMP, preempt, mod_unload, modversions, arch."""
        c = self.enabled
        parts = [(self.source.headers and _utsrelease(self.source.headers)) or self.release, " "]
        parts.append("SMP " if c("SMP") else "")
        parts.append("preempt " if c("PREEMPT_BUILD") else "preempt_rt " if c("PREEMPT_RT") else "")
        parts.append("mod_unload " if c("MODULE_UNLOAD") else "")
        parts.append("modversions " if c("MODVERSIONS") else "")
        # MODULE_ARCH_VERMAGIC: "" on x86_64, "aarch64" on arm64 (RANDSTRUCT_* kernels add a hash: not read here)
        parts.append("aarch64" if c("ARM64") else "")
        return "".join(parts)

    @cached_property
    def exports(self) -> dict[str, Export]:
        """Every symbol the kernel and its in-tree modules export (Module.symvers)."""
        assert self.source.headers is not None
        return read_symvers(str(self.source.headers / "Module.symvers"))

    @cached_property
    def module_layout_crc(self) -> int | None:
        """The CRC vmlinux exports ``module_layout`` with; None without CONFIG_MODVERSIONS."""
        e = self.exports.get("module_layout")
        return e.crc if e is not None and self.enabled("MODVERSIONS") else None

    @cached_property
    def struct_module_size(self) -> int | None:
        """``sizeof(struct module)``: the size of ``.gnu.linkonce.this_module`` in one of its own modules.

        None when no module of this kernel is at hand.
        """
        from kmodkit.modfile.module import ModuleFile

        if self.source.moddir is None:
            return None
        for path in _some_modules(self.source.moddir):
            try:
                with ModuleFile.open(path) as mod:
                    sec = mod.elf.get_section_by_name(".gnu.linkonce.this_module")
                    if sec is not None:
                        return sec.size
            except (UserError, EnvironmentNotReady):
                continue
        return None

    @cached_property
    def sysfs_builtin(self) -> frozenset[str]:
        """Built-in modules that have a /sys/module directory (they have parameters or a version).

        A module of the same name is refused by mod_sysfs_setup() ("module is already loaded").
        """
        if self.source.moddir is None:
            return frozenset()
        from kmodkit.index.lookup import ModuleTree

        info = ModuleTree(str(self.source.moddir)).builtin_modinfo
        return frozenset(n for n, pairs in info.items() if any(k in (b"parmtype", b"version") for k, _ in pairs))

    def trusted_certs(self) -> tuple[bytes, ...]:
        """The DER certificates compiled into the kernel's image (its .builtin_trusted_keys).

        Raises :class:`NotFoundError` when the image is unknown.
        """
        from kmodkit.signing.kernel import kernel_keys

        if self.source.image is None:
            raise NotFoundError(self.release, "its image (vmlinuz) is not at hand, so its trusted keys are unknown",
                                "install linux-image-" + self.release + " or put vmlinuz in the kernel's directory")
        return kernel_keys(release=self.release, vmlinuz=str(self.source.image)).certs


def _read_config(headers: Path) -> dict[str, str]:
    from kmodkit.kbuild.kernels import kernel_config

    config = kernel_config(headers, CONFIG_OPTIONS)
    if not config:
        raise EnvironmentNotReady(str(headers), "has no kernel configuration (.config)",
                                  "install the kernel's complete headers package")
    return {k: v for k, v in config.items() if v != "n"}


def _utsrelease(headers: Path) -> str | None:
    try:
        text = (headers / "include/generated/utsrelease.h").read_text()
    except OSError:
        return None
    m = re.search(r'#define UTS_RELEASE "([^"]*)"', text)
    return m.group(1) if m else None


def _some_modules(moddir: Path) -> list[str]:
    # the first few modules of modules.order, else of a walk: one readable module is enough
    out: list[str] = []
    try:
        with open(moddir / "modules.order") as f:
            for line in f:
                rel = line.strip()
                for suffix in ("", ".xz", ".zst", ".gz"):
                    if os.path.exists(moddir / (rel + suffix)):
                        out.append(str(moddir / (rel + suffix)))
                        break
                if len(out) >= 3:
                    return out
    except OSError:
        pass
    for dirpath, _dirs, files in os.walk(moddir):
        out.extend(os.path.join(dirpath, f) for f in files if ".ko" in f)
        if len(out) >= 3:
            break
    return out[:3]
