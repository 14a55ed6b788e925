"""The asyncio driver: where an :class:`~ledger.AsyncLedger`'s connections come from.

Operations are the very generators the sync API runs (``ledger/_operations.py``,
``_batch.py``, ``_verify.py``); only the driver differs. How they run (the
psycopg executor, :func:`~ledger._async_driver.adrive`, follow-ups and
retries) is written once, in :mod:`ledger._async_driver`, the source the
sync :mod:`ledger._driver` is generated from. This module holds what only the
asyncio face does: :func:`executor_for` joins a caller's connection and
:class:`AsyncDatabase` finds the ledger's own.

Connections come from one of two places:

* the ledger's own pool (``psycopg_pool.AsyncConnectionPool``) when given a
  URL, so asyncio apps need neither SQLAlchemy's asyncio extension nor
  greenlet;
* a SQLAlchemy ``AsyncEngine``'s pool when given one, to share the app's pool.

A caller's ``AsyncConnection`` or ``AsyncSession`` is joined by running on its
driver connection inside the transaction SQLAlchemy has begun.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from . import errors
from ._async_driver import _ISOLATION, AsyncPsycopgExecutor, AsyncRunner, adrive
from ._requests import Op
from ._translate import translate

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

    #: What ``connection=`` takes on the asyncio face.
    AsyncConnectable = AsyncConnection | AsyncSession
else:
    AsyncConnectable = Any


async def executor_for(caller: Any) -> AsyncPsycopgExecutor:
    """Join a caller's SQLAlchemy ``AsyncConnection``/``AsyncSession`` transaction."""
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session
    except ImportError as exc:  # no greenlet: nobody can have passed one of these
        raise errors.InputError(
            f"connection= must be a SQLAlchemy AsyncConnection or AsyncSession, "
            f"got {type(caller).__name__}"
        ) from exc
    if isinstance(caller, (AsyncSession, async_scoped_session)):
        caller = await caller.connection()
    if not isinstance(caller, AsyncConnection):
        raise errors.InputError(
            f"connection= must be a SQLAlchemy AsyncConnection or AsyncSession, "
            f"got {type(caller).__name__}"
        )
    if not caller.in_transaction():
        await caller.begin()  # what autobegin would do; the caller commits it
    raw = await caller.get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    return AsyncPsycopgExecutor(driver, owned=False)


class AsyncDatabase(AsyncRunner):
    """Runs operations for one async ledger, on the caller's connection or one of ours.

    ``run`` (follow-ups, the caller's transaction, retries) is
    :class:`~ledger._async_driver.AsyncRunner`'s, shared with the sync
    :class:`~ledger._executor.Database`; this class finds the connections. A
    call routed to a Citus worker runs on the worker's own
    :class:`AsyncDatabase` (ledger/citus/routing.py), as the sync side runs it
    on the worker's :class:`~ledger._executor.Database`.
    """

    def __init__(self, source: AsyncConnectionPool[Any] | AsyncEngine, *, owned: bool) -> None:
        self._source = source
        self._owned = owned
        self._opened = False
        self._lock = asyncio.Lock()
        self._busy = 0  # connections of the pool this database holds right now

    async def _join(self, caller: AsyncConnectable) -> AsyncPsycopgExecutor:
        return await executor_for(caller)

    async def _own(self, op: Op[Any]) -> Any:
        async with self._connection() as dbapi:
            isolation = dbapi.isolation_level
            try:
                if op.isolation == "AUTOCOMMIT":
                    await dbapi.set_autocommit(True)
                    executor = AsyncPsycopgExecutor(dbapi, owned=True, retry_statements=True)
                    return await adrive(executor, op.steps())
                await dbapi.set_isolation_level(_ISOLATION[op.isolation])
                executor = AsyncPsycopgExecutor(dbapi, owned=True)
                try:
                    async with dbapi.transaction():
                        try:
                            return await adrive(executor, op.steps())
                        finally:
                            await executor.close_streams()
                except psycopg.Error as exc:  # COMMIT or ROLLBACK itself failed
                    raise translate(exc) from exc
            finally:
                if not dbapi.closed:
                    await dbapi.set_autocommit(False)
                    await dbapi.set_isolation_level(isolation)

    def _connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        from psycopg_pool import AsyncConnectionPool

        if isinstance(self._source, AsyncConnectionPool):
            return self._pooled(self._source)
        return self._from_engine(self._source)

    @asynccontextmanager
    async def _pooled(
        self, pool: AsyncConnectionPool[Any]
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if not self._opened:
            async with self._lock:
                if not self._opened:
                    await _translated_open(pool)
                    self._opened = True
        if self._busy == 0 and pool.get_stats().get("pool_available", 0) == 0:
            # No connection idle and none lent out: the pool is still (re)connecting.
            # A down server must answer now, not after the pool's timeout.
            await _probe(pool)
        try:
            async with pool.connection() as conn:
                self._busy += 1
                try:
                    yield conn
                finally:
                    self._busy -= 1
        except errors.LedgerError:
            raise
        except psycopg.Error as exc:
            raise translate(exc) from exc
        except Exception as exc:  # pool timeouts: no connection could be had
            from psycopg_pool import PoolTimeout

            if isinstance(exc, PoolTimeout):
                raise errors.ConnectionLost(
                    f"no PostgreSQL connection could be had from the pool ({exc}); "
                    "check the server, or raise the pool size"
                ) from exc
            raise

    @asynccontextmanager
    async def _from_engine(
        self, engine: AsyncEngine
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        from sqlalchemy import exc as sa_exc

        try:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
                try:
                    yield driver
                except errors.ConnectionLost:
                    await conn.invalidate()
                    raise
        except sa_exc.DBAPIError as exc:
            raise translate(exc) from exc

    async def close(self) -> None:
        """Close the pool if the ledger made it; an engine passed in stays the caller's."""
        if not self._owned:
            return
        from psycopg_pool import AsyncConnectionPool

        if isinstance(self._source, AsyncConnectionPool):
            await self._source.close()
        else:
            await self._source.dispose()


async def _probe(pool: AsyncConnectionPool[Any]) -> None:
    """Connect once, directly, when the pool holds no connection at all.

    The pool's own workers retry a refused connection in the background while
    the caller waits ``timeout`` seconds for one; the sync ``Ledger`` reports a
    down server at once, and so must this. One direct attempt (bounded by the
    pool's timeout) tells "refused" from "busy": refused raises
    :class:`~ledger.errors.ConnectionLost` now; otherwise the pool is waited on.
    """
    conninfo, given = pool.conninfo, pool.kwargs
    if not isinstance(conninfo, str) or not isinstance(given, dict | None):
        return  # computed per connection by the pool's owner: leave it to the pool
    kwargs = dict(given or {})
    kwargs.setdefault("connect_timeout", max(1, int(pool.timeout)))
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
    except psycopg.Error as exc:
        raise errors.ConnectionLost(
            f"the PostgreSQL server refused a connection ({exc}); check that it is up "
            "and that the URL's host, port and credentials are right"
        ) from exc
    await conn.close()


async def _translated_open(pool: AsyncConnectionPool[Any]) -> None:
    try:
        await pool.open(wait=False)
    except psycopg.Error as exc:
        raise translate(exc) from exc
