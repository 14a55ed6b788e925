# Generated from ledger/_async_driver.py by scripts/unasync.py: do not edit.
# Edit the source, then run `python scripts/unasync.py` (CI checks with --check).
"""The driver core, sync face: carry an operation's requests out on psycopg, retry conflicts.

Generated from ledger/_async_driver.py, whose docstring says what is here and
why: the retry policy, the ``Executor`` interface and ``drive``, the psycopg
executor, and ``Runner``, the policy ``Database`` (ledger/_executor.py)
shares with ``AsyncDatabase``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from time import sleep
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

if TYPE_CHECKING:
    from ._executor import Connectable

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


def _backoff(attempt: int) -> None:
    """Wait a random while, doubling its bound with each attempt (5 ms, 10 ms, ...)."""
    sleep(random.uniform(0, 0.005 * 2**attempt))


# --------------------------------------------------------------- back-ends


class Executor(ABC):
    """Carries out requests on one connection, inside a transaction scoped by the runner."""

    #: True when the ledger owns the transaction (and so may retry it).
    owned: bool = False

    @abstractmethod
    def fetch(self, sql: str, params: Params) -> list[Any]: ...

    @abstractmethod
    def fetch_each(self, sql: str, params: Sequence[Params]) -> list[list[Any]]: ...

    @abstractmethod
    def open_stream(self, sql: str, params: Params) -> int: ...

    @abstractmethod
    def read_stream(self, stream: int, size: int) -> list[Any]: ...

    @abstractmethod
    def close_streams(self) -> None:
        """Release every open stream; called before the transaction ends."""

    @abstractmethod
    def savepoint(self) -> AbstractContextManager[Any]: ...

    def transaction(self) -> AbstractContextManager[Any]:
        """Make a multi-statement operation atomic on a connection the ledger does not own."""
        return nullcontext()

    def handle(self, request: Request) -> Any:
        if type(request) is Fetch:
            return self.fetch(request.sql, request.params)
        if type(request) is FetchEach:
            return self.fetch_each(request.sql, request.params) if request.params else []
        if type(request) is OpenStream:
            return self.open_stream(request.sql, request.params)
        if type(request) is ReadStream:
            return self.read_stream(request.stream, request.size)
        if type(request) is Nested:
            if self.owned and not request.when_owned:
                return drive(self, request.steps())
            with self.savepoint():
                return drive(self, request.steps())
        raise TypeError(f"unknown request {request!r}")


def drive(executor: Executor, steps: Steps[T]) -> T:
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
            reply = executor.handle(request)
        except Exception as exc:
            error = exc


def _rows(cur: Any) -> list[Any]:
    """The current result's rows; [] for a statement that returns none.

    Checks the result status rather than ``cursor.description``, which builds
    a column object per column on every access (measurable on the hot path).
    """
    result = cur.pgresult
    return cur.fetchall() if result is not None and result.status == _TUPLES_OK else []


class PsycopgExecutor(Executor):
    """A psycopg 3 connection: the ledger's own (``owned``), or a caller's driver connection.

    Statements go straight to psycopg cursors; profiling showed SQLAlchemy's
    execution layers costing as much CPU as the round trip on the hot path.
    ``retry_statements`` (autocommit only) retries a statement that lost a
    serialization or deadlock conflict: it was rolled back, and nothing else
    was in its transaction.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        owned: bool = True,
        retry_statements: bool = False,
    ) -> None:
        self._conn = conn
        self.owned = owned
        self._retry = retry_statements
        self._streams: list[psycopg.ServerCursor[Any]] = []

    def fetch(self, sql: str, params: Params) -> list[Any]:
        attempt = 0
        while True:
            try:
                converted = positional(sql)
                bound = None if converted is None else values(converted[1], params)
                if bound is None:
                    with self._conn.cursor(row_factory=namedtuple_row) as cur:
                        cur.execute(sql, params, prepare=prepare_for(sql))
                        return _rows(cur)
                assert converted is not None
                with psycopg.RawCursor(self._conn, row_factory=namedtuple_row) as raw:
                    raw.execute(converted[0], bound, prepare=prepare_for(sql))
                    return _rows(raw)
            except psycopg.Error as exc:
                error = translate(exc)
                attempt += 1
                if not (self._retry and isinstance(error, _TRANSIENT)) or (
                    attempt >= _RETRY_ATTEMPTS
                ):
                    raise error from exc
                _telemetry.retry(error, whole=False)
            _backoff(attempt)

    def fetch_each(self, sql: str, params: Sequence[Params]) -> list[list[Any]]:
        """One Bind/Execute per parameter set before a single Sync: one round trip.

        psycopg's ``executemany(..., returning=True)`` uses libpq's pipeline
        mode, and each execution's rows come back as their own result set.
        """
        try:
            with self._conn.cursor(row_factory=namedtuple_row) as cur:
                cur.executemany(sql, params, returning=True)
                results = [_rows(cur)]
                while cur.nextset():
                    results.append(_rows(cur))
                return results
        except psycopg.Error as exc:
            raise translate(exc) from exc

    def open_stream(self, sql: str, params: Params) -> int:
        cursor = self._conn.cursor(
            name=f"ledger_stream_{len(self._streams)}", row_factory=namedtuple_row
        )
        try:
            cursor.execute(sql, params)
        except psycopg.Error as exc:
            raise translate(exc) from exc
        self._streams.append(cursor)
        return len(self._streams) - 1

    def read_stream(self, stream: int, size: int) -> list[Any]:
        try:
            return self._streams[stream].fetchmany(size)
        except psycopg.Error as exc:
            raise translate(exc) from exc

    def close_streams(self) -> None:
        streams, self._streams = self._streams, []
        for cursor in streams:
            if not self._conn.closed:
                cursor.close()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        try:
            with self._conn.transaction():
                yield
        except psycopg.Error as exc:
            raise translate(exc) from exc


# ------------------------------------------------------------ transactions


class Runner(ABC):
    """How an operation runs, whoever's connection it is on: follow-ups, transactions, retries.

    A subclass says where connections come from: :meth:`_join` wraps a
    caller's connection in an executor, :meth:`_own` runs an operation on one
    of the ledger's own connections (its transaction, its isolation level).
    """

    def run(self, op: Op[T], caller: Connectable | None) -> T:
        """Run ``op`` (and its follow-ups) on ``caller``'s connection, or on one of ours."""
        result = self._run(op, caller)
        while op.then is not None:
            follow = op.then(result)
            if follow is None:  # the result is final
                break
            op = follow
            result = self._run(op, caller)
        return result  # type: ignore[no-any-return]

    def _run(self, op: Op[Any], caller: Connectable | None) -> Any:
        if caller is not None:
            # In the caller's transaction we never retry: a conflict rolled back
            # the caller's earlier work too, and only they can redo it.
            executor = self._join(caller)
            scope = nullcontext() if op.isolation == "AUTOCOMMIT" else executor.transaction()
            with scope:
                try:
                    return drive(executor, op.steps())
                finally:
                    executor.close_streams()
        attempt = 0
        while True:
            try:
                return self._own(op)
            except _TRANSIENT as error:
                # Autocommit statements were retried one by one already.
                attempt += 1
                if op.isolation == "AUTOCOMMIT" or attempt >= _RETRY_ATTEMPTS:
                    raise
                _telemetry.retry(error, whole=True)
                _backoff(attempt)

    @abstractmethod
    def _join(self, caller: Connectable) -> Executor:
        """The executor for the caller's connection, inside the caller's transaction."""

    @abstractmethod
    def _own(self, op: Op[Any]) -> Any:
        """Run ``op`` once on one of the ledger's own connections (retried by :meth:`_run`)."""
