"""On plain PostgreSQL no code of the Citus wing (ledger/citus/) runs.

The operations ask their statements object for the steps that differ on
Citus (``ledger._queries.Queries``); on one server it answers with the plain
steps. This runs every operation whose plan differs there (keyed calls,
settlements with and without a tenant, batches, the expiry sweep), sync and
async, under a profiler that records every Python frame that starts or
resumes, and finds none in ledger/citus/.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import ledger

WING = str(Path(ledger.__file__).parent / "citus")


@contextmanager
def wing_frames() -> Iterator[list[str]]:
    """The ledger/citus/ functions that ran in this thread meanwhile."""
    entered: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(WING):
            entered.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        yield entered
    finally:
        sys.setprofile(None)


def test_the_profiler_sees_the_wing() -> None:
    from ledger.citus.hash import hashtext

    with wing_frames() as entered:
        hashtext("t")
    assert entered


def test_plain_postgresql_never_enters_the_citus_wing(db_url: str) -> None:
    with wing_frames() as entered, ledger.Ledger(db_url) as book:
        book.ensure_tenant("t", 1_000)
        book.top_up_tenant("t", 10, idempotency_key="u")
        hold = book.try_reserve("t", 100, idempotency_key="r")
        assert book.try_reserve("t", 100, idempotency_key="r") == hold
        assert hold.reservation_id is not None
        book.commit(hold.reservation_id, 50, tenant_id="t", idempotency_key="c")
        other = book.try_reserve("t", 10).reservation_id
        assert other is not None
        book.release(other)  # no tenant: settled by id alone
        book.adjust("t", -5, reason="x", idempotency_key="a")
        holds = book.try_reserve_many([("t", 1), ("t", 2)])
        ids = [h.reservation_id for h in holds]
        book.commit_many([(ids[0], 1)])
        book.release_many([ids[1]])
        book.expire_holds()
    assert entered == []


def test_plain_postgresql_async_never_enters_the_citus_wing(db_url: str) -> None:
    async def calls() -> None:
        async with ledger.AsyncLedger(db_url) as book:
            await book.ensure_tenant("t", 1_000)
            hold = await book.try_reserve("t", 100, idempotency_key="r")
            assert hold.reservation_id is not None
            await book.commit(hold.reservation_id, 50, tenant_id="t", idempotency_key="c")
            other = (await book.try_reserve("t", 10)).reservation_id
            assert other is not None
            await book.release(other)
            await book.expire_holds()

    with wing_frames() as entered:
        asyncio.run(calls())
    assert entered == []
