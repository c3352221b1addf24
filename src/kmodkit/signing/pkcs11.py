"""Signing with a key held in a PKCS#11 token (an HSM, a smart card, SoftHSM2).

The key is named by an RFC 7512 URI, as sign-file takes it::

    pkcs11:token=kmodkit;object=signing;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so

Path attributes ``token``, ``object`` (the label), ``id``, ``serial`` pick
the token and key; query attributes ``module-path``, ``pin-value`` and
``pin-source`` say which library to load and how to log in.  Without a PIN
in the URI, KBUILD_SIGN_PIN is used, as sign-file does.  The token signs:
for RSA with CKM_RSA_PKCS over the DigestInfo, so the output equals a
file key's PKCS#1 v1.5 signature byte for byte; for ECDSA with CKM_ECDSA
over the digest, re-encoded as DER.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kmodkit.errors import EnvironmentNotReady, UserError
from kmodkit.signing.algorithms import HashAlgorithm, KeyType
from kmodkit.signing.keys import PublicKey

#: libraries tried, in order, when the URI names none (and KMODKIT_PKCS11_MODULE is unset)
DEFAULT_MODULES = (
    "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so",
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
)


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of a ``pkcs11:`` URI that select a signing key."""

    token: str | None  #: token label
    object: str | None  #: key label
    id: bytes | None  #: CKA_ID
    serial: str | None  #: token serial number
    module_path: str | None  #: the PKCS#11 library to load
    pin: str | None = None  #: PIN from pin-value or pin-source (never shown)

    @property
    def display(self) -> str:
        """The URI without its PIN, for messages."""
        parts = [f"{k}={urllib.parse.quote(v, safe='')}" for k, v in
                 (("token", self.token), ("object", self.object), ("serial", self.serial)) if v is not None]
        if self.id is not None:
            parts.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        return "pkcs11:" + ";".join(parts)


def parse_uri(uri: str) -> Pkcs11Uri:
    """Parse an RFC 7512 ``pkcs11:`` URI; UserError naming the bad attribute."""
    if not uri.startswith("pkcs11:"):
        raise UserError(uri, "is not a pkcs11: URI")
    body = uri[len("pkcs11:"):]
    path, _, query = body.partition("?")
    attrs: dict[str, str] = {}
    raw_id: bytes | None = None
    for part in filter(None, path.split(";")):
        name, sep, value = part.partition("=")
        if not sep:
            raise UserError("pkcs11 URI", f"attribute '{name}' has no value", "write it as name=value")
        if name == "id":
            raw_id = urllib.parse.unquote_to_bytes(value)
        else:
            attrs[name] = urllib.parse.unquote(value)
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    pin = params["pin-value"][0] if "pin-value" in params else None
    if pin is None and "pin-source" in params:
        source = params["pin-source"][0]
        source = source[len("file:"):] if source.startswith("file:") else source
        try:
            with open(source, encoding="utf-8") as f:
                pin = f.read().rstrip("\r\n")
        except OSError as exc:
            raise UserError(source, f"cannot read the PIN file ({exc.strerror})") from None
    if attrs.get("type", "private") != "private":
        raise UserError("pkcs11 URI", f"type={attrs['type']} names no private key", "use type=private or leave it out")
    return Pkcs11Uri(token=attrs.get("token"), object=attrs.get("object"), id=raw_id, serial=attrs.get("serial"),
                     module_path=params["module-path"][0] if "module-path" in params else None, pin=pin)


def _find_module(uri: Pkcs11Uri) -> str:
    candidates = [uri.module_path] if uri.module_path else (
        [os.environ["KMODKIT_PKCS11_MODULE"]] if os.environ.get("KMODKIT_PKCS11_MODULE") else list(DEFAULT_MODULES))
    for path in candidates:
        if path and os.path.exists(path):
            return path
    raise EnvironmentNotReady(uri.display, "no PKCS#11 library found (tried " + ", ".join(c for c in candidates if c)
                              + ")", "add ?module-path=/path/to/lib.so to the URI or install softhsm2 / p11-kit")


class Pkcs11Key:
    """A private key in a PKCS#11 token, logged in and ready to sign."""

    forkable = False  # a PKCS#11 session does not survive fork()

    def __init__(self, uri: str, pin: str | None = None) -> None:
        import pkcs11
        from pkcs11 import Attribute, ObjectClass

        parsed = parse_uri(uri)
        #: the URI without its PIN, for messages
        self.name = parsed.display
        pin = parsed.pin or pin or os.environ.get("KBUILD_SIGN_PIN")
        module = _find_module(parsed)
        try:
            lib = pkcs11.lib(module)
        except (RuntimeError, OSError) as exc:
            raise EnvironmentNotReady(module, f"cannot load the PKCS#11 library ({exc})") from None
        try:
            token = lib.get_token(token_label=parsed.token, token_serial=parsed.serial.encode() if parsed.serial else None)
        except pkcs11.NoSuchToken:
            raise UserError(self.name, "no such token", "check token= (softhsm2-util --show-slots lists them)") from None
        except pkcs11.MultipleTokensReturned:
            raise UserError(self.name, "several tokens match", "name the token with token= or serial=") from None
        try:
            try:
                self._session = token.open(user_pin=pin) if pin else token.open()
            except pkcs11.UserAlreadyLoggedIn:
                # login state belongs to the application, not the session: an earlier key of this
                # process is still logged in to the token, so this session is too
                self._session = token.open()
        except pkcs11.PinIncorrect:
            raise UserError(self.name, "wrong PIN for the token", "check pin-value/pin-source or KBUILD_SIGN_PIN") \
                from None
        except pkcs11.PKCS11Error as exc:
            raise EnvironmentNotReady(self.name, f"cannot open a session ({type(exc).__name__})") from None
        query: dict[Any, Any] = {}
        if parsed.object is not None:
            query["label"] = parsed.object
        if parsed.id is not None:
            query["id"] = parsed.id
        try:
            found = self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, **query)
        except pkcs11.NoSuchKey:
            hint = "" if pin else " (no PIN given: private keys are only visible after login)"
            raise UserError(self.name, f"no private key matches{hint}", "check object= / id=, and the PIN") from None
        except pkcs11.MultipleObjectsReturned:
            raise UserError(self.name, "several private keys match", "name the key with object= or id=") from None
        if not isinstance(found, pkcs11.SignMixin):
            raise UserError(self.name, "the key cannot sign (CKA_SIGN is false)", "import it with signing allowed")
        self._key: pkcs11.SignMixin = found
        key_type = self._key.key_type
        if key_type == pkcs11.KeyType.RSA:
            #: RSA or ECDSA
            self.key_type = KeyType.RSA
            n = int.from_bytes(self._key[Attribute.MODULUS], "big")
            e = int.from_bytes(self._key[Attribute.PUBLIC_EXPONENT], "big")
            self._public: PublicKey = rsa.RSAPublicNumbers(e, n).public_key()
        elif key_type == pkcs11.KeyType.EC:
            self.key_type = KeyType.ECDSA
            self._public = self._ec_public(query)
        else:
            raise UserError(self.name, f"key type {key_type} cannot sign modules", "use an RSA or EC key")

    def _ec_public(self, query: dict[Any, Any]) -> PublicKey:
        import pkcs11
        from pkcs11 import ObjectClass
        from pkcs11.util.ec import encode_ec_public_key

        from cryptography.hazmat.primitives.serialization import load_der_public_key

        try:
            pub = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, **query)
        except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned):
            raise UserError(self.name, "the token holds no single public key next to the EC private key",
                            "import the public key with the same label and id") from None
        assert isinstance(pub, pkcs11.PublicKey)
        public = load_der_public_key(encode_ec_public_key(pub))
        assert isinstance(public, ec.EllipticCurvePublicKey)
        return public

    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self._public

    def sign_digest(self, digest: bytes, alg: HashAlgorithm) -> bytes:
        """The signature of ``digest``, made by the token."""
        from asn1crypto import algos
        from pkcs11 import Mechanism

        if self.key_type is KeyType.RSA:
            info = algos.DigestInfo({"digest_algorithm": {"algorithm": alg.oid}, "digest": digest}).dump()
            return bytes(self._key.sign(info, mechanism=Mechanism.RSA_PKCS))
        raw = bytes(self._key.sign(digest, mechanism=Mechanism.ECDSA))
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def close(self) -> None:
        """Log out and close the session."""
        self._session.close()

    def __repr__(self) -> str:
        return f"Pkcs11Key({self.name!r})"
