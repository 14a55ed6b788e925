"""Database back-ends: the one place where the ledger talks to a driver.

Operations (:mod:`ledger._operations`, :mod:`ledger._batch`,
:mod:`ledger._verify`) are written once, as generators that *yield requests*
(:mod:`ledger._requests`: ``Fetch`` a statement, ``FetchEach`` over many
parameter sets, ``OpenStream``/``ReadStream`` for large scans, ``Nested`` for a
step inside a savepoint) and receive the rows back. They never see a
connection. An :class:`Executor` carries the requests out on one connection;
there is one executor per back-end:

* :class:`PsycopgExecutor`: a psycopg 3 connection from the ledger's own pool
  (the hot path: one statement in autocommit is its own transaction);
* :class:`SQLAlchemyExecutor`: the caller's SQLAlchemy ``Connection`` or
  ``Session``, whose transaction the operation joins;
* :class:`CursorExecutor`: a connection owned by another framework (Django),
  reached through its DB-API cursors and its ``atomic()`` blocks.

:func:`executor_for` is the only place that tells back-ends apart.
:class:`Database` decides whose connection an operation runs on, scopes the
transaction, and retries transient conflicts when the ledger owns it. Driver
errors are turned into :mod:`ledger.errors` types here (see
:mod:`ledger._translate`), so nothing above this module sees psycopg or
SQLAlchemy exceptions.
"""

from __future__ import annotations

import itertools
import random
import re
import time
from abc import ABC, abstractmethod
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, scoped_session

from . import _telemetry, errors
from ._pool import OwnPool
from ._translate import _driver_error, translate

if TYPE_CHECKING:
    from ._coalesce import Coalescer

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

_RETRY_ATTEMPTS = 5
_TRANSIENT = (errors.SerializationConflict, errors.DeadlockDetected)
_ISOLATION = {
    "READ COMMITTED": IsolationLevel.READ_COMMITTED,
    "REPEATABLE READ": IsolationLevel.REPEATABLE_READ,
    "SERIALIZABLE": IsolationLevel.SERIALIZABLE,
}


# --------------------------------------------------------------- back-ends


class Executor(ABC):
    """Carries out requests on one connection, inside a transaction scoped by :class:`Database`."""

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


_TUPLE_ROWS: dict[tuple[str, ...], Any] = {}


def _tuples(description: Sequence[Any], rows: list[Any]) -> list[Any]:
    """Rows from a plain DB-API cursor as named tuples (attribute access, like the others)."""
    names = tuple(c[0] for c in description)
    row_type = _TUPLE_ROWS.get(names)
    if row_type is None:
        row_type = _TUPLE_ROWS[names] = namedtuple("Row", names, rename=True)
    return [row_type(*r) for r in rows]


def _ledger_error(exc: Exception) -> errors.LedgerError | None:
    """The ledger error for a driver exception, or None for anything else."""
    if isinstance(exc, errors.LedgerError):
        return exc
    if isinstance(_driver_error(exc), psycopg.Error):
        return translate(exc)
    return None


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK

# psycopg's own placeholder pattern (psycopg/_queries.py): ``%`` and the next
# character, or ``%(name)`` and the next character.
_PLACEHOLDER = re.compile(rb"%(?:\(([^)]+)\).|.)")
_POSITIONAL: dict[str, tuple[bytes, tuple[str, ...]] | None] = {}
_POSITIONAL_MAX = 1024


def positional(sql: str) -> tuple[bytes, tuple[str, ...]] | None:
    """``sql`` with ``$n`` placeholders, and the parameter names in ``$n`` order; cached.

    psycopg converts a ``%(name)s`` statement to PostgreSQL's ``$n`` form on
    every execution, and caches the conversion only for statements of at
    most 4,096 bytes. The reserve and commit statements are longer, so
    psycopg re-parsed each of them per call: about half of the client CPU of
    a reserve->commit cycle (``python -m bench.client_cpu --profile cycle``).
    Converted once here, they run on a raw cursor (``$n`` and a sequence of
    values), which dumps the same values with the same formats (``%(x)s`` is
    ``PyFormat.AUTO``, as on a raw cursor). A repeated name reuses its
    ``$n`` and ``%%`` becomes ``%``, as psycopg does.

    Anything else (positional ``%s``, the ``%b``/``%t`` formats, non-ASCII
    text whose bytes depend on the connection's encoding) answers None: the
    statement then goes through psycopg's own conversion as before.
    """
    try:
        return _POSITIONAL[sql]
    except KeyError:
        pass
    converted = _convert(sql)
    if len(_POSITIONAL) < _POSITIONAL_MAX:  # the ledger's statements: a bounded set
        _POSITIONAL[sql] = converted
    return converted


def _convert(sql: str) -> tuple[bytes, tuple[str, ...]] | None:
    if not sql.isascii():
        return None
    query = sql.encode()
    chunks: list[bytes] = []
    names: dict[str, bytes] = {}
    at = 0
    for match in _PLACEHOLDER.finditer(query):
        chunks.append(query[at : match.start()])
        at = match.end()
        token = match.group(0)
        if token == b"%%":
            chunks.append(b"%")
        elif match.group(1) is not None and token.endswith(b"s"):
            name = match.group(1).decode()
            if name not in names:
                names[name] = b"$%d" % (len(names) + 1)
            chunks.append(names[name])
        else:
            return None
    if not names:  # nothing to bind: psycopg's path costs nothing to convert
        return None
    chunks.append(query[at:])
    return b"".join(chunks), tuple(names)


def values(names: tuple[str, ...], params: Params) -> list[Any] | None:
    """The values of a :func:`positional` statement; None if one is missing (psycopg says which)."""
    try:
        return [params[name] for name in names]
    except KeyError:
        return None


def _rows(cur: Any) -> list[Any]:
    """The current result's rows; [] for a statement that returns none.

    Checks the result status rather than ``cursor.description``, which builds
    a column object per column on every access (measurable on the hot path).
    """
    result = cur.pgresult
    return cur.fetchall() if result is not None and result.status == _TUPLES_OK else []


#: The first line of a statement planned for each call's parameters, never
#: prepared (the batch statements, ledger/sql/batches.sql): psycopg prepares a
#: statement after five runs, and PostgreSQL's generic plan for arrays of
#: unknown size was 2.4x slower for batches (python -m bench.batch_profile).
PER_CALL = "/* planned per call"


def prepare_for(sql: str) -> bool | None:
    """psycopg's ``prepare=``: False for :data:`PER_CALL` statements, else its default."""
    return False if sql.startswith(PER_CALL) else None


class PsycopgExecutor(Executor):
    """A psycopg 3 connection: the ledger's own pooled connections.

    Statements go straight to psycopg cursors; profiling showed SQLAlchemy's
    execution layers costing as much CPU as the round trip on the hot path.
    ``retry_statements`` (autocommit only) retries a statement that lost a
    serialization or deadlock conflict: it was rolled back, and nothing else
    was in its transaction.
    """

    owned = True

    def __init__(self, conn: psycopg.Connection[Any], *, retry_statements: bool = False) -> None:
        self._conn = conn
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

    def savepoint(self) -> AbstractContextManager[Any]:
        return _translated(self._conn.transaction())


class SQLAlchemyExecutor(Executor):
    """The caller's SQLAlchemy ``Connection`` (or a ``Session``'s): join its transaction.

    Statements go through ``exec_driver_sql`` so SQLAlchemy begins the
    transaction (autobegin) and sees everything that runs on its connection;
    the ledger never commits or rolls back the caller's transaction.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._streams: list[Any] = []

    def fetch(self, sql: str, params: Params) -> list[Any]:
        try:
            result = self._conn.exec_driver_sql(sql, dict(params))
            return list(result) if result.returns_rows else []
        except Exception as exc:
            error = _ledger_error(exc)
            if error is None:
                raise
            raise error from exc

    def fetch_each(self, sql: str, params: Sequence[Params]) -> list[list[Any]]:
        # Pipelined on the driver connection, inside the transaction that
        # SQLAlchemy has begun (a batch's lock statement always runs first).
        if not self._conn.in_transaction():
            self._conn.begin()
        dbapi: Any = self._conn.connection.driver_connection
        return PsycopgExecutor(dbapi).fetch_each(sql, params)

    def open_stream(self, sql: str, params: Params) -> int:
        # Per-statement options: Connection.execution_options() would change the
        # caller's connection for good (every later statement a server-side cursor).
        try:
            result = self._conn.exec_driver_sql(
                sql, dict(params), execution_options={"stream_results": True}
            )
        except Exception as exc:
            error = _ledger_error(exc)
            if error is None:
                raise
            raise error from exc
        self._streams.append(result)
        return len(self._streams) - 1

    def read_stream(self, stream: int, size: int) -> list[Any]:
        try:
            return list(self._streams[stream].fetchmany(size))
        except Exception as exc:
            error = _ledger_error(exc)
            if error is None:
                raise
            raise error from exc

    def close_streams(self) -> None:
        streams, self._streams = self._streams, []
        for result in streams:
            result.close()

    def savepoint(self) -> AbstractContextManager[Any]:
        return _translated(self._conn.begin_nested())


class ForeignConnection:
    """A connection owned by another framework (Django), used inside its transaction.

    The ledger's statements run through the framework's own cursors, so they
    share its connection and its ``transaction.atomic()`` blocks; the ledger
    never commits, rolls back or closes it.
    """

    def __init__(
        self,
        cursor: Callable[[], Any],
        atomic: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.cursor = cursor
        #: Opens a transaction (or a savepoint inside one) for operations of
        #: several statements; single statements need none.
        self.atomic = atomic


class CursorExecutor(Executor):
    """A framework-owned connection (:class:`ForeignConnection`), through DB-API cursors.

    Framework cursors offer no pipelining and no server-side cursors we can
    rely on, so :class:`FetchEach` runs statement by statement and streams are
    read whole (use the ledger's own engine to replay very large journals).
    """

    def __init__(self, conn: ForeignConnection) -> None:
        self._conn = conn
        self._streams: list[Iterator[Any]] = []
        self._savepoints = itertools.count()

    def fetch(self, sql: str, params: Params) -> list[Any]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, dict(params))
                if cur.description is None:
                    return []
                return _tuples(cur.description, cur.fetchall())
        except Exception as exc:
            error = _ledger_error(exc)
            if error is None:
                raise
            raise error from exc

    def fetch_each(self, sql: str, params: Sequence[Params]) -> list[list[Any]]:
        return [self.fetch(sql, p) for p in params]

    def open_stream(self, sql: str, params: Params) -> int:
        self._streams.append(iter(self.fetch(sql, params)))
        return len(self._streams) - 1

    def read_stream(self, stream: int, size: int) -> list[Any]:
        return list(itertools.islice(self._streams[stream], size))

    def close_streams(self) -> None:
        self._streams = []

    def savepoint(self) -> AbstractContextManager[Any]:
        if self._conn.atomic is not None:
            return self._conn.atomic()
        return self._sql_savepoint()

    @contextmanager
    def _sql_savepoint(self) -> Iterator[None]:
        name = f"ledger_sp_{next(self._savepoints)}"
        self.fetch(f"SAVEPOINT {name}", {})
        try:
            yield
        except BaseException:
            self.fetch(f"ROLLBACK TO SAVEPOINT {name}", {})
            raise
        self.fetch(f"RELEASE SAVEPOINT {name}", {})

    def transaction(self) -> AbstractContextManager[Any]:
        return self._conn.atomic() if self._conn.atomic is not None else nullcontext()


Connectable = Connection | Session | scoped_session[Any] | ForeignConnection


def executor_for(caller: Connectable) -> Executor:
    """The executor for a caller's connection: the one place back-ends are told apart."""
    if isinstance(caller, ForeignConnection):
        return CursorExecutor(caller)
    if isinstance(caller, Connection):
        return SQLAlchemyExecutor(caller)
    if isinstance(caller, (Session, scoped_session)):
        return SQLAlchemyExecutor(caller.connection())
    raise errors.InputError(
        f"connection= must be a SQLAlchemy Connection or Session, got {type(caller).__name__}"
    )


@contextmanager
def _translated(cm: AbstractContextManager[Any]) -> Iterator[None]:
    """A driver context manager (transaction, savepoint) whose errors become ledger errors."""
    try:
        with cm:
            yield
    except Exception as exc:
        error = _ledger_error(exc)
        if error is None or error is exc:
            raise
        raise error from exc


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.005 * 2**attempt))


# ------------------------------------------------------------ transactions


class Database:
    """Runs operations for one ledger, on the caller's connection or on one of ours."""

    def __init__(
        self, engine: Engine, *, coalescer: Coalescer | None = None, pool: OwnPool | None = None
    ) -> None:
        self.engine = engine
        #: Runs autocommit operations in shared rounds (``Ledger(coalesce=True)``).
        self._coalescer = coalescer
        #: The ledger's own connections, when it created the engine (ledger/_pool.py).
        self._pool = pool

    def close(self) -> None:
        if self._coalescer is not None:
            self._coalescer.close()
        if self._pool is not None:
            self._pool.dispose()

    def run(self, op: Op[T], caller: Connectable | None, pool: OwnPool | None = None) -> T:
        """Run ``op`` (and its follow-ups) on ``caller``'s connection, or on one of ours.

        ``pool``: the connections to use instead of the ledger's own (a
        tenant's Citus worker, ledger/_direct.py), follow-ups included.
        """
        result = self._run(op, caller, pool)
        while op.then is not None:
            follow = op.then(result)
            if follow is None:
                break
            op = follow
            result = self._run(op, caller, pool)
        return result  # type: ignore[no-any-return]

    def _run(self, op: Op[Any], caller: Connectable | None, pool: OwnPool | None = None) -> Any:
        if caller is not None:
            # In the caller's transaction we never retry: a conflict rolled back
            # the caller's earlier work too, and only they can redo it.
            executor = executor_for(caller)
            scope = nullcontext() if op.isolation == "AUTOCOMMIT" else executor.transaction()
            with scope:
                try:
                    return drive(executor, op.steps())
                finally:
                    executor.close_streams()
        if pool is None and self._coalescer is not None and op.isolation == "AUTOCOMMIT":
            return self._coalescer.run(op)
        attempt = 0
        while True:
            try:
                return self._own_pooled(op, pool) if pool is not None else self._own(op)
            except _TRANSIENT as error:
                # Autocommit statements were retried one by one already.
                attempt += 1
                if op.isolation == "AUTOCOMMIT" or attempt >= _RETRY_ATTEMPTS:
                    raise
                _telemetry.retry(error, whole=True)
                _backoff(attempt)

    def _own(self, op: Op[Any]) -> Any:
        """Run on a pooled psycopg connection, handed back to the pool as it was found.

        In autocommit each single-statement operation is its own
        transaction: the ledger sends exactly one statement and nothing else.
        Otherwise the steps run between one BEGIN (at the operation's
        isolation level) and one COMMIT, or a ROLLBACK if anything raises.
        """
        if self._pool is not None:
            return self._own_pooled(op, self._pool)
        raw = self._checkout()
        dbapi: Any = raw.driver_connection
        isolation = _UNCHANGED
        try:
            if op.isolation == "AUTOCOMMIT":
                dbapi.autocommit = True
                result = drive(PsycopgExecutor(dbapi, retry_statements=True), op.steps())
            else:
                isolation = dbapi.isolation_level
                dbapi.isolation_level = _ISOLATION[op.isolation]
                executor = PsycopgExecutor(dbapi)
                with _translated(dbapi.transaction()):
                    try:
                        result = drive(executor, op.steps())
                    finally:
                        executor.close_streams()
        except errors.ConnectionLost:
            raw.invalidate()
            raise
        except BaseException:
            _hand_back(raw, dbapi, isolation)
            raise
        _hand_back(raw, dbapi, isolation)
        return result

    def _own_pooled(self, op: Op[Any], pool: OwnPool) -> Any:
        """:meth:`_own` on the ledger's own pool, whose connections stay in autocommit.

        A transaction is an explicit BEGIN (psycopg's ``transaction()`` sends
        it with the connection's isolation level) and COMMIT: the same round
        trips as on a borrowed connection, without switching autocommit off
        and on again around every operation.
        """
        try:
            conn = pool.get()
        except psycopg.Error as exc:
            if pool.fallback is not None:  # nothing was sent: the other way is safe
                pool.unreachable(exc)
                return self._own_pooled(op, pool.fallback)
            raise translate(exc) from exc
        try:
            if op.isolation == "AUTOCOMMIT":
                result = drive(PsycopgExecutor(conn, retry_statements=True), op.steps())
            else:
                wanted = _ISOLATION[op.isolation]
                if conn.isolation_level != wanted:
                    conn.isolation_level = wanted
                executor = PsycopgExecutor(conn)
                with _translated(conn.transaction()):
                    try:
                        result = drive(executor, op.steps())
                    finally:
                        executor.close_streams()
        except errors.ConnectionLost:
            pool.put(conn, lost=True)
            raise
        except BaseException:
            pool.put(conn)  # closed rather than kept if it is not idle and healthy
            raise
        pool.put(conn)
        return result

    def _checkout(self) -> Any:
        """A pooled connection; failing to connect is a ledger error, not a driver one."""
        try:
            return self.engine.raw_connection()
        except Exception as exc:
            error = _ledger_error(exc)
            if error is None:
                raise
            raise error from exc


_UNCHANGED = object()


def _hand_back(raw: Any, dbapi: Any, isolation: Any) -> None:
    """Return the connection to the pool as the pool expects it (not in autocommit)."""
    try:
        if not dbapi.closed:
            dbapi.autocommit = False
            if isolation is not _UNCHANGED:
                dbapi.isolation_level = isolation
    except psycopg.Error:
        raw.invalidate()
    finally:
        raw.close()
