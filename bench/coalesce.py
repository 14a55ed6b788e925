"""Coalescing against the plain path: 64 threads of one process, same run, same server.

    python -m bench.coalesce [--database-url URL] [--threads 64] [--seconds 5]

Each thread runs reserve→commit cycles (commit with ``tenant_id``) on the
``hot`` workload (one tenant) and on ``spread`` (10,000 tenants), first
through ``Ledger(url)`` and then through ``Ledger(url, coalesce=True)``,
with a pool big enough for every thread. Prints cycles/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, make_url

import ledger
from ledger import embedded

from .batch_profile import postmaster_of, server_cpu


def _measure(
    url: str,
    tenants: int,
    threads: int,
    seconds: float,
    coalesce: bool,
    workers: int | None = None,
    detail: list[str] | None = None,
) -> float:
    engine = create_engine(url, pool_size=threads + 8, max_overflow=0)
    book = ledger.Ledger(engine, coalesce=coalesce)
    coalescer = book._db._coalescer
    if coalescer is not None and workers is not None:
        coalescer._workers = workers
    cycles = [0] * threads
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        rng = random.Random(i)
        barrier.wait()
        while time.monotonic() < stop:
            tenant = "t0" if tenants == 1 else f"t{rng.randrange(tenants)}"
            hold = book.try_reserve(tenant, 1000)
            assert hold.reservation_id is not None, hold
            assert book.commit(hold.reservation_id, 900, tenant_id=tenant).ok
            cycles[i] += 1

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False)) as c:
        postmaster = postmaster_of(c)
    barrier.wait()
    started = time.monotonic()
    server0 = server_cpu(postmaster)
    cpu0 = time.process_time()
    before = (coalescer.rounds, coalescer.statements) if coalescer is not None else (0, 0)
    for t in pool:
        t.join()
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu0
    server = server_cpu(postmaster) - server0
    total = sum(cycles)
    if detail is not None and total:
        line = (
            f"{total / elapsed:.0f} cycles/s, CPU per cycle: client {cpu / total * 1e6:.0f} us,"
            f" server {server / total * 1e6:.0f} us; cores busy: client {cpu / elapsed:.2f},"
            f" server {server / elapsed:.2f}"
        )
        if coalescer is not None:
            rounds = coalescer.rounds - before[0]
            statements = coalescer.statements - before[1]
            line += (
                f", {rounds / elapsed:.0f} rounds/s, {statements / max(rounds, 1):.1f} "
                f"statements/round, {coalescer._workers} workers"
            )
        detail.append(line)
    book.close()
    engine.dispose()
    return sum(cycles) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--workers", default=None, help="comma-separated coalescer worker counts to compare"
    )
    parser.add_argument("--only", choices=("hot", "spread"), default=None)
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}")
    server = None
    url = args.database_url
    if url is None:
        server = embedded.start(
            Path(tempfile.mkdtemp(prefix="ledger-coalesce-")) / "data",
            cleanup="delete",
            settings={"max_connections": "200"},
        )
        url = server.url
    url = make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    try:
        ledger.migrate(url)
        with ledger.Ledger(url) as book:
            book.try_reserve_many([])  # warm the pool
            for i in range(10_000):
                book.ensure_tenant(f"t{i}", 10**15)
        print(f"{args.threads} threads, {args.seconds:g} s per point, reserve->commit cycles/s")
        print(f"{'workload':<10}{'plain':>10}{'coalesce':>10}{'ratio':>8}")
        details: list[str] = []
        for name, tenants in (("hot", 1), ("spread", 10_000)):
            if args.only and name != args.only:
                continue
            plain = _measure(url, tenants, args.threads, args.seconds, False, None, details)
            coalesced = _measure(url, tenants, args.threads, args.seconds, True, None, details)
            print(f"{name:<10}{plain:>10.0f}{coalesced:>10.0f}{coalesced / plain:>7.2f}x")
            for n in [int(w) for w in args.workers.split(",")] if args.workers else []:
                _measure(url, tenants, args.threads, args.seconds, True, n, details)
        for line in details:
            print("  " + line)
        print(f"load average after: {os.getloadavg()}")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
