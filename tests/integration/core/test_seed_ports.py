"""Ports of every test in the seed's ``mod tests`` (calybris_budget_engine.rs).

Each keeps the seed's name. Where we deliberately deviate (negative budget),
the test asserts our documented behaviour and says so. The two proptests are
in ``test_properties.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine

import ledger
from ledger import BudgetSnapshot, Status, TenantLedger, conservation_status_for_snapshot, errors
from ledger.outcomes import Balance
from tests.helpers import I64_MAX, holds_match_reserved

pytestmark = pytest.mark.pg_versions


@pytest.fixture
def wide(db_url: str) -> Iterator[ledger.Ledger]:
    """A ledger whose pool has a connection for each of 100 threads."""
    engine = create_engine(
        db_url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=100, max_overflow=0
    )
    yield ledger.Ledger(engine)
    engine.dispose()


def test_reserve_and_commit(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 100_000_000)
    hold = book.try_reserve("t1", 25_000_000)
    settlement = book.commit(hold.reservation_id, 20_000_000)  # type: ignore[arg-type]
    assert settlement.status == Status.COMMITTED
    assert book.remaining_microcents("t1") == 80_000_000


def test_reserve_insufficient(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 10_000_000)
    res = book.try_reserve("t1", 50_000_000)
    assert res.status == "insufficient"
    assert res.reservation_id is None
    assert (res.remaining_microcents, res.required_microcents) == (10_000_000, 50_000_000)


def test_release_returns_full_amount(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 100_000_000)
    hold = book.try_reserve("t1", 30_000_000)
    out = book.release(hold.reservation_id)  # type: ignore[arg-type]
    assert out.status == "released" and out.returned_microcents == 30_000_000
    assert book.remaining_microcents("t1") == 100_000_000


def test_missing_tenant_rejected(book: ledger.Ledger) -> None:
    assert book.try_reserve("nonexistent", 1000).status == "missing_tenant"


def test_missing_reservation_rejected(book: ledger.Ledger) -> None:
    assert book.commit(999, 1000).status == "missing_reservation"
    assert book.release(999).status == "missing_reservation"


def test_conservation_invariant(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 100_000_000)
    id1 = book.try_reserve("t1", 30_000_000).reservation_id
    id2 = book.try_reserve("t1", 20_000_000).reservation_id
    book.commit(id1, 25_000_000)  # type: ignore[arg-type]
    book.release(id2)  # type: ignore[arg-type]
    assert book.remaining_microcents("t1") == 75_000_000
    assert book.committed_microcents("t1") == 25_000_000
    assert book.verify_conservation().is_balanced


def test_top_up_extends_initial_and_remaining(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk", 100_000_000)
    result = book.top_up_tenant("desk", 50_000_000)
    assert result.status == "topped_up"
    assert result.new_initial_microcents == 150_000_000
    assert book.initial_microcents("desk") == 150_000_000
    assert book.remaining_microcents("desk") == 150_000_000
    assert book.verify_conservation().is_balanced


def test_snapshot_balances(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk-a", 50_000_000)
    book.ensure_tenant("desk-b", 80_000_000)
    hold = book.try_reserve("desk-a", 10_000_000)
    book.commit(hold.reservation_id, 9_000_000)  # type: ignore[arg-type]
    snap = book.snapshot()
    assert len(snap.tenants) == 2
    assert conservation_status_for_snapshot(snap).is_balanced
    assert book.verify_conservation().is_balanced


def test_concurrent_reserve_never_overspends(wide: ledger.Ledger) -> None:
    wide.ensure_tenant("t1", 100_000_000)
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda _: wide.try_reserve("t1", 1_000_000), range(100)))
    assert sum(r.status == "reserved" for r in results) == 100
    assert wide.remaining_microcents("t1") == 0


def test_zero_cost_rejected(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 100_000_000)
    res = book.try_reserve("t1", 0)
    assert res.status == "insufficient"
    assert (res.remaining_microcents, res.required_microcents) == (0, 0)


def test_negative_cost_rejected(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 100_000_000)
    res = book.try_reserve("t1", -500)
    assert res.status == "insufficient" and res.required_microcents == -500


def test_negative_commit_rejected(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 100_000_000)
    hold = book.try_reserve("t1", 10_000_000)
    assert book.commit(hold.reservation_id, -5_000_000).status == "invalid_amount"  # type: ignore[arg-type]
    assert book.active_reservations() == 1


def test_failed_overrun_does_not_create_budget(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 10_000_000)
    rid = book.try_reserve("t1", 7_000_000).reservation_id
    assert rid is not None
    # remaining=3, reserved=7; actual=11 needs 4 more than is left
    result = book.commit(rid, 11_000_000)
    assert result.status == "overrun" and result.remaining_microcents == 3_000_000
    # no refund on a failed overrun, and the hold stays
    assert book.remaining_microcents("t1") == 3_000_000
    assert book.reserved_microcents("t1") == 7_000_000
    # releasing returns the original 7
    book.release(rid)
    assert book.remaining_microcents("t1") == 10_000_000


def test_no_deadlock_under_contention(wide: ledger.Ledger) -> None:
    wide.ensure_tenant("t1", 1_000_000_000)

    def worker(i: int) -> int:
        rid = wide.try_reserve("t1", 1_000_000).reservation_id
        if rid is None:
            return 0
        if i % 3 == 0:
            wide.release(rid)
            return 0
        assert wide.commit(rid, 800_000).status == "committed"
        return 800_000

    with ThreadPoolExecutor(50) as pool:
        spent = sum(pool.map(worker, range(50)))
    assert wide.remaining_microcents("t1") == 1_000_000_000 - spent > 0
    assert wide.active_reservations() == 0


def test_concurrent_overrun_never_goes_negative(wide: ledger.Ledger) -> None:
    wide.ensure_tenant("t1", 50_000_000)

    def worker(_: int) -> int:
        rid = wide.try_reserve("t1", 1_000_000).reservation_id
        if rid is None:
            return 0
        out = wide.commit(rid, 3_000_000)
        return 3_000_000 if out.status == "committed" else 0

    with ThreadPoolExecutor(20) as pool:
        spent = sum(pool.map(worker, range(20)))
    remaining = wide.remaining_microcents("t1")
    assert remaining is not None and remaining >= 0
    held = wide.reserved_microcents("t1")
    assert remaining + held + spent == 50_000_000


def test_double_commit_rejected(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 100_000_000)
    rid = book.try_reserve("t1", 10_000_000).reservation_id
    assert book.commit(rid, 8_000_000).status == "committed"  # type: ignore[arg-type]
    assert book.commit(rid, 8_000_000).status == "missing_reservation"  # type: ignore[arg-type]


def test_double_release_rejected(book: ledger.Ledger) -> None:
    book.ensure_tenant("t1", 100_000_000)
    rid = book.try_reserve("t1", 10_000_000).reservation_id
    assert book.release(rid).status == "released"  # type: ignore[arg-type]
    assert book.release(rid).status == "missing_reservation"  # type: ignore[arg-type]


def test_restore_from_snapshot_roundtrip(book: ledger.Ledger, db_url: str) -> None:
    book.ensure_tenant("desk", 1_000_000)
    rid = book.try_reserve("desk", 100_000).reservation_id
    book.commit(rid, 90_000)  # type: ignore[arg-type]
    snap = book.snapshot()
    assert snap.active_reservations == 0
    # "fresh engine": wipe the tenant through another snapshot, then restore
    book.restore_from_snapshot(BudgetSnapshot(version=0, tenants=(), active_reservations=0))
    assert book.tenant_count() == 0
    book.restore_from_snapshot(snap)
    assert book.remaining_microcents("desk") == 910_000
    assert book.committed_microcents("desk") == 90_000
    assert book.verify_conservation().is_balanced


def test_ensure_tenant_rejects_negative_budget(book: ledger.Ledger) -> None:
    # Documented deviation: the seed silently ignores a negative budget; we raise.
    with pytest.raises(ValueError, match="budget_microcents must be >= 0"):
        book.ensure_tenant("desk", -1)
    assert book.tenant_count() == 0


def test_certificate_baseline_is_monotonic(book: ledger.Ledger) -> None:
    # The seed rotates its baseline to 150, then 100 (no-op), then 200.
    # Drive the same totals through real spend and restores.
    def set_committed(total: int) -> None:
        book.restore_from_snapshot(
            BudgetSnapshot(
                version=0,
                tenants=(TenantLedger("desk", total, 0, 0, total),),
                active_reservations=0,
            )
        )

    set_committed(150)
    assert book.certify().committed_since_last_certificate == 150
    set_committed(100)
    assert book.certify().committed_since_last_certificate == 0
    set_committed(200)
    assert book.certify().committed_since_last_certificate == 50


def test_adversarial_snapshot_per_tenant_sum_overflow() -> None:
    snap = BudgetSnapshot(
        version=1,
        tenants=(TenantLedger("evil", 0, I64_MAX, 1, 0),),
        active_reservations=0,
    )
    assert conservation_status_for_snapshot(snap).status is Balance.AGGREGATE_OVERFLOW


def test_restore_rejects_duplicate_tenant(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk", 1_000_000)
    snap = book.snapshot()
    dup = BudgetSnapshot(snap.version, snap.tenants + snap.tenants, 0)
    with pytest.raises(errors.DuplicateTenant) as info:
        book.restore_from_snapshot(dup)
    assert info.value.tenant_id == "desk"


def test_top_up_rejects_overflow(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk", I64_MAX - 10)
    assert book.top_up_tenant("desk", 20).status == "overflow"
    assert book.initial_microcents("desk") == I64_MAX - 10


def test_reserve_rejects_reserved_total_overflow(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk", I64_MAX)
    book.set_max_reserved_microcents("desk", 0)
    assert book.try_reserve("desk", I64_MAX).status == "reserved"
    res2 = book.try_reserve("desk", 1)
    assert res2.status == "overflow"
    assert res2.current_reserved_microcents == I64_MAX


def test_commit_rejects_lifetime_overflow(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk", I64_MAX)
    rid = book.try_reserve("desk", 1).reservation_id
    assert book.commit(rid, I64_MAX - 1).status == "committed"  # type: ignore[arg-type]
    rid2 = book.try_reserve("desk", 1).reservation_id
    out = book.commit(rid2, 2)  # type: ignore[arg-type]
    assert out.status == "overflow"
    assert book.active_reservations() == 1  # the hold stays


def test_restore_rejects_ghost_reserved(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk", 1_000_000)
    t = book.snapshot().tenants[0]
    ghost = BudgetSnapshot(1, (TenantLedger("desk", t.initial_microcents, 900_000, 100_000, 0),), 0)
    with pytest.raises(errors.GhostReservation) as info:
        book.restore_from_snapshot(ghost)
    assert info.value.reserved_microcents == 100_000


def test_restore_rejects_unbalanced_snapshot(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk", 1_000_000)
    bad = BudgetSnapshot(1, (TenantLedger("desk", 1_000_000, 0, 0, 0),), 0)
    with pytest.raises(errors.ConservationViolation) as info:
        book.restore_from_snapshot(bad)
    assert info.value.status.delta_microcents == -1_000_000


def test_restore_rejects_active_reservations(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk", 1_000_000)
    assert book.try_reserve("desk", 50_000).reservation_id is not None
    snap = book.snapshot()
    assert snap.active_reservations == 1
    with pytest.raises(errors.ActiveReservations) as info:
        book.restore_from_snapshot(snap)
    assert info.value.count == 1


def test_exposure_limit_holds_under_concurrent_reserve(wide: ledger.Ledger, raw) -> None:  # type: ignore[no-untyped-def]
    wide.ensure_tenant("desk", 10_000_000)
    wide.set_max_reserved_microcents("desk", 100_000)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: wide.try_reserve("desk", 80_000), range(32)))
    assert sum(r.status == "reserved" for r in results) == 1
    assert {r.status for r in results} == {"reserved", "exposure_limit_exceeded"}
    assert wide.reserved_microcents("desk") == 80_000
    assert wide.verify_conservation().is_balanced
    assert holds_match_reserved(raw) == []


def test_exposure_limit_blocks_reserve(book: ledger.Ledger) -> None:
    book.ensure_tenant("desk", 1_000_000)
    book.set_max_reserved_microcents("desk", 100_000)
    assert book.try_reserve("desk", 60_000).reservation_id is not None
    res = book.try_reserve("desk", 50_000)
    assert res.status == "exposure_limit_exceeded"
    assert (res.current_reserved_microcents, res.max_reserved_microcents) == (60_000, 100_000)
    assert res.reservation_id is None
    assert book.verify_conservation().is_balanced
