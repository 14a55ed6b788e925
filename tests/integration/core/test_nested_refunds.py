"""Refunds of a nested commit act at every level it settled at (issue 24, revision 0012)."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, pool, text

import ledger
from ledger import Status, errors
from ledger.roles import enable_row_level_security

pytestmark = pytest.mark.pg_versions

LEVELS = ("key", "user", "team", "org")
BUDGETS = {"org": 10_000, "team": 5_000, "user": 2_000, "key": 1_000}


def _gateway(book: ledger.Ledger, scale: int = 1) -> None:
    """org -> team -> user -> key, with room at every level."""
    book.ensure_tenant("org", BUDGETS["org"] * scale)
    book.ensure_tenant("team", BUDGETS["team"] * scale, "org")
    book.ensure_tenant("user", BUDGETS["user"] * scale, "team")
    book.ensure_tenant("key", BUDGETS["key"] * scale, "user")


def _committed(book: ledger.Ledger, tenant: str, hold: int, actual: int) -> int:
    out = book.try_reserve(tenant, hold)
    assert out.reservation_id is not None, out
    assert book.commit(out.reservation_id, actual).status == Status.COMMITTED
    return out.reservation_id


def _balances(book: ledger.Ledger, tenant: str) -> tuple[int, int, int]:
    t = book.tenant(tenant)
    assert t is not None
    return t.remaining_microcents, t.reserved_microcents, t.committed_microcents


def _rows(raw: psycopg.Connection) -> dict[str, tuple[Any, ...]]:
    return {
        r[0]: r[1:]
        for r in raw.execute(
            "SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,"
            " committed_microcents, journal_seq, journal_head FROM ledger.tenants"
        )
    }


def _refunded(raw: psycopg.Connection, rid: int) -> dict[str, int]:
    return {
        r[0]: int(r[1])
        for r in raw.execute(
            "SELECT tenant_id, sum(amount_microcents) FROM ledger.journal"
            " WHERE op = 'refund' AND reservation_id = %s GROUP BY tenant_id",
            (rid,),
        )
    }


def test_a_refund_of_a_nested_commit_restores_every_level(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    _gateway(book)
    rid = _committed(book, "key", 300, 250)
    back = book.refund("key", rid, 100, reason="ticket 1")
    assert back.status == "refunded"
    assert (back.remaining_microcents, back.committed_microcents) == (850, 150)
    assert back.left_microcents == 150
    for tenant in LEVELS:
        assert _balances(book, tenant) == (BUDGETS[tenant] - 150, 0, 150)
    # one refund entry in each level's own chain, with the reason
    entries = raw.execute(
        "SELECT tenant_id, amount_microcents, reason FROM ledger.journal"
        " WHERE op = 'refund' AND reservation_id = %s ORDER BY tenant_id",
        (rid,),
    ).fetchall()
    assert entries == [(t, 100, "ticket 1") for t in sorted(LEVELS)]
    rest = book.refund("key", rid, 150, reason="ticket 1, the rest")
    assert rest.status == "refunded" and rest.left_microcents == 0
    for tenant in LEVELS:
        assert _balances(book, tenant) == (BUDGETS[tenant], 0, 0)
    assert book.verify_journal().ok
    assert book.verify_conservation().is_balanced


def test_a_refund_over_the_commit_changes_nothing_at_any_level(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    _gateway(book)
    rid = _committed(book, "key", 300, 250)
    book.refund("key", rid, 200, reason="most of it")
    before = _rows(raw)
    entries = raw.execute("SELECT count(*) FROM ledger.journal").fetchone()
    out = book.refund("key", rid, 51, reason="too much")
    assert out.status == "refund_exceeds_commit" and out.left_microcents == 50
    with pytest.raises(ledger.errors.RefundExceedsCommitError):
        out.raise_for_status()
    assert _rows(raw) == before
    assert raw.execute("SELECT count(*) FROM ledger.journal").fetchone() == entries
    assert book.verify_journal().ok


def test_the_least_left_at_any_level_bounds_the_refund(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """Spend a level's committed elsewhere down: its own committed caps the refund too."""
    _gateway(book)
    rid = _committed(book, "key", 300, 300)
    # the team's committed is 300; the key's commit has 300 left at every level.
    # A restore-free way to make one level tighter: refund part at the flat
    # function directly, as revision 0010's gap did (the key only).
    raw.execute("SELECT * FROM ledger.refund_commit('key', %s, 120, 'before 0012', NULL)", (rid,))
    assert _balances(book, "key") == (820, 0, 180)
    assert _balances(book, "user") == (1_700, 0, 300)
    out = book.refund("key", rid, 181, reason="more than the key has left")
    assert out.status == "refund_exceeds_commit" and out.left_microcents == 180
    done = book.refund("key", rid, 180, reason="what the key has left")
    assert done.status == "refunded" and done.left_microcents == 0
    assert _balances(book, "key") == (1_000, 0, 0)
    for tenant in ("user", "team", "org"):
        assert _balances(book, tenant) == (BUDGETS[tenant] - 120, 0, 120)
    assert _refunded(raw, rid) == {"key": 300, "user": 180, "team": 180, "org": 180}
    assert book.verify_journal().ok


def test_after_a_move_the_refund_goes_to_the_old_levels(book: ledger.Ledger) -> None:
    _gateway(book)
    book.ensure_tenant("team2", 5_000, "org")
    rid = _committed(book, "key", 100, 100)
    book.set_parent("user", "team2")
    after = _committed(book, "key", 10, 10)
    out = book.refund("key", rid, 100, reason="the old commit")
    assert out.status == "refunded" and out.left_microcents == 0
    assert _balances(book, "team") == (5_000, 0, 0)
    assert _balances(book, "team2") == (4_990, 0, 10)
    assert _balances(book, "org") == (9_990, 0, 10)
    assert _balances(book, "user") == (1_990, 0, 10)
    assert _balances(book, "key") == (990, 0, 10)
    # and the commit made after the move refunds at the new path
    assert book.refund("key", after, 10, reason="the new one").status == "refunded"
    assert _balances(book, "team2") == (5_000, 0, 0)
    assert _balances(book, "org") == (10_000, 0, 0)
    assert book.verify_journal().ok


def test_a_commit_named_by_any_of_its_levels_refunds_at_all_of_them(
    book: ledger.Ledger,
) -> None:
    _gateway(book)
    book.ensure_tenant("team2", 5_000, "org")
    rid = _committed(book, "key", 100, 100)
    out = book.refund("team", rid, 40, reason="named by the team")
    assert out.status == "refunded" and out.left_microcents == 60
    assert (out.remaining_microcents, out.committed_microcents) == (4_940, 60)
    for tenant in LEVELS:
        assert _balances(book, tenant) == (BUDGETS[tenant] - 60, 0, 60)
    # a tenant the commit did not settle at does not name it
    assert book.refund("team2", rid, 1, reason="not its commit").status == "unknown_commit"
    assert book.refund("nobody", rid, 1, reason="no tenant").status == "missing_tenant"
    assert book.verify_journal().ok


def test_a_hold_not_committed_is_no_commit(book: ledger.Ledger) -> None:
    _gateway(book)
    out = book.try_reserve("key", 100)
    assert out.reservation_id is not None
    assert book.refund("key", out.reservation_id, 1, reason="open").status == "unknown_commit"
    book.release(out.reservation_id)
    assert book.refund("key", out.reservation_id, 1, reason="gone").status == "unknown_commit"
    for tenant in LEVELS:
        assert _balances(book, tenant) == (BUDGETS[tenant], 0, 0)


def test_a_nested_commit_that_a_restore_undid_is_not_refundable(book: ledger.Ledger) -> None:
    _gateway(book)
    rid = _committed(book, "key", 100, 100)
    book.restore_from_snapshot(book.snapshot())
    assert book.refund("key", rid, 10, reason="after restore").status == "unknown_commit"
    for tenant in LEVELS:
        assert _balances(book, tenant) == (BUDGETS[tenant] - 100, 0, 100)


def test_a_keyed_nested_refund_is_applied_once(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    _gateway(book)
    rid = _committed(book, "key", 100, 100)
    first = book.refund("key", rid, 30, reason="ticket 9", idempotency_key="r-1")
    again = book.refund("key", rid, 30, reason="ticket 9", idempotency_key="r-1")
    assert first == again and first.left_microcents == 70
    assert _refunded(raw, rid) == {t: 30 for t in LEVELS}
    keys = raw.execute(
        "SELECT tenant_id FROM ledger.journal WHERE op = 'refund' AND idempotency_key = 'r-1'"
    ).fetchall()
    assert keys == [("key",)]
    assert book.verify_journal().ok


def test_flat_refunds_next_to_a_tree_stay_flat(book: ledger.Ledger) -> None:
    _gateway(book)
    book.ensure_tenant("flat", 1_000)
    rid = _committed(book, "flat", 100, 80)
    assert book.refund("flat", rid, 80, reason="flat").left_microcents == 0
    assert _balances(book, "flat") == (1_000, 0, 0)
    assert book.refund("org", rid, 1, reason="not the org's").status == "unknown_commit"
    assert _balances(book, "org") == (10_000, 0, 0)


def test_each_level_renews_first_and_its_refund_carries_its_commit_period(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """The team renews daily, the key has no periods: each entry names its level's period."""
    book.ensure_tenant("team", 1_000)
    anchor = datetime.now(UTC) + timedelta(hours=12) - timedelta(days=10)
    book.set_allowance("team", 100, days=1, anchor=anchor)
    book.ensure_tenant("key", 1_000, "team")
    rid = _committed(book, "key", 50, 40)
    with raw.transaction():  # the team's period ends: the refund renews it first
        raw.execute(
            "UPDATE ledger.allowances SET anchor = anchor - interval '1 day'"
            " WHERE tenant_id = 'team'"
        )
        raw.execute(
            "UPDATE ledger.tenants SET renews_at = renews_at - interval '1 day'"
            " WHERE tenant_id = 'team'"
        )
    out = book.refund("key", rid, 15, reason="period test")
    assert out.status == "refunded" and out.left_microcents == 25
    assert _balances(book, "key") == (975, 0, 25)
    assert _balances(book, "team")[2] == 25
    periods = raw.execute(
        "SELECT tenant_id, op, period_index FROM ledger.journal"
        " WHERE reservation_id = %s AND op IN ('commit', 'refund') ORDER BY tenant_id, seq",
        (rid,),
    ).fetchall()
    commit_period = periods[2][2]
    assert commit_period is not None
    assert periods == [
        ("key", "commit", None),
        ("key", "refund", None),
        ("team", "commit", commit_period),
        ("team", "refund", commit_period),
    ]
    renewed = raw.execute(
        "SELECT max(period_index) FROM ledger.tenants WHERE tenant_id = 'team'"
    ).fetchone()
    assert renewed is not None and renewed[0] > commit_period
    assert book.verify_journal().ok
    assert book.verify_conservation().is_balanced


def test_a_role_that_cannot_see_the_levels_is_refused_and_nothing_changes(
    db_url: str, raw: psycopg.Connection
) -> None:
    """A tenant-scoped role sees one level's entries only: refusing beats refunding at part."""
    enable_row_level_security(db_url)
    engine = create_engine(db_url, poolclass=pool.NullPool)
    with ledger.Ledger(db_url) as book:
        _gateway(book)
        rid = _committed(book, "key", 100, 100)
        before = _rows(raw)
        try:
            with engine.connect() as conn:
                conn.execute(text('SET ROLE "ledger_tenant_app"'))
                conn.commit()
                with pytest.raises(errors.PermissionDenied), conn.begin():
                    conn.execute(text("SET LOCAL ledger.tenant_id = 'key'"))
                    book.refund("key", rid, 10, reason="r", connection=conn)
        finally:
            engine.dispose()
        assert _rows(raw) == before


# ----------------------------------------------------------------- concurrency

THREADS = 8
PROCESSES = 4


def _refund_until_refused(book: ledger.Ledger, tenant: str, rid: int, step: int) -> int:
    done = 0
    while True:
        out = book.refund(tenant, rid, step, reason="race")
        if out.status != "refunded":
            assert out.status == "refund_exceeds_commit", out
            return done
        done += step


def test_threads_refunding_one_nested_commit_never_exceed_it_at_any_level(
    db_url: str, raw: psycopg.Connection
) -> None:
    engine = create_engine(db_url, pool_size=THREADS, max_overflow=0)
    book = ledger.Ledger(engine)
    try:
        _gateway(book, scale=1_000)
        book.ensure_tenant("user2", 2_000_000, "team")
        book.ensure_tenant("key2", 1_000_000, "user2")
        # ~200 refunds of 10 or 30 in all: enough for every thread to race the others
        rid = _committed(book, "key", 3_000, 2_990)
        barrier = threading.Barrier(THREADS)
        spent = [0] * THREADS

        def work(i: int) -> int:
            barrier.wait()
            # nested holds through the same levels, locking them as refunds do
            if i % 2 == 0:
                for _ in range(5):
                    spent[i] += 7
                    _committed(book, "key2" if i % 4 else "key", 10, 7)
            # named by the key and by the team: the same commit
            return _refund_until_refused(book, "key" if i % 3 else "team", rid, 10 if i % 2 else 30)

        with ThreadPoolExecutor(THREADS) as pool_:
            refunded = sum(pool_.map(work, range(THREADS)))
        assert _refunded(raw, rid) == {t: refunded for t in LEVELS}
        assert 2_990 - 30 < refunded <= 2_990
        net = 2_990 - refunded
        assert book.refund("key", rid, 10, reason="x").left_microcents == net
        assert _balances(book, "org")[2] == net + sum(spent)
        assert _balances(book, "team")[2] == net + sum(spent)
        assert book.verify_journal().ok
        assert book.verify_conservation().is_balanced
    finally:
        book.close()
        engine.dispose()


def _process_refunds(url: str, tenant: str, rid: int, step: int, start: Any) -> int:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        start.wait(60)
        return _refund_until_refused(ledger.Ledger(engine), tenant, rid, step)
    finally:
        engine.dispose()


def test_processes_refunding_one_nested_commit_never_exceed_it_at_any_level(
    db_url: str, raw: psycopg.Connection
) -> None:
    with ledger.Ledger(db_url) as book:
        _gateway(book, scale=100)
        rid = _committed(book, "key", 20_000, 8_000)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager:
            start = manager.Event()
            with ctx.Pool(PROCESSES) as workers:
                pending = [
                    workers.apply_async(
                        _process_refunds, (db_url, LEVELS[i % len(LEVELS)], rid, 20, start)
                    )
                    for i in range(PROCESSES)
                ]
                start.set()
                refunded = sum(p.get(timeout=300) for p in pending)
        assert refunded == 8_000  # exact: 400 refunds of 20, and not one more
        assert _refunded(raw, rid) == {t: 8_000 for t in LEVELS}
        for tenant in LEVELS:
            assert _balances(book, tenant) == (BUDGETS[tenant] * 100, 0, 0)
        assert book.verify_journal().ok
        assert book.verify_conservation().is_balanced
