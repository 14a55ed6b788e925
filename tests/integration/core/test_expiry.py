"""Holds with a deadline: swept, expired lazily, and raced against commits."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine

import ledger
from ledger import errors

pytestmark = pytest.mark.pg_versions

#: A deadline 1 µs after the reserve (on the database clock): lapsed by the next
#: statement. (An expires_at in the past is refused: the hold would be born lapsed.)
LAPSING = timedelta(microseconds=1)


def test_sweeper_returns_lapsed_holds_through_the_journal(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("t", 1_000)
    lapsed = [book.try_reserve("t", 100, ttl=LAPSING).reservation_id for _ in range(3)]
    live = book.try_reserve("t", 50, ttl=timedelta(hours=1)).reservation_id
    forever = book.try_reserve("t", 25).reservation_id  # no deadline: seed semantics
    assert book.remaining_microcents("t") == 625
    assert book.expire_holds(limit=2) == 2
    assert book.expire_holds() == 1
    assert book.expire_holds() == 0
    assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 925, 75, 0)
    expired = raw.execute(
        "SELECT reservation_id, amount_microcents FROM ledger.journal WHERE op = 'expire' ORDER BY 1"
    ).fetchall()
    assert expired == [(rid, 100) for rid in lapsed]
    assert book.commit(live, 50).status == "committed"  # type: ignore[arg-type]
    assert book.release(forever).status == "released"  # type: ignore[arg-type]
    assert book.verify_journal().ok


def test_ttl_uses_the_database_clock(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 100)
    rid = book.try_reserve("t", 10, ttl=timedelta(milliseconds=200)).reservation_id
    assert book.expire_holds() == 0
    time.sleep(0.3)
    assert book.expire_holds() == 1
    assert book.commit(rid, 5).status == "expired"  # type: ignore[arg-type]


def test_lapsed_holds_never_block_a_reserve(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 100)
    book.set_max_reserved_microcents("t", 80)
    assert book.try_reserve("t", 80, ttl=LAPSING).ok  # eats the cap and most of the balance
    out = book.try_reserve("t", 90)  # would be refused for the cap; the lapsed hold goes first
    assert out.status == "exposure_limit_exceeded"  # 90 > cap 80 anyway
    out = book.try_reserve("t", 70)
    assert out.ok and out.remaining_microcents == 30
    assert book.active_reservations() == 1
    assert book.verify_journal().ok


def test_settling_a_lapsed_hold_expires_it(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 100)
    a = book.try_reserve("t", 40, ttl=LAPSING).reservation_id
    b = book.try_reserve("t", 30, ttl=LAPSING).reservation_id
    commit = book.commit(a, 40)  # type: ignore[arg-type]
    assert (commit.status, commit.returned_microcents) == ("expired", 40)
    release = book.release(b)  # type: ignore[arg-type]
    assert (release.status, release.returned_microcents) == ("expired", 30)
    # once swept, they still read as expired, not as unknown
    assert book.commit(a, 1).status == "expired"  # type: ignore[arg-type]
    assert book.release(b, tenant_id="t").status == "expired"  # type: ignore[arg-type]
    assert book.tenant("t") == ledger.TenantLedger("t", 100, 100, 0, 0)
    with pytest.raises(errors.HoldExpiredError):
        book.commit(a, 1).raise_for_status()  # type: ignore[arg-type]


def test_commit_racing_the_sweeper_has_one_winner(db_url: str, raw: psycopg.Connection) -> None:
    engine = create_engine(db_url, pool_size=12)
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 10_000_000)
    outcomes: dict[str, int] = {}
    for round_no in range(30):
        rid = book.try_reserve("t", 1_000, ttl=timedelta(milliseconds=30)).reservation_id
        assert rid is not None
        barrier = threading.Barrier(4)

        def committer(
            rid: int = rid,
            barrier: threading.Barrier = barrier,
            delay: float = 0.015 * (round_no % 3),
        ) -> str:
            barrier.wait()
            time.sleep(delay)
            return str(book.commit(rid, 600).status)

        def sweeper(barrier: threading.Barrier = barrier) -> int:
            barrier.wait()
            time.sleep(0.03)
            return book.expire_holds()

        with ThreadPoolExecutor(4) as pool:
            status = pool.submit(committer)
            swept = [pool.submit(sweeper) for _ in range(3)]
            result = status.result(30)
            n = sum(s.result(30) for s in swept)
        assert result in ("committed", "expired")
        if result == "committed":
            assert n == 0  # the sweepers found nothing left to expire
        settled = raw.execute(
            "SELECT op FROM ledger.journal WHERE reservation_id = %s AND op <> 'reserve'", (rid,)
        ).fetchall()
        assert settled == [("commit" if result == "committed" else "expire",)]
        outcomes[result] = outcomes.get(result, 0) + 1
    t = book.tenant("t")
    assert t is not None and t.reserved_microcents == 0
    assert t.committed_microcents == 600 * outcomes.get("committed", 0)
    assert t.remaining_microcents == 10_000_000 - t.committed_microcents
    assert book.verify_journal().ok
    engine.dispose()


def test_many_sweepers_expire_each_hold_exactly_once(db_url: str, raw: psycopg.Connection) -> None:
    engine = create_engine(db_url, pool_size=10)
    book = ledger.Ledger(engine)
    for t in range(5):
        book.ensure_tenant(f"t{t}", 100_000)
        for _ in range(40):
            book.try_reserve(f"t{t}", 7, ttl=LAPSING)
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda _: book.expire_holds(limit=1000), range(8)))
    assert sum(counts) == 200
    assert raw.execute("SELECT count(*) FROM ledger.journal WHERE op = 'expire'").fetchone() == (
        200,
    )
    assert book.active_reservations() == 0
    assert all(book.remaining_microcents(f"t{t}") == 100_000 for t in range(5))
    assert book.verify_journal().ok
    engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl": 1.5}, TypeError),
        ({"ttl": True}, TypeError),
        ({"ttl": 0}, ValueError),
        ({"ttl": timedelta(seconds=-1)}, ValueError),
        ({"expires_at": datetime(2030, 1, 1)}, ValueError),  # naive
        ({"expires_at": "2030-01-01"}, ValueError),
        ({"ttl": 5, "expires_at": datetime(2030, 1, 1, tzinfo=UTC)}, ValueError),
        ({"expires_at": datetime(2000, 1, 1, tzinfo=UTC)}, ValueError),  # born lapsed
    ],
)
def test_bad_deadlines_are_refused(
    book: ledger.Ledger, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    book.ensure_tenant("t", 100)
    with pytest.raises(error) as info:
        book.try_reserve("t", 1, **kwargs)
    assert isinstance(info.value, errors.LedgerError)
    assert book.active_reservations() == 0


def test_expire_holds_limit_must_be_positive(book: ledger.Ledger) -> None:
    for bad in (0, -1, 1.0, True):
        with pytest.raises(errors.InputError):
            book.expire_holds(limit=bad)  # type: ignore[arg-type]
