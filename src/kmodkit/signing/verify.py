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

import dataclasses
import enum
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from kmodkit.errors import KmodkitError, from_oserror
from kmodkit.modfile import compress as _compress
from kmodkit.modfile.compress import Compression
from kmodkit.modfile.signature import Pkcs7Signer, find_trailer, parse_pkcs7
from kmodkit.signing.algorithms import ECDSA_SIGNATURE_OIDS, RSA_SIGNATURE_OIDS, HashAlgorithm
from kmodkit.signing.keys import format_key_id
from kmodkit.signing.trust import TrustedCert, TrustStore

_PKEY_ID_PKCS7 = 2
_SIGNATURE_OIDS = RSA_SIGNATURE_OIDS | ECDSA_SIGNATURE_OIDS


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

    @property
    def ok(self) -> bool:
        """Whether the module passes: a valid signature by a trusted key."""
        return self.verdict is Verdict.VALID

    @property
    def kernel_accepts(self) -> bool | None:
        """Whether the named kernel would load it with module.sig_enforce=1; None when no kernel was named."""
        return None if self.kernel is None else self.verdict is Verdict.VALID

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        return {"path": self.path, "verdict": self.verdict.value, "ok": self.ok, "signer": self.signer,
                "key_id": self.key_id, "hash": self.hash, "key_type": self.key_type, "cert": self.cert,
                "cert_source": self.cert_source, "detail": self.detail, "kernel": self.kernel,
                "kernel_accepts": self.kernel_accepts}


class Verifier:
    """Checks module signatures against a :class:`TrustStore`; ``kernel`` names whose trust it is."""

    def __init__(self, store: TrustStore, kernel: str | None = None) -> None:
        #: the certificates to check against
        self.store = store
        #: the kernel release or image whose built-in keys are the trusted ones, None for plain certificates
        self.kernel = kernel
        # Every module signed with one key and hash carries the same PKCS#7 but for the
        # signature bytes at its end: (blob length, blob without signature) -> parsed signer
        self._templates: dict[tuple[int, bytes], Pkcs7Signer] = {}
        self._sig_lens: set[int] = set()

    def verify_bytes(self, data: bytes | memoryview, path: str = "<memory>") -> ModuleVerdict:
        """The verdict for a decompressed module in memory (never raises for a bad module)."""
        try:
            trailer = find_trailer(data, path)
        except KmodkitError as exc:
            return self._result(path, Verdict.MALFORMED, None, detail=exc.problem)
        if trailer is None:
            return self._result(path, Verdict.UNSIGNED, None)
        if trailer.id_type != _PKEY_ID_PKCS7:
            return self._result(path, Verdict.MALFORMED, None,
                                detail=f"signature id type {trailer.id_type} is not PKCS#7 (the only kind kernels check)")
        start = trailer.content_len + trailer.signer_len + trailer.key_id_len
        try:
            signer = self._parse_signer(bytes(data[start:start + trailer.sig_len]), path)
        except KmodkitError as exc:
            return self._result(path, Verdict.MALFORMED, None, detail=exc.problem)
        alg = HashAlgorithm.from_oid(signer.digest_oid)
        if alg is None:
            return self._result(path, Verdict.MALFORMED, signer,
                                detail=f"unknown digest algorithm OID {signer.digest_oid}")
        cert = self.store.find(signer)
        if signer.signature_oid not in _SIGNATURE_OIDS:
            return self._result(path, Verdict.MALFORMED, signer, cert,
                                detail=f"unknown signature algorithm OID {signer.signature_oid}")
        if cert is None:
            for der in signer.certificates:  # a message may carry its certificate: usable to check, never trusted
                try:
                    candidate = TrustStore()
                    candidate.add_der(der, f"{path} (embedded)", trusted=False)
                    cert = candidate.find(signer)
                except KmodkitError:
                    continue
                if cert is not None:
                    break
        if cert is None:
            return self._result(path, Verdict.UNKNOWN_KEY, signer)
        h = alg.new()
        h.update(data[:trailer.content_len])
        digest = h.digest()
        problem = check_signature(signer, alg, digest, cert)
        if problem is not None:
            return self._result(path, Verdict.INVALID, signer, cert, detail=problem)
        return self._result(path, Verdict.VALID if cert.trusted else Verdict.UNTRUSTED, signer, cert)

    def _parse_signer(self, blob: bytes, path: str) -> Pkcs7Signer:
        for n in self._sig_lens:
            tpl = self._templates.get((len(blob), blob[:-n]))
            if tpl is not None:
                return dataclasses.replace(tpl, signature=blob[-n:])
        signer = parse_pkcs7(blob, path)
        n = len(signer.signature)
        # only a message whose signature is its last bytes (no unsigned attributes) can be a template
        if 0 < n < len(blob) and blob.endswith(signer.signature) and len(self._templates) < 64:
            self._templates[(len(blob), blob[:-n])] = signer
            self._sig_lens.add(n)
        return signer

    def verify_file(self, path: str) -> ModuleVerdict:
        """The verdict for the module file at ``path``; unreadable files come back MALFORMED with the reason."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            return self._result(path, Verdict.MALFORMED, None, detail=str(from_oserror(exc, path).problem))
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return self._result(path, Verdict.MALFORMED, None, detail="file is empty")
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
                view = memoryview(mm)
                try:
                    kind = _compress.detect(bytes(view[:6]))
                    if kind is not Compression.NONE:
                        try:
                            plain = _compress.decompress(view, kind, path)
                        except KmodkitError as exc:
                            return self._result(path, Verdict.MALFORMED, None, detail=exc.problem)
                        return self.verify_bytes(plain, path)
                    return self.verify_bytes(view, path)
                finally:
                    view.release()
        except OSError as exc:
            return self._result(path, Verdict.MALFORMED, None, detail=str(from_oserror(exc, path).problem))
        finally:
            os.close(fd)

    def verify_files(self, paths: Sequence[str], jobs: int | None = None) -> list[ModuleVerdict]:
        """Verdicts for every file, in order; large batches run in ``jobs`` worker processes."""
        from kmodkit._util.pool import Cost, jobs_for

        jobs = jobs_for(len(paths), Cost.READ, jobs)
        if not jobs:
            return [self.verify_file(p) for p in paths]
        return _verify_in_workers(self, paths, jobs)

    def _result(self, path: str, verdict: Verdict, signer: Pkcs7Signer | None, cert: TrustedCert | None = None,
                detail: str | None = None) -> ModuleVerdict:
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
        )


def check_signature(signer: Pkcs7Signer, alg: HashAlgorithm, digest: bytes, cert: TrustedCert) -> str | None:
    """Why ``signer``'s signature over ``digest`` fails with ``cert``'s key, or None when it holds."""
    pub = cert.public_key
    if signer.signed_attrs is not None:
        # pkcs7_digest: with authenticated attributes the signature covers their
        # DER (as a SET), and their messageDigest must equal the content digest
        md = _message_digest(signer.signed_attrs)
        if md is None:
            return "signed attributes carry no messageDigest"
        if md != digest:
            return "content digest does not match the signed messageDigest (module modified after signing)"
        h = alg.new()
        h.update(signer.signed_attrs)
        digest = h.digest()
    prehashed = utils.Prehashed(alg.crypto())
    try:
        if signer.signature_oid in RSA_SIGNATURE_OIDS:
            if not isinstance(pub, rsa.RSAPublicKey):
                return "RSA signature but the certificate holds an EC key"
            pub.verify(signer.signature, digest, padding.PKCS1v15(), prehashed)
        else:
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                return "ECDSA signature but the certificate holds an RSA key"
            pub.verify(signer.signature, digest, ec.ECDSA(prehashed))
    except InvalidSignature:
        return "signature does not match the module content (modified after signing, or signed by another key)"
    except ValueError as exc:
        return f"signature cannot be checked ({exc})"
    return None


def _message_digest(signed_attrs: bytes) -> bytes | None:
    from asn1crypto import cms

    try:
        attrs = cms.CMSAttributes.load(signed_attrs)
        for attr in attrs:
            if attr["type"].native == "message_digest":
                return bytes(attr["values"][0].native)
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return None


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
