"""The asyncio driver: the same operations as :mod:`ledger._executor`, awaited.

Operations are the very generators the sync API runs (``ledger/_operations.py``,
``_batch.py``, ``_verify.py``); only the driver differs. :func:`adrive` feeds
them rows from a psycopg ``AsyncConnection``, and :class:`AsyncDatabase`
scopes transactions and retries, mirroring :class:`ledger._executor.Database`.

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
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import namedtuple_row

from . import _telemetry, errors
from ._executor import positional, prepare_for, values
from ._requests import Fetch, FetchEach, Nested, Op, OpenStream, Params, ReadStream, Request, Steps
from ._translate import translate

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

_RETRY_ATTEMPTS = 5
_TRANSIENT = (errors.SerializationConflict, errors.DeadlockDetected)
_ISOLATION = {
    "READ COMMITTED": IsolationLevel.READ_COMMITTED,
    "REPEATABLE READ": IsolationLevel.REPEATABLE_READ,
    "SERIALIZABLE": IsolationLevel.SERIALIZABLE,
}


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK


async def _rows(cur: Any) -> list[Any]:
    """The current result's rows; [] for a statement that returns none (see _executor._rows)."""
    result = cur.pgresult
    return await cur.fetchall() if result is not None and result.status == _TUPLES_OK else []


class AsyncPsycopgExecutor:
    """Runs requests on a psycopg ``AsyncConnection``: ours, or a caller's driver connection."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], *, owned: bool, retry_statements: bool = False
    ) -> None:
        self._conn = conn
        self.owned = owned
        self._retry = retry_statements
        self._streams: list[psycopg.AsyncServerCursor[Any]] = []

    async def fetch(self, sql: str, params: Params) -> list[Any]:
        attempt = 0
        while True:
            try:
                converted = positional(sql)
                bound = None if converted is None else values(converted[1], params)
                if bound is None:
                    async with self._conn.cursor(row_factory=namedtuple_row) as cur:
                        await cur.execute(sql, params, prepare=prepare_for(sql))
                        return await _rows(cur)
                assert converted is not None
                async with psycopg.AsyncRawCursor(self._conn, row_factory=namedtuple_row) as raw:
                    await raw.execute(converted[0], bound, prepare=prepare_for(sql))
                    return await _rows(raw)
            except psycopg.Error as exc:
                error = translate(exc)
                attempt += 1
                if not (self._retry and isinstance(error, _TRANSIENT)) or (
                    attempt >= _RETRY_ATTEMPTS
                ):
                    raise error from exc
                _telemetry.retry(error, whole=False)
            await _backoff(attempt)

    async def fetch_each(self, sql: str, params: Sequence[Params]) -> list[list[Any]]:
        try:
            async with self._conn.cursor(row_factory=namedtuple_row) as cur:
                await cur.executemany(sql, params, returning=True)
                results = [await _rows(cur)]
                while cur.nextset():
                    results.append(await _rows(cur))
                return results
        except psycopg.Error as exc:
            raise translate(exc) from exc

    async def open_stream(self, sql: str, params: Params) -> int:
        cursor = self._conn.cursor(
            name=f"ledger_stream_{len(self._streams)}", row_factory=namedtuple_row
        )
        try:
            await cursor.execute(sql, params)
        except psycopg.Error as exc:
            raise translate(exc) from exc
        self._streams.append(cursor)
        return len(self._streams) - 1

    async def read_stream(self, stream: int, size: int) -> list[Any]:
        try:
            return await self._streams[stream].fetchmany(size)
        except psycopg.Error as exc:
            raise translate(exc) from exc

    async def close_streams(self) -> None:
        streams, self._streams = self._streams, []
        for cursor in streams:
            if not self._conn.closed:
                await cursor.close()

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        try:
            async with self._conn.transaction():
                yield
        except psycopg.Error as exc:
            raise translate(exc) from exc

    async def handle(self, request: Request) -> Any:
        if type(request) is Fetch:
            return await self.fetch(request.sql, request.params)
        if type(request) is FetchEach:
            return await self.fetch_each(request.sql, request.params) if request.params else []
        if type(request) is OpenStream:
            return await self.open_stream(request.sql, request.params)
        if type(request) is ReadStream:
            return await self.read_stream(request.stream, request.size)
        if type(request) is Nested:
            if self.owned and not request.when_owned:
                return await adrive(self, request.steps())
            async with self.savepoint():
                return await adrive(self, request.steps())
        raise TypeError(f"unknown request {request!r}")


async def adrive(executor: AsyncPsycopgExecutor, steps: Steps[T]) -> T:
    """Run an operation's steps to completion, awaiting each request (see ``drive``)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            reply = await executor.handle(request)
        except Exception as exc:
            error = exc


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))


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


class AsyncDatabase:
    """Runs operations for one async ledger, on the caller's connection or one of ours."""

    def __init__(self, source: AsyncConnectionPool[Any] | AsyncEngine, *, owned: bool) -> None:
        self._source = source
        self._owned = owned
        self._opened = False
        self._lock = asyncio.Lock()
        self._busy = 0  # connections of the pool this database holds right now

    async def run(self, op: Op[T], caller: Any) -> T:
        result = await self._run(op, caller)
        while op.then is not None:
            follow = op.then(result)
            if follow is None:  # the result is final
                break
            op = follow
            result = await self._run(op, caller)
        return result  # type: ignore[no-any-return]

    async def _run(self, op: Op[Any], caller: Any) -> Any:
        if caller is not None:
            # Never retried in the caller's transaction (see Database._run).
            executor = await executor_for(caller)
            try:
                return await adrive(executor, op.steps())
            finally:
                await executor.close_streams()
        attempt = 0
        while True:
            try:
                return await self._own(op)
            except _TRANSIENT as error:
                attempt += 1
                if op.isolation == "AUTOCOMMIT" or attempt >= _RETRY_ATTEMPTS:
                    raise
                _telemetry.retry(error, whole=True)
                await _backoff(attempt)

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
