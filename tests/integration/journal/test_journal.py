"""The journal: one chained entry per change, append-only, and a replay that catches tampering."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

import ledger
from ledger import BudgetSnapshot, TenantLedger, errors
from ledger.journal import entry_hash
from ledger.migrator import downgrade
from tests.helpers import reset

pytestmark = pytest.mark.pg_versions


def workload(book: ledger.Ledger) -> None:
    """Every kind of entry: create, cap, top_up, reserve, commit, release, expire, restore, remove."""
    book.ensure_tenant("a", 10_000)
    book.ensure_tenant("b-é", 5_000)
    book.set_max_reserved_microcents("a", 4_000)
    book.top_up_tenant("a", 500, idempotency_key="topup-1")
    h1 = book.try_reserve("a", 1_000).reservation_id
    h2 = book.try_reserve("a", 2_000).reservation_id
    book.commit(h1, 1_200)  # type: ignore[arg-type]
    book.release(h2)  # type: ignore[arg-type]
    lapsed = book.try_reserve("b-é", 300, ttl=timedelta(microseconds=1))
    assert lapsed.ok
    assert book.expire_holds() == 1
    book.try_reserve("b-é", 100)  # left open
    book.certify()
    book.try_reserve("a", 50)
    book.restore_from_snapshot(
        BudgetSnapshot(
            7, (TenantLedger("a", 9_000, 8_000, 0, 1_000), TenantLedger("c", 3, 3, 0, 0)), 0
        )
    )
    book.ensure_tenant("b-é", 77)  # re-created: continues its chain


@pytest.fixture
def worked(book: ledger.Ledger) -> ledger.Ledger:
    workload(book)
    return book


def test_every_change_is_one_entry_and_replays_clean(
    worked: ledger.Ledger, raw: psycopg.Connection
) -> None:
    ops = raw.execute(
        "SELECT tenant_id, seq, op FROM ledger.journal ORDER BY tenant_id, seq"
    ).fetchall()
    assert [(t, s, o) for t, s, o in ops if t == "a"] == [
        ("a", 1, "create"),
        ("a", 2, "cap"),
        ("a", 3, "top_up"),
        ("a", 4, "reserve"),
        ("a", 5, "reserve"),
        ("a", 6, "commit"),
        ("a", 7, "release"),
        ("a", 8, "reserve"),
        ("a", 9, "restore"),
    ]
    assert [o for t, _, o in ops if t == "b-é"] == [
        "create",
        "reserve",
        "expire",
        "reserve",
        "remove",
        "create",
    ]
    assert [o for t, _, o in ops if t == "c"] == ["restore"]
    assert raw.execute(
        "SELECT idempotency_key FROM ledger.journal WHERE op = 'top_up'"
    ).fetchone() == ("topup-1",)
    report = worked.verify_journal()
    assert report.ok, report.discrepancies
    assert (report.tenants_checked, report.entries_checked, report.certificates_checked) == (
        3,
        len(ops),
        1,
    )


def test_refusals_and_reads_write_nothing(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("a", 10)
    before = raw.execute("SELECT count(*) FROM ledger.journal").fetchone()
    book.try_reserve("a", 11)
    book.try_reserve("a", 0)
    book.commit(999, 1)
    book.release(999)
    book.top_up_tenant("a", 2**63 - 1)
    book.snapshot()
    book.verify_conservation()
    assert raw.execute("SELECT count(*) FROM ledger.journal").fetchone() == before


def test_python_and_sql_hash_agree(raw: psycopg.Connection) -> None:
    rng = random.Random(5)
    for _ in range(50):
        prev = rng.randbytes(32)
        args = (
            rng.choice(["t", "desk-é", "租户🙂", "x" * 255]),
            rng.randint(1, 2**62),
            rng.choice(["reserve", "commit", "remove"]),
            rng.choice([None, rng.randint(1, 2**62)]),
            rng.choice([None, 0, rng.randint(-(2**63), 2**63 - 1)]),
            rng.choice([None, rng.randint(1, 2**63 - 1)]),
            *(rng.randint(0, 2**63 - 1) for _ in range(5)),
        )
        at = datetime(2026, 11, 29, 3, 4, 5, rng.randint(0, 999_999), tzinfo=UTC)
        key = rng.choice([None, "k", "ключ-" + "9" * 40])
        for function, entry_format in (("journal_hash", 2), ("journal_hash_v1", None)):
            sql = raw.execute(
                f"SELECT ledger.{function}(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (prev, *args, at, key),
            ).fetchone()
            assert sql is not None
            assert bytes(sql[0]) == entry_hash(  # type: ignore[misc]
                prev,
                *args,  # type: ignore[arg-type]
                at,
                key,
                entry_format=entry_format,
            )


def test_python_and_sql_hash_agree_with_period_and_reason(raw: psycopg.Connection) -> None:
    """Revision 0006's overload, in format 1 (``journal_hash_v1`` since revision 0009).

    The trailer only when a period or a reason is there. Format 2 is compared
    field by field in tests/integration/journal/test_journal_format.py.
    """
    rng = random.Random(6)
    at = datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC)
    for period, reason in [
        (None, None),
        (0, None),
        (None, "goodwill"),
        (2**40, "refund: ticket #42 → ünïcode"),
        (-1, ""),
    ]:
        prev = rng.randbytes(32)
        args = (
            "t",
            7,
            rng.choice(["renew", "refund", "adjust", "commit"]),
            3,
            -5,
            9,
            1,
            2,
            3,
            4,
            0,
        )
        sql = raw.execute(
            "SELECT ledger.journal_hash_v1(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s)",
            (prev, *args, at, "key", period, reason),
        ).fetchone()
        assert sql is not None
        assert bytes(sql[0]) == entry_hash(prev, *args, at, "key", period, reason)
        if period is None and reason is None:
            assert bytes(sql[0]) == entry_hash(prev, *args, at, "key")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger.journal SET amount_microcents = 1",
        "DELETE FROM ledger.journal",
        "TRUNCATE ledger.journal",
    ],
)
def test_journal_is_append_only(worked: ledger.Ledger, raw: psycopg.Connection, sql: str) -> None:
    before = raw.execute("SELECT count(*), sum(amount_microcents) FROM ledger.journal").fetchone()
    with pytest.raises(psycopg.Error, match="append-only") as info:
        raw.execute(sql)
    assert info.value.sqlstate == "LG002"
    assert (
        raw.execute("SELECT count(*), sum(amount_microcents) FROM ledger.journal").fetchone()
        == before
    )


# ------------------------------------------------------------------ tampering


def tamper(raw: psycopg.Connection, *statements: str) -> None:
    """Act as a superuser who bypasses the append-only triggers."""
    raw.execute("ALTER TABLE ledger.journal DISABLE TRIGGER USER")
    try:
        for s in statements:
            raw.execute(s)
    finally:
        raw.execute("ALTER TABLE ledger.journal ENABLE TRIGGER USER")


def kinds(book: ledger.Ledger) -> set[tuple[str | None, str]]:
    report = book.verify_journal()
    assert not report.ok
    return {(d.tenant_id, d.kind) for d in report.discrepancies}


def test_detects_edited_amount(worked: ledger.Ledger, raw: psycopg.Connection) -> None:
    tamper(
        raw,
        "UPDATE ledger.journal SET amount_microcents = 1300 WHERE tenant_id = 'a' AND op = 'commit'",
    )
    found = kinds(worked)
    assert ("a", "hash_mismatch") in found and ("a", "balance_mismatch") in found


def test_detects_deleted_entry(worked: ledger.Ledger, raw: psycopg.Connection) -> None:
    tamper(raw, "DELETE FROM ledger.journal WHERE tenant_id = 'a' AND seq = 3")
    found = kinds(worked)
    assert ("a", "sequence_gap") in found and ("a", "hash_mismatch") in found


def test_detects_reordered_entries(worked: ledger.Ledger, raw: psycopg.Connection) -> None:
    tamper(
        raw,
        "UPDATE ledger.journal SET seq = 1004 WHERE tenant_id = 'a' AND seq = 4",
        "UPDATE ledger.journal SET seq = 4 WHERE tenant_id = 'a' AND seq = 5",
        "UPDATE ledger.journal SET seq = 5 WHERE tenant_id = 'a' AND seq = 1004",
    )
    assert ("a", "hash_mismatch") in kinds(worked)


def test_detects_duplicated_entry(worked: ledger.Ledger, raw: psycopg.Connection) -> None:
    tamper(
        raw,
        """INSERT INTO ledger.journal
        SELECT tenant_id, 100, op, reservation_id, amount_microcents, hold_microcents,
               initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
               max_reserved_microcents, idempotency_key, created_at, entry_hash
        FROM ledger.journal WHERE tenant_id = 'a' AND op = 'top_up'""",
    )
    found = kinds(worked)
    assert ("a", "sequence_gap") in found and ("a", "hash_mismatch") in found


def test_detects_tenant_row_changed_without_entry(
    worked: ledger.Ledger, raw: psycopg.Connection
) -> None:
    raw.execute(
        "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents + 5,"
        " initial_microcents = initial_microcents + 5 WHERE tenant_id = 'c'"
    )
    assert kinds(worked) == {("c", "live_mismatch")}


def test_detects_hold_added_without_entry(worked: ledger.Ledger, raw: psycopg.Connection) -> None:
    raw.execute(
        "UPDATE ledger.tenants SET remaining_microcents = 0, reserved_microcents = 3"
        " WHERE tenant_id = 'c'"
    )
    raw.execute(
        "INSERT INTO ledger.reservations (tenant_id, reservation_id, amount_microcents)"
        " VALUES ('c', 999, 3)"
    )
    assert kinds(worked) == {("c", "live_mismatch"), ("c", "hold_mismatch")}


def test_detects_forged_chain_head(worked: ledger.Ledger, raw: psycopg.Connection) -> None:
    raw.execute("UPDATE ledger.tenants SET journal_head = sha256('forged') WHERE tenant_id = 'a'")
    assert kinds(worked) == {("a", "head_mismatch")}


def test_detects_consistently_rewritten_history_through_the_certificate(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """An attacker rewrites an entry and recomputes every later hash and the tenant's head.

    The chain is then self-consistent; only the certified head betrays it.
    """
    book.ensure_tenant("a", 1_000)
    hold = book.try_reserve("a", 100).reservation_id
    book.commit(hold, 90)  # type: ignore[arg-type]
    book.certify()
    book.top_up_tenant("a", 5)
    tamper(
        raw,
        "UPDATE ledger.journal SET amount_microcents = 2000, initial_microcents = 2000,"
        " remaining_microcents = 2000 WHERE tenant_id = 'a' AND seq = 1",
    )
    rows = raw.execute("SELECT * FROM ledger.journal WHERE tenant_id = 'a' ORDER BY seq").fetchall()
    cols = [c.name for c in raw.execute("SELECT * FROM ledger.journal LIMIT 0").description]  # type: ignore[union-attr]
    prev = bytes(32)
    for row in rows:
        e = dict(zip(cols, row, strict=True))
        if e["seq"] > 1:
            delta = 1_000
            e["initial_microcents"] += delta
            e["remaining_microcents"] += delta
        new = entry_hash(
            prev,
            e["tenant_id"],
            e["seq"],
            e["op"],
            e["reservation_id"],
            e["amount_microcents"],
            e["hold_microcents"],
            e["initial_microcents"],
            e["remaining_microcents"],
            e["reserved_microcents"],
            e["committed_microcents"],
            e["max_reserved_microcents"],
            e["created_at"],
            e["idempotency_key"],
            e["period_index"],
            e["reason"],
            entry_format=e["entry_format"],
        )
        tamper(
            raw,
            f"UPDATE ledger.journal SET entry_hash = '\\x{new.hex()}'::bytea,"
            f" initial_microcents = {e['initial_microcents']},"
            f" remaining_microcents = {e['remaining_microcents']}"
            f" WHERE tenant_id = 'a' AND seq = {e['seq']}",
        )
        prev = new
    raw.execute(
        f"UPDATE ledger.tenants SET journal_head = '\\x{prev.hex()}'::bytea,"
        " initial_microcents = initial_microcents + 1000,"
        " remaining_microcents = remaining_microcents + 1000 WHERE tenant_id = 'a'"
    )
    assert kinds(book) == {("a", "certificate_mismatch")}
    # and forging the checkpoint too breaks the certificate's journal root
    raw.execute(
        "UPDATE ledger.certificate_checkpoints SET journal_head ="
        " (SELECT entry_hash FROM ledger.journal WHERE tenant_id = 'a' AND seq = 3)"
    )
    assert (None, "root_mismatch") in kinds(book)


def test_replay_from_a_certified_checkpoint(worked: ledger.Ledger, raw: psycopg.Connection) -> None:
    full = worked.verify_journal()
    cert = worked.certify()
    worked.top_up_tenant("a", 1)
    since = worked.verify_journal(since_certificate=cert.certificate_id)
    assert since.ok and full.ok
    assert since.entries_checked == 1 < full.entries_checked
    with pytest.raises(errors.InputError):
        worked.verify_journal(since_certificate=9999)


def test_upgrade_from_revision_1_with_data_replays(db_url: str, raw: psycopg.Connection) -> None:
    downgrade(db_url, "0001")
    raw.execute(
        "INSERT INTO ledger.tenants (tenant_id, initial_microcents, remaining_microcents,"
        " reserved_microcents, committed_microcents, max_reserved_microcents)"
        " VALUES ('old', 100, 60, 30, 10, 50), ('older', 5, 5, 0, 0, 0)"
    )
    raw.execute(
        "INSERT INTO ledger.reservations (tenant_id, reservation_id, amount_microcents)"
        " VALUES ('old', 1, 10), ('old', 2, 20)"
    )
    raw.execute("SELECT setval('ledger.reservation_id_seq', 2)")
    ledger.migrate(db_url)
    with ledger.Ledger(db_url) as book:
        assert book.verify_journal().ok
        assert book.commit(2, 25).status == "committed"
        assert book.release(1).status == "released"
        report = book.verify_journal()
        assert report.ok, report.discrepancies
        assert report.entries_checked == 6  # open x2, open_hold x2, then two settlements


def test_chains_stay_valid_under_32_concurrent_writers(db_url: str) -> None:
    engine = create_engine(
        db_url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=34
    )
    book = ledger.Ledger(engine)
    book.ensure_tenant("hot", 5_000_000)
    book.ensure_tenant("warm", 5_000_000)

    def worker(seed: int) -> int:
        """Returns how many state changes it made: each must be exactly one entry."""
        rng = random.Random(seed)
        changes = 0
        for _ in range(25):
            tenant = rng.choice(["hot", "hot", "warm"])
            hold = book.try_reserve(tenant, rng.randint(1, 90_000))
            if hold.ok:
                changes += 1
                if rng.random() < 0.7:
                    out = book.commit(hold.reservation_id, rng.randint(0, 100_000))  # type: ignore[arg-type]
                else:
                    out = book.release(hold.reservation_id)  # type: ignore[arg-type]
                changes += out.ok
            if rng.random() < 0.1:
                changes += book.top_up_tenant(tenant, 1_000).ok
        return changes

    stop = threading.Event()
    with ThreadPoolExecutor(33) as pool:
        futures = [pool.submit(worker, s) for s in range(32)]
        certifier = pool.submit(lambda: [book.certify() for _ in range(5) if not stop.is_set()])
        changes = sum(f.result(300) for f in futures)
        stop.set()
        certifier.result(300)
    report = book.verify_journal()
    assert report.ok, report.discrepancies[:5]
    assert report.entries_checked == changes + 2  # plus the two creates
    assert report.certificates_checked == 5
    engine.dispose()


# ------------------------------------------------------------- properties

OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "reserve",
                "reserve_ttl",
                "commit",
                "release",
                "top_up",
                "cap",
                "ensure",
                "expire",
                "restore",
                "certify",
                "retry",
            ]
        ),
        st.sampled_from(["t0", "t1", "t2-é"]),
        st.integers(0, 300_000),
    ),
    min_size=1,
    max_size=30,
)


def run_ops(book: ledger.Ledger, ops: list[tuple[str, str, int]]) -> None:
    holds: list[tuple[int, str]] = []
    for op, tenant, n in ops:
        if op in ("reserve", "reserve_ttl", "retry"):
            key = f"k{n % 4}" if op == "retry" else None
            try:
                out = book.try_reserve(
                    tenant,
                    n + 1,
                    idempotency_key=key,
                    ttl=timedelta(microseconds=1) if op == "reserve_ttl" else None,
                )
            except errors.IdempotencyConflict:
                continue
            if out.ok and out.reservation_id is not None:
                holds.append((out.reservation_id, tenant))
        elif op in ("commit", "release") and holds:
            rid, owner = holds.pop(n % len(holds))
            if op == "commit":
                book.commit(rid, n, tenant_id=owner)
            else:
                book.release(rid)
        elif op == "top_up":
            book.top_up_tenant(tenant, n)
        elif op == "cap":
            if book.tenant(tenant) is not None:
                book.set_max_reserved_microcents(tenant, n)
        elif op == "ensure":
            book.ensure_tenant(tenant, n)
        elif op == "expire":
            book.expire_holds(limit=1 + n % 3)
        elif op == "restore":
            snap = book.snapshot()
            kept = tuple(t for t in snap.tenants if t.tenant_id != tenant)
            book.restore_from_snapshot(
                BudgetSnapshot(
                    snap.version,
                    tuple(
                        TenantLedger(
                            t.tenant_id,
                            t.initial_microcents,
                            t.remaining_microcents + t.reserved_microcents,
                            0,
                            t.committed_microcents,
                        )
                        for t in kept
                    ),
                    0,
                )
            )
            holds.clear()
        elif op == "certify":
            book.certify()


PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(ops=OPS)
def test_any_workload_replays_to_the_live_tables(
    db_url: str, raw: psycopg.Connection, ops: list
) -> None:  # type: ignore[type-arg]
    reset(raw)
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("t0", 1_000_000)
        run_ops(book, ops)
        report = book.verify_journal()
        assert report.ok, report.discrepancies
        assert book.verify_conservation().is_balanced


TAMPERING: list[tuple[str, Callable[[psycopg.Connection], None]]] = [
    (
        "amount",
        lambda raw: tamper(
            raw,
            "UPDATE ledger.journal SET amount_microcents = coalesce(amount_microcents, 0) + 1"
            " WHERE (tenant_id, seq) = (SELECT tenant_id, max(seq) FROM ledger.journal GROUP BY tenant_id ORDER BY 1 LIMIT 1)",
        ),
    ),
    (
        "delete",
        lambda raw: tamper(
            raw,
            "DELETE FROM ledger.journal WHERE (tenant_id, seq) ="
            " (SELECT tenant_id, min(seq) FROM ledger.journal GROUP BY tenant_id ORDER BY 1 LIMIT 1)",
        ),
    ),
    (
        "balance",
        lambda raw: raw.execute(
            "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents + 1,"
            " initial_microcents = initial_microcents + 1 WHERE tenant_id = 't0'"
        ),
    ),
    (
        "head",
        lambda raw: raw.execute(
            "UPDATE ledger.tenants SET journal_head = sha256(journal_head) WHERE tenant_id = 't0'"
        ),
    ),
    (
        "time",
        lambda raw: tamper(
            raw,
            "UPDATE ledger.journal SET created_at = created_at + interval '1 microsecond'"
            " WHERE tenant_id = 't0' AND seq = 1",
        ),
    ),
]


@PROPERTY
@given(ops=OPS, how=st.sampled_from(TAMPERING))
def test_any_injected_tampering_is_detected(
    db_url: str,
    raw: psycopg.Connection,
    ops: list,
    how: tuple,  # type: ignore[type-arg]
) -> None:
    reset(raw)
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("t0", 1_000_000)
        run_ops(book, ops)
        book.ensure_tenant("t0", 5)  # a restore may have dropped it; the tampering targets it
        assert book.verify_journal().ok
        how[1](raw)
        assert not book.verify_journal().ok, how[0]


def test_the_journal_hash_is_inlined_into_the_writes(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """Revision 0005: PostgreSQL expands journal_hash into sha256(...) in the plan.

    Declared IMMUTABLE over a STABLE body, it was called as a function for
    every entry (about twice the cost per row in set-based use).
    """
    from ledger._queries import for_schema

    book.ensure_tenant("t", 100)
    params = {"tenant_id": "t", "amount": 5, "ttl_us": None, "expires_at": None, "ikey": None}
    plan = "\n".join(
        row[0] for row in raw.execute("EXPLAIN VERBOSE " + for_schema("ledger").try_reserve, params)
    )
    assert "sha256(" in plan
    assert "journal_hash(" not in plan
