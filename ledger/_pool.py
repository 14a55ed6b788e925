"""The ledger's own psycopg connections, for a :class:`~ledger.Ledger` made from a URL.

A ledger built from a URL owns its engine, so nobody else checks its
connections out or expects them back in a given state. Borrowing one through
SQLAlchemy's pool for every operation (the pool's queue and events, the
reset-on-return rollback, switching autocommit on and back off) was about 29%
of the client CPU of a single reserve or commit (``python -m bench.client_cpu
--profile cycle``). :class:`OwnPool` keeps those connections itself: a list
of idle connections under a lock, each left in autocommit, handed out and
back with a few attribute checks.

It keeps SQLAlchemy's semantics for an engine made from a URL (QueuePool:
five kept, ten more while busy, 30 seconds to wait for one), connects in
the calling thread so a server that is down is reported at once, opens each
connection with the engine's own dialect (same connect arguments and setup),
and turns psycopg's automatic prepares off behind a transaction pooler (the
check :func:`ledger._engine.behind_pooler` makes for engines). A connection
that comes back broken, closed or inside a transaction is closed, not kept;
a lost connection also drops the idle ones, as SQLAlchemy invalidates its
pool on a disconnect.

Why not ``psycopg_pool.ConnectionPool``, which the async side uses? Measured
(issue 23) with ``python -m bench.pool_cpu --ops 2000 --rounds 5``: the same
ledger, cycles and server in one run, only the pool swapped, configured
alike (same connect arguments and setup, 5 kept, 15 at most, autocommit).
A reserve→commit cycle cost 206 µs of client CPU on OwnPool and 292 µs on
psycopg_pool (ratio 1.42; 1.36 and 1.77 in two other runs); keyed cycles, four
times the work, came out even (ratio 0.97). Under cProfile the pool calls alone
were 24 µs per operation here against 46 µs there (``getconn`` and
``putconn`` go through their check loop, ready queue, reset and return
paths, about 14 more calls per operation). The rule was to adopt it within
5% of the client CPU, so this pool stays; measure again if psycopg_pool's
checkout path gets cheaper.

Given an Engine, a Connection or a Session, the ledger keeps using
SQLAlchemy's pool (the application may share it): :class:`OwnPool` is only
ever made for an engine the ledger created.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from typing import Any

import psycopg
from sqlalchemy import Engine

from . import errors
from ._engine import behind_pooler

_IDLE = psycopg.pq.TransactionStatus.IDLE

#: Every pool alive, so that their idle connections are closed at exit rather
#: than finalized one by one (psycopg warns about connections left open).
_POOLS: weakref.WeakSet[OwnPool] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for pool in list(_POOLS):
        pool.dispose()


class OwnPool:
    """Connections for one ledger-owned engine: ``size`` kept, up to ``size + overflow``."""

    #: Where an operation runs instead when this pool cannot connect (nothing was
    #: sent yet): a Citus worker's pool falls back to the coordinator's.
    fallback: OwnPool | None = None

    def unreachable(self, error: BaseException) -> None:
        """Told when connecting failed and the operation went to :attr:`fallback`."""

    def __init__(
        self, engine: Engine, *, size: int = 5, overflow: int = 10, timeout: float = 30.0
    ) -> None:
        self._dialect = engine.dialect
        self._args = engine.dialect.create_connect_args(engine.url)
        self._setup = engine.dialect.on_connect()
        self._keep = size
        self._max = size + overflow
        self._timeout = timeout
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[psycopg.Connection[Any]] = []
        self._mine: set[int] = set()  # ids of connections opened since the last dispose
        self._open = 0  # connections counted against the maximum (idle and checked out)
        self._waiting = 0  # threads waiting for a connection (notify only if any)
        self._pid = os.getpid()
        self._inherited: list[psycopg.Connection[Any]] = []  # a parent's, after a fork
        _POOLS.add(self)

    def get(self) -> psycopg.Connection[Any]:
        """An idle connection (the most recently used), or a new one if below the maximum."""
        if os.getpid() != self._pid:
            self._forked()
        with self._cond:
            if self._idle:
                return self._idle.pop()
            deadline = None
            while self._open >= self._max:
                if self._idle:
                    return self._idle.pop()
                deadline = deadline or time.monotonic() + self._timeout
                left = deadline - time.monotonic()
                self._waiting += 1
                try:
                    woken = left > 0 and self._cond.wait(left)
                finally:
                    self._waiting -= 1
                if not woken:
                    if self._idle:
                        return self._idle.pop()
                    raise errors.ConnectionLost(
                        f"no PostgreSQL connection could be had within {self._timeout:g} s: "
                        f"all {self._max} of the ledger's connections are in use; pass an "
                        "Engine with a bigger pool (create_engine(url, pool_size=...))"
                    )
            self._open += 1
        try:
            conn = self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                if self._waiting:
                    self._cond.notify()
            raise
        with self._cond:
            self._mine.add(id(conn))
        return conn

    def _connect(self) -> psycopg.Connection[Any]:
        cargs, cparams = self._args
        conn: psycopg.Connection[Any] = self._dialect.connect(*cargs, **cparams)  # type: ignore[assignment]
        try:
            if self._setup is not None:
                self._setup(conn)
            conn.autocommit = True
            if behind_pooler(conn):
                conn.prepare_threshold = None
        except BaseException:
            conn.close()
            raise
        return conn

    def put(self, conn: psycopg.Connection[Any], *, lost: bool = False) -> None:
        """Take a connection back: kept if healthy, idle and in autocommit, else closed.

        ``lost``: the connection failed; the idle ones may have failed with it
        (a server restart), so they are closed too.
        """
        healthy = (
            not lost
            and not conn.closed
            and conn.autocommit
            and conn.pgconn.transaction_status == _IDLE
        )
        drop: list[psycopg.Connection[Any]] = []
        with self._cond:
            if healthy and id(conn) in self._mine and len(self._idle) < self._keep:
                self._idle.append(conn)
                if self._waiting:
                    self._cond.notify()
                return
            if os.getpid() != self._pid:  # the parent's connection, in a child
                self._inherited.append(conn)
                return
            self._mine.discard(id(conn))
            self._open -= 1
            if lost:
                drop, self._idle = self._idle, []
                self._open -= len(drop)
                self._mine.difference_update(id(c) for c in drop)
            self._cond.notify_all()
        for c in [conn, *drop]:
            _close(c)

    def _forked(self) -> None:
        """In a child process: stop using the parent's connections, without closing them.

        Two processes on one socket would read each other's replies; closing
        would end the parent's sessions. The child opens its own (a server
        that forks workers after creating the ledger) and keeps references to
        the parent's, so that they are not finalized while it runs.
        """
        with self._cond:
            if os.getpid() != self._pid:
                self._pid = os.getpid()
                self._inherited.extend(self._idle)
                self._idle, self._mine, self._open, self._waiting = [], set(), 0, 0

    def dispose(self) -> None:
        """Close the idle connections; those checked out are closed when they come back."""
        if os.getpid() != self._pid:
            self._forked()
            return
        with self._cond:
            drop, self._idle = self._idle, []
            self._open -= len(drop)
            self._mine.clear()
            self._cond.notify_all()
        for c in drop:
            _close(c)


def _close(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection: nothing more to do
        conn.close()
