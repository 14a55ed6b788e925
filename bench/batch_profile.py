"""Where a batch's time goes: server time per statement, WAL, client CPU.

    python -m bench.batch_profile [--database-url URL] [--batches 30] [--size 1000]
                                  [--tenants 10000] [--profile FILE]

Runs ``try_reserve_many`` + ``commit_many`` batches (the ``batch1000`` row of
``bench.run``) with one client, on one tenant ("hot") and on ``--tenants``
tenants ("spread"), and reports per batch of reserve+commit: wall time, the
client's CPU (``time.process_time``), the server's execution time per
statement from ``pg_stat_statements`` and WAL bytes, and the single-operation
cycle on the same database for the ratio. ``--churn N`` first leaves N dead
holds in ``reservations``, as many single cycles do before autovacuum runs.
``--profile FILE`` writes a
cProfile (CPU clock) of the spread batches' client side. ``--explain`` prints
``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of the lock and apply statements of one
more batch (ANALYZE runs them, so the batch still happens).

The embedded server this starts loads ``pg_stat_statements``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

import ledger
from ledger import BudgetSnapshot, TenantLedger

from . import scratch

BUDGET = 10**15


def _prepare(url: str, tenants: int) -> None:
    with ledger.Ledger(url) as book:
        book.restore_from_snapshot(
            BudgetSnapshot(
                0,
                tuple(TenantLedger(f"t{i}", BUDGET, BUDGET, 0, 0) for i in range(tenants)),
                0,
            )
        )


def _stats(conn: psycopg.Connection) -> list[tuple[str, int, float, float, int]]:
    return [
        (q, calls, total, float(wal), int(blks))
        for q, calls, total, wal, blks in conn.execute(
            "SELECT query, calls, total_exec_time, wal_bytes, "
            "shared_blks_hit + shared_blks_read + shared_blks_dirtied FROM pg_stat_statements "
            "WHERE query NOT LIKE '%%pg_stat%%' ORDER BY total_exec_time DESC"
        ).fetchall()
    ]


def server_cpu(postmaster: int) -> float:
    """CPU seconds (user + system) of every process of the server, from /proc (Linux).

    Execution times from pg_stat_statements include waiting for a core on a
    shared machine; CPU time does not.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def postmaster_of(conn: psycopg.Connection) -> int:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _label(query: str) -> str:
    for key, name in (
        ("AS due\n    FROM", "lock+read"),
        ("nextval", "draw ids"),
        ("tenant_rows AS", "apply"),
        ("journal_hash", "single op"),
    ):
        if key in query:
            return name
    first = " ".join(query.split())
    return first[:40]


def _merged(
    stats: list[tuple[str, int, float, float, int]], batches: int
) -> list[tuple[str, float, float, float, float]]:
    """Per batch, by statement (one statement can have several entries, e.g. per plan)."""
    out: dict[str, list[float]] = {}
    for q, c, t, w, b in stats:
        row = out.setdefault(_label(q), [0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate((c, t, w, b)):
            row[i] += v
    return [
        (k, c / batches, t / batches, w / batches / 1024, b / batches)
        for k, (c, t, w, b) in out.items()
        if c >= batches // 2
    ]


@contextmanager
def _explained() -> Iterator[None]:
    """Print the plans of the batch statements the ledger runs meanwhile."""
    from ledger import _executor

    original = _executor.PsycopgExecutor.fetch

    def fetch(self: Any, sql: str, params: Any) -> list[Any]:
        if "tenant_rows AS" in sql or "AS MATERIALIZED" in sql:
            with self._conn.cursor() as cur:
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, WAL) " + sql, params)
                print("\n".join(r[0] for r in cur.fetchall()) + "\n-----")
            if "tenant_rows AS" in sql:  # batch_apply: ANALYZE ran it
                return []
        return original(self, sql, params)

    _executor.PsycopgExecutor.fetch = fetch  # type: ignore[method-assign]
    try:
        yield
    finally:
        _executor.PsycopgExecutor.fetch = original  # type: ignore[method-assign]


def measure(
    url: str,
    tenants: int,
    size: int,
    batches: int,
    profile: cProfile.Profile | None,
    explain: bool = False,
    churn: int = 0,
) -> dict[str, Any]:
    _prepare(url, tenants)
    rng = random.Random(1)
    with ledger.Ledger(url) as book, psycopg.connect(url, autocommit=True) as admin:
        if churn:
            # What many single reserve->commit cycles leave behind until
            # autovacuum comes by: dead holds in reservations and its indexes.
            admin.execute("ALTER TABLE ledger.reservations SET (autovacuum_enabled = off)")
            admin.execute(
                "INSERT INTO ledger.reservations (tenant_id, reservation_id, amount_microcents)"
                " SELECT 't' || (i %% %s), -i, 1 FROM generate_series(1, %s) AS i",
                (tenants, churn),
            )
            admin.execute("DELETE FROM ledger.reservations WHERE reservation_id < 0")
            admin.execute("ANALYZE ledger.reservations")

        def batch() -> None:
            items = [(f"t{rng.randrange(tenants)}", 1000) for _ in range(size)]
            holds = book.try_reserve_many(items)
            out = book.commit_many([(h.reservation_id, 900) for h in holds])
            assert all(o.ok for o in out)

        def single() -> None:
            t = f"t{rng.randrange(tenants)}"
            hold = book.try_reserve(t, 1000)
            assert hold.reservation_id is not None
            assert book.commit(hold.reservation_id, 900, tenant_id=t).ok

        for _ in range(3):
            batch()
        for _ in range(50):
            single()
        admin.execute("CHECKPOINT")
        admin.execute("SELECT pg_stat_statements_reset()")
        lsn0 = admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        postmaster = postmaster_of(admin)
        server0 = server_cpu(postmaster)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        for _ in range(batches):
            batch()
        if profile is not None:
            profile.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        server = server_cpu(postmaster) - server0
        wal = admin.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,)).fetchone()[
            0
        ]  # type: ignore[index]
        stats = _stats(admin)
        singles = 500
        cpu1, wall1 = time.process_time(), time.perf_counter()
        for _ in range(singles):
            single()
        single_wall = (time.perf_counter() - wall1) / singles
        single_cpu = (time.process_time() - cpu1) / singles
        if explain:
            with _explained():
                batch()
    return {
        "tenants": tenants,
        "wall_ms": wall / batches * 1e3,
        "cpu_ms": cpu / batches * 1e3,
        "server_cpu_ms": server / batches * 1e3,
        "wal_kb": float(wal) / batches / 1024,
        "server": _merged(stats, batches),
        "single_us": single_wall * 1e6,
        "single_cpu_us": single_cpu * 1e6,
        "size": size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--only", choices=("hot", "spread"), default=None)
    parser.add_argument("--profile", default=None, help="write a cProfile of the spread batches")
    parser.add_argument("--explain", action="store_true", help="plans of one more batch")
    parser.add_argument(
        "--churn",
        type=int,
        default=0,
        help="first leave this many dead holds in reservations (autovacuum off for it)",
    )
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}")
    settings = {"shared_preload_libraries": "pg_stat_statements", "track_io_timing": "on"}
    with scratch.fresh_database(args.database_url, "batchprof", settings) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        profile = cProfile.Profile(time.process_time) if args.profile else None
        workloads = {"hot": 1, "spread": args.tenants}
        for name, tenants in workloads.items():
            if args.only and name != args.only:
                continue
            r = measure(
                url,
                tenants,
                args.size,
                args.batches,
                profile if tenants > 1 else None,
                args.explain,
                args.churn,
            )
            per_cycle_us = r["wall_ms"] * 1e3 / r["size"]
            print(
                f"{name} ({tenants} tenants), batch of {r['size']} reserve+commit: "
                f"{r['wall_ms']:.1f} ms wall, {r['cpu_ms']:.1f} ms client CPU, "
                f"{r['server_cpu_ms']:.1f} ms server CPU, "
                f"{r['wal_kb']:.0f} KiB WAL; single cycle {r['single_us']:.0f} us "
                f"({r['single_cpu_us']:.0f} us CPU); batch/single "
                f"{r['single_us'] / per_cycle_us:.1f}x"
            )
            print(f"  {'statement':<22}{'calls':>7}{'ms':>9}{'WAL KiB':>9}{'blocks':>9}")
            for label, calls, ms, wal, blocks in r["server"]:
                print(f"  {label:<22}{calls:>7.1f}{ms:>9.2f}{wal:>9.1f}{blocks:>9.0f}")
            print(f"  {'server, all':<22}{'':>7}{sum(x[2] for x in r['server']):>9.2f}")
        if profile is not None:
            profile.dump_stats(args.profile)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
