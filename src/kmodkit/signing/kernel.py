"""The keys a kernel trusts for modules, read from its image once and then from a small cache.

Decompressing a kernel image takes a second or two (xz); the certificate
list of an image file never changes, so it is cached under
``$XDG_CACHE_HOME/kmodkit/kernel-certs`` keyed by the image's path, size,
inode and modification time.  A cache that cannot be written is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

from kmodkit.errors import KmodkitError, from_oserror
from kmodkit.modfile import der as _der
from kmodkit.fileio import write_atomic
from kmodkit.kimage import image_for_release
from kmodkit.signing.kimage import system_certificates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelKeys:
    """The system certificate list of one kernel image."""

    image: str  #: the image file
    label: str  #: how reports name the kernel: its release when known, else the image's file name
    certs: tuple[bytes, ...]  #: the DER certificates, in the order the kernel loads them
    from_cache: bool  #: whether they came from the cache rather than the image


def cache_dir() -> str:
    """Where extracted certificate lists are cached."""
    from kmodkit._util.cachedir import cache_dir as _base

    return _base("kernel-certs")


def _cache_path(image: str) -> str:
    try:
        st = os.stat(image)
    except OSError as exc:
        raise from_oserror(exc, image) from None
    key = f"{os.path.realpath(image)}\0{st.st_size}\0{st.st_ino}\0{st.st_mtime_ns}".encode()
    return os.path.join(cache_dir(), hashlib.sha256(key).hexdigest()[:32] + ".der")


def _split_der(blob: bytes) -> tuple[bytes, ...] | None:
    out = []
    pos = 0
    try:
        while pos < len(blob):
            t = _der.read(blob, pos)
            out.append(blob[t.start:t.end])
            pos = t.end
    except ValueError:
        return None
    return tuple(out) or None


def kernel_keys(release: str | None = None, vmlinuz: str | None = None, use_cache: bool = True) -> KernelKeys:
    """The certificates the kernel ``release`` (or the image ``vmlinuz``) trusts for modules.

    Raises :class:`NotFoundError` when the image is absent and
    :class:`UserError` when it holds no certificates.
    """
    image = vmlinuz or image_for_release(release or os.uname().release)
    label = release or _release_of(image)
    cached = _cache_path(image) if use_cache else None
    if cached and os.path.exists(cached):
        try:
            with open(cached, "rb") as f:
                certs = _split_der(f.read())
            if certs:
                return KernelKeys(image, label, certs, True)
        except OSError:
            pass
    _, found = system_certificates(image)
    if cached:
        try:
            os.makedirs(os.path.dirname(cached), mode=0o700, exist_ok=True)
            write_atomic(cached, b"".join(found), 0o644)
        except (OSError, KmodkitError) as exc:  # caching is optional
            log.debug("cannot cache certificates of %s: %s", image, exc)
    return KernelKeys(image, label, tuple(found), False)


def _release_of(image: str) -> str:
    base = os.path.basename(image)
    return base[len("vmlinuz-"):] if base.startswith("vmlinuz-") else base
