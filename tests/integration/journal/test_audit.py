"""Audit views, the auditor role, and every query of docs/audit.md."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

import ledger
from ledger.audit import AUDIT_VIEWS, grant_auditor

pytestmark = pytest.mark.pg_versions

DOC = Path(__file__).resolve().parents[3] / "docs" / "audit.md"


def populate(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("acme", 1_000_000)
    book.ensure_tenant("globex", 500_000)
    book.ensure_tenant("initech", 100)
    book.top_up_tenant("acme", 50_000)
    for tenant, n in (("acme", 5), ("globex", 3)):
        for i in range(n):
            hold = book.try_reserve(tenant, 10_000 + i)
            book.commit(hold.reservation_id, 9_000 + i, tenant_id=tenant)  # type: ignore[arg-type]
    book.certify()
    old = book.try_reserve("acme", 7_000).reservation_id
    raw.execute(
        "UPDATE ledger.reservations SET created_at = now() - interval '2 hours'"
        " WHERE reservation_id = %s",
        (old,),
    )
    book.try_reserve("globex", 1_000)
    book.try_reserve("initech", 95)
    book.certify()
    # a refund of acme's first commit (docs/audit.md: "Refunds of a commit")
    first = raw.execute(
        "SELECT min(reservation_id) FROM ledger.journal WHERE tenant_id = 'acme' AND op = 'commit'"
    ).fetchone()
    book.refund("acme", first[0], 1_000, reason="audit cookbook")  # type: ignore[index]


def sql_blocks() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    out = []
    for block in blocks:
        expect = re.search(r"-- expect: (.*)", block)
        assert expect, f"every cookbook query states what it expects:\n{block}"
        out.append((expect.group(1).strip(), block))
    return out


def test_cookbook_has_queries() -> None:
    assert len(sql_blocks()) >= 10


def test_every_cookbook_query_runs_as_the_auditor(
    book: ledger.Ledger, raw: psycopg.Connection, db_url: str
) -> None:
    populate(book, raw)
    grant_auditor(db_url)
    raw.execute("SET ROLE ledger_auditor")
    try:
        for expect, sql in sql_blocks():
            rows = raw.execute(sql).fetchall()
            if expect == "rows":
                assert rows, sql
            elif expect == "no rows":
                assert rows == [], (sql, rows)
            elif expect == "one row, true":
                assert rows == [(True,)], (sql, rows)
            else:
                assert expect == "any", expect
    finally:
        raw.execute("RESET ROLE")


def test_views_report_trouble(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    populate(book, raw)
    assert raw.execute("SELECT count(*) FROM ledger.conservation_violations").fetchone() == (0,)
    assert raw.execute("SELECT count(*) FROM ledger.reserved_mismatches").fetchone() == (0,)
    assert raw.execute("SELECT bool_and(balanced) FROM ledger.balances").fetchone() == (True,)
    # break things below the ledger's feet
    raw.execute("ALTER TABLE ledger.tenants DROP CONSTRAINT tenants_conservation")
    raw.execute(
        "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents + 3 WHERE tenant_id = 'globex'"
    )
    raw.execute("DELETE FROM ledger.reservations WHERE tenant_id = 'initech'")
    assert raw.execute(
        "SELECT tenant_id, delta_microcents FROM ledger.conservation_violations"
    ).fetchall() == [("globex", 3)]
    assert raw.execute(
        "SELECT tenant_id, difference_microcents FROM ledger.reserved_mismatches"
    ).fetchall() == [("initech", 95)]
    acme = raw.execute(
        "SELECT op, remaining_change_microcents, topped_up_total_microcents, spent_total_microcents"
        " FROM ledger.journal_entries WHERE tenant_id = 'acme' ORDER BY seq"
    ).fetchall()
    assert acme[0] == ("create", 1_000_000, 0, 0)
    assert acme[1] == ("top_up", 50_000, 50_000, 0)
    assert acme[3][0] == "commit" and acme[3][3] == 9_000


def test_auditor_sees_views_only_and_writes_nothing(
    book: ledger.Ledger, raw: psycopg.Connection, db_url: str
) -> None:
    populate(book, raw)
    grant_auditor(db_url)
    grant_auditor(db_url)  # idempotent
    raw.execute("SET ROLE ledger_auditor")
    try:
        for view in AUDIT_VIEWS:
            raw.execute(f"SELECT * FROM ledger.{view} LIMIT 1").fetchall()
        for sql in (
            "SELECT * FROM ledger.tenants",
            "SELECT * FROM ledger.journal",
            "UPDATE ledger.tenants SET remaining_microcents = 0",
            "INSERT INTO ledger.journal (tenant_id, seq) VALUES ('x', 1)",
            "DELETE FROM ledger.certificates",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw.execute(sql)
    finally:
        raw.execute("RESET ROLE")


def test_bad_role_names_are_refused(db_url: str) -> None:
    for bad in ("", "Robert'); DROP", "UPPER", "a-b"):
        with pytest.raises(ledger.errors.InputError):
            grant_auditor(db_url, bad)
