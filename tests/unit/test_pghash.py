"""ledger.citus.hash.hashtext against values PostgreSQL 15 printed (``SELECT hashtext(s)``).

Every length of tail (0-11 bytes after the 12-byte blocks) and multi-byte
UTF-8 are covered; tests/integration/core/test_pghash_server.py compares random strings with the
server's own hashtext, tests/citus/test_direct.py with Citus's worker_hash.
"""

from __future__ import annotations

import pytest

from ledger.citus.hash import hashtext

PRINTED_BY_POSTGRESQL = {
    "": -1477818771,
    "a": 1075015857,
    "acme": -1850687378,
    "tenant-42": 1255226723,
    "é": -983094517,
    "😀": 1734229978,
    "abcdefghijkl": -1586087212,
    "abcdefghijklm": 405849808,
    "x" * 100: 1174826790,
}


@pytest.mark.parametrize("text", sorted(PRINTED_BY_POSTGRESQL))
def test_hashtext_equals_postgresql(text: str) -> None:
    assert hashtext(text) == PRINTED_BY_POSTGRESQL[text]


def test_hashtext_is_a_signed_32_bit_integer() -> None:
    values = [hashtext(f"t{i}") for i in range(2000)]
    assert all(-(2**31) <= v < 2**31 for v in values)
    assert min(values) < 0 < max(values)
