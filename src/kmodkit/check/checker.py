"""``load_module()`` replayed from files: the checks in the kernel's order, each with its errno and log line.

:class:`Checker` takes one :class:`~kmodkit.check.target.TargetKernel` and what is known of the machine
(:class:`Machine`: enforcement, lockdown, command line, extra trusted certificates, loaded modules,
taint already set) and predicts, for a module file, what ``finit_module`` returns and what the
kernel logs (see ``kernel-load-verdicts`` in the project's notes, and kernel/module/main.c).

The order, as in kernel/module/main.c load_module():

1. ``module_sig_check`` (signing.c): the trailer, PKCS#7, trust; soft errors under enforcement or lockdown;
2. the ELF checks (:mod:`kmodkit.check.elfcheck`);
3. ``module_blacklist=``; ``module_layout``'s CRC (check_modstruct_version);
4. vermagic (check_modinfo), livepatch; 6.1 applies the out-of-tree/staging/licence/test taints here;
5. W+X sections (module_enforce_rwx_sections); already loaded (EEXIST);
6. the signature taint E (and, in v6.11+, every module taint, after the module joins the list);
7. exported symbols without CRCs; every undefined symbol in .symtab order (simplify_symbols:
   not found, GPL-only from a non-GPL module, CRC, namespace — the *last* failure's errno is returned);
8. duplicate exports (complete_formation); a built-in of the same name in /sys/module (mod_sysfs_setup).

What cannot be known from files (the module's init function, memory, the CPU's retpoline state) is
listed in :attr:`Prediction.assumptions`.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kmodkit.check.elfcheck import ElfFacts, ElfRefusal, kernel_elf_check
from kmodkit.check.symvers import Export
from kmodkit.check.target import TargetKernel
from kmodkit.check.verdict import LogLine, Outcome, Prediction, Refusal
from kmodkit.errors import KmodkitError

if TYPE_CHECKING:
    from kmodkit.modfile.module import ModuleFile
    from kmodkit.signing.trust import TrustStore

_SHF_WRITE, _SHF_EXECINSTR = 0x1, 0x4
_SHN_UNDEF, _SHN_COMMON = 0, 0xFFF2
_UNDEF_OR_COMMON = frozenset({_SHN_UNDEF, _SHN_COMMON})

#: include/linux/license.h: license_is_gpl_compatible()
GPL_COMPATIBLE = frozenset({"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL",
                            "Dual MPL/GPL"})
#: the kernel's taint letters in the order it prints them (kernel/panic.c taint_flags)
_TAINT_ORDER = "PFSRMBUDAWCIOELKXTN"
_DISABLING_LOCKDEP = LogLine(4, "Disabling lock debugging due to kernel taint")


class Lockdown(enum.Enum):
    """The lockdown level (security/lockdown)."""

    NONE = "none"
    INTEGRITY = "integrity"
    CONFIDENTIALITY = "confidentiality"


@dataclass(frozen=True)
class Machine:
    """What is known of the machine the kernel runs on, beyond the kernel's files."""

    enforce: bool | None = None  #: module.sig_enforce in effect; None: from the config and the command line
    lockdown: Lockdown | None = None  #: lockdown level; None: from the config and the command line
    cmdline: tuple[str, ...] = ()  #: kernel command-line words (module.sig_enforce=1, module_blacklist=, lockdown=)
    extra_certs: tuple[bytes, ...] = ()  #: DER certificates trusted beyond the image's own (enrolled MOK keys)
    loaded: frozenset[str] = frozenset()  #: names of modules already loaded
    tainted: str = ""  #: taint letters already set before this load ("" on a fresh boot)
    comm: str = "kmodkit"  #: the loading process's name (in the lockdown line)

    @classmethod
    def running(cls, procfs: str = "/proc", sysfs: str = "/sys", comm: str = "kmodkit") -> Machine:
        """The machine this process runs on: its command line, enforcement, lockdown, loaded modules and taint."""
        from kmodkit.loader.explain import read_lockdown, read_sig_enforce
        from kmodkit.runtime.modules import KernelModules
        from kmodkit.runtime.taint import decode_mask

        try:
            with open(f"{procfs}/cmdline") as f:
                cmdline = tuple(f.read().split())
        except OSError:
            cmdline = ()
        mods = KernelModules(procfs, sysfs)
        mask = mods.kernel_taint() or 0
        lockdown = read_lockdown(sysfs)
        return cls(enforce=read_sig_enforce(sysfs),
                   lockdown=Lockdown(lockdown) if lockdown in ("none", "integrity", "confidentiality") else None,
                   cmdline=cmdline, loaded=mods.loaded_names(),
                   tainted="".join(f.letter for f in decode_mask(mask)), comm=comm)

    def param(self, key: str) -> str | None:
        """The value of the last ``key=value`` word of the command line, None when absent."""
        found = None
        for word in self.cmdline:
            k, eq, v = word.partition("=")
            if eq and k == key:
                found = v
        return found


@dataclass(frozen=True)
class Provider:
    """Another module whose exports the checked module may use once it is loaded first."""

    name: str  #: its module name
    exports: dict[str, Export] = field(hash=False)  #: what it exports (CRCs from its __kcrctab)


class Checker:
    """Predicts the kernel's verdict on modules for one target kernel and machine."""

    def __init__(self, kernel: TargetKernel, machine: Machine | None = None,
                 providers: list[Provider] | None = None) -> None:
        #: the target kernel
        self.kernel = kernel
        #: the machine it runs on
        self.machine = machine or Machine()
        #: out-of-tree modules that can be loaded before the checked one (its siblings)
        self.providers = providers or []
        self._store: TrustStore | None = None
        self._unknown_keys: str | None = None

    # --- the machine's settings, from the user or the kernel's config -------------------------

    @property
    def enforced(self) -> bool:
        """Whether unsigned modules are refused (CONFIG_MODULE_SIG_FORCE or module.sig_enforce=1)."""
        if self.machine.enforce is not None:
            return self.machine.enforce
        value = self.machine.param("module.sig_enforce")
        return self.kernel.enabled("MODULE_SIG_FORCE") or value in ("1", "y", "Y")

    @property
    def enforced_by(self) -> str:
        """What enforces signatures, in the kernel's words (for messages)."""
        if self.kernel.enabled("MODULE_SIG_FORCE"):
            return "CONFIG_MODULE_SIG_FORCE"
        return "module.sig_enforce=1"

    @property
    def lockdown(self) -> Lockdown:
        """The lockdown level in effect."""
        if self.machine.lockdown is not None:
            return self.machine.lockdown
        if not self.kernel.enabled("SECURITY_LOCKDOWN_LSM"):
            return Lockdown.NONE
        if self.kernel.enabled("LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY"):
            return Lockdown.CONFIDENTIALITY
        level = Lockdown.INTEGRITY if self.kernel.enabled("LOCK_DOWN_KERNEL_FORCE_INTEGRITY") else Lockdown.NONE
        word = self.machine.param("lockdown")
        if word in ("integrity", "confidentiality"):
            asked = Lockdown(word)
            if level is Lockdown.NONE or asked is Lockdown.CONFIDENTIALITY:
                level = asked
        return level

    # --- one module ----------------------------------------------------------------------------

    def check(self, path: str) -> Prediction:
        """The kernel's verdict on the module file at ``path``.

        Raises :class:`~kmodkit.errors.KmodkitError` only when the file cannot be read at all.
        """
        from kmodkit.modfile.module import ModuleFile

        with ModuleFile.open(path) as mod:
            return _Run(self, mod, path).run()

    def trust_store(self, assumptions: list[str]) -> TrustStore:
        """The certificates the kernel trusts, its image's and the machine's extra ones, read once.

        When the image's certificates cannot be read, that is added to ``assumptions``.
        """
        from kmodkit.signing.trust import TrustStore

        if self._store is None:
            store = TrustStore()
            for der in self.machine.extra_certs:
                store.add_der(der, "machine")
            try:
                for der in self.kernel.trusted_certs():
                    store.add_der(der, self.kernel.release)
            except KmodkitError as exc:
                self._unknown_keys = (f"the kernel's trusted keys are unknown ({exc.problem}): a signature is taken "
                                      "as made with an unavailable key")
            self._store = store
        if self._unknown_keys:
            assumptions.append(self._unknown_keys)
        return self._store


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.problem)
        self.refusal = refusal


class _Run:
    """One prediction: the state load_module() builds up as it goes."""

    def __init__(self, checker: Checker, mod: object, path: str) -> None:
        from kmodkit.modfile.module import ModuleFile

        assert isinstance(mod, ModuleFile)
        self.c = checker
        self.k = checker.kernel
        self.mod = mod
        self.path = path
        self.lines: list[LogLine] = []
        self.taints: set[str] = set()
        self.boot_taints = set(checker.machine.tainted)
        self.assumptions: list[str] = []
        self.needs: dict[str, None] = {}
        self.name = mod.name
        self.mod_name = mod.name
        self.sig_ok = False
        self.lockdep_off = bool(self.boot_taints & {"P", "F"})
        self._vers: dict[str, int] | None = None

    # -- helpers --
    def log(self, level: int, text: str) -> None:
        self.lines.append(LogLine(level, text))

    def refuse(self, check: str, err: int, problem: str, fix: str | None) -> _Refused:
        return _Refused(Refusal(check, err, problem, fix))

    def tainted(self, letter: str) -> bool:
        return letter in self.taints or letter in self.boot_taints

    def add_taint(self, letter: str, lockdep_unreliable: bool = False) -> None:
        self.taints.add(letter)
        if lockdep_unreliable and not self.lockdep_off:
            self.lockdep_off = True
            self.lines.append(_DISABLING_LOCKDEP)

    def force_load(self, reason: str) -> None:
        """try_to_force_load(): taint F with CONFIG_MODULE_FORCE_LOAD, else a silent ENOEXEC."""
        if not self.k.enabled("MODULE_FORCE_LOAD"):
            raise self.refuse("force", errno.ENOEXEC, f"{reason}, and the kernel cannot force-load",
                              f"rebuild the module against {self.k.release}'s headers")
        if not self.tainted("F"):
            self.log(4, f"{self.mod_name}: {reason}: kernel tainted.")
        self.add_taint("F", lockdep_unreliable=True)

    def modinfo(self, key: str) -> str | None:
        return self.mod.get(key)

    # -- the run --
    def run(self) -> Prediction:
        refusal = None
        try:
            self._steps()
        except _Refused as exc:
            refusal = exc.refusal
        outcome = Outcome.REFUSED if refusal else Outcome.TAINTS if self.taints else Outcome.LOADS
        if refusal is None:
            self.assumptions.append("the module's init function returns 0")
        taints = "".join(t for t in _TAINT_ORDER if t in self.taints)
        return Prediction(self.path, self.mod_name, self.k.release, outcome, taints, tuple(self.lines), refusal,
                          tuple(self.needs), tuple(self.assumptions))

    def _steps(self) -> None:
        data = self.mod.data
        body = self._signature(data) if self.k.enabled("MODULE_SIG") else len(data)
        facts = kernel_elf_check(data[:body], self.k.machine, self.k.new_elf_checks,
                                 self.k.struct_module_size if self.k.new_elf_checks else None)
        if isinstance(facts, ElfRefusal):
            self.lines.append(facts.line)
            if facts.struct_module:
                raise self.refuse("struct_module", facts.errno, "built for another kernel: struct module's size "
                                  f"differs from {self.k.release}'s ({self.k.struct_module_size} bytes)",
                                  self._rebuild_fix())
            raise self.refuse("elf", facts.errno, "the kernel's ELF checks refuse the file",
                              "rebuild it with the target kernel's Kbuild (kmodkit build)")
        self.name, self.mod_name = facts.name, facts.mod_name
        if self.k.new_elf_checks and self.k.struct_module_size is None:
            self.assumptions.append("sizeof(struct module) unknown (no module of the kernel at hand): not compared")
        self._blacklist()
        self._module_layout(facts)
        if self.k.new_elf_checks:
            self._vermagic(facts)
            self._livepatch()
            self._already_loaded()
            self._rwx(facts)
            self._taints()
        else:
            self._vermagic(facts)
            self._taints(before_livepatch=True)
            self._rwx(facts)
            self._already_loaded()
            self._signature_taint()
        self._export_versions()
        self._symbols(facts)
        self._duplicate_exports()
        self._sysfs()

    # -- 1. signature --
    def _signature(self, data: memoryview) -> int:
        """module_sig_check() (the one model: :mod:`kmodkit.signing.kernel_check`); returns the length the ELF
        checks see."""
        import errno as _e

        from kmodkit.signing.kernel_check import SOFT_ERRORS, check_module_signature, length_after_sig_check

        from kmodkit.modfile.signature import has_signature_magic
        from kmodkit.signing.trust import TrustStore

        # the kernel's keys are read (from its image) only for a module that carries a signature
        store = self.c.trust_store(self.assumptions) if has_signature_magic(data) else TrustStore()
        sig = check_module_signature(data, store, self.path)
        if sig.log is not None:
            # pr_err() in module_signature.c / signing.c ("module: ..."), pr_warn() in the PKCS#7 code
            self.log(4 if sig.log.startswith("PKCS7: ") else 3, sig.log)
        if sig.accepted:
            self.sig_ok = True
            return length_after_sig_check(data)
        reason = SOFT_ERRORS.get(sig.errno)
        if reason is None:
            raise self.refuse("signature", sig.errno, sig.problem or _FATAL_SIG.get(sig.errno, "the signature is broken"),
                              "sign the module again (kmodkit sign) with a key the kernel trusts")
        article = "an" if reason.startswith("unsigned") else "a"
        if self.c.enforced:
            self.log(5, f"Loading of {reason} is rejected")
            raise self.refuse("signature", _e.EKEYREJECTED,
                              f"signatures are enforced ({self.c.enforced_by}) and this is {article} {reason}",
                              self._sign_fix(sig.errno))
        if self.c.lockdown is not Lockdown.NONE:
            self.log(5, f"Lockdown: {self.c.machine.comm}: unsigned module loading is restricted; "
                        "see man kernel_lockdown.7")
            raise self.refuse("lockdown", _e.EPERM, f"the kernel is locked down ({self.c.lockdown.value}) "
                              f"and this is {article} {reason}", self._sign_fix(sig.errno))
        return length_after_sig_check(data)

    def _sign_fix(self, err: int | None) -> str:
        if err == errno.ENOKEY:
            return ("enrol the certificate of the key that signed it (mokutil --import CERT.der, then reboot and "
                    f"confirm), or sign it with a key {self.k.release} trusts")
        return (f"sign it (kmodkit sign --key KEY --cert CERT) with a key {self.k.release} trusts, or enrol your "
                "certificate with mokutil --import CERT.der")

    def _signature_taint(self) -> None:
        if not self.k.enabled("MODULE_SIG") or self.sig_ok:
            return
        if "E" not in self.boot_taints:  # pr_notice_once: the first unsigned module of a boot prints it
            self.log(5, f"{self.mod_name}: module verification failed: signature and/or required key missing - "
                        "tainting kernel")
        self.add_taint("E")

    # -- 3. blacklist, module_layout --
    def _blacklist(self) -> None:
        listed = self.c.machine.param("module_blacklist")
        if listed and self.name in listed.split(","):
            self.log(3, f"Module {self.name} is blacklisted")
            raise self.refuse("blacklist", errno.EPERM, "the kernel command line blacklists it (module_blacklist=)",
                              "remove it from module_blacklist= on the kernel command line")

    def _check_version(self, facts: ElfFacts, symbol: str, crc: int | None) -> bool:
        """check_version(): True when the CRCs agree (or there is nothing to compare)."""
        if crc is None:
            return True
        if not facts.versions_index:
            self.force_load(symbol)
            return True
        want = self._versions().get(symbol)
        if want is None:
            self.log(4, f"{self.name}: no symbol version for {symbol}")
            return False
        if want != crc:
            self.log(4, f"{self.name}: disagrees about version of symbol {symbol}")
            return False
        return True

    def _versions(self) -> dict[str, int]:
        if self._vers is None:
            self._vers = {v.name: v.crc & 0xFFFFFFFF for v in self.mod.versions()}
        return self._vers

    def _module_layout(self, facts: ElfFacts) -> None:
        if not self._check_version(facts, "module_layout", self.k.module_layout_crc):
            raise self.refuse("module_layout", errno.ENOEXEC,
                              f"built for another kernel: struct module's layout (module_layout CRC) differs from "
                              f"{self.k.release}'s", self._rebuild_fix())

    def _rebuild_fix(self) -> str:
        return f"rebuild it against {self.k.release}'s headers (kmodkit build -k {self.k.release})"

    # -- 4. vermagic, livepatch, 6.1's taints --
    def _vermagic(self, facts: ElfFacts) -> None:
        magic = self.modinfo("vermagic")
        if magic is None:
            self.force_load("bad vermagic")
            return
        kernel = self.k.vermagic
        if facts.versions_index:
            same = magic[_first_space(magic):] == kernel[_first_space(kernel):]
        else:
            same = magic == kernel
        if not same:
            self.log(3, f"{self.name}: version magic '{magic}' should be '{kernel}'")
            raise self.refuse("vermagic", errno.ENOEXEC, "version magic differs from the kernel's",
                              self._rebuild_fix())

    def _livepatch(self) -> None:
        if self.modinfo("livepatch") is not None and not self.k.enabled("LIVEPATCH"):
            self.log(3, f"{self.mod_name}: module is marked as livepatch module, but livepatch support is disabled")
            raise self.refuse("livepatch", errno.ENOEXEC, "a livepatch module, and the kernel has no livepatch "
                              "support", None)

    def _taints(self, before_livepatch: bool = False) -> None:
        """The out-of-tree, staging, livepatch, licence and test taints, in the order the kernel applies them."""
        m = self.mod_name
        proprietary_before = self.tainted("P")
        if self.modinfo("intree") is None:
            if not self.tainted("O"):
                self.log(4, f"{m}: loading out-of-tree module taints kernel.")
            self.add_taint("O")
        if self.k.enabled("RETPOLINE") and self.modinfo("retpoline") is None:
            self.assumptions.append("the module lacks the retpoline tag: whether the kernel warns depends on the CPU")
        if self.modinfo("staging") is not None:
            self.add_taint("C")
            self.log(4, f"{m}: module is from the staging directory, the quality is unknown, you have been warned.")
        if before_livepatch:
            self._livepatch()
        elif self.modinfo("livepatch") is not None:
            self.add_taint("K")
            self.log(5, f"{m}: tainting kernel with TAINT_LIVEPATCH")
        licence = self.modinfo("license") or "unspecified"
        if licence not in GPL_COMPATIBLE:
            if not self.tainted("P"):
                self.log(4, f"{m}: module license '{licence}' taints kernel.")
            self.add_taint("P", lockdep_unreliable=True)
        if self.modinfo("test") is not None:
            if not self.tainted("N"):
                self.log(4, f"{m}: loading test module taints kernel.")
            self.add_taint("N")
        if not before_livepatch:
            # v6.11+: module_augment_kernel_taints() goes on with the signature taint, and compares the
            # P taint with what it was before the licence check
            self._signature_taint()
            if not proprietary_before and "P" in self.taints:
                self.log(4, f"{m}: module license taints kernel.")

    # -- 5. W+X, already loaded --
    def _rwx(self, facts: ElfFacts) -> None:
        if not self.k.enabled("STRICT_MODULE_RWX"):
            return
        for i, (name, _type, flags, _off, _size) in enumerate(facts.sections):
            if flags & _SHF_WRITE and flags & _SHF_EXECINSTR:
                self.log(3, f"{self.mod_name}: section {name} (index {i}) has invalid WRITE|EXEC flags")
                raise self.refuse("rwx", errno.ENOEXEC, f"section {name} is both writable and executable",
                                  "do not mark code sections writable")

    def _already_loaded(self) -> None:
        if self.mod_name in self.c.machine.loaded:
            raise self.refuse("loaded", errno.EEXIST, "a module of that name is already loaded",
                              f"unload it first (kmodkit unload {self.mod_name})")

    # -- 7. symbols --
    def _export_versions(self) -> None:
        if not self.k.enabled("MODVERSIONS"):
            return
        names = {s[0] for s in self.mod.elf.section_rows()}
        if ("__ksymtab" in names and "__kcrctab" not in names) or \
                ("__ksymtab_gpl" in names and "__kcrctab_gpl" not in names):
            self.force_load("no versions for exported symbols")

    def _lookup(self, symbol: str) -> Export | None:
        found = self.k.exports.get(symbol)
        if found is not None:
            return found
        for p in self.c.providers:
            e = p.exports.get(symbol)
            if e is not None:
                return e
        return None

    def _symbols(self, facts: ElfFacts) -> None:
        """simplify_symbols(): every symbol in .symtab order; the last failure's errno is the result."""
        m = self.mod_name
        last: tuple[int, str, str | None] | None = None
        imports = set(self.mod.get_all("import_ns"))
        gplok = "P" not in self.taints
        table = self.mod.elf.symbol_table()
        positions = [] if table is None else table.in_sections(_UNDEF_OR_COMMON)
        names = [] if table is None else table.names_of(positions)
        for k, raw in zip(positions, names):
            if not raw:
                continue
            name = raw.decode("utf-8", "replace")
            assert table is not None
            if table.shndx[k] == _SHN_COMMON:
                if not name.startswith("__gnu_lto"):
                    self.log(4, f"{m}: please compile with -fno-common")
                    last = (errno.ENOEXEC, "a common symbol", "compile with -fno-common")
                continue
            export = self._lookup(name)
            err = 0
            fix: str | None = None
            if export is not None and export.gpl_only and not gplok:
                export = None
                fix = f"{name} is exported GPL-only: declare a GPL-compatible MODULE_LICENSE"
            if export is None:
                if name == "_GLOBAL_OFFSET_TABLE_" or table.weak[k]:
                    continue
                err = errno.ENOENT
                fix = fix or f"{self.k.release} exports no {name}: build for a kernel that has it"
            elif not self._check_version(facts, name, export.crc if self.k.enabled("MODVERSIONS") else None):
                err = errno.EINVAL
                fix = self._rebuild_fix() if export.in_vmlinux else \
                    f"rebuild it against the {export.owner} module it will be loaded with"
            elif export.namespace and export.namespace not in imports:
                strict = not self.k.enabled("MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS")
                self.log(3 if strict else 4, f"{m}: module uses symbol ({name}) from namespace "
                                             f"{export.namespace}, but does not import it.")
                if strict:
                    err = errno.EINVAL
                    fix = f"add MODULE_IMPORT_NS({export.namespace}) to the module's source"
            if err:
                self.log(4, f"{m}: Unknown symbol {name} (err -{err})")
                last = (err, name, fix)
                continue
            if export is not None and not export.in_vmlinux:
                self.needs.setdefault(export.owner, None)
        if last is not None:
            err, what, fix = last
            problem = {errno.ENOENT: f"unknown symbol {what}", errno.EINVAL: f"symbol {what} does not match "
                       "the kernel (CRC or namespace)", errno.ENOEXEC: what}[err]
            raise self.refuse("symbols", err, problem, fix)

    # -- 8. formation --
    def _duplicate_exports(self) -> None:
        loaded = set(self.needs) | self.c.machine.loaded
        for e in self.mod.exported_symbols():
            owner = self.k.exports.get(e.name)
            if owner is None or not (owner.in_vmlinux or owner.owner in loaded):
                continue
            shown = "kernel" if owner.in_vmlinux else owner.owner
            self.log(3, f"{self.mod_name}: exports duplicate symbol {e.name} (owned by {shown})")
            raise self.refuse("exports", errno.ENOEXEC, f"{e.name} is already exported by {shown}",
                              f"rename {e.name}: {self.k.release} already exports it")

    def _sysfs(self) -> None:
        if self.mod_name in self.k.sysfs_builtin:
            self.log(3, f"{self.mod_name}: module is already loaded")
            raise self.refuse("sysfs", errno.EINVAL, f"{self.k.release} has a built-in {self.mod_name} "
                              "(/sys/module/" + self.mod_name + " exists)",
                              f"rename the module: {self.k.release} already has a built-in of that name")


_FATAL_SIG = {
    errno.EBADMSG: "the signature is malformed (trailer or PKCS#7)",
    errno.EKEYREJECTED: "the signature does not match the module (altered after signing, or another key)",
}


def _first_space(s: str) -> int:
    i = s.find(" ")
    return len(s) if i < 0 else i


def provider(path: str) -> Provider:
    """The exports of the module at ``path``, with the CRCs of its ``__kcrctab`` (``__crc_NAME`` symbols)."""
    from kmodkit.modfile.module import ModuleFile

    with ModuleFile.open(path) as mod:
        return Provider(mod.name, _exports_with_crcs(mod))


def _exports_with_crcs(mod: ModuleFile) -> dict[str, Export]:
    # a function of its own, so that no view of the mapping outlives it when the file is closed
    elf = mod.elf
    crcs: dict[str, int] = {}
    tabs = {s.number: s for s in elf.sections if s.name in ("__kcrctab", "__kcrctab_gpl")}
    if tabs:
        for sym in elf.iter_symbols():
            sec = tabs.get(sym.shndx)
            if sec is not None and sym.name.startswith("__crc_") and sym.value + 4 <= sec.size:
                raw = bytes(elf.section_data(sec)[sym.value:sym.value + 4])
                crcs[sym.name[len("__crc_"):]] = int.from_bytes(raw, "little" if elf.endian == "<" else "big")
    return {e.name: Export(e.name, crcs.get(e.name), mod.name, e.gpl_only, e.namespace or "")
            for e in mod.exported_symbols()}
