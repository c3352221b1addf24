"""Where a signature comes from: a private key file, or a key held in a PKCS#11 token."""

from __future__ import annotations

from typing import Protocol

from kmodkit.signing.algorithms import HashAlgorithm, KeyType
from kmodkit.signing.keys import PrivateKey, PublicKey, key_type_of, sign_digest_with


class KeySource(Protocol):
    """Something that signs a precomputed digest with one private key."""

    #: a label for messages (a path, or a pkcs11: URI without its PIN)
    name: str
    #: RSA or ECDSA
    key_type: KeyType
    #: whether the key survives fork() (a file key does; a PKCS#11 session does not)
    forkable: bool

    def public_key(self) -> PublicKey:
        """The matching public key."""
        ...

    def sign_digest(self, digest: bytes, alg: HashAlgorithm) -> bytes:
        """The signature of ``digest``: PKCS#1 v1.5 for RSA, DER (r, s) for ECDSA."""
        ...


class FileKey:
    """A private key loaded from a PEM file (see :func:`kmodkit.signing.keys.load_private_key`)."""

    forkable = True

    def __init__(self, key: PrivateKey, name: str) -> None:
        #: the key file's path, for messages
        self.name = name
        #: RSA or ECDSA
        self.key_type = key_type_of(key.public_key())
        self._key = key

    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self._key.public_key()

    def sign_digest(self, digest: bytes, alg: HashAlgorithm) -> bytes:
        """The signature of ``digest``."""
        return sign_digest_with(self._key, digest, alg)

    def __repr__(self) -> str:  # never show key material
        return f"FileKey({self.name!r}, {self.key_type.value})"
