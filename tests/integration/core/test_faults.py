"""Faults: crashes, killed connections, timeouts and races, with exact accounting.

Short versions run in CI; ``-m slow`` runs the long ones. Every scenario
records its figures in ``FIGURES``, which conftest prints at the end of the run
(the same table as docs/reliability.md).
"""

from __future__ import annotations

import multiprocessing
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine

import ledger
from ledger import embedded, errors
from tests.conftest import FIGURES, _plain
from tests.helpers import holds_match_reserved


def pytest_generate_tests(metafunc: Any) -> None:
    """Scenarios taking ``scale`` run short by default and long under ``-m slow``."""
    if "scale" in metafunc.fixturenames:
        metafunc.parametrize(
            "scale",
            [
                pytest.param("short", id="short"),
                pytest.param("long", id="long", marks=pytest.mark.slow),
            ],
        )


# ------------------------------------------------------------- crash durability


class CrashHarness:
    """Runs keyed operations against a server it may kill -9, and audits what survived."""

    def __init__(self, root: Path, settings: dict[str, str] | None = None) -> None:
        self.dir = root / "pg"
        self.server = embedded.start(self.dir, cleanup="delete", settings=settings)
        ledger.migrate(self.server.url)
        self.tenants = [f"c{i}" for i in range(4)]
        with ledger.Ledger(self.server.url) as book:
            for t in self.tenants:
                book.ensure_tenant(t, 10**9)
        self.acked: list[tuple[str, str, bool]] = []  # (tenant, key, applied)
        self.ambiguous: list[tuple[str, str, Any]] = []  # (tenant, key, retry)
        self.lock = threading.Lock()
        self.restarts = 0
        self.broken_restarts = 0

    def _worker(self, book: ledger.Ledger, name: str, stop: threading.Event) -> None:
        rng = random.Random(name)
        holds: list[tuple[int, str]] = []
        n = 0
        while not stop.is_set():
            n += 1
            key = f"{name}-{n}"
            tenant = rng.choice(self.tenants)
            if holds and rng.random() < 0.5:
                rid, tenant = holds.pop()
                if rng.random() < 0.7:
                    # the actual is fixed now: a retry must repeat the same request
                    def call(
                        b: ledger.Ledger,
                        rid: int = rid,
                        t: str = tenant,
                        k: str = key,
                        actual: int = rng.randint(0, 2_000),
                    ) -> Any:
                        return b.commit(rid, actual, tenant_id=t, idempotency_key=k)
                else:

                    def call(
                        b: ledger.Ledger, rid: int = rid, t: str = tenant, k: str = key
                    ) -> Any:
                        return b.release(rid, tenant_id=t, idempotency_key=k)
            elif rng.random() < 0.1:

                def call(b: ledger.Ledger, t: str = tenant, k: str = key) -> Any:
                    return b.top_up_tenant(t, 10, idempotency_key=k)
            else:
                amount = rng.choice([1_000, 10**12])  # some are refused

                def call(b: ledger.Ledger, t: str = tenant, k: str = key, a: int = amount) -> Any:
                    return b.try_reserve(t, a, idempotency_key=k)

            try:
                outcome = call(book)
            except errors.LedgerError:
                with self.lock:
                    self.ambiguous.append((tenant, key, call))
                return
            with self.lock:
                self.acked.append((tenant, key, outcome.ok))
            if outcome.ok and getattr(outcome, "reservation_id", None):
                holds.append((outcome.reservation_id, tenant))

    def cycle(self, workers: int, run_for: float) -> None:
        book = ledger.Ledger(create_engine(self.server.url, pool_size=workers))
        stop = threading.Event()
        threads = [
            threading.Thread(target=self._worker, args=(book, f"w{i}-{time.time_ns()}", stop))
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        time.sleep(run_for)
        self.server.crash()
        stop.set()
        for t in threads:
            t.join(60)
        book.engine.dispose()
        self.server = embedded.start(self.dir, cleanup="delete")  # crash recovery
        self.restarts += 1
        with ledger.Ledger(self.server.url) as check:  # every restart must come back whole
            if not (check.verify_conservation().is_balanced and check.verify_journal().ok):
                self.broken_restarts += 1

    def audit(self) -> dict[str, int]:
        """Acknowledged effects must all be there; refusals must not; ambiguity resolves."""
        url = self.server.url
        with psycopg.connect(_plain(url), autocommit=True) as conn, ledger.Ledger(url) as book:

            def entries(tenant: str, key: str) -> int:
                row = conn.execute(
                    "SELECT count(*) FROM ledger.journal WHERE tenant_id = %s"
                    " AND idempotency_key = %s",
                    (tenant, key),
                ).fetchone()
                return int(row[0])  # type: ignore[index]

            lost = sum(1 for t, k, applied in self.acked if applied and entries(t, k) != 1)
            phantom = sum(1 for t, k, applied in self.acked if not applied and entries(t, k) != 0)
            resolved_applied = 0
            for tenant, key, call in self.ambiguous:
                before = entries(tenant, key)
                assert before in (0, 1)
                outcome = call(book)  # the retry, with the same key
                after = entries(tenant, key)
                assert after == (1 if outcome.ok else 0), (key, outcome, before, after)
                assert after >= before
                resolved_applied += after
            balanced = book.verify_conservation().is_balanced
            journal_ok = book.verify_journal().ok
            mismatched = len(holds_match_reserved(conn))
        return {
            "acked": len(self.acked),
            "lost": lost,
            "phantom": phantom,
            "restarts": self.restarts,
            "broken_restarts": self.broken_restarts,
            "ambiguous": len(self.ambiguous),
            "ambiguous_applied": resolved_applied,
            "balanced": int(balanced),
            "journal_ok": int(journal_ok),
            "hold_mismatch": mismatched,
        }


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A data-directory parent outside pytest's temp root.

    The embedded server runs as its own unprivileged user when the tests run
    as root, and every pytest session resets pytest's temp root to mode 0700;
    a server kept there dies with "Permission denied" as soon as another
    pytest session starts (CI runs one at a time, developers often don't).
    """
    path = Path(tempfile.mkdtemp(prefix="ledger-faults-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_kill_9_under_load_loses_nothing_acknowledged(server_dir: Path, scale: str) -> None:
    harness = CrashHarness(server_dir)
    cycles = 20 if scale == "long" else 3
    try:
        for _ in range(cycles):
            harness.cycle(workers=4, run_for=random.uniform(0.5, 1.5))
        report = harness.audit()
    finally:
        harness.server.stop()
    FIGURES.append(
        (
            "crash durability (kill -9 postmaster)",
            f"{cycles} crashes",
            f"{report['acked']} acked, {report['ambiguous']} ambiguous",
            f"lost {report['lost']}, phantom {report['phantom']}",
        )
    )
    assert report["acked"] > 0
    assert (report["lost"], report["phantom"], report["hold_mismatch"]) == (0, 0, 0), report
    assert report["balanced"] and report["journal_ok"], report
    assert report["restarts"] == cycles and report["broken_restarts"] == 0, report


def test_negative_control_detects_loss_with_synchronous_commit_off(server_dir: Path) -> None:
    """With commits acknowledged before WAL is flushed, the same audit must see the loss."""
    harness = CrashHarness(
        server_dir, settings={"synchronous_commit": "off", "wal_writer_delay": "10000"}
    )
    try:
        with psycopg.connect(_plain(harness.server.url), autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # setup is durable; only the load below is at risk
        harness.cycle(workers=4, run_for=1.0)
        report = harness.audit()
    finally:
        harness.server.stop()
    FIGURES.append(
        (
            "negative control (synchronous_commit=off)",
            "1 crash",
            f"{report['acked']} acked",
            f"lost {report['lost']} (detected)",
        )
    )
    assert report["lost"] > 0, report


# ---------------------------------------------------------- connection faults


def test_terminated_backends_never_apply_twice(
    db_url: str, raw: psycopg.Connection, scale: str
) -> None:
    """pg_terminate_backend hits sessions at random moments; keyed retries resolve every op."""
    engine = create_engine(db_url, pool_size=8, connect_args={"application_name": "fault-victim"})
    book = ledger.Ledger(engine)
    for t in ("x", "y"):
        book.ensure_tenant(t, 10**9)
    stop = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        rng = random.Random(1)
        with psycopg.connect(_plain(db_url), autocommit=True) as conn:
            while not stop.is_set():
                time.sleep(rng.uniform(0.005, 0.05))
                row = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'fault-victim'"
                    " AND pid IN (SELECT pid FROM pg_stat_activity ORDER BY random() LIMIT 1)"
                ).fetchone()
                kills += int(row[0])  # type: ignore[index]

    def worker(seed: int) -> list[tuple[str, str, bool]]:
        rng = random.Random(seed)
        done = []
        for n in range(400 if scale == "long" else 40):
            tenant = rng.choice(["x", "y"])
            key = f"{seed}-{n}"
            amount = rng.randint(1, 1_000)
            for _attempt in range(50):
                try:
                    hold = book.try_reserve(tenant, amount, idempotency_key=key)
                    break
                except errors.LedgerError:
                    continue
            else:
                raise AssertionError("never got through")
            done.append((tenant, key, hold.ok))
            if hold.ok:
                for _attempt in range(50):
                    try:
                        book.commit(
                            hold.reservation_id,
                            amount - 1,
                            tenant_id=tenant,  # type: ignore[arg-type]
                            idempotency_key=key + "-c",
                        )
                        break
                    except errors.LedgerError:
                        continue
                done.append((tenant, key + "-c", True))
        return done

    k = threading.Thread(target=killer)
    k.start()
    with ThreadPoolExecutor(6) as pool:
        results = [r for rs in pool.map(worker, range(6)) for r in rs]
    stop.set()
    k.join()
    engine.dispose()
    counts = dict(
        ((t, key), n)
        for t, key, n in raw.execute(
            "SELECT tenant_id, idempotency_key, count(*) FROM ledger.journal"
            " WHERE idempotency_key IS NOT NULL GROUP BY 1, 2"
        ).fetchall()
    )
    assert all(counts.get((t, key), 0) == 1 for t, key, ok in results if ok)
    assert max(counts.values()) == 1
    with ledger.Ledger(db_url) as check:
        assert check.active_reservations() == 0  # no orphaned holds
        assert check.verify_conservation().is_balanced
        assert check.verify_journal().ok
    FIGURES.append(
        (
            "pg_terminate_backend during operations",
            f"{kills} sessions killed",
            f"{len(results)} keyed operations",
            "applied twice 0, orphaned holds 0",
        )
    )
    assert kills > 0


def test_statement_timeout_is_typed_and_retryable(db_url: str) -> None:
    engine = create_engine(db_url)
    slow = ledger.Ledger(
        create_engine(db_url, connect_args={"options": "-c statement_timeout=200"})
    )
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 100)
    with engine.begin() as conn:
        book.top_up_tenant("t", 1, connection=conn)  # holds the row
        with pytest.raises(errors.StatementTimeout) as info:
            slow.try_reserve("t", 5)
        assert isinstance(info.value, errors.RetryableError)
    assert slow.try_reserve("t", 5).ok  # and a retry goes through once the lock is gone
    assert book.tenant("t") == ledger.TenantLedger("t", 101, 96, 5, 0)
    slow.engine.dispose()
    engine.dispose()


def test_own_transactions_retry_a_deadlock(db_url: str) -> None:
    """A batch that loses a deadlock is retried by the ledger; the caller never sees it."""
    engine = create_engine(db_url, pool_size=4)
    book = ledger.Ledger(engine)
    book.ensure_tenant("a", 100)
    book.ensure_tenant("b", 100)
    holding_b = threading.Event()
    outcome: list[Any] = []

    def rival() -> None:
        with engine.begin() as conn:
            book.try_reserve("b", 1, connection=conn)  # takes b
            holding_b.set()
            time.sleep(0.5)  # the batch now holds a and waits for b
            book.try_reserve("a", 1, connection=conn)  # cycle: PostgreSQL aborts one side

    t = threading.Thread(target=rival)
    t.start()
    holding_b.wait(10)
    try:
        outcome = book.try_reserve_many([("a", 10), ("b", 10)])
    finally:
        t.join(30)
    assert [o.status for o in outcome] == ["reserved", "reserved"]
    assert book.reserved_microcents("a") in (10, 11) and book.verify_journal().ok
    engine.dispose()


# -------------------------------------------------------------------- races


def test_last_unit_race_64_workers(db_url: str, scale: str) -> None:
    engine = create_engine(db_url, pool_size=64, max_overflow=0)
    book = ledger.Ledger(engine)
    rounds = 100 if scale == "long" else 10
    for r in range(rounds):
        book.ensure_tenant(f"last-{r}", 1)
        barrier = threading.Barrier(64)

        def go(_: int, tenant: str = f"last-{r}", barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return str(book.try_reserve(tenant, 1).status)

        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(go, range(64)))
        assert statuses.count("reserved") == 1 and statuses.count("insufficient") == 63
    FIGURES.append(
        (
            "last-unit race",
            f"{rounds} rounds x 64 workers",
            f"{rounds * 64} reserves",
            "exactly one winner each round",
        )
    )
    engine.dispose()


def _bank_worker(url: str, seed: int, ops: int, start: Any) -> dict[str, int]:
    engine = create_engine(url, pool_size=1)
    book = ledger.Ledger(engine)
    rng = random.Random(seed)
    t = {"committed": 0, "topped": 0, "refused": 0, "ops": 0}
    start.wait(60)
    for _ in range(ops):
        t["ops"] += 1
        if rng.random() < 0.05:
            t["topped"] += book.top_up_tenant("bank", 5_000).added_microcents or 0
            continue
        hold = book.try_reserve("bank", rng.randint(1, 20_000))
        if not hold.ok:
            t["refused"] += 1
            continue
        if rng.random() < 0.3:
            book.release(hold.reservation_id)  # type: ignore[arg-type]
        else:
            actual = rng.randint(0, 20_000)
            if book.commit(hold.reservation_id, actual).ok:  # type: ignore[arg-type]
                t["committed"] += actual
            else:
                book.release(hold.reservation_id)  # type: ignore[arg-type]
    engine.dispose()
    return t


def test_bank_16_processes_one_hot_tenant(db_url: str, raw: psycopg.Connection, scale: str) -> None:
    ops = 625 if scale == "long" else 60  # 16 x 625 = 10,000 in the long version
    initial = 16 * ops * 7_000 // 2  # sized so that a good share is refused
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("bank", initial)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager:
            start = manager.Event()
            with ctx.Pool(16) as pool:
                pending = [
                    pool.apply_async(_bank_worker, (db_url, s, ops, start)) for s in range(16)
                ]
                bad: list[Any] = []
                taken = 0
                start.set()
                while not all(p.ready() for p in pending):
                    snap = book.snapshot()
                    taken += 1
                    if not ledger.conservation_status_for_snapshot(snap).is_balanced:
                        bad.append(snap)
                tallies = [p.get(600) for p in pending]
        committed = sum(t["committed"] for t in tallies)
        topped = sum(t["topped"] for t in tallies)
        refused = sum(t["refused"] for t in tallies)
        total = sum(t["ops"] for t in tallies)
        t = book.tenant("bank")
        assert t == ledger.TenantLedger(
            "bank", initial + topped, initial + topped - committed, 0, committed
        )
        assert bad == [] and taken > 0
        assert book.verify_journal().ok
        assert holds_match_reserved(raw) == []
    FIGURES.append(
        (
            "hot-tenant bank test",
            f"16 processes, {taken} snapshots",
            f"{total} operations, {100 * refused // max(total, 1)}% refused",
            "overspent 0, unbalanced snapshots 0",
        )
    )
