"""A lean DER reader: just enough ASN.1 to walk a module's PKCS#7 on hot paths.

Building and fully validating ASN.1 is left to asn1crypto and cryptography;
this reader only finds the few fields kmod and the kernel look at, thousands
of times per second, and raises :class:`ValueError` on anything malformed.
"""

from __future__ import annotations

from collections.abc import Callable

from typing import NamedTuple

SEQUENCE, SET, INTEGER, OCTET_STRING, OID, NULL = 0x30, 0x31, 0x02, 0x04, 0x06, 0x05


class Tlv(NamedTuple):
    """One DER element: its tag byte and where its header and contents lie in the buffer."""

    tag: int  #: the identifier octet (single-byte tags only)
    start: int  #: offset of the identifier octet
    body: int  #: offset of the contents
    end: int  #: offset just past the contents


def read(buf: bytes, pos: int, limit: int | None = None) -> Tlv:
    """The element at ``pos``; it must end by ``limit`` (default: the buffer's end)."""
    limit = len(buf) if limit is None else limit
    if pos + 2 > limit:
        raise ValueError(f"DER element at {pos} runs past its container")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError(f"multi-byte DER tag at {pos}")
    first = buf[pos + 1]
    body = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or body + n > limit:
            raise ValueError(f"bad DER length at {pos}")
        length = int.from_bytes(buf[body:body + n], "big")
        body += n
    end = body + length
    if end > limit:
        raise ValueError(f"DER element at {pos} ({length} bytes) runs past its container")
    return Tlv(tag, pos, body, end)


def children(buf: bytes, parent: Tlv, reader: Callable[[bytes, int, int], Tlv] | None = None) -> list[Tlv]:
    """The elements inside a constructed element, each read with ``reader`` (default :func:`read`)."""
    step = reader or read
    out = []
    pos = parent.body
    while pos < parent.end:
        t = step(buf, pos, parent.end)
        out.append(t)
        pos = t.end
    return out


def expect(t: Tlv, tag: int, what: str) -> Tlv:
    """``t`` itself, if its tag is ``tag``; else ValueError naming ``what``."""
    if t.tag != tag:
        raise ValueError(f"{what}: expected tag 0x{tag:02x}, found 0x{t.tag:02x}")
    return t


def oid_dotted(der_body: bytes) -> str:
    """An OBJECT IDENTIFIER's contents as dotted text."""
    if not der_body:
        raise ValueError("empty OID")
    arcs: list[int] = []
    value = 0
    for b in der_body:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])
