"""A FastAPI app that holds budget before slow work and settles it after, without blocking.

    pip install -e ".[fastapi,cli]"      # cli: the embedded PostgreSQL when no DATABASE_URL
    DATABASE_URL=postgresql://... uvicorn --app-dir examples/fastapi_app app:app
    python examples/fastapi_app/app.py        # embedded PostgreSQL, port 8000

    curl -X POST localhost:8000/tenants/acme -d '{"budget": 5000000}' -H 'Content-Type: application/json'
    curl -X POST localhost:8000/jobs/acme -d '{"estimate": 300000, "actual": 250000, "work_ms": 200}' \\
        -H 'Content-Type: application/json'

The pattern (see ``run_job``):

1. ``async with book.hold(...)`` commits the reserve at once, in its own
   short transaction; its TTL returns the money if this process dies mid-work;
2. the work (``await``-ed, so the event loop serves other requests meanwhile)
   runs outside any database transaction;
3. ``settle(..., connection=conn)`` joins the transaction that inserts the
   job row: both land, or neither;
4. an exception, or leaving the block without settling, releases the hold.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, Column, Identity, MetaData, String, Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import ledger
from ledger.contrib.fastapi import LedgerDep, ledger_lifespan
from ledger.errors import RefusedError, TenantNotFound

#: How long a hold may outlive a crashed worker before its money comes back.
HOLD_TTL = timedelta(seconds=int(os.environ.get("HOLD_TTL_SECONDS", "30")))

metadata = MetaData()
jobs = Table(
    "jobs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("tenant", String(255), nullable=False),
    Column("cost_microcents", BigInteger, nullable=False),
)


class WorkFailed(RuntimeError):
    """The (simulated) expensive work failed after the budget was held."""


#: An amount: a whole number of microcents that fits the ledger's signed 64 bits.
#: strict: 1.5, "12" and true are refused (422), not coerced.
Microcents = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]


class NewTenant(BaseModel):
    budget: Microcents


class JobRequest(BaseModel):
    estimate: Microcents
    actual: Microcents
    work_ms: int = 0
    fail: bool = False


async def do_the_work(job: JobRequest) -> int:
    """Stands for the slow, costly call (an LLM, a payment); returns what it cost."""
    await asyncio.sleep(job.work_ms / 1000)
    if job.fail:
        raise WorkFailed("the work failed after the budget was held")
    return job.actual


async def setup(url: str, engine: AsyncEngine) -> None:
    """Migrate the ledger and create the app's table (serialised across workers)."""
    await asyncio.to_thread(ledger.migrate, url)
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('fastapi_app setup'))"))
        await conn.run_sync(metadata.create_all)


def create_app(database_url: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = database_url or os.environ.get("DATABASE_URL")
        if url is None:  # no server of your own: use the embedded one
            url = (await asyncio.to_thread(ledger.embedded.start)).url
        engine = create_async_engine(
            url.replace("postgresql://", "postgresql+psycopg://", 1),
            pool_size=8,
            max_overflow=32,
        )
        app.state.engine = engine
        try:
            await setup(url, engine)
            async with ledger_lifespan(app, engine):  # the ledger shares the app's pool
                yield
        finally:
            await engine.dispose()

    app = FastAPI(title="sql-ledger FastAPI example", lifespan=lifespan)

    @app.exception_handler(RefusedError)
    async def refused(request: Request, error: RefusedError) -> JSONResponse:
        # 404 for an unknown tenant; 402 (Payment Required) for every other refusal
        status = 404 if isinstance(error, TenantNotFound) else 402
        return JSONResponse(error.outcome.to_dict(), status_code=status)

    @app.post("/tenants/{tenant}", status_code=201)
    async def create_tenant(tenant: str, body: NewTenant, book: LedgerDep) -> Any:
        created = await book.ensure_tenant(tenant, body.budget)
        return JSONResponse({"created": created}, status_code=201 if created else 200)

    @app.get("/tenants/{tenant}")
    async def show_tenant(tenant: str, book: LedgerDep) -> dict[str, Any]:
        row = await book.tenant(tenant)
        if row is None:
            raise HTTPException(404, "no such tenant")
        return row.to_dict()

    @app.post("/jobs/{tenant}", status_code=201)
    async def run_job(tenant: str, job: JobRequest, book: LedgerDep, request: Request) -> Any:
        engine: AsyncEngine = request.app.state.engine
        # A refusal raises RefusedError (answered 402 above); nothing was held.
        async with book.hold(tenant, job.estimate, ttl=HOLD_TTL) as hold:
            cost = await do_the_work(job)  # no transaction open, no lock held
            async with engine.connect() as conn:
                inserted = await conn.execute(
                    insert(jobs).values(tenant=tenant, cost_microcents=cost).returning(jobs.c.id)
                )
                job_id = inserted.scalar_one()
                settled = await hold.settle(cost, connection=conn)  # same transaction
                if not settled.ok:  # e.g. an overrun the balance cannot cover
                    await conn.rollback()  # no job row; leaving the block releases the hold
                    return JSONResponse(settled.to_dict(), status_code=402)
                await conn.commit()
        return {"job": job_id, "settlement": settled.to_dict()}

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
