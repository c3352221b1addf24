"""The PKCS#7 (CMS) SignedData of a module signature, built as sign-file builds it.

sign-file (scripts/sign-file.c, the CMS variant that Debian's kbuild packages
ship) calls ``CMS_sign`` and ``CMS_add1_signer`` with CMS_NOCERTS,
CMS_BINARY, CMS_DETACHED, CMS_NOSMIMECAP and CMS_NOATTR, plus CMS_USE_KEYID
for ``-k``.  What OpenSSL writes for that is:

* ContentInfo signedData -> SignedData version 1 (3 with a key id),
  digestAlgorithms { hash without parameters }, encapContentInfo { data,
  no content }, no certificates, no CRLs;
* one SignerInfo, version 1 (3), sid = issuerAndSerialNumber of the
  certificate (or its subjectKeyIdentifier), digestAlgorithm = hash without
  parameters, no signed attributes, signatureAlgorithm = rsaEncryption with
  NULL parameters (ecdsa-with-<hash> without parameters for EC keys), the
  signature over the bare digest of the module.

The structures are asn1crypto's; only the digest AlgorithmIdentifier is
loaded from DER because asn1crypto would add the NULL parameters OpenSSL
leaves out.
"""

from __future__ import annotations

from asn1crypto import algos, cms, core
from asn1crypto import x509 as ax509

from kmodkit.errors import UserError
from kmodkit.signing.algorithms import RSA_ENCRYPTION_OID, HashAlgorithm, KeyType


def _digest_algorithm(alg: HashAlgorithm) -> algos.DigestAlgorithm:
    oid = core.ObjectIdentifier(alg.oid).dump()
    return algos.DigestAlgorithm.load(bytes([0x30, len(oid)]) + oid)


def _signature_algorithm(alg: HashAlgorithm, key_type: KeyType) -> algos.SignedDigestAlgorithm:
    if key_type is KeyType.RSA:
        return algos.SignedDigestAlgorithm({"algorithm": RSA_ENCRYPTION_OID, "parameters": core.Null()})
    oid = core.ObjectIdentifier(alg.ecdsa_oid).dump()
    return algos.SignedDigestAlgorithm.load(bytes([0x30, len(oid)]) + oid)


def build_signed_data(cert_der: bytes, alg: HashAlgorithm, key_type: KeyType, signature: bytes,
                      use_key_id: bool = False) -> bytes:
    """The DER ContentInfo that carries ``signature`` for a module, naming ``cert_der``'s key.

    With ``use_key_id`` the signer is named by the certificate's
    subjectKeyIdentifier (sign-file -k); UserError when it has none.
    """
    cert = ax509.Certificate.load(cert_der)
    if use_key_id:
        ski = cert.key_identifier_value
        if ski is None:
            raise UserError("--keyid", "the certificate has no subjectKeyIdentifier to name the key by",
                            "sign without --keyid, or make the certificate with 'kmodkit keys new'")
        sid = cms.SignerIdentifier({"subject_key_identifier": ski})
        version = "v3"
    else:
        tbs = cert["tbs_certificate"]
        sid = cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber(
            {"issuer": tbs["issuer"], "serial_number": tbs["serial_number"]})})
        version = "v1"
    signer = cms.SignerInfo({
        "version": version,
        "sid": sid,
        "digest_algorithm": _digest_algorithm(alg),
        "signature_algorithm": _signature_algorithm(alg, key_type),
        "signature": signature,
    })
    signed = cms.SignedData({
        "version": version,
        "digest_algorithms": [_digest_algorithm(alg)],
        "encap_content_info": {"content_type": "data"},
        "signer_infos": [signer],
    })
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


class SignedDataTemplate:
    """:func:`build_signed_data` for one key, certificate and hash, built once per signature length.

    Everything in the message but the signature bytes, which come last,
    depends only on the signature's length; so the DER before them is made
    once by :func:`build_signed_data` and reused for every module.
    """

    def __init__(self, cert_der: bytes, alg: HashAlgorithm, key_type: KeyType, use_key_id: bool = False) -> None:
        self._args = (cert_der, alg, key_type)
        self._use_key_id = use_key_id
        self._prefix: dict[int, bytes] = {}
        build_signed_data(cert_der, alg, key_type, b"\0", use_key_id)  # raise now for an unusable certificate

    def build(self, signature: bytes) -> bytes:
        """The same bytes as ``build_signed_data(..., signature, ...)``."""
        n = len(signature)
        prefix = self._prefix.get(n)
        if prefix is None:
            placeholder = b"\xa5" * n
            der = build_signed_data(*self._args, placeholder, self._use_key_id)
            if not der.endswith(placeholder):  # pragma: no cover - the signature is the last field
                return build_signed_data(*self._args, signature, self._use_key_id)
            prefix = self._prefix[n] = der[:-n]
        return prefix + signature
