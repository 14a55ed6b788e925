# unasync: async-only
"""The driver core, asyncio face: carry an operation's requests out on psycopg, retry conflicts.

One source for both faces: ``scripts/unasync.py`` generates
:mod:`ledger._driver` (the sync twin) from this file (``await`` dropped, the
``Async`` names renamed; CI fails when it is stale). It holds what the two
drivers do the same way, so that it is written once:

* the retry policy: which errors are transient, how often an operation is
  tried (:data:`_RETRY_ATTEMPTS`), the back-off between tries;
* :class:`AsyncExecutor`, the interface every back-end implements, with the
  dispatch of requests (``handle``) and :func:`adrive`, the loop that feeds an
  operation's steps their rows;
* :class:`AsyncPsycopgExecutor`, the psycopg connection executor: the hot path
  (statements in ``$n`` form, see :mod:`ledger._statements`), pipelined
  ``FetchEach``, server-side streams, savepoints;
* :class:`AsyncRunner`, how an operation runs whoever's connection it is on:
  its follow-ups, the caller's transaction (never retried), retries on the
  ledger's own connections.

What differs stays hand-written, each face in its own module: where
connections come from (:class:`ledger._async_executor.AsyncDatabase`: a
``psycopg_pool`` or an ``AsyncEngine``; :class:`ledger._executor.Database`:
the ledger's own pool, SQLAlchemy's, coalescing) and the back-ends only the
sync face has (SQLAlchemy ``Connection``/``Session``, a framework's DB-API
cursors). Those modules implement :meth:`AsyncRunner._join` and
:meth:`AsyncRunner._own`; the generated file cannot import them (they import
it), so the runner asks its subclass rather than calling them.

Nothing here tells back-ends apart or knows a pool; the only difference
between the faces in this file is the ``sleep`` of the back-off (marked
``# unasync: async-only`` / ``sync-only``).
"""
# unasync: end
# unasync: sync-only
# """The driver core, sync face: carry an operation's requests out on psycopg, retry conflicts.
#
# Generated from ledger/_async_driver.py, whose docstring says what is here and
# why: the retry policy, the ``Executor`` interface and ``drive``, the psycopg
# executor, and ``Runner``, the policy ``Database`` (ledger/_executor.py)
# shares with ``AsyncDatabase``.
# """
# unasync: end

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import namedtuple_row

from . import _telemetry, errors
from ._requests import (
    Fetch,
    FetchEach,
    Nested,
    Op,
    OpenStream,
    Params,
    ReadStream,
    Request,
    Steps,
    T,
)
from ._statements import positional, prepare_for, values
from ._translate import translate

# isort: off
# unasync: async-only
from asyncio import sleep

# unasync: end
# unasync: sync-only
# from time import sleep
# unasync: end
# isort: on

if TYPE_CHECKING:
    from ._async_executor import AsyncConnectable

#: How many times an operation (or, in autocommit, a statement) is tried.
_RETRY_ATTEMPTS = 5
#: The conflicts that trying again can resolve: PostgreSQL rolled the work back whole.
_TRANSIENT = (errors.SerializationConflict, errors.DeadlockDetected)
_ISOLATION = {
    "READ COMMITTED": IsolationLevel.READ_COMMITTED,
    "REPEATABLE READ": IsolationLevel.REPEATABLE_READ,
    "SERIALIZABLE": IsolationLevel.SERIALIZABLE,
}
_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK


async def _backoff(attempt: int) -> None:
    """Wait a random while, doubling its bound with each attempt (5 ms, 10 ms, ...)."""
    await sleep(random.uniform(0, 0.005 * 2**attempt))


# --------------------------------------------------------------- back-ends


class AsyncExecutor(ABC):
    """Carries out requests on one connection, inside a transaction scoped by the runner."""

    #: True when the ledger owns the transaction (and so may retry it).
    owned: bool = False

    @abstractmethod
    async def fetch(self, sql: str, params: Params) -> list[Any]: ...

    @abstractmethod
    async def fetch_each(self, sql: str, params: Sequence[Params]) -> list[list[Any]]: ...

    @abstractmethod
    async def open_stream(self, sql: str, params: Params) -> int: ...

    @abstractmethod
    async def read_stream(self, stream: int, size: int) -> list[Any]: ...

    @abstractmethod
    async def close_streams(self) -> None:
        """Release every open stream; called before the transaction ends."""

    @abstractmethod
    def savepoint(self) -> AbstractAsyncContextManager[Any]: ...

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """Make a multi-statement operation atomic on a connection the ledger does not own."""
        return nullcontext()

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


async def adrive(executor: AsyncExecutor, steps: Steps[T]) -> T:
    """Run an operation's steps to completion on ``executor``.

    Errors raised while carrying out a request are thrown back into the
    steps, so an operation can react to them (a batch falls back to
    item-by-item application when its savepoint was rolled back).
    """
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


async def _rows(cur: Any) -> list[Any]:
    """The current result's rows; [] for a statement that returns none.

    Checks the result status rather than ``cursor.description``, which builds
    a column object per column on every access (measurable on the hot path).
    """
    result = cur.pgresult
    return await cur.fetchall() if result is not None and result.status == _TUPLES_OK else []


class AsyncPsycopgExecutor(AsyncExecutor):
    """A psycopg 3 connection: the ledger's own (``owned``), or a caller's driver connection.

    Statements go straight to psycopg cursors; profiling showed SQLAlchemy's
    execution layers costing as much CPU as the round trip on the hot path.
    ``retry_statements`` (autocommit only) retries a statement that lost a
    serialization or deadlock conflict: it was rolled back, and nothing else
    was in its transaction.
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        owned: bool = True,
        retry_statements: bool = False,
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
        """One Bind/Execute per parameter set before a single Sync: one round trip.

        psycopg's ``executemany(..., returning=True)`` uses libpq's pipeline
        mode, and each execution's rows come back as their own result set.
        """
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


# ------------------------------------------------------------ transactions


class AsyncRunner(ABC):
    """How an operation runs, whoever's connection it is on: follow-ups, transactions, retries.

    A subclass says where connections come from: :meth:`_join` wraps a
    caller's connection in an executor, :meth:`_own` runs an operation on one
    of the ledger's own connections (its transaction, its isolation level).
    """

    async def run(self, op: Op[T], caller: AsyncConnectable | None) -> T:
        """Run ``op`` (and its follow-ups) on ``caller``'s connection, or on one of ours."""
        result = await self._run(op, caller)
        while op.then is not None:
            follow = op.then(result)
            if follow is None:  # the result is final
                break
            op = follow
            result = await self._run(op, caller)
        return result  # type: ignore[no-any-return]

    async def _run(self, op: Op[Any], caller: AsyncConnectable | None) -> Any:
        if caller is not None:
            # In the caller's transaction we never retry: a conflict rolled back
            # the caller's earlier work too, and only they can redo it.
            executor = await self._join(caller)
            scope = nullcontext() if op.isolation == "AUTOCOMMIT" else executor.transaction()
            async with scope:
                try:
                    return await adrive(executor, op.steps())
                finally:
                    await executor.close_streams()
        attempt = 0
        while True:
            try:
                return await self._own(op)
            except _TRANSIENT as error:
                # Autocommit statements were retried one by one already.
                attempt += 1
                if op.isolation == "AUTOCOMMIT" or attempt >= _RETRY_ATTEMPTS:
                    raise
                _telemetry.retry(error, whole=True)
                await _backoff(attempt)

    @abstractmethod
    async def _join(self, caller: AsyncConnectable) -> AsyncExecutor:
        """The executor for the caller's connection, inside the caller's transaction."""

    @abstractmethod
    async def _own(self, op: Op[Any]) -> Any:
        """Run ``op`` once on one of the ledger's own connections (retried by :meth:`_run`)."""
