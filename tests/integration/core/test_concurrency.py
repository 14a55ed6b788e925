"""Many threads and many processes against one hot tenant, with exact sums.

Every worker logs what the ledger acknowledged. At the end the tenant's
balances must equal what those acknowledgements imply, to the microcent; a
reader snapshots throughout and every snapshot must balance.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
import pytest
from sqlalchemy import Engine, create_engine

import ledger
from ledger import conservation_status_for_snapshot
from tests.helpers import holds_match_reserved

pytestmark = pytest.mark.pg_versions

THREADS = 32
PROCESSES = 8


def _engine(url: str, size: int) -> Engine:
    return create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=size, max_overflow=0
    )


@pytest.fixture
def hot(db_url: str) -> Iterator[ledger.Ledger]:
    engine = _engine(db_url, THREADS + 4)
    yield ledger.Ledger(engine)
    engine.dispose()


@dataclass
class Tally:
    """What one worker saw acknowledged."""

    committed: int = 0
    topped_up: int = 0
    reserved_ok: int = 0
    refused: int = 0
    overruns: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def see(self, status: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


def _workload(book: ledger.Ledger, seed: int, ops: int, tenant: str = "hot") -> Tally:
    """Random reserve -> (commit | release | overrun attempt) cycles and top-ups."""
    rng = random.Random(seed)
    tally = Tally()
    for _ in range(ops):
        if rng.random() < 0.05:
            out = book.top_up_tenant(tenant, rng.randint(1, 50_000))
            tally.see(out.status)
            if out.ok:
                tally.topped_up += out.added_microcents  # type: ignore[operator]
            continue
        hold = book.try_reserve(tenant, rng.randint(1, 120_000))
        tally.see(hold.status)
        if not hold.ok:
            tally.refused += 1
            continue
        tally.reserved_ok += 1
        rid = hold.reservation_id
        assert rid is not None
        roll = rng.random()
        if roll < 0.25:
            assert book.release(rid).status == "released"
            continue
        actual = rng.randint(0, 120_000) if roll < 0.9 else rng.randint(120_000, 400_000)
        out = book.commit(rid, actual)
        tally.see(out.status)
        if out.status == "committed":
            tally.committed += actual
        else:
            assert out.status == "overrun"
            tally.overruns += 1
            assert book.release(rid).status == "released"
    return tally


class SnapshotReader(threading.Thread):
    """Takes snapshots until stopped; records any that fail to balance."""

    def __init__(self, book: ledger.Ledger) -> None:
        super().__init__(daemon=True)
        self.book = book
        self.stop = threading.Event()
        self.taken = 0
        self.bad: list[object] = []

    def run(self) -> None:
        last_version = 0
        while not self.stop.is_set():
            snap = self.book.snapshot()
            status = conservation_status_for_snapshot(snap)
            if not status.is_balanced or snap.version <= last_version:
                self.bad.append((snap, status))
            if any(t.remaining_microcents < 0 for t in snap.tenants):
                self.bad.append(snap)
            last_version = snap.version
            self.taken += 1


def _check_final(
    book: ledger.Ledger, raw: psycopg.Connection, initial: int, tallies: list[Tally]
) -> None:
    committed = sum(t.committed for t in tallies)
    topped = sum(t.topped_up for t in tallies)
    t = book.tenant("hot")
    assert t is not None
    assert t.reserved_microcents == 0
    assert book.active_reservations() == 0
    assert t.committed_microcents == committed
    assert t.initial_microcents == initial + topped
    assert t.remaining_microcents == initial + topped - committed
    assert t.remaining_microcents >= 0
    assert book.verify_conservation().is_balanced
    assert holds_match_reserved(raw) == []


def test_threads_hot_tenant_exact_sums_and_balanced_snapshots(
    hot: ledger.Ledger, raw: psycopg.Connection
) -> None:
    initial = 3_000_000  # small enough that a good share of reserves is refused
    hot.ensure_tenant("hot", initial)
    reader = SnapshotReader(hot)
    reader.start()
    with ThreadPoolExecutor(THREADS) as pool:
        tallies = list(pool.map(lambda s: _workload(hot, s, 60), range(THREADS)))
    reader.stop.set()
    reader.join()
    assert reader.taken > 0 and reader.bad == []
    assert sum(t.refused for t in tallies) > 0, "the budget should have run short sometimes"
    _check_final(hot, raw, initial, tallies)


def _process_worker(
    url: str, seed: int, ops: int, start: multiprocessing.synchronize.Event
) -> Tally:  # type: ignore[name-defined]
    engine = _engine(url, 2)
    try:
        start.wait(60)
        return _workload(ledger.Ledger(engine), seed, ops)
    finally:
        engine.dispose()


def test_processes_hot_tenant_exact_sums(db_url: str, raw: psycopg.Connection) -> None:
    engine = _engine(db_url, 4)
    book = ledger.Ledger(engine)
    initial = 2_000_000
    book.ensure_tenant("hot", initial)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(PROCESSES) as pool:
            pending = [
                pool.apply_async(_process_worker, (db_url, s, 80, start)) for s in range(PROCESSES)
            ]
            reader = SnapshotReader(book)
            reader.start()
            start.set()
            tallies = [p.get(timeout=300) for p in pending]
            reader.stop.set()
            reader.join()
    assert reader.bad == []
    assert sum(t.refused for t in tallies) > 0
    _check_final(book, raw, initial, tallies)
    engine.dispose()


def test_last_unit_race_has_exactly_one_winner(hot: ledger.Ledger) -> None:
    for round_no in range(5):
        tenant = f"last-{round_no}"
        hot.ensure_tenant(tenant, 1)
        barrier = threading.Barrier(THREADS)

        def go(_: int, tenant: str = tenant, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return str(hot.try_reserve(tenant, 1).status)

        with ThreadPoolExecutor(THREADS) as pool:
            statuses = list(pool.map(go, range(THREADS)))
        assert statuses.count("reserved") == 1
        assert statuses.count("insufficient") == THREADS - 1
        assert hot.remaining_microcents(tenant) == 0


def test_exposure_cap_under_barrier_start(hot: ledger.Ledger) -> None:
    hot.ensure_tenant("desk", 10_000_000)
    hot.set_max_reserved_microcents("desk", 100_000)
    barrier = threading.Barrier(THREADS)

    def go(_: int) -> str:
        barrier.wait()
        return str(hot.try_reserve("desk", 80_000).status)

    with ThreadPoolExecutor(THREADS) as pool:
        statuses = list(pool.map(go, range(THREADS)))
    assert statuses.count("reserved") == 1
    assert statuses.count("exposure_limit_exceeded") == THREADS - 1
    assert hot.reserved_microcents("desk") == 80_000


def test_same_hold_settled_concurrently_exactly_once(hot: ledger.Ledger) -> None:
    hot.ensure_tenant("t", 1_000_000)
    for _ in range(5):
        rid = hot.try_reserve("t", 100_000).reservation_id
        assert rid is not None
        barrier = threading.Barrier(16)

        def go(i: int, rid: int = rid, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            out = hot.commit(rid, 60_000) if i % 2 else hot.release(rid)
            return str(out.status)

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(go, range(16)))
        winners = [s for s in statuses if s in ("committed", "released")]
        assert len(winners) == 1
        assert statuses.count("missing_reservation") == 15
    t = hot.tenant("t")
    assert t is not None and t.reserved_microcents == 0
    assert t.remaining_microcents + t.committed_microcents == 1_000_000


def test_no_deadlock_across_tenants_and_operations(
    hot: ledger.Ledger, raw: psycopg.Connection
) -> None:
    names = ["a", "b", "c"]
    for n in names:
        hot.ensure_tenant(n, 5_000_000)
    hot.set_max_reserved_microcents("b", 300_000)

    def worker(seed: int) -> int:
        rng = random.Random(seed)
        spent = 0
        for _ in range(30):
            tenant = rng.choice(names)
            hold = hot.try_reserve(tenant, rng.randint(1, 50_000))
            if hold.ok:
                if rng.random() < 0.5:
                    actual = rng.randint(0, 60_000)
                    if hot.commit(hold.reservation_id, actual).status == "committed":  # type: ignore[arg-type]
                        spent += actual
                    else:
                        hot.release(hold.reservation_id)  # type: ignore[arg-type]
                else:
                    hot.release(hold.reservation_id, tenant_id=tenant)  # type: ignore[arg-type]
        return spent

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(worker, s) for s in range(THREADS)]
        spent = sum(f.result(timeout=240) for f in futures)
    snap = hot.snapshot()
    assert sum(t.committed_microcents for t in snap.tenants) == spent
    assert sum(t.remaining_microcents for t in snap.tenants) == 15_000_000 - spent
    assert holds_match_reserved(raw) == []
