"""Recurring allowances (docs/periods.md): renewal at boundaries, exactly once, lazily and
by the sweeper; holds that cross a boundary; the refusal log; restore and certify.

There is no SQL-level clock to move, so time passes in two honest ways:

- a real boundary a second or two ahead (``days=1`` with the anchor one day
  minus two seconds ago), then a short sleep; or
- :func:`backdate`, which moves a tenant's schedule (its allowance anchor and
  its ``renews_at``) back by whole periods, exactly as if the allowance had been
  set that long ago: the tenant's current period is then behind the clock and
  several periods are due at once. The journal is untouched, so replay checks
  every entry written afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, pool, text

import ledger
from ledger import CommitItem, ReleaseItem, Status, cli, errors
from ledger import _operations as ops
from ledger._executor import PsycopgExecutor, drive
from ledger._queries import for_schema
from ledger._requests import Fetch, Op
from ledger.roles import create_roles, enable_row_level_security

pytestmark = pytest.mark.pg_versions

DAY = timedelta(days=1)


def entries(raw: psycopg.Connection, tenant: str, op: str | None = None) -> list[tuple]:
    """(op, period, amount, hold, initial, remaining) of a tenant's entries, in order."""
    sql = (
        "SELECT op, period_index, amount_microcents, hold_microcents, initial_microcents, "
        "remaining_microcents FROM ledger.journal WHERE tenant_id = %s"
    )
    args: list[object] = [tenant]
    if op is not None:
        sql += " AND op = %s"
        args.append(op)
    return raw.execute(sql + " ORDER BY seq", args).fetchall()


def renewals(raw: psycopg.Connection, tenant: str) -> list[int]:
    return [e[1] for e in entries(raw, tenant, "renew") if e[1] is not None]


def balances(book: ledger.Ledger, tenant: str) -> tuple[int, int, int, int]:
    t = book.tenant(tenant)
    assert t is not None
    return (
        t.initial_microcents,
        t.remaining_microcents,
        t.reserved_microcents,
        t.committed_microcents,
    )


def clean(book: ledger.Ledger) -> None:
    report = book.verify_journal()
    assert report.ok, report.discrepancies
    assert book.verify_conservation().is_balanced


def backdate(raw: psycopg.Connection, tenant: str, periods: int) -> None:
    """Move a days=1 tenant's schedule back ``periods`` days: that many periods fall due."""
    with raw.transaction():
        raw.execute(
            "UPDATE ledger.allowances SET anchor = anchor - %s WHERE tenant_id = %s",
            (DAY * periods, tenant),
        )
        raw.execute(
            "UPDATE ledger.tenants SET renews_at = renews_at - %s WHERE tenant_id = %s",
            (DAY * periods, tenant),
        )


def daily(
    book: ledger.Ledger,
    tenant: str,
    budget: int,
    allowance: int,
    *,
    low: int = 0,
    high: int = 0,
    ahead: timedelta = DAY / 2,
) -> int:
    """A tenant with ``budget`` and a daily allowance whose next boundary is ``ahead``."""
    book.ensure_tenant(tenant, budget)
    anchor = datetime.now(UTC) + ahead - 10 * DAY
    out = book.set_allowance(
        tenant,
        allowance,
        days=1,
        anchor=anchor,
        min_rollover_microcents=low,
        max_rollover_microcents=high,
    ).raise_for_status()
    assert out.period_index is not None
    return out.period_index


# ---------------------------------------------------------------- arithmetic


def test_period_start_keeps_local_midnight_across_dst(raw: psycopg.Connection) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    anchor = datetime(2026, 1, 31, tzinfo=berlin)  # month ends clamp: Feb 28, then Mar 31

    def start(months: int, days: int, k: int, at: datetime = anchor) -> datetime:
        row = raw.execute(
            "SELECT ledger.period_start(%s, 'Europe/Berlin', %s, %s, %s)", (at, months, days, k)
        ).fetchone()
        assert row is not None
        return row[0].astimezone(berlin)

    assert start(1, 0, 1) == datetime(2026, 2, 28, tzinfo=berlin)
    assert start(1, 0, 2) == datetime(2026, 3, 31, tzinfo=berlin)  # CEST from March 29
    assert start(1, 0, 2).utcoffset() == timedelta(hours=2)
    assert start(1, 0, 9) == datetime(2026, 10, 31, tzinfo=berlin)  # CET again (Oct 25)
    assert start(1, 0, 9).utcoffset() == timedelta(hours=1)
    assert start(1, 0, -1) == datetime(2025, 12, 31, tzinfo=berlin)
    # Every day from March 28: the day of the spring change has 23 hours.
    mar28 = datetime(2026, 3, 28, tzinfo=berlin)

    def hours(k: int) -> timedelta:  # real elapsed time (aware datetimes in UTC)
        return start(0, 1, k + 1, mar28).astimezone(UTC) - start(0, 1, k, mar28).astimezone(UTC)

    assert start(0, 1, 2, mar28) == datetime(2026, 3, 30, tzinfo=berlin)
    assert (hours(0), hours(1), hours(2)) == (
        timedelta(hours=24),
        timedelta(hours=23),
        timedelta(hours=24),
    )


@pytest.mark.parametrize(("months", "days"), [(1, 0), (3, 0), (0, 1), (0, 7), (0, 30), (12, 0)])
def test_period_index_at_is_the_period_containing_the_instant(
    raw: psycopg.Connection, months: int, days: int
) -> None:
    anchor = datetime(2025, 10, 26, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"))  # an ambiguous hour
    for hours in range(-24 * 800, 24 * 800, 24 * 37 + 5):
        at = anchor + timedelta(hours=hours)
        row = raw.execute(
            "SELECT k, ledger.period_start(%(a)s, 'Europe/Berlin', %(m)s, %(d)s, k) <= %(at)s "
            "AND %(at)s < ledger.period_start(%(a)s, 'Europe/Berlin', %(m)s, %(d)s, k + 1) "
            "FROM ledger.period_index_at(%(a)s, 'Europe/Berlin', %(m)s, %(d)s, %(at)s) AS k",
            {"a": anchor, "m": months, "d": days, "at": at},
        ).fetchone()
        assert row is not None and row[1], (months, days, at, row)


# ------------------------------------------------------------- set and clear


def test_setting_an_allowance_keeps_the_balance_and_starts_the_current_period(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("t", 500)
    before = balances(book, "t")
    anchor = datetime.now(UTC) - 3 * DAY + timedelta(hours=1)
    out = book.set_allowance("t", 100, days=1, anchor=anchor)
    assert out == ledger.AllowanceOutcome(
        Status.ALLOWANCE_SET, period_index=2, remaining_microcents=500
    )
    assert balances(book, "t") == before
    assert entries(raw, "t")[-1] == ("renew", 2, 0, 500, 500, 500)
    spend = book.period_spend("t")
    assert (spend.period_index, spend.current_period_index, spend.allowance_microcents) == (2, 2, 0)
    assert spend.starts_at == anchor + 2 * DAY and spend.ends_at == anchor + 3 * DAY
    assert spend.remaining_microcents == 500 and spend.renewed and spend.is_current
    # Amounts alone change from the next boundary on: no entry, no balance change.
    book.set_allowance("t", 250, days=1, anchor=anchor, max_rollover_microcents=10)
    assert len(entries(raw, "t", "renew")) == 1
    assert raw.execute("SELECT allowance_microcents FROM ledger.allowances").fetchone() == (250,)
    clean(book)


def test_a_future_anchor_is_the_first_boundary(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 5)
    anchor = datetime.now(UTC) + timedelta(hours=5)
    out = book.set_allowance("t", 100, months=1, anchor=anchor, time_zone="America/New_York")
    assert out.period_index == -1
    spend = book.period_spend("t")
    assert spend.ends_at == anchor
    clean(book)


def test_changing_the_schedule_leaves_the_old_periods_first(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    k = daily(book, "t", 500, 100)
    hold = book.try_reserve("t", 50).reservation_id
    assert hold is not None
    # A weekly schedule anchored now: its own index (0) is not past k, so the
    # tenant's periods are numbered on from k + 1 (period indexes only increase).
    anchor = datetime.now(UTC) - timedelta(seconds=1)
    out = book.set_allowance("t", 700, days=7, anchor=anchor)
    assert out.period_index == k + 1 and k > 0
    assert [(e[0], e[1], e[2]) for e in entries(raw, "t", "renew")][-2:] == [
        ("renew", k, 0),
        ("renew", k + 1, 0),
    ]
    spend = book.period_spend("t")  # the schedule's period 0, as the tenant's k + 1
    assert (spend.period_index, spend.current_period_index) == (k + 1, k + 1)
    assert spend.starts_at == anchor and spend.ends_at == anchor + 7 * DAY
    # The hold's period closed: committing 20 of 50 forfeits 30, remaining stays.
    initial, remaining, _, _ = balances(book, "t")
    assert book.commit(hold, 20).ok
    assert balances(book, "t") == (initial - 30, remaining, 0, 20)
    clean(book)


@pytest.mark.parametrize("cleared_first", [False, True])
def test_a_schedule_change_never_revives_a_hold_from_an_ended_period(
    book: ledger.Ledger, raw: psycopg.Connection, cleared_first: bool
) -> None:
    """Issue 22, finding 5: a new schedule whose own index equals an old hold's period
    must not make that hold current again (its release would carry the ended period's
    money into the new one)."""
    k = daily(book, "t", 500, 100)
    hold = book.try_reserve("t", 50).reservation_id
    assert hold is not None
    backdate(raw, "t", 1)
    assert book.renew_periods().tenants == 1  # period k ended by renewal: k + 1
    if cleared_first:
        assert book.clear_allowance("t").ok
    # A daily schedule whose index now is exactly the hold's period k.
    anchor = datetime.now(UTC) - k * DAY - DAY / 4
    out = book.set_allowance("t", 100, days=1, anchor=anchor)
    assert out.ok and out.period_index == k + 2  # after every index used, never k again
    initial, remaining, reserved, _ = balances(book, "t")
    assert book.release(hold).ok
    # Forfeited: nothing returns to remaining, initial falls by the hold.
    assert balances(book, "t") == (initial - 50, remaining, reserved - 50, 0)
    assert book.period_spend("t").starts_at == anchor + k * DAY
    assert [p for p in renewals(raw, "t")] == sorted(set(renewals(raw, "t")))  # increasing
    clean(book)


def test_clearing_an_allowance_keeps_remaining_and_stops_renewals(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    daily(book, "t", 500, 100)
    out = book.clear_allowance("t")
    assert out == ledger.AllowanceOutcome(Status.ALLOWANCE_CLEARED, remaining_microcents=500)
    assert raw.execute("SELECT period_index, renews_at FROM ledger.tenants").fetchone() == (
        None,
        None,
    )
    assert raw.execute("SELECT count(*) FROM ledger.allowances").fetchone() == (0,)
    with pytest.raises(errors.NoAllowance):
        book.period_spend("t")
    assert book.try_reserve("t", 10).ok  # a plain tenant again
    assert entries(raw, "t")[-1][1] is None
    assert book.clear_allowance("t").ok  # clearing twice: nothing more to do
    clean(book)


def test_set_allowance_is_idempotent(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("t", 10)
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    first = book.set_allowance("t", 100, months=1, anchor=anchor, idempotency_key="k")
    again = book.set_allowance("t", 100, months=1, anchor=anchor, idempotency_key="k")
    assert first == again and first.ok
    assert len(entries(raw, "t", "renew")) == 1
    with pytest.raises(errors.IdempotencyConflict):
        book.set_allowance("t", 101, months=1, anchor=anchor, idempotency_key="k")
    assert book.clear_allowance("t", idempotency_key="c").ok
    assert book.clear_allowance("t", idempotency_key="c").ok
    assert len(entries(raw, "t", "renew")) == 2
    clean(book)


NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"months": 1, "days": 1}, errors.InputError),
        ({}, errors.InputError),
        ({"days": -1}, errors.InputError),
        ({"days": 36_601}, errors.InputError),
        ({"months": True}, errors.InputError),
        ({"days": 1, "anchor": datetime(2026, 1, 1)}, errors.InputError),
        ({"days": 1, "anchor": "2026-01-01"}, errors.InputError),
        ({"days": 1, "time_zone": "Mars/Olympus"}, errors.InputError),
        ({"days": 1, "time_zone": ""}, errors.InputError),
        ({"days": 1, "time_zone": 3}, errors.InputError),
        ({"days": 1, "min_rollover_microcents": 5}, errors.AmountValueError),
        ({"days": 1, "max_rollover_microcents": -1}, errors.AmountValueError),
        ({"days": 1, "max_rollover_microcents": 2**63 - 1}, errors.AmountValueError),
        ({"days": 1, "min_rollover_microcents": 1.5}, errors.AmountTypeError),
        ({"days": 1, "idempotency_key": ""}, errors.InputError),
        ({"days": 1, "allowance": -1}, errors.AmountValueError),
        ({"days": 1, "allowance": "5"}, errors.AmountTypeError),
        ({"days": 1, "tenant": ""}, errors.InvalidTenantId),
    ],
)
def test_set_allowance_refuses_bad_input_and_changes_nothing(
    book: ledger.Ledger, raw: psycopg.Connection, kwargs: dict, error: type[Exception]
) -> None:
    book.ensure_tenant("t", 10)
    before = raw.execute("SELECT count(*) FROM ledger.journal").fetchone()
    args = {"anchor": NOW, **kwargs}
    tenant = args.pop("tenant", "t")
    allowance = args.pop("allowance", 100)
    with pytest.raises(error):
        book.set_allowance(tenant, allowance, **args)
    assert raw.execute("SELECT count(*) FROM ledger.journal").fetchone() == before
    assert raw.execute("SELECT count(*) FROM ledger.allowances").fetchone() == (0,)


def test_a_zone_the_server_does_not_know_changes_nothing(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """Python's zone list passed it (say, newer tzdata): the SQL function still refuses."""
    book.ensure_tenant("t", 10)
    row = raw.execute(
        "SELECT * FROM ledger.set_allowance('t', 1, 0, 1, now(), 'Mars/Olympus', 0, 0, NULL)"
    ).fetchone()
    assert row == ("unknown_time_zone", None, None)
    assert raw.execute("SELECT count(*) FROM ledger.allowances").fetchone() == (0,)
    assert raw.execute("SELECT count(*) FROM ledger.journal").fetchone() == (1,)


def test_refusals_of_the_period_operations(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    out = book.set_allowance("ghost", 100, days=1, anchor=NOW)
    assert out.status is Status.MISSING_TENANT and not out.ok
    with pytest.raises(errors.TenantNotFound):
        out.raise_for_status()
    assert book.clear_allowance("ghost").status is Status.MISSING_TENANT
    with pytest.raises(errors.TenantNotFound):
        book.period_spend("ghost")
    book.ensure_tenant("plain", 10)
    with pytest.raises(errors.NoAllowance):
        book.period_spend("plain")
    with pytest.raises(errors.InputError):
        book.period_spend("plain", period_index=1.5)  # type: ignore[arg-type]
    with pytest.raises(errors.InputError):
        book.period_spend("plain", period_index=2**40)
    for bad in (0, -1, True, 1.0):
        with pytest.raises(errors.InputError):
            book.renew_periods(limit=bad)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidTenantId):
        book.clear_allowance("")
    with pytest.raises(errors.InvalidTenantId):
        book.period_spend(7)  # type: ignore[arg-type]
    with pytest.raises(errors.InputError):
        book.clear_allowance("plain", idempotency_key="")
    with pytest.raises(errors.InputError):
        book.clear_allowance("plain", idempotency_key="\x00")
    assert raw.execute("SELECT count(*) FROM ledger.allowances").fetchone() == (0,)
    assert raw.execute("SELECT count(*) FROM ledger.journal").fetchone() == (1,)


# ------------------------------------------------------------------ renewal


@pytest.mark.parametrize(
    ("low", "high", "remaining", "carried"),
    [
        (0, 0, 500, 0),  # reset
        (0, 0, 0, 0),
        (200, 300, 50, 200),  # the minimum tops the carry up
        (200, 300, 500, 300),  # the maximum caps it
        (200, 300, 250, 250),
        (0, 10**12, 500, 500),  # carry everything
    ],
)
def test_renewal_applies_the_rollover_rule_and_moves_initial_by_the_difference(
    book: ledger.Ledger,
    raw: psycopg.Connection,
    low: int,
    high: int,
    remaining: int,
    carried: int,
) -> None:
    k = daily(book, "t", remaining, 100, low=low, high=high)
    initial, before, reserved, committed = balances(book, "t")
    backdate(raw, "t", 1)
    assert book.renew_periods() == ledger.Renewals(1, 1)
    after = carried + 100
    assert balances(book, "t") == (initial + after - before, after, reserved, committed)
    assert entries(raw, "t")[-1] == ("renew", k + 1, 100, carried, initial + after - before, after)
    assert book.period_spend("t").allowance_microcents == 100
    clean(book)


def test_an_idle_tenant_renews_each_missed_period_once_in_order(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    k = daily(book, "t", 1000, 100, low=0, high=250)
    book.ensure_tenant("plain", 7)
    backdate(raw, "t", 5)
    out = book.try_reserve("t", 10)  # the first write of the period renews lazily
    assert out.ok and out.remaining_microcents == 350 - 10
    # 1000 -> 250+100 -> 250+100 ... : each period its own entry, keyed by its index.
    renew = entries(raw, "t", "renew")[1:]
    assert [(e[1], e[2], e[3], e[5]) for e in renew] == [
        (k + 1, 100, 250, 350),
        (k + 2, 100, 250, 350),
        (k + 3, 100, 250, 350),
        (k + 4, 100, 250, 350),
        (k + 5, 100, 250, 350),
    ]
    assert entries(raw, "t")[-1][:2] == ("reserve", k + 5)
    assert book.renew_periods() == ledger.Renewals(0, 0)
    assert entries(raw, "plain") == [("create", None, 7, None, 7, 7)]
    # The journal dates each renewal at its boundary.
    dates = raw.execute(
        "SELECT created_at FROM ledger.journal WHERE op = 'renew' AND period_index > %s "
        "ORDER BY seq",
        (k,),
    ).fetchall()
    assert [b[0] - a[0] for a, b in itertools.pairwise(dates)] == [DAY] * 4
    past = book.period_spend("t", k + 2)
    assert (past.spent_microcents, past.allowance_microcents, past.remaining_microcents) == (
        0,
        100,
        None,
    )
    clean(book)


@pytest.mark.parametrize(
    "operation", ["reserve", "commit", "release", "top_up", "cap", "expire", "adjust", "refund"]
)
def test_every_write_renews_a_due_tenant_first(
    book: ledger.Ledger, raw: psycopg.Connection, operation: str
) -> None:
    k = daily(book, "t", 1000, 100)  # reset: the renewal leaves 100 (+ what the hold returns)
    hold = book.try_reserve("t", 40, ttl=1 if operation == "expire" else None).reservation_id
    assert hold is not None
    fresh = book.try_reserve("t", 5).reservation_id
    spent = book.try_reserve("t", 10).reservation_id
    assert spent is not None and book.commit(spent, 10, tenant_id="t").ok
    backdate(raw, "t", 2)
    if operation == "expire":
        time.sleep(1.1)
    if operation == "reserve":
        assert book.try_reserve("t", 30).remaining_microcents == 70
    elif operation == "commit":
        assert book.commit(hold, 25).ok
    elif operation == "release":
        assert book.release(hold).ok
    elif operation == "top_up":
        assert book.top_up_tenant("t", 7).remaining_microcents == 107
    elif operation == "cap":
        book.set_max_reserved_microcents("t", 1000)
    elif operation == "adjust":
        assert book.adjust("t", 9, reason="goodwill").remaining_microcents == 109
    elif operation == "refund":  # a commit of the closed period, refunded into this one
        assert book.refund("t", spent, 4, reason="partial").remaining_microcents == 104
        assert book.period_spend("t", k).spent_microcents == 10 - 4  # netted in its period
        assert book.period_spend("t", k + 2).spent_microcents == 0
    else:
        assert book.expire_holds() == 1
    log = entries(raw, "t")
    renews = [i for i, e in enumerate(log) if e[0] == "renew"]
    assert [log[i][1] for i in renews] == [k, k + 1, k + 2]
    assert renews[-1] == len(log) - 2  # renewed just before the operation's own entry
    # Holds from the closed period: the released/expired one forfeits its 40, so
    # remaining stays at the renewed 100; a commit forfeits 15 of its 40.
    expected_remaining = {"reserve": 70, "top_up": 107, "adjust": 109, "refund": 104}.get(
        operation, 100
    )
    assert balances(book, "t")[1] == expected_remaining
    assert book.release(fresh).ok  # the other crossing hold
    clean(book)


def test_batches_renew_due_tenants_first(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    k = daily(book, "t", 1000, 100)
    daily(book, "u", 1000, 100)
    backdate(raw, "t", 1)
    backdate(raw, "u", 3)
    outs = book.try_reserve_many([("t", 60), ("u", 60), ("t", 50)])
    assert [o.status for o in outs] == [Status.RESERVED, Status.RESERVED, Status.INSUFFICIENT]
    assert renewals(raw, "t") == [k, k + 1]
    assert len(renewals(raw, "u")) == 4
    assert [e[:2] for e in entries(raw, "t", "reserve")] == [("reserve", k + 1)]
    refused = raw.execute("SELECT tenant_id, op, status, amount_microcents FROM ledger.refusals")
    assert refused.fetchall() == [("t", "reserve", "insufficient", 50)]
    clean(book)


def test_the_sweeper_renews_idle_tenants_in_limited_rounds(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    for name in "abcde":
        daily(book, name, 10, 100)
        backdate(raw, name, 2)
    book.ensure_tenant("plain", 3)
    assert book.renew_periods(limit=2) == ledger.Renewals(2, 4)
    assert book.renew_periods(limit=2) == ledger.Renewals(2, 4)
    assert book.renew_periods(limit=2) == ledger.Renewals(1, 2)
    assert book.renew_periods(limit=2) == ledger.Renewals(0, 0)
    for name in "abcde":
        assert balances(book, name) == (100, 100, 0, 0)
    assert balances(book, "plain") == (3, 3, 0, 0)
    clean(book)


def test_one_tenant_that_cannot_renew_stops_no_sweeper(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """Issue 22 finding 3: a failing tenant was picked first on every call, and both
    sweepers raised there; now it is named in ``skipped`` and the others are served."""
    for name, due in (("a", 1), ("broken", 3), ("c", 1)):
        daily(book, name, 10, 100)
        assert book.try_reserve(name, 5, ttl=timedelta(milliseconds=1)).ok
        backdate(raw, name, due)
    time.sleep(0.05)
    with raw.transaction():  # an operator's hand edit the renewal cannot read
        raw.execute(
            "UPDATE ledger.allowances SET time_zone = 'Nowhere/Atlantis' WHERE tenant_id = 'broken'"
        )
    expired = book.expire_holds()
    assert expired == 2
    assert [s.tenant_id for s in expired.skipped] == ["broken"]
    assert "time zone" in expired.skipped[0].error
    first = book.renew_periods(limit=1)  # broken is the oldest due: reported, not counted
    assert (first.tenants, [s.tenant_id for s in first.skipped]) == (0, ["broken"])
    for name in ("a", "c"):
        assert book.tenant(name).reserved_microcents == 0  # type: ignore[union-attr]
        assert balances(book, name) == (100, 100, 0, 0)
    backdate(raw, "a", 1)
    backdate(raw, "c", 1)
    one = book.renew_periods(limit=1)
    assert (one.tenants, [s.tenant_id for s in one.skipped]) == (1, ["broken"])
    two = book.renew_periods(limit=1)
    assert (two.tenants, [s.tenant_id for s in two.skipped]) == (1, ["broken"])
    assert book.renew_periods(limit=5).tenants == 0
    assert book.tenant("broken").reserved_microcents == 5  # type: ignore[union-attr]
    with raw.transaction():
        raw.execute("UPDATE ledger.allowances SET time_zone = 'UTC' WHERE tenant_id = 'broken'")
    assert book.renew_periods(limit=5) == ledger.Renewals(1, 3)
    assert book.expire_holds() == 1
    clean(book)


@pytest.mark.parametrize(
    "budget,hold,allowance,high,credited",
    [
        # the review's case: 2^62+1 a period with 2^62-1 held: initial would be 2^63
        (2**62 + 1, 2**62 - 1, 2**62 + 1, 0, 2**62),
        # an "unlimited" budget with some spend and a rolling allowance
        (2**63 - 1, 10, 100, 2**63 - 1 - 100, 90),
    ],
)
def test_a_renewal_that_would_overflow_is_clamped_to_what_fits(
    book: ledger.Ledger,
    raw: psycopg.Connection,
    budget: int,
    hold: int,
    allowance: int,
    high: int,
    credited: int,
) -> None:
    """Finding 3: carry, then allowance, are cut so that initial stays within 2^63-1."""
    daily(book, "big", budget, allowance, high=high)
    held = book.try_reserve("big", hold)
    assert held.ok
    if high:
        assert book.commit(held.reservation_id, hold).ok  # type: ignore[arg-type]
    backdate(raw, "big", 1)
    assert book.renew_periods() == ledger.Renewals(1, 1)
    t = book.tenant("big")
    assert t is not None
    assert t.initial_microcents == 2**63 - 1  # as much as fits, and no more
    assert t.remaining_microcents + t.reserved_microcents + t.committed_microcents == 2**63 - 1
    (renew,) = entries(raw, "big", "renew")[-1:]
    assert renew[0] == "renew" and renew[2] == credited
    assert book.try_reserve("big", 1).ok  # every write still works
    assert book.expire_holds() == 0
    clean(book)


# ---------------------------------------------------------- crossing holds


@pytest.mark.parametrize("policy", ["reset", "rollover"])
def test_holds_settle_against_their_own_period(
    book: ledger.Ledger, raw: psycopg.Connection, policy: str
) -> None:
    high = 0 if policy == "reset" else 10_000
    k = daily(book, "t", 1000, 100, high=high)
    under, over, released, kept = (
        book.try_reserve("t", n).reservation_id for n in (100, 100, 100, 100)
    )
    assert None not in (under, over, released, kept)
    backdate(raw, "t", 1)
    book.renew_periods()
    # Renewal: 600 left; reset keeps 0 of it, rollover all of it.
    base = 100 if policy == "reset" else 700
    assert balances(book, "t")[1:] == (base, 400, 0)
    initial = balances(book, "t")[0]
    # Under the hold: the 40 left unspent is forfeited, remaining does not move.
    assert book.commit(under, 60, tenant_id="t").remaining_microcents == base  # type: ignore[arg-type]
    # Over the hold: the 30 beyond it comes from the current period.
    assert book.commit(over, 130).remaining_microcents == base - 30  # type: ignore[arg-type]
    # Released: the whole hold is forfeited.
    assert book.release(released, tenant_id="t").remaining_microcents == base - 30  # type: ignore[arg-type]
    assert balances(book, "t") == (initial - 40 - 100, base - 30, 100, 190)
    # An overrun the current period cannot pay is refused, nothing changes.
    refused = book.commit(kept, 100 + base)  # type: ignore[arg-type]
    assert refused.status is Status.OVERRUN
    assert balances(book, "t") == (initial - 40 - 100, base - 30, 100, 190)
    spent = book.period_spend("t", k)
    assert (spent.spent_microcents, spent.held_microcents) == (190, 100)
    assert book.period_spend("t").spent_microcents == 0
    settled = [e[:2] for e in entries(raw, "t") if e[0] in ("commit", "release")]
    assert settled == [("commit", k), ("commit", k), ("release", k)]
    clean(book)


def test_crossing_holds_in_batches_and_expiry(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    k = daily(book, "t", 1000, 100)
    h = [book.try_reserve("t", 100).reservation_id for _ in range(4)]
    lapsing = book.try_reserve("t", 100, ttl=1).reservation_id
    assert None not in h and lapsing is not None
    backdate(raw, "t", 1)
    time.sleep(1.1)
    outs = book.commit_many([CommitItem(h[0], 70), CommitItem(h[1], 120)])  # type: ignore[arg-type]
    assert all(o.ok for o in outs)
    assert book.release_many([ReleaseItem(h[2])])[0].ok  # type: ignore[arg-type]
    assert book.expire_holds() == 1
    # Renewed to 100 (reset); 30 + 100 + 100 forfeited; 20 overrun paid from 100.
    assert renewals(raw, "t") == [k, k + 1]
    assert balances(book, "t") == (1000 - 500 + 100 - 30 - 100 - 100, 80, 100, 190)
    expired = entries(raw, "t", "expire")
    assert [e[:2] for e in expired] == [("expire", k)]
    h4 = h[3]
    assert h4 is not None
    assert book.commit_many([(h4, 100)])[0].ok
    clean(book)


# ------------------------------------------------------------ refusal log


def test_refusals_are_logged_once_with_their_final_status(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("t", 100)
    assert book.try_reserve("t", 101).status is Status.INSUFFICIENT
    book.set_max_reserved_microcents("t", 50)
    assert book.try_reserve("t", 60).status is Status.EXPOSURE_LIMIT_EXCEEDED
    hold = book.try_reserve("t", 50).reservation_id
    assert hold is not None
    assert book.commit(hold, 200).status is Status.OVERRUN
    # A reserve blocked only by a lapsed hold succeeds after expiring it: no refusal.
    book.release(hold)
    book.set_max_reserved_microcents("t", 0)
    short = book.try_reserve("t", 90, expires_at=datetime.now(UTC) + timedelta(seconds=1))
    assert short.ok
    time.sleep(1.1)
    assert book.try_reserve("t", 90).ok
    assert book.commit_many([(999_999, 5)])[0].status is Status.MISSING_RESERVATION
    rows = raw.execute(
        "SELECT tenant_id, op, status, amount_microcents FROM ledger.refusals ORDER BY created_at"
    ).fetchall()
    assert rows == [
        ("t", "reserve", "insufficient", 101),
        ("t", "reserve", "exposure_limit_exceeded", 60),
        ("t", "commit", "overrun", 200),
    ]


# ------------------------------------------------------------------- races


def _race_worker(url: str, seed: int, start: float, count: int) -> int:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        book = ledger.Ledger(engine)
        while time.time() < start:
            time.sleep(0.001)
        granted = 0
        for i in range(count):
            if (seed + i) % 5 == 0:
                book.renew_periods()
            elif book.try_reserve("hot", 1).ok:
                granted += 1
        return granted
    finally:
        engine.dispose()


def _settle_race(book: ledger.Ledger, raw: psycopg.Connection, k: int, granted: int) -> None:
    assert renewals(raw, "hot") == [k, k + 1, k + 2, k + 3]
    reserves = entries(raw, "hot", "reserve")
    assert len(reserves) == granted
    assert {e[1] for e in reserves} == {k + 3}
    # Reset policy: the renewal left exactly 1000; each grant took 1.
    assert balances(book, "hot") == (1000, 1000 - granted, granted, 0)
    clean(book)


def test_threads_race_one_tenant_across_boundaries_exactly_once(
    book: ledger.Ledger, raw: psycopg.Connection, db_url: str
) -> None:
    k = daily(book, "hot", 5, 1000)
    backdate(raw, "hot", 3)
    start = time.time() + 0.5
    results: list[int] = []
    lock = threading.Lock()

    def run(seed: int) -> None:
        n = _race_worker(db_url, seed, start, 30)
        with lock:
            results.append(n)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12
    _settle_race(book, raw, k, sum(results))


def test_many_first_writes_of_a_period_renew_it_once(raw: psycopg.Connection, db_url: str) -> None:
    """Round after round, a dozen threads released at once all make the period's first write."""
    engine = create_engine(db_url, pool_size=12, max_overflow=0)
    book = ledger.Ledger(engine)
    k = daily(book, "hot", 0, 100, low=0, high=10**9)  # carry everything
    threads_n, rounds = 12, 8
    barrier = threading.Barrier(threads_n)
    granted = [0] * threads_n

    def run(i: int) -> None:
        for _ in range(rounds):
            barrier.wait()
            if i == 0:
                backdate(raw, "hot", 2)
            barrier.wait()
            if i % 4 == 0:
                book.renew_periods()
            elif book.try_reserve("hot", 1).ok:
                granted[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert renewals(raw, "hot") == list(range(k, k + 2 * rounds + 1))
    total = sum(granted)
    assert total == 9 * rounds
    assert balances(book, "hot") == (100 * 2 * rounds, 100 * 2 * rounds - total, total, 0)
    clean(book)
    engine.dispose()


def test_processes_race_one_tenant_across_boundaries_exactly_once(
    book: ledger.Ledger, raw: psycopg.Connection, db_url: str
) -> None:
    k = daily(book, "hot", 5, 1000)
    backdate(raw, "hot", 3)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        start = time.time() + 3  # spawned interpreters need a moment to import
        pending = [pool.apply_async(_race_worker, (db_url, s, start, 40)) for s in range(4)]
        granted = sum(p.get(timeout=300) for p in pending)
    _settle_race(book, raw, k, granted)


def test_a_real_boundary_passes_under_load(
    book: ledger.Ledger, raw: psycopg.Connection, db_url: str
) -> None:
    """No backdating: the boundary falls two seconds from now while threads spend."""
    k = daily(book, "hot", 10**9, 10**9, ahead=timedelta(seconds=2))
    stop = time.time() + 3.5
    first = book.try_reserve("hot", 1)  # certainly before the boundary
    assert first.ok
    granted: list[tuple[int, int]] = []  # (reservation id, amount)
    lock = threading.Lock()

    def spend(seed: int) -> None:
        engine = create_engine(db_url)
        try:
            mine = ledger.Ledger(engine)
            while time.time() < stop:
                out = mine.try_reserve("hot", 1 + seed % 3)
                if out.ok:
                    with lock:
                        granted.append((out.reservation_id or 0, 1 + seed % 3))
        finally:
            engine.dispose()

    threads = [threading.Thread(target=spend, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last = book.try_reserve("hot", 1)  # certainly after it
    assert last.ok
    granted += [(first.reservation_id or 0, 1), (last.reservation_id or 0, 1)]
    assert renewals(raw, "hot") == [k, k + 1]
    by_period = dict(
        raw.execute(
            "SELECT period_index, sum(amount_microcents) FROM ledger.journal "
            "WHERE tenant_id = 'hot' AND op = 'reserve' GROUP BY period_index"
        ).fetchall()
    )
    assert set(by_period) == {k, k + 1}, "spend should have happened on both sides"
    assert sum(by_period.values()) == sum(a for _, a in granted)
    _initial, remaining, reserved, committed = balances(book, "hot")
    assert remaining == 10**9 - by_period[k + 1]  # reset at the boundary, then spent
    assert reserved == sum(a for _, a in granted) and committed == 0
    clean(book)


# ------------------------------------------------------ restore, certify


def test_restore_keeps_period_state_and_replay_from_a_checkpoint_is_clean(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    k = daily(book, "t", 1000, 100, high=500)
    daily(book, "gone", 10, 100)
    hold = book.try_reserve("t", 100).reservation_id
    assert hold is not None
    cert = book.certify()
    backdate(raw, "t", 1)
    assert book.commit(hold, 30).ok  # crossing, after the checkpoint
    assert book.verify_journal(since_certificate=cert.certificate_id).ok
    clean(book)
    snap = book.snapshot()
    keep = tuple(t for t in snap.tenants if t.tenant_id == "t")
    book.restore_from_snapshot(ledger.BudgetSnapshot(snap.version + 1, keep, 0))
    assert raw.execute("SELECT tenant_id FROM ledger.allowances").fetchall() == [("t",)]
    assert raw.execute("SELECT period_index FROM ledger.tenants").fetchall() == [(k + 1,)]
    assert entries(raw, "t")[-1][:2] == ("restore", k + 1)
    assert book.try_reserve("t", 10).ok
    backdate(raw, "t", 1)
    book.renew_periods()
    assert renewals(raw, "t") == [k, k + 1, k + 2]
    book.ensure_tenant("gone", 10)  # re-created: a plain tenant now
    assert raw.execute(
        "SELECT period_index, renews_at FROM ledger.tenants WHERE tenant_id = 'gone'"
    ).fetchone() == (None, None)
    cert = book.certify()
    book.try_reserve("t", 10)
    assert book.verify_journal(since_certificate=cert.certificate_id).ok
    clean(book)


def test_replay_notices_a_settlement_that_ignored_the_crossing_rule(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """The check this file leans on can fail: a commit entry relabelled to the new period."""
    daily(book, "t", 1000, 100)
    hold = book.try_reserve("t", 100).reservation_id
    backdate(raw, "t", 1)
    assert book.commit(hold, 30).ok  # type: ignore[arg-type]
    clean(book)
    with raw.transaction():
        raw.execute("ALTER TABLE ledger.journal DISABLE TRIGGER journal_no_update_or_delete")
        raw.execute("UPDATE ledger.journal SET period_index = period_index + 1 WHERE op = 'commit'")
        raw.execute("ALTER TABLE ledger.journal ENABLE TRIGGER journal_no_update_or_delete")
    kinds = {d.kind for d in book.verify_journal().discrepancies}
    assert "invalid_entry" in kinds and "hash_mismatch" in kinds


# ------------------------------------------------------------------ async


def test_async_ledger_has_the_same_period_operations(db_url: str, raw: psycopg.Connection) -> None:
    async def main() -> None:
        async with ledger.AsyncLedger(db_url) as book:
            await book.ensure_tenant("t", 500)
            anchor = datetime.now(UTC) - 3 * DAY + timedelta(hours=1)
            out = await book.set_allowance("t", 100, days=1, anchor=anchor, idempotency_key="a")
            assert out == ledger.AllowanceOutcome(Status.ALLOWANCE_SET, 2, 500)
            backdate(raw, "t", 1)
            assert await book.renew_periods() == ledger.Renewals(1, 1)
            spend = await book.period_spend("t")
            assert (spend.period_index, spend.allowance_microcents) == (3, 100)
            assert (await book.period_spend("t", 2)).allowance_microcents == 0
            cleared = await book.clear_allowance("t")
            assert cleared.status is Status.ALLOWANCE_CLEARED
            with pytest.raises(errors.NoAllowance):
                await book.period_spend("t")
            assert (await book.verify_journal()).ok

    asyncio.run(main())


# --------------------------------------------------------------------- CLI


def _cli(url: str, *args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(cli.main, ["--database-url", url, "--json", *args])
    return result.exit_code, json.loads(result.output.strip().splitlines()[-1])


def test_cli_sets_an_allowance_renews_and_shows_period_spend(
    db_url: str, raw: psycopg.Connection
) -> None:
    assert _cli(db_url, "tenant", "create", "acme", "500")[0] == 0
    code, out = _cli(
        db_url, "allowance", "set", "acme", "1.00", "--units", "--months", "1",
        "--time-zone", "Europe/Berlin", "--max-rollover", "0.50", "--idempotency-key", "a1",
    )  # fmt: skip
    assert code == 0 and out["status"] == "allowance_set" and out["remaining_microcents"] == 500
    anchor = raw.execute("SELECT anchor, time_zone FROM ledger.allowances").fetchone()
    assert anchor is not None and anchor[1] == "Europe/Berlin"
    local = anchor[0].astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.day, local.hour, local.minute) == (1, 0, 0)  # start of this local month
    code, spent = _cli(db_url, "period", "acme")
    assert code == 0 and spent["period_index"] == spent["current_period_index"] == 0
    assert spent["allowance_microcents"] == 0 and spent["remaining_microcents"] == 500
    assert _cli(db_url, "renew") == (0, {"tenants": 0, "periods": 0})
    # A month later (the schedule moved back one month): the sweeper renews once.
    with raw.transaction():
        raw.execute("UPDATE ledger.allowances SET anchor = anchor - interval '1 month'")
        raw.execute(
            "UPDATE ledger.tenants SET renews_at = ledger.period_start(a.anchor, a.time_zone, "
            "a.period_months, a.period_days, 1) FROM ledger.allowances AS a"
        )
    assert _cli(db_url, "renew", "--limit", "5") == (0, {"tenants": 1, "periods": 1})
    code, spent = _cli(db_url, "period", "acme", "--index", "1")
    assert code == 0 and spent["allowance_microcents"] == 100_000_000
    assert spent["remaining_microcents"] == 100_000_000 + 500
    human = CliRunner().invoke(cli.main, ["--database-url", db_url, "period", "acme"])
    assert human.exit_code == 0 and "period 1 (current)" in human.output
    code, out = _cli(db_url, "allowance", "clear", "acme")
    assert code == 0 and out["status"] == "allowance_cleared"


@pytest.mark.parametrize(
    "args",
    [
        ("allowance", "set", "acme", "100", "--months", "1", "--days", "1"),
        ("allowance", "set", "acme", "100", "--days", "1", "--time-zone", "Nowhere/Else"),
        ("allowance", "set", "acme", "--days", "1", "--", "-5"),
        ("period", "acme"),
        ("period", "nobody"),
        ("renew", "--limit", "0"),
    ],
)
def test_cli_refuses_bad_period_input_with_exit_2(db_url: str, args: tuple[str, ...]) -> None:
    assert _cli(db_url, "tenant", "create", "acme", "5")[0] == 0
    code, out = _cli(db_url, *args)
    assert code == 2 and out["exit_code"] == 2 and out["error"]


def test_cli_refuses_an_anchor_that_is_not_a_date(db_url: str) -> None:
    args = ["--database-url", db_url, "allowance", "set", "a", "1", "--days", "1", "--anchor", "x"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2 and "ISO 8601" in result.output


def test_cli_refused_allowance_for_a_missing_tenant_exits_1(db_url: str) -> None:
    code, out = _cli(db_url, "allowance", "set", "ghost", "100", "--days", "1")
    assert code == 1 and out["status"] == "missing_tenant"


# ------------------------------------------------------------------- roles


def test_the_application_and_tenant_scoped_roles_run_periods(
    db_url: str, raw: psycopg.Connection
) -> None:
    create_roles(db_url)
    enable_row_level_security(db_url)
    engine = create_engine(db_url, poolclass=pool.NullPool)
    book = ledger.Ledger(engine)
    anchor = datetime.now(UTC) - DAY / 2
    try:
        with engine.connect() as conn:
            conn.execute(text('SET ROLE "ledger_app"'))
            conn.commit()
            with conn.begin():
                book.ensure_tenant("a", 100, connection=conn)
                book.ensure_tenant("b", 100, connection=conn)
                for name in "ab":
                    assert book.set_allowance(name, 50, days=1, anchor=anchor, connection=conn).ok
        backdate(raw, "a", 1)
        backdate(raw, "b", 1)
        with engine.connect() as conn:
            conn.execute(text('SET ROLE "ledger_tenant_app"'))
            conn.commit()
            with conn.begin():
                conn.execute(text("SET LOCAL ledger.tenant_id = 'a'"))
                assert book.try_reserve("a", 10, connection=conn).remaining_microcents == 40
                assert book.try_reserve("a", 100, connection=conn).status is Status.INSUFFICIENT
                assert book.period_spend("a", connection=conn).allowance_microcents == 50
                with pytest.raises(errors.TenantScopedRole):
                    book.renew_periods(connection=conn)
        with engine.connect() as conn:
            conn.execute(text('SET ROLE "ledger_app"'))
            conn.commit()
            with conn.begin():
                assert book.renew_periods(connection=conn) == ledger.Renewals(1, 1)
                assert book.clear_allowance("b", connection=conn).ok
        assert raw.execute("SELECT tenant_id, status FROM ledger.refusals").fetchall() == [
            ("a", "insufficient")
        ]
        clean(book)
    finally:
        engine.dispose()


# ------------------------------------------------------------------- costs


class _Counting(PsycopgExecutor):
    def __init__(self, conn: psycopg.Connection) -> None:
        super().__init__(conn)
        self.sent: list[str] = []

    def handle(self, request: object) -> object:
        if isinstance(request, Fetch):
            self.sent.append(request.sql)
        return super().handle(request)  # type: ignore[arg-type]


def test_only_the_first_write_of_a_period_costs_extra_statements(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """One statement per write, as before, except the period's first: renew, then again."""
    q = for_schema("ledger")
    book.ensure_tenant("plain", 1000)
    daily(book, "t", 1000, 100)
    raw.autocommit = True

    def sent(op: Op[object]) -> list[str]:
        executor = _Counting(raw)
        drive(executor, op.steps())
        return executor.sent

    for tenant in ("plain", "t"):
        assert sent(ops.try_reserve(q, tenant, 10, None, None, None)) == [q.try_reserve]
        assert sent(ops.top_up_tenant(q, tenant, 10, None)) == [q.top_up]
    backdate(raw, "t", 4)
    assert sent(ops.top_up_tenant(q, "t", 10, None)) == [q.top_up, q.renew_tenant, q.top_up]
    assert sent(ops.top_up_tenant(q, "t", 10, None)) == [q.top_up]
    assert len(renewals(raw, "t")) == 5


def test_coalesced_rounds_renew_once(db_url: str, raw: psycopg.Connection) -> None:
    """With coalesce=True the renewal is one more statement in the next round."""
    with ledger.Ledger(db_url, coalesce=True) as book:
        k = daily(book, "hot", 0, 500)
        backdate(raw, "hot", 2)
        barrier = threading.Barrier(8)
        outs: list[ledger.ReserveOutcome] = []

        def run() -> None:
            barrier.wait()
            outs.append(book.try_reserve("hot", 10))

        threads = [threading.Thread(target=run) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(outs) == 8 and all(o.ok for o in outs)
        assert renewals(raw, "hot") == [k, k + 1, k + 2]
        assert balances(book, "hot") == (500, 420, 80, 0)
        clean(book)
