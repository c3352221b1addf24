"""kmod's string hash (shared/hash.c), used only to reproduce depmod's output order.

depmod writes modules.symbols by walking its symbol hash table (2048
buckets; each bucket sorted with strcmp), and lists modules that
modules.order does not name in the order of its module-name table (512
buckets).  Reproducing those orders byte for byte needs kmod's hash:
Paul Hsieh's SuperFastHash over the key's bytes, read little-endian.
"""

from __future__ import annotations

import struct

_M = 0xFFFFFFFF

#: buckets of depmod's symbol table and of its module-name table
SYMBOL_BUCKETS = 2048
MODULE_BUCKETS = 512

# unpackers of a key's 16-bit halves, little-endian, one per length (keys up to 256 bytes)
_HALVES = [struct.Struct(f"<{n}H") for n in range(0, 129)]


def superfast(key: bytes) -> int:
    """``hash_superfast(key, len(key))`` as kmod computes it (32-bit, unsigned)."""
    n = len(key)
    h = n
    rem = n & 3
    end = n - rem
    if end:
        pairs = end >> 1
        unpack = _HALVES[pairs].unpack_from if pairs < len(_HALVES) else struct.Struct(f"<{pairs}H").unpack_from
        it = iter(unpack(key))
        for lo, hi in zip(it, it):
            # +, ^ and << keep the low 32 bits right without a mask; only >> needs one first
            h += lo
            h = ((h << 16) ^ (hi << 11) ^ h) & _M
            h += h >> 11
    # the tail: kmod reads a lone byte as a (signed) char
    if rem == 3:
        h = (h + (key[end] | key[end + 1] << 8)) & _M
        h ^= (h << 16) & _M
        k = key[end + 2]
        h ^= ((k - 256 if k >= 128 else k) << 18) & _M
        h = (h + (h >> 11)) & _M
    elif rem == 2:
        h = (h + (key[end] | key[end + 1] << 8)) & _M
        h ^= (h << 11) & _M
        h = (h + (h >> 17)) & _M
    elif rem == 1:
        k = key[end]
        h = (h + (k - 256 if k >= 128 else k)) & _M
        h ^= (h << 10) & _M
        h = (h + (h >> 1)) & _M
    else:
        h &= _M
    h ^= (h << 3) & _M
    h = (h + (h >> 5)) & _M
    h ^= (h << 4) & _M
    h = (h + (h >> 17)) & _M
    h ^= (h << 25) & _M
    h = (h + (h >> 6)) & _M
    return h


def table_order(key: bytes, buckets: int) -> tuple[int, bytes]:
    """The sort key that puts ``key`` where kmod's hash-table walk finds it."""
    return (superfast(key) & (buckets - 1), key)
