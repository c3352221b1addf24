"""Verifying module signatures offline, as the kernel does when it loads a module.

For each module (kernel/module/signing.c, mod_verify_sig, and
crypto/asymmetric_keys/pkcs7_verify.c): read the trailer, parse the PKCS#7,
digest the content before the signature, find the key by issuer+serial or
key id, and check the signature over the digest (or over the signed
attributes, whose messageDigest must then match).  The hot path reads only
the trailer and PKCS#7 with the lean DER reader, hashes the mmapped file
without copying, and runs in a small process pool; public keys are loaded
once per certificate.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from kmodkit.errors import KmodkitError, UserError
from kmodkit.modfile.signature import Pkcs7Signer
from kmodkit.signing.algorithms import ECDSA_SIGNATURE_OIDS, RSA_SIGNATURE_OIDS
from kmodkit.signing.kernel_check import KernelSigCheck, check_module_signature
from kmodkit.signing.keys import format_key_id
from kmodkit.signing.trust import TrustedCert, TrustStore


class Verdict(enum.Enum):
    """The outcome of checking one module's signature."""

    VALID = "valid"  #: the signature checks out with a trusted key
    UNTRUSTED = "untrusted"  #: the signature checks out, but its key is not trusted (not in the kernel's list)
    UNKNOWN_KEY = "unknown-key"  #: no certificate for the signer's key is known: the signature cannot be checked
    INVALID = "invalid"  #: the signature does not match the content (tampered, or signed by another key)
    UNSIGNED = "unsigned"  #: no signature at all
    MALFORMED = "malformed"  #: the trailer or PKCS#7 is broken, or uses an algorithm the kernel does not know

    @property
    def text(self) -> str:
        """How the report line says it."""
        return _TEXT[self]


_TEXT = {
    Verdict.VALID: "valid signature, trusted key",
    Verdict.UNTRUSTED: "valid signature, key not trusted",
    Verdict.UNKNOWN_KEY: "signed by an unknown key (no certificate to check it with)",
    Verdict.INVALID: "INVALID signature",
    Verdict.UNSIGNED: "unsigned",
    Verdict.MALFORMED: "malformed signature",
}


@dataclass(frozen=True)
class ModuleVerdict:
    """What `verify` found for one module file."""

    path: str  #: the file, as named
    verdict: Verdict  #: the outcome
    signer: str | None  #: modinfo's ``signer`` (issuer CN), None when unsigned or in key-id form
    key_id: str | None  #: modinfo's ``sig_key``, None when unsigned
    hash: str | None  #: digest name (sha256, ...), None when unsigned or unknown
    key_type: str | None  #: "RSA" / "ECDSA" from the signature algorithm, None when unsigned
    cert: str | None  #: subject of the certificate that checked it, None when none matched
    cert_source: str | None  #: where that certificate came from (file, vmlinuz-RELEASE)
    detail: str | None  #: why it is invalid or malformed, else None
    kernel: str | None = None  #: the kernel asked about, None when none was named
    kernel_errno: str | None = None  #: what the kernel's signature check returns (``EBADMSG``), None when it accepts
    kernel_log: str | None = None  #: the line the kernel logs for it, None when it is silent
    kernel_fatal: bool = False  #: whether the kernel refuses the module even without signature enforcement

    @property
    def ok(self) -> bool:
        """Whether the module passes: a valid signature by a trusted key."""
        return self.verdict is Verdict.VALID

    @property
    def kernel_loads(self) -> dict[str, object] | None:
        """What the named kernel does with it, as the kernel decides (one model: :mod:`kmodkit.signing.kernel_check`);
        None when no kernel was named.

        ``enforced``: where signatures are enforced (module.sig_enforce=1, CONFIG_MODULE_SIG_FORCE, or UEFI
        Secure Boot, whose IMA policy enforces them on Debian) or the kernel is locked down, it loads only with
        a valid signature by a key the kernel trusts.  ``not_enforced``: elsewhere only a fatal error (a
        malformed signature, a trusted key that does not verify it) stops it; ``taints`` then says what the
        load adds (E: signature and/or required key missing).
        """
        if self.kernel is None:
            return None
        valid = self.verdict is Verdict.VALID
        return {"enforced": valid, "not_enforced": not self.kernel_fatal, "taints": "" if valid or self.kernel_fatal
                else "E"}

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        return {"path": self.path, "verdict": self.verdict.value, "ok": self.ok, "signer": self.signer,
                "key_id": self.key_id, "hash": self.hash, "key_type": self.key_type, "cert": self.cert,
                "cert_source": self.cert_source, "detail": self.detail, "kernel": self.kernel,
                "kernel_loads": self.kernel_loads, "kernel_errno": self.kernel_errno,
                "kernel_log": self.kernel_log, "kernel_fatal": self.kernel_fatal}


class Verifier:
    """Checks module signatures against a :class:`TrustStore`; ``kernel`` names whose trust it is."""

    def __init__(self, store: TrustStore, kernel: str | None = None) -> None:
        #: the certificates to check against
        self.store = store
        #: the kernel release or image whose built-in keys are the trusted ones, None for plain certificates
        self.kernel = kernel

    def verify_bytes(self, data: bytes | memoryview, path: str = "<memory>") -> ModuleVerdict:
        """The verdict for a decompressed module in memory (never raises for a bad module)."""
        check = check_module_signature(data, self.store, path)
        return self._result(path, verdict_of(check), check.signer, check.cert, check.problem, check)

    def verify_file(self, path: str) -> ModuleVerdict:
        """The verdict for the module file at ``path``; unreadable files come back MALFORMED with the reason."""
        from kmodkit.modfile.opener import load_module, release

        try:
            held, _st, _kind = load_module(path)
        except KmodkitError as exc:
            return self._result(path, Verdict.MALFORMED, None, detail=exc.problem)
        try:
            view = memoryview(held)
            try:
                return self.verify_bytes(view, path)
            finally:
                view.release()
        finally:
            release(held)

    def verify_files(self, paths: Sequence[str], jobs: int | None = None) -> list[ModuleVerdict]:
        """Verdicts for every file, in order; large batches run in ``jobs`` worker processes."""
        from kmodkit._util.pool import Cost, jobs_for

        jobs = jobs_for(len(paths), Cost.READ, jobs)
        if not jobs:
            return [self.verify_file(p) for p in paths]
        return _verify_in_workers(self, paths, jobs)

    def _result(self, path: str, verdict: Verdict, signer: Pkcs7Signer | None, cert: TrustedCert | None = None,
                detail: str | None = None, check: KernelSigCheck | None = None) -> ModuleVerdict:
        key_type = None
        if signer is not None:
            key_type = ("RSA" if signer.signature_oid in RSA_SIGNATURE_OIDS
                        else "ECDSA" if signer.signature_oid in ECDSA_SIGNATURE_OIDS else None)
        return ModuleVerdict(
            path=path, verdict=verdict,
            signer=signer.issuer_cn if signer else None,
            key_id=format_key_id(signer.key_identifier) if signer else None,
            hash=signer.hash_name if signer else None,
            key_type=key_type,
            cert=cert.subject if cert else None,
            cert_source=cert.source if cert else None,
            detail=detail, kernel=self.kernel,
            kernel_errno=check.errno_name if check else None,
            kernel_log=check.log if check else None,
            kernel_fatal=check.fatal if check else True,
        )


@dataclass(frozen=True)
class VerifyRequest:
    """What ``kmodkit verify`` is asked: whose keys to trust; validated when built.

    The trust rule: with a kernel named (``kernel_release`` or ``vmlinuz``),
    the keys compiled into its image and the MOK certificates are trusted,
    and ``certs``/``cert_dirs`` only show whether a signature itself holds
    (that kernel does not trust them).  With certificates and no kernel,
    the certificates (and MOK) are trusted.  With neither, the running
    kernel's image is asked.
    """

    certs: tuple[str, ...] = ()  #: certificate files (DER or PEM)
    cert_dirs: tuple[str, ...] = ()  #: directories of certificate files (e.g. from ``keys extract``)
    kernel_release: str | None = None  #: an installed kernel whose image's keys are trusted
    vmlinuz: str | None = None  #: a kernel image whose keys are trusted
    mok: tuple[str, ...] = ()  #: certificates enrolled with mokutil: trusted as the kernel's own

    def __post_init__(self) -> None:
        if self.kernel_release and self.vmlinuz:
            raise UserError("verify", "a kernel release and a kernel image were both named", "give one of them")

    def trust_store(self) -> tuple[TrustStore, str | None]:
        """The certificates to check with, and the label of the kernel whose trust they stand for (None: no kernel).

        Raises :class:`UserError` when nothing names a certificate or kernel
        and the running kernel has no image in /boot; the errors of
        :func:`kmodkit.signing.kernel.kernel_keys` and of the certificate files.
        """
        store = TrustStore()
        kernel = None
        named = self.kernel_release or self.vmlinuz
        if named or not (self.certs or self.cert_dirs):
            from kmodkit.signing.kernel import kernel_keys

            if not named and not os.path.exists(f"/boot/vmlinuz-{os.uname().release}"):
                raise UserError("verify", "no certificates and no kernel named, and the running kernel has no image "
                                "in /boot", "pass --cert, --certs-dir, -k KVER or --vmlinuz PATH")
            keys = kernel_keys(release=self.kernel_release, vmlinuz=self.vmlinuz)
            kernel = keys.label
            for der in keys.certs:
                store.add_der(der, f"vmlinuz-{keys.label}")
        store.add_files(self.certs, trusted=kernel is None)
        for d in self.cert_dirs:
            store.add_dir(d, trusted=kernel is None)
        store.add_files(self.mok, trusted=True)
        return store, kernel

    def verifier(self) -> Verifier:
        """A :class:`Verifier` with this request's trust (raises as :meth:`trust_store`)."""
        store, kernel = self.trust_store()
        return Verifier(store, kernel)


def verdict_of(check: KernelSigCheck) -> Verdict:
    """The verdict that states the kernel's decision ``check`` (plus, for an untrusted key, whether it holds)."""
    if check.errno == 0:
        return Verdict.VALID
    if check.errno == errno.ENODATA:
        return Verdict.UNSIGNED
    if check.errno == errno.ENOKEY:
        if check.cert is None:
            return Verdict.UNKNOWN_KEY
        return Verdict.UNTRUSTED if check.signature_holds else Verdict.INVALID
    if check.signature_holds is False:
        return Verdict.INVALID
    return Verdict.MALFORMED


# --- worker processes: the verifier (with its loaded public keys) reaches them through fork

_WORKER_VERIFIER: Verifier | None = None


def _worker_verify(paths: list[str]) -> list[ModuleVerdict]:
    assert _WORKER_VERIFIER is not None
    return [_WORKER_VERIFIER.verify_file(p) for p in paths]


def _verify_in_workers(verifier: Verifier, paths: Sequence[str], jobs: int) -> list[ModuleVerdict]:
    from kmodkit._util.pool import fan_out

    global _WORKER_VERIFIER
    _WORKER_VERIFIER = verifier
    # batches of similar total size, handed out dynamically: a few huge modules (amdgpu) must not
    # leave one worker busy while the other idles
    batches = _batches(paths, jobs * 16)
    try:
        done = list(fan_out(_worker_verify, [b for _, b in batches], jobs))
    finally:
        _WORKER_VERIFIER = None
    out: list[ModuleVerdict | None] = [None] * len(paths)
    for (indexes, _), results in zip(batches, done):
        for i, r in zip(indexes, results):
            out[i] = r
    return [r for r in out if r is not None]


def _batches(paths: Sequence[str], count: int) -> list[tuple[list[int], list[str]]]:
    sizes = []
    for i, p in enumerate(paths):
        try:
            sizes.append((os.stat(p).st_size, i))
        except OSError:
            sizes.append((0, i))
    total = sum(s for s, _ in sizes) or 1
    target = total / count
    sizes.sort(reverse=True)  # biggest first, so the long ones start early
    out: list[tuple[list[int], list[str]]] = []
    cur_i: list[int] = []
    cur_p: list[str] = []
    acc = 0
    for size, i in sizes:
        cur_i.append(i)
        cur_p.append(paths[i])
        acc += size
        if acc >= target:
            out.append((cur_i, cur_p))
            cur_i, cur_p, acc = [], [], 0
    if cur_i:
        out.append((cur_i, cur_p))
    return out
