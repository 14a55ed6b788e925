"""Nested budgets: reserve->commit on a 4-level path against a flat tenant, in one run.

    python -m bench.nested [--database-url URL] [--processes 8] [--seconds 10] [--smoke]

Four workloads, each from ``--processes`` client processes (so the GIL hides
nothing), each measured for ``--seconds``, one after another on the same
server:

- ``flat, spread``: every process cycles on its own flat tenant (no parent);
- ``flat, hot``: every process cycles on one flat tenant;
- ``nested, hot team``: every process cycles on its own key, and all keys sit
  under one user per process, one team and one organisation: every cycle
  locks the same team and organisation rows (compare with ``flat, hot``);
- ``nested, spread``: the same, each process under its own team; the
  organisation is still shared, so every cycle still locks its row
  (compare with ``flat, spread``).

A cycle is ``try_reserve`` then ``commit``. A flat cycle is two statements; a
nested one is four (the flat statement answers ``nested``, then the
PL/pgSQL function), each writing four rows and four journal entries. The
ratio nested / flat is the issue 24 target (>= 0.5).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

import ledger

from . import scratch

BUDGET = 10**15
AMOUNT, ACTUAL = 1_000, 900


def _client(url: str, tenant: str, seconds: float, ready: Any) -> int:
    with ledger.Ledger(url) as book:
        # Connect and warm the caches, then start together (spawning is slow on a busy host).
        rid = book.try_reserve(tenant, AMOUNT).raise_for_status().reservation_id
        assert rid is not None
        book.release(rid)
        ready.wait()
        cycles, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            rid = book.try_reserve(tenant, AMOUNT).raise_for_status().reservation_id
            assert rid is not None
            book.commit(rid, ACTUAL).raise_for_status()
            cycles += 1
        return cycles


def _measure(url: str, tenants: list[str], seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(len(tenants)) as pool:
        ready = manager.Barrier(len(tenants))
        counts = pool.starmap(_client, [(url, t, seconds, ready) for t in tenants])
    return sum(counts) / seconds


def _trees(book: ledger.Ledger, processes: int, spread: bool, prefix: str) -> list[str]:
    org = f"{prefix}-org"
    book.ensure_tenant(org, BUDGET)
    keys = []
    for p in range(processes):
        team = f"{prefix}-team{p if spread else 0}"
        book.ensure_tenant(team, BUDGET, org)
        user = f"{prefix}-user{p}"
        book.ensure_tenant(user, BUDGET, team)
        key = f"{prefix}-key{p}"
        book.ensure_tenant(key, BUDGET, user)
        keys.append(key)
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--smoke", action="store_true", help="two processes, one second each")
    args = parser.parse_args(argv)
    processes, seconds = (2, 1.0) if args.smoke else (args.processes, args.seconds)
    with scratch.fresh_database(args.database_url, "nested") as db_url:
        with ledger.Ledger(db_url) as book:
            flat = [f"flat{p}" for p in range(processes)]
            for tenant in flat:
                book.ensure_tenant(tenant, BUDGET)
            hot = _trees(book, processes, spread=False, prefix="hot")
            spread = _trees(book, processes, spread=True, prefix="spread")
        runs: list[tuple[str, str, Callable[[], float]]] = [
            ("flat, spread", "flat, spread", lambda: _measure(db_url, flat, seconds)),
            ("flat, hot", "flat, hot", lambda: _measure(db_url, [flat[0]] * processes, seconds)),
            ("nested, hot team", "flat, hot", lambda: _measure(db_url, hot, seconds)),
            ("nested, spread", "flat, spread", lambda: _measure(db_url, spread, seconds)),
        ]
        rates = {name: run() for name, _, run in runs}
        with ledger.Ledger(db_url) as book:
            report = book.verify_journal()
            assert report.ok, report.discrepancies[:3]
    print(f"{processes} processes, {seconds:g} s each, reserve->commit cycles/s")
    print(f"{'workload':<20} {'cycles/s':>10} {'ratio':>8}  against")
    for name, against, _ in runs:
        base = rates[against]
        ratio = rates[name] / base if base else 0.0
        print(f"{name:<20} {rates[name]:>10.0f} {ratio:>8.2f}  {against}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
