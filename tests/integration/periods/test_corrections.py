"""Corrections: refund(...) of a commit and adjust(...) of a budget (docs/corrections.md)."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, pool, text

import ledger
from ledger import errors
from ledger.journal import entry_hash
from ledger.roles import create_roles, enable_row_level_security
from tests.helpers import I64_MAX, I64_MIN, reset, state
from tests.integration.journal.test_journal import kinds, tamper

pytestmark = pytest.mark.pg_versions

THREADS = 12
PROCESSES = 4


def committed(book: ledger.Ledger, tenant: str, hold: int, actual: int) -> int:
    """Reserve ``hold``, commit ``actual``; the reservation id (the commit's reference)."""
    rid = book.try_reserve(tenant, hold).raise_for_status().reservation_id
    assert rid is not None
    book.commit(rid, actual, tenant_id=tenant).raise_for_status()
    return rid


def entry(raw: psycopg.Connection, tenant: str, op: str) -> Any:
    return raw.execute(
        "SELECT op, reservation_id, amount_microcents, hold_microcents, reason, period_index,"
        " idempotency_key FROM ledger.journal WHERE tenant_id = %s AND op = %s"
        " ORDER BY seq DESC LIMIT 1",
        (tenant, op),
    ).fetchone()


# ---------------------------------------------------------------------- refund


def test_refund_moves_part_of_a_commit_back_to_remaining(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 300, 250)
    out = book.refund("a", rid, 100, reason="ticket 42: duplicate charge")
    assert out == ledger.RefundOutcome(
        ledger.Status.REFUNDED,
        reservation_id=rid,
        refunded_microcents=100,
        left_microcents=150,
        remaining_microcents=850,
        committed_microcents=150,
    )
    assert out.raise_for_status() is out
    assert book.tenant("a") == ledger.TenantLedger("a", 1_000, 850, 0, 150)
    assert entry(raw, "a", "refund") == (
        "refund",
        rid,
        100,
        None,
        "ticket 42: duplicate charge",
        None,
        None,
    )
    last = book.refund("a", rid, 150, reason="rest of it")
    assert (last.status, last.left_microcents, last.committed_microcents) == ("refunded", 0, 0)
    assert book.tenant("a") == ledger.TenantLedger("a", 1_000, 1_000, 0, 0)
    assert book.verify_journal().ok
    assert book.verify_conservation().is_balanced


def test_refund_never_exceeds_what_the_commit_left(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 300, 250)
    other = committed(book, "a", 100, 100)  # committed overall is 350: the limit is per commit
    before = state(raw)
    too_much = book.refund("a", rid, 251, reason="x")
    assert too_much.status == "refund_exceeds_commit" and too_much.left_microcents == 250
    assert state(raw) == before
    assert book.refund("a", rid, 200, reason="x").ok
    before = state(raw)
    again = book.refund("a", rid, 51, reason="x")
    assert (again.status, again.left_microcents) == ("refund_exceeds_commit", 50)
    assert state(raw) == before
    with pytest.raises(errors.RefundExceedsCommitError) as info:
        again.raise_for_status()
    assert info.value.outcome is again
    assert book.refund("a", rid, 50, reason="x").ok
    assert book.refund("a", rid, 1, reason="x").left_microcents == 0
    assert book.refund("a", other, 100, reason="x").ok
    assert book.verify_journal().ok


def test_a_zero_commit_has_nothing_to_refund(book: ledger.Ledger) -> None:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 300, 0)
    out = book.refund("a", rid, 1, reason="x")
    assert (out.status, out.left_microcents) == ("refund_exceeds_commit", 0)


def test_refund_of_something_that_is_not_a_commit_of_this_tenant(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    book.ensure_tenant("b", 1_000)
    open_hold = book.try_reserve("a", 100).reservation_id
    released = book.try_reserve("a", 100).reservation_id
    assert released is not None and open_hold is not None
    book.release(released)
    of_b = committed(book, "b", 100, 100)
    expired = book.try_reserve("a", 100, ttl=1).reservation_id
    raw.execute(
        "UPDATE ledger.reservations SET expires_at = now() - interval '1 second'"
        " WHERE reservation_id = %s",
        (expired,),
    )
    assert book.expire_holds() == 1
    before = state(raw)
    for rid in (open_hold, released, of_b, expired, 10**9, I64_MAX, I64_MAX + 1, 2**64 - 1):
        out = book.refund("a", rid, 1, reason="x")
        assert out.status == "unknown_commit", rid
        assert out.reservation_id == rid
        with pytest.raises(errors.UnknownCommitError):
            out.raise_for_status()
    assert state(raw) == before


def test_refund_for_an_unknown_tenant(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 100, 100)
    before = state(raw)
    out = book.refund("nobody", rid, 1, reason="x")
    assert out.status == "missing_tenant"
    with pytest.raises(errors.TenantNotFound):
        out.raise_for_status()
    assert state(raw) == before


def test_refund_at_the_limits_of_64_bits(book: ledger.Ledger) -> None:
    """A refund cannot overflow: remaining + refund <= remaining + committed <= initial.

    tenants_conservation (a CHECK constraint) keeps initial = remaining +
    reserved + committed <= 2^63 - 1, so the sum a refund produces always
    fits; this is the largest one there can be.
    """
    book.ensure_tenant("max", I64_MAX)
    rid = committed(book, "max", I64_MAX, I64_MAX)
    out = book.refund("max", rid, I64_MAX, reason="all of it")
    assert out.ok and out.remaining_microcents == I64_MAX and out.left_microcents == 0
    assert book.tenant("max") == ledger.TenantLedger("max", I64_MAX, I64_MAX, 0, 0)
    assert book.verify_journal().ok


def test_a_commit_that_a_restore_undid_is_not_refundable(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """Issue 22 finding 8: the restore replaced the balances the commit made, so
    refunding it would refund a charge the ledger no longer holds; a commit made
    after the restore is refundable as usual."""
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 500, 500)
    book.restore_from_snapshot(
        ledger.BudgetSnapshot(9, (ledger.TenantLedger("a", 1_000, 900, 0, 100),), 0)
    )
    before = state(raw)
    for amount in (1, 100, 101):
        out = book.refund("a", rid, amount, reason="x")
        assert out.status == "unknown_commit", amount
    assert state(raw) == before
    later = committed(book, "a", 50, 50)
    assert book.refund("a", later, 50, reason="x").ok
    assert book.tenant("a") == ledger.TenantLedger("a", 1_000, 900, 0, 100)
    report = book.verify_journal()
    assert report.ok, report


def test_refund_entry_carries_the_period_of_the_commit_it_refunds(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """A refund corrects the spend of the commit's period (docs/corrections.md)."""
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 100, 100)
    # As the period-aware commit writes it (this branch's commit writes none).
    tamper(raw, f"UPDATE ledger.journal SET period_index = 7 WHERE reservation_id = {rid}")
    assert book.refund("a", rid, 40, reason="x").ok
    assert entry(raw, "a", "refund")[5] == 7


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("a", "RID", 0), {"reason": "x"}, errors.AmountValueError),
        (("a", "RID", -5), {"reason": "x"}, errors.AmountValueError),
        (("a", "RID", I64_MAX + 1), {"reason": "x"}, errors.AmountValueError),
        (("a", "RID", True), {"reason": "x"}, errors.AmountTypeError),
        (("a", "RID", 5.0), {"reason": "x"}, errors.AmountTypeError),
        (("a", "RID", "5"), {"reason": "x"}, errors.AmountTypeError),
        (("a", "RID", 5), {"reason": ""}, errors.InputError),
        (("a", "RID", 5), {"reason": " \t\n"}, errors.InputError),
        (("a", "RID", 5), {"reason": None}, errors.InputError),
        (("a", "RID", 5), {"reason": 42}, errors.InputError),
        (("a", "RID", 5), {"reason": b"bytes"}, errors.InputError),
        (("a", "RID", 5), {"reason": "x" * 1001}, errors.InputError),
        (("a", "RID", 5), {"reason": "é" * 501}, errors.InputError),
        (("a", "RID", 5), {"reason": "a\x00b"}, errors.InputError),
        (("a", "RID", 5), {"reason": "\ud800"}, errors.InputError),
        (("a", -1, 5), {"reason": "x"}, errors.AmountValueError),
        (("a", True, 5), {"reason": "x"}, errors.AmountTypeError),
        (("a", "1", 5), {"reason": "x"}, errors.AmountTypeError),
        (("", "RID", 5), {"reason": "x"}, errors.InvalidTenantId),
        ((None, "RID", 5), {"reason": "x"}, errors.InvalidTenantId),
        (("a", "RID", 5), {"reason": "x", "idempotency_key": ""}, errors.InputError),
        (("a", "RID", 5), {"reason": "x", "idempotency_key": 7}, errors.InputError),
    ],
)
def test_refund_refuses_bad_input_and_changes_nothing(
    book: ledger.Ledger, raw: psycopg.Connection, args: tuple[Any, ...], kwargs: Any, error: type
) -> None:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 300, 250)
    before = state(raw)
    call = tuple(rid if a == "RID" else a for a in args)
    with pytest.raises(error) as info:
        book.refund(*call, **kwargs)
    assert str(info.value)  # says what to do, never a driver traceback
    assert state(raw) == before


def test_refund_reason_at_its_limit_is_kept_byte_for_byte(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 300, 250)
    reason = "é" * 500  # 1000 UTF-8 bytes
    assert book.refund("a", rid, 1, reason=reason).ok
    assert entry(raw, "a", "refund")[4] == reason
    assert book.verify_journal().ok


# ---------------------------------------------------------------------- adjust


def test_adjust_moves_initial_and_remaining_by_a_signed_amount(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    committed(book, "a", 200, 200)
    hold = book.try_reserve("a", 300).reservation_id
    up = book.adjust("a", 250, reason="goodwill credit")
    assert up == ledger.AdjustOutcome(
        ledger.Status.ADJUSTED,
        adjusted_microcents=250,
        new_initial_microcents=1_250,
        remaining_microcents=750,
    )
    assert entry(raw, "a", "adjust") == ("adjust", None, 250, None, "goodwill credit", None, None)
    down = book.adjust("a", -750, reason="clawback")
    assert (down.status, down.new_initial_microcents, down.remaining_microcents) == (
        "adjusted",
        500,
        0,
    )
    assert entry(raw, "a", "adjust")[2] == -750
    assert book.tenant("a") == ledger.TenantLedger("a", 500, 0, 300, 200)
    assert hold is not None and book.release(hold).ok  # the hold was never touched
    assert book.verify_journal().ok
    assert book.verify_conservation().is_balanced


def test_negative_adjustment_never_touches_reserved_or_committed(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    committed(book, "a", 200, 200)
    book.try_reserve("a", 300)
    before = state(raw)
    out = book.adjust("a", -501, reason="x")
    assert out == ledger.AdjustOutcome(
        ledger.Status.INSUFFICIENT, remaining_microcents=500, required_microcents=501
    )
    with pytest.raises(errors.InsufficientFundsError):
        out.raise_for_status()
    assert state(raw) == before
    smallest = book.adjust("a", I64_MIN, reason="x")  # -2^63: no arithmetic may overflow
    assert smallest.status == "insufficient" and smallest.required_microcents == 2**63
    assert state(raw) == before


def test_adjust_overflow_and_unknown_tenant(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("a", 0)
    assert book.adjust("a", I64_MAX, reason="x").new_initial_microcents == I64_MAX
    before = state(raw)
    out = book.adjust("a", 1, reason="x")
    assert out == ledger.AdjustOutcome(ledger.Status.OVERFLOW)
    with pytest.raises(errors.LedgerOverflowError):
        out.raise_for_status()
    missing = book.adjust("nobody", 5, reason="x")
    assert missing.status == "missing_tenant"
    with pytest.raises(errors.TenantNotFound):
        missing.raise_for_status()
    assert state(raw) == before
    assert book.adjust("a", -I64_MAX, reason="x").remaining_microcents == 0
    assert book.verify_journal().ok


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("a", 0), {"reason": "x"}, errors.AmountValueError),
        (("a", True), {"reason": "x"}, errors.AmountTypeError),
        (("a", -1.5), {"reason": "x"}, errors.AmountTypeError),
        (("a", I64_MIN - 1), {"reason": "x"}, errors.AmountValueError),
        (("a", 5), {"reason": ""}, errors.InputError),
        (("a", 5), {"reason": None}, errors.InputError),
        (("a", 5), {"reason": "x" * 1001}, errors.InputError),
        (("", 5), {"reason": "x"}, errors.InvalidTenantId),
        (("a", 5), {"reason": "x", "idempotency_key": ""}, errors.InputError),
    ],
)
def test_adjust_refuses_bad_input_and_changes_nothing(
    book: ledger.Ledger, raw: psycopg.Connection, args: tuple[Any, ...], kwargs: Any, error: type
) -> None:
    book.ensure_tenant("a", 1_000)
    before = state(raw)
    with pytest.raises(error):
        book.adjust(*args, **kwargs)
    assert state(raw) == before


def test_reason_is_required_by_the_signature(book: ledger.Ledger) -> None:
    with pytest.raises(TypeError):
        book.adjust("a", 5)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        book.refund("a", 1, 5)  # type: ignore[call-arg]


# ----------------------------------------------------------------- idempotency


def test_idempotent_refund_and_adjust(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 300, 250)
    first = book.refund("a", rid, 100, reason="r", idempotency_key="ref-1")
    snap = state(raw)
    assert book.refund("a", rid, 100, reason="r", idempotency_key="ref-1") == first
    assert state(raw) == snap
    adj = book.adjust("a", -50, reason="r", idempotency_key="adj-1")
    snap = state(raw)
    assert book.adjust("a", -50, reason="r", idempotency_key="adj-1") == adj
    assert state(raw) == snap
    assert entry(raw, "a", "refund")[6] == "ref-1" and entry(raw, "a", "adjust")[6] == "adj-1"
    # a refused correction is remembered too
    refused = book.refund("a", rid, 1_000, reason="r", idempotency_key="ref-2")
    assert refused.status == "refund_exceeds_commit"
    assert book.refund("a", rid, 1_000, reason="r", idempotency_key="ref-2") == refused
    assert book.tenant("a") == ledger.TenantLedger("a", 950, 800, 0, 150)
    assert book.verify_journal().ok


@pytest.mark.parametrize(
    "call",
    [
        lambda b, rid: b.refund("a", rid, 101, reason="r", idempotency_key="k"),
        lambda b, rid: b.refund("a", rid, 100, reason="other", idempotency_key="k"),
        lambda b, rid: b.adjust("a", 100, reason="r", idempotency_key="k"),
        lambda b, rid: b.top_up_tenant("a", 100, idempotency_key="k"),
    ],
)
def test_same_key_different_correction_is_refused(
    book: ledger.Ledger, raw: psycopg.Connection, call: Any
) -> None:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 300, 250)
    book.refund("a", rid, 100, reason="r", idempotency_key="k")
    before = state(raw)
    with pytest.raises(errors.IdempotencyConflict):
        call(book, rid)
    assert state(raw) == before


def test_same_key_different_adjustment_is_refused(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    book.adjust("a", 5, reason="r", idempotency_key="k")
    before = state(raw)
    for amount, reason in ((6, "r"), (5, "s"), (-5, "r")):
        with pytest.raises(errors.IdempotencyConflict):
            book.adjust("a", amount, reason=reason, idempotency_key="k")
    assert state(raw) == before


# ------------------------------------------------------------------ the journal


@pytest.fixture
def corrected(book: ledger.Ledger) -> Iterator[ledger.Ledger]:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 300, 250)
    book.refund("a", rid, 100, reason="refund reason")
    book.adjust("a", -40, reason="adjust reason")
    book.top_up_tenant("a", 5)
    assert book.verify_journal().ok
    yield book


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "UPDATE ledger.journal SET amount_microcents = 150 WHERE op = 'refund'",
            {("a", "hash_mismatch"), ("a", "balance_mismatch")},
        ),
        (
            "UPDATE ledger.journal SET reason = 'other' WHERE op = 'refund'",
            {("a", "hash_mismatch")},
        ),
        (
            "UPDATE ledger.journal SET amount_microcents = -41 WHERE op = 'adjust'",
            {("a", "hash_mismatch"), ("a", "balance_mismatch")},
        ),
        ("UPDATE ledger.journal SET reason = 'x' WHERE op = 'adjust'", {("a", "hash_mismatch")}),
        (
            "UPDATE ledger.journal SET reason = NULL WHERE op = 'adjust'",
            {("a", "hash_mismatch"), ("a", "invalid_entry")},
        ),
        (
            "UPDATE ledger.journal SET reservation_id = 999 WHERE op = 'refund'",
            {("a", "hash_mismatch"), ("a", "invalid_entry")},
        ),
        (
            "UPDATE ledger.journal SET period_index = 3 WHERE op = 'refund'",
            {("a", "hash_mismatch")},
        ),
    ],
)
def test_tampered_corrections_are_found(
    corrected: ledger.Ledger, raw: psycopg.Connection, statement: str, expected: set[Any]
) -> None:
    tamper(raw, statement)
    assert kinds(corrected) == expected


def forge(raw: psycopg.Connection, tenant: str, op: str, rid: int | None, amount: int) -> None:
    """Append a well-hashed entry behind the ledger's back and move the tenant row to match."""
    t = raw.execute(
        "SELECT journal_seq, journal_head, initial_microcents, remaining_microcents,"
        " reserved_microcents, committed_microcents, max_reserved_microcents"
        " FROM ledger.tenants WHERE tenant_id = %s",
        (tenant,),
    ).fetchone()
    assert t is not None
    seq, head, initial, remaining, reserved, spent, cap = t
    remaining, spent = remaining + amount, spent - amount
    at = datetime.now(UTC).replace(microsecond=0)
    reason = "forged"
    digest = entry_hash(
        bytes(head), tenant, seq + 1, op, rid, amount, None, initial, remaining, reserved,
        spent, cap, at, None, None, reason, entry_format=2,
    )  # fmt: skip
    raw.execute(
        "INSERT INTO ledger.journal (tenant_id, seq, op, reservation_id, amount_microcents,"
        " hold_microcents, initial_microcents, remaining_microcents, reserved_microcents,"
        " committed_microcents, max_reserved_microcents, idempotency_key, created_at,"
        " entry_hash, period_index, reason)"
        " VALUES (%s, %s, %s, %s, %s, NULL, %s, %s, %s, %s, %s, NULL, %s, %s, NULL, %s)",
        (tenant, seq + 1, op, rid, amount, initial, remaining, reserved, spent, cap, at,
         digest, reason),
    )  # fmt: skip
    raw.execute(
        "UPDATE ledger.tenants SET journal_seq = %s, journal_head = %s,"
        " remaining_microcents = %s, committed_microcents = %s WHERE tenant_id = %s",
        (seq + 1, digest, remaining, spent, tenant),
    )


def test_a_refund_beyond_its_commit_written_behind_the_ledgers_back_is_flagged(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    small = committed(book, "a", 100, 100)
    committed(book, "a", 500, 500)  # committed is 600: the forged row balances
    book.refund("a", small, 60, reason="fine")
    forge(raw, "a", "refund", small, 41)  # 60 + 41 > 100
    report = book.verify_journal()
    assert {(d.tenant_id, d.kind) for d in report.discrepancies} == {("a", "invalid_entry")}
    assert "exceeds what commit" in report.discrepancies[0].detail


def test_a_refund_of_no_commit_written_behind_the_ledgers_back_is_flagged(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    committed(book, "a", 500, 500)
    hold = book.try_reserve("a", 100).reservation_id
    forge(raw, "a", "refund", hold, 10)  # a hold that was never committed
    assert kinds(book) == {("a", "invalid_entry")}


def test_a_refund_within_its_commit_forged_the_same_way_verifies(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """The control for the two tests above: their forgery itself is not what is flagged."""
    book.ensure_tenant("a", 1_000)
    small = committed(book, "a", 100, 100)
    book.refund("a", small, 60, reason="fine")
    forge(raw, "a", "refund", small, 40)
    assert book.verify_journal().ok


# ----------------------------------------------------------------- concurrency


def _refund_until_refused(book: ledger.Ledger, tenant: str, rid: int, step: int) -> int:
    done = 0
    while True:
        out = book.refund(tenant, rid, step, reason="race")
        if out.status != "refunded":
            assert out.status == "refund_exceeds_commit", out
            return done
        done += step


def test_threads_refunding_one_commit_never_exceed_it(db_url: str, raw: psycopg.Connection) -> None:
    engine = create_engine(db_url, pool_size=THREADS, max_overflow=0)
    book = ledger.Ledger(engine)
    try:
        book.ensure_tenant("hot", 1_000_000)
        rid = committed(book, "hot", 100_000, 99_990)
        other = committed(book, "hot", 50_000, 50_000)
        barrier = threading.Barrier(THREADS)

        def work(i: int) -> int:
            barrier.wait()
            # mixed with other writes on the same hot tenant
            if i % 3 == 0:
                book.adjust("hot", 7, reason="noise")
                book.refund("hot", other, 1, reason="noise")
            return _refund_until_refused(book, "hot", rid, 10 if i % 2 else 30)

        with ThreadPoolExecutor(THREADS) as pool_:
            refunded = sum(pool_.map(work, range(THREADS)))
        journal = raw.execute(
            "SELECT sum(amount_microcents), count(*) FROM ledger.journal"
            " WHERE op = 'refund' AND reservation_id = %s",
            (rid,),
        ).fetchone()
        assert journal is not None
        assert refunded == journal[0]
        # every step is a multiple of 10: all but what no step fits goes back, never more
        assert 99_990 - 30 < refunded <= 99_990
        assert book.refund("hot", rid, 10, reason="x").left_microcents == 99_990 - refunded < 10
        assert book.verify_journal().ok
        assert book.verify_conservation().is_balanced
    finally:
        book.close()
        engine.dispose()


def _process_refunds(url: str, rid: int, step: int, start: Any) -> int:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        start.wait(60)
        return _refund_until_refused(ledger.Ledger(engine), "hot", rid, step)
    finally:
        engine.dispose()


def test_processes_refunding_one_commit_never_exceed_it(
    db_url: str, raw: psycopg.Connection
) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("hot", 100_000)
        rid = committed(book, "hot", 20_000, 20_000)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager:
            start = manager.Event()
            with ctx.Pool(PROCESSES) as workers:
                pending = [
                    workers.apply_async(_process_refunds, (db_url, rid, 20, start))
                    for _ in range(PROCESSES)
                ]
                start.set()
                refunded = sum(p.get(timeout=300) for p in pending)
        assert refunded == 20_000  # exact: 1,000 refunds of 20, and not one more
        assert book.tenant("hot") == ledger.TenantLedger("hot", 100_000, 100_000, 0, 0)
        assert book.verify_journal().ok


# ------------------------------------------------- interleaved with the core


def test_corrections_interleaved_with_spend_keep_conservation_and_replay(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """A random walk of every write, checked against a model after every step.

    The model knows each commit's refundable amount; after each step the
    tenant row matches it, conservation holds and the journal replays.
    """
    rng = random.Random(14)
    book.ensure_tenant("t", 5_000)
    model = {"initial": 5_000, "remaining": 5_000, "reserved": 0, "committed": 0}
    holds: dict[int, int] = {}
    commits: dict[int, int] = {}
    for step in range(120):
        op = rng.choice(["reserve", "commit", "release", "refund", "adjust", "top_up"])
        amount = rng.randint(1, 1_500)
        if op == "reserve":
            out: Any = book.try_reserve("t", amount)
            if out.ok:
                holds[out.reservation_id] = amount
                model["remaining"] -= amount
                model["reserved"] += amount
            else:
                assert amount > model["remaining"]
        elif op in ("commit", "release") and holds:
            rid = rng.choice(sorted(holds))
            hold = holds[rid]
            if op == "release":
                assert book.release(rid).ok
                model["remaining"] += hold
            else:
                actual = rng.randint(0, hold)
                assert book.commit(rid, actual).ok
                model["remaining"] += hold - actual
                model["committed"] += actual
                commits[rid] = actual
            del holds[rid]
            model["reserved"] -= hold
        elif op == "refund" and (commits or holds):
            rid = rng.choice(sorted(commits) + sorted(holds))
            want = rng.randint(1, 400)
            out = book.refund("t", rid, want, reason=f"step {step}")
            if rid in holds:
                assert out.status == "unknown_commit"
            elif want > commits[rid]:
                assert (out.status, out.left_microcents) == ("refund_exceeds_commit", commits[rid])
            else:
                assert out.ok
                commits[rid] -= want
                model["committed"] -= want
                model["remaining"] += want
        elif op == "adjust":
            signed = amount if rng.random() < 0.5 else -amount
            out = book.adjust("t", signed, reason=f"step {step}")
            if signed < 0 and model["remaining"] + signed < 0:
                assert out.status == "insufficient"
            else:
                assert out.ok
                model["initial"] += signed
                model["remaining"] += signed
        elif op == "top_up":
            assert book.top_up_tenant("t", amount).ok
            model["initial"] += amount
            model["remaining"] += amount
        row = book.tenant("t")
        assert row is not None
        assert (row.initial_microcents, row.remaining_microcents) == (
            model["initial"],
            model["remaining"],
        ), step
        assert (row.reserved_microcents, row.committed_microcents) == (
            model["reserved"],
            model["committed"],
        ), step
        assert book.verify_conservation().is_balanced
        assert book.verify_journal().ok, step
    ops = {r[0] for r in raw.execute("SELECT DISTINCT op FROM ledger.journal").fetchall()}
    assert {"refund", "adjust", "commit", "release"} <= ops


# ------------------------------------------------------- other front doors


def test_async_ledger_refunds_and_adjusts_like_ledger(db_url: str) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 1_000)
        rid = committed(book, "a", 300, 250)

    async def work() -> tuple[Any, ...]:
        async with ledger.AsyncLedger(db_url) as abook:
            return (
                await abook.refund("a", rid, 100, reason="r", idempotency_key="k"),
                await abook.refund("a", rid, 100, reason="r", idempotency_key="k"),
                await abook.refund("a", rid, 1_000, reason="r"),
                await abook.refund("a", 10**9, 1, reason="r"),
                await abook.adjust("a", -900, reason="r"),
                await abook.adjust("a", 50, reason="r"),
            )

    refunded, replayed, too_much, unknown, short, adjusted = asyncio.run(work())
    assert refunded == replayed and refunded.left_microcents == 150
    assert too_much.status == "refund_exceeds_commit" and unknown.status == "unknown_commit"
    assert short.status == "insufficient"
    assert adjusted.new_initial_microcents == 1_050 and adjusted.remaining_microcents == 900
    with ledger.Ledger(db_url) as book:
        assert book.tenant("a") == ledger.TenantLedger("a", 1_050, 900, 0, 150)
        assert book.verify_journal().ok


def test_corrections_join_the_callers_transaction(book: ledger.Ledger, db_url: str) -> None:
    book.ensure_tenant("a", 1_000)
    rid = committed(book, "a", 300, 250)
    engine = create_engine(db_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            trans = conn.begin()
            assert book.refund("a", rid, 100, reason="r", connection=conn).ok
            assert book.adjust("a", 10, reason="r", connection=conn).ok
            trans.rollback()
        assert book.tenant("a") == ledger.TenantLedger("a", 1_000, 750, 0, 250)
        with engine.begin() as conn:
            assert book.refund("a", rid, 100, reason="r", connection=conn).ok
        assert book.committed_microcents("a") == 150
    finally:
        engine.dispose()


def test_the_application_role_may_refund_and_adjust(db_url: str) -> None:
    """refund_commit runs with the caller's rights (SECURITY INVOKER): the app role's grants."""
    create_roles(db_url)
    engine = create_engine(db_url, poolclass=pool.NullPool)
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 1_000)
        rid = committed(book, "a", 300, 250)
        try:
            with engine.connect() as conn:
                conn.execute(text('SET ROLE "ledger_app"'))
                conn.commit()
                with conn.begin():
                    assert book.refund("a", rid, 100, reason="r", connection=conn).ok
                    assert book.adjust("a", -10, reason="r", connection=conn).ok
        finally:
            engine.dispose()
        assert book.tenant("a") == ledger.TenantLedger("a", 990, 840, 0, 150)
        assert book.verify_journal().ok


def test_a_tenant_scoped_role_refunds_only_its_own_tenant(db_url: str) -> None:
    """Row-level security applies inside refund_commit (SECURITY INVOKER)."""
    enable_row_level_security(db_url)
    engine = create_engine(db_url, poolclass=pool.NullPool)
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("mine", 1_000)
        book.ensure_tenant("theirs", 1_000)
        mine = committed(book, "mine", 100, 100)
        theirs = committed(book, "theirs", 100, 100)
        try:
            with engine.connect() as conn:
                conn.execute(text('SET ROLE "ledger_tenant_app"'))
                conn.commit()
                with conn.begin():
                    conn.execute(text("SET LOCAL ledger.tenant_id = 'mine'"))
                    assert book.refund("mine", mine, 10, reason="r", connection=conn).ok
                    other = book.refund("theirs", theirs, 10, reason="r", connection=conn)
                    assert other.status == "missing_tenant"
                    assert book.adjust("theirs", 5, reason="r", connection=conn).status == (
                        "missing_tenant"
                    )
        finally:
            engine.dispose()
        assert book.committed_microcents("mine") == 90
        assert book.tenant("theirs") == ledger.TenantLedger("theirs", 1_000, 900, 0, 100)


def test_certificates_and_checkpoint_replay_with_refunds(book: ledger.Ledger) -> None:
    """The certified high-water mark never moves back (docs/corrections.md, Certificates)."""
    book.ensure_tenant("a", 10_000)
    rid = committed(book, "a", 1_000, 1_000)
    first = book.certify()
    assert first.committed_since_last_certificate == 1_000
    book.refund("a", rid, 400, reason="r")
    committed(book, "a", 300, 300)  # replaces refunded spend: not certified again
    assert book.certify().committed_since_last_certificate == 0
    committed(book, "a", 500, 500)  # 1,400 lifetime: 400 above the mark
    third = book.certify()
    assert third.committed_since_last_certificate == 400
    # a refund of a commit from before the checkpoint replays from that checkpoint
    assert book.refund("a", rid, 600, reason="r").ok
    assert third.certificate_id is not None
    assert book.verify_journal(since_certificate=third.certificate_id).ok
    assert book.verify_journal().ok


CORRECTION_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@CORRECTION_SETTINGS
@given(
    steps=st.lists(
        st.tuples(
            # weighted towards refunds of commits, the interesting case
            st.sampled_from(["reserve", "commit", "refund", "reserve", "commit", "refund"])
            | st.sampled_from(["release", "adjust", "refund"]),
            st.integers(0, 1),  # tenant
            st.integers(0, 255),  # which hold or commit
            st.one_of(st.integers(1, 400_000), st.integers(-400_000, -1), st.sampled_from([1, -1])),
        ),
        min_size=20,
        max_size=60,
    )
)
def test_property_corrections_interleaved_with_spend(
    db_url: str, raw: psycopg.Connection, steps: list[tuple[str, int, int, int]]
) -> None:
    """Hypothesis drives every write on three tenants; a model predicts each outcome.

    After every step: the tenant rows equal the model, conservation holds and
    the journal replays without a discrepancy.
    """
    reset(raw)
    tenants = ["p-0", "p-é"]
    model = {t: [1_000_000, 1_000_000, 0, 0] for t in tenants}  # initial, remaining, res, com
    holds: dict[int, tuple[str, int]] = {}
    left: dict[int, tuple[str, int]] = {}
    charged: dict[int, int] = {}
    with ledger.Ledger(db_url) as book:
        for t in tenants:
            book.ensure_tenant(t, 1_000_000)
        for op, ti, sel, amount in steps:
            t = tenants[ti]
            m = model[t]
            if op == "reserve":
                out: Any = book.try_reserve(t, abs(amount))
                assert out.ok == (abs(amount) <= m[1])
                if out.ok:
                    holds[out.reservation_id] = (t, abs(amount))
                    m[1] -= abs(amount)
                    m[2] += abs(amount)
            elif op in ("commit", "release") and holds:
                rid = sorted(holds)[sel % len(holds)]
                owner, hold = holds.pop(rid)
                mo = model[owner]
                actual = 0 if op == "release" else min(abs(amount), hold)
                out = book.release(rid) if op == "release" else book.commit(rid, actual)
                assert out.ok
                mo[1] += hold - actual
                mo[2] -= hold
                mo[3] += actual
                if op == "commit":
                    left[rid] = (owner, actual)
                    charged[rid] = actual
            elif op == "refund":
                known = sorted(left) + sorted(holds)
                rid = known[sel % len(known)] if known else 10**6 + sel
                # at most the whole commit each time, so that it takes several to exceed it
                want = 1 + abs(amount) % charged[rid] if charged.get(rid) else abs(amount)
                if rid in left and sel % 4:  # mostly the commit's own tenant
                    t, m = left[rid][0], model[left[rid][0]]
                out = book.refund(t, rid, want, reason="property")
                if rid not in left or left[rid][0] != t:
                    assert out.status == "unknown_commit"
                elif want > left[rid][1]:
                    assert (out.status, out.left_microcents) == (
                        "refund_exceeds_commit",
                        left[rid][1],
                    )
                else:
                    assert out.ok and out.left_microcents == left[rid][1] - want
                    left[rid] = (t, left[rid][1] - want)
                    m[1] += want
                    m[3] -= want
            elif op == "adjust":
                out = book.adjust(t, amount, reason="property")
                assert out.ok == (m[1] + amount >= 0)
                if out.ok:
                    m[0] += amount
                    m[1] += amount
            for name in tenants:
                row = book.tenant(name)
                assert row is not None
                assert list(row.to_dict().values())[1:] == model[name], (name, op)
            assert book.verify_conservation().is_balanced
            report = book.verify_journal()
            assert report.ok, report.discrepancies
