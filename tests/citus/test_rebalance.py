"""Scale-out under load: a third worker joins and shards move onto it while writers run.

scripts/citus.sh starts a spare worker outside the cluster (and sets
wal_level = logical everywhere, which online shard moves need). Here it is
added with ``citus_add_node``, ``citus_rebalance_start`` moves shard groups
onto it by logical replication while threads keep reserving, releasing and
topping up, and afterwards every balance must be exact, per-tenant
conservation must hold, the journal must verify, and some of the ledger's
shards must live on the new worker. The spare is drained and removed again at
the end, so the other tests see the two-worker cluster.

Writers use idempotency keys and retry an operation that failed with the same
key, the documented way to resolve an error whose outcome is unknown; the
number of such retries is reported, and nothing may be lost or doubled.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
import pytest
from sqlalchemy import create_engine

import ledger
from ledger import errors
from tests.helpers import holds_match_reserved

from .conftest import alchemy, fresh_schema, plain

SPARE = os.environ.get("LEDGER_CITUS_SPARE_PORT")
pytestmark = pytest.mark.skipif(
    not SPARE, reason="scripts/citus.sh starts the spare worker (LEDGER_CITUS_SPARE_PORT)"
)

THREADS = 8
TENANTS = 24
BUDGET = 10_000_000
RETRIES = 50


@dataclass
class Writer:
    """One thread's exact account of what it did."""

    topped: Counter[str] = field(default_factory=Counter)
    cycles: int = 0
    topups: int = 0
    retried: int = 0
    errors: list[str] = field(default_factory=list)


def _keyed(w: Writer, call: object, *args: object, **kw: object) -> object:
    """Run ``call`` until it answers; an error of unknown outcome is retried with its key."""
    for _ in range(RETRIES):
        try:
            return call(*args, **kw)  # type: ignore[operator]
        except (errors.ConnectionLost, errors.DatabaseError) as exc:
            w.retried += 1
            if len(w.errors) < 5:
                w.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            time.sleep(0.05)
    raise AssertionError(f"gave up after {RETRIES} tries: {w.errors}")


def _write(book: ledger.Ledger, seed: int, stop: threading.Event) -> Writer:
    rng = random.Random(seed)
    w = Writer()
    n = 0
    while not stop.is_set():
        n += 1
        tenant = f"t{rng.randrange(TENANTS)}"
        key = f"w{seed}-{n}"
        if rng.random() < 0.2:
            amount = rng.randint(1, 1_000)
            out = _keyed(w, book.top_up_tenant, tenant, amount, idempotency_key=key + "-top")
            assert out.status == "topped_up", out  # type: ignore[attr-defined]
            w.topped[tenant] += amount
            w.topups += 1
            continue
        hold = _keyed(w, book.try_reserve, tenant, rng.randint(1, 5_000), idempotency_key=key)
        rid = hold.reservation_id  # type: ignore[attr-defined]
        assert rid is not None, hold
        out = _keyed(w, book.release, rid, tenant_id=tenant, idempotency_key=key + "-rel")
        assert out.status == "released", out  # type: ignore[attr-defined]
        w.cycles += 1
    return w


def _placements_on(raw: psycopg.Connection, port: int, table: str) -> int:
    row = raw.execute(
        "SELECT count(*) FROM citus_shards WHERE nodeport = %s AND table_name = %s::regclass",
        (port, table),
    ).fetchone()
    return int(row[0]) if row else 0


def test_rebalance_onto_a_new_worker_under_load(citus_url: str) -> None:
    port = int(SPARE or 0)
    with (
        fresh_schema(citus_url) as schema,
        psycopg.connect(plain(citus_url), autocommit=True) as raw,
    ):
        engine = create_engine(alchemy(citus_url), pool_size=THREADS + 2)
        book = ledger.Ledger(engine, schema=schema)
        tenants = [f"t{i}" for i in range(TENANTS)]
        for t in tenants:
            book.ensure_tenant(t, BUDGET)
        stop = threading.Event()
        try:
            with ThreadPoolExecutor(THREADS) as pool:
                running = [pool.submit(_write, book, seed, stop) for seed in range(THREADS)]
                try:
                    time.sleep(1.0)  # writers are under way before the node joins
                    raw.execute("SELECT citus_add_node('127.0.0.1', %s)", (port,))
                    started = time.monotonic()
                    raw.execute("SELECT citus_rebalance_start()")
                    raw.execute("SELECT citus_rebalance_wait()")
                    took = time.monotonic() - started
                    time.sleep(1.0)  # and keep writing on the new layout
                finally:
                    stop.set()
                writers = [f.result(timeout=120) for f in running]
            moved = _placements_on(raw, port, f"{schema}.tenants")
            assert moved > 0, "the rebalance moved none of the ledger's shards to the new worker"
            assert _placements_on(raw, port, f"{schema}.journal") == moved  # colocated

            topped = sum((w.topped for w in writers), Counter())
            for t in tenants:
                assert book.tenant(t) == ledger.TenantLedger(
                    t, BUDGET + topped[t], BUDGET + topped[t], 0, 0
                )
            assert book.active_reservations() == 0
            assert book.verify_conservation().is_balanced
            assert holds_match_reserved(raw, schema) == []
            report = book.verify_journal()
            assert report.ok, report.discrepancies
            cycles = sum(w.cycles for w in writers)
            assert cycles > 0
            entries = raw.execute(f'SELECT count(*) FROM "{schema}".journal').fetchone()
            assert entries == (TENANTS + 2 * cycles + sum(w.topups for w in writers),)
            retried = sum(w.retried for w in writers)
            print(
                f"\nrebalance under load: {moved} of the tenants table's shards moved to the new "
                f"worker in {took:.1f}s while {THREADS} threads ran {cycles} reserve/release "
                f"cycles and {sum(topped.values())} microcents of top-ups; {retried} keyed "
                f"retries {[e for w in writers for e in w.errors][:3]}; sums exact, journal "
                f"verified ({report.entries_checked} entries)"
            )
        finally:
            stop.set()
            book.close()
            engine.dispose()
            raw.execute("SELECT citus_drain_node('127.0.0.1', %s)", (port,))
            raw.execute("SELECT citus_remove_node('127.0.0.1', %s)", (port,))
