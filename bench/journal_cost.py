"""Where the journal's cost goes: server time and WAL per statement, journaled vs not.

    python -m bench.journal_cost [--database-url URL] [--cycles 3000]

Runs reserve→commit cycles with one client over 1,000 tenants for each
variant, in one fresh database, and reads the server's own accounting:
``pg_stat_statements`` (mean execution time, WAL bytes per call) and the WAL
position before and after. Variants:

- ``before 0005``: ``journal_hash`` declared IMMUTABLE as it was, which
  blocks inlining (its body calls ``convert_to``, which is only STABLE);
- ``shipped``: the statements as they run since revision 0005 (inlined);
- ``- reservation_id idx``: shipped, without the journal's general index on
  reservation_id (a candidate: it serves the auditors' hold-history queries);
- ``no journal``: the same compare-and-swap without the journal entry and
  chain (bench/baselines.py).

The server needs ``shared_preload_libraries = pg_stat_statements``; the
embedded server this starts has it.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import psycopg

import ledger
from ledger._queries import for_schema

from . import scratch
from .baselines import NOJOURNAL_COMMIT, NOJOURNAL_RESERVE

TENANTS = 1_000
_SIGNATURE = (
    "bytea, text, bigint, text, bigint, bigint, bigint, bigint, bigint, bigint, bigint, "
    "bigint, timestamptz, text"
)


def _psycopg_sql(clause: Any) -> str:
    from sqlalchemy.dialects.postgresql import psycopg as dialect

    return str(clause.compile(dialect=dialect.dialect()))  # type: ignore[no-untyped-call]


def _cycles(conn: psycopg.Connection, reserve: str, commit: str, cycles: int) -> float:
    started = time.perf_counter()
    for i in range(cycles):
        tenant = f"t{i % TENANTS}"
        params = {"tenant_id": tenant, "amount": 1000, "ttl_us": None, "expires_at": None}
        row = conn.execute(reserve, {**params, "ikey": None}).fetchone()
        assert row is not None
        rid = row[4] if len(row) > 2 else row[0]  # try_reserve: reservation_id is 5th
        conn.execute(
            commit, {"reservation_id": rid, "tenant_id": tenant, "actual": 900, "ikey": None}
        ).fetchall()
    return (time.perf_counter() - started) / cycles * 1e6


def _measure(
    conn: psycopg.Connection, name: str, reserve: str, commit: str, cycles: int
) -> dict[str, Any]:
    _cycles(conn, reserve, commit, 200)  # warm up: plans cached, statements prepared
    conn.execute("SELECT pg_stat_statements_reset()")
    conn.execute("SELECT pg_stat_reset()")
    lsn0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    wall_us = _cycles(conn, reserve, commit, cycles)
    wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,)).fetchone()[0]  # type: ignore[index]
    stats = conn.execute(
        "SELECT query, calls, mean_exec_time, wal_bytes, wal_records FROM pg_stat_statements "
        "WHERE calls >= %s ORDER BY calls DESC, mean_exec_time DESC",
        (cycles,),
    ).fetchall()
    per = {}
    for query, calls, mean_ms, wal_bytes, wal_records in stats:
        kind = "commit" if "DELETE FROM" in query or "hold AS MATERIALIZED" in query else "reserve"
        per.setdefault(kind, (mean_ms * 1000, int(wal_bytes) / calls, int(wal_records) / calls))
    hot = conn.execute(
        "SELECT n_tup_hot_upd::float / greatest(n_tup_upd, 1) FROM pg_stat_user_tables "
        "WHERE relname = 'tenants'"
    ).fetchone()[0]  # type: ignore[index]
    return {
        "variant": name,
        "wall_us": wall_us,
        "hot": hot,
        "wal_per_cycle": float(wal) / cycles,
        **{
            f"{k}_{m}": v
            for k, t in per.items()
            for m, v in zip(("us", "wal", "rec"), t, strict=True)
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument("--cycles", type=int, default=3000)
    args = parser.parse_args(argv)
    with scratch.fresh_database(
        args.database_url, "jcost", {"shared_preload_libraries": "pg_stat_statements"}
    ) as db_url:
        with ledger.Ledger(db_url) as book:
            for i in range(TENANTS):
                book.ensure_tenant(f"t{i}", 10**15)
        q = for_schema("ledger")
        rows = []
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            stable = f"ALTER FUNCTION ledger.journal_hash({_SIGNATURE}) STABLE"
            immutable = f"ALTER FUNCTION ledger.journal_hash({_SIGNATURE}) IMMUTABLE"
            without_index = "DROP INDEX ledger.journal_reservation_id_idx"
            with_index = (
                "CREATE INDEX journal_reservation_id_idx ON ledger.journal (reservation_id) "
                "WHERE reservation_id IS NOT NULL"
            )
            nojournal = (_psycopg_sql(NOJOURNAL_RESERVE), _psycopg_sql(NOJOURNAL_COMMIT))
            shipped = (q.try_reserve, q.commit_for_tenant)
            variants: list[tuple[str, list[str], list[str], tuple[str, str]]] = [
                ("before 0005 (IMMUTABLE)", [immutable], [stable], shipped),
                ("shipped (hash inlined)", [], [], shipped),
                ("  - reservation_id idx", [without_index], [with_index], shipped),
                ("no journal", [], [], nojournal),
            ]
            for name, setup, teardown, (reserve, commit) in variants:
                for statement in setup:
                    conn.execute(statement)
                rows.append(_measure(conn, name, reserve, commit, args.cycles))
                for statement in teardown:
                    conn.execute(statement)
        head = (
            f"{'variant':<22}{'cycle us':>10}{'reserve us':>12}{'commit us':>11}"
            f"{'reserve WAL B':>15}{'commit WAL B':>14}{'WAL B/cycle':>13}{'HOT %':>7}"
        )
        print(f"{args.cycles} reserve->commit cycles, 1 client, {TENANTS} tenants")
        print(head)
        for r in rows:
            print(
                f"{r['variant']:<22}{r['wall_us']:>10.0f}{r.get('reserve_us', 0):>12.1f}"
                f"{r.get('commit_us', 0):>11.1f}{r.get('reserve_wal', 0):>15.0f}"
                f"{r.get('commit_wal', 0):>14.0f}{r['wal_per_cycle']:>13.0f}"
                f"{100 * r['hot']:>7.0f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
