"""The sync driver: back-ends only the sync face has, and where a Ledger's connections come from.

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

``Executor``, ``drive``, ``PsycopgExecutor`` and the retry policy are
generated (:mod:`ledger._driver`, from the asyncio source
:mod:`ledger._async_driver`, so both faces run operations alike) and
imported here; this module is hand-written, for what only the sync face has:
the SQLAlchemy and DB-API back-ends, :func:`executor_for`, the only place
that tells back-ends apart, and :class:`Database`'s connections (the
ledger's own pool, ledger/_pool.py; SQLAlchemy's; coalescing). Driver errors
are turned into :mod:`ledger.errors` types in the drivers (see
:mod:`ledger._translate`), so nothing above them sees psycopg or SQLAlchemy
exceptions.
"""

from __future__ import annotations

import itertools
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, scoped_session

from . import errors
from ._driver import _ISOLATION, Executor, PsycopgExecutor, Runner, drive
from ._pool import OwnPool
from ._requests import Op, Params
from ._statements import PER_CALL, positional, prepare_for, values
from ._translate import _driver_error, translate

if TYPE_CHECKING:
    from ._coalesce import Coalescer

#: The driver names its importers (the tests, bench/) have always found here.
__all__ = [
    "PER_CALL",
    "Connectable",
    "Database",
    "Executor",
    "ForeignConnection",
    "PsycopgExecutor",
    "drive",
    "executor_for",
    "positional",
    "prepare_for",
    "values",
]


# --------------------------------------------------------------- back-ends


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


# ------------------------------------------------------------ transactions


class Database(Runner):
    """Runs operations for one ledger, on the caller's connection or on one of ours.

    ``run`` (follow-ups, the caller's transaction, retries) is
    :class:`~ledger._driver.Runner`'s, generated from the asyncio source and
    so the same as :class:`~ledger._async_executor.AsyncDatabase`'s; this
    class finds the connections. A call routed to a Citus worker runs on the
    worker's own :class:`Database` (its pool falls back to the coordinator's,
    ledger/citus/routing.py), as the asyncio side runs it on the worker's
    :class:`~ledger._async_executor.AsyncDatabase`.
    """

    def __init__(
        self, engine: Engine, *, coalescer: Coalescer | None = None, pool: OwnPool | None = None
    ) -> None:
        self.engine = engine
        #: Runs autocommit operations in shared rounds (``Ledger(coalesce=True)``).
        self._coalescer = coalescer
        #: The ledger's own connections, when it created the engine (ledger/_pool.py).
        self._pool = pool

    @property
    def pool(self) -> OwnPool | None:
        """The ledger's own connections (None: the engine's SQLAlchemy pool)."""
        return self._pool

    def close(self) -> None:
        if self._coalescer is not None:
            self._coalescer.close()
        if self._pool is not None:
            self._pool.dispose()

    def _join(self, caller: Connectable) -> Executor:
        return executor_for(caller)

    def _own(self, op: Op[Any]) -> Any:
        """Run on a pooled psycopg connection, handed back to the pool as it was found.

        In autocommit each single-statement operation is its own
        transaction: the ledger sends exactly one statement and nothing else.
        Otherwise the steps run between one BEGIN (at the operation's
        isolation level) and one COMMIT, or a ROLLBACK if anything raises.
        """
        if self._coalescer is not None and op.isolation == "AUTOCOMMIT":
            # In a shared round. Inside the runner's retries, which re-raise an
            # autocommit conflict at once: the same as running it before them.
            return self._coalescer.run(op)
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
