"""Keyed reserve->commit cycles on Citus: the keyed functions against the three statements.

    python scripts/keyed_cycles.py postgresql+psycopg://postgres@127.0.0.1:9760/postgres

Makes a schema of its own (migrated, distributed with 32 shards), runs rounds of
keyed reserve->commit cycles from one client through the one-command keyed
functions, through the three-statement path (claim, operation, record: what a
ledger runs where ``distribute`` made no keyed function) and without keys, and
drops the schema. Prints milliseconds per cycle; compare within a round only.
docs/scale-out.md ("Keyed calls") records a run.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import replace

import psycopg
from sqlalchemy import make_url

import ledger
from ledger.citus.queries import DistributedQueries

TENANTS = 20


def cycles(book: ledger.Ledger, tag: str, n: int, keyed: bool = True) -> float:
    """Milliseconds per reserve->commit cycle."""
    start = time.perf_counter()
    for i in range(n):
        tenant = f"t{i % TENANTS}"
        hold = book.try_reserve(tenant, 10, idempotency_key=f"{tag}r{i}" if keyed else None)
        assert hold.reservation_id is not None
        book.commit(
            hold.reservation_id,
            5,
            tenant_id=tenant,
            idempotency_key=f"{tag}c{i}" if keyed else None,
        )
    return (time.perf_counter() - start) / n * 1000


def main(url: str, rounds: int = 3, n: int = 300) -> None:
    schema = "keyed_" + uuid.uuid4().hex[:8]
    ledger.migrate(url, schema=schema)
    try:
        ledger.distribute(url, schema, shard_count=32)
        with ledger.Ledger(url, schema=schema) as one, ledger.Ledger(url, schema=schema) as three:
            routed = one._q
            assert isinstance(routed, DistributedQueries) and routed.keyed, "not distributed"
            three._queries = replace(routed, keyed=())
            for t in range(TENANTS):
                one.ensure_tenant(f"t{t}", 10**12)
            cycles(one, "w1", 50), cycles(three, "w3", 50), cycles(one, "w0", 50, keyed=False)
            for r in range(rounds):
                a = cycles(one, f"a{r}", n)
                b = cycles(three, f"b{r}", n)
                c = cycles(one, f"c{r}", n, keyed=False)
                print(
                    f"round {r}: keyed functions {a:.2f} ms/cycle, three statements "
                    f"{b:.2f} ms/cycle ({b / a:.1f}x), unkeyed {c:.2f} ms/cycle"
                )
            assert one.verify_journal().ok and one.verify_conservation().is_balanced
    finally:
        libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main(sys.argv[1])
