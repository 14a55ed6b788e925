"""The one place where SQL meets the driver.

It decides which connection a call runs on (the caller's, or a short-lived
one of ours), how transactions are scoped, and turns driver exceptions into
:mod:`ledger.errors` types, keeping the original as ``__cause__``. Domain
code above it never sees psycopg or a raw SQLAlchemy error.
"""

from __future__ import annotations

import random
import time
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal, TypeVar

import psycopg
from psycopg.pq import ExecStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine, TextClause
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.orm import Session, scoped_session

from . import errors
from ._engine import EngineLike, as_engine, normalise_url  # noqa: F401  (re-exported while core moves)
from ._translate import _driver_error, translate, translate_errors  # noqa: F401


class ForeignConnection:
    """A connection owned by another framework (Django), used inside its transaction.

    The ledger's statements are compiled for psycopg and executed through the
    framework's own cursors, so they share its connection and its
    ``transaction.atomic()`` blocks; the ledger never commits, rolls back or
    closes it.
    """

    def __init__(
        self,
        cursor: Callable[[], Any],
        atomic: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.cursor = cursor
        #: Opens a transaction (or savepoint) for operations of several
        #: statements, such as restore; single statements need none.
        self.atomic = atomic


Connectable = Connection | Session | scoped_session[Any] | ForeignConnection
Isolation = Literal["AUTOCOMMIT", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]

T = TypeVar("T")

_RETRY_ATTEMPTS = 5


class Database:
    """Runs statements for one ledger, on the caller's connection or on our own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # One statement in autocommit is its own transaction: a ledger operation
        # that owns its transaction costs a single round trip, with no BEGIN/COMMIT.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def connection(
        self, caller: Connectable | None, isolation: Isolation = "AUTOCOMMIT"
    ) -> Iterator[Any]:
        """Yield a connection; ours are committed on success and rolled back on error."""
        try:
            if isinstance(caller, ForeignConnection):
                if isolation != "AUTOCOMMIT" and caller.atomic is not None:
                    with caller.atomic():
                        yield caller
                else:
                    yield caller
            elif caller is not None:
                yield caller_connection(caller)
            elif isolation == "AUTOCOMMIT":
                with self._autocommit.connect() as conn:
                    yield conn
            else:
                with self.engine.connect() as conn:
                    conn = conn.execution_options(isolation_level=isolation)
                    with conn.begin():
                        yield conn
        except sa_exc.DBAPIError as exc:
            raise translate(exc) from exc

    def run(
        self,
        caller: Connectable | None,
        work: Callable[[Any], T],
        isolation: Isolation = "AUTOCOMMIT",
    ) -> T:
        """Run ``work``; when we own the transaction, retry transient conflicts.

        Serialization failures and deadlocks roll the whole transaction back,
        so retrying is safe. In the caller's transaction we never retry: the
        caller's earlier work was rolled back too, and only they can redo it.
        """
        attempt = 0
        while True:
            try:
                if caller is None and isolation == "AUTOCOMMIT":
                    return self._run_autocommit(work)
                with self.connection(caller, isolation) as conn:
                    return work(conn)
            except (errors.SerializationConflict, errors.DeadlockDetected):
                attempt += 1
                if caller is not None or attempt >= _RETRY_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, 0.005 * 2**attempt))

    def _run_autocommit(self, work: Callable[[Any], T]) -> T:
        """The hot path: one pooled psycopg connection in autocommit, no SQLAlchemy layers.

        Each single-statement operation is its own transaction, so the ledger
        sends exactly one statement and nothing else. Profiling showed the
        SQLAlchemy Connection/Result machinery costing as much CPU as the
        round trip itself; the pool is still SQLAlchemy's, so the ledger
        shares it with the application.
        """
        raw = self.engine.raw_connection()
        dbapi: Any = raw.driver_connection
        try:
            dbapi.autocommit = True
            result = work(ForeignConnection(lambda: dbapi.cursor(row_factory=namedtuple_row)))
        except errors.ConnectionLost:
            raw.invalidate()
            raise
        except BaseException:
            _restore(raw, dbapi)
            raise
        _restore(raw, dbapi)
        return result


def _restore(raw: Any, dbapi: Any) -> None:
    """Hand the connection back to the pool as the pool expects it (not in autocommit)."""
    try:
        if not dbapi.closed:
            dbapi.autocommit = False
    except psycopg.Error:
        raw.invalidate()
    finally:
        raw.close()


def caller_connection(caller: Connectable) -> Connection | ForeignConnection:
    if isinstance(caller, (Connection, ForeignConnection)):
        return caller
    if isinstance(caller, (Session, scoped_session)):
        return caller.connection()
    raise errors.InputError(
        f"connection= must be a SQLAlchemy Connection or Session, got {type(caller).__name__}"
    )


_FOREIGN_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]
_COMPILED: dict[int, tuple[TextClause, Any]] = {}


def _compiled(statement: TextClause) -> Any:
    """The statement as psycopg SQL (``%(name)s`` placeholders), compiled once."""
    cached = _COMPILED.get(id(statement))
    if cached is None or cached[0] is not statement:
        cached = (statement, statement.compile(dialect=_FOREIGN_DIALECT))
        _COMPILED[id(statement)] = cached
    return cached[1]


_ROW_TYPES: dict[tuple[str, ...], Any] = {}
_TUPLES_OK = ExecStatus.TUPLES_OK


def _rows(cur: Any) -> list[Any]:
    if getattr(cur, "row_factory", None) is namedtuple_row:
        return cur.fetchall() if cur.pgresult.status == _TUPLES_OK else []
    if cur.description is None:
        return []
    names = tuple(c[0] for c in cur.description)
    row_type = _ROW_TYPES.get(names)
    if row_type is None:
        row_type = _ROW_TYPES[names] = namedtuple("Row", names, rename=True)
    return [row_type(*r) for r in cur.fetchall()]


def _execute_foreign(
    conn: ForeignConnection, statement: TextClause, params: Mapping[str, Any]
) -> list[Any]:
    compiled = _compiled(statement)
    with conn.cursor() as cur:
        cur.execute(str(compiled), compiled.construct_params(dict(params)))
        return _rows(cur)


def execute_pipelined(
    conn: Any, statement: TextClause, param_list: list[Mapping[str, Any]]
) -> list[list[Any]]:
    """Run one statement for many parameter sets in a single network round trip.

    psycopg's ``executemany(..., returning=True)`` uses libpq's pipeline mode:
    every Bind/Execute is sent before the one Sync, and each execution's rows
    come back as their own result set, in order.
    """
    compiled = _compiled(statement)
    sql = str(compiled)
    params = [compiled.construct_params(dict(p)) for p in param_list]
    try:
        if isinstance(conn, ForeignConnection):
            cursor_cm = conn.cursor()
        else:
            cursor_cm = conn.connection.driver_connection.cursor()
        with cursor_cm as cur:
            cur.executemany(sql, params, returning=True)
            results = [_rows(cur)]
            while cur.nextset():
                results.append(_rows(cur))
        return results
    except errors.LedgerError:
        raise
    except Exception as exc:
        if isinstance(_driver_error(exc), psycopg.Error):
            raise translate(exc) from exc
        raise


def execute(conn: Any, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
    """Execute and fetch everything, with driver errors translated."""
    try:
        if isinstance(conn, ForeignConnection):
            return _execute_foreign(conn, statement, params)
        result = conn.execute(statement, params)
        return list(result) if result.returns_rows else []
    except errors.LedgerError:
        raise
    except Exception as exc:
        if isinstance(_driver_error(exc), psycopg.Error):
            raise translate(exc) from exc
        raise
