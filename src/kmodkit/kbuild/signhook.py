"""Signing after a build, through :mod:`kmodkit.signing` (``ModuleSigner`` with a key file and certificate).

The import is guarded: without the signing package the outcome is UNAVAILABLE and the module is left
unsigned.  A key file's passphrase comes from ``KBUILD_SIGN_PIN``, as for the kernel's sign-file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from kmodkit.errors import KmodkitError
from kmodkit.kbuild.manifest import Signing


class SignState(Enum):
    """What signing did to a built module."""

    SIGNED = "signed"
    UNAVAILABLE = "unavailable"  #: kmodkit.signing is absent, or cannot use this kind of key here
    FAILED = "failed"


@dataclass(frozen=True)
class SignOutcome:
    """The result of signing one built module."""

    state: SignState  #: signed, unavailable or failed
    detail: str  #: the key used, or why it was not signed (never key material)

    def to_json(self) -> dict[str, Any]:
        """The outcome as a JSON object."""
        return {"state": self.state.value, "detail": self.detail}


def sign_built_module(module: Path, signing: Signing, project: Path) -> SignOutcome:
    """Sign ``module`` in place with the manifest's key; never raises (the outcome says what happened)."""
    try:
        from kmodkit.signing.algorithms import HashAlgorithm
        from kmodkit.signing.keys import load_certificate, load_private_key
        from kmodkit.signing.sign import ModuleSigner, SignStatus
        from kmodkit.signing.source import FileKey
    except ImportError as exc:
        return SignOutcome(SignState.UNAVAILABLE, f"kmodkit.signing is not available ({exc.name}); module left unsigned")
    if signing.key.startswith("pkcs11:"):
        return SignOutcome(SignState.UNAVAILABLE, "build signs with key files only; sign with 'kmodkit sign' for a"
                                                  " pkcs11: key")
    if not signing.cert:
        return SignOutcome(SignState.FAILED, f"[signing] cert is empty in kmodkit.toml; name the certificate of"
                                             f" {signing.key}")
    key_path, cert_path = str(project / signing.key), str(project / signing.cert)
    pin = os.environ.get("KBUILD_SIGN_PIN")
    try:
        key = FileKey(load_private_key(key_path, pin.encode() if pin else None), key_path)
        signer = ModuleSigner(key, load_certificate(cert_path), HashAlgorithm.from_name(signing.hash), replace=True,
                              cert_name=cert_path)
        result = signer.sign_file(str(module))
    except KmodkitError as exc:
        return SignOutcome(SignState.FAILED, str(exc))
    if result.status is SignStatus.FAILED:
        return SignOutcome(SignState.FAILED, str(result.error or "signing failed"))
    return SignOutcome(SignState.SIGNED, f"signed with {signing.key} ({signing.hash})")
