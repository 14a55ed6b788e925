"""AsyncLedger on a distributed schema: the same routed functions and lookups as Ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import ledger
from ledger import TenantLedger

from .conftest import SHARDS, Recorder, alchemy
from .test_contract import settled


@pytest.fixture
def async_engine(citus_url: str, recorder: Recorder) -> Iterator[AsyncEngine]:
    engine = create_async_engine(
        alchemy(citus_url),
        pool_size=4,
        connect_args={"options": "-c citus.log_remote_commands=on"},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _listen(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_notice_handler(recorder.notice)

    yield engine
    asyncio.run(engine.dispose())


def test_async_ledger_routes_like_ledger(
    async_engine: AsyncEngine,
    book: ledger.Ledger,
    raw: psycopg.Connection,
    schema: str,
    recorder: Recorder,
) -> None:
    async def scenario() -> None:
        lg = ledger.AsyncLedger(async_engine, schema=schema)
        assert await lg.ensure_tenant("acme", 1_000)
        await lg.ensure_tenant("zed", 1_000)
        with recorder.capture("async: try_reserve") as remote:
            hold = await lg.try_reserve("acme", 300)
        assert hold.status == "reserved"
        assert remote.one_round_trip(), remote.summary()
        assert "routed_try_reserve_" in remote.statements[0]
        with recorder.capture("async: commit (tenant_id)") as remote:
            out = await lg.commit(hold.reservation_id, 100, tenant_id="acme")  # type: ignore[arg-type]
        assert out.status == "committed" and remote.one_round_trip(), remote.summary()
        other = await lg.try_reserve("acme", 50)
        with recorder.capture("async: release (no tenant_id)") as remote:
            out = await lg.release(other.reservation_id)  # type: ignore[arg-type]
        assert out.status == "released"
        assert len(remote.statements) == SHARDS + 1 and not remote.two_phase, remote.summary()
        outs = await lg.try_reserve_many([("acme", 10), ("zed", 20), ("acme", 10_000)])
        assert [o.status for o in outs] == ["reserved", "reserved", "insufficient"]
        settled_outs = await lg.commit_many([(outs[0].reservation_id, 10)])
        assert settled_outs[0].status == "committed"
        assert (await lg.release_many([outs[1].reservation_id]))[0].status == "released"
        await lg.try_reserve("zed", 5, ttl=timedelta(microseconds=1))
        await asyncio.sleep(0.01)
        assert await lg.expire_holds() == 1
        assert await lg.tenant("acme") == TenantLedger("acme", 1_000, 890, 0, 110)
        assert await lg.tenant("zed") == TenantLedger("zed", 1_000, 1_000, 0, 0)
        await lg.close()

    asyncio.run(scenario())
    settled(book, raw, schema)
