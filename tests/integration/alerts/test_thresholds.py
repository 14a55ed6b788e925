"""Thresholds: when they fire, the re-arm rule, every write path, bad input (docs/alerts.md)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

import ledger
from ledger import errors
from tests.integration.periods.test_periods import DAY, backdate, daily

pytestmark = pytest.mark.pg_versions


def fired(book: ledger.Ledger, tenant: str | None = None) -> list[tuple[str, int | None]]:
    """(threshold, period) of every alert, oldest first."""
    return [(r.alert.threshold, r.alert.period_index) for r in book.list_alerts(tenant)][::-1]


def spend(book: ledger.Ledger, tenant: str, amount: int) -> int:
    rid = book.try_reserve(tenant, amount).raise_for_status().reservation_id
    assert rid is not None
    book.commit(rid, amount, tenant_id=tenant).raise_for_status()
    return rid


def test_spent_percent_fires_once_when_crossed_with_the_balances_of_the_crossing(
    book: ledger.Ledger,
) -> None:
    book.ensure_tenant("t", 1_000)
    assert book.set_threshold("t", "half", spent_percent=50) is True
    assert book.set_threshold("t", "most", spent_percent=Decimal("80.5")) is True
    spend(book, "t", 400)
    assert fired(book) == []
    spend(book, "t", 100)  # 500 of 1000: exactly 50 %
    assert fired(book) == [("half", None)]
    alert = book.list_alerts("t")[0].alert
    assert (alert.kind, alert.level_microcents, alert.spent_microcents) == (
        "spent_percent",
        500,
        500,
    )
    assert (alert.remaining_microcents, alert.committed_microcents, alert.initial_microcents) == (
        500,
        500,
        1_000,
    )
    spend(book, "t", 100)
    assert fired(book) == [("half", None)]
    spend(book, "t", 205)  # 805: 80.5 %
    assert fired(book) == [("half", None), ("most", None)]
    spend(book, "t", 1)
    assert len(book.list_alerts()) == 2


def test_absolute_spend_and_remaining_below(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    book.set_threshold("t", "spent-300", spent_microcents=300)
    book.set_threshold("t", "low", remaining_below_microcents=200)
    hold = book.try_reserve("t", 850).raise_for_status()  # remaining 150: below 200
    assert fired(book) == [("low", None)]
    assert hold.reservation_id is not None
    book.commit(hold.reservation_id, 299, tenant_id="t")  # holds are not spend; commits are
    assert fired(book) == [("low", None)]
    spend(book, "t", 1)
    assert fired(book) == [("low", None), ("spent-300", None)]


def test_cross_refund_cross_fires_once_per_period(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    book.set_threshold("t", "half", spent_percent=50)
    rid = spend(book, "t", 600)
    book.refund("t", rid, 300, reason="goodwill").raise_for_status()  # back to 300: un-crossed
    spend(book, "t", 400)  # 700: crossed again
    assert fired(book) == [("half", None)]


def test_a_threshold_already_crossed_fires_when_it_is_set(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    spend(book, "t", 900)
    book.set_threshold("t", "most", spent_percent=80)
    assert fired(book) == [("most", None)]
    # Setting it again (same name, same period) does not fire twice.
    book.set_threshold("t", "most", spent_percent=85)
    assert fired(book) == [("most", None)]
    assert [(t.name, t.kind, t.spent_percent) for t in book.thresholds("t")] == [
        ("most", "spent_percent", Decimal(85))
    ]


def test_clear_stops_firing_and_keeps_past_alerts(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("t", 1_000)
    book.set_threshold("t", "a", spent_microcents=100)
    book.set_threshold("t", "b", spent_microcents=500)
    spend(book, "t", 100)
    assert book.clear_threshold("t", "b") is True
    assert book.clear_threshold("t", "b") is False
    assert raw.execute("SELECT has_thresholds FROM ledger.tenants").fetchone() == (True,)
    spend(book, "t", 500)
    assert fired(book) == [("a", None)]
    assert book.clear_threshold("t", "a") is True
    assert raw.execute("SELECT has_thresholds FROM ledger.tenants").fetchone() == (False,)
    assert book.thresholds("t") == []
    assert fired(book) == [("a", None)]


def test_a_renewal_rearms_and_spend_is_the_current_periods(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    first = daily(book, "p", 0, 1_000)
    book.set_threshold("p", "half", spent_percent=50)  # of the 1,000 allowance
    book.top_up_tenant("p", 1_000)
    spend(book, "p", 499)
    assert fired(book) == []
    spend(book, "p", 1)
    assert fired(book) == [("half", first)]
    backdate(raw, "p", 1)  # the next write renews: period first + 1, spend back to 0
    spend(book, "p", 400)
    assert fired(book) == [("half", first)]
    spend(book, "p", 100)
    assert fired(book) == [("half", first), ("half", first + 1)]
    assert book.period_spend("p").spent_microcents == 500
    assert raw.execute(
        "SELECT period_index, spent_microcents FROM ledger.threshold_spend"
    ).fetchone() == (
        first + 1,
        500,
    )


def test_a_hold_from_the_last_period_counts_there_not_in_the_new_one(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    first = daily(book, "p", 0, 1_000)
    book.top_up_tenant("p", 1_000)
    book.set_threshold("p", "half", spent_microcents=500)
    old = book.try_reserve("p", 600).raise_for_status().reservation_id
    assert old is not None
    backdate(raw, "p", 1)
    book.top_up_tenant("p", 1)  # renews
    book.commit(old, 600, tenant_id="p").raise_for_status()  # spend of period `first`
    assert book.period_spend("p").spent_microcents == 0
    assert fired(book) == []
    assert book.period_spend("p", first).spent_microcents == 600


def test_the_counter_starts_from_the_journal_when_the_first_threshold_is_set(
    book: ledger.Ledger,
) -> None:
    first = daily(book, "p", 0, 1_000)
    book.top_up_tenant("p", 1_000)
    spend(book, "p", 300)
    book.set_threshold("p", "x", spent_microcents=350)
    spend(book, "p", 49)
    assert fired(book) == []
    spend(book, "p", 1)
    assert fired(book) == [("x", first)]


def test_batches_and_coalescing_fire_too(db_url: str) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 1_000)
        book.ensure_tenant("b", 1_000)
        book.set_threshold("a", "x", spent_microcents=300)
        book.set_threshold("b", "x", remaining_below_microcents=900)
        holds = book.try_reserve_many([("a", 200), ("a", 200), ("b", 200)])
        assert fired(book) == [("x", None)]  # b's remaining fell to 800
        ids = [h.reservation_id for h in holds]
        book.commit_many([(ids[0], 200), (ids[1], 200)])
        assert sorted(fired(book)) == [("x", None), ("x", None)]
        assert {r.alert.tenant_id for r in book.list_alerts()} == {"a", "b"}
    with ledger.Ledger(db_url, coalesce=True) as coalesced:
        coalesced.ensure_tenant("c", 1_000)
        coalesced.set_threshold("c", "x", spent_microcents=10)
        spend(coalesced, "c", 10)
        assert fired(coalesced, "c") == [("x", None)]


def test_a_write_that_rolls_back_records_no_alert(book: ledger.Ledger, db_url: str) -> None:
    from sqlalchemy import create_engine

    book.ensure_tenant("t", 1_000)
    book.set_threshold("t", "x", spent_microcents=100)
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rid = book.try_reserve("t", 100).reservation_id
            assert rid is not None
            book.commit(rid, 100, tenant_id="t", connection=conn)
            assert len(book.list_alerts(connection=conn)) == 1  # inside: visible
            conn.rollback()
    finally:
        engine.dispose()
    assert fired(book) == []
    assert book.tenant("t").committed_microcents == 0  # type: ignore[union-attr]


def test_tenants_without_thresholds_never_call_the_trigger(
    book: ledger.Ledger, db_url: str
) -> None:
    """The trigger's WHEN (NEW.has_thresholds) is checked before any function call."""
    from sqlalchemy import create_engine, text

    book.ensure_tenant("plain", 1_000)
    book.ensure_tenant("watched", 1_000)
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL track_functions = 'all'"))

            def calls() -> int:
                return int(
                    conn.execute(
                        text(
                            "SELECT COALESCE(pg_stat_get_xact_function_calls("
                            "'ledger.check_thresholds'::regproc), 0)"
                        )
                    ).scalar_one()
                )

            for _ in range(3):
                rid = book.try_reserve("plain", 10, connection=conn).reservation_id
                assert rid is not None
                book.commit(rid, 10, tenant_id="plain", connection=conn)
                book.top_up_tenant("plain", 1, connection=conn)
            assert calls() == 0
            book.set_threshold("watched", "x", spent_microcents=500, connection=conn)
            rid = book.try_reserve("watched", 10, connection=conn).reservation_id
            assert rid is not None
            book.commit(rid, 10, tenant_id="watched", connection=conn)
            assert calls() == 3  # set_threshold's UPDATE, the reserve, the commit
    finally:
        engine.dispose()


def test_restore_and_snapshots_are_unaffected(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    book.ensure_tenant("u", 1_000)
    before = book.snapshot()
    digest = ledger.ledger_digest(before)
    book.set_threshold("t", "x", spent_microcents=100)
    after = book.snapshot()
    assert after.tenants == before.tenants
    assert ledger.ledger_digest(dataclasses.replace(after, version=before.version)) == digest
    spend(book, "u", 5)
    book.restore_from_snapshot(before)  # puts "u" back; "t" keeps its threshold
    assert [t.name for t in book.thresholds("t")] == ["x"]
    only_u = ledger.BudgetSnapshot(
        before.version, tuple(t for t in before.tenants if t.tenant_id == "u"), 0
    )
    book.restore_from_snapshot(only_u)  # drops "t": its thresholds go with it
    assert book.tenant("t") is None
    book.ensure_tenant("t", 1_000)
    assert book.thresholds("t") == []
    assert book.verify_journal().ok


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"spent_microcents": 1, "spent_percent": 1},
        {"spent_microcents": 0},
        {"spent_microcents": -5},
        {"spent_microcents": 1.5},
        {"spent_microcents": True},
        {"spent_microcents": 2**63},
        {"spent_percent": 0},
        {"spent_percent": 10_001},
        {"spent_percent": float("nan")},
        {"spent_percent": "50"},
        {"remaining_below_microcents": 0},
    ],
)
def test_bad_levels_are_typed_errors_and_change_nothing(
    book: ledger.Ledger, raw: psycopg.Connection, kwargs: dict[str, object]
) -> None:
    book.ensure_tenant("t", 1_000)
    with pytest.raises((errors.InputError, errors.AmountTypeError)):
        book.set_threshold("t", "x", **kwargs)  # type: ignore[arg-type]
    assert book.thresholds("t") == []
    assert raw.execute("SELECT has_thresholds FROM ledger.tenants").fetchone() == (False,)


def test_bad_names_tenants_and_consumer_arguments(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    for name in ("", "x" * 201, "a\x00b", 5):
        with pytest.raises(errors.InputError):
            book.set_threshold("t", name, spent_microcents=1)  # type: ignore[arg-type]
    with pytest.raises(errors.TenantNotFound):
        book.set_threshold("nobody", "x", spent_microcents=1)
    with pytest.raises(errors.TenantNotFound):
        book.clear_threshold("nobody", "x")
    with pytest.raises(errors.InputError):
        book.claim_alerts(0)
    with pytest.raises(errors.InputError):
        book.claim_alerts(1, timedelta(0))
    with pytest.raises(errors.InputError):
        book.ack_alerts([0])
    with pytest.raises(errors.InputError):
        next(iter(book.alerts(poll_interval=-1)))
    with pytest.raises(errors.InputError):
        next(iter(book.alerts(listen=3)))  # type: ignore[arg-type]


def test_claim_lease_ack_and_release(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    for n in range(3):
        book.set_threshold("t", f"x{n}", spent_microcents=10 * (n + 1))
    spend(book, "t", 30)
    first = book.claim_alerts(2, timedelta(seconds=30), consumer="one")
    assert [a.threshold for a in first] == ["x0", "x1"] and first[0].attempts == 1
    second = book.claim_alerts(10, consumer="two")
    assert [a.threshold for a in second] == ["x2"]
    assert book.claim_alerts(10) == []  # all leased
    assert book.ack_alerts([first[0]]) == 1
    assert book.ack_alerts([first[0].alert_id]) == 0
    assert book.release_alerts([first[1]], error="boom") == 1
    again = book.claim_alerts(10)
    assert [(a.threshold, a.attempts) for a in again] == [("x1", 2)]
    book.ack_alerts([again[0], second[0]])
    assert book.alert_backlog().undelivered == 0
    assert all(r.delivered_at is not None for r in book.list_alerts())


def test_an_unacknowledged_alert_comes_back_when_its_lease_ends(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("t", 1_000)
    book.set_threshold("t", "x", spent_microcents=10)
    spend(book, "t", 10)
    [alert] = book.claim_alerts(1, timedelta(seconds=60))
    assert book.claim_alerts(1) == []
    raw.execute("UPDATE ledger.alerts SET claimed_until = now() - interval '1 second'")
    [back] = book.claim_alerts(1)
    assert back.alert_id == alert.alert_id and back.attempts == 2
    backlog = book.alert_backlog()
    assert backlog.undelivered == 1 and backlog.oldest_age_seconds >= 0


def test_the_consumer_acks_after_the_body_and_hands_back_on_error(book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    book.set_threshold("t", "a", spent_microcents=10)
    book.set_threshold("t", "b", spent_microcents=20)
    spend(book, "t", 20)
    seen = []
    with pytest.raises(RuntimeError):
        for alert in book.alerts(limit=10, listen=False, poll_interval=0.05):
            seen.append(alert.threshold)
            if alert.threshold == "b":
                raise RuntimeError("handler failed")
    assert seen == ["a", "b"]
    undelivered = [r.alert.threshold for r in book.list_alerts(undelivered=True)]
    assert undelivered == ["b"]
    # handed back at once: the next consumer gets it without waiting for the lease
    got = [a.threshold for a in book.alerts(listen=False, poll_interval=0.05, idle_timeout=0.2)]
    assert got == ["b"]
    assert book.alert_backlog().undelivered == 0


def test_the_consumer_wakes_on_notify(book: ledger.Ledger, db_url: str) -> None:
    import threading

    book.ensure_tenant("t", 1_000)
    book.set_threshold("t", "x", spent_microcents=10)
    got: list[str] = []

    def consume() -> None:
        with ledger.Ledger(db_url) as other:
            for alert in other.alerts(poll_interval=30, max_alerts=1):
                got.append(alert.threshold)

    thread = threading.Thread(target=consume)
    thread.start()
    spend(book, "t", 10)
    thread.join(20)  # woken by NOTIFY: a poll would take 30 seconds
    assert not thread.is_alive() and got == ["x"]


def test_the_async_face(db_url: str) -> None:
    async def main() -> list[str]:
        async with ledger.AsyncLedger(db_url) as abook:
            await abook.ensure_tenant("t", 1_000)
            await abook.set_threshold("t", "x", spent_percent=10)
            assert [t.name for t in await abook.thresholds("t")] == ["x"]
            rid = (await abook.try_reserve("t", 100)).reservation_id
            assert rid is not None
            await abook.commit(rid, 100, tenant_id="t")
            out = []
            async for alert in abook.alerts(poll_interval=0.05, idle_timeout=0.3):
                out.append(alert.threshold)
            assert (await abook.alert_backlog()).undelivered == 0
            assert await abook.clear_threshold("t", "x")
            return out

    assert asyncio.run(main()) == ["x"]


def test_period_boundary_in_real_time(book: ledger.Ledger) -> None:
    """A boundary passing for real (not backdated): the next write renews and re-arms."""
    book.ensure_tenant("r", 0)
    anchor = datetime.now(UTC) + timedelta(seconds=2) - 10 * DAY
    first = book.set_allowance("r", 1_000, days=1, anchor=anchor).period_index
    assert first is not None
    book.top_up_tenant("r", 1_000)
    book.set_threshold("r", "x", spent_microcents=100)
    spend(book, "r", 100)
    import time

    time.sleep(2.5)
    spend(book, "r", 100)
    assert fired(book) == [("x", first), ("x", first + 1)]


def test_a_write_that_spends_nothing_can_still_cross(book: ledger.Ledger) -> None:
    """Reserves and negative adjustments move remaining or the percent base, not spend."""
    book.ensure_tenant("t", 1_000)
    spend(book, "t", 400)  # remaining 600
    book.set_threshold("t", "half", spent_percent=50)
    book.set_threshold("t", "low", remaining_below_microcents=250)
    book.top_up_tenant("t", 1)  # initial 1,001, remaining 601: nothing crosses
    assert fired(book) == []
    hold = book.try_reserve("t", 400).raise_for_status()  # remaining 201 < 250
    assert fired(book) == [("low", None)]
    book.release(hold.reservation_id, tenant_id="t")  # type: ignore[arg-type]
    book.adjust("t", -300, reason="clawback").raise_for_status()  # 400 of 701: 57 %
    assert fired(book) == [("low", None), ("half", None)]
    alert = book.list_alerts("t")[0].alert
    assert (alert.level_microcents, alert.initial_microcents) == (351, 701)


def test_a_threshold_on_an_ancestor_fires_on_spend_below_it(book: ledger.Ledger) -> None:
    """Every level of a tree is a tenant: spend at a key crosses its team's threshold once."""
    book.ensure_tenant("org", 10_000)
    book.ensure_tenant("team", 1_000, parent="org")
    book.ensure_tenant("key-a", 1_000, parent="team")
    book.ensure_tenant("key-b", 1_000, parent="team")
    book.set_threshold("team", "half", spent_percent=50)
    book.set_threshold("org", "tenth", spent_microcents=1_000)
    spend(book, "key-a", 300)
    assert fired(book) == []
    spend(book, "key-b", 200)  # the team has now spent 500 of 1000, through two keys
    assert fired(book, "team") == [("half", None)]
    assert fired(book, "key-a") == fired(book, "key-b") == fired(book, "org") == []
    alert = book.list_alerts("team")[0].alert
    assert (alert.spent_microcents, alert.committed_microcents, alert.remaining_microcents) == (
        500,
        500,
        500,
    )
    # A hold that is released spends nothing at any level.
    rid = book.try_reserve("key-a", 400).raise_for_status().reservation_id
    assert rid is not None
    book.release(rid).raise_for_status()
    assert fired(book, "org") == []
    spend(book, "key-a", 500)  # org: 1000 spent, exactly its absolute threshold
    assert fired(book, "org") == [("tenth", None)]
    assert len(book.list_alerts()) == 2
