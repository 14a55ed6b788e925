"""What recurring allowances cost: statements per operation, latency, renewal, sweeper.

    python -m bench.periods [--database-url URL] [--cycles 2000]

Measured in one fresh database, one client, on the ledger's own connections:

- statements each operation sends (counted at the executor) for a tenant
  without an allowance, one with an allowance inside its period, and the
  first write of a period with 1 and with 30 periods due;
- mean latency of reserve→commit cycles for tenants without and with an
  allowance (interleaved, so both see the same machine);
- the first reserve of a period (lazy renewal) against a plain reserve;
- the sweeper over 1,000 idle tenants with one period due each.

Time passes by moving each tenant's schedule back (tests/integration/periods/test_periods.py's
``backdate``): the same state as an allowance set that long ago.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

import ledger
from ledger import _operations as ops
from ledger._executor import PsycopgExecutor, drive
from ledger._queries import for_schema
from ledger._requests import Fetch, Steps

from . import scratch

TENANTS = 1_000
DAY = timedelta(days=1)


class Counting(PsycopgExecutor):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)
        self.statements = 0

    def handle(self, request: Any) -> Any:
        if type(request) is Fetch:
            self.statements += 1
        return super().handle(request)


def _count(conn: psycopg.Connection[Any], steps: Steps[Any]) -> tuple[int, Any]:
    executor = Counting(conn)
    result = drive(executor, steps)
    return executor.statements, result


def _backdate(conn: psycopg.Connection[Any], tenants: list[str], periods: int) -> None:
    conn.execute(
        "UPDATE ledger.allowances SET anchor = anchor - %s WHERE tenant_id = ANY(%s)",
        (DAY * periods, tenants),
    )
    conn.execute(
        "UPDATE ledger.tenants SET renews_at = renews_at - %s WHERE tenant_id = ANY(%s)",
        (DAY * periods, tenants),
    )


def statements(conn: psycopg.Connection[Any]) -> dict[str, int]:
    q = for_schema("ledger")
    out: dict[str, int] = {}

    def reserve(tenant: str) -> tuple[int, Any]:
        return _count(conn, ops.try_reserve(q, tenant, 10, None, None, None).steps())

    for label, tenant in (("plain", "p0"), ("allowance, in period", "a0")):
        n, hold = reserve(tenant)
        out[f"reserve: {label}"] = n
        n, _ = _count(conn, ops.commit(q, hold.reservation_id, 5, tenant, None).steps())
        out[f"commit: {label}"] = n
        n, _ = _count(conn, ops.top_up_tenant(q, tenant, 5, None).steps())
        out[f"top_up: {label}"] = n
    for due in (1, 30):
        tenant = f"a{due}"
        _backdate(conn, [tenant], due)
        n, _ = reserve(tenant)
        out[f"reserve: first of a period, {due} due"] = n
        n, _ = reserve(tenant)
        out[f"reserve: second of that period ({due} were due)"] = n
    return out


def latency(book: ledger.Ledger, cycles: int) -> dict[str, float]:
    """Mean µs per reserve→commit cycle, plain and periodic tenants interleaved."""
    times: dict[str, list[float]] = {"plain": [], "allowance": []}
    for i in range(cycles * 2):
        kind, prefix = ("plain", "p") if i % 2 == 0 else ("allowance", "a")
        tenant = f"{prefix}{100 + (i // 2) % 800}"
        started = time.perf_counter()
        hold = book.try_reserve(tenant, 1000)
        book.commit(hold.reservation_id, 900, tenant_id=tenant)  # type: ignore[arg-type]
        times[kind].append((time.perf_counter() - started) * 1e6)
    return {k: statistics.fmean(v[cycles // 10 :]) for k, v in times.items()}


def renewal(book: ledger.Ledger, conn: psycopg.Connection[Any]) -> dict[str, float]:
    """µs of a first reserve of a period (1 and 30 due) against a reserve inside one."""
    out: dict[str, list[float]] = {"in period": [], "first, 1 due": [], "first, 30 due": []}
    for rnd in range(60):
        for label, due in (("first, 1 due", 1), ("first, 30 due", 30)):
            tenant = f"a{900 + rnd % 50 + (50 if due == 30 else 0)}"
            _backdate(conn, [tenant], due)
            started = time.perf_counter()
            book.try_reserve(tenant, 10)
            out[label].append((time.perf_counter() - started) * 1e6)
            started = time.perf_counter()
            book.try_reserve(tenant, 10)
            out["in period"].append((time.perf_counter() - started) * 1e6)
    return {k: statistics.median(v) for k, v in out.items()}


def sweeper(book: ledger.Ledger, conn: psycopg.Connection[Any]) -> dict[str, float]:
    tenants = [f"s{i}" for i in range(TENANTS)]
    _backdate(conn, tenants, 1)
    started = time.perf_counter()
    renewed = book.renew_periods(limit=TENANTS)
    elapsed = time.perf_counter() - started
    assert renewed.tenants == TENANTS, renewed
    return {"tenants": TENANTS, "seconds": elapsed, "µs per tenant": elapsed / TENANTS * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument("--cycles", type=int, default=2000)
    args = parser.parse_args(argv)
    with scratch.fresh_database(args.database_url, "periods") as db_url:
        anchor = datetime.now(UTC) - DAY / 2
        with ledger.Ledger(db_url) as book, psycopg.connect(db_url, autocommit=True) as conn:
            for i in range(TENANTS):
                for prefix in ("p", "a", "s"):
                    book.ensure_tenant(f"{prefix}{i}", 10**15)
                for prefix in ("a", "s"):
                    book.set_allowance(f"{prefix}{i}", 10**12, days=1, anchor=anchor)
            results = {
                "statements": statements(conn),
                "cycle µs (mean, reserve+commit)": latency(book, args.cycles),
                "reserve µs (median)": renewal(book, conn),
                "sweeper": sweeper(book, conn),
            }
            assert book.verify_journal().ok
        for section, values in results.items():
            print(section)
            for key, value in values.items():
                shown = f"{value:.1f}" if isinstance(value, float) else value
                print(f"  {key}: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
