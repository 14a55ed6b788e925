"""The ledger's own connections (ledger/_pool.py), used when it is made from a URL.

A Ledger built from a URL keeps its psycopg connections itself; one built on
a caller's Engine borrows from that engine's SQLAlchemy pool. Real server
throughout: connections are killed with pg_terminate_backend, not mocked.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import create_engine, event

import ledger
from ledger import errors
from ledger._pool import OwnPool


def _checkouts(engine: object) -> list[int]:
    seen: list[int] = []
    event.listen(engine, "checkout", lambda *_: seen.append(1))
    return seen


def test_a_ledger_from_a_url_does_not_borrow_from_sqlalchemys_pool(db_url: str) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 1_000)  # the first call looks up Citus routing on the engine
        seen = _checkouts(book.engine)
        hold = book.try_reserve("a", 100)
        assert hold.reservation_id is not None
        assert book.commit(hold.reservation_id, 60).ok
        assert book.try_reserve_many([("a", 1), ("a", 2)])[1].ok  # a transaction
        assert seen == []
        assert book.verify_journal().ok


def test_a_ledger_on_a_callers_engine_still_uses_that_engines_pool(db_url: str) -> None:
    engine = create_engine(db_url)
    seen = _checkouts(engine)
    book = ledger.Ledger(engine)
    book.ensure_tenant("a", 1_000)
    assert book.try_reserve("a", 100).ok
    assert book._db._pool is None
    assert len(seen) >= 2
    book.close()
    engine.dispose()


def _pids(raw: psycopg.Connection, db_url: str) -> list[int]:
    database = db_url.rsplit("/", 1)[1].split("?")[0]
    rows = raw.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return [r[0] for r in rows]


def test_a_killed_connection_is_reported_then_replaced(
    db_url: str, raw: psycopg.Connection
) -> None:
    raw.autocommit = True
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 1_000)
        for pid in _pids(raw, db_url):
            raw.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)
        with pytest.raises(errors.ConnectionLost):
            book.try_reserve("a", 100)
        # The dead connection was not kept: the next call connects afresh.
        assert book.try_reserve("a", 100).ok
        assert book.verify_conservation().is_balanced


def test_connections_are_reused_and_come_back_idle_in_autocommit(db_url: str) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 1_000)
        pool = book._db._pool
        assert pool is not None
        first = pool.get()
        pool.put(first)
        book.try_reserve_many([("a", 1)])  # a transaction at READ COMMITTED
        book.try_reserve("a", 1)  # autocommit again on the same connection
        again = pool.get()
        assert again is first
        assert again.autocommit
        assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        pool.put(again)


def test_a_connection_handed_back_inside_a_transaction_is_closed(db_url: str) -> None:
    engine = create_engine(db_url)
    pool = OwnPool(engine)
    conn = pool.get()
    conn.execute("BEGIN")
    pool.put(conn)
    assert conn.closed
    fresh = pool.get()
    assert fresh is not conn and fresh.autocommit
    pool.put(fresh)
    pool.dispose()
    assert fresh.closed
    engine.dispose()


def test_waiting_for_a_connection_times_out_with_a_typed_error(db_url: str) -> None:
    engine = create_engine(db_url)
    pool = OwnPool(engine, size=1, overflow=0, timeout=0.3)
    held = pool.get()
    started = time.monotonic()
    with pytest.raises(errors.ConnectionLost, match="in use"):
        pool.get()
    assert time.monotonic() - started >= 0.3
    # A connection handed back wakes a waiter.
    threading.Timer(0.1, pool.put, (held,)).start()
    assert pool.get() is held
    pool.put(held)
    pool.dispose()
    assert held.closed
    engine.dispose()


def test_a_server_that_is_down_is_reported_at_once() -> None:
    book = ledger.Ledger("postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    started = time.monotonic()
    with pytest.raises(errors.ConnectionLost):
        book.try_reserve("a", 1)
    assert time.monotonic() - started < 10  # not the pool's 30 s wait
    book.close()


def test_a_closed_ledger_can_be_used_again(db_url: str) -> None:
    book = ledger.Ledger(db_url)
    book.ensure_tenant("a", 100)
    book.close()
    assert book.try_reserve("a", 10).ok  # as a disposed engine reconnects
    book.close()


def test_many_threads_share_the_pool_with_exact_sums(db_url: str) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("hot", 10_000)
        granted: list[int] = []

        def work() -> None:
            for _ in range(25):
                hold = book.try_reserve("hot", 7)
                if hold.reservation_id is not None:
                    assert book.commit(hold.reservation_id, 5, tenant_id="hot").ok
                    granted.append(5)

        threads = [threading.Thread(target=work) for _ in range(24)]  # > 15 connections
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tenant = book.tenant("hot")
        assert tenant.committed_microcents == sum(granted) == 24 * 25 * 5
        assert book.verify_conservation().is_balanced
        assert book.verify_journal().ok


def test_a_forked_child_opens_its_own_connections(db_url: str) -> None:
    """Parent and child on one socket would read each other's replies."""
    import os

    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 1_000_000)
        assert book.try_reserve("a", 1).ok  # the parent has an idle connection now
        pool = book._db._pool
        assert pool is not None
        parent_conn = pool.get()
        parent_pid = parent_conn.info.backend_pid
        pool.put(parent_conn)
        child = os.fork()
        if child == 0:  # the child: must not touch the parent's session
            ok = False
            try:
                mine = pool.get()
                ok = mine.info.backend_pid != parent_pid and book.try_reserve("a", 1).ok
                pool.put(mine)
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        again = pool.get()
        assert again.info.backend_pid == parent_pid  # still the parent's, still alive
        pool.put(again)
        assert book.try_reserve("a", 1).ok
