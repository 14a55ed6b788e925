"""Client CPU of a reserve→commit cycle: the ledger's own pool against psycopg_pool.

    python -m bench.pool_cpu                    # embedded PostgreSQL
    python -m bench.pool_cpu --ops 3000 --rounds 7

Issue 23 asked whether ``psycopg_pool.ConnectionPool`` (which the async side
already uses, as ``AsyncConnectionPool``) could replace ``ledger/_pool.py``
on the sync side: adopt it if it costs at most 5% more client CPU per
operation. This runs the same ledger, the same cycles, on the same server,
in the same round, once on :class:`ledger._pool.OwnPool` and once on a
``ConnectionPool`` configured alike (5 kept, 15 at most, 30 s to wait,
connections left in autocommit, as ``OwnPool`` leaves them), and prints
client CPU per cycle (``bench.client_cpu``'s measure: ``process_time`` over
``--ops`` cycles, best of ``--rounds``) and the ratio.

The swap replaces the private ``Database._pool`` of one ledger: a benchmark's
liberty, so that nothing but the pool differs.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import psycopg
import psycopg_pool
from sqlalchemy import Engine

import ledger

from .client_cpu import BUDGET, TENANT, LedgerSync, measure_sync
from .scratch import fresh_database


class PsycopgPool:
    """``OwnPool``'s interface (get/put/dispose/fallback) over a psycopg_pool.ConnectionPool."""

    fallback = None

    def __init__(self, engine: Engine) -> None:
        # The same connect arguments and per-connection setup as OwnPool's
        # (the engine's dialect), so that only the pool differs.
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        setup = engine.dialect.on_connect()

        def configure(conn: psycopg.Connection[Any]) -> None:
            if setup is not None:
                setup(conn)
            conn.autocommit = True

        self._pool = psycopg_pool.ConnectionPool(
            cargs[0] if cargs else "",
            kwargs=dict(cparams),
            min_size=5,
            max_size=15,
            timeout=30.0,
            configure=configure,
            open=True,
        )
        self._pool.wait()

    def get(self) -> psycopg.Connection[Any]:
        return self._pool.getconn()

    def put(self, conn: psycopg.Connection[Any], *, lost: bool = False) -> None:
        if lost:
            conn.close()  # the pool replaces a closed connection
        self._pool.putconn(conn)

    def unreachable(self, error: BaseException) -> None:
        """Never called: this pool has no fallback."""

    def dispose(self) -> None:
        self._pool.close()


def run(url: str, n: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with ledger.Ledger(url) as lg:
        lg.ensure_tenant(TENANT, BUDGET)
        own = lg._db._pool
        theirs = PsycopgPool(lg.engine)
        mine = LedgerSync(lg)
        try:
            for _ in range(rounds):
                for keyed in (False, True):
                    label = f"cycle{' keyed' if keyed else ''}"
                    for name, pool in (("OwnPool", own), ("psycopg_pool", theirs)):
                        lg._db._pool = pool  # type: ignore[assignment]
                        us = measure_sync(mine, "cycle", keyed, n)
                        cell = results.setdefault(label, {})
                        cell[name] = min(us, cell.get(name, float("inf")))
        finally:
            lg._db._pool = own
            theirs.dispose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--url", default=None, help="a server to use (default: embedded)")
    args = parser.parse_args(argv)
    with fresh_database(args.url, "pool_cpu") as url:
        results = run(url, args.ops, args.rounds)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"client CPU per cycle, µs (best of {args.rounds} x {args.ops})")
    print(f"{'':14}{'OwnPool':>10}{'psycopg_pool':>14}{'ratio':>8}")
    for label, cell in results.items():
        ratio = cell["psycopg_pool"] / cell["OwnPool"]
        print(f"{label:14}{cell['OwnPool']:10.1f}{cell['psycopg_pool']:14.1f}{ratio:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
