"""Signing keys and certificates: create them as the kernel's build does, load them safely.

A new key pair follows certs/default_x509.genkey: a self-signed X.509 v3
certificate with basicConstraints CA:FALSE, keyUsage digitalSignature,
subject and authority key identifiers, plus extendedKeyUsage codeSigning.
The private key file is created with mode 0600 and is never printed.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
from dataclasses import dataclass
from typing import Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kmodkit.errors import UserError, from_oserror
from kmodkit.signing.algorithms import CURVES, HashAlgorithm, KeyType
from kmodkit.fileio import JOURNAL_NAME, commit_files, finish_commit, remove_stale_temps

log = logging.getLogger(__name__)

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]

#: file names `keys new` writes inside its output directory
KEY_FILE = "signing_key.pem"
CERT_DER_FILE = "signing_cert.der"
CERT_PEM_FILE = "signing_cert.pem"

_CURVE_CLASSES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}


def format_key_id(raw: bytes) -> str:
    """Bytes as modinfo prints ``sig_key``: upper-case hex pairs joined by colons ("" for none)."""
    return ":".join(f"{b:02X}" for b in raw)


def serial_key_id(cert: x509.Certificate) -> bytes:
    """The serial number's big-endian bytes: what modinfo shows as ``sig_key`` for sign-file's default form."""
    serial = cert.serial_number
    return serial.to_bytes((serial.bit_length() + 7) // 8, "big") if serial > 0 else b""


def subject_key_id(cert: x509.Certificate) -> bytes | None:
    """The certificate's subjectKeyIdentifier, or None when it has none."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def common_name(name: x509.Name) -> str:
    """The first commonName of ``name``; the last attribute's value without one (as kmod shows ``signer``)."""
    attrs = list(name)
    for attr in attrs:
        if attr.oid == NameOID.COMMON_NAME:
            return str(attr.value)
    return str(attrs[-1].value) if attrs else ""


@dataclass(frozen=True)
class KeyRequest:
    """What `kmodkit keys new` is asked to make; validated when built."""

    out_dir: str  #: directory that receives the key and certificate files
    key_type: KeyType = KeyType.RSA  #: RSA or ECDSA
    bits: int = 4096  #: RSA modulus size (certs/default_x509.genkey uses 4096)
    curve: str = "P-384"  #: ECDSA curve
    hash: HashAlgorithm = HashAlgorithm.SHA256  #: digest of the certificate's self-signature
    common_name: str = "kmodkit module signing key"  #: subject and issuer CN
    days: int = 36500  #: validity (the kernel does not check dates; shim and MOK tools may)
    passphrase: bytes | None = None  #: encrypts the private key PEM when set
    overwrite: bool = False  #: replace existing files in out_dir

    def __post_init__(self) -> None:
        if self.key_type is KeyType.RSA and not 2048 <= self.bits <= 16384:
            raise UserError(f"--bits {self.bits}", "RSA keys must have 2048 to 16384 bits", "use --bits 4096")
        if self.key_type is KeyType.ECDSA and self.curve not in CURVES:
            raise UserError(f"--curve {self.curve}", "the kernel verifies only NIST P-256 and P-384 keys",
                            "use --curve P-256 or --curve P-384")
        if self.days <= 0:
            raise UserError(f"--days {self.days}", "validity must be at least one day")
        if not self.common_name.strip():
            raise UserError("--cn", "the common name is empty", "give a name that says whose key it is")
        if self.passphrase is not None and not self.passphrase:
            raise UserError("passphrase", "is empty", "give a non-empty passphrase or none at all")


@dataclass(frozen=True)
class NewKey:
    """The files `keys new` wrote and the identifiers the kernel will show."""

    key_path: str  #: private key, PEM, mode 0600
    cert_der_path: str  #: certificate, DER (what mokutil and sign-file take)
    cert_pem_path: str  #: certificate, PEM
    subject: str  #: the certificate subject as RFC 4514 text
    sig_key: str  #: modinfo's ``sig_key`` for modules signed in the default form (the serial)
    subject_key_id: str  #: modinfo's ``sig_key`` for modules signed with ``--keyid``
    key_type: KeyType  #: RSA or ECDSA
    encrypted: bool  #: whether the private key PEM is passphrase-protected

    @property
    def mokutil_command(self) -> list[str]:
        """The command that enrols the certificate in the MOK list on Secure Boot machines."""
        return ["mokutil", "--import", self.cert_der_path]

    def to_json(self) -> dict[str, object]:
        """The record as JSON-ready data (paths and identifiers; never key material)."""
        return {
            "key": self.key_path, "cert_der": self.cert_der_path, "cert_pem": self.cert_pem_path,
            "subject": self.subject, "sig_key": self.sig_key, "subject_key_id": self.subject_key_id,
            "key_type": self.key_type.value, "encrypted": self.encrypted, "mokutil": self.mokutil_command,
        }


def create_key(req: KeyRequest) -> NewKey:
    """Generate a key pair and self-signed certificate into ``req.out_dir``.

    The three files are replaced together through :func:`kmodkit.fileio.commit_files`
    (temps, a journal, renames with the key last): a run killed before the
    journal leaves the old pair; one killed after it is finished by the next
    writer or reader of the directory (:func:`kmodkit.fileio.finish_commit`).
    When a finished replacement is found and ``req.overwrite`` is not set, the
    finished pair is what comes back.

    Raises :class:`UserError` when a file exists already (unless
    ``req.overwrite``) or the directory cannot be written.
    """
    paths = [os.path.join(req.out_dir, n) for n in (KEY_FILE, CERT_DER_FILE, CERT_PEM_FILE)]
    try:
        os.makedirs(req.out_dir, mode=0o700, exist_ok=True)
        finished = finish_commit(req.out_dir)
        remove_stale_temps(req.out_dir)  # a killed run's temps, one of which may hold a private key
    except OSError as exc:
        raise from_oserror(exc, req.out_dir) from None
    if finished and not req.overwrite:
        log.warning("%s: finished the replacement of its key pair that an interrupted 'keys new' left", req.out_dir)
        return describe_key(req.out_dir)
    if not req.overwrite:
        for p in paths:
            if os.path.lexists(p):
                raise UserError(p, "exists already", "choose another --out directory or pass --force to replace it")
    key: PrivateKey
    if req.key_type is KeyType.RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=req.bits)
    else:
        key = ec.generate_private_key(_CURVE_CLASSES[req.curve]())
    cert = _self_signed(key, req)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(req.passphrase) if req.passphrase else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    # the key last: a certificate never names a key not yet in place
    files = {CERT_PEM_FILE: cert.public_bytes(serialization.Encoding.PEM),
             CERT_DER_FILE: cert.public_bytes(serialization.Encoding.DER), KEY_FILE: key_pem}
    try:
        commit_files(req.out_dir, files, {KEY_FILE: 0o600})
    except OSError as exc:
        raise from_oserror(exc, req.out_dir) from None
    return describe_key(req.out_dir)


def interrupted_hint(key_path: str) -> str | None:
    """The fix when the key at ``key_path`` sits in a directory an interrupted `keys new` left half-replaced."""
    directory = os.path.dirname(os.path.abspath(key_path))
    if not os.path.lexists(os.path.join(directory, JOURNAL_NAME)):
        return None
    return f"an interrupted 'kmodkit keys new' left {directory} half-replaced: run 'kmodkit keys new --out {directory}'" \
        " to finish it"


def describe_key(out_dir: str) -> NewKey:
    """The :class:`NewKey` record of the key pair `keys new` wrote in ``out_dir`` (errors of loading the certificate)."""
    key_path, der_path, pem_path = (os.path.join(out_dir, n) for n in (KEY_FILE, CERT_DER_FILE, CERT_PEM_FILE))
    cert = load_certificate(der_path)
    public = cert.public_key()
    assert isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
    ski = subject_key_id(cert) or b""
    try:
        with open(key_path, "rb") as f:
            encrypted = b"ENCRYPTED" in f.read(4096)
    except OSError as exc:
        raise from_oserror(exc, key_path) from None
    return NewKey(key_path, der_path, pem_path, cert.subject.rfc4514_string(), format_key_id(serial_key_id(cert)),
                  format_key_id(ski), key_type_of(public), encrypted)


def _self_signed(key: PrivateKey, req: KeyRequest) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, req.common_name)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=req.days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    )
    alg = req.hash.crypto()
    assert isinstance(alg, (hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512, hashes.SHA3_256,
                            hashes.SHA3_384, hashes.SHA3_512)), f"{req.hash.value} cannot sign a certificate"
    return builder.sign(key, alg)


# --- loading ---------------------------------------------------------------------------


def load_certificate_bytes(data: bytes, name: str) -> x509.Certificate:
    """A certificate from DER or PEM bytes (both are accepted, as sign-file does); UserError if neither."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise UserError(name, f"is not an X.509 certificate in DER or PEM ({exc})",
                        "give the certificate file (e.g. signing_cert.der), not the key") from None


def load_certificate(path: str) -> x509.Certificate:
    """The certificate at ``path``, DER or PEM; NotFoundError/UserError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise from_oserror(exc, path) from None
    return load_certificate_bytes(data, path)


def expiry_warning(cert: x509.Certificate, name: str) -> str | None:
    """A warning when the certificate is outside its validity period, None when it is valid today.

    The kernel does not check validity dates of module-signing keys
    (x509_check_for_self_signed and pkcs7_verify ignore them), so this is
    only a warning.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc < now:
        return (f"{name}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; the kernel ignores "
                "validity dates, but shim/MOK tools and auditors may not")
    if cert.not_valid_before_utc > now:
        return f"{name}: certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
    return None


def check_key_permissions(path: str, allow_insecure: bool) -> None:
    """Refuse a private key file that group or others may read (UserError with the chmod that fixes it)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise from_oserror(exc, path) from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(path, "is not a regular file", "give the private key file (PEM)")
    if st.st_mode & 0o077 and not allow_insecure:
        raise UserError(path, f"private key is readable by group or others (mode {st.st_mode & 0o777:04o})",
                        f"run 'chmod 600 {path}', or pass --allow-insecure-key")


def key_is_encrypted(path: str) -> bool:
    """Whether the PEM private key at ``path`` needs a passphrase (False when unreadable: loading will say)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"ENCRYPTED" in head


def load_private_key(path: str, passphrase: bytes | None, allow_insecure: bool = False) -> PrivateKey:
    """The RSA or EC private key in the PEM file at ``path``.

    Raises :class:`UserError` for a group/other-readable file (unless
    ``allow_insecure``), a wrong or missing passphrase, or a file that holds
    no supported key.  The message never contains key material.
    """
    check_key_permissions(path, allow_insecure)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise from_oserror(exc, path) from None
    encrypted = b"ENCRYPTED" in data[:4096]
    if encrypted and not passphrase:
        raise UserError(path, "private key is encrypted and no passphrase was given",
                        "use --passphrase-file FILE, set KBUILD_SIGN_PIN, or run on a terminal to be asked")
    try:
        # the costly RSA consistency check (~0.1 s for 4096 bits) is replaced by ModuleSigner's
        # check that a test signature verifies with the certificate's public key
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None,
                                                 unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise UserError(path, "wrong passphrase for the private key", "check --passphrase-file or KBUILD_SIGN_PIN") \
                from None
        hint = "it looks like a certificate" if b"CERTIFICATE" in data[:100] else type(exc).__name__
        raise UserError(path, f"is not a PEM private key ({hint})", "give the private key file (--key)") from None
    except UnsupportedAlgorithm:
        raise UserError(path, "holds a key type the kernel cannot verify", "use an RSA or ECDSA key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise UserError(path, f"holds a {type(key).__name__.lstrip('_')}, not an RSA or ECDSA key",
                        "use an RSA or ECDSA key")
    return key


def key_type_of(public: PublicKey) -> KeyType:
    """RSA or ECDSA, for a public key."""
    return KeyType.RSA if isinstance(public, rsa.RSAPublicKey) else KeyType.ECDSA


def public_keys_match(a: PublicKey, b: PublicKey) -> bool:
    """Whether two public keys are the same key."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(serialization.Encoding.DER, fmt)


def sign_digest_with(key: PrivateKey, digest: bytes, alg: HashAlgorithm) -> bytes:
    """Sign a precomputed digest: PKCS#1 v1.5 for RSA, DER (r, s) for ECDSA."""
    prehashed = utils.Prehashed(alg.crypto())
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), prehashed)
    return key.sign(digest, ec.ECDSA(prehashed))
