"""AsyncLedger: the same operations, outcomes and errors as Ledger, on asyncio.

Every test drives the real server through ``asyncio.run``; the parity test runs
one scripted workload on a sync ledger and an async ledger, each on its own
fresh database, and compares every outcome and the final tables.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import ledger
from ledger import errors
from tests.conftest import _database_url, _plain, drop_database, make_database
from tests.helpers import state


@pytest.fixture
def second_db_url(server_url: str, template_db: str) -> Iterator[str]:
    name = make_database(server_url, template_db)
    try:
        yield _database_url(server_url, name)
    finally:
        drop_database(server_url, name)


def _async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def _workload() -> Generator[Call, Any, None]:
    """A scripted workload touching every public operation.

    It yields ``(method, args, kwargs)`` and receives the result, so the very
    same script drives the sync and the async ledger.
    """
    yield "ensure_tenant", ("a", 1_000), {}
    yield "ensure_tenant", ("a", 1_000), {}
    yield "ensure_tenant", ("b", 50), {}
    yield "set_max_reserved_microcents", ("a", 900), {}
    yield "top_up_tenant", ("b", 25), {"idempotency_key": "k1"}
    yield "top_up_tenant", ("b", 25), {"idempotency_key": "k1"}
    r1 = yield "try_reserve", ("a", 400), {}
    over_cap = yield "try_reserve", ("a", 600), {}
    assert over_cap.status == "exposure_limit_exceeded"
    yield "try_reserve", ("b", 10_000), {}
    yield "try_reserve", ("nobody", 1), {}
    r3 = yield "try_reserve", ("b", 30), {"idempotency_key": "r"}
    yield "try_reserve", ("b", 30), {"idempotency_key": "r"}
    yield "commit", (r1.reservation_id, 450), {}
    yield "commit", (r1.reservation_id, 450), {}  # already settled
    yield "release", (r3.reservation_id,), {"tenant_id": "b", "idempotency_key": "rel"}
    yield "release", (r3.reservation_id,), {"tenant_id": "b", "idempotency_key": "rel"}
    held = yield "try_reserve_many", ([("a", 10), ("a", 10_000), ("b", 5), ("a", 1)],), {}
    ids = [h.reservation_id for h in held if h.ok]
    yield "commit_many", ([(rid, 3) for rid in ids[:2]],), {}
    yield "release_many", (ids[2:],), {}
    partly = yield "try_reserve_many", ([("a", 1), ("b", 10**9)],), {}
    refused = yield "try_reserve_many", ([("a", 1), ("b", 10**9)],), {"all_or_nothing": True}
    assert isinstance(refused, errors.BatchRefused)
    busy = yield "snapshot", (), {}
    refused = yield "restore_from_snapshot", (busy,), {}
    assert isinstance(refused, errors.ActiveReservations)
    yield "release", (partly[0].reservation_id,), {}
    yield "commit", (2**70, 1), {}  # bad input: a typed error, on both
    yield "try_reserve", ("a", 1.5), {}
    yield "try_reserve", ("a", 5), {"ttl": timedelta(microseconds=1)}
    yield "expire_holds", (), {}
    for read in (
        "tenant",
        "remaining_microcents",
        "reserved_microcents",
        "committed_microcents",
        "initial_microcents",
        "max_reserved_microcents",
    ):
        yield read, ("a",), {}
        yield read, ("nobody",), {}
    for read in (
        "tenant_count",
        "active_reservations",
        "total_committed_microcents",
        "committed_since_last_certificate",
        "snapshot_version",
        "verify_conservation",
    ):
        yield read, (), {}
    snap = yield "snapshot", (), {}
    yield "restore_from_snapshot", (snap,), {}
    yield "prune_idempotency_keys", (timedelta(days=1),), {}
    yield "certify", (), {}
    yield "verify_journal", (), {}


def _comparable(result: Any) -> Any:
    """Outcomes as they are; errors by type and message; certificates by digest."""
    if isinstance(result, errors.LedgerError):
        return type(result), str(result)
    if isinstance(result, ledger.FinancialCertificate):
        return result.ledger_digest_hex, result.tenant_count, result.certificate_id
    if isinstance(result, list):
        return [_comparable(r) for r in result]
    return result


def _run_sync(book: ledger.Ledger) -> list[Any]:
    script, results = _workload(), []
    call = next(script)
    while True:
        name, args, kwargs = call
        time.sleep(0.001) if name == "expire_holds" else None
        try:
            results.append((name, getattr(book, name)(*args, **kwargs)))
        except errors.LedgerError as exc:
            results.append((name, exc))
        try:
            call = script.send(results[-1][1])
        except StopIteration:
            return results


async def _run_async(book: ledger.AsyncLedger) -> list[Any]:
    script, results = _workload(), []
    call = next(script)
    while True:
        name, args, kwargs = call
        if name == "expire_holds":
            await asyncio.sleep(0.001)
        try:
            results.append((name, await getattr(book, name)(*args, **kwargs)))
        except errors.LedgerError as exc:
            results.append((name, exc))
        try:
            call = script.send(results[-1][1])
        except StopIteration:
            return results


async def _with_async_ledger(url: str, work: Callable[[ledger.AsyncLedger], Awaitable[Any]]) -> Any:
    async with ledger.AsyncLedger(url) as book:
        return await work(book)


def test_async_ledger_gives_the_same_outcomes_and_tables_as_ledger(
    db_url: str, second_db_url: str
) -> None:
    with ledger.Ledger(db_url) as book:
        sync = _run_sync(book)
    asynced = asyncio.run(_with_async_ledger(second_db_url, _run_async))
    assert len(sync) > 50
    assert [(n, _comparable(r)) for n, r in sync] == [(n, _comparable(r)) for n, r in asynced]
    with (
        psycopg.connect(_plain(db_url)) as one,
        psycopg.connect(_plain(second_db_url)) as two,
    ):
        a, b = state(one), state(two)
    # Chain heads cover timestamps, which differ between the two runs.
    a.pop("heads"), b.pop("heads")
    assert a == b


def test_async_operations_join_the_callers_async_connection_and_session(db_url: str) -> None:
    async def main() -> None:
        engine = create_async_engine(_async_url(db_url))
        book = ledger.AsyncLedger(engine)
        try:
            await book.ensure_tenant("t", 1_000)
            async with engine.connect() as conn:
                hold = await book.try_reserve("t", 400, connection=conn)
                assert hold.ok
                assert await book.reserved_microcents("t", connection=conn) == 400
                assert await book.reserved_microcents("t") == 0  # not committed yet
                report = await book.verify_journal(connection=conn)  # streams inside it
                assert report.ok, report
                await conn.rollback()
            assert await book.reserved_microcents("t") == 0
            sessions = async_sessionmaker(engine, class_=AsyncSession)
            async with sessions() as session:
                hold = await book.try_reserve("t", 300, connection=session)
                await session.execute(text("SELECT 1"))
                await session.commit()
            assert await book.reserved_microcents("t") == 300
            outcomes = await book.try_reserve_many([("t", 100), ("t", 10**6)])
            assert [o.status for o in outcomes] == ["reserved", "insufficient"]
            assert (await book.verify_journal()).ok
        finally:
            await book.close()
            await engine.dispose()

    asyncio.run(main())


def test_many_tasks_on_one_hot_tenant_spend_exactly_the_budget(db_url: str) -> None:
    price, budget, tasks = 7, 7 * 100 + 3, 32

    async def main() -> tuple[int, Any]:
        async with ledger.AsyncLedger(db_url, pool_size=8) as book:
            await book.ensure_tenant("hot", budget)

            async def worker() -> int:
                won = 0
                for _ in range(6):
                    hold = await book.try_reserve("hot", price)
                    if hold.ok:
                        assert (await book.commit(hold.reservation_id, price)).ok
                        won += 1
                return won

            wins = sum(await asyncio.gather(*(worker() for _ in range(tasks))))
            return wins, await book.tenant("hot")

    wins, tenant = asyncio.run(main())
    assert wins == 100  # 192 attempts, the budget pays for exactly 100
    assert tenant == ledger.TenantLedger("hot", budget, 3, 0, 700)


def test_batches_consume_an_iterator_of_items_once_on_both_sides(db_url: str) -> None:
    """Items may be a generator: each side reads it once (the async side once built the
    batch twice, so the second build saw an exhausted iterator and did nothing)."""

    def items(tenant: str) -> Any:
        return ((tenant, cost) for cost in (3, 4, 5))

    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("sync", 100)
        held = book.try_reserve_many(items("sync"))
        assert [o.status for o in held] == ["reserved"] * 3
        settled = book.commit_many((o.reservation_id, 1) for o in held)
        assert [o.status for o in settled] == ["committed"] * 3
        sync_state = book.tenant("sync")

    async def main() -> Any:
        async with ledger.AsyncLedger(db_url) as book:
            await book.ensure_tenant("async", 100)
            held = await book.try_reserve_many(items("async"))
            assert [o.status for o in held] == ["reserved"] * 3
            settled = await book.commit_many((o.reservation_id, 1) for o in held)
            assert [o.status for o in settled] == ["committed"] * 3
            again = await book.try_reserve_many(items("async"))
            released = await book.release_many(o.reservation_id for o in again)
            assert [o.status for o in released] == ["released"] * 3
            return await book.tenant("async")

    async_state = asyncio.run(main())
    assert sync_state == ledger.TenantLedger("sync", 100, 97, 0, 3)
    assert async_state == ledger.TenantLedger("async", 100, 97, 0, 3)


def test_async_bad_input_is_a_typed_error(db_url: str) -> None:
    with pytest.raises(errors.InputError):
        ledger.AsyncLedger("mysql://nowhere/db")
    with pytest.raises(errors.InputError):
        ledger.AsyncLedger(object())  # type: ignore[arg-type]

    async def main() -> None:
        async with ledger.AsyncLedger(db_url) as book:
            with pytest.raises(errors.AmountTypeError):
                await book.try_reserve("t", 1.5)  # type: ignore[arg-type]
            with pytest.raises(errors.InputError):
                await book.try_reserve("t", 1, connection=object())  # type: ignore[arg-type]

    asyncio.run(main())


def test_async_ledger_reports_an_unreachable_server_as_a_ledger_error() -> None:
    async def main() -> None:
        url = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
        async with ledger.AsyncLedger(url, pool_timeout=2) as book:
            with pytest.raises(errors.ConnectionLost):
                await book.tenant_count()

    asyncio.run(main())


def test_async_bad_input_against_a_down_server_raises_before_any_io() -> None:
    """Issue 22 finding 13: these waited on the pool (60 s) instead of raising at once.

    The pool would wait 600 s for a connection; every call must answer long
    before that (wait_for turns a hang into a failure instead of a stuck run).
    """
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    calls: list[tuple[Any, type[Exception]]] = [
        (lambda b: b.try_reserve("t", 1.5), errors.AmountTypeError),
        (lambda b: b.try_reserve("", 1), errors.InvalidTenantId),
        (lambda b: b.try_reserve("t", 2**63), errors.AmountValueError),
        (lambda b: b.try_reserve("t", 1, ttl="soon"), errors.AmountTypeError),
        (lambda b: b.commit("1", 5), errors.AmountTypeError),
        (lambda b: b.release(-1), errors.InputError),
        (lambda b: b.top_up_tenant("t", 1.5), errors.AmountTypeError),
        (lambda b: b.refund("t", 1, 0, reason="x"), errors.AmountValueError),
        (lambda b: b.renew_periods(limit=0), errors.InputError),
        (lambda b: b.commit_many([("x", 1)]), errors.AmountTypeError),
        (lambda b: b.tenant(""), errors.InvalidTenantId),
    ]

    async def main() -> None:
        async with ledger.AsyncLedger(url, pool_timeout=600) as book:
            for call, error in calls:
                with pytest.raises(error):
                    await asyncio.wait_for(call(book), 60)
            # a valid call reports the down server at once, not after the pool timeout
            with pytest.raises(errors.ConnectionLost):
                await asyncio.wait_for(book.try_reserve("t", 1), 60)

    asyncio.run(main())
