"""Signing module files, byte-identical to the kernel's scripts/sign-file for RSA keys.

A signed module is ``content + PKCS#7 + struct module_signature + magic``
(include/linux/module_signature.h); see :mod:`kmodkit.modfile.signature`.
:class:`ModuleSigner` checks its key and certificate when it is built, so a
mismatch is reported before any file is touched; then every file is signed
in memory and replaced atomically (temp file, fsync, rename, mode and owner
kept), in parallel worker processes for large batches.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kmodkit.errors import ItemError, KmodkitError, ModuleFormatError, UserError, from_oserror
from kmodkit.modfile import compress as _compress
from kmodkit.modfile.elf import ElfImage
from kmodkit.modfile.opener import open_regular
from kmodkit.modfile.compress import Compression
from kmodkit.modfile.module import MODULE_SUFFIXES
from kmodkit.modfile.signature import MAGIC, PKEY_ID_PKCS7, find_trailer, parse_pkcs7, trailer_bytes
from kmodkit.signing.algorithms import SIGNING_HASHES, HashAlgorithm
from kmodkit.fileio import commit_temps, write_temp
from kmodkit.signing.keys import interrupted_hint, public_keys_match
from kmodkit.signing.pkcs7 import SignedDataTemplate
from kmodkit.signing.source import KeySource

log = logging.getLogger(__name__)

#: files written before one sync makes them durable and they are renamed into place
_CHUNK = 128


class SignStatus(enum.Enum):
    """What happened to one file."""

    SIGNED = "signed"  #: it was unsigned and is now signed
    REPLACED = "replaced"  #: its old signature was stripped and a new one appended (--replace)
    ALREADY_SIGNED = "already-signed"  #: left as it was: signed by this key with this digest, and the signature holds
    FAILED = "failed"  #: it was left as it was; see the error


@dataclass(frozen=True)
class SignResult:
    """The outcome for one module file."""

    path: str  #: the file, as named
    status: SignStatus  #: signed, replaced or failed
    compression: Compression  #: the file's compression (kept as it was)
    error: ItemError | None = None  #: why it failed, else None
    signer: str | None = None  #: ALREADY_SIGNED: the signing certificate's subject, else None

    def to_json(self) -> dict[str, object]:
        """The result as JSON-ready data."""
        return {"path": self.path, "status": self.status.value, "compression": self.compression.value,
                "signer": self.signer, "error": self.error.error_json() if self.error else None}


def module_signature_trailer(sig_len: int) -> bytes:
    """``struct module_signature`` for a PKCS#7 signature of ``sig_len`` bytes, followed by the magic."""
    return trailer_bytes(sig_len)


def strip_signatures(data: bytes | memoryview, name: str) -> tuple[memoryview, int]:
    """``data`` without any appended signatures, and how many there were (0 when unsigned).

    Only a trailer the kernel reads (mod_check_sig: PKCS#7, the other fields zero) says where its
    signature starts; any other raises :class:`ModuleFormatError`, since cutting by its lengths could
    cut the module itself.
    """
    from kmodkit.signing.kernel_check import length_after_sig_check

    view = memoryview(data)
    count = 0
    while find_trailer(view, name) is not None:
        keep = length_after_sig_check(view)
        if keep == len(view) - len(MAGIC):  # mod_check_sig refused the trailer: its lengths cannot be trusted
            raise ModuleFormatError(name, "its signature trailer is not one the kernel reads (not PKCS#7, or "
                                    "non-zero signer/key-id lengths or parameters): which bytes are the signature "
                                    "cannot be told", "restore the module from its build or package and sign that")
        view = view[:keep]
        count += 1
    return view, count


def gather_modules(targets: Iterable[str]) -> tuple[list[str], list[ItemError]]:
    """The module files named by ``targets`` (files as given, directories searched recursively, sorted), and one
    :class:`ItemError` for each target that names none (a missing path, a directory holding no module), so a
    batch goes on around them."""
    out: list[str] = []
    errors: list[ItemError] = []
    for target in targets:
        if os.path.isdir(target):
            found: list[str] = []
            for root, dirs, files in os.walk(target):
                dirs.sort()
                found.extend(os.path.join(root, f) for f in files if f.endswith(MODULE_SUFFIXES))
            if not found:
                errors.append(ItemError(target, "directory holds no module files (.ko, .ko.xz, .ko.zst, .ko.gz)"))
            out.extend(sorted(found))
        elif os.path.lexists(target):
            out.append(target)
        else:
            errors.append(ItemError.from_error(target, from_oserror(
                FileNotFoundError(2, "No such file or directory", target), target)))
    return out, errors


def find_modules(targets: Iterable[str]) -> list[str]:
    """The module files named by ``targets`` (see :func:`gather_modules`).

    Raises :class:`UserError` naming the first target that names no module file.
    """
    paths, errors = gather_modules(targets)
    if errors:
        raise UserError(errors[0].path, errors[0].message, errors[0].fix)
    return paths


class ModuleSigner:
    """Signs modules with one key and certificate, as ``sign-file [-k] HASH KEY CERT MODULE`` does.

    Raises :class:`UserError` when built with a key that does not match the
    certificate, a hash the kernel's signing does not use, or ``use_key_id``
    with a certificate that has no subjectKeyIdentifier.
    """

    def __init__(self, key: KeySource, cert: x509.Certificate, hash: HashAlgorithm = HashAlgorithm.SHA256,
                 use_key_id: bool = False, replace: bool = False, cert_name: str = "certificate") -> None:
        if hash not in SIGNING_HASHES:
            raise UserError(f"--hash {hash.value}", "is not a hash kernels sign modules with",
                            "use " + ", ".join(h.value for h in SIGNING_HASHES))
        if not public_keys_match(key.public_key(), cert.public_key()):  # type: ignore[arg-type]
            raise UserError(key.name, f"private key does not match the certificate {cert_name}",
                            interrupted_hint(key.name) or "give the certificate made together with this key")
        _check_key_signs_for(key, cert, hash)
        #: the key that signs
        self.key = key
        #: the certificate the signature names
        self.cert = cert
        #: the digest algorithm
        self.hash = hash
        #: name the key by subjectKeyIdentifier (sign-file -k) instead of issuer and serial
        self.use_key_id = use_key_id
        #: strip an existing signature instead of refusing the file
        self.replace = replace
        # fails now, not at the first file, when --keyid cannot be honoured
        self._template = SignedDataTemplate(cert.public_bytes(serialization.Encoding.DER), hash, key.key_type,
                                            use_key_id)
        from kmodkit.signing.trust import TrustStore

        # this certificate alone: a module whose signature it verifies is signed by this key already
        self._own = TrustStore()
        self._own_cert = self._own.add_der(cert.public_bytes(serialization.Encoding.DER), cert_name)

    def signed_by_this_key(self, data: bytes | memoryview, name: str = "<memory>") -> bool:
        """Whether the decompressed module ``data`` carries a signature (the last one, which the kernel reads) by
        this key, with this digest, that holds for its content: signing it again would change nothing."""
        from kmodkit.signing.kernel_check import check_module_signature

        check = check_module_signature(data, self._own, name)
        return check.accepted and check.signer is not None and check.signer.hash_name == self.hash.value

    def signature_for(self, content: bytes | memoryview) -> bytes:
        """What sign-file appends to ``content``: PKCS#7 DER, struct module_signature, magic."""
        h = self.hash.new()
        h.update(content)
        p7 = self._template.build(self.key.sign_digest(h.digest(), self.hash))
        return p7 + module_signature_trailer(len(p7))

    def sign_bytes(self, data: bytes | memoryview, name: str = "<memory>") -> tuple[bytes, bool]:
        """The signed form of a decompressed module, and whether an old signature was replaced.

        Raises :class:`ModuleFormatError` for data that is not an ELF module
        or has a broken trailer, :class:`UserError` for a signed module when
        ``replace`` is off.
        """
        content, count = strip_signatures(data, name)
        if count and not self.replace:
            raise UserError(name, f"is already signed by another key or digest{_signer_text(data, name)}",
                            "pass --replace to strip the signature and sign again")
        # what is signed must be a module the one reader reads (as kmod does): sign never signs what info refuses,
        # nor writes back a bare signature when a trailer claimed the module itself
        ElfImage(content, name)
        return bytes(content) + self.signature_for(content), bool(count)

    def sign_file(self, path: str) -> SignResult:
        """Sign the module file at ``path`` in place; a failure leaves the file untouched.

        Never raises for a bad file: the result carries the error.
        """
        return self.sign_chunk([path])[0]

    def sign_chunk(self, paths: Sequence[str]) -> list[SignResult]:
        """Sign files one after the other, then make them durable with one sync and rename each into place."""
        results: list[SignResult] = []
        pending: list[tuple[int, str, str]] = []
        for path in paths:
            result, temp = self._prepare(path)
            if temp is not None:
                pending.append((len(results), temp[0], temp[1]))
            results.append(result)
        errors = commit_temps([(tmp, target) for _, tmp, target in pending])
        for (i, _, _), err in zip(pending, errors):
            if err is not None:
                r = results[i]
                results[i] = SignResult(r.path, SignStatus.FAILED, r.compression, ItemError.from_error(r.path, from_oserror(err, r.path)))
        return results

    def _prepare(self, path: str) -> tuple[SignResult, tuple[str, str] | None]:
        # the signed bytes in a temp file beside the target, or the reason there are none
        kind = Compression.NONE
        try:
            real = os.path.realpath(path)
            fd, st = open_regular(path)  # a FIFO or a device is refused at once, named as given
            try:
                with os.fdopen(fd, "rb") as f:
                    raw = f.read()
            except OSError as exc:
                raise from_oserror(exc, path) from None
            if not raw:
                raise ModuleFormatError(path, "file is empty")
            kind = _compress.detect(raw[:6])
            plain = _compress.decompress(raw, kind, path) if kind is not Compression.NONE else raw
            if not self.replace and self.signed_by_this_key(plain, path):  # a re-run of a pipeline: nothing to do
                return SignResult(path, SignStatus.ALREADY_SIGNED, kind, signer=self._own_cert.subject), None
            signed, replaced = self.sign_bytes(plain, path)
            out = _compress.compress(signed, kind) if kind is not Compression.NONE else signed
            try:
                tmp = write_temp(real, out, st.st_mode & 0o7777, owner=(st.st_uid, st.st_gid))
            except OSError as exc:
                raise from_oserror(exc, path) from None
        except KmodkitError as exc:
            return SignResult(path, SignStatus.FAILED, kind, ItemError.from_error(path, exc)), None
        return SignResult(path, SignStatus.REPLACED if replaced else SignStatus.SIGNED, kind), (tmp, real)

    def sign_files(self, paths: Sequence[str], jobs: int | None = None) -> list[SignResult]:
        """Sign every file; one result per path, in order.  Large batches use ``jobs`` worker processes."""
        from kmodkit._util.pool import Cost, jobs_for

        jobs = jobs_for(len(paths), Cost.SIGN, jobs) if self.key.forkable else 0
        if not jobs:
            return [r for i in range(0, len(paths), _CHUNK) for r in self.sign_chunk(paths[i:i + _CHUNK])]
        return _sign_in_workers(self, paths, jobs)


def _check_key_signs_for(key: KeySource, cert: x509.Certificate, alg: HashAlgorithm) -> None:
    # a damaged private key (or a token key that is not the certificate's) must fail here, not
    # produce signatures the kernel rejects
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    digest = alg.new()
    digest.update(b"kmodkit key check")
    value = digest.digest()
    pub = cert.public_key()
    try:
        sig = key.sign_digest(value, alg)
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, value, padding.PKCS1v15(), utils.Prehashed(alg.crypto()))
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig, value, ec.ECDSA(utils.Prehashed(alg.crypto())))
    except (InvalidSignature, ValueError) as exc:
        why = str(exc) or "signature does not verify"
        raise UserError(key.name, f"private key does not make signatures the certificate verifies ({why})",
                        "check that the key file is intact and belongs to the certificate") from None


def _signer_text(data: bytes | memoryview, name: str) -> str:
    t = find_trailer(data, name)
    if t is None or t.id_type != PKEY_ID_PKCS7:
        return ""
    start = t.content_len + t.signer_len + t.key_id_len
    try:
        signer = parse_pkcs7(bytes(data[start:start + t.sig_len]), name)
    except ModuleFormatError:
        return ""
    return f" (signer '{signer.issuer_cn}')" if signer.issuer_cn else ""


# --- worker processes --------------------------------------------------------------------
# The signer (with its private key, which cannot be pickled) reaches the
# workers through fork: it is stored here before the pool starts.

_WORKER_SIGNER: ModuleSigner | None = None


def _worker_sign(paths: list[str]) -> list[SignResult]:
    assert _WORKER_SIGNER is not None
    return _WORKER_SIGNER.sign_chunk(paths)


def _sign_in_workers(signer: ModuleSigner, paths: Sequence[str], jobs: int) -> list[SignResult]:
    from kmodkit._util.pool import chunks, fan_out

    global _WORKER_SIGNER
    _WORKER_SIGNER = signer
    try:
        return [r for done in fan_out(_worker_sign, chunks(paths, jobs, 2, _CHUNK), jobs) for r in done]
    finally:
        _WORKER_SIGNER = None
