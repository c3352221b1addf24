"""kmod's string hash (shared/hash.c), used only to reproduce depmod's output order.

depmod writes modules.symbols by walking its symbol hash table (2048
buckets; each bucket sorted with strcmp), and lists modules that
modules.order does not name in the order of its module-name table (512
buckets).  Reproducing those orders byte for byte needs kmod's hash:
Paul Hsieh's SuperFastHash over the key's bytes, read little-endian.
"""

from __future__ import annotations

_M = 0xFFFFFFFF

#: buckets of depmod's symbol table and of its module-name table
SYMBOL_BUCKETS = 2048
MODULE_BUCKETS = 512


def _schar(b: int) -> int:
    return b - 256 if b >= 128 else b


def superfast(key: bytes) -> int:
    """``hash_superfast(key, len(key))`` as kmod computes it (32-bit, unsigned)."""
    n = len(key)
    h = n
    rem = n & 3
    end = n - rem
    i = 0
    while i < end:
        h = (h + (key[i] | key[i + 1] << 8)) & _M
        tmp = (((key[i + 2] | key[i + 3] << 8) << 11) ^ h) & _M
        h = ((h << 16) & _M) ^ tmp
        h = (h + (h >> 11)) & _M
        i += 4
    if rem == 3:
        h = (h + (key[i] | key[i + 1] << 8)) & _M
        h ^= (h << 16) & _M
        h ^= (_schar(key[i + 2]) << 18) & _M
        h = (h + (h >> 11)) & _M
    elif rem == 2:
        h = (h + (key[i] | key[i + 1] << 8)) & _M
        h ^= (h << 11) & _M
        h = (h + (h >> 17)) & _M
    elif rem == 1:
        h = (h + _schar(key[i])) & _M
        h ^= (h << 10) & _M
        h = (h + (h >> 1)) & _M
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
