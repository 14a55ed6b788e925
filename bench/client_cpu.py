"""Client CPU per operation: the ledger's Python path against raw psycopg on the same connection.

    python -m bench.client_cpu                      # embedded PostgreSQL, sync and async
    python -m bench.client_cpu --ops 2000 --rounds 5
    python -m bench.client_cpu --profile cycle      # cProfile of the sync cycle, top functions

Each figure is ``time.process_time`` of this process over ``--ops``
operations divided by their number, best of ``--rounds`` (the server runs in
another process, so its work is not counted; waiting for it is not CPU).
The floor is measured in the same round, on the same pooled connection:
raw psycopg executing the very statements the ledger sends, with the same
parameters, in the same transactions (autocommit for unkeyed operations; one
READ COMMITTED transaction of claim, operation and record for keyed ones).
The floor does none of the ledger's own work (validation, the operation's
generator, outcome objects, telemetry, the pool checkout per operation, the
request hash and outcome JSON of keyed operations): the ratio is what that
work costs on top of the driver.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import os
import pstats
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

import ledger
from ledger._queries import for_schema

from .scratch import fresh_database

TENANT = "cpu"
BUDGET = 10**15
AMOUNT, ACTUAL = 1_000, 900
_keys = itertools.count()


def _reserve_params(key: str | None) -> dict[str, Any]:
    return {"tenant_id": TENANT, "amount": AMOUNT, "ttl_us": None, "expires_at": None, "ikey": key}


def _commit_params(rid: int, key: str | None) -> dict[str, Any]:
    tenant = None if key is None else TENANT
    return {"reservation_id": rid, "actual": ACTUAL, "tenant_id": tenant, "ikey": key}


def _converted(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """The statement in ``$n`` form, converted once (as psycopg does for statements <= 4 KiB)."""
    converted = _CONVERTED.get(sql)
    if converted is None:
        parts = _split(sql)
        converted = _CONVERTED[sql] = parts
    return converted


def _split(sql: str) -> tuple[bytes, tuple[str, ...]]:
    from psycopg._queries import _query2pg_nocache

    query, _formats, order, _parts = _query2pg_nocache(sql.encode(), "utf-8")
    return query, tuple(order or ())


_CONVERTED: dict[str, tuple[bytes, tuple[str, ...]]] = {}
_HASH = bytes(32)
_OUTCOME = json.dumps({"status": "reserved", "reservation_id": 1, "remaining_microcents": 1})


# ------------------------------------------------------------------ sync


class RawSync:
    """The floor: the same statements on a pooled connection of the ledger, kept checked out."""

    def __init__(self, lg: ledger.Ledger, converted: bool = False) -> None:
        self.q = for_schema(lg.schema)
        self.converted = converted
        self.raw = lg.engine.raw_connection()
        self.conn: psycopg.Connection[Any] = self.raw.driver_connection  # type: ignore[assignment]
        self.conn.autocommit = True

    def close(self) -> None:
        self.conn.autocommit = False
        self.raw.close()

    def _one(self, sql: str, params: dict[str, Any]) -> Any:
        if self.converted:
            query, names = _converted(sql)
            with psycopg.RawCursor(self.conn, row_factory=namedtuple_row) as raw:
                raw.execute(query, [params[n] for n in names])
                return raw.fetchall()[0]
        with self.conn.cursor(row_factory=namedtuple_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()[0]

    def _keyed(self, sql: str, params: dict[str, Any]) -> Any:
        ids = {"tenant_id": TENANT, "ikey": params["ikey"]}
        self.conn.autocommit = False
        with self.conn.transaction():
            self._one(self.q.idempotency_claim, {**ids, "request_hash": _HASH})
            row = self._one(sql, params)
            self._one(self.q.idempotency_record, {**ids, "outcome": _OUTCOME})
        self.conn.autocommit = True
        return row

    def reserve(self, keyed: bool) -> int:
        if keyed:
            row = self._keyed(self.q.try_reserve, _reserve_params(f"r{next(_keys)}"))
        else:
            row = self._one(self.q.try_reserve, _reserve_params(None))
        return int(row.reservation_id)

    def commit(self, rid: int, keyed: bool) -> None:
        if keyed:
            self._keyed(self.q.commit_for_tenant, _commit_params(rid, f"c{next(_keys)}"))
        else:
            self._one(self.q.commit, _commit_params(rid, None))


class LedgerSync:
    def __init__(self, lg: ledger.Ledger) -> None:
        self.lg = lg

    def reserve(self, keyed: bool) -> int:
        key = f"r{next(_keys)}" if keyed else None
        out = self.lg.try_reserve(TENANT, AMOUNT, idempotency_key=key)
        assert out.reservation_id is not None, out
        return out.reservation_id

    def commit(self, rid: int, keyed: bool) -> None:
        if keyed:
            out = self.lg.commit(rid, ACTUAL, tenant_id=TENANT, idempotency_key=f"c{next(_keys)}")
        else:
            out = self.lg.commit(rid, ACTUAL)
        assert out.status == "committed", out


def _cpu(fn: Callable[[], None], n: int) -> float:
    """Client CPU per call of ``fn``, in microseconds."""
    begun = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - begun) / n * 1e6


def measure_sync(impl: Any, what: str, keyed: bool, n: int) -> float:
    if what == "reserve":
        rids: list[int] = []
        us = _cpu(lambda: rids.append(impl.reserve(keyed)), n)
        for rid in rids:  # leave no open holds behind
            impl.commit(rid, False)
        return us
    if what == "commit":
        pending = [impl.reserve(False) for _ in range(n)]
        it = iter(pending)
        return _cpu(lambda: impl.commit(next(it), keyed), n)
    return _cpu(lambda: impl.commit(impl.reserve(keyed), keyed), n)


# ----------------------------------------------------------------- async


class RawAsync:
    def __init__(
        self, conn: psycopg.AsyncConnection[Any], schema: str, converted: bool = False
    ) -> None:
        self.q = for_schema(schema)
        self.conn = conn
        self.converted = converted

    async def _one(self, sql: str, params: dict[str, Any]) -> Any:
        if self.converted:
            query, names = _converted(sql)
            async with psycopg.AsyncRawCursor(self.conn, row_factory=namedtuple_row) as raw:
                await raw.execute(query, [params[n] for n in names])
                return (await raw.fetchall())[0]
        async with self.conn.cursor(row_factory=namedtuple_row) as cur:
            await cur.execute(sql, params)
            return (await cur.fetchall())[0]

    async def _keyed(self, sql: str, params: dict[str, Any]) -> Any:
        ids = {"tenant_id": TENANT, "ikey": params["ikey"]}
        await self.conn.set_autocommit(False)
        async with self.conn.transaction():
            await self._one(self.q.idempotency_claim, {**ids, "request_hash": _HASH})
            row = await self._one(sql, params)
            await self._one(self.q.idempotency_record, {**ids, "outcome": _OUTCOME})
        await self.conn.set_autocommit(True)
        return row

    async def reserve(self, keyed: bool) -> int:
        if keyed:
            row = await self._keyed(self.q.try_reserve, _reserve_params(f"r{next(_keys)}"))
        else:
            row = await self._one(self.q.try_reserve, _reserve_params(None))
        return int(row.reservation_id)

    async def commit(self, rid: int, keyed: bool) -> None:
        if keyed:
            await self._keyed(self.q.commit_for_tenant, _commit_params(rid, f"c{next(_keys)}"))
        else:
            await self._one(self.q.commit, _commit_params(rid, None))


class LedgerAsync:
    def __init__(self, lg: ledger.AsyncLedger) -> None:
        self.lg = lg

    async def reserve(self, keyed: bool) -> int:
        key = f"r{next(_keys)}" if keyed else None
        out = await self.lg.try_reserve(TENANT, AMOUNT, idempotency_key=key)
        assert out.reservation_id is not None, out
        return out.reservation_id

    async def commit(self, rid: int, keyed: bool) -> None:
        if keyed:
            out = await self.lg.commit(
                rid, ACTUAL, tenant_id=TENANT, idempotency_key=f"c{next(_keys)}"
            )
        else:
            out = await self.lg.commit(rid, ACTUAL)
        assert out.status == "committed", out


async def _acpu(fn: Callable[[], Awaitable[None]], n: int) -> float:
    begun = time.process_time()
    for _ in range(n):
        await fn()
    return (time.process_time() - begun) / n * 1e6


async def measure_async(impl: Any, what: str, keyed: bool, n: int) -> float:
    if what == "reserve":
        rids: list[int] = []

        async def reserve() -> None:
            rids.append(await impl.reserve(keyed))

        us = await _acpu(reserve, n)
        for rid in rids:
            await impl.commit(rid, False)
        return us
    if what == "commit":
        it = iter([await impl.reserve(False) for _ in range(n)])

        async def commit() -> None:
            await impl.commit(next(it), keyed)

        return await _acpu(commit, n)

    async def cycle() -> None:
        await impl.commit(await impl.reserve(keyed), keyed)

    return await _acpu(cycle, n)


# ------------------------------------------------------------------ main

#: The floors and the ledger: psycopg as an application would call it (``%(x)s``
#: statements, converted by psycopg per call), and with the statements converted
#: to ``$n`` once (what psycopg's own cache does for statements up to 4 KiB).
IMPLS = ("psycopg", "psycopg $n", "ledger")
CELLS = [(w, k) for k in (False, True) for w in ("reserve", "commit", "cycle")]


def _row(label: str, best: dict[str, float]) -> str:
    figures = "".join(f"{best[name]:>12.1f}" for name in IMPLS)
    ratios = "".join(f"{best['ledger'] / best[name]:>11.2f}x" for name in IMPLS[:2] if best[name])
    return f"{label:<16}{figures}{ratios}"


def run_sync(url: str, n: int, rounds: int) -> dict[str, dict[str, float]]:
    with ledger.Ledger(url) as lg:
        lg.ensure_tenant(TENANT, BUDGET)
        mine = LedgerSync(lg)
        results: dict[str, dict[str, float]] = {}
        for _ in range(rounds):
            for what, keyed in CELLS:
                label = f"{what}{' keyed' if keyed else ''}"
                for name in IMPLS:
                    if name == "ledger":
                        us = measure_sync(mine, what, keyed, n)
                    else:
                        raw = RawSync(lg, converted=name == "psycopg $n")
                        try:
                            us = measure_sync(raw, what, keyed, n)
                        finally:
                            raw.close()
                    cell = results.setdefault(label, {})
                    cell[name] = min(us, cell.get(name, float("inf")))
        return results


async def run_async(url: str, n: int, rounds: int) -> dict[str, dict[str, float]]:
    lg = ledger.AsyncLedger(url)
    try:
        await lg.ensure_tenant(TENANT, BUDGET)
        mine = LedgerAsync(lg)
        pool: Any = lg._db._source
        results: dict[str, dict[str, float]] = {}
        for _ in range(rounds):
            for what, keyed in CELLS:
                label = f"{what}{' keyed' if keyed else ''}"
                cell = results.setdefault(label, {})
                for name in IMPLS:
                    if name == "ledger":
                        us = await measure_async(mine, what, keyed, n)
                    else:
                        async with pool.connection() as conn:
                            await conn.set_autocommit(True)
                            raw = RawAsync(conn, lg.schema, converted=name == "psycopg $n")
                            us = await measure_async(raw, what, keyed, n)
                            await conn.set_autocommit(False)
                    cell[name] = min(us, cell.get(name, float("inf")))
        return results
    finally:
        await lg.close()


def profile(url: str, n: int, what: str, keyed: bool) -> None:
    with ledger.Ledger(url) as lg:
        lg.ensure_tenant(TENANT, BUDGET)
        impl = LedgerSync(lg)
        measure_sync(impl, what, keyed, 200)  # warm up
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        measure_sync(impl, what, keyed, n)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    parser.add_argument("--only", default="sync,async")
    parser.add_argument("--profile", choices=["reserve", "commit", "cycle"])
    parser.add_argument("--keyed", action="store_true", help="with --profile")
    args = parser.parse_args(argv)
    with fresh_database(args.database_url, "client_cpu") as url:
        if args.profile:
            profile(url, args.ops, args.profile, args.keyed)
            return 0
        header = (
            f"{'operation':<16}"
            + "".join(f"{name:>12}" for name in IMPLS)
            + "".join(f"{'/ ' + name:>12}" for name in IMPLS[:2])
        )
        print(f"client CPU per operation, us (best of {args.rounds} x {args.ops} ops)")
        for mode in args.only.split(","):
            if mode == "sync":
                results = run_sync(url, args.ops, args.rounds)
            else:
                results = asyncio.run(run_async(url, args.ops, args.rounds))
            print(f"\n{mode}\n{header}")
            for label, best in results.items():
                print(_row(label, best))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
