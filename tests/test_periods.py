"""Recurring allowances: renewal at boundaries, lazily and by the sweeper, exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import ledger
from ledger import errors


def entries(raw: psycopg.Connection, tenant: str, op: str | None = None) -> list[tuple]:
    sql = (
        "SELECT op, period_index, amount_microcents, hold_microcents, remaining_microcents, "
        "initial_microcents FROM ledger.journal WHERE tenant_id = %s"
    )
    args: list[object] = [tenant]
    if op is not None:
        sql += " AND op = %s"
        args.append(op)
    return raw.execute(sql + " ORDER BY seq", args).fetchall()


def clean(book: ledger.Ledger) -> None:
    report = book.verify_journal()
    assert report.ok, report.discrepancies
    assert book.verify_conservation().is_balanced


def test_smoke(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("t", 500)
    anchor = datetime.now(UTC) - timedelta(days=3, seconds=-5)
    out = book.set_allowance("t", 100, days=1, anchor=anchor)
    assert out.ok and out.period_index == 2 and out.remaining_microcents == 500
    assert book.remaining_microcents("t") == 500
    r = book.try_reserve("t", 10)
    assert r.ok
    clean(book)
    print(entries(raw, "t"))
