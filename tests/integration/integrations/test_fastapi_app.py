"""The FastAPI integration (lifespan, dependency), through the example app.

The app runs for real, lifespan included, on a real event loop against this
test's database; httpx talks to it through its ASGI transport (only the socket
is skipped: the load tests in ``test_http_load.py`` run it under uvicorn).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

import ledger
from ledger.contrib.fastapi import STATE_KEY, LedgerDep, ledger_lifespan
from tests.conftest import _plain

ROOT = Path(__file__).resolve().parents[3]
Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "fastapi_example", ROOT / "examples/fastapi_app/app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastapi_example"] = module
    spec.loader.exec_module(module)
    return module


def serve(app: FastAPI, scenario: Scenario) -> None:
    """Start the app (its lifespan), run ``scenario`` with a client, then shut it down."""

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
                await scenario(c)

    asyncio.run(main())


def example(db_url: str, scenario: Scenario) -> None:
    serve(load_example().create_app(db_url), scenario)


def _jobs(db_url: str, tenant: str) -> int:
    with psycopg.connect(_plain(db_url)) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE tenant = %s", (tenant,)).fetchone()
    assert row is not None
    return int(row[0])


def _journal_ops(db_url: str, tenant: str) -> list[str]:
    with psycopg.connect(_plain(db_url)) as conn:
        rows = conn.execute(
            "SELECT op FROM ledger.journal WHERE tenant_id = %s ORDER BY seq", (tenant,)
        ).fetchall()
    return [r[0] for r in rows]


def test_hold_work_settle(db_url: str) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        assert (await c.post("/tenants/acme", json={"budget": 1_000})).status_code == 201
        assert (await c.post("/tenants/acme", json={"budget": 1_000})).status_code == 200
        done = await c.post("/jobs/acme", json={"estimate": 300, "actual": 250, "work_ms": 10})
        assert done.status_code == 201, done.text
        assert done.json()["settlement"]["remaining_microcents"] == 750
        refused = await c.post("/jobs/acme", json={"estimate": 5_000, "actual": 1})
        assert refused.status_code == 402 and refused.json()["status"] == "insufficient"
        assert (await c.get("/tenants/acme")).json()["committed_microcents"] == 250
        assert (await c.get("/tenants/nobody")).status_code == 404
        missing = await c.post("/jobs/nobody", json={"estimate": 1, "actual": 1})
        assert missing.status_code == 404

    example(db_url, scenario)
    assert _jobs(db_url, "acme") == 1
    with ledger.Ledger(db_url) as book:
        assert book.active_reservations() == 0
        assert book.verify_journal().ok


def test_failed_work_releases_the_hold_and_writes_no_job(db_url: str) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        await c.post("/tenants/acme", json={"budget": 1_000})
        failed = await c.post("/jobs/acme", json={"estimate": 300, "actual": 250, "fail": True})
        assert failed.status_code == 500
        assert (await c.get("/tenants/acme")).json() == {
            "tenant_id": "acme",
            "initial_microcents": 1_000,
            "remaining_microcents": 1_000,
            "reserved_microcents": 0,
            "committed_microcents": 0,
        }

    example(db_url, scenario)
    # The hold was committed on its own before the work, then released by the failure.
    assert _journal_ops(db_url, "acme")[-2:] == ["reserve", "release"]
    assert _jobs(db_url, "acme") == 0
    with ledger.Ledger(db_url) as book:
        assert book.active_reservations() == 0
        assert book.verify_journal().ok


def test_an_overrun_the_balance_cannot_cover_keeps_nothing(db_url: str) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        await c.post("/tenants/acme", json={"budget": 1_000})
        overrun = await c.post("/jobs/acme", json={"estimate": 300, "actual": 5_000})
        assert overrun.status_code == 402 and overrun.json()["status"] == "overrun"

    example(db_url, scenario)
    assert _jobs(db_url, "acme") == 0  # the job row rolled back with the refused settlement
    with ledger.Ledger(db_url) as book:
        assert book.tenant("acme") == ledger.TenantLedger("acme", 1_000, 1_000, 0, 0)
        assert book.active_reservations() == 0  # leaving the block released the hold


def test_the_tenant_is_not_locked_while_a_request_works(db_url: str) -> None:
    book = ledger.Ledger(db_url)

    async def scenario(c: httpx.AsyncClient) -> None:
        await c.post("/tenants/acme", json={"budget": 1_000})
        slow = asyncio.create_task(
            c.post("/jobs/acme", json={"estimate": 300, "actual": 200, "work_ms": 3_000})
        )
        deadline = time.monotonic() + 30
        # the hold is committed at once: another connection sees it mid-work
        while await asyncio.to_thread(book.reserved_microcents, "acme") != 300:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        quick = await c.post("/jobs/acme", json={"estimate": 300, "actual": 100})
        assert quick.status_code == 201
        assert not slow.done(), "the quick request waited for the slow one's work"
        assert (await slow).status_code == 201

    try:
        example(db_url, scenario)
        assert book.tenant("acme") == ledger.TenantLedger("acme", 1_000, 700, 0, 300)
    finally:
        book.close()


def _plain_app(**state: str) -> FastAPI:
    app = FastAPI(lifespan=ledger_lifespan)
    for key, value in state.items():
        setattr(app.state, key, value)

    @app.get("/remaining/{tenant}")
    async def remaining(tenant: str, book: LedgerDep) -> dict[str, int]:
        assert isinstance(book, ledger.AsyncLedger)
        return {"remaining": await book.remaining_microcents(tenant)}

    return app


def test_lifespan_reads_the_url_from_app_state_and_closes_at_shutdown(db_url: str) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("t", 42)
    app = _plain_app(ledger_database_url=db_url)

    async def scenario(c: httpx.AsyncClient) -> None:
        assert (await c.get("/remaining/t")).json() == {"remaining": 42}
        assert isinstance(getattr(app.state, STATE_KEY), ledger.AsyncLedger)

    serve(app, scenario)
    assert not hasattr(app.state, STATE_KEY)  # closed and gone after shutdown


def test_lifespan_reads_the_url_from_the_environment(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("t", 7)
    monkeypatch.setenv("LEDGER_DATABASE_URL", db_url)

    async def scenario(c: httpx.AsyncClient) -> None:
        assert (await c.get("/remaining/t")).json() == {"remaining": 7}

    serve(_plain_app(), scenario)


def test_lifespan_without_a_database_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)

    async def scenario(c: httpx.AsyncClient) -> None:
        raise AssertionError("the app must not start")

    with pytest.raises(RuntimeError, match="LEDGER_DATABASE_URL"):
        serve(_plain_app(), scenario)


def test_dependency_without_the_lifespan_says_what_to_do() -> None:
    app = FastAPI()

    @app.get("/x")
    async def x(book: LedgerDep) -> None:
        return None

    async def scenario(c: httpx.AsyncClient) -> None:
        await c.get("/x")

    with pytest.raises(RuntimeError, match="lifespan=ledger_lifespan"):
        serve_raising(app, scenario)


def serve_raising(app: FastAPI, scenario: Scenario) -> None:
    """Like :func:`serve`, but the app's exceptions reach the test."""

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            await scenario(c)

    asyncio.run(main())


def test_without_fastapi_the_import_error_says_what_to_install() -> None:
    import subprocess

    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "import ledger  # the core never needs FastAPI\n"
        "import ledger.contrib.fastapi\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'sql-ledger[fastapi]'" in done.stderr


@pytest.mark.parametrize(
    "body",
    [
        {"estimate": 2**63, "actual": 1},
        {"estimate": 5, "actual": 2**63},
        {"estimate": -1, "actual": 1},
        {"estimate": 1.5, "actual": 1},
        {"estimate": "abc", "actual": 1},
    ],
)
def test_bad_money_is_a_422_with_a_message(db_url: str, body: dict[str, Any]) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        assert (await c.post("/tenants/acme", json={"budget": 1_000})).status_code == 201
        answer = await c.post("/jobs/acme", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"]
        assert (await c.post("/tenants/big", json={"budget": 2**63})).status_code == 422
        assert (await c.get("/tenants/acme")).json()["remaining_microcents"] == 1_000

    example(db_url, scenario)
