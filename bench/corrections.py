"""What a refund costs, and whether it grows with the tenant's journal.

    python -m bench.corrections [--database-url URL] [--entries 1000000] [--calls 300]

A refund reads the refunded commit and the sum of its earlier refunds from
the journal (docs/corrections.md). Both reads go through the journal's
``reservation_id`` index, so the cost should not depend on how many entries
the tenant has. This measures the median client-side latency of ``refund``
(one client, one round trip each) on a tenant with a handful of entries and
on one with ``--entries`` earlier entries (inserted directly; their hashes do
not matter here), next to ``top_up_tenant`` (a one-statement write) on the
same tenant, and once more with the reservation_id index dropped, to show
what it is for.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import psycopg

import ledger

from . import scratch

BUDGET = 10**15


def _median_us(calls: int, call: Callable[[], object]) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _commit(book: ledger.Ledger, tenant: str) -> int:
    rid = book.try_reserve(tenant, 10**9).raise_for_status().reservation_id
    assert rid is not None
    book.commit(rid, 10**9, tenant_id=tenant).raise_for_status()
    return rid


def _refunds(book: ledger.Ledger, tenant: str, calls: int) -> float:
    rid = _commit(book, tenant)
    return _median_us(calls, lambda: book.refund(tenant, rid, 1, reason="bench").raise_for_status())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    with scratch.fresh_database(args.database_url, "corrections") as db_url:
        with ledger.Ledger(db_url) as book, psycopg.connect(db_url, autocommit=True) as conn:
            book.ensure_tenant("small", BUDGET)
            book.ensure_tenant("big", BUDGET)
            conn.execute(
                """INSERT INTO ledger.journal (tenant_id, seq, op, reservation_id,
                       amount_microcents, initial_microcents, remaining_microcents,
                       reserved_microcents, committed_microcents, max_reserved_microcents,
                       created_at, entry_hash)
                   SELECT 'big', g, 'top_up', NULL, 1, 0, 0, 0, 0, 0, now(), sha256(int8send(g))
                   FROM generate_series(2, %s + 1) AS g""",
                (args.entries,),
            )
            conn.execute(
                "UPDATE ledger.tenants SET journal_seq = %s WHERE tenant_id = 'big'",
                (args.entries + 1,),
            )
            conn.execute("ANALYZE ledger.journal")
            _refunds(book, "small", 50)  # warm up the connection and plan caches
            calls = args.calls
            rows = [
                ("refund, tenant with a few entries", _refunds(book, "small", calls)),
                (f"refund, tenant with {args.entries:,} entries", _refunds(book, "big", calls)),
                (
                    "top_up, the same tenant",
                    _median_us(args.calls, lambda: book.top_up_tenant("big", 1)),
                ),
            ]
            conn.execute("DROP INDEX ledger.journal_reservation_id_idx")
            try:
                rows.append(
                    ("refund, same, without the index", _refunds(book, "big", args.calls // 10))
                )
            finally:
                conn.execute(
                    "CREATE INDEX journal_reservation_id_idx ON ledger.journal (reservation_id) "
                    "WHERE reservation_id IS NOT NULL"
                )
        print(f"median latency, 1 client, {args.calls} calls each")
        for name, micros in rows:
            print(f"{name:<44}{micros:>10.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
