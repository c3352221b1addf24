"""Why a load failed, from the errno and the kernel's own lines, as tables in data."""

from __future__ import annotations

import enum
import errno
import os
import re
from dataclasses import dataclass

from kmodkit.loader.kmsg import KmsgRecord


class Reason(enum.Enum):
    """What went wrong, one value per explanation a user acts on differently."""

    SIGNATURE_REFUSED = "signature-refused"
    INVALID_FORMAT = "invalid-format"
    SYMBOL_VERSION = "symbol-version"
    UNKNOWN_SYMBOL = "unknown-symbol"
    INVALID_PARAMETER = "invalid-parameter"
    ALREADY_LOADED = "already-loaded"
    PERMISSION = "permission"
    BUSY = "busy"
    INIT_FAILED = "init-failed"
    INSTALL_COMMAND = "install-command"
    OTHER = "other"


@dataclass(frozen=True)
class KmsgRule:
    """A kernel line that tells why a load failed."""

    pattern: re.Pattern[str]  #: matched against the message text
    reason: Reason  #: what it means
    problem: str  #: the explanation, formatted with the pattern's named groups
    fix: str  #: what to do
    example: str  #: a real line the rule matches (kernel/module/*.c)


#: the kernel's lines, most specific first (texts of kernel/module/main.c, signing.c, version.c; params.c)
KMSG_RULES: tuple[KmsgRule, ...] = (
    KmsgRule(re.compile(r"Loading of (?P<what>module with unavailable key) is rejected"), Reason.SIGNATURE_REFUSED,
             "the kernel refused the {what}: the module is signed, by a key the kernel does not trust",
             "enrol the certificate of the key that signed it (mokutil --import CERT.der, then reboot and confirm "
             "in MokManager), or sign it again with a key the kernel trusts; 'kmodkit verify -k KVER MODULE' "
             "names the signer",
             "Loading of module with unavailable key is rejected"),
    KmsgRule(re.compile(r"Loading of (?P<what>.+) is rejected"), Reason.SIGNATURE_REFUSED,
             "the kernel refused the {what}",
             "sign the module with a key the kernel trusts (kmodkit sign), or enroll your key (mokutil --import)",
             "Loading of unsigned module is rejected"),
    KmsgRule(re.compile(r"Lockdown: .*: (?P<what>unsigned module loading is restricted)"), Reason.SIGNATURE_REFUSED,
             "kernel lockdown: {what}", "sign the module with a key the kernel trusts",
             "Lockdown: insmod: unsigned module loading is restricted; see man kernel_lockdown.7"),
    KmsgRule(re.compile(r"version magic '(?P<have>[^']*)' should be '(?P<want>[^']*)'"), Reason.INVALID_FORMAT,
             "built for another kernel: version magic '{have}', the kernel wants '{want}'",
             "rebuild the module against this kernel's headers (kmodkit build -k KVER)",
             "hello: version magic '6.1.0-55-amd64 SMP mod_unload' should be '6.1.0-56-amd64 SMP mod_unload'"),
    KmsgRule(re.compile(r"disagrees about version of symbol (?P<sym>module_layout)"), Reason.INVALID_FORMAT,
             "built for another kernel: its struct module layout (module_layout) differs",
             "rebuild the module against this kernel's headers",
             "hello: disagrees about version of symbol module_layout"),
    KmsgRule(re.compile(r"disagrees about version of symbol (?P<sym>\S+)"), Reason.SYMBOL_VERSION,
             "disagrees about version of symbol {sym}: it was built against another build of the module or kernel "
             "that exports it",
             "rebuild the module against this kernel and the module that exports {sym} as they are installed",
             "hello: disagrees about version of symbol xfrm_probe_algs"),
    KmsgRule(re.compile(r"no symbol version for (?P<sym>\S+)"), Reason.SYMBOL_VERSION,
             "has no symbol version (CRC) for {sym} while the kernel checks them",
             "rebuild the module with CONFIG_MODVERSIONS matching the kernel",
             "hello: no symbol version for xfrm_probe_algs"),
    KmsgRule(re.compile(r"Unknown symbol (?P<sym>\S+)"), Reason.UNKNOWN_SYMBOL,
             "unknown symbol {sym}: no loaded module or the kernel exports it",
             "load the module that exports {sym} first (kmodkit load resolves depends=), "
             "or check the symbol's namespace and licence",
             "hello: Unknown symbol xfrm_probe_algs (err -2)"),
    KmsgRule(re.compile(r"`(?P<value>[^']*)' invalid for parameter `(?P<param>[^']*)'"), Reason.INVALID_PARAMETER,
             "invalid value '{value}' for parameter {param}", "give {param} a value of its declared type",
             "hello: `abc' invalid for parameter `n'"),
    KmsgRule(re.compile(r"unknown parameter '(?P<param>[^']*)'"), Reason.INVALID_PARAMETER,
             "unknown parameter {param}", "drop {param}; 'kmodkit info -p MODULE' lists the declared ones",
             "hello: unknown parameter 'nn' ignored"),
)


@dataclass(frozen=True)
class ErrnoRule:
    """What an errno means when a module syscall returns it and the kernel logged nothing telling."""

    reason: Reason  #: what it means
    problem: str  #: the explanation
    fix: str  #: what to do


#: errno of finit_module/init_module -> meaning (kernel/module/main.c: load_module)
LOAD_ERRNO: dict[int, ErrnoRule] = {
    errno.EKEYREJECTED: ErrnoRule(Reason.SIGNATURE_REFUSED, "the kernel refused the module's signature",
                                  "sign the module with a key the kernel trusts (kmodkit sign)"),
    errno.ENOKEY: ErrnoRule(Reason.SIGNATURE_REFUSED, "the key that signed the module is not trusted",
                            "sign with a trusted key or enroll the certificate"),
    errno.EBADMSG: ErrnoRule(Reason.SIGNATURE_REFUSED, "the module's signature is malformed",
                             "sign the module again (kmodkit sign)"),
    errno.ENOEXEC: ErrnoRule(Reason.INVALID_FORMAT, "invalid module format",
                             "rebuild the module against this kernel's headers"),
    errno.EEXIST: ErrnoRule(Reason.ALREADY_LOADED, "already loaded",
                            "unload it first (kmodkit unload NAME) to load another build"),
    errno.EPERM: ErrnoRule(Reason.PERMISSION, "operation not permitted",
                           "run as root with CAP_SYS_MODULE; check kernel.modules_disabled and lockdown"),
    errno.EACCES: ErrnoRule(Reason.PERMISSION, "permission denied", "run as root with CAP_SYS_MODULE"),
    errno.EBUSY: ErrnoRule(Reason.BUSY, "busy: a module of that name is being loaded or unloaded",
                           "wait and try again"),
}


@dataclass(frozen=True)
class Explanation:
    """Why one module failed to load."""

    module: str  #: the module's name
    errno: int  #: the syscall's errno
    reason: Reason  #: the kind of failure
    problem: str  #: one sentence
    fix: str  #: what to do
    kernel_lines: tuple[str, ...]  #: what the kernel logged meanwhile (warning level and worse)
    sig_enforce: bool | None  #: module.sig_enforce, None when unknown
    lockdown: str | None  #: the lockdown mode (none, integrity, confidentiality), None when unknown
    predicted: bool = False  #: True when ``kmodkit check`` predicted the refusal and the kernel was not asked

    def to_json(self) -> dict[str, object]:
        """The explanation as a JSON object."""
        return {"module": self.module, "errno": errno.errorcode.get(self.errno, str(self.errno)),
                "reason": self.reason.value, "problem": self.problem, "fix": self.fix,
                "kernel_lines": list(self.kernel_lines), "sig_enforce": self.sig_enforce, "lockdown": self.lockdown,
                "predicted": self.predicted}


def read_sig_enforce(sysfs: str = "/sys") -> bool | None:
    """``module.sig_enforce`` of the running kernel, None when unknown."""
    try:
        with open(f"{sysfs}/module/module/parameters/sig_enforce") as f:
            return f.read().strip() == "Y"
    except OSError:
        return None


def read_lockdown(sysfs: str = "/sys") -> str | None:
    """The active lockdown mode (the bracketed word of security/lockdown), None when unknown."""
    try:
        with open(f"{sysfs}/kernel/security/lockdown") as f:
            m = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return m.group(1) if m else None


#: errnos the kernel's signature check returns for the signature itself (kmodkit.signing.kernel_check)
_SIGNATURE_ERRNOS = frozenset({errno.EBADMSG, errno.EKEYREJECTED, errno.EINVAL, errno.EMSGSIZE})


def signature_refusal(path: str, err: int, lines: tuple[str, ...] = ()) -> str | None:
    """Why the kernel's signature check refuses the module file at ``path`` with ``err``, None when it does not.

    The same model `kmodkit verify` reports with
    (:func:`kmodkit.signing.kernel_check.check_module_signature`), asked
    without any trusted key: refusals of the trailer and PKCS#7 form are told
    as the model words them.  A silent EKEYREJECTED (no "is rejected" line
    in the kernel ``lines``) of a well-formed signature can only be a key the
    kernel trusts that does not verify it.
    """
    if err not in _SIGNATURE_ERRNOS:
        return None
    from kmodkit.signing.trust import TrustStore
    from kmodkit.signing.verify import Verifier

    verdict = Verifier(TrustStore()).verify_file(path)
    if err == errno.EKEYREJECTED and verdict.kernel_errno == "ENOKEY" \
            and not any("is rejected" in line for line in lines):
        return ("the kernel refused the module's signature: it knows the signing key, but the signature does not "
                "match the module's content (changed after signing), or the module's hash is blacklisted")
    if verdict.kernel_errno != errno.errorcode.get(err) or not verdict.kernel_fatal:
        return None
    said = f" (the kernel logs '{verdict.kernel_log}')" if verdict.kernel_log else ""
    return f"the kernel refused the module's signature: {verdict.detail}{said}"


def explain(module: str, err: int, records: list[KmsgRecord], sysfs: str = "/sys",
            path: str | None = None) -> Explanation:
    """The explanation of ``err`` for ``module`` (the file ``path``, when known) from the kernel ``records``
    logged meanwhile."""
    lines = tuple(r.message for r in records if r.priority <= 5)
    enforce, lockdown = read_sig_enforce(sysfs), read_lockdown(sysfs)
    refusal = signature_refusal(path, err, lines) if path else None
    if refusal is not None:
        return Explanation(module, err, Reason.SIGNATURE_REFUSED, refusal,
                           "sign the module again (kmodkit sign --replace) with a key the kernel trusts", lines,
                           enforce, lockdown)
    for rule in KMSG_RULES:
        for line in lines:
            m = rule.pattern.search(line)
            if m:
                problem = rule.problem.format(**m.groupdict())
                if rule.reason is Reason.SIGNATURE_REFUSED:
                    problem += f" (sig_enforce={_yn(enforce)}, lockdown={lockdown or 'unknown'})"
                return Explanation(module, err, rule.reason, problem, rule.fix.format(**m.groupdict()), lines,
                                   enforce, lockdown)
    known = LOAD_ERRNO.get(err)
    if known is not None:
        problem = known.problem
        if known.reason in (Reason.SIGNATURE_REFUSED, Reason.PERMISSION):
            problem += f" (sig_enforce={_yn(enforce)}, lockdown={lockdown or 'unknown'})"
        return Explanation(module, err, known.reason, problem, known.fix, lines, enforce, lockdown)
    name = errno.errorcode.get(err, str(err))
    return Explanation(module, err, Reason.INIT_FAILED,
                       f"the module's init function failed with -{name} ({os.strerror(err)})",
                       "read the kernel log (kmodkit vm keeps it) for the module's own messages", lines,
                       enforce, lockdown)


def explain_install(module: str, command: str, status: int, output: str, sysfs: str = "/sys") -> Explanation:
    """The explanation of an install command of modprobe.d that failed with exit ``status``."""
    tail = output.strip().splitlines()[-1:] if output.strip() else []
    said = f": {tail[0]}" if tail else ""
    return Explanation(module, errno.EINVAL, Reason.INSTALL_COMMAND,
                       f"the install command of modprobe.d '{command}' exited with status {status}{said}",
                       f"read the 'install {module}' line of modprobe.d (kmodkit deps --show-depends {module})",
                       (), read_sig_enforce(sysfs), read_lockdown(sysfs))


def _yn(value: bool | None) -> str:
    return "unknown" if value is None else "1" if value else "0"
