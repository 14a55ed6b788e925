"""Settling holds whose tenant the caller does not pass, lapsed holds, the sweeper and
batches, on a distributed schema.

Citus runs a locking read only when it filters by the tenant. So on Citus a
settlement without ``tenant_id`` reads the hold's tenant first, without a lock,
and then runs the routed tenant-keyed statement; the sweeper reads its
candidates without a lock and expires each through its tenant's routed
statement; a batch applies its items one by one, each routed. These tests pin
what that costs (remote commands) and that it stays exact under concurrency.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import ledger
from ledger import TenantLedger
from ledger._batch import CommitItem, ReleaseItem, ReserveItem

from .conftest import SHARDS, Recorder, fresh_schema, logged_engine
from .test_contract import settled


def test_settling_without_the_tenant_reads_it_then_routes(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    """One lookup per shard (no lock), then the one routed call: no 2PC."""
    book.ensure_tenant("acme", 1_000)
    for settle in ("commit", "release"):
        rid = book.try_reserve("acme", 300).reservation_id
        assert rid is not None
        with recorder.capture(f"{settle} (no tenant_id)") as remote:
            out = book.commit(rid, 100) if settle == "commit" else book.release(rid)
        assert out.ok
        routed = [c for c in remote.statements if f"routed_{settle}_for_tenant_" in c]
        lookups = [c for c in remote.statements if c not in routed]
        assert len(routed) == 1, remote.summary()
        assert len(lookups) == SHARDS, remote.summary()
        assert all(c.startswith("SELECT tenant_id FROM") and "FOR" not in c for c in lookups)
        assert not remote.two_phase, remote.summary()
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 900, 0, 100)
    settled(book, raw, schema)


def test_settling_holds_that_are_gone_or_lapsed_without_the_tenant(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str
) -> None:
    book.ensure_tenant("acme", 1_000)
    book.ensure_tenant("zed", 1_000)
    assert book.commit(10**12, 5).status == "missing_reservation"
    assert book.release(10**12).status == "missing_reservation"
    short = timedelta(microseconds=1)
    lapsed = [book.try_reserve(t, 100, ttl=short).reservation_id for t in ("acme", "zed", "acme")]
    time.sleep(0.01)
    assert book.commit(lapsed[0], 50).to_dict() == {  # type: ignore[arg-type]
        "status": "expired",
        "remaining_microcents": 900,  # acme's other lapsed hold is still there
        "returned_microcents": 100,
    }
    assert book.release(lapsed[1]).status == "expired"  # type: ignore[arg-type]
    assert book.release(lapsed[2], tenant_id="acme").status == "expired"  # type: ignore[arg-type]
    # Already expired: the journal says so.
    assert book.commit(lapsed[1], 1).to_dict() == {  # type: ignore[arg-type]
        "status": "expired",
        "returned_microcents": 100,
    }
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 1_000, 0, 0)
    assert book.tenant("zed") == TenantLedger("zed", 1_000, 1_000, 0, 0)
    settled(book, raw, schema)


def test_sweepers_and_settlements_expire_each_hold_exactly_once(
    citus_url: str, schema: str, recorder: Recorder, raw: psycopg.Connection
) -> None:
    """4 sweepers and 4 settling threads on the same lapsed and live holds, 6 tenants."""
    tenants = [f"s{i}" for i in range(6)]
    engine = logged_engine(citus_url, recorder, pool_size=10)
    try:
        book = ledger.Ledger(engine, schema=schema)
        for t in tenants:
            book.ensure_tenant(t, 10**6)
        rng = random.Random(7)
        lapsed: list[tuple[int, str]] = []
        live: list[tuple[int, str]] = []
        for i in range(120):
            t = tenants[i % len(tenants)]
            if i % 3:
                out = book.try_reserve(t, rng.randint(1, 1_000), ttl=timedelta(microseconds=1))
                lapsed.append((out.reservation_id, t))  # type: ignore[arg-type]
            else:
                out = book.try_reserve(t, rng.randint(1, 1_000), ttl=timedelta(hours=1))
                live.append((out.reservation_id, t))  # type: ignore[arg-type]
        time.sleep(0.01)
        swept: list[int] = []
        settlements: dict[int, str] = {}
        lock = threading.Lock()
        start = threading.Barrier(8)

        def sweeper() -> None:
            start.wait()
            n = 0
            while True:
                got = book.expire_holds(limit=7)
                n += got
                if got == 0:
                    break
            with lock:
                swept.append(n)

        def settler(k: int) -> None:
            start.wait()
            mine = [h for i, h in enumerate(lapsed + live) if i % 4 == k]
            for rid, t in mine:
                # Half without the tenant (looked up), half with it.
                kw = {"tenant_id": t} if rid % 2 else {}
                out = book.release(rid, **kw) if k % 2 else book.commit(rid, 1, **kw)
                with lock:
                    settlements[rid] = str(out.status)

        with ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(sweeper) for _ in range(4)]
            jobs += [pool.submit(settler, k) for k in range(4)]
            for job in jobs:
                job.result()
        lapsed_ids = {rid for rid, _ in lapsed}
        assert {settlements[rid] for rid in lapsed_ids} == {"expired"}
        assert all(settlements[rid] in ("committed", "released") for rid, _ in live)
        # Exactly one expire entry per lapsed hold, none for a live one.
        expires = raw.execute(
            f'SELECT reservation_id, count(*) FROM "{schema}".journal'
            " WHERE op = 'expire' GROUP BY 1"
        ).fetchall()
        assert {rid for rid, _ in expires} == lapsed_ids
        assert {n for _, n in expires} == {1}
        assert sum(swept) <= len(lapsed_ids)
        assert book.active_reservations() == 0
        snap = book.snapshot()
        assert all(t.reserved_microcents == 0 for t in snap.tenants)
        committed = sum(1 for rid, _ in live if settlements[rid] == "committed")
        assert sum(t.committed_microcents for t in snap.tenants) == committed
        settled(book, raw, schema)
    finally:
        engine.dispose()


def _plain_steps(book: ledger.Ledger, kind: str, items: list[Any]) -> list[Any]:
    """The same items, each by its single operation, in order."""
    out: list[Any] = []
    for it in items:
        if kind == "reserve":
            out.append(book.try_reserve(it.tenant_id, it.cost_microcents, ttl=it.ttl))
        elif kind == "commit":
            out.append(book.commit(it.reservation_id, it.actual_microcents))
        else:
            out.append(book.release(it.reservation_id))
    return out


def _norm(outcomes: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in o.to_dict().items() if k != "reservation_id"} for o in outcomes]


def test_batches_match_sequential_application(citus_url: str, recorder: Recorder) -> None:
    """A batch on Citus gives what its items give one by one on another schema."""
    results: list[list[Any]] = []
    with fresh_schema(citus_url) as a, fresh_schema(citus_url) as b:
        engine = logged_engine(citus_url, recorder)
        try:
            for schema, batched in ((a, True), (b, False)):
                book = ledger.Ledger(engine, schema=schema)
                for t, budget in (("a", 100), ("b", 100), ("c", 10)):
                    book.ensure_tenant(t, budget)
                lapsing = book.try_reserve("c", 5, ttl=timedelta(microseconds=1)).reservation_id
                time.sleep(0.01)
                reserves = [
                    ReserveItem(t, c)
                    for t, c in (("a", 60), ("b", 60), ("a", 60), ("c", 8), ("a", 40), ("x", 1))
                ]
                with recorder.capture("try_reserve_many (6 items)" if batched else None):
                    outs = (
                        book.try_reserve_many(reserves)
                        if batched
                        else _plain_steps(book, "reserve", reserves)
                    )
                got = [_norm(outs)]
                ids = [o.reservation_id for o in outs if o.reservation_id is not None]
                commits = [CommitItem(rid, 70) for rid in ids[1:]]  # b commits, c and a overrun
                commits += [CommitItem(10**12, 1), CommitItem(lapsing, 1)]  # type: ignore[arg-type]
                releases = [ReleaseItem(ids[0]), ReleaseItem(ids[0])]
                if batched:
                    got.append(_norm(book.commit_many(commits)))
                    got.append(_norm(book.release_many(releases)))
                else:
                    got.append(_norm(_plain_steps(book, "commit", commits)))
                    got.append(_norm(_plain_steps(book, "release", releases)))
                got.append(list(book.snapshot().tenants))
                assert book.verify_journal().ok
                results.append(got)
        finally:
            engine.dispose()
    assert results[0] == results[1]
    statuses = [o["status"] for part in results[0][:3] for o in part]  # type: ignore[index]
    assert {"reserved", "insufficient", "missing_tenant", "committed", "overrun", "expired"} <= set(
        statuses
    )


def test_a_refused_all_or_nothing_batch_changes_nothing(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str
) -> None:
    """Items on both workers: the refusal rolls back every tenant's part."""
    tenants = [f"w{i}" for i in range(6)]
    for t in tenants:
        book.ensure_tenant(t, 100)
    before = book.snapshot().tenants
    items = [(t, 60) for t in tenants] + [(tenants[0], 60)]
    with pytest.raises(ledger.errors.BatchRefused) as refused:
        book.try_reserve_many(items, all_or_nothing=True)
    assert [o.status for o in refused.value.outcomes][-1] == "insufficient"
    assert book.snapshot().tenants == before and book.active_reservations() == 0
    settled(book, raw, schema)


def test_concurrent_batches_in_opposite_orders_stay_exact(
    citus_url: str, schema: str, recorder: Recorder, raw: psycopg.Connection
) -> None:
    """Batches apply item by item on Citus, so two can lock two tenants in opposite
    orders: Citus's distributed deadlock detection cancels one, the ledger retries
    it, and the sums stay exact."""
    engine = logged_engine(citus_url, recorder, pool_size=10)
    try:
        book = ledger.Ledger(engine, schema=schema)
        tenants = ["a", "b", "c", "d"]
        for t in tenants:
            book.ensure_tenant(t, 10**9)
        spent = [0] * 8

        def worker(k: int) -> None:
            order = tenants if k % 2 else list(reversed(tenants))
            for _ in range(6):
                outs = book.try_reserve_many([(t, 100) for t in order])
                rids = [o.reservation_id for o in outs]
                assert all(o.ok for o in outs)
                half = len(rids) // 2
                done = book.commit_many([(rid, 60) for rid in reversed(rids[:half])])
                assert all(o.status == "committed" for o in done)
                gone = book.release_many(list(reversed(rids[half:])))
                assert all(o.status == "released" for o in gone)
                spent[k] += 60 * half

        with ThreadPoolExecutor(8) as pool:
            for job in [pool.submit(worker, k) for k in range(8)]:
                job.result()
        snap = book.snapshot()
        assert sum(t.committed_microcents for t in snap.tenants) == sum(spent)
        assert all(t.reserved_microcents == 0 for t in snap.tenants)
        assert snap.active_reservations == 0
        settled(book, raw, schema)
    finally:
        engine.dispose()
