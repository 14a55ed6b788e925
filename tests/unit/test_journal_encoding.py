"""The journal's v1 encoding, hash chain, root and replay (ledger/journal.py), without a database.

The byte layout is the one docs/journal.md specifies. Two fixed vectors
spell every byte of the hashed message out by hand; a second, independent
encoder written from the table in docs/journal.md (``int.to_bytes`` rather
than ``struct``) is compared with :func:`ledger.journal.entry_hash` on random
inputs. The SQL twin ``ledger.journal_hash`` is compared with the Python one
in tests/integration/journal/test_journal.py (it needs PostgreSQL).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.journal import (
    GENESIS,
    Discrepancy,
    Replayer,
    TenantState,
    entry_hash,
    journal_root,
    microseconds,
)

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

# ------------------------------------------------------------- fixed vectors
#
# Every field of docs/journal.md's table, in order, as literal bytes.

# fmt: off
CREATE_MESSAGE = bytes.fromhex(
    "73716c6c65646765722f6a6f75726e616c2f763100"  # tag "sqlledger/journal/v1" NUL (21)
    + "00" * 32  # previous head: genesis
    + "00000004" + "61636d65"  # tenant id: u32 length 4, "acme"
    + "0000000000000001"  # seq 1
    + "0006" + "637265617465"  # op: u16 length 6, "create"
    + "0000000000000000"  # reservation id: none
    + "00000000000f4240"  # amount 1_000_000
    + "0000000000000000"  # hold: none
    + "00000000000f4240"  # initial 1_000_000
    + "00000000000f4240"  # remaining 1_000_000
    + "0000000000000000"  # reserved 0
    + "0000000000000000"  # committed 0
    + "0000000000000000"  # cap 0
    + "000661618bc7f580"  # 2026-11-29T03:04:05.123456Z = 1795921445123456 µs
    + "00000000"  # idempotency key: none
)
# fmt: on
CREATE_ARGS = (
    GENESIS,
    "acme",
    1,
    "create",
    None,
    1_000_000,
    None,
    1_000_000,
    1_000_000,
    0,
    0,
    0,
    datetime(2026, 11, 29, 3, 4, 5, 123456, tzinfo=UTC),
    None,
)
CREATE_HASH = "ce5c492ef4273e8b2ba30c7bbf6356969f0e32df712f6e7a9daf314df8a0aa97"

# fmt: off
COMMIT_MESSAGE = bytes.fromhex(
    "73716c6c65646765722f6a6f75726e616c2f763100"
    + bytes(range(32)).hex()  # previous head 00 01 02 ... 1f
    + "00000007" + "6465736b2dc3a9"  # "desk-é": 7 UTF-8 bytes
    + "0000000000000007"  # seq 7
    + "0006" + "636f6d6d6974"  # "commit"
    + "000000000000002a"  # reservation id 42
    + "000000000003d090"  # amount 250_000 (actual cost)
    + "00000000000493e0"  # hold 300_000
    + "00000000004c4b40"  # initial 5_000_000
    + "0000000000487ab0"  # remaining 4_750_000
    + "0000000000000000"  # reserved 0
    + "000000000003d090"  # committed 250_000
    + "00000000001e8480"  # cap 2_000_000
    + "ffffffffffffffff"  # 1969-12-31T23:59:59.999999Z = -1 µs (signed)
    + "00000008" + "d0bad0bbd18ed187"  # key "ключ": 8 UTF-8 bytes
)
# fmt: on
COMMIT_ARGS = (
    bytes(range(32)),
    "desk-é",
    7,
    "commit",
    42,
    250_000,
    300_000,
    5_000_000,
    4_750_000,
    0,
    250_000,
    2_000_000,
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    "ключ",
)
COMMIT_HASH = "5d9ffdd18bfd95678fbfffbd638049c9258525cb92ab78db35357d6a60b2a571"


@pytest.mark.parametrize(
    ("message", "args", "hexdigest"),
    [(CREATE_MESSAGE, CREATE_ARGS, CREATE_HASH), (COMMIT_MESSAGE, COMMIT_ARGS, COMMIT_HASH)],
    ids=["create", "commit"],
)
def test_entry_hash_vectors(message: bytes, args: tuple, hexdigest: str) -> None:  # type: ignore[type-arg]
    assert hashlib.sha256(message).hexdigest() == hexdigest
    assert entry_hash(*args).hex() == hexdigest


def test_vector_message_has_the_documented_length() -> None:
    # 21 + 32 + (4 + 4) + 8 + (2 + 6) + 3*8 + 5*8 + 8 + 4
    assert len(CREATE_MESSAGE) == 153


# ------------------------------------------------ an independent encoder


def doc_encoding(
    prev: bytes,
    tenant_id: str,
    seq: int,
    op: str,
    reservation_id: int | None,
    amount: int | None,
    hold: int | None,
    balances: tuple[int, int, int, int, int],
    at_micros: int,
    key: str | None,
) -> bytes:
    """docs/journal.md's table, field by field."""

    def i64(v: int) -> bytes:
        return v.to_bytes(8, "big", signed=True)

    tid = tenant_id.encode("utf-8")
    name = op.encode("ascii")
    k = (key or "").encode("utf-8")
    return (
        b"sqlledger/journal/v1\x00"
        + prev
        + len(tid).to_bytes(4, "big")
        + tid
        + i64(seq)
        + len(name).to_bytes(2, "big")
        + name
        + i64(reservation_id or 0)
        + i64(amount or 0)
        + i64(hold or 0)
        + b"".join(i64(v) for v in balances)
        + i64(at_micros)
        + len(k).to_bytes(4, "big")
        + k
    )


ops = st.sampled_from(
    ["create", "top_up", "cap", "reserve", "commit", "release", "expire", "restore", "remove"]
)
moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(
    prev=st.binary(min_size=32, max_size=32),
    tenant_id=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
    seq=st.integers(1, 2**63 - 1),
    op=ops,
    rid=st.one_of(st.none(), st.integers(1, 2**63 - 1)),
    amount=st.one_of(st.none(), I64),
    hold=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
    balances=st.tuples(I64, I64, I64, I64, I64),
    at=moments,
    key=st.one_of(st.none(), st.text(alphabet=st.characters(codec="utf-8"), max_size=60)),
)
def test_entry_hash_matches_the_documented_layout(
    prev: bytes,
    tenant_id: str,
    seq: int,
    op: str,
    rid: int | None,
    amount: int | None,
    hold: int | None,
    balances: tuple[int, int, int, int, int],
    at: datetime,
    key: str | None,
) -> None:
    at_micros = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    expected = hashlib.sha256(
        doc_encoding(prev, tenant_id, seq, op, rid, amount, hold, balances, at_micros, key)
    ).digest()
    assert entry_hash(prev, tenant_id, seq, op, rid, amount, hold, *balances, at, key) == expected


@given(
    period=st.one_of(st.none(), I64),
    reason=st.one_of(st.none(), st.text(alphabet=st.characters(codec="utf-8"), max_size=60)),
)
def test_period_and_reason_are_a_trailer_present_only_when_given(
    period: int | None, reason: str | None
) -> None:
    """Revision 0006: entries without either hash exactly as v1 entries always did."""
    at = COMMIT_ARGS[12]
    assert isinstance(at, datetime)
    v1 = doc_encoding(
        COMMIT_ARGS[0],  # type: ignore[arg-type]
        "t",
        3,
        "refund",
        5,
        10,
        None,
        (1, 2, 3, 4, 5),
        (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1),
        "k",
    )
    trailer = b""
    if period is not None or reason is not None:
        note = (reason or "").encode("utf-8")
        trailer = (-1 if period is None else period).to_bytes(8, "big", signed=True)
        trailer += len(note).to_bytes(4, "big") + note
    got = entry_hash(
        COMMIT_ARGS[0],  # type: ignore[arg-type]
        "t",
        3,
        "refund",
        5,
        10,
        None,
        1,
        2,
        3,
        4,
        5,
        at,
        "k",
        period,
        reason,
    )
    assert got == hashlib.sha256(v1 + trailer).digest()


def test_a_reason_or_a_period_changes_the_hash() -> None:
    base = entry_hash(*COMMIT_ARGS)
    assert entry_hash(*COMMIT_ARGS, 0, None) != base  # type: ignore[misc]
    assert entry_hash(*COMMIT_ARGS, None, "") != base  # type: ignore[misc]
    assert entry_hash(*COMMIT_ARGS, 1, "x") != entry_hash(*COMMIT_ARGS, 1, "y")  # type: ignore[misc]


def test_every_field_is_covered_by_the_hash() -> None:
    base = entry_hash(*COMMIT_ARGS)
    for index, value in enumerate(COMMIT_ARGS):
        args = list(COMMIT_ARGS)
        if isinstance(value, bytes):
            args[index] = bytes(31) + b"\x01"
        elif isinstance(value, str):
            args[index] = value + "x"
        elif isinstance(value, int):
            args[index] = value + 1
        else:
            assert isinstance(value, datetime)
            args[index] = value + timedelta(microseconds=1)
        assert entry_hash(*args) != base, f"field {index} is not hashed"


def test_absent_values_encode_as_zero_and_an_absent_key_as_empty() -> None:
    """Documented: reservation id, amount and hold are 0 when none; a missing key has length 0."""
    a = entry_hash(
        GENESIS, "t", 1, "remove", None, None, None, 0, 0, 0, 0, 0, CREATE_ARGS[12], None
    )
    b = entry_hash(GENESIS, "t", 1, "remove", 0, 0, 0, 0, 0, 0, 0, 0, CREATE_ARGS[12], "")
    assert a == b


@pytest.mark.parametrize(
    ("at", "micros"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC), 1),
        (datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), -1),
        (datetime(2026, 11, 29, 3, 4, 5, 123456, tzinfo=UTC), 1795921445123456),
        (
            datetime(2026, 11, 29, 8, 4, 5, 123456, tzinfo=timezone(timedelta(hours=5))),
            1795921445123456,
        ),
        # far enough out that a float of seconds would lose the microseconds
        (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 253402300799999999),
    ],
)
def test_microseconds_are_exact(at: datetime, micros: int) -> None:
    assert microseconds(at) == micros


# ------------------------------------------------------------------- the root


def doc_root(heads: list[tuple[str, int, bytes]]) -> bytes:
    message = b"sqlledger/journal-root/v1\x00"
    for tenant_id, seq, head in sorted(heads, key=lambda h: h[0].encode("utf-8")):
        tid = tenant_id.encode("utf-8")
        message += len(tid).to_bytes(4, "big") + tid + seq.to_bytes(8, "big", signed=True) + head
    return hashlib.sha256(message).digest()


def test_journal_root_vector() -> None:
    heads = [("b", 2, b"\x02" * 32), ("é", 3, b"\x03" * 32), ("a", 1, b"\x01" * 32)]
    # fmt: off
    message = bytes.fromhex(
        "73716c6c65646765722f6a6f75726e616c2d726f6f742f763100"  # "sqlledger/journal-root/v1" NUL
        + "00000001" + "61" + "0000000000000001" + "01" * 32
        + "00000001" + "62" + "0000000000000002" + "02" * 32
        + "00000002" + "c3a9" + "0000000000000003" + "03" * 32
    )
    # fmt: on
    expected = "8437de0c682d351225cdcc21d538f04124596172866ba9944be2452d3398d9b8"
    assert hashlib.sha256(message).hexdigest() == expected
    assert journal_root(heads).hex() == expected
    assert journal_root([]) == hashlib.sha256(b"sqlledger/journal-root/v1\x00").digest()


@given(
    st.dictionaries(
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
        st.tuples(st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32)),
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_journal_root_matches_the_documented_fold_in_any_input_order(
    tenants: dict[str, tuple[int, bytes]], rng: object
) -> None:
    heads = [(tid, seq, head) for tid, (seq, head) in tenants.items()]
    rng.shuffle(heads)  # type: ignore[attr-defined]
    assert journal_root(heads) == doc_root(heads)


# ---------------------------------------------------------- chains and replay


@dataclass(frozen=True)
class Row:
    """A journal row, with the attribute names the replayer reads."""

    seq: int
    op: str
    reservation_id: int | None
    amount_microcents: int | None
    hold_microcents: int | None
    initial_microcents: int
    remaining_microcents: int
    reserved_microcents: int
    committed_microcents: int
    max_reserved_microcents: int
    created_at: datetime
    idempotency_key: str | None
    entry_hash: bytes


T0 = datetime(2026, 1, 1, tzinfo=UTC)

# (op, reservation id, amount, hold) and the balances after it: initial, remaining,
# reserved, committed, cap. Worked out by hand from the table in docs/journal.md.
HISTORY: list[tuple[str, int | None, int | None, int | None, tuple[int, int, int, int, int]]] = [
    ("create", None, 1_000, None, (1_000, 1_000, 0, 0, 0)),
    ("top_up", None, 500, None, (1_500, 1_500, 0, 0, 0)),
    ("cap", None, 800, None, (1_500, 1_500, 0, 0, 800)),
    ("reserve", 1, 300, None, (1_500, 1_200, 300, 0, 800)),
    ("reserve", 2, 200, None, (1_500, 1_000, 500, 0, 800)),
    ("commit", 1, 350, 300, (1_500, 950, 200, 350, 800)),  # overran its hold by 50
    ("release", 2, 200, None, (1_500, 1_150, 0, 350, 800)),
    ("reserve", 3, 100, None, (1_500, 1_050, 100, 350, 800)),
    ("expire", 3, 100, None, (1_500, 1_150, 0, 350, 800)),
]


def chain(tenant_id: str = "desk-é") -> list[Row]:
    rows, head = [], GENESIS
    for seq, (op, rid, amount, hold, balances) in enumerate(HISTORY, start=1):
        at = T0 + timedelta(seconds=seq)
        key = f"k{seq}" if op == "reserve" else None
        digest = entry_hash(head, tenant_id, seq, op, rid, amount, hold, *balances, at, key)
        rows.append(Row(seq, op, rid, amount, hold, *balances, at, key, digest))
        head = digest
    return rows


def replay(rows: list[Row], tenant_id: str = "desk-é") -> tuple[TenantState, list[Discrepancy]]:
    report: list[Discrepancy] = []
    replayer = Replayer(tenant_id, TenantState(), report)
    for row in rows:
        replayer.apply(row)
    return replayer.state, report


def kinds(report: list[Discrepancy]) -> set[tuple[int | None, str]]:
    return {(d.seq, d.kind) for d in report}


def test_an_honest_chain_replays_clean() -> None:
    rows = chain()
    state, report = replay(rows)
    assert report == []
    assert state.exists and state.seq == len(HISTORY)
    assert state.head == rows[-1].entry_hash
    assert state.balances() == HISTORY[-1][4]
    assert state.holds == {}


def test_open_holds_are_replayed() -> None:
    state, report = replay(chain()[:5])
    assert report == []
    assert state.holds == {1: 300, 2: 200}


def test_edited_amount_breaks_the_hash_and_the_balances() -> None:
    rows = chain()
    rows[3] = replace(rows[3], amount_microcents=301)
    _, report = replay(rows)
    assert (4, "hash_mismatch") in kinds(report)
    assert (4, "balance_mismatch") in kinds(report)


def rehash(rows: list[Row], tenant_id: str = "desk-é") -> list[Row]:
    """Renumber and re-chain rows, as a forger who can write every hash would."""
    head, out = GENESIS, []
    for seq, row in enumerate(rows, start=1):
        digest = entry_hash(
            head, tenant_id, seq, row.op, row.reservation_id, row.amount_microcents,
            row.hold_microcents, row.initial_microcents, row.remaining_microcents,
            row.reserved_microcents, row.committed_microcents, row.max_reserved_microcents,
            row.created_at, row.idempotency_key,
        )  # fmt: skip
        out.append(replace(row, seq=seq, entry_hash=digest))
        head = digest
    return out


def test_rehash_of_an_honest_chain_is_the_same_chain() -> None:
    assert rehash(chain()) == chain()


def test_a_consistently_rehashed_edit_still_fails_the_balance_check() -> None:
    rows = chain()
    rows[1] = replace(rows[1], amount_microcents=600)  # the recorded balances still say +500
    _, report = replay(rehash(rows))
    assert kinds(report) == {(2, "balance_mismatch")}


def test_deleted_entry_is_a_gap_and_a_broken_link() -> None:
    rows = chain()
    del rows[4]
    _, report = replay(rows)
    assert (6, "sequence_gap") in kinds(report)
    assert (6, "hash_mismatch") in kinds(report)


def test_reordered_entries_break_the_chain() -> None:
    rows = chain()
    rows[3], rows[4] = rows[4], rows[3]
    _, report = replay(rows)
    assert {(5, "sequence_gap"), (5, "hash_mismatch"), (4, "hash_mismatch")} <= kinds(report)


def test_an_entry_moved_to_another_tenant_does_not_verify() -> None:
    _, report = replay(chain("acme"), tenant_id="desk-é")
    assert (1, "hash_mismatch") in kinds(report)


def test_settling_an_unknown_hold_is_an_invalid_entry() -> None:
    rows = chain()
    # drop reserve #1 and re-chain, so that only the logic is wrong
    _, report = replay(rehash(rows[:3] + rows[4:]))
    assert not any(d.kind in ("hash_mismatch", "sequence_gap") for d in report)
    assert (5, "invalid_entry") in kinds(report)  # the commit of hold 1, now unknown
