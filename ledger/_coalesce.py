"""Coalescing: many threads' operations, one transaction and one round trip per round.

``Ledger(url, coalesce=True)`` hands every operation that would run as
single autocommitted statements on the ledger's own connection (reserve,
commit, release, top-up and the reads, without an idempotency key or a
``connection=``) to one background thread. Each round, that thread takes the
next statement of every waiting operation and sends them all through
libpq's pipeline mode between one ``BEGIN`` and one ``COMMIT``: one network
round trip and one WAL flush for the whole round, instead of one of each per
call. Because operations are generators of requests (ledger/_executor.py),
an operation that needs a second statement (a compare-and-swap retry, a
lazy expiry, the "was it expired?" look-up) simply takes part in the next
round.

What each caller gets is unchanged: its own outcome, returned only after
the round that decided it has committed. The statements of a round run one
after another in one session, so each sees the ones before it, exactly as
if the calls had run one by one in that order (concurrent calls have no
order of their own to keep). If any statement of a round fails, the round
is rolled back and each of its statements is run again on its own, in
autocommit, so one caller's error never becomes another's. A round whose
COMMIT gets no answer reports :class:`~ledger.errors.ConnectionLost` to its
callers, as the plain path does for a lost reply.

It pays off when many threads call at once (a threaded web server under
load): fewer round trips, fewer fsyncs, less client work per call. A single
caller gains nothing and waits for the round trip as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, TypeVar, cast

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine

from . import errors
from ._driver import PsycopgExecutor, _rows
from ._requests import Fetch, Op, Steps
from ._statements import positional, values
from ._translate import translate

T = TypeVar("T")
log = logging.getLogger("ledger")

#: The most statements one round sends.
MAX_ROUND = 256


class _Call:
    """One caller's operation, advanced a statement per round by the coalescer."""

    __slots__ = ("_done", "error", "request", "result", "steps")

    def __init__(self, steps: Steps[Any]) -> None:
        self.steps = steps
        self.request: Fetch | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        # A latch: held until the call is finished. A bare lock, not an Event
        # (a Condition and a lock per call): the coalescer thread and 64 callers
        # share one GIL, and every microsecond per call is theirs (bench.coalesce).
        self._done = threading.Lock()
        self._done.acquire()

    def advance(self, reply: Any = None, error: BaseException | None = None) -> bool:
        """Feed the reply in; True when the operation has finished."""
        try:
            request = self.steps.send(reply) if error is None else self.steps.throw(error)
        except StopIteration as stop:
            self.result = stop.value
            return True
        except BaseException as exc:  # the operation's own error (a typed refusal, ...)
            self.error = exc
            return True
        if type(request) is not Fetch:
            self.error = TypeError(f"coalescing runs single statements only, got {request!r}")
            return True
        self.request = request
        return False

    def finish(self) -> None:
        self._done.release()

    def wait(self) -> None:
        self._done.acquire()


class Coalescer:
    """The background thread that runs rounds for one ledger."""

    def __init__(self, engine: Engine, *, workers: int = 2, max_round: int = MAX_ROUND) -> None:
        self._engine = engine
        self._workers = workers
        self._max_round = max_round
        self._incoming: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.rounds = 0
        self.statements = 0

    def run(self, op: Op[T]) -> T:
        call = _Call(op.steps())
        if call.advance():  # finished without touching the database (bad amounts, ...)
            return cast(T, _outcome(call))
        self._ensure_started()
        self._incoming.put(call)
        call.wait()
        return cast(T, _outcome(call))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
        for _ in threads:
            self._incoming.put(None)
        for thread in threads:
            thread.join()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._closed:
                raise errors.InputError("this ledger was closed; make a new Ledger")
            while len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._loop, name=f"ledger-coalescer-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    # ------------------------------------------------------- the thread

    def _loop(self) -> None:
        active: list[_Call] = []
        stopping = False
        while not (stopping and not active):
            if not active:
                first = self._incoming.get()
                if first is None:
                    break
                active.append(first)
            while len(active) < self._max_round:
                try:
                    more = self._incoming.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                active.append(more)
            try:
                active = self._round(active)
            except Exception as exc:  # a bug, not a database error: fail loudly, keep serving
                log.exception("ledger coalescer round failed")
                for call in active:
                    call.error = exc
                    call.finish()
                active = []

    def _round(self, calls: list[_Call]) -> list[_Call]:
        """Run one statement of each call; return the calls that need another round."""
        # Tenant order, where the statement names one, so that two processes'
        # rounds lock tenants in the same order and rarely deadlock.
        calls.sort(key=lambda c: str(c.request.params.get("tenant_id") or "") if c.request else "")
        replies = self._execute([c.request for c in calls if c.request is not None])
        with self._lock:
            self.rounds += 1
            self.statements += len(calls)
        waiting = []
        for call, (rows, error) in zip(calls, replies, strict=True):
            if call.advance(rows, error):
                call.finish()
            else:
                waiting.append(call)
        return waiting

    def _execute(self, requests: list[Fetch]) -> list[tuple[Any, BaseException | None]]:
        try:
            raw = self._engine.raw_connection()
        except Exception as exc:  # no connection at all: every caller hears it
            error = translate(exc) if isinstance(exc, psycopg.Error) else _connection_lost(exc)
            return [(None, error)] * len(requests)
        dbapi: Any = raw.driver_connection
        try:
            dbapi.autocommit = True
            try:
                return [(rows, None) for rows in _pipelined(dbapi, requests)]
            except psycopg.OperationalError as exc:
                if dbapi.closed or dbapi.broken:
                    raw.invalidate()
                    lost = translate(exc)
                    return [(None, lost)] * len(requests)
                # A live connection: the round failed as a whole (a deadlock between
                # two rounds is an OperationalError too; nested holds lock several
                # tenants, so rounds sorted by tenant can meet one). Rerun one by one.
                if dbapi.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    dbapi.execute("ROLLBACK")
                return _one_by_one(dbapi, requests)
            except psycopg.Error:
                # Nothing of the round committed: run each statement on its own.
                if dbapi.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    dbapi.execute("ROLLBACK")
                return _one_by_one(dbapi, requests)
        except BaseException:
            raw.invalidate()
            raise
        finally:
            try:
                if not dbapi.closed:
                    dbapi.autocommit = False
            finally:
                raw.close()


def _pipelined(dbapi: psycopg.Connection[Any], requests: list[Fetch]) -> list[list[Any]]:
    """BEGIN, every statement, COMMIT: sent back to back, answered after one Sync.

    Statements go in ``$n`` form, converted once (:func:`ledger._statements.positional`),
    as on the plain path: psycopg re-parsed the >4 KiB reserve and commit
    statements per execution, which was a third of the coalescing process's
    CPU (py-spy, bench.coalesce).
    """
    cursors: list[psycopg.Cursor[Any]] = []
    with dbapi.pipeline():
        dbapi.execute("BEGIN")
        for request in requests:
            converted = positional(request.sql)
            bound = None if converted is None else values(converted[1], request.params)
            if converted is None or bound is None:
                cursor = dbapi.cursor(row_factory=namedtuple_row)
                cursor.execute(request.sql, request.params)
            else:
                cursor = psycopg.RawCursor(dbapi, row_factory=namedtuple_row)
                cursor.execute(converted[0], bound)
            cursors.append(cursor)
        dbapi.execute("COMMIT")
    return [_rows(c) for c in cursors]


def _one_by_one(
    dbapi: psycopg.Connection[Any], requests: list[Fetch]
) -> list[tuple[Any, BaseException | None]]:
    executor = PsycopgExecutor(dbapi, retry_statements=True)
    replies: list[tuple[Any, BaseException | None]] = []
    for request in requests:
        try:
            replies.append((executor.fetch(request.sql, request.params), None))
        except errors.LedgerError as exc:
            replies.append((None, exc))
    return replies


def _connection_lost(exc: BaseException) -> errors.LedgerError:
    cause = getattr(exc, "orig", None)
    if isinstance(cause, psycopg.Error):
        return translate(cause)
    return errors.ConnectionLost(f"could not get a connection from the pool ({exc})")


def _outcome(call: _Call) -> Any:
    if call.error is not None:
        raise call.error
    return call.result
