"""The certificates a verification trusts, looked up as the kernel looks them up.

The kernel finds the key for a module signature by the SignerInfo's
``issuerAndSerialNumber`` or ``subjectKeyIdentifier`` (pkcs7_find_key ->
find_asymmetric_key on the ".builtin_trusted_keys" and secondary keyrings,
crypto/asymmetric_keys/asymmetric_type.c: the "ex:" id is serial + issuer,
the "sk:" id is the subjectKeyIdentifier).  :class:`TrustStore` keeps both
indexes, with each certificate's public key loaded once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509

from kmodkit.errors import UserError, from_oserror
from kmodkit.modfile import der as _der
from kmodkit.modfile.signature import Pkcs7Signer
from kmodkit.signing.algorithms import KeyType
from kmodkit.signing.keys import (
    PublicKey,
    common_name,
    format_key_id,
    key_type_of,
    load_certificate_bytes,
    serial_key_id,
    subject_key_id,
)


@dataclass(frozen=True)
class TrustedCert:
    """One certificate a verification may use, with its public key ready."""

    subject: str  #: subject as RFC 4514 text
    subject_cn: str  #: the subject's commonName (what modinfo's ``signer`` shows for its signatures)
    issuer_der: bytes  #: the issuer Name exactly as encoded in the certificate
    serial: int  #: serial number
    key_id: str  #: modinfo-style serial (``sig_key`` of issuer-and-serial signatures)
    subject_key_id: str | None  #: modinfo-style subjectKeyIdentifier, None when absent
    key_type: KeyType  #: RSA or ECDSA
    key_bits: int  #: modulus or curve size
    source: str  #: where it came from: a file path or ``vmlinuz-RELEASE``
    trusted: bool  #: counts as trusted (False for certificates only used to check, e.g. your own key vs a kernel)
    der: bytes = field(repr=False)  #: the certificate's DER
    public_key: PublicKey = field(repr=False, compare=False)  #: loaded once, used for every module

    def to_json(self) -> dict[str, object]:
        """JSON-ready data (no key material: a certificate is public)."""
        return {"subject": self.subject, "key_id": self.key_id, "subject_key_id": self.subject_key_id,
                "key_type": self.key_type.value, "key_bits": self.key_bits, "source": self.source,
                "trusted": self.trusted}


def issuer_der_of(cert_der: bytes) -> bytes:
    """The issuer Name of a DER certificate, byte for byte (ValueError for a malformed certificate)."""
    top = _der.read(cert_der, 0)
    tbs = _der.children(cert_der, _der.children(cert_der, top)[0])
    idx = 1 if tbs and tbs[0].tag == 0xA0 else 0  # [0] version is absent in v1 certificates
    issuer = tbs[idx + 2]
    return cert_der[issuer.start:issuer.end]


def make_trusted_cert(cert_der: bytes, source: str, trusted: bool = True) -> TrustedCert:
    """A :class:`TrustedCert` from DER; UserError naming ``source`` when it does not parse."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    cert = load_certificate_bytes(cert_der, source)
    try:
        public = cert.public_key()
    except ValueError as exc:
        raise UserError(source, f"certificate key cannot be loaded ({exc})") from None
    if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise UserError(source, f"certificate holds a {type(public).__name__.lstrip('_')}; "
                        "the kernel verifies modules with RSA and ECDSA keys only")
    ski = subject_key_id(cert)
    bits = public.key_size if isinstance(public, rsa.RSAPublicKey) else public.curve.key_size
    return TrustedCert(
        subject=cert.subject.rfc4514_string(), subject_cn=common_name(cert.subject),
        issuer_der=issuer_der_of(cert_der), serial=cert.serial_number,
        key_id=format_key_id(serial_key_id(cert)), subject_key_id=format_key_id(ski) if ski else None,
        key_type=key_type_of(public), key_bits=bits, source=source, trusted=trusted, der=cert_der,
        public_key=public,
    )


class TrustStore:
    """Certificates by issuer+serial and by subjectKeyIdentifier; empty when built."""

    def __init__(self) -> None:
        self._by_serial: dict[tuple[bytes, int], TrustedCert] = {}
        self._by_ski: dict[bytes, TrustedCert] = {}
        #: every certificate, in the order added
        self.certs: list[TrustedCert] = []

    def add(self, cert: TrustedCert) -> None:
        """Add a certificate; a trusted copy wins over an untrusted one of the same key."""
        key = (cert.issuer_der, cert.serial)
        old = self._by_serial.get(key)
        if old is not None and (old.trusted or not cert.trusted):
            return
        self._by_serial[key] = cert
        if cert.subject_key_id:
            self._by_ski[bytes.fromhex(cert.subject_key_id.replace(":", ""))] = cert
        self.certs = [c for c in self.certs if (c.issuer_der, c.serial) != key] + [cert]

    def add_der(self, cert_der: bytes, source: str, trusted: bool = True) -> TrustedCert:
        """Parse and add one DER (or PEM) certificate; returns it."""
        cert = make_trusted_cert(cert_der, source, trusted)
        self.add(cert)
        return cert

    def add_files(self, paths: Iterable[str], trusted: bool = True) -> None:
        """Add certificate files (DER or PEM; a PEM file may hold several)."""
        for path in paths:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise from_oserror(exc, path) from None
            if data.lstrip().startswith(b"-----BEGIN"):
                try:
                    certs = x509.load_pem_x509_certificates(data)
                except ValueError as exc:
                    raise UserError(path, f"is not a PEM certificate file ({exc})") from None
                from cryptography.hazmat.primitives.serialization import Encoding

                for c in certs:
                    self.add_der(c.public_bytes(Encoding.DER), path, trusted)
            else:
                self.add_der(data, path, trusted)

    def add_dir(self, directory: str, trusted: bool = True) -> int:
        """Add every certificate file (*.der, *.x509, *.crt, *.cer, *.pem) in ``directory``; returns how many files."""
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise from_oserror(exc, directory) from None
        files = [os.path.join(directory, n) for n in names if n.endswith((".der", ".x509", ".crt", ".cer", ".pem"))]
        files = [f for f in files if not _is_private_key(f)]  # a key directory holds signing_key.pem too
        if not files:
            raise UserError(directory, "holds no certificate files (.der, .x509, .crt, .cer, .pem)")
        self.add_files(files, trusted)
        return len(files)

    def find(self, signer: Pkcs7Signer) -> TrustedCert | None:
        """The certificate the kernel would use for ``signer``, or None when none matches."""
        if signer.key_id is not None:
            return self._by_ski.get(signer.key_id)
        if signer.issuer_der is None or signer.serial is None:
            return None
        return self._by_serial.get((signer.issuer_der, signer.serial))

    def __len__(self) -> int:
        return len(self.certs)


def _is_private_key(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"PRIVATE KEY" in f.read(64)
    except OSError:
        return False
