"""FastAPI (and Starlette) integration: one :class:`~ledger.AsyncLedger` per app.

    from fastapi import FastAPI
    from ledger.contrib.fastapi import LedgerDep, ledger_lifespan

    app = FastAPI(lifespan=ledger_lifespan)     # LEDGER_DATABASE_URL, or app.state

    @app.post("/work/{tenant}")
    async def work(tenant: str, book: LedgerDep) -> dict[str, int]:
        async with book.hold(tenant, 250_000, ttl=30) as h:   # committed at once
            result = await call_the_model()                   # no transaction open
            outcome = await h.settle(result.cost)             # or connection=your_conn
        return {"remaining": outcome.remaining_microcents}

The lifespan opens the ledger when the app starts and closes its pool when
the app stops, so no request ever pays for connecting and no connection
outlives the process. The database comes, in this order, from the
``database`` argument, ``app.state.ledger_database_url``, or the
``LEDGER_DATABASE_URL`` environment variable; the schema from ``schema``,
``app.state.ledger_schema``, ``LEDGER_SCHEMA``, or ``"ledger"``.

An app with a lifespan of its own nests this one::

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with ledger_lifespan(app, engine):    # share the app's AsyncEngine
            yield

The ledger does not migrate its schema at startup: run ``ledger migrate``
(or :func:`ledger.migrate`) as a deploy step, once, not in every worker.

This module imports FastAPI; the rest of the package never does, so
``import ledger`` works without it. Install it with ``sql-ledger[fastapi]``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

try:
    from fastapi import Depends, FastAPI, Request
except ImportError as exc:  # pragma: no cover - exercised only without FastAPI
    raise ImportError(
        "ledger.contrib.fastapi needs FastAPI: pip install 'sql-ledger[fastapi]'"
    ) from exc
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import AsyncLedger

#: Where the lifespan keeps the ledger: ``app.state.sql_ledger``.
STATE_KEY = "sql_ledger"
URL_ENV = "LEDGER_DATABASE_URL"
SCHEMA_ENV = "LEDGER_SCHEMA"


def _database(app: FastAPI, database: str | URL | AsyncEngine | None) -> str | URL | AsyncEngine:
    if database is not None:
        return database
    configured: str | None = getattr(app.state, "ledger_database_url", None)
    found = configured or os.environ.get(URL_ENV)
    if not found:
        raise RuntimeError(
            "ledger_lifespan needs a database: pass ledger_lifespan(app, url_or_engine), "
            f"set app.state.ledger_database_url, or set {URL_ENV} in the environment"
        )
    return found


@asynccontextmanager
async def ledger_lifespan(
    app: FastAPI,
    database: str | URL | AsyncEngine | None = None,
    *,
    schema: str | None = None,
) -> AsyncIterator[None]:
    """Open an :class:`AsyncLedger` for the app's lifetime and close it at shutdown.

    Usable directly as ``FastAPI(lifespan=ledger_lifespan)`` or nested in the
    app's own lifespan. A passed ``AsyncEngine`` is shared, not disposed (its
    owner disposes it); a URL gets a pool of the ledger's own, closed here.
    """
    chosen_schema = (
        schema
        or getattr(app.state, "ledger_schema", None)
        or os.environ.get(SCHEMA_ENV)
        or "ledger"
    )
    book = AsyncLedger(_database(app, database), schema=chosen_schema)
    setattr(app.state, STATE_KEY, book)
    try:
        yield
    finally:
        delattr(app.state, STATE_KEY)
        await book.close()


def get_ledger(request: Request) -> AsyncLedger:
    """FastAPI dependency: the app's :class:`AsyncLedger` (see :data:`LedgerDep`)."""
    book: AsyncLedger | None = getattr(request.app.state, STATE_KEY, None)
    if book is None:
        raise RuntimeError(
            "no ledger on this app: create it with FastAPI(lifespan=ledger_lifespan) "
            "or enter ledger_lifespan(app) in the app's own lifespan"
        )
    return book


#: Typed dependency for endpoints: ``async def view(book: LedgerDep) -> ...``.
LedgerDep = Annotated[AsyncLedger, Depends(get_ledger)]

__all__ = ["STATE_KEY", "LedgerDep", "get_ledger", "ledger_lifespan"]
