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

from sqlalchemy import create_engine, make_url

import ledger
from ledger import embedded


def _measure(url: str, tenants: int, threads: int, seconds: float, coalesce: bool) -> float:
    engine = create_engine(url, pool_size=threads, max_overflow=0)
    book = ledger.Ledger(engine, coalesce=coalesce)
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
    barrier.wait()
    started = time.monotonic()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - started
    book.close()
    engine.dispose()
    return sum(cycles) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
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
        for name, tenants in (("hot", 1), ("spread", 10_000)):
            plain = _measure(url, tenants, args.threads, args.seconds, coalesce=False)
            coalesced = _measure(url, tenants, args.threads, args.seconds, coalesce=True)
            print(f"{name:<10}{plain:>10.0f}{coalesced:>10.0f}{coalesced / plain:>7.2f}x")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
