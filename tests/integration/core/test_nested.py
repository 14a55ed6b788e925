"""Nested budgets (issue 24): one hold reserved at a tenant and every ancestor, atomically."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import ledger
from ledger import Status, errors
from tests.conftest import _database_url, drop_database, make_database

pytestmark = pytest.mark.pg_versions

LAPSING = timedelta(microseconds=1)


@pytest.fixture
def second_db_url(server_url: str, template_db: str) -> Iterator[str]:
    name = make_database(server_url, template_db)
    try:
        yield _database_url(server_url, name)
    finally:
        drop_database(server_url, name)


def _gateway(book: ledger.Ledger) -> None:
    """org -> team -> user -> key, with room at every level."""
    book.ensure_tenant("org", 10_000)
    book.ensure_tenant("team", 5_000, "org")
    book.ensure_tenant("user", 2_000, "team")
    book.ensure_tenant("key", 1_000, "user")


def _rows(raw: psycopg.Connection) -> dict[str, tuple[Any, ...]]:
    return {
        r[0]: r[1:]
        for r in raw.execute(
            "SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,"
            " committed_microcents, journal_seq, journal_head FROM ledger.tenants"
        )
    }


def _balances(book: ledger.Ledger, tenant: str) -> tuple[int, int, int]:
    t = book.tenant(tenant)
    assert t is not None
    return t.remaining_microcents, t.reserved_microcents, t.committed_microcents


def test_the_tree_reads_back(book: ledger.Ledger) -> None:
    _gateway(book)
    t = book.tenant("key")
    assert t is not None and t.parent_id == "user"
    root = book.tenant("org")
    assert root is not None and root.parent_id is None
    assert book.children("org") == ["team"]
    assert book.children("key") == []
    assert [(n.tenant_id, n.parent_id, n.depth) for n in book.subtree("team")] == [
        ("team", "org", 0),
        ("user", "team", 1),
        ("key", "user", 2),
    ]
    with pytest.raises(errors.TenantNotFound):
        book.children("nobody")
    with pytest.raises(errors.TenantNotFound):
        book.subtree("nobody")


def test_creating_a_child_moves_no_money(book: ledger.Ledger) -> None:
    _gateway(book)
    assert _balances(book, "org") == (10_000, 0, 0)
    assert _balances(book, "key") == (1_000, 0, 0)


def test_unknown_parent_is_refused_and_nothing_is_created(book: ledger.Ledger) -> None:
    with pytest.raises(errors.UnknownParent):
        book.ensure_tenant("orphan", 100, "nobody")
    assert book.tenant("orphan") is None


def test_cycles_and_depth_are_refused(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    _gateway(book)
    with pytest.raises(errors.TreeCycle):
        book.set_parent("org", "key")
    with pytest.raises(errors.TreeCycle):
        book.set_parent("team", "team")
    with pytest.raises(errors.UnknownParent):
        book.set_parent("team", "nobody")
    with pytest.raises(errors.TenantNotFound):
        book.set_parent("nobody", "org")
    # A chain of MAX_TREE_DEPTH levels is fine; one more is not.
    parent = "key"
    for level in range(5, ledger.MAX_TREE_DEPTH + 1):
        book.ensure_tenant(f"l{level}", 100, parent)
        parent = f"l{level}"
    with pytest.raises(errors.TreeTooDeep):
        book.ensure_tenant("too-deep", 100, parent)
    assert book.tenant("too-deep") is None
    # Moving a two-level subtree under the deepest level is too deep as well.
    book.ensure_tenant("side", 100)
    book.ensure_tenant("side-child", 100, "side")
    with pytest.raises(errors.TreeTooDeep):
        book.set_parent("side", f"l{ledger.MAX_TREE_DEPTH - 1}")
    side = book.tenant("side")
    assert side is not None and side.parent_id is None
    # Raw SQL meets the same guard.
    with pytest.raises(psycopg.Error):
        raw.execute("UPDATE ledger.tenants SET parent_id = 'key' WHERE tenant_id = 'org'")


def test_a_reserve_holds_at_every_level_and_commit_settles_them(book: ledger.Ledger) -> None:
    _gateway(book)
    out = book.try_reserve("key", 300)
    assert out.status == Status.RESERVED and out.remaining_microcents == 700
    for tenant, budget in (("org", 10_000), ("team", 5_000), ("user", 2_000), ("key", 1_000)):
        assert _balances(book, tenant) == (budget - 300, 300, 0)
    assert out.reservation_id is not None
    done = book.commit(out.reservation_id, 200)
    assert done.status == Status.COMMITTED and done.remaining_microcents == 800
    for tenant, budget in (("org", 10_000), ("team", 5_000), ("user", 2_000), ("key", 1_000)):
        assert _balances(book, tenant) == (budget - 200, 0, 200)
    assert book.verify_journal().ok


def test_release_and_expiry_return_at_every_level(book: ledger.Ledger) -> None:
    _gateway(book)
    a = book.try_reserve("key", 100)
    assert a.reservation_id is not None
    assert book.release(a.reservation_id).returned_microcents == 100
    b = book.try_reserve("user", 50, ttl=LAPSING)
    assert b.status == Status.RESERVED
    assert book.expire_holds() == 1
    for tenant, budget in (("org", 10_000), ("team", 5_000), ("user", 2_000), ("key", 1_000)):
        assert _balances(book, tenant) == (budget, 0, 0)
    assert book.verify_journal().ok


def test_a_refusal_names_the_nearest_level_and_changes_nothing(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("org", 10_000)
    book.ensure_tenant("team", 100, "org")
    book.ensure_tenant("user", 2_000, "team")
    book.ensure_tenant("key", 1_000, "user")
    before = _rows(raw)
    holds = raw.execute("SELECT count(*) FROM ledger.reservations").fetchone()
    out = book.try_reserve("key", 500)
    assert out.status == Status.INSUFFICIENT
    assert out.limited_by == "team"
    assert out.remaining_microcents == 100
    assert _rows(raw) == before
    assert raw.execute("SELECT count(*) FROM ledger.reservations").fetchone() == holds
    # The cap is checked before the balance, at each level nearest first.
    book.set_max_reserved_microcents("user", 10)
    capped = book.try_reserve("key", 50)
    assert capped.status == Status.EXPOSURE_LIMIT_EXCEEDED and capped.limited_by == "user"


def test_a_flat_refusal_is_limited_by_the_tenant_itself(book: ledger.Ledger) -> None:
    book.ensure_tenant("flat", 10)
    out = book.try_reserve("flat", 20)
    assert out.status == Status.INSUFFICIENT and out.limited_by == "flat"
    assert "limited_by" not in out.to_dict()


def test_an_unaffordable_overrun_names_its_level_and_keeps_the_hold(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("org", 10_000)
    book.ensure_tenant("team", 150, "org")
    book.ensure_tenant("key", 1_000, "team")
    out = book.try_reserve("key", 100)
    assert out.reservation_id is not None
    before = _rows(raw)
    over = book.commit(out.reservation_id, 300)
    assert over.status == Status.OVERRUN and over.limited_by == "team"
    assert _rows(raw) == before
    assert book.commit(out.reservation_id, 140).status == Status.COMMITTED
    assert _balances(book, "team") == (10, 0, 140)
    assert _balances(book, "org") == (9_860, 0, 140)


def test_settlement_uses_the_levels_recorded_before_a_move(book: ledger.Ledger) -> None:
    _gateway(book)
    book.ensure_tenant("team2", 5_000, "org")
    out = book.try_reserve("key", 100)
    assert out.reservation_id is not None
    book.set_parent("user", "team2")
    after = book.try_reserve("key", 10)
    assert after.reservation_id is not None
    book.commit(out.reservation_id, 100)
    book.commit(after.reservation_id, 10)
    assert _balances(book, "team") == (4_900, 0, 100)
    assert _balances(book, "team2") == (4_990, 0, 10)
    assert _balances(book, "org") == (9_890, 0, 110)
    assert book.verify_journal().ok


def test_lapsed_holds_through_the_refusing_level_do_not_refuse(book: ledger.Ledger) -> None:
    book.ensure_tenant("team", 100)
    book.ensure_tenant("a", 1_000, "team")
    book.ensure_tenant("b", 1_000, "team")
    assert book.try_reserve("a", 100, ttl=LAPSING).status == Status.RESERVED
    out = book.try_reserve("b", 100)
    assert out.status == Status.RESERVED
    assert _balances(book, "a") == (1_000, 0, 0)
    assert _balances(book, "team") == (0, 100, 0)


def test_idempotent_nested_reserve_replays_its_level(book: ledger.Ledger) -> None:
    book.ensure_tenant("team", 10)
    book.ensure_tenant("key", 1_000, "team")
    first = book.try_reserve("key", 50, idempotency_key="k1")
    again = book.try_reserve("key", 50, idempotency_key="k1")
    assert first == again and again.limited_by == "team"


def test_batches_with_nested_items_match_one_by_one(book: ledger.Ledger) -> None:
    _gateway(book)
    book.ensure_tenant("flat", 1_000)
    items = [
        ledger.ReserveItem("key", 300),
        ledger.ReserveItem("flat", 100),
        ledger.ReserveItem("key", 800),
        ledger.ReserveItem("user", 200),
    ]
    outs = book.try_reserve_many(items)
    assert [o.status for o in outs] == [
        Status.RESERVED,
        Status.RESERVED,
        Status.INSUFFICIENT,
        Status.RESERVED,
    ]
    assert outs[2].limited_by == "key"
    assert _balances(book, "team") == (4_500, 500, 0)
    rids = [o.reservation_id for o in outs if o.reservation_id is not None]
    settled = book.commit_many([ledger.CommitItem(rid, 100) for rid in rids])
    assert all(s.status == Status.COMMITTED for s in settled)
    assert _balances(book, "org") == (9_800, 0, 200)
    assert _balances(book, "flat") == (900, 0, 100)
    assert book.verify_journal().ok


def test_a_snapshot_carries_the_tree_and_restore_rebuilds_it(book: ledger.Ledger) -> None:
    _gateway(book)
    book.ensure_tenant("flat", 10)
    snap = book.snapshot()
    parents = {t.tenant_id: t.parent_id for t in snap.tenants}
    assert parents == {"org": None, "team": "org", "user": "team", "key": "user", "flat": None}
    assert "parent_id" not in next(t for t in snap.to_dict()["tenants"] if t["tenant_id"] == "flat")
    assert ledger.BudgetSnapshot.from_json(snap.to_json()) == snap
    # The digest ignores the tree: the same balances without it digest alike.
    flat = ledger.BudgetSnapshot(
        snap.version,
        tuple(
            ledger.TenantLedger(
                t.tenant_id,
                t.initial_microcents,
                t.remaining_microcents,
                t.reserved_microcents,
                t.committed_microcents,
            )
            for t in snap.tenants
        ),
        snap.active_reservations,
    )
    assert ledger.ledger_digest(flat) == ledger.ledger_digest(snap)
    book.set_parent("key", None)
    book.ensure_tenant("later", 5, "org")
    book.restore_from_snapshot(snap)
    assert {t.tenant_id: t.parent_id for t in book.snapshot().tenants} == parents
    out = book.try_reserve("key", 10)
    assert out.status == Status.RESERVED
    assert _balances(book, "org") == (9_990, 10, 0)


def test_restoring_a_snapshot_with_a_cycle_changes_nothing(book: ledger.Ledger) -> None:
    _gateway(book)
    snap = book.snapshot()
    looped = ledger.BudgetSnapshot(
        snap.version,
        tuple(
            ledger.TenantLedger(
                t.tenant_id,
                t.initial_microcents,
                t.remaining_microcents,
                t.reserved_microcents,
                t.committed_microcents,
                "key" if t.tenant_id == "org" else t.parent_id,
            )
            for t in snap.tenants
        ),
        snap.active_reservations,
    )
    with pytest.raises(errors.TreeCycle):
        book.restore_from_snapshot(looped)
    assert {t.tenant_id: t.parent_id for t in book.snapshot().tenants} == {
        t.tenant_id: t.parent_id for t in snap.tenants
    }


def test_each_level_forfeits_under_its_own_period_rule(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """The team renews daily; the key has no periods. A hold from the team's closed period
    forfeits its unspent part at the team only."""
    book.ensure_tenant("team", 1_000)
    anchor = datetime.now(UTC) + timedelta(hours=12) - timedelta(days=10)
    book.set_allowance("team", 100, days=1, anchor=anchor)
    book.ensure_tenant("key", 1_000, "team")
    out = book.try_reserve("key", 50)
    assert out.reservation_id is not None
    with raw.transaction():  # the team's period ends: its next write renews it first
        raw.execute(
            "UPDATE ledger.allowances SET anchor = anchor - interval '1 day'"
            " WHERE tenant_id = 'team'"
        )
        raw.execute(
            "UPDATE ledger.tenants SET renews_at = renews_at - interval '1 day'"
            " WHERE tenant_id = 'team'"
        )
    assert book.commit(out.reservation_id, 20).status == Status.COMMITTED
    assert _balances(book, "team") == (100, 0, 20)  # reset to the allowance, 30 forfeited
    assert _balances(book, "key") == (980, 0, 20)  # no periods: the 30 comes back
    assert book.verify_journal().ok
    assert book.verify_conservation().is_balanced


def test_top_ups_and_caps_act_on_their_own_level_only(book: ledger.Ledger) -> None:
    _gateway(book)
    book.top_up_tenant("team", 500)
    book.set_max_reserved_microcents("team", 400)
    assert _balances(book, "team") == (5_500, 0, 0)
    assert _balances(book, "org") == (10_000, 0, 0)
    assert _balances(book, "user") == (2_000, 0, 0)
    assert book.try_reserve("key", 401).limited_by == "team"


def test_hold_blocks_work_on_a_tree(book: ledger.Ledger) -> None:
    _gateway(book)
    with book.hold("key", 300, ttl=60) as h:
        assert book.reserved_microcents("org") == 300
        h.settle(120)
    assert _balances(book, "org") == (9_880, 0, 120)
    with book.hold("key", 300):
        pass
    assert _balances(book, "team") == (4_880, 0, 120)
    with pytest.raises(errors.InsufficientFundsError) as refused, book.hold("key", 10**6):
        pass
    assert refused.value.outcome.limited_by == "key"  # type: ignore[attr-defined]


def test_async_ledger_on_a_tree(db_url: str) -> None:
    async def main() -> None:
        book = ledger.AsyncLedger(db_url)
        try:
            await book.ensure_tenant("org", 1_000)
            await book.ensure_tenant("key", 5_000, "org")
            assert await book.children("org") == ["key"]
            out = await book.try_reserve("key", 400)
            assert out.reservation_id is not None
            assert (await book.commit(out.reservation_id, 100)).status == Status.COMMITTED
            refused = await book.try_reserve("key", 950)
            assert refused.status == Status.INSUFFICIENT and refused.limited_by == "org"
            await book.set_parent("key", None)
            assert (await book.try_reserve("key", 850)).status == Status.RESERVED
            assert (await book.verify_journal()).ok
        finally:
            await book.close()

    asyncio.run(main())


def test_keyed_settlements_on_a_tree_replay(book: ledger.Ledger) -> None:
    book.ensure_tenant("team", 150)
    book.ensure_tenant("key", 1_000, "team")
    out = book.try_reserve("key", 100, idempotency_key="r")
    assert out.reservation_id is not None
    over = book.commit(out.reservation_id, 300, tenant_id="key", idempotency_key="c")
    again = book.commit(out.reservation_id, 300, tenant_id="key", idempotency_key="c")
    assert over == again and again.limited_by == "team"
    done = book.release(out.reservation_id, tenant_id="key", idempotency_key="x")
    assert done.status == Status.RELEASED
    assert _balances(book, "team") == (150, 0, 0)


def test_coalesced_threads_on_a_tree_spend_exactly_the_team_budget(db_url: str) -> None:
    price, threads, rounds_each = 7, 16, 6
    budget = price * 40 + 3  # the team pays for exactly 40 of the 96 attempts
    with ledger.Ledger(db_url, coalesce=True) as book:
        book.ensure_tenant("org", 10**9)
        book.ensure_tenant("team", budget, "org")
        for k in range(4):
            book.ensure_tenant(f"key{k}", 10**6, "team")

        def work(n: int) -> int:
            won = 0
            for _ in range(rounds_each):
                hold = book.try_reserve(f"key{n % 4}", price)
                if hold.ok:
                    assert hold.reservation_id is not None
                    assert book.commit(hold.reservation_id, price, tenant_id=f"key{n % 4}").ok
                    won += 1
                else:
                    assert hold.limited_by == "team"
            return won

        with ThreadPoolExecutor(threads) as pool:
            wins = list(pool.map(work, range(threads)))
        assert sum(wins) == 40
        assert _balances(book, "team") == (3, 0, 40 * price)
        assert _balances(book, "org") == (10**9 - 40 * price, 0, 40 * price)
        assert book.verify_journal().ok


def test_batches_on_a_tree_equal_one_by_one(db_url: str, second_db_url: str) -> None:
    """Random reserve/commit/release batches on a tree, against the same items one by one."""
    rng = random.Random(24)
    tenants = ["org", "t1", "t2", "u1", "u2", "k1", "k2", "flat"]
    parents = {"t1": "org", "t2": "org", "u1": "t1", "u2": "t2", "k1": "u1", "k2": "u2"}
    with ledger.Ledger(db_url) as batched, ledger.Ledger(second_db_url) as single:
        for book in (batched, single):
            for t in tenants:
                book.ensure_tenant(t, rng.choice([300, 500, 900]) if t != "org" else 1_500, None)
            for child, parent in parents.items():
                book.set_parent(child, parent)
            rng = random.Random(24)
        opened: list[int] = []
        mapping: dict[int, int] = {}  # the batched ledger's hold ids -> the other's
        for _ in range(12):
            items = [
                ledger.ReserveItem(rng.choice(tenants), rng.randint(1, 250))
                for _ in range(rng.randint(1, 5))
            ]
            a = batched.try_reserve_many(items)
            b = [single.try_reserve(i.tenant_id, i.cost_microcents) for i in items]
            assert [(o.status, o.reservation_id is not None, o.limited_by) for o in a] == [
                (o.status, o.reservation_id is not None, o.limited_by) for o in b
            ]
            for x, y in zip(a, b, strict=True):
                if x.reservation_id is not None and y.reservation_id is not None:
                    mapping[x.reservation_id] = y.reservation_id
                    opened.append(x.reservation_id)
            if opened and rng.random() < 0.6:
                chosen = rng.sample(opened, k=min(len(opened), rng.randint(1, 3)))
                actuals = [rng.randint(0, 300) for _ in chosen]
                ca = batched.commit_many(
                    [ledger.CommitItem(r, x) for r, x in zip(chosen, actuals, strict=True)]
                )
                cb = [single.commit(mapping[r], x) for r, x in zip(chosen, actuals, strict=True)]
                assert [(o.status, o.limited_by) for o in ca] == [
                    (o.status, o.limited_by) for o in cb
                ]
                opened = [r for r, o in zip(chosen, ca, strict=True) if o.status == "overrun"] + [
                    r for r in opened if r not in chosen
                ]
        for t in tenants:
            assert _balances(batched, t) == _balances(single, t), t
        assert batched.verify_journal().ok and single.verify_journal().ok


def test_a_certificate_pins_the_holds_through_each_level(book: ledger.Ledger) -> None:
    _gateway(book)
    open_hold = book.try_reserve("key", 100)
    assert open_hold.reservation_id is not None
    cert = book.certify()
    assert book.commit(open_hold.reservation_id, 60).status == Status.COMMITTED
    report = book.verify_journal(since_certificate=cert.certificate_id)
    assert report.ok, report.discrepancies
