"""Nested budgets under concurrency (issue 24): 8 processes on a 4-level tree, exact at every level."""

from __future__ import annotations

import multiprocessing
import random
from datetime import timedelta

import psycopg
import pytest

import ledger
from ledger import Status

pytestmark = pytest.mark.pg_versions

PROCESSES = 8
TEAMS = [f"team{t}" for t in range(2)]
USERS = [f"user{u}" for u in range(8)]
KEYS = [f"key{k:02d}" for k in range(32)]


def _build(book: ledger.Ledger) -> None:
    """1 org, 2 teams, 8 users, 32 keys; tight budgets and caps at every level."""
    book.ensure_tenant("org", 60_000)
    book.set_max_reserved_microcents("org", 6_000)
    for team in TEAMS:
        book.ensure_tenant(team, 35_000, "org")
        book.set_max_reserved_microcents(team, 4_000)
    for u, user in enumerate(USERS):
        book.ensure_tenant(user, 10_000, TEAMS[u % 2])
        book.set_max_reserved_microcents(user, 1_500)
    for k, key in enumerate(KEYS):
        book.ensure_tenant(key, 3_000, USERS[k % 8])
        book.set_max_reserved_microcents(key, 600)


def _worker(url: str, seed: int, ops: int, start: multiprocessing.synchronize.Event) -> int:  # type: ignore[name-defined]
    rng = random.Random(seed)
    open_holds: list[int] = []
    granted = 0
    with ledger.Ledger(url) as book:
        start.wait(60)
        for _ in range(ops):
            choice = rng.random()
            if choice < 0.5 or not open_holds:
                key = rng.choice(KEYS + USERS[:2])
                ttl = timedelta(microseconds=1) if rng.random() < 0.1 else None
                out = book.try_reserve(key, rng.randint(50, 400), ttl=ttl)
                if out.status == Status.RESERVED:
                    assert out.reservation_id is not None
                    granted += 1
                    open_holds.append(out.reservation_id)
                else:
                    assert out.limited_by is not None
            elif choice < 0.75:
                rid = open_holds.pop(rng.randrange(len(open_holds)))
                book.commit(rid, rng.randint(0, 500))
            elif choice < 0.9:
                rid = open_holds.pop(rng.randrange(len(open_holds)))
                book.release(rid)
            elif choice < 0.95:
                items = [
                    ledger.ReserveItem(rng.choice(KEYS), rng.randint(10, 100)) for _ in range(3)
                ]
                for o in book.try_reserve_many(items):
                    if o.reservation_id is not None:
                        open_holds.append(o.reservation_id)
            else:
                book.expire_holds()
    return granted


def test_processes_on_a_tree_stay_exact_at_every_level(
    db_url: str, raw: psycopg.Connection
) -> None:
    book = ledger.Ledger(db_url)
    _build(book)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(PROCESSES) as pool:
            pending = [pool.apply_async(_worker, (db_url, s, 120, start)) for s in range(PROCESSES)]
            start.set()
            # Move a user between teams, back and forth, while the load runs.
            for i in range(10):
                book.set_parent("user0", TEAMS[(i + 1) % 2])
            granted = [p.get(timeout=600) for p in pending]
    assert sum(granted) > 0
    # Every level's reserved is the sum of the open holds through it.
    mismatched = raw.execute(
        """
        WITH through AS (
            SELECT tenant_id AS level, amount_microcents FROM ledger.reservations
            UNION ALL
            SELECT a.level, r.amount_microcents
            FROM ledger.reservations AS r CROSS JOIN LATERAL unnest(r.ancestor_ids) AS a(level)
        )
        SELECT t.tenant_id, t.reserved_microcents, COALESCE(sum(h.amount_microcents), 0)
        FROM ledger.tenants AS t LEFT JOIN through AS h ON h.level = t.tenant_id
        GROUP BY t.tenant_id, t.reserved_microcents
        HAVING t.reserved_microcents <> COALESCE(sum(h.amount_microcents), 0)
        """
    ).fetchall()
    assert mismatched == []
    # Every level's committed is the sum of the commits journaled in its chain.
    drift = raw.execute(
        """
        SELECT t.tenant_id FROM ledger.tenants AS t
        WHERE t.committed_microcents <> COALESCE((
            SELECT sum(j.amount_microcents) FROM ledger.journal AS j
            WHERE j.tenant_id = t.tenant_id AND j.op = 'commit'), 0)
           OR t.remaining_microcents < 0 OR t.reserved_microcents < 0
           OR t.remaining_microcents + t.reserved_microcents + t.committed_microcents
              <> t.initial_microcents
        """
    ).fetchall()
    assert drift == []
    # A level's commits are its own spend plus its descendants' since the hold.
    org = book.tenant("org")
    keys_and_users = sum(
        (book.tenant(t) or org).committed_microcents  # type: ignore[union-attr]
        for t in TEAMS
    )
    assert org is not None and org.committed_microcents == keys_and_users
    report = book.verify_journal()
    assert report.ok, report.discrepancies[:5]
    # Settle what is left: every level returns to no open holds.
    for (rid,) in raw.execute("SELECT reservation_id FROM ledger.reservations").fetchall():
        book.release(rid)
    for t in ["org", *TEAMS, *USERS, *KEYS]:
        row = book.tenant(t)
        assert row is not None and row.reserved_microcents == 0
    book.close()
