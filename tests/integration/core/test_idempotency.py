"""Idempotency keys: a retried request has its first outcome and no second effect."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine

import ledger
from ledger import errors
from tests.faults import CommitEatingProxy
from tests.helpers import state

pytestmark = pytest.mark.pg_versions


def test_same_key_same_request_returns_the_original_outcome(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("t", 1_000)
    first = book.try_reserve("t", 300, idempotency_key="r1")
    snap = state(raw)
    again = book.try_reserve("t", 300, idempotency_key="r1")
    assert again == first and state(raw) == snap
    rid = first.reservation_id
    assert rid is not None
    done = book.commit(rid, 250, tenant_id="t", idempotency_key="c1")
    snap = state(raw)
    assert book.commit(rid, 250, tenant_id="t", idempotency_key="c1") == done
    assert state(raw) == snap
    top = book.top_up_tenant("t", 5, idempotency_key="u1")
    assert book.top_up_tenant("t", 5, idempotency_key="u1") == top
    hold = book.try_reserve("t", 10).reservation_id
    rel = book.release(hold, tenant_id="t", idempotency_key="x1")  # type: ignore[arg-type]
    assert book.release(hold, tenant_id="t", idempotency_key="x1") == rel  # type: ignore[arg-type]
    assert book.tenant("t") == ledger.TenantLedger("t", 1_005, 755, 0, 250)
    assert book.verify_journal().ok


def test_refusals_are_remembered_too(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 10)
    refused = book.try_reserve("t", 50, idempotency_key="big")
    assert refused.status == "insufficient"
    book.top_up_tenant("t", 100)
    assert book.try_reserve("t", 50, idempotency_key="big") == refused
    assert book.reserved_microcents("t") == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.try_reserve("t", 301, idempotency_key="k"),
        lambda b: b.top_up_tenant("t", 300, idempotency_key="k"),
        lambda b: b.release(1, tenant_id="t", idempotency_key="k"),
    ],
)
def test_same_key_different_request_is_a_typed_conflict(
    book: ledger.Ledger, raw: psycopg.Connection, call: Any
) -> None:
    book.ensure_tenant("t", 1_000)
    book.try_reserve("t", 300, idempotency_key="k")
    snap = state(raw)
    with pytest.raises(errors.IdempotencyConflict) as info:
        call(book)
    assert (info.value.tenant_id, info.value.key) == ("t", "k")
    assert state(raw) == snap


def test_keys_are_scoped_per_tenant(book: ledger.Ledger) -> None:
    book.ensure_tenant("a", 100)
    book.ensure_tenant("b", 100)
    assert book.try_reserve("a", 10, idempotency_key="same").ok
    assert book.try_reserve("b", 20, idempotency_key="same").ok
    assert (book.reserved_microcents("a"), book.reserved_microcents("b")) == (10, 20)


def test_settlement_keys_need_the_tenant(book: ledger.Ledger) -> None:
    with pytest.raises(errors.InputError, match="tenant_id"):
        book.commit(1, 1, idempotency_key="k")
    with pytest.raises(errors.InputError):
        book.release(1, idempotency_key="k")


@pytest.mark.parametrize("key", ["", "a\x00b", "k" * 256, 5, b"k"])
def test_bad_keys_are_refused(book: ledger.Ledger, key: Any) -> None:
    with pytest.raises(errors.InputError):
        book.try_reserve("t", 1, idempotency_key=key)


def test_rolled_back_caller_transaction_does_not_burn_the_key(db_url: str) -> None:
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 100)
    with engine.connect() as conn:
        assert book.try_reserve("t", 10, idempotency_key="k", connection=conn).ok
        conn.rollback()
    assert book.reserved_microcents("t") == 0
    assert book.try_reserve("t", 10, idempotency_key="k").ok
    assert book.reserved_microcents("t") == 10
    engine.dispose()


def test_prune_forgets_old_keys(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("t", 100)
    book.try_reserve("t", 1, idempotency_key="old")
    raw.execute("UPDATE ledger.idempotency_keys SET created_at = now() - interval '2 days'")
    book.try_reserve("t", 1, idempotency_key="new")
    assert book.prune_idempotency_keys(timedelta(days=1)) == 1
    assert raw.execute("SELECT idempotency_key FROM ledger.idempotency_keys").fetchall() == [
        ("new",)
    ]
    with pytest.raises(errors.InputError):
        book.prune_idempotency_keys(5)  # type: ignore[arg-type]


def _copies(url: str, start: Any, n: int) -> list[dict[str, Any]]:
    engine = create_engine(url, pool_size=n)
    book = ledger.Ledger(engine)
    start.wait(60)
    with ThreadPoolExecutor(n) as pool:
        outs = list(
            pool.map(
                lambda _: book.try_reserve("hot", 700, idempotency_key="once").to_dict(), range(n)
            )
        )
    engine.dispose()
    return outs


def test_fifty_concurrent_copies_from_ten_processes_apply_once(db_url: str) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("hot", 10_000)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager:
            start = manager.Event()
            with ctx.Pool(10) as pool:
                pending = [pool.apply_async(_copies, (db_url, start, 5)) for _ in range(10)]
                start.set()
                outcomes = [o for p in pending for o in p.get(300)]
        assert len(outcomes) == 50
        assert all(o == outcomes[0] for o in outcomes)
        assert outcomes[0]["status"] == "reserved"
        assert book.reserved_microcents("hot") == 700
        assert book.active_reservations() == 1
        assert book.verify_journal().ok


def test_retry_after_the_commit_reply_is_lost(db_url: str) -> None:
    """The server commits, the client's connection dies before the reply: retry with the key."""
    proxy = CommitEatingProxy(db_url)
    lossy = ledger.Ledger(proxy.url)
    book = ledger.Ledger(db_url)
    try:
        book.ensure_tenant("t", 1_000)
        hold = book.try_reserve("t", 400).reservation_id
        assert hold is not None
        assert lossy.tenant_count() == 1  # connect first: the driver's own set-up also COMMITs
        proxy.armed.set()
        with pytest.raises(errors.ConnectionLost):
            lossy.commit(hold, 300, tenant_id="t", idempotency_key="settle-1")
        assert proxy.fired.wait(5)
        # It was applied, although the client could not know.
        assert book.committed_microcents("t") == 300
        retried = book.commit(hold, 300, tenant_id="t", idempotency_key="settle-1")
        assert retried.status == "committed" and retried.remaining_microcents == 700
        assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 700, 0, 300)
        # and a top-up whose reply is lost is not applied twice either
        proxy.fired.clear()
        assert lossy.tenant_count() == 1
        proxy.armed.set()
        with pytest.raises(errors.ConnectionLost):
            lossy.top_up_tenant("t", 50, idempotency_key="fund-1")
        assert proxy.fired.wait(5)
        assert book.top_up_tenant("t", 50, idempotency_key="fund-1").new_initial_microcents == 1_050
        assert book.initial_microcents("t") == 1_050
        assert book.verify_journal().ok
    finally:
        lossy.close()
        book.close()
        proxy.close()


def test_the_same_instant_with_another_utc_offset_is_the_same_request(
    book: ledger.Ledger,
) -> None:
    """Issue 22 finding 10: the request hash used isoformat(), offset and all."""
    book.ensure_tenant("t", 1_000)
    at = datetime.now(UTC) + timedelta(hours=1)
    paris = at.astimezone(timezone(timedelta(hours=1)))
    first = book.try_reserve("t", 10, expires_at=at, idempotency_key="k")
    assert book.try_reserve("t", 10, expires_at=paris, idempotency_key="k") == first
    assert book.tenant("t").reserved_microcents == 10  # type: ignore[union-attr]
    with pytest.raises(errors.IdempotencyConflict):  # another instant is another request
        book.try_reserve("t", 10, expires_at=at + timedelta(seconds=1), idempotency_key="k")
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    made = book.set_allowance("t", 5, anchor=anchor, months=1, idempotency_key="a")
    again = book.set_allowance(
        "t",
        5,
        anchor=anchor.astimezone(timezone(timedelta(hours=-5))),
        months=1,
        idempotency_key="a",
    )
    assert again == made
