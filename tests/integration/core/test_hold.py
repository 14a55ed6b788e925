"""Ledger.hold / AsyncLedger.hold: commit the hold at once, work lock-free, settle or release."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import create_engine, text

import ledger
from ledger import errors
from tests.conftest import _plain


def test_hold_settles_and_refunds_the_surplus(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    with book.hold("t", 300, ttl=60) as h:
        assert book.reserved_microcents("t") == 300  # committed at once
        outcome = h.settle(120)
    assert outcome.status == "committed" and h.settled
    assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 880, 0, 120)
    assert book.verify_journal().ok


def test_leaving_without_settling_releases(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    with book.hold("t", 300) as h:
        pass
    assert h.outcome is not None and h.outcome.status == "released"
    assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 1_000, 0, 0)


def test_an_exception_releases_and_propagates(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    with pytest.raises(RuntimeError, match="the LLM call failed"), book.hold("t", 300):
        raise RuntimeError("the LLM call failed")
    assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 1_000, 0, 0)
    assert book.active_reservations() == 0


def test_a_refused_hold_raises_its_typed_error_and_runs_nothing(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 100)
    ran = []
    with pytest.raises(errors.InsufficientFundsError), book.hold("t", 101):
        ran.append(1)
    with pytest.raises(errors.TenantNotFound), book.hold("nobody", 1):
        ran.append(1)
    with pytest.raises(errors.AmountTypeError), book.hold("t", 1.0):  # type: ignore[arg-type]
        ran.append(1)
    assert ran == []
    assert book.tenant("t") == ledger.TenantLedger("t", 100, 100, 0, 0)


def test_an_overrun_keeps_the_hold_until_the_block_ends(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 100)
    with book.hold("t", 60) as h:
        assert h.settle(500).status == "overrun" and not h.settled
    assert h.outcome is not None and h.outcome.status == "released"
    assert book.tenant("t") == ledger.TenantLedger("t", 100, 100, 0, 0)


def test_settlement_joins_the_apps_transaction(db_url: str) -> None:
    """The commit and the app's job row are atomic; the hold itself was committed before."""
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 1_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE jobs (id serial PRIMARY KEY, cost bigint)"))
    with book.hold("t", 300, ttl=timedelta(milliseconds=300)) as h, engine.connect() as conn:
        conn.execute(text("INSERT INTO jobs (cost) VALUES (250)"))
        assert h.settle(250, connection=conn).ok
        conn.rollback()  # the app's transaction fails after settling
    # The job and the commit are both gone. The hold, committed on its own, is
    # still open: the block cannot know whether the app's transaction will
    # commit later, so the TTL returns the amount.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
    assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 700, 300, 0)
    time.sleep(0.4)
    assert book.expire_holds() == 1
    assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 1_000, 0, 0)
    with book.hold("t", 300, ttl=60) as h, engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (cost) VALUES (250)"))
        h.settle(250, connection=conn)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
    assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 750, 0, 250)
    engine.dispose()


def test_the_work_runs_without_holding_the_tenants_row_lock(db_url: str) -> None:
    """While one request works inside its hold, another reserves on the same tenant.

    With the old recipe (reserve and commit in one request transaction) the
    second reserve waits for the first transaction's row lock; the negative
    control below shows that, with a lock_timeout so it fails instead of
    waiting.
    """
    book = ledger.Ledger(db_url)
    book.ensure_tenant("t", 1_000)
    inside, done = threading.Event(), threading.Event()
    errors_seen: list[BaseException] = []

    def other_request() -> None:
        try:
            inside.wait(10)
            engine = create_engine(
                db_url.replace("postgresql://", "postgresql+psycopg://", 1),
                connect_args={"options": "-c lock_timeout=2s"},  # fail instead of waiting
            )
            with ledger.Ledger(engine) as other:
                assert other.try_reserve("t", 10).ok
            engine.dispose()
        except BaseException as exc:
            errors_seen.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=other_request)
    worker.start()
    with book.hold("t", 100, ttl=60) as h:
        inside.set()
        assert done.wait(20), "the other request is still waiting"
        h.settle(100)
    worker.join()
    assert errors_seen == []

    # Negative control: the same thing inside one open transaction blocks.
    with (
        psycopg.connect(_plain(db_url)) as holder,
        psycopg.connect(_plain(db_url), autocommit=True) as other,
    ):
        holder.execute(
            "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents "
            "WHERE tenant_id = 't'"
        )
        other.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute(
                "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents "
                "WHERE tenant_id = 't'"
            )
        holder.rollback()
    book.close()


def test_a_hold_abandoned_by_a_dead_process_expires_by_its_ttl(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    held = book.hold("t", 400, ttl=timedelta(milliseconds=50))
    h = held.__enter__()  # the process dies here: no __exit__, no release
    assert book.reserved_microcents("t") == 400
    time.sleep(0.2)
    assert book.expire_holds() == 1
    assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 1_000, 0, 0)
    assert h.reservation_id is not None and book.verify_journal().ok


def test_async_hold(db_url: str) -> None:
    async def main() -> None:
        async with ledger.AsyncLedger(db_url) as book:
            await book.ensure_tenant("t", 1_000)
            async with book.hold("t", 300, ttl=60) as h:
                await asyncio.sleep(0.01)
                assert (await h.settle(120)).ok
            with pytest.raises(ValueError, match="boom"):
                async with book.hold("t", 300):
                    raise ValueError("boom")
            async with book.hold("t", 300) as h2:
                pass
            assert h2.outcome is not None and h2.outcome.status == "released"
            with pytest.raises(errors.InsufficientFundsError):
                async with book.hold("t", 10_000):
                    raise AssertionError("must not run")
            assert await book.tenant("t") == ledger.TenantLedger("t", 1_000, 880, 0, 120)
            assert (await book.verify_journal()).ok

    asyncio.run(main())


def test_async_holds_overlap_on_one_tenant(db_url: str) -> None:
    """32 concurrent holds with slow work on ONE tenant finish in about one work period."""

    async def main() -> tuple[int, int]:
        async with ledger.AsyncLedger(db_url, pool_size=8) as book:
            await book.ensure_tenant("hot", 10_000)
            overlap = peak = 0

            async def request() -> None:
                nonlocal overlap, peak
                async with book.hold("hot", 100, ttl=60) as h:
                    overlap += 1
                    peak = max(peak, overlap)
                    await asyncio.sleep(0.2)
                    overlap -= 1
                    await h.settle(100)

            await asyncio.gather(*(request() for _ in range(32)))
            return peak, await book.committed_microcents("hot") or 0

    peak, committed = asyncio.run(main())
    assert committed == 3_200
    assert peak == 32  # every request was inside its hold at the same time
