"""Digest and public-key algorithms of module signatures, as tables.

The kernel names a module's digest by the OID in its PKCS#7 SignerInfo and
its signature algorithm by the OID next to it (crypto/asymmetric_keys/
pkcs7_parser.c, pkcs7_sig_note_pkey_algo).  The digest OIDs have one table,
:data:`kmodkit.modfile.signature.DIGEST_OIDS` (the reader below this package
names digests with it too); everything else kmodkit needs to know about an
algorithm lives in one row here.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from kmodkit.errors import UserError
from kmodkit.modfile.signature import DIGEST_OIDS


@dataclass(frozen=True)
class _HashRow:
    hashlib_name: str  # name hashlib.new() takes
    size: int  # digest size in bytes
    rsa_oid: str  # sha*WithRSAEncryption (kept for reading other signers' messages)
    ecdsa_oid: str  # ecdsa-with-SHA*: what the signatureAlgorithm says for EC keys


class HashAlgorithm(enum.Enum):
    """A digest a module signature may use; the value is the name sign-file and modinfo use."""

    SHA1 = "sha1"
    SHA224 = "sha224"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"
    # SHA-3 digests are read by kernels that carry "crypto: pkcs7 - Add SHA-3
    # support" and "module: enable automatic module signing with FIPS 202 SHA-3"
    SHA3_256 = "sha3-256"
    SHA3_384 = "sha3-384"
    SHA3_512 = "sha3-512"

    @property
    def oid(self) -> str:
        """The digestAlgorithm OID."""
        return _OID_OF[self]

    @property
    def digest_size(self) -> int:
        """Digest length in bytes."""
        return _HASHES[self].size

    @property
    def ecdsa_oid(self) -> str:
        """The ecdsa-with-<hash> signatureAlgorithm OID."""
        return _HASHES[self].ecdsa_oid

    def new(self) -> "hashlib._Hash":
        """A fresh hashlib object for this digest."""
        return hashlib.new(_HASHES[self].hashlib_name)

    def crypto(self) -> hashes.HashAlgorithm:
        """The matching :mod:`cryptography` hash object."""
        return _CRYPTO[self]()

    @classmethod
    def from_name(cls, name: str) -> HashAlgorithm:
        """The algorithm called ``name`` (``sha256``, ``SHA-256``); UserError for an unknown name."""
        key = name.strip().lower().replace("_", "-")
        if key.startswith("sha-"):
            key = "sha" + key[4:]
        for alg in cls:
            if alg.value == key:
                return alg
        known = ", ".join(a.value for a in cls)
        raise UserError(name, "unknown hash algorithm", f"use one of {known}")

    @classmethod
    def from_oid(cls, oid: str) -> HashAlgorithm | None:
        """The algorithm whose digestAlgorithm OID is ``oid``, or None when unknown."""
        return _BY_OID.get(oid)


_HASHES = {
    HashAlgorithm.SHA1: _HashRow("sha1", 20, "1.2.840.113549.1.1.5", "1.2.840.10045.4.1"),
    HashAlgorithm.SHA224: _HashRow("sha224", 28, "1.2.840.113549.1.1.14", "1.2.840.10045.4.3.1"),
    HashAlgorithm.SHA256: _HashRow("sha256", 32, "1.2.840.113549.1.1.11", "1.2.840.10045.4.3.2"),
    HashAlgorithm.SHA384: _HashRow("sha384", 48, "1.2.840.113549.1.1.12", "1.2.840.10045.4.3.3"),
    HashAlgorithm.SHA512: _HashRow("sha512", 64, "1.2.840.113549.1.1.13", "1.2.840.10045.4.3.4"),
    HashAlgorithm.SHA3_256: _HashRow("sha3_256", 32, "2.16.840.1.101.3.4.3.14", "2.16.840.1.101.3.4.3.10"),
    HashAlgorithm.SHA3_384: _HashRow("sha3_384", 48, "2.16.840.1.101.3.4.3.15", "2.16.840.1.101.3.4.3.11"),
    HashAlgorithm.SHA3_512: _HashRow("sha3_512", 64, "2.16.840.1.101.3.4.3.16", "2.16.840.1.101.3.4.3.12"),
}
_BY_OID = {oid: HashAlgorithm(name) for oid, name in DIGEST_OIDS.items() if name in {a.value for a in HashAlgorithm}}
_OID_OF = {alg: oid for oid, alg in _BY_OID.items()}
_CRYPTO: dict[HashAlgorithm, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA1: hashes.SHA1,
    HashAlgorithm.SHA224: hashes.SHA224,
    HashAlgorithm.SHA256: hashes.SHA256,
    HashAlgorithm.SHA384: hashes.SHA384,
    HashAlgorithm.SHA512: hashes.SHA512,
    HashAlgorithm.SHA3_256: hashes.SHA3_256,
    HashAlgorithm.SHA3_384: hashes.SHA3_384,
    HashAlgorithm.SHA3_512: hashes.SHA3_512,
}

#: hashes `kmodkit sign` offers (what CONFIG_MODULE_SIG_SHA* of current kernels choose from)
SIGNING_HASHES = (HashAlgorithm.SHA256, HashAlgorithm.SHA384, HashAlgorithm.SHA512)


class KeyType(enum.Enum):
    """The public-key algorithm of a signing key."""

    RSA = "rsa"
    ECDSA = "ecdsa"


#: rsaEncryption: what OpenSSL's CMS (and so sign-file) writes as signatureAlgorithm for RSA keys
RSA_ENCRYPTION_OID = "1.2.840.113549.1.1.1"
#: signatureAlgorithm OIDs the kernel takes for RSA PKCS#1 v1.5 (pkcs7_sig_note_pkey_algo)
RSA_SIGNATURE_OIDS = frozenset({RSA_ENCRYPTION_OID} | {row.rsa_oid for row in _HASHES.values()})
#: signatureAlgorithm OIDs the kernel takes for ECDSA
ECDSA_SIGNATURE_OIDS = frozenset({row.ecdsa_oid for row in _HASHES.values()})

#: curves `keys new --curve` offers, as the kernel's ecdsa driver knows them (ecdsa-nist-p256/p384)
CURVES = ("P-256", "P-384")
