"""The certificates compiled into a kernel image: the system certificate list of its vmlinux.

The image is read (and its payload decompressed, bounded) by :mod:`kmodkit.kimage`.
Inside the decompressed vmlinux, certs/system_certificates.S lays out
``system_certificate_list`` (the module-signing key, then
CONFIG_SYSTEM_TRUSTED_KEYS) as DER certificates back to back, followed,
8-byte aligned, by ``system_certificate_list_size`` (a quad on 64-bit;
some kernels, 6.1 among them, put a ``module_cert_size`` quad before it).  Debian's images are
stripped and ship no System.map, so the list is found by its shape: a run of
certificates whose length is written right after it.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass

from kmodkit.errors import UserError
from kmodkit.kimage import KernelImage, read_vmlinux

log = logging.getLogger(__name__)

# a DER certificate: SEQUENCE { SEQUENCE (tbs) { [0] { INTEGER 2 } ... } }, both with 2-byte lengths
_CERT_START = re.compile(rb"\x30\x82(..)\x30\x82..\xa0\x03\x02\x01\x02", re.DOTALL)


@dataclass(frozen=True)
class EmbeddedCert:
    """One certificate found in a kernel image."""

    der: bytes  #: the certificate
    offset: int  #: where it starts in the decompressed vmlinux
    in_system_list: bool  #: True when it lies in the list the kernel loads into .builtin_trusted_keys


def find_certificates(vmlinux: bytes) -> list[EmbeddedCert]:
    """Every DER X.509 v3 certificate in ``vmlinux``, marked when it lies in the system certificate list.

    Returns ``[]`` when there is none (a kernel built without
    CONFIG_SYSTEM_TRUSTED_KEYRING).
    """
    from cryptography import x509

    found: list[tuple[int, bytes]] = []
    for m in _CERT_START.finditer(vmlinux):
        length = struct.unpack(">H", m.group(1))[0] + 4
        der = vmlinux[m.start():m.start() + length]
        try:
            x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        found.append((m.start(), der))
    runs = _runs(found)
    in_list: set[int] = set()
    for run in runs:
        start, end = run[0][0], run[-1][0] + len(run[-1][1])
        if _size_follows(vmlinux, end, end - start):
            in_list.update(off for off, _ in run)
    return [EmbeddedCert(der, off, off in in_list) for off, der in found]


def _runs(found: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
    runs: list[list[tuple[int, bytes]]] = []
    for off, der in found:
        if runs and runs[-1][-1][0] + len(runs[-1][-1][1]) == off:
            runs[-1].append((off, der))
        else:
            runs.append([(off, der)])
    return runs


def _size_follows(vmlinux: bytes, end: int, length: int) -> bool:
    aligned = (end + 7) & ~7
    for pos in (aligned, aligned + 8):  # module_cert_size may come first
        if pos + 8 <= len(vmlinux) and struct.unpack_from("<Q", vmlinux, pos)[0] == length:
            return True
    return False


def system_certificates(path: str) -> tuple[KernelImage, list[bytes]]:
    """The image facts and the DER certificates of the system certificate list of the kernel at ``path``.

    When the list cannot be told apart (an unusual layout), every
    certificate found in the image is returned, with a warning logged.
    Raises :class:`UserError` when the image holds no certificate at all.
    """
    image, vmlinux = read_vmlinux(path)
    certs = find_certificates(vmlinux)
    chosen = [c.der for c in certs if c.in_system_list]
    if not chosen and certs:
        log.warning("%s: system certificate list not located by its size field; using all %d certificates found",
                    path, len(certs))
        chosen = [c.der for c in certs]
    if not chosen:
        raise UserError(path, "holds no X.509 certificates: the kernel was built without trusted keys",
                        "verify against certificate files with --cert instead")
    return image, chosen
