"""Batches: identical to one-by-one application, constant round trips, no deadlocks."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

import ledger
from ledger import CommitItem, ReleaseItem, ReserveItem, errors
from tests.helpers import holds_match_reserved, reset, state
from tests.integration.core.test_database import Tracer

pytestmark = pytest.mark.pg_versions

TENANTS = ["a", "b", "c-é"]


BIG = 2**62  # two of these overflow a tenant's reserved or committed total


def seed_state(book: ledger.Ledger) -> list[int]:
    book.ensure_tenant("a", 1_000)
    book.ensure_tenant("b", 300)
    book.ensure_tenant("c-é", 50)
    book.ensure_tenant("big", 2**63 - 1)
    book.set_max_reserved_microcents("b", 200)
    return [h.reservation_id for h in book.try_reserve_many([("a", 100), ("a", 200), ("b", 150)])]  # type: ignore[misc]


reserve_items = st.lists(
    st.tuples(
        st.sampled_from([*TENANTS, "big", "ghost"]),
        st.sampled_from([-1, 0, 1, 10, 60, 150, 400, 2_000, BIG - 1, BIG]),
        st.sampled_from([None, None, 3600]),  # seconds to live
    ),
    max_size=25,
)
settle_items = st.lists(
    st.tuples(
        st.sampled_from(["commit", "release"]),
        st.integers(0, 6),
        st.sampled_from([-1, 0, 50, 100, 250, 5_000, BIG]),
    ),
    max_size=25,
)

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def apply_one_by_one(
    book: ledger.Ledger, reserves: list[Any], settles: list[Any], ids: list[int]
) -> list[Any]:
    outs: list[Any] = [book.try_reserve(t, c, ttl=ttl) for t, c, ttl in reserves]
    known = ids + [o.reservation_id for o in outs if o.reservation_id is not None]
    for kind, pick, amount in settles:
        rid = known[pick % len(known)] if pick < 6 else 99_999
        outs.append(book.commit(rid, amount) if kind == "commit" else book.release(rid))
    return outs


def apply_batched(
    book: ledger.Ledger,
    reserves: list[Any],
    settles: list[Any],
    ids: list[int],
    forms: random.Random | None = None,
) -> list[Any]:
    """The same work in batches; ``forms`` picks each item's spelling (tuple, item, bare id)."""

    def form(options: list[Any]) -> Any:
        return options[0] if forms is None else forms.choice(options)

    items = [
        form([(t, c, ttl), ReserveItem(t, c, ttl), (t, c) if ttl is None else (t, c, ttl)])
        for t, c, ttl in reserves
    ]
    outs: list[Any] = book.try_reserve_many(items)
    known = ids + [o.reservation_id for o in outs if o.reservation_id is not None]
    # consecutive runs of the same kind go in one batch, preserving order
    i = 0
    while i < len(settles):
        kind = settles[i][0]
        j = i
        while j < len(settles) and settles[j][0] == kind:
            j += 1
        run = settles[i:j]
        rids = [known[p % len(known)] if p < 6 else 99_999 for _, p, _ in run]
        if kind == "commit":
            outs += book.commit_many(
                [
                    form([CommitItem(r, a), (r, a), (r, a, None)])
                    for r, (_, _, a) in zip(rids, run, strict=True)
                ]
            )
        else:
            outs += book.release_many([form([r, ReleaseItem(r), (r,), (r, None)]) for r in rids])
        i = j
    return outs


@PROPERTY
@given(reserves=reserve_items, settles=settle_items, forms=st.randoms(use_true_random=False))
def test_batches_equal_one_by_one_application(
    db_url: str,
    raw: psycopg.Connection,
    reserves: list[Any],
    settles: list[Any],
    forms: random.Random,
) -> None:
    with ledger.Ledger(db_url) as book:
        reset(raw)
        ids = seed_state(book)
        expected = apply_one_by_one(book, reserves, settles, ids)
        expected_state = state(raw)
        expected_state.pop("heads")  # chain heads cover timestamps, so they differ run to run
        reset(raw)
        ids = seed_state(book)
        got = apply_batched(book, reserves, settles, ids, forms)
        assert got == expected  # same statuses, fields and even reservation ids
        got_state = state(raw)
        got_state.pop("heads")
        assert got_state == expected_state
        assert holds_match_reserved(raw) == []
        assert book.verify_journal().ok


def test_a_large_item_does_not_block_a_later_small_one(book: ledger.Ledger) -> None:
    book.ensure_tenant("hot", 100)
    out = book.try_reserve_many([("hot", 90), ("hot", 50), ("hot", 10), ("hot", 1)])
    assert [o.status for o in out] == ["reserved", "insufficient", "reserved", "insufficient"]
    assert book.remaining_microcents("hot") == 0


@PROPERTY
@given(reserves=reserve_items)
def test_an_all_or_nothing_batch_applies_everything_or_nothing(
    db_url: str, raw: psycopg.Connection, reserves: list[Any]
) -> None:
    with ledger.Ledger(db_url) as book:
        reset(raw)
        seed_state(book)
        before = state(raw)
        try:
            outs = book.try_reserve_many(reserves, all_or_nothing=True)
        except errors.BatchRefused as refused:
            assert any(not o.ok for o in refused.outcomes)
            after = state(raw)
            # Nothing applied; only the id sequence may have moved.
            after.pop("reservation_seq"), before.pop("reservation_seq")
            assert after == before
        else:
            assert all(o.ok for o in outs)
            assert book.active_reservations() == 3 + len(reserves)
        assert holds_match_reserved(raw) == []
        assert book.verify_journal().ok


def test_round_trips_do_not_grow_with_the_batch(db_url: str) -> None:
    engine = create_engine(db_url)
    tracer = Tracer(engine)
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 10**12)
    trips = {}
    for n in (1, 10, 1000):
        tracer.mark()
        holds = book.try_reserve_many([("t", 5)] * n)
        reserve_trips = tracer.round_trips()
        tracer.mark()
        book.commit_many([(h.reservation_id, 4) for h in holds])
        trips[n] = (reserve_trips, tracer.round_trips())
    # A constant handful (BEGIN, lock, savepoint, the pipeline's Sync, release,
    # COMMIT; psycopg may add a sync when it first prepares a statement), not
    # one per item.
    assert max(max(t) for t in trips.values()) <= 8, trips
    assert trips[1] == trips[10], trips
    assert book.tenant("t") == ledger.TenantLedger("t", 10**12, 10**12 - 4 * 1011, 0, 4 * 1011)
    engine.dispose()
    tracer.file.close()


def test_crossing_batches_do_not_deadlock(db_url: str, raw: psycopg.Connection) -> None:
    engine = create_engine(db_url, pool_size=6)
    book = ledger.Ledger(engine)
    names = [f"t{i}" for i in range(6)]
    for n in names:
        book.ensure_tenant(n, 10**9)
    failures: list[BaseException] = []

    def worker(order: list[str], seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                holds = book.try_reserve_many([(n, rng.randint(1, 100)) for n in order])
                book.commit_many([(h.reservation_id, 1) for h in reversed(holds)])
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [
        threading.Thread(target=worker, args=(o, s))
        for s, o in enumerate([names, names[::-1], names[2:] + names[:2], names[::-1]])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert failures == []
    assert book.active_reservations() == 0
    assert book.total_committed_microcents() == 4 * 40 * 6
    assert holds_match_reserved(raw) == []
    assert book.verify_journal().ok
    engine.dispose()


def test_all_or_nothing(book: ledger.Ledger, raw: psycopg.Connection, db_url: str) -> None:
    book.ensure_tenant("a", 100)
    before = state(raw)
    with pytest.raises(errors.BatchRefused) as info:
        book.try_reserve_many([("a", 10), ("a", 500), ("a", 20)], all_or_nothing=True)
    assert [o.status for o in info.value.outcomes] == ["reserved", "insufficient", "reserved"]
    assert state(raw) == {**before, "reservation_seq": state(raw)["reservation_seq"]}
    ok = book.try_reserve_many([("a", 10), ("a", 20)], all_or_nothing=True)
    assert all(o.ok for o in ok)
    # inside a caller's transaction only the batch's own part is undone
    engine = create_engine(db_url)
    with engine.begin() as conn:
        book.top_up_tenant("a", 1, connection=conn)
        with pytest.raises(errors.BatchRefused):
            book.commit_many(
                [(ok[0].reservation_id, 10), (ok[1].reservation_id, 10**6)],
                all_or_nothing=True,
                connection=conn,
            )
    assert book.tenant("a") == ledger.TenantLedger("a", 101, 71, 30, 0)
    engine.dispose()


def test_keys_and_lapsed_holds_take_the_item_by_item_path(book: ledger.Ledger) -> None:
    book.ensure_tenant("a", 100)
    keyed = [ReserveItem("a", 10, idempotency_key="k1"), ReserveItem("a", 20, idempotency_key="k2")]
    first = book.try_reserve_many(keyed)
    assert book.try_reserve_many(keyed) == first
    assert book.reserved_microcents("a") == 30
    book.try_reserve("a", 70, ttl=timedelta(microseconds=1))  # lapsed: eats the rest of the budget
    out = book.try_reserve_many([("a", 50), ("a", 20)])
    assert [o.status for o in out] == ["reserved", "reserved"]  # the lapsed hold was expired first
    settled = book.commit_many([CommitItem(first[0].reservation_id, 10, "a", "c1")])  # type: ignore[arg-type]
    assert book.commit_many([CommitItem(first[0].reservation_id, 10, "a", "c1")]) == settled  # type: ignore[arg-type]
    released = book.release_many([ReleaseItem(first[1].reservation_id, "a", "r1")])  # type: ignore[arg-type]
    assert released[0].status == "released"
    assert book.verify_journal().ok


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda b: b.try_reserve_many([("a", 1.5)]), TypeError),
        (lambda b: b.try_reserve_many([("a", 1), ("", 1)]), ValueError),
        (lambda b: b.try_reserve_many(["a"]), ValueError),
        (lambda b: b.try_reserve_many([("a",)]), ValueError),
        (lambda b: b.commit_many([(1, True)]), TypeError),
        (lambda b: b.commit_many([CommitItem(1, 1, None, "key-without-tenant")]), ValueError),
        (lambda b: b.release_many([-1]), ValueError),
        (lambda b: b.try_reserve_many([("a", 1)] * 10_001), ValueError),
        # too many fields, and a wrong type where the item classes expect a tenant id
        (lambda b: b.try_reserve_many([("a", 1, None, None, None, "x")]), ValueError),
        (lambda b: b.commit_many([(1, 5, 7)]), ValueError),
        (lambda b: b.release_many([(1, None, None, "x")]), ValueError),
        (lambda b: b.release_many([ReleaseItem(1), (2, "a", 3)]), ValueError),
        (lambda b: b.try_reserve_many([ReserveItem("a", 1, ttl=-5)]), ValueError),
        (lambda b: b.try_reserve_many([("a", 1, 10, datetime.now(UTC))]), ValueError),
    ],
)
def test_bad_items_raise_typed_errors_and_change_nothing(
    book: ledger.Ledger, raw: psycopg.Connection, call: Any, error: type[Exception]
) -> None:
    book.ensure_tenant("a", 100)
    before = state(raw)
    with pytest.raises(error) as info:
        call(book)
    assert isinstance(info.value, errors.LedgerError)
    assert state(raw) == before


def test_empty_batches(book: ledger.Ledger) -> None:
    assert book.try_reserve_many([]) == []
    assert book.commit_many([]) == []
    assert book.release_many([]) == []


def test_batch_statements_are_planned_per_call_single_ones_prepared(db_url: str) -> None:
    """A generic plan for arrays of unknown size was 2.4x slower (bench.batch_profile
    --churn): the batch statements are never prepared, the single ones are after five runs."""
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 10**12)
        for _ in range(7):
            holds = book.try_reserve_many([("a", 5), ("a", 6)])
            book.commit_many([(h.reservation_id, 1) for h in holds])
            hold = book.try_reserve("a", 5)
            assert hold.reservation_id is not None
            book.commit(hold.reservation_id, 1)
        pool = book._db._pool
        assert pool is not None
        conn = pool.get()  # the one connection those calls took turns on
        try:
            prepared = [r[0] for r in conn.execute("SELECT statement FROM pg_prepared_statements")]
        finally:
            pool.put(conn)
    assert any("journal_hash" in s for s in prepared)  # try_reserve and commit
    assert not [s for s in prepared if "planned per call" in s or "tenant_rows AS" in s]


@pytest.mark.parametrize("kind", ["commit", "release"])
def test_an_items_tenant_id_is_a_check_as_in_the_single_call(
    book: ledger.Ledger, raw: psycopg.Connection, kind: str
) -> None:
    """Issue 22 finding 4: commit_many settled another tenant's hold that the single
    commit(rid, tenant_id=...) refuses as missing_reservation."""
    book.ensure_tenant("a", 1_000)
    book.ensure_tenant("b", 1_000)
    theirs = book.try_reserve("b", 100).reservation_id
    mine = book.try_reserve("a", 100).reservation_id
    assert theirs is not None and mine is not None
    before = state(raw)
    if kind == "commit":
        single = book.commit(theirs, 50, tenant_id="a")
        batch = book.commit_many(
            [CommitItem(theirs, 50, tenant_id="a"), CommitItem(mine, 50, tenant_id="a")]
        )
    else:
        single = book.release(theirs, tenant_id="a")
        batch = book.release_many(
            [ReleaseItem(theirs, tenant_id="a"), ReleaseItem(mine, tenant_id="a")]
        )
    assert single.status == "missing_reservation"
    assert batch[0] == single  # identical to the item alone
    assert batch[1].ok  # the item that names its own tenant settles
    assert book.tenant("b") == ledger.TenantLedger("b", 1_000, 900, 100, 0)  # untouched
    assert state(raw) != before
    assert book.verify_journal().ok
