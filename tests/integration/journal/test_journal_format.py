"""Journal entry format 2 (revision 0009; issue 22, finding 7): an injective encoding.

Format 1 encoded an absent period as -1 (next to a reason) and an absent
reason as '', so ``(period -1, reason NULL)`` and ``(period NULL, reason '')``
hashed alike and an owner could swap one for the other unseen. These tests
pin that format 2 tells every such pair apart, in SQL and Python byte for
byte, that format 1 entries still verify, and that a ledger moves from one to
the other and back.
"""

from __future__ import annotations

import re
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledger
from ledger._queries import Queries, for_schema
from ledger.journal import entry_hash
from ledger.migrator import current_revision, downgrade
from tests.conftest import _database_url, _plain, drop_database, make_database

pytestmark = pytest.mark.pg_versions

PREV = bytes(range(32))
AT = datetime(2026, 12, 14, 8, 9, 10, 123456, tzinfo=UTC)
#: An entry before its period index and reason: tenant, seq, op, id, amount, hold, balances.
FIELDS = ("t", 5, "reserve", 9, 40, None, 100, 60, 40, 0, 0)
#: The finding's pairs: format 1 gives both members of each pair the same bytes.
TWINS = [
    ((-1, None), (None, "")),
    ((-1, "goodwill"), (None, "goodwill")),
]
Q16 = "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
Q14 = "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"


def sql_hash(raw: psycopg.Connection, function: str, *args: Any) -> bytes:
    marks = Q16 if len(args) == 16 else Q14
    row = raw.execute(f"SELECT ledger.{function}({marks})", args).fetchone()
    assert row is not None and row[0] is not None
    return bytes(row[0])


@pytest.mark.parametrize(("one", "other"), TWINS)
def test_the_findings_twins_hash_apart_in_format_2(
    raw: psycopg.Connection, one: tuple[Any, Any], other: tuple[Any, Any]
) -> None:
    v1 = [entry_hash(PREV, *FIELDS, AT, None, *pair) for pair in (one, other)]
    v2 = [entry_hash(PREV, *FIELDS, AT, None, *pair, entry_format=2) for pair in (one, other)]
    assert v1[0] == v1[1], "format 1 is the finding: both encode alike"
    assert v2[0] != v2[1]
    for pair, old, new in zip((one, other), v1, v2, strict=True):
        assert sql_hash(raw, "journal_hash", PREV, *FIELDS, AT, None, *pair) == new
        assert sql_hash(raw, "journal_hash_v1", PREV, *FIELDS, AT, None, *pair) == old


_i64 = st.integers(-(2**63), 2**63 - 1)
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
_entry = st.tuples(
    st.sampled_from(["t", "", "desk-é", "租户🙂"]) | _text,
    _i64,
    st.sampled_from(["reserve", "commit", "renew", "refund", "adjust", "remove", ""]),
    st.none() | _i64,
    st.none() | _i64,
    st.none() | _i64,
    _i64,
    _i64,
    _i64,
    _i64,
    _i64,
    st.none() | st.sampled_from(["", "k"]) | _text,
    st.none() | st.sampled_from([-1, 0, 1]) | _i64,
    st.none() | st.sampled_from(["", "x"]) | _text,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prev=st.binary(min_size=32, max_size=32), entry=_entry, micros=st.integers(0, 999_999))
def test_sql_and_python_agree_in_both_formats(
    raw: psycopg.Connection, prev: bytes, entry: tuple[Any, ...], micros: int
) -> None:
    at = AT.replace(microsecond=micros)
    fields, (key, period, reason) = entry[:11], entry[11:]
    args = (prev, *fields, at, key, period, reason)
    assert sql_hash(raw, "journal_hash", *args) == entry_hash(*args, entry_format=2)
    assert sql_hash(raw, "journal_hash_v1", *args) == entry_hash(*args)
    assert entry_hash(*args, entry_format=1) == entry_hash(*args)
    if period is None and reason is None:  # the 14-argument overloads
        assert sql_hash(raw, "journal_hash", *args[:14]) == entry_hash(*args, entry_format=2)
        assert sql_hash(raw, "journal_hash_v1", *args[:14]) == entry_hash(*args)


@settings(max_examples=300, deadline=None)
@given(a=_entry, b=_entry)
def test_format_2_gives_different_entries_different_hashes(
    a: tuple[Any, ...], b: tuple[Any, ...]
) -> None:
    """Injective: only the same fields (None, 0, -1 and '' all different) hash alike."""
    same = entry_hash(PREV, *a[:11], AT, *a[11:], entry_format=2) == entry_hash(
        PREV, *b[:11], AT, *b[11:], entry_format=2
    )
    assert same == (a == b)


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format 3"):
        entry_hash(PREV, *FIELDS, AT, None, entry_format=3)


def test_the_writers_hash_in_format_2(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    """Every entry written at head says format 2 and verifies, batches (hashed in Python) too."""
    book.ensure_tenant("t", 1_000)
    held = book.try_reserve("t", 100).raise_for_status()
    book.commit(held.reservation_id, 60, tenant_id="t")
    book.refund("t", held.reservation_id, 10, reason="r")
    book.try_reserve_many([("t", 10), ("t", 20)])
    assert raw.execute("SELECT DISTINCT entry_format FROM ledger.journal").fetchall() == [(2,)]
    assert book.verify_journal().ok


def _numbered(sql: str) -> str:
    """``%(name)s`` placeholders as ``$1, $2, ...`` (one number per name), for GENERIC_PLAN."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)[sb]", number, sql)


def test_every_writer_still_inlines_journal_hash(raw: psycopg.Connection) -> None:
    """Revision 0005's point survives format 2: each statement of ledger/sql that hashes
    shows ``sha256(...)`` in its plan, not a call of ``journal_hash`` per row."""
    if int(raw.execute("SHOW server_version_num").fetchone()[0]) < 160000:  # type: ignore[index]
        pytest.skip("EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16")
    queries = for_schema("ledger")
    writers = {
        f.name: getattr(queries, f.name)
        for f in fields(Queries)
        if "journal_hash(" in str(getattr(queries, f.name))
    }
    assert {"try_reserve", "commit_for_tenant", "top_up"} <= set(writers)
    for name, sql in writers.items():
        numbered = _numbered(sql)
        plan = "\n".join(
            r[0] for r in raw.execute(f"EXPLAIN (VERBOSE, GENERIC_PLAN) {numbered}").fetchall()
        )
        assert "sha256(" in plan and "journal_hash(" not in plan, name


def _period_minus_one(book: ledger.Ledger, raw: psycopg.Connection) -> dict[str, int]:
    """A tenant in period -1 (an anchor in the future) with a reserve in it: seq by op."""
    book.ensure_tenant("p", 1_000)
    anchor = datetime.now(UTC) + timedelta(hours=5)
    assert book.set_allowance("p", 100, days=1, anchor=anchor).period_index == -1
    assert book.try_reserve("p", 10).ok
    rows = raw.execute(
        "SELECT op, seq, period_index, reason FROM ledger.journal WHERE tenant_id = 'p'"
    ).fetchall()
    assert {(op, period, reason) for op, _, period, reason in rows} >= {
        ("renew", -1, "allowance set"),
        ("reserve", -1, None),
    }
    return {op: seq for op, seq, _, _ in rows}


def _owner_rewrites(raw: psycopg.Connection, statement: str) -> None:
    """The table owner, past the append-only triggers (docs/journal.md: run the app as another)."""
    raw.execute("ALTER TABLE ledger.journal DISABLE TRIGGER USER")
    try:
        raw.execute(statement)
    finally:
        raw.execute("ALTER TABLE ledger.journal ENABLE TRIGGER USER")


@pytest.mark.parametrize(
    ("op", "rewrite"),
    [
        ("reserve", "period_index = NULL, reason = ''"),  # (-1, NULL) -> (NULL, '')
        ("renew", "period_index = NULL"),  # (-1, reason) -> (NULL, reason)
    ],
)
def test_rewriting_period_minus_one_to_null_is_detected(
    book: ledger.Ledger, raw: psycopg.Connection, op: str, rewrite: str
) -> None:
    """The finding's attack on entries the ledger wrote; format 1 hashed both rows alike."""
    seq = _period_minus_one(book, raw)[op]
    assert book.verify_journal().ok
    _owner_rewrites(
        raw, f"UPDATE ledger.journal SET {rewrite} WHERE tenant_id = 'p' AND seq = {seq}"
    )
    report = book.verify_journal()
    assert ("p", seq, "hash_mismatch") in {
        (d.tenant_id, d.seq, d.kind) for d in report.discrepancies
    }


def test_relabelling_a_format_2_entry_does_not_hide_a_rewrite(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """Claiming format 1 for the rewritten row does not help: its hash is a format-2 hash."""
    seq = _period_minus_one(book, raw)["renew"]
    _owner_rewrites(
        raw,
        "UPDATE ledger.journal SET period_index = NULL, entry_format = NULL"
        f" WHERE tenant_id = 'p' AND seq = {seq}",
    )
    report = book.verify_journal()
    assert ("p", seq, "hash_mismatch") in {
        (d.tenant_id, d.seq, d.kind) for d in report.discrepancies
    }
    _owner_rewrites(raw, "UPDATE ledger.journal SET entry_format = 7 WHERE tenant_id = 'p'")
    found = {(d.seq, d.kind) for d in book.verify_journal().discrepancies}
    assert {(1, "hash_mismatch"), (seq, "hash_mismatch")} <= found


def _formats(raw: psycopg.Connection) -> dict[Any, int]:
    rows = raw.execute("SELECT entry_format, count(*) FROM ledger.journal GROUP BY 1").fetchall()
    return {f: n for f, n in rows}


def _write(book: ledger.Ledger, tag: str, old_schema: psycopg.Connection | None = None) -> None:
    """Entries of every shape: plain, idempotent, period -1, a refund and an adjustment.

    Given ``old_schema`` (a connection to a ledger before revision 0012, whose
    ``nested_refund`` today's ``refund`` calls), the refund goes through that
    schema's own ``refund_commit`` function: the same entry, as that revision's
    code wrote it.
    """
    book.ensure_tenant(f"{tag}-a", 10_000)
    book.top_up_tenant(f"{tag}-a", 5, idempotency_key=f"{tag}-k")
    held = book.try_reserve(f"{tag}-a", 300).raise_for_status()
    book.commit(held.reservation_id, 200, tenant_id=f"{tag}-a")
    if old_schema is None:
        book.refund(f"{tag}-a", held.reservation_id, 50, reason="goodwill")
    else:
        old_schema.execute(
            "SELECT * FROM ledger.refund_commit(%s, %s, 50, 'goodwill', NULL)",
            (f"{tag}-a", held.reservation_id),
        )
    book.adjust(f"{tag}-a", 7, reason="fix")
    book.ensure_tenant(f"{tag}-p", 1_000)
    anchor = datetime.now(UTC) + timedelta(hours=5)
    book.set_allowance(f"{tag}-p", 100, days=1, anchor=anchor)
    book.try_reserve(f"{tag}-p", 10).raise_for_status()


@pytest.fixture
def at_0008(server_url: str) -> Any:
    """A ledger at the revision before format 2."""
    name = make_database(server_url, None)
    url = _database_url(server_url, name)
    ledger.migrate(url, "0008")
    try:
        yield url
    finally:
        drop_database(server_url, name)


#: The columns revision 0010 (nested budgets) adds, which today's flat statements read.
_TREE_COLUMNS = (
    ("tenants", "parent_id", 'text COLLATE "C"'),
    ("reservations", "ancestor_ids", 'text[] COLLATE "C"'),
    ("reservations", "ancestor_periods", "bigint[]"),
)


def _tree_columns(url: str, present: bool) -> None:
    """Give a pre-0010 schema the columns today's statements read, or take them away.

    Today's code needs revision 0010's columns (every flat statement asks
    whether its tenant has a parent); this test is about the journal format of
    0009, so it lends the older schema those columns while today's code writes
    there, and removes them before migrating past 0009.
    """
    with psycopg.connect(_plain(url), autocommit=True) as raw:
        for table, column, kind in _TREE_COLUMNS:
            raw.execute(
                f"ALTER TABLE ledger.{table} ADD COLUMN {column} {kind}"
                if present
                else f"ALTER TABLE ledger.{table} DROP COLUMN {column}"
            )


def test_a_format_1_ledger_upgrades_verifies_and_goes_on_in_format_2(at_0008: str) -> None:
    url = at_0008
    _tree_columns(url, present=True)
    with ledger.Ledger(url) as book, psycopg.connect(_plain(url), autocommit=True) as raw:
        _write(book, "old", raw)  # single operations only: they need nothing of 0009
    ledger.migrate(url, "0009")
    assert current_revision(url) == "0009"
    with ledger.Ledger(url) as book, psycopg.connect(_plain(url), autocommit=True) as raw:
        old = _formats(raw)
        assert set(old) == {None}, "rows written before 0009 are format 1 (NULL)"
        assert book.verify_journal().ok
        _write(book, "new", raw)
        held = book.try_reserve_many([("old-a", 1), ("new-a", 2)])  # hashed in Python
        book.commit_many([(h.reservation_id, 1) for h in held])
        new = _formats(raw)
        assert new[None] == old[None] and new[2] > 0
        report = book.verify_journal()
        assert report.ok, report
        book.certify()

    downgrade(url, "0008")
    with psycopg.connect(_plain(url), autocommit=True) as raw:
        assert raw.execute(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_schema = 'ledger' AND column_name = 'entry_format'"
        ).fetchone() == (0,)
        assert raw.execute("SELECT to_regproc('ledger.journal_hash_v1')").fetchone() == (None,)
        args = (PREV, *FIELDS, AT, None, -1, None)
        assert sql_hash(raw, "journal_hash", *args) == entry_hash(*args)  # format 1 again
    with ledger.Ledger(url) as book:  # the previous revision's writes, at 0008
        book.try_reserve("old-a", 3).raise_for_status()

    # Up again: the labels the downgrade dropped are gone, every entry still verifies.
    _tree_columns(url, present=False)
    ledger.migrate(url)
    with ledger.Ledger(url) as book, psycopg.connect(_plain(url), autocommit=True) as raw:
        assert set(_formats(raw)) == {None}
        book.try_reserve("new-a", 4).raise_for_status()
        assert set(_formats(raw)) == {None, 2}
        report = book.verify_journal()
        assert report.ok, report


def test_the_downgrade_puts_back_every_function_as_0008_had_it(at_0008: str) -> None:
    functions = (
        "SELECT p.oid::regprocedure::text, p.provolatile, p.proparallel, p.prosrc,"
        " p.proacl::text FROM pg_proc AS p"
        " WHERE p.pronamespace = 'ledger'::regnamespace ORDER BY 1"
    )
    with psycopg.connect(_plain(at_0008)) as raw:
        before = raw.execute(functions).fetchall()
    ledger.migrate(at_0008)
    downgrade(at_0008, "0008")
    with psycopg.connect(_plain(at_0008)) as raw:
        assert raw.execute(functions).fetchall() == before
