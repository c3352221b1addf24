"""The kernel's decision on a module's signature, as one model: its errno, its log line, and why.

What ``finit_module`` does with the signature of a module, in the kernel's
order: kernel/module/signing.c (module_sig_check, mod_verify_sig),
kernel/module_signature.c (mod_check_sig), the PKCS#7 parser
(crypto/asymmetric_keys/pkcs7.asn1 run by lib/asn1_decoder.c, with the checks
of pkcs7_parser.c), certs/system_keyring.c (verify_pkcs7_message_sig),
pkcs7_verify.c and pkcs7_trust.c.  Read in Debian's 6.1.192 and 6.12.117
sources, where these files are the same but for the algorithm tables below.
``kmodkit verify`` turns the result into its verdict and ``kmodkit load``
explains a refusal with it, so the two agree by construction.  Checked once
against a booted Debian 6.1.0-57-amd64 kernel (``kmodkit vm run``, each case
loaded with ``kmodkit load``): non-zero trailer fields, id type, SignerInfo
version value and tag, sha256WithRSAEncryption, signed attributes with and
without S/MIME capabilities, a changed byte under a trusted and an untrusted
key each gave the errno and the line predicted here.

Not modelled: the blacklist of module hashes (dbx/mokx: not in any file
kmodkit reads), the revocation list, indefinite-length (BER) encodings (the
kernel's decoder takes them, sign-file never writes them: kmodkit refuses
them as EBADMSG), certificate chains inside the message (a signer found
there is checked, its issuers are not), CRLs inside the message, and
SignerInfos after the first (their grammar is checked, their keys are not;
sign-file writes one).
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

from kmodkit.errors import KmodkitError, ModuleFormatError
from kmodkit.modfile import der as _der
from kmodkit.modfile.signature import (DIGEST_OIDS, MAGIC, PKEY_ID_PKCS7, TRAILER_SIZE, Pkcs7Signer,
                                      has_signature_magic, parse_pkcs7, trailer_fields)
from kmodkit.signing.algorithms import ECDSA_SIGNATURE_OIDS, RSA_ENCRYPTION_OID, HashAlgorithm
from kmodkit.signing.trust import TrustedCert, TrustStore

#: errors module_sig_check lets pass when signatures are not enforced (the module loads and taints the
#: kernel), with the words of its "Loading of %s is rejected" line when they are
SOFT_ERRORS = {
    _errno.ENODATA: "unsigned module",
    _errno.ENOPKG: "module with unsupported crypto",
    _errno.ENOKEY: "module with unavailable key",
}

#: digestAlgorithm OIDs pkcs7_sig_note_digest_algo takes (6.12; 6.1 also takes md4 and md5, and not the
#: SHA-3 ones); any other -> ENOPKG "Unsupported digest algo: <its enum OID number>"
KERNEL_DIGEST_OIDS = frozenset(
    {oid for oid, name in DIGEST_OIDS.items()
     if name in {"sha1", "sha224", "sha256", "sha384", "sha512", "sm3", "sha3-256", "sha3-384", "sha3-512"}}
    | {"1.2.643.7.1.1.2.2", "1.2.643.7.1.1.2.3"}  # streebog256, streebog512
)
#: digestEncryptionAlgorithm OIDs pkcs7_sig_note_pkey_algo takes: rsaEncryption only for RSA (sign-file's
#: form; sha256WithRSAEncryption is refused), ecdsa-with-*, and GOST; any other -> ENOPKG
KERNEL_PKEY_OIDS = frozenset({RSA_ENCRYPTION_OID} | ECDSA_SIGNATURE_OIDS
                             | {"1.2.643.7.1.1.1.1", "1.2.643.7.1.1.1.2"})  # gost2012PKey256/512

_SIGNED_DATA = "1.2.840.113549.1.7.2"
_DATA = "1.2.840.113549.1.7.1"
_MS_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_SMIME_CAPS = "1.2.840.113549.1.9.15"
_MS_AUTHENTICODE_ATTRS = {"1.3.6.1.4.1.311.2.1.11", "1.3.6.1.4.1.311.2.1.12"}  # msStatementType, msSpOpusInfo
_STRUCT = TRAILER_SIZE - len(MAGIC)  # sizeof(struct module_signature)
_ASN1_MAX = 65535  # asn1_ber_decoder refuses longer input with -EMSGSIZE


@dataclass(frozen=True)
class KernelSigCheck:
    """What the kernel decides about one module's signature (mod_verify_sig, before enforcement is applied)."""

    errno: int  #: 0 when the signature holds and its key is trusted, else mod_verify_sig's error (ENODATA: unsigned)
    log: str | None  #: the kernel's line on the way, after its level (the start of it where it ends in a number
    #: kmodkit cannot know), None when the kernel is silent
    problem: str | None  #: why, in words; None when accepted
    signer: Pkcs7Signer | None = None  #: the first SignerInfo, None when unsigned or unreadable
    cert: TrustedCert | None = None  #: the certificate that checked the signature (a trusted one, or one given only
    #: to check with), None when none matched
    signature_holds: bool | None = None  #: whether the signature verifies with ``cert``; None when not checked

    @property
    def accepted(self) -> bool:
        """Whether the kernel accepts the signature (sig_ok: no taint, loads under enforcement)."""
        return self.errno == 0

    @property
    def fatal(self) -> bool:
        """Whether the kernel refuses the module even when signatures are not enforced."""
        return self.errno != 0 and self.errno not in SOFT_ERRORS

    @property
    def errno_name(self) -> str | None:
        """The error's name (``EBADMSG``), None when accepted."""
        return None if self.errno == 0 else _errno.errorcode.get(self.errno, str(self.errno))

    def load_errno(self, enforced: bool) -> int:
        """What module_sig_check returns: 0, the error, or EKEYREJECTED for a soft one under enforcement.

        Lockdown (EPERM for a soft error without enforcement) is not
        included: it depends on the booted machine, not on the module.
        """
        if self.errno in SOFT_ERRORS:
            return _errno.EKEYREJECTED if enforced else 0
        return self.errno

    def rejection_line(self) -> str | None:
        """The kernel's "Loading of ... is rejected" line under enforcement, None for a fatal or no error."""
        reason = SOFT_ERRORS.get(self.errno)
        return f"Loading of {reason} is rejected" if reason else None


class _Refusal(Exception):
    def __init__(self, err: int, log: str | None, problem: str) -> None:
        super().__init__(problem)
        self.err, self.log, self.problem = err, log, problem


def length_after_sig_check(data: bytes | memoryview) -> int:
    """How much of the decompressed module ``data`` load_module() goes on with after module_sig_check
    (info->len): all of an unsigned file, less the magic when mod_check_sig refused the trailer, and the
    module without its signature once the trailer passed."""
    size = len(data)
    if not has_signature_magic(data):
        return size
    modlen = size - len(MAGIC)
    f = trailer_fields(data)
    if f is None or f.sig_len >= modlen - _STRUCT or f.id_type != PKEY_ID_PKCS7 or not f.params_zero:
        return modlen  # mod_check_sig refused it (or it is too short for one): only the magic came off
    return modlen - _STRUCT - f.sig_len


def check_module_signature(data: bytes | memoryview, store: TrustStore, name: str = "<memory>") -> KernelSigCheck:
    """The kernel's decision on the signature of the decompressed module ``data``, trusting ``store``'s
    trusted certificates (its untrusted ones only say whether the signature itself holds).  Never raises."""
    size = len(data)
    if not has_signature_magic(data):
        return KernelSigCheck(_errno.ENODATA, None, "no signature")
    modlen = size - len(MAGIC)  # module_sig_check cuts the magic off; mod_verify_sig reads the struct before it
    # struct module_signature as the kernel reads it, before anything judges it (mod_check_sig)
    f = trailer_fields(data)
    if f is None or modlen <= _STRUCT:
        return KernelSigCheck(_errno.EBADMSG, None, "the file is too short to hold a signature trailer")
    sig_len = f.sig_len
    if sig_len >= modlen - _STRUCT:
        return KernelSigCheck(_errno.EBADMSG, None, f"signature trailer claims {sig_len} bytes of signature, "
                              f"but only {modlen - _STRUCT} bytes precede it")
    if f.id_type != PKEY_ID_PKCS7:
        return KernelSigCheck(_errno.ENOPKG, "module: not signed with expected PKCS#7 message",
                              f"signature id type {f.id_type} is not PKCS#7 (the only kind kernels check)")
    if not f.params_zero:
        params = (f.algo, f.hash, f.signer_len, f.key_id_len, *f.pad)
        fields = ", ".join(f"{n}={v}" for n, v in zip(("algo", "hash", "signer_len", "key_id_len", "pad", "pad", "pad"),
                                                      params) if v)
        return KernelSigCheck(_errno.EBADMSG, "module: PKCS#7 signature info has unexpected non-zero params",
                              f"signature trailer has non-zero fields the kernel wants 0 ({fields})")
    content_len = modlen - _STRUCT - sig_len
    blob = bytes(data[content_len:content_len + sig_len])
    try:
        signer: Pkcs7Signer | None = parse_pkcs7(blob, name)
    except ModuleFormatError:
        signer = None
    try:
        embedded = _kernel_parse(blob)
    except _Refusal as r:
        return KernelSigCheck(r.err, r.log, r.problem, signer)
    if signer is None:  # the kernel's grammar takes it, the field reader does not: cannot go on
        return KernelSigCheck(_errno.EBADMSG, None, "signature is a PKCS#7 message kmodkit cannot read")
    return _verify(data, content_len, signer, embedded, store, name)


def _verify(data: bytes | memoryview, content_len: int, signer: Pkcs7Signer, embedded: list[bytes],
            store: TrustStore, name: str) -> KernelSigCheck:
    alg = HashAlgorithm.from_oid(signer.digest_oid)
    if alg is None:
        return KernelSigCheck(_errno.ENOPKG, None, f"kmodkit cannot compute {signer.hash_name or signer.digest_oid} "
                              "digests to check this signature", signer)
    h = alg.new()
    h.update(data[:content_len])
    digest = h.digest()
    # pkcs7_verify_one: a certificate the message carries for its signer (issuer and serial) checks it first
    carried = None
    if signer.key_id is None:
        for der in embedded:
            one = TrustStore()
            try:
                one.add_der(der, f"{name} (carried in the signature)", trusted=False)
            except KmodkitError:  # a key kmodkit cannot load: no check from it
                continue
            carried = one.find(signer)
            if carried is not None:
                break
    if carried is not None:
        problem = check_signature(signer, alg, digest, carried)
        if problem is not None:
            return KernelSigCheck(_errno.EKEYREJECTED, None, problem, signer, carried, False)
    # pkcs7_validate_trust: the key named by the SignerInfo among the trusted keys
    cert = store.find(signer)
    if cert is not None and cert.trusted:
        problem = check_signature(signer, alg, digest, cert)
        if problem is not None:
            return KernelSigCheck(_errno.EKEYREJECTED, None, problem, signer, cert, False)
        return KernelSigCheck(0, None, None, signer, cert, True)
    # ENOKEY: the kernel checks nothing more; say whether a certificate given only to check with agrees
    check_with = cert or carried
    holds = None if check_with is None else check_signature(signer, alg, digest, check_with) is None
    return KernelSigCheck(_errno.ENOKEY, None, "signed by a key the kernel does not trust", signer, check_with, holds)


def check_signature(signer: Pkcs7Signer, alg: HashAlgorithm, digest: bytes, cert: TrustedCert) -> str | None:
    """Why ``signer``'s signature over the content ``digest`` fails with ``cert``'s key, None when it holds.

    The kernel's public_key_verify_signature for a module: PKCS#1 v1.5 over
    the bare digest for RSA, ECDSA over it for EC keys (a module signature
    has no signed attributes: the kernel refuses those before this).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    pub = cert.public_key
    prehashed = utils.Prehashed(alg.crypto())
    try:
        if signer.signature_oid == RSA_ENCRYPTION_OID:
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


# --- the PKCS#7 grammar as the kernel's decoder runs it (pkcs7.asn1), with its callbacks' checks in order


def _bad(what: str) -> _Refusal:
    return _Refusal(_errno.EBADMSG, None, f"signature is a PKCS#7 message the kernel's parser refuses ({what})")


def _el(buf: bytes, pos: int, limit: int) -> _der.Tlv:
    try:
        t = _der.read(buf, pos, limit)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    if t.body - t.start > 4:  # asn1_ber_decoder: "Unsupported length" beyond 2 length bytes
        raise _bad(f"DER length at {pos} uses more than 2 bytes")
    return t


def _kids(buf: bytes, parent: _der.Tlv) -> list[_der.Tlv]:
    return _der.children(buf, parent, _el)


def _want(t: _der.Tlv | None, tags: tuple[int, ...], what: str) -> _der.Tlv:
    if t is None:
        raise _bad(f"{what} is missing")
    if t.tag not in tags:
        raise _bad(f"{what} has tag 0x{t.tag:02x}, the kernel wants " + " or ".join(f"0x{x:02x}" for x in tags))
    return t


def _oid(buf: bytes, t: _der.Tlv | None, what: str) -> str:
    t = _want(t, (_der.OID,), what)
    try:
        return _der.oid_dotted(buf[t.body:t.end])
    except ValueError as exc:
        raise _bad(f"{what}: {exc}") from None


class _Seq:
    """The children of one constructed element, taken in order; leftovers are a length error."""

    def __init__(self, buf: bytes, parent: _der.Tlv, what: str) -> None:
        self.items, self.i, self.what = _kids(buf, parent), 0, what

    def next(self, tags: tuple[int, ...] | None = None) -> _der.Tlv | None:
        """The next child; with ``tags``, only if it has one of them (an OPTIONAL element), else None."""
        if self.i >= len(self.items):
            return None
        t = self.items[self.i]
        if tags is not None and t.tag not in tags:
            return None
        self.i += 1
        return t

    def done(self) -> None:
        if self.i < len(self.items):
            raise _bad(f"{self.what} has unexpected elements at its end")


def _small_int(buf: bytes, t: _der.Tlv) -> int | None:
    # pkcs7_note_*_version: only one content byte counts as a version
    return buf[t.body] if t.end - t.body == 1 else None


def _algorithm(buf: bytes, t: _der.Tlv | None, what: str) -> str:
    seq = _Seq(buf, _want(t, (_der.SEQUENCE,), what), what)
    oid = _oid(buf, seq.next(), f"{what} OID")
    seq.next()  # parameters ANY OPTIONAL
    seq.done()
    return oid


def _kernel_parse(buf: bytes) -> list[bytes]:
    """Run the kernel's PKCS#7 parser over ``buf``; the certificates it carries, or _Refusal."""
    from cryptography import x509

    if len(buf) > _ASN1_MAX:
        raise _Refusal(_errno.EMSGSIZE, None, f"signature is {len(buf)} bytes; the kernel's ASN.1 decoder "
                       f"takes at most {_ASN1_MAX}")
    top = _Seq(buf, _want(_el(buf, 0, len(buf)), (_der.SEQUENCE,), "ContentInfo"), "ContentInfo")
    if _oid(buf, top.next(), "contentType") != _SIGNED_DATA:
        raise _Refusal(_errno.EINVAL, "PKCS7: Only support pkcs7_signedData type",
                       "signature's PKCS#7 content type is not signedData")
    content = top.next((0xA0,))
    top.done()
    if content is None:
        raise _Refusal(_errno.EINVAL, "PKCS7: Inconsistently supplied authAttrs", "signature's PKCS#7 has no SignedData")
    wrapper = _Seq(buf, content, "content")
    sd = _Seq(buf, _want(wrapper.next(), (_der.SEQUENCE,), "SignedData"), "SignedData")
    wrapper.done()
    version_el = _want(sd.next(), (_der.INTEGER,), "SignedData version")
    sd_version = _small_int(buf, version_el)
    if sd_version not in (1, 3):
        raise _Refusal(_errno.EINVAL, "PKCS7: Unsupported SignedData version",
                       "signature's PKCS#7 SignedData version is not 1 or 3")
    for alg in _kids(buf, _want(sd.next(), (_der.SET, _der.SEQUENCE), "digestAlgorithms")):
        _algorithm(buf, alg, "digestAlgorithms entry")
    ci = _Seq(buf, _want(sd.next(), (_der.SEQUENCE,), "contentInfo"), "contentInfo")
    data_type = _oid(buf, ci.next(), "contentInfo contentType")
    has_data = ci.next((0xA0,)) is not None
    ci.done()
    if data_type not in (_DATA, _MS_INDIRECT_DATA):
        raise _Refusal(_errno.EINVAL, "PKCS7: Unsupported data type",
                       f"signature's PKCS#7 content type {data_type} is not data")
    certs: list[bytes] = []
    cert_list = sd.next((0xA0, 0xA2))
    if cert_list is not None:
        for c in _kids(buf, cert_list):
            if c.tag != _der.SEQUENCE:  # pkcs7_extract_cert
                raise _bad(f"a certificate it carries begins with tag 0x{c.tag:02x}")
            der = buf[c.start:c.end]
            try:
                x509.load_der_x509_certificate(der)
            except ValueError as exc:
                raise _bad(f"a certificate it carries does not parse: {exc}") from None
            certs.append(der)
    sd.next((0xA1, 0xA3))  # CRLs
    infos = _kids(buf, _want(sd.next(), (_der.SET, _der.SEQUENCE), "signerInfos"))
    sd.done()
    with_attrs = [_signer_info(buf, si, sd_version, data_type) for si in infos]
    if not with_attrs or any(a != with_attrs[0] for a in with_attrs):  # pkcs7_check_authattrs
        raise _Refusal(_errno.EINVAL, "PKCS7: Inconsistently supplied authAttrs",
                       "signature's PKCS#7 has no SignerInfo" if not with_attrs
                       else "signature's SignerInfos disagree about authenticated attributes")
    if has_data:  # pkcs7_supply_detached_data, then verify_pkcs7_message_sig
        raise _Refusal(_errno.EBADMSG, "PKCS7: Data already supplied",
                       "signature's PKCS#7 carries content; a module signature must be detached")
    if data_type != _DATA:  # pkcs7_verify, VERIFYING_MODULE_SIGNATURE
        raise _Refusal(_errno.EKEYREJECTED, "PKCS7: Invalid module sig (not pkcs7-data)",
                       "signature's PKCS#7 content type is not data")
    if with_attrs[0]:
        raise _Refusal(_errno.EKEYREJECTED, "PKCS7: Invalid module sig (has authattrs)",
                       "signature has authenticated attributes, which the kernel refuses for modules "
                       "(sign with sign-file or kmodkit sign, or openssl cms -noattr)")
    return certs


def _signer_info(buf: bytes, t: _der.Tlv, sd_version: int, data_type: str) -> bool:
    # one SignerInfo in the kernel's order; whether it has authenticated attributes
    si = _Seq(buf, _want(t, (_der.SEQUENCE,), "SignerInfo"), "SignerInfo")
    version = _small_int(buf, _want(si.next(), (_der.INTEGER,), "SignerInfo version"))
    if version not in (1, 3):
        raise _Refusal(_errno.EINVAL, "PKCS7: Unsupported SignerInfo version",
                       "signature's PKCS#7 SignerInfo version is not 1 or 3")
    if (version == 1) != (sd_version == 1):
        raise _Refusal(_errno.EBADMSG, "PKCS7: SignedData-SignerInfo version mismatch",
                       f"signature's PKCS#7 SignerInfo version {version} does not fit SignedData version {sd_version}")
    sid = _want(si.next(), (_der.SEQUENCE, 0x80), "SignerInfo sid")
    if sid.tag == _der.SEQUENCE:
        ias = _Seq(buf, sid, "issuerAndSerialNumber")
        name = _Seq(buf, _want(ias.next(), (_der.SEQUENCE,), "issuer"), "issuer")
        while (rdn := name.next()) is not None:
            for ava in _kids(buf, _want(rdn, (_der.SET,), "issuer RDN")):
                a = _Seq(buf, _want(ava, (_der.SEQUENCE,), "issuer attribute"), "issuer attribute")
                _oid(buf, a.next(), "issuer attribute type")
                if a.next() is None:
                    raise _bad("an issuer attribute has no value")
                a.done()
        _want(ias.next(), (_der.INTEGER,), "serialNumber")
        ias.done()
    digest = _algorithm(buf, si.next(), "digestAlgorithm")
    if digest not in KERNEL_DIGEST_OIDS:
        raise _Refusal(_errno.ENOPKG, "Unsupported digest algo:",
                       f"signature's digest algorithm {DIGEST_OIDS.get(digest, digest)} is not one the kernel knows")
    attrs = si.next((0xA0, 0xA2))
    if attrs is not None and attrs.tag == 0xA0:
        _auth_attrs(buf, attrs, data_type)
    pkey = _algorithm(buf, si.next(), "digestEncryptionAlgorithm")
    if pkey not in KERNEL_PKEY_OIDS:
        raise _Refusal(_errno.ENOPKG, "Unsupported pkey algo:",
                       f"signature algorithm {pkey} is not one the kernel takes for modules "
                       "(rsaEncryption or ecdsa-with-*)")
    _want(si.next(), (_der.OCTET_STRING,), "encryptedDigest")
    si.next((0xA1, 0xA3))
    si.done()
    if data_type == _MS_INDIRECT_DATA and attrs is None:
        raise _Refusal(_errno.EBADMSG, "PKCS7: Authenticode requires AuthAttrs",
                       "signature's Authenticode content has no authenticated attributes")
    return attrs is not None and attrs.tag == 0xA0


def _auth_attrs(buf: bytes, attrs: _der.Tlv, data_type: str) -> None:
    # pkcs7_sig_note_authenticated_attr for each value, then pkcs7_sig_note_set_of_authattrs
    seen: set[str] = set()
    repeated = _Refusal(_errno.EKEYREJECTED, "PKCS7: Repeated/multivalue AuthAttrs not permitted",
                        "signature repeats an authenticated attribute")
    for a in _kids(buf, attrs):
        attr = _Seq(buf, _want(a, (_der.SEQUENCE,), "authenticated attribute"), "authenticated attribute")
        kind = _oid(buf, attr.next(), "authenticated attribute type")
        values = _kids(buf, _want(attr.next(), (_der.SET,), "authenticated attribute values"))
        attr.done()
        for v in values:
            if kind == _CONTENT_TYPE:
                if kind in seen:
                    raise repeated
                if v.tag != _der.OID or _oid(buf, v, "contentType attribute") != data_type:
                    raise _Refusal(_errno.EBADMSG, "PKCS7: Mismatch between global data type",
                                   "signature's contentType attribute differs from its content type")
            elif kind == _MESSAGE_DIGEST:
                if kind in seen:
                    raise repeated
                if v.tag != _der.OCTET_STRING:
                    raise _bad("its messageDigest attribute is not an OCTET STRING")
            elif kind == _SMIME_CAPS:
                if kind in seen:
                    raise repeated
                if data_type != _MS_INDIRECT_DATA:
                    raise _Refusal(_errno.EKEYREJECTED, "PKCS7: S/MIME Caps only allowed with Authenticode",
                                   "signature's authenticated attributes hold S/MIME capabilities")
            elif kind in _MS_AUTHENTICODE_ATTRS:
                if kind in seen:
                    raise repeated
                if data_type != _MS_INDIRECT_DATA:
                    raise _Refusal(_errno.EKEYREJECTED, "PKCS7: Authenticode AuthAttrs only allowed with Authenticode",
                                   "signature's authenticated attributes are Authenticode ones")
            seen.add(kind)
    if _CONTENT_TYPE not in seen or _MESSAGE_DIGEST not in seen:
        raise _Refusal(_errno.EBADMSG, "PKCS7: Missing required AuthAttr",
                       "signature's authenticated attributes lack contentType or messageDigest")
