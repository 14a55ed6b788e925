"""Ports of the seed's two proptests, with hypothesis, asserting conservation after every step.

Beyond the seed's check (``verify_conservation() == Balanced``) each step also
checks, in SQL, that every tenant's reserved total equals the sum of its open
holds. The first test also checks each step's snapshot against the tables
read directly with SQL (tenant rows in UTF-8 byte order, the open holds the
test itself tracks) and its digest against ``tests.helpers.reference_digest``,
an encoder written from docs/digest.md independently of ``ledger.certificates``.
"""

from __future__ import annotations

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledger
from ledger import ledger_digest
from tests.helpers import holds_match_reserved, reference_digest, reset

edge_amounts = st.one_of(
    st.just(1), st.just(-1), st.just(0), st.just(1_000_000), st.integers(1, 999_999)
)

# Ids whose UTF-8 byte order differs from most collations' order, so that the
# snapshot's ordering is tested too.
TENANTS = ["tenant-0", "Tenant-1", "desk-é", "desk-z", "Éclair", "_under", "租户"]
EXTRA = ["extra-0", "Extra-1", "ä-extra", "extra 3"]

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _assert_balanced(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    assert book.verify_conservation().is_balanced
    assert holds_match_reserved(raw) == []


def _assert_snapshot_is_the_tables(
    book: ledger.Ledger, raw: psycopg.Connection, open_ids: list[int], last_version: int
) -> int:
    """The snapshot reports exactly what the tables hold, and digests it as docs/digest.md says."""
    snap = book.snapshot()
    rows = raw.execute(
        "SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,"
        " committed_microcents FROM ledger.tenants"
    ).fetchall()
    rows.sort(key=lambda row: row[0].encode("utf-8"))
    holds = raw.execute("SELECT reservation_id FROM ledger.reservations").fetchall()
    assert sorted(rid for (rid,) in holds) == sorted(open_ids)
    assert [tuple(t.to_dict().values()) for t in snap.tenants] == rows
    assert snap.active_reservations == len(open_ids)
    assert snap.version > last_version
    assert ledger_digest(snap) == reference_digest(snap.version, rows, len(open_ids))
    return snap.version


@SETTINGS
@given(
    tenant_count=st.integers(1, 7),
    seed_ops=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 255), edge_amounts), min_size=5, max_size=80
    ),
)
def test_aggressive_mixed_ops_maintain_conservation(
    db_url: str, raw: psycopg.Connection, tenant_count: int, seed_ops: list[tuple[int, int, int]]
) -> None:
    reset(raw)
    with ledger.Ledger(db_url) as book:
        for t in range(tenant_count):
            book.ensure_tenant(TENANTS[t], 2_000_000)
            if t % 2 == 0:
                book.set_max_reserved_microcents(TENANTS[t], 500_000)
        open_ids: list[int] = []
        version = 0
        for op, sel, amount in seed_ops:
            tenant = TENANTS[sel % tenant_count]
            if op == 0:
                rid = book.try_reserve(tenant, amount).reservation_id
                if rid is not None:
                    open_ids.append(rid)
            elif op == 1 and open_ids:
                idx = sel % len(open_ids)
                commit_amount = 1 if amount <= 0 else amount * 2
                if book.commit(open_ids[idx], commit_amount).status == "committed":
                    open_ids.pop(idx)
            elif op == 2 and open_ids:
                book.release(open_ids.pop(sel % len(open_ids)))
            elif op == 3 and amount > 0:
                book.top_up_tenant(tenant, amount)
            elif op == 4 and amount > 0:
                book.ensure_tenant(EXTRA[sel % len(EXTRA)], amount)
            elif op == 5:
                book.snapshot()
            _assert_balanced(book, raw)
            version = _assert_snapshot_is_the_tables(book, raw, open_ids, version)


@SETTINGS
@given(
    seed_ops=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 255), st.integers(1, 49_999)),
        min_size=1,
        max_size=40,
    )
)
def test_random_ops_maintain_conservation(
    db_url: str, raw: psycopg.Connection, seed_ops: list[tuple[int, int, int]]
) -> None:
    reset(raw)
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("t0", 5_000_000)
        book.ensure_tenant("t1", 5_000_000)
        open_ids: list[int] = []
        for op, tenant_sel, amount in seed_ops:
            tenant = "t0" if tenant_sel % 2 == 0 else "t1"
            if op == 0:
                rid = book.try_reserve(tenant, amount).reservation_id
                if rid is not None:
                    open_ids.append(rid)
            elif op == 1 and open_ids:
                idx = tenant_sel % len(open_ids)
                if book.commit(open_ids[idx], amount).status == "committed":
                    open_ids.pop(idx)
            elif op == 2 and open_ids:
                book.release(open_ids.pop(tenant_sel % len(open_ids)))
            elif op == 3:
                book.top_up_tenant(tenant, amount)
            _assert_balanced(book, raw)
