"""The module signature trailer, and the few facts its PKCS#7 message carries.

A signed module is laid out as (include/linux/module_signature.h)::

    [ module ][ signer ][ key id ][ signature ][ struct module_signature ][ "~Module signature appended~\\n" ]

``struct module_signature`` is 12 bytes: ``algo, hash, id_type, signer_len,
key_id_len`` (u8 each), 3 bytes of padding and ``sig_len`` (big-endian u32).
Modern kernels always write ``id_type = PKEY_ID_PKCS7`` with zero signer and
key-id lengths and put a detached PKCS#7 SignedData in ``signature``.

This module only *reads* the trailer; creating and verifying signatures is
:mod:`kmodkit.signing`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kmodkit.errors import ModuleFormatError

if TYPE_CHECKING:
    from kmodkit.modfile.elf import Buffer

MAGIC = b"~Module signature appended~\n"
_INFO = struct.Struct(">BBBBB3sI")
#: bytes taken by the fixed part of the trailer: struct module_signature + magic
TRAILER_SIZE = _INFO.size + len(MAGIC)


class IdType(enum.IntEnum):
    """``enum pkey_id_type`` of the trailer."""

    PGP = 0
    X509 = 1
    PKCS7 = 2


#: ``id_type`` of every module signature current kernels check (include/linux/module_signature.h)
PKEY_ID_PKCS7 = IdType.PKCS7

#: names kmod shows for ``sig_id`` (libkmod-signature.c)
ID_TYPE_NAMES = {IdType.PGP: "PGP", IdType.X509: "X509", IdType.PKCS7: "PKCS#7"}
#: ``enum pkey_hash_algo`` as kmod names it
HASH_NAMES = ("md4", "md5", "sha1", "rmd160", "sha256", "sha384", "sha512", "sha224", "sm3")
#: ``enum pkey_algo`` as kmod names it
ALGO_NAMES = ("DSA", "RSA")

#: digest OIDs of PKCS#7 SignerInfo -> kmod's hash name
DIGEST_OIDS = {
    "1.2.840.113549.2.4": "md4",
    "1.2.840.113549.2.5": "md5",
    "1.3.14.3.2.26": "sha1",
    "1.3.36.3.2.1": "rmd160",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "1.2.156.10197.1.401": "sm3",
    "2.16.840.1.101.3.4.2.8": "sha3-256",
    "2.16.840.1.101.3.4.2.9": "sha3-384",
    "2.16.840.1.101.3.4.2.10": "sha3-512",
}


@dataclass(frozen=True)
class Trailer:
    """The parsed fixed part of a module signature."""

    algo: int  #: enum pkey_algo (0 in PKCS#7 trailers: the PKCS#7 says)
    hash: int  #: enum pkey_hash_algo (0 in PKCS#7 trailers)
    id_type: int  #: enum pkey_id_type; 2 (PKCS#7) for every current kernel
    signer_len: int  #: length of the signer name before the key id (0 for PKCS#7)
    key_id_len: int  #: length of the key id before the signature (0 for PKCS#7)
    sig_len: int  #: length of the signature blob (the PKCS#7 DER)
    content_len: int  #: length of the module proper: everything before the signer name
    file_len: int  #: length of the whole (decompressed) file


@dataclass(frozen=True)
class TrailerFields:
    """``struct module_signature`` exactly as stored before the magic, nothing judged (the reader's
    :func:`find_trailer` and the kernel model's mod_check_sig judge it, each its own way)."""

    algo: int  #: enum pkey_algo
    hash: int  #: enum pkey_hash_algo
    id_type: int  #: enum pkey_id_type (:data:`PKEY_ID_PKCS7` for every current kernel)
    signer_len: int  #: length of a signer name before the key id
    key_id_len: int  #: length of a key id before the signature
    pad: bytes  #: the three padding bytes
    sig_len: int  #: length of the signature blob (big-endian in the file)

    @property
    def params_zero(self) -> bool:
        """Whether every field the kernel wants 0 in a PKCS#7 trailer is 0 (algo, hash, lengths, padding)."""
        return not (self.algo or self.hash or self.signer_len or self.key_id_len or any(self.pad))


def has_signature_magic(data: Buffer) -> bool:
    """Whether ``data`` ends with ``~Module signature appended~\\n``."""
    size = len(data)
    return size >= len(MAGIC) and bytes(data[size - len(MAGIC):]) == MAGIC


def trailer_fields(data: Buffer) -> TrailerFields | None:
    """The raw ``struct module_signature`` before the magic; None without the magic or room for the struct."""
    size = len(data)
    if size < TRAILER_SIZE or not has_signature_magic(data):
        return None
    return TrailerFields(*_INFO.unpack_from(data, size - TRAILER_SIZE))


def trailer_bytes(sig_len: int) -> bytes:
    """What sign-file appends after a PKCS#7 signature of ``sig_len`` bytes: the struct (PKCS#7, all else 0)
    and the magic."""
    return _INFO.pack(0, 0, PKEY_ID_PKCS7, 0, 0, b"\0\0\0", sig_len) + MAGIC


def find_trailer(data: Buffer, name: str = "<memory>") -> Trailer | None:
    """The trailer at the end of ``data``, or None when the module is unsigned.

    Raises :class:`ModuleFormatError` when the magic is present but the
    trailer cannot be right: a zero-length signature, or lengths that cover
    the whole file, leaving no module before the signature.
    """
    f = trailer_fields(data)
    if f is None:
        return None
    size = len(data)
    algo, hash_, id_type, signer_len, key_id_len, sig_len = f.algo, f.hash, f.id_type, f.signer_len, f.key_id_len, \
        f.sig_len
    body = size - TRAILER_SIZE
    if sig_len == 0:
        raise ModuleFormatError(name, "signature trailer says the signature is 0 bytes long")
    claimed = sig_len + key_id_len + signer_len
    if claimed == body:
        raise ModuleFormatError(
            name, f"signature trailer claims all {body} bytes before it as signature data: no module is left")
    if claimed > body:
        raise ModuleFormatError(
            name, f"signature trailer claims {claimed} bytes of signature data, but only {body} bytes precede it")
    return Trailer(algo, hash_, id_type, signer_len, key_id_len, sig_len, body - claimed, size)


def trailer_is_kmod_valid(t: Trailer) -> bool:
    """Whether kmod would show this trailer's fields (it ignores out-of-range enums)."""
    return t.algo < len(ALGO_NAMES) and t.hash < len(HASH_NAMES) and t.id_type < len(ID_TYPE_NAMES)


@dataclass(frozen=True)
class Pkcs7Signer:
    """What the first SignerInfo of a module's PKCS#7 SignedData says."""

    issuer_cn: str | None  #: commonName of the issuer (issuer-and-serial form), None otherwise
    issuer_der: bytes | None  #: DER of the issuer Name (issuer-and-serial form)
    serial: int | None  #: certificate serial number (issuer-and-serial form)
    key_id: bytes | None  #: subjectKeyIdentifier (key-id form, sign-file -k)
    digest_oid: str  #: OID of the digest algorithm
    hash_name: str | None  #: kmod's name for the digest ("sha256"), None if unknown
    signature_oid: str  #: OID of the signature algorithm (rsaEncryption, ecdsa-with-SHA256, ...)
    signature: bytes  #: the signature value (encryptedDigest)
    signed_attrs: bytes | None  #: DER of the signed attributes as signed (SET OF), None when absent
    certificates: tuple[bytes, ...]  #: DER certificates carried in the message (usually none)

    @property
    def key_identifier(self) -> bytes:
        """Bytes kmod shows as ``sig_key``: the serial's big-endian bytes, or the key id."""
        if self.key_id is not None:
            return self.key_id
        return serial_bytes(self.serial or 0)

    @property
    def issuer(self) -> str | None:
        """The issuer's name as RFC 4514-style text (``CN=...,O=...``), or None in the key-id form."""
        if self.issuer_der is None:
            return None
        from kmodkit.modfile import der as d

        parts = []
        top = d.read(self.issuer_der, 0)
        for rdn in d.children(self.issuer_der, top):
            for ava in d.children(self.issuer_der, rdn):
                oid, value = d.children(self.issuer_der, ava)[:2]
                dotted = d.oid_dotted(self.issuer_der[oid.body:oid.end])
                text = self.issuer_der[value.body:value.end].decode("utf-8", "replace")
                parts.append(f"{_NAME_ATTRS.get(dotted, dotted)}={text}")
        return ",".join(reversed(parts))


#: short names of X.509 name attributes (RFC 4514 and OpenSSL's)
_NAME_ATTRS = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
    "1.2.840.113549.1.9.1": "emailAddress", "0.9.2342.19200300.100.1.25": "DC", "2.5.4.5": "serialNumber",
}


def serial_bytes(serial: int) -> bytes:
    """A serial number as OpenSSL's BN_bn2bin writes it (minimal big-endian, b"" for 0)."""
    return serial.to_bytes((serial.bit_length() + 7) // 8, "big") if serial > 0 else b""


_CN_OID = bytes.fromhex("550403")
_SIGNED_DATA_OID = bytes.fromhex("2a864886f70d010702")


#: messages parsed before, by length: (the bytes before the signature value, where it starts, the parse).
#: Modules signed by one key differ only in the signature's bytes, so a tree parses once per key.
_SEEN: dict[int, list[tuple[bytes, int, Pkcs7Signer]]] = {}


def parse_pkcs7(der: bytes, name: str = "<memory>") -> Pkcs7Signer:
    """Parse a module's detached PKCS#7 SignedData; :class:`ModuleFormatError` if it does not parse."""
    for prefix, start, parsed in _SEEN.get(len(der), ()):
        if der.startswith(prefix):
            # dataclasses.replace() re-runs __init__ through introspection: a copy of the
            # fields is ~20x cheaper, and this runs once per module of a tree
            copy = object.__new__(Pkcs7Signer)
            copy.__dict__.update(parsed.__dict__, signature=der[start:])
            return copy
    signer, start = _parse_pkcs7(der, name)
    if start + len(signer.signature) == len(der):  # nothing follows the signature: safe to reuse
        if len(_SEEN) >= 256:  # a tree has a handful of keys; garbage input must not grow this forever
            _SEEN.clear()
        seen = _SEEN.setdefault(len(der), [])
        if len(seen) < 8:
            seen.append((der[:start], start, signer))
    return signer


def _parse_pkcs7(der: bytes, name: str) -> tuple[Pkcs7Signer, int]:
    from kmodkit.modfile import der as d

    try:
        top = d.expect(d.read(der, 0), d.SEQUENCE, "ContentInfo")
        ctype, content = d.children(der, top)[:2]
        if der[ctype.body:ctype.end] != _SIGNED_DATA_OID:
            raise ValueError(f"content type {d.oid_dotted(der[ctype.body:ctype.end])} is not signedData")
        sd = d.expect(d.children(der, d.expect(content, 0xA0, "content"))[0], d.SEQUENCE, "SignedData")
        parts = d.children(der, sd)
        certs: tuple[bytes, ...] = ()
        signer_set = None
        for p in parts[3:]:
            if p.tag == 0xA0:
                certs = tuple(der[c.start:c.end] for c in d.children(der, p))
            elif p.tag == d.SET:
                signer_set = p
        if signer_set is None:
            raise ValueError("no SignerInfos")
        sis = d.children(der, signer_set)
        if not sis:
            raise ValueError("no SignerInfo")
        si = d.children(der, d.expect(sis[0], d.SEQUENCE, "SignerInfo"))
        if len(si) < 5:
            raise ValueError("SignerInfo is too short")
        sid = si[1]
        issuer_cn = issuer_der = None
        serial = key_id = None
        if sid.tag == d.SEQUENCE:
            iss, ser = d.children(der, sid)[:2]
            d.expect(iss, d.SEQUENCE, "issuer")
            d.expect(ser, d.INTEGER, "serialNumber")
            issuer_der = der[iss.start:iss.end]
            issuer_cn = _common_name(der, iss)
            serial = int.from_bytes(der[ser.body:ser.end], "big", signed=True)
        elif sid.tag == 0x80:
            key_id = der[sid.body:sid.end]
        else:
            raise ValueError(f"unknown SignerIdentifier tag 0x{sid.tag:02x}")
        dig = d.children(der, d.expect(si[2], d.SEQUENCE, "digestAlgorithm"))[0]
        digest_oid = d.oid_dotted(der[dig.body:dig.end])
        rest = si[3:]
        signed_attrs = None
        if rest and rest[0].tag == 0xA0:
            # signed attributes are signed as an explicit SET OF (RFC 5652 5.4)
            signed_attrs = b"\x31" + der[rest[0].start + 1:rest[0].end]
            rest = rest[1:]
        if len(rest) < 2:
            raise ValueError("SignerInfo has no signature")
        salg = d.children(der, d.expect(rest[0], d.SEQUENCE, "signatureAlgorithm"))[0]
        sig = d.expect(rest[1], d.OCTET_STRING, "signature")
        return Pkcs7Signer(
            issuer_cn=issuer_cn,
            issuer_der=issuer_der,
            serial=serial,
            key_id=key_id,
            digest_oid=digest_oid,
            hash_name=DIGEST_OIDS.get(digest_oid),
            signature_oid=d.oid_dotted(der[salg.body:salg.end]),
            signature=der[sig.body:sig.end],
            signed_attrs=signed_attrs,
            certificates=certs,
        ), sig.body
    except (ValueError, IndexError) as exc:
        raise ModuleFormatError(name, f"signature is not a valid PKCS#7 message ({exc})") from None


def _common_name(der: bytes, name: "object") -> str | None:
    # kmod (x509_name_to_str) takes the first commonName; with none, the last entry's value
    from kmodkit.modfile import der as d

    assert isinstance(name, d.Tlv)
    last = None
    for rdn in d.children(der, name):
        for ava in d.children(der, rdn):
            oid, value = d.children(der, ava)[:2]
            text = der[value.body:value.end].decode("utf-8", "replace")
            if der[oid.body:oid.end] == _CN_OID:
                return text
            last = text
    return last
