"""PostgreSQL's ``hashtext``, in Python: which shard a tenant id hashes to.

Citus places a row by hashing its distribution column with the column type's
standard hash function and finding the shard whose ``[shardminvalue,
shardmaxvalue]`` range holds the result. For ``tenant_id text COLLATE "C"``
(a deterministic collation) that function is ``hashtext``, which is
``hash_bytes`` (Bob Jenkins' lookup3, as in PostgreSQL's
``src/common/hashfn.c``) over the string's UTF-8 bytes, read as a signed
32-bit integer. A client that connects to the workers directly
(:mod:`ledger.citus.routing`) computes it to pick the tenant's worker without
asking the server first.

The value is PostgreSQL's on little-endian machines (x86-64, arm64), where
every supported Citus deployment runs; tests compare it with the server's own
``hashtext`` and Citus's ``worker_hash`` on random strings.
"""

from __future__ import annotations

_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def hash_bytes(data: bytes) -> int:
    """PostgreSQL's ``hash_bytes(data, len(data))``, an unsigned 32-bit integer."""
    length = len(data)
    a = b = c = (0x9E3779B9 + length + 3923095) & _MASK
    offset = 0
    while length - offset >= 12:
        a = (a + int.from_bytes(data[offset : offset + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[offset + 4 : offset + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[offset + 8 : offset + 12], "little")) & _MASK
        # mix(a, b, c)
        a = (a - c) & _MASK
        a ^= _rot(c, 4)
        c = (c + b) & _MASK
        b = (b - a) & _MASK
        b ^= _rot(a, 6)
        a = (a + c) & _MASK
        c = (c - b) & _MASK
        c ^= _rot(b, 8)
        b = (b + a) & _MASK
        a = (a - c) & _MASK
        a ^= _rot(c, 16)
        c = (c + b) & _MASK
        b = (b - a) & _MASK
        b ^= _rot(a, 19)
        a = (a + c) & _MASK
        c = (c - b) & _MASK
        c ^= _rot(b, 4)
        b = (b + a) & _MASK
        offset += 12
    # The last 0-11 bytes: a takes bytes 0-3, b bytes 4-7, c bytes 8-10 above its
    # lowest byte (which lookup3 reserves for the length).
    tail = data[offset:]
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + (int.from_bytes(tail[8:11], "little") << 8)) & _MASK
    # final(a, b, c)
    c ^= b
    c = (c - _rot(b, 14)) & _MASK
    a ^= c
    a = (a - _rot(c, 11)) & _MASK
    b ^= a
    b = (b - _rot(a, 25)) & _MASK
    c ^= b
    c = (c - _rot(b, 16)) & _MASK
    a ^= c
    a = (a - _rot(c, 4)) & _MASK
    b ^= a
    b = (b - _rot(a, 14)) & _MASK
    c ^= b
    c = (c - _rot(b, 24)) & _MASK
    return c


def hashtext(value: str) -> int:
    """``SELECT hashtext(value)`` under a deterministic collation: a signed 32-bit integer."""
    h = hash_bytes(value.encode("utf-8"))
    return h - (1 << 32) if h >= (1 << 31) else h
