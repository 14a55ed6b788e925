"""Keyed (idempotent) single-tenant calls on Citus: one routed call (ledger/citus/keyed.py).

A keyed call claims its key, applies the operation and records the outcome in
one call of its ``routed_keyed_*`` function on the tenant's worker. What these
tests hold it to:

- every final status it records is exactly ``outcome.to_dict()`` (the JSON the
  three-statement path and plain PostgreSQL record), in one remote command;
- a replay returns the same outcome and changes nothing; another request with
  the same key raises ``IdempotencyConflict`` and changes nothing; keys
  recorded by the three-statement path replay through the function and the
  other way round;
- many threads sending the same key to one hot tenant: one applies, all get its
  outcome, exact sums;
- answers that need the Python steps (lapsed holds, a period renewal, a hold
  that lapsed or is gone) fall back to the three statements: right outcome,
  one worker, no two-phase commit; also inside a batch.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import create_async_engine

import ledger
from ledger import ReserveItem, TenantLedger, errors
from ledger.citus.queries import DistributedQueries
from ledger.outcomes import Outcome

from .conftest import Recorder, Remote, alchemy, logged_engine
from .test_contract import settled

I64 = 2**63 - 1


def rid(out: Any) -> int:
    """The reservation id of a reserved outcome."""
    assert isinstance(out.reservation_id, int), out
    return out.reservation_id


def stored(raw: psycopg.Connection, schema: str, tenant: str, key: str) -> Any:
    row = raw.execute(
        f'SELECT outcome FROM "{schema}".idempotency_keys'
        " WHERE tenant_id = %s AND idempotency_key = %s",
        (tenant, key),
    ).fetchone()
    assert row is not None
    return row[0]


def journal_length(raw: psycopg.Connection, schema: str) -> int:
    return int(raw.execute(f'SELECT count(*) FROM "{schema}".journal').fetchone()[0])  # type: ignore[index]


def balances(book: ledger.Ledger, *tenants: str) -> list[TenantLedger | None]:
    return [book.tenant(t) for t in tenants]


def three_statement_ledger(engine: Engine, book: ledger.Ledger, schema: str) -> ledger.Ledger:
    """A Ledger on the same schema that runs keyed calls as claim, operation, record.

    The routed statements stay; only the one-command keyed calls are left out
    (what a ledger sees where ``distribute`` made no keyed function).
    """
    routed = book._q
    assert isinstance(routed, DistributedQueries) and routed.keyed
    three = ledger.Ledger(engine, schema=schema)
    three._routing._keep(replace(routed, keyed=()))  # these statements from now on
    return three


# ------------------------------------------------------------------ every status


def test_every_final_status_is_recorded_as_to_dict_in_one_command(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("a", 1_000)
    book.ensure_tenant("big", I64)
    book.ensure_tenant("big2", I64)
    book.try_reserve("big", I64 - 10)
    first = book.try_reserve("big2", I64 - 1)
    book.commit(rid(first), I64 - 1, tenant_id="big2")
    one = book.try_reserve("big2", 1)
    over = book.try_reserve("a", 10)
    gone = book.try_reserve("a", 10)

    def cap(value: int) -> Callable[[], None]:
        return lambda: book.set_max_reserved_microcents("a", value)

    steps: list[tuple[str, str, str, Callable[[], Outcome], Callable[[], None] | None]] = [
        ("a", "t1", "topped_up", lambda: book.top_up_tenant("a", 5, idempotency_key="t1"), None),
        ("a", "t2", "overflow", lambda: book.top_up_tenant("a", I64, idempotency_key="t2"), None),
        (
            "nobody",
            "t3",
            "missing_tenant",
            lambda: book.top_up_tenant("nobody", 5, idempotency_key="t3"),
            None,
        ),
        ("a", "r1", "reserved", lambda: book.try_reserve("a", 100, idempotency_key="r1"), None),
        (
            "a",
            "r2",
            "insufficient",
            lambda: book.try_reserve("a", 10**6, idempotency_key="r2"),
            None,
        ),
        (
            "a",
            "r3",
            "exposure_limit_exceeded",
            lambda: book.try_reserve("a", 100, idempotency_key="r3"),
            cap(150),
        ),
        (
            "big",
            "r4",
            "overflow",
            lambda: book.try_reserve("big", 20, idempotency_key="r4"),
            cap(0),
        ),
        (
            "nobody",
            "r5",
            "missing_tenant",
            lambda: book.try_reserve("nobody", 5, idempotency_key="r5"),
            None,
        ),
        (
            "a",
            "c1",
            "overrun",
            lambda: book.commit(rid(over), 10**6, tenant_id="a", idempotency_key="c1"),
            None,
        ),
        (
            "big2",
            "c2",
            "overflow",
            lambda: book.commit(rid(one), 2, tenant_id="big2", idempotency_key="c2"),
            None,
        ),
        (
            "a",
            "c3",
            "committed",
            lambda: book.commit(rid(over), 7, tenant_id="a", idempotency_key="c3"),
            None,
        ),
        (
            "a",
            "l1",
            "released",
            lambda: book.release(rid(gone), tenant_id="a", idempotency_key="l1"),
            None,
        ),
        (
            "a",
            "a1",
            "adjusted",
            lambda: book.adjust("a", -5, reason="fix", idempotency_key="a1"),
            None,
        ),
        (
            "a",
            "a2",
            "insufficient",
            lambda: book.adjust("a", -(10**7), reason="fix", idempotency_key="a2"),
            None,
        ),
        (
            "big",
            "a3",
            "overflow",
            lambda: book.adjust("big", I64, reason="fix", idempotency_key="a3"),
            None,
        ),
        (
            "nobody",
            "a4",
            "missing_tenant",
            lambda: book.adjust("nobody", 5, reason="fix", idempotency_key="a4"),
            None,
        ),
    ]
    for tenant, key, status, call, before in steps:
        if before is not None:
            before()
        with recorder.capture(f"keyed status: {key} {status}") as remote:
            out = call()
        assert out.status == status, (key, out)
        assert remote.one_round_trip(), (key, remote.summary())
        assert "routed_keyed_" in remote.statements[0]
        # Exactly what the three-statement path records: json.dumps(outcome.to_dict()).
        assert stored(raw, schema, tenant, key) == json.loads(json.dumps(out.to_dict())), key
        # A replay: the same outcome, one command, nothing changed.
        state = balances(book, "a", "big", "big2"), journal_length(raw, schema)
        with recorder.capture() as again:
            assert call() == out, key
        assert again.one_round_trip(), (key, again.summary())
        assert (balances(book, "a", "big", "big2"), journal_length(raw, schema)) == state
    settled(book, raw, schema)


# ------------------------------------------------------------------ replay and conflicts


def test_a_different_request_with_the_same_key_conflicts_and_changes_nothing(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("a", 1_000)
    hold = book.try_reserve("a", 100, idempotency_key="k")
    before = balances(book, "a"), journal_length(raw, schema), stored(raw, schema, "a", "k")
    calls: list[Callable[[], Any]] = [
        lambda: book.try_reserve("a", 101, idempotency_key="k"),
        lambda: book.try_reserve("a", 100, ttl=60, idempotency_key="k"),
        lambda: book.top_up_tenant("a", 100, idempotency_key="k"),
        lambda: book.commit(rid(hold), 10, tenant_id="a", idempotency_key="k"),
        lambda: book.release(rid(hold), tenant_id="a", idempotency_key="k"),
        lambda: book.adjust("a", 100, reason="x", idempotency_key="k"),
    ]
    for call in calls:
        with recorder.capture() as remote, pytest.raises(errors.IdempotencyConflict):
            call()
        assert remote.one_round_trip(), remote.summary()
        after = balances(book, "a"), journal_length(raw, schema), stored(raw, schema, "a", "k")
        assert after == before
    settled(book, raw, schema)


def test_keys_replay_across_the_one_command_and_three_statement_paths(
    engine: Engine, book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("a", 1_000)
    three = three_statement_ledger(engine, book, schema)
    with recorder.capture() as remote:
        old = three.try_reserve("a", 100, idempotency_key="old")
    assert len(remote.statements) == 3 and len(remote.nodes) == 1, remote.summary()
    with recorder.capture() as remote:
        new = book.top_up_tenant("a", 50, idempotency_key="new")
    assert remote.one_round_trip(), remote.summary()
    state = balances(book, "a"), journal_length(raw, schema)

    # Recorded by three statements, replayed by the function, and the other way round.
    with recorder.capture() as remote:
        assert book.try_reserve("a", 100, idempotency_key="old") == old
    assert remote.one_round_trip(), remote.summary()
    assert three.top_up_tenant("a", 50, idempotency_key="new") == new
    # Settlements too: committed by one path, replayed by the other.
    settled_once = three.commit(rid(old), 60, tenant_id="a", idempotency_key="c")
    state = balances(book, "a"), journal_length(raw, schema)
    assert book.commit(rid(old), 60, tenant_id="a", idempotency_key="c") == settled_once
    with pytest.raises(errors.IdempotencyConflict):
        book.top_up_tenant("a", 51, idempotency_key="new")
    with pytest.raises(errors.IdempotencyConflict):
        three.try_reserve("a", 101, idempotency_key="old")
    assert (balances(book, "a"), journal_length(raw, schema)) == state
    assert stored(raw, schema, "a", "old") == json.loads(json.dumps(old.to_dict()))
    three.close()
    settled(book, raw, schema)


# ------------------------------------------------------------------ concurrent duplicates


@pytest.fixture
def wide_engine(citus_url: str, recorder: Recorder) -> Iterator[Engine]:
    eng = logged_engine(citus_url, recorder, pool_size=16)
    yield eng
    eng.dispose()


def run_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    failures: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    return results


def test_concurrent_duplicates_apply_once_with_exact_sums(
    wide_engine: Engine, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    threads = 16
    with ledger.Ledger(wide_engine, schema=schema) as book:
        book.ensure_tenant("hot", 1_000_000)

        def once(call: Callable[[], Outcome]) -> tuple[Outcome, Remote]:
            with recorder.capture() as remote:
                out = call()
            return out, remote

        # The same key from every thread at once.
        got = run_threads(
            threads, lambda i: once(lambda: book.try_reserve("hot", 7, idempotency_key="same"))
        )
        outcomes = {out for out, _ in got}
        assert len(outcomes) == 1
        (hold,) = outcomes
        assert hold.status == "reserved"
        assert all(r.one_round_trip() for _, r in got), [r.summary() for _, r in got]
        assert book.tenant("hot") == TenantLedger("hot", 1_000_000, 1_000_000 - 7, 7, 0)

        # 8 keys, each sent by 4 threads: 8 holds, then 8 commits, each sent 4 times.
        keys = [f"k{i % 8}" for i in range(32)]
        got = run_threads(
            32,
            lambda i: once(lambda: book.try_reserve("hot", 100 + i % 8, idempotency_key=keys[i])),
        )
        per_key: dict[str, set[Outcome]] = {}
        for key, (out, _) in zip(keys, got, strict=True):
            per_key.setdefault(key, set()).add(out)
        assert all(len(v) == 1 for v in per_key.values())
        holds = {k: next(iter(v)) for k, v in per_key.items()}
        assert all(h.status == "reserved" for h in holds.values())
        reserved = 7 + sum(100 + i for i in range(8))
        assert book.tenant("hot") == TenantLedger(
            "hot", 1_000_000, 1_000_000 - reserved, reserved, 0
        )
        got = run_threads(
            32,
            lambda i: once(
                lambda: book.commit(
                    rid(holds[keys[i]]),
                    50,
                    tenant_id="hot",
                    idempotency_key="c" + keys[i],
                )
            ),
        )
        assert all(out.status == "committed" for out, _ in got)
        assert all(r.one_round_trip() for _, r in got), [r.summary() for _, r in got]
        assert book.tenant("hot") == TenantLedger("hot", 1_000_000, 1_000_000 - 7 - 400, 7, 400)
        commits = raw.execute(
            f'SELECT count(*) FROM "{schema}".journal WHERE op = %s', ("commit",)
        ).fetchone()
        assert commits == (8,)
        settled(book, raw, schema)


def test_concurrent_duplicates_that_fall_back_apply_once(
    wide_engine: Engine, raw: psycopg.Connection, schema: str
) -> None:
    """The same key from 16 threads where the answer needs lapsed holds expired first."""
    with ledger.Ledger(wide_engine, schema=schema) as book:
        book.ensure_tenant("hot", 1_000)
        for _ in range(3):
            book.try_reserve("hot", 200, ttl=timedelta(microseconds=1))
        time.sleep(0.01)
        got = run_threads(16, lambda i: book.try_reserve("hot", 900, idempotency_key="same"))
        assert len(set(got)) == 1 and got[0].status == "reserved"
        assert book.tenant("hot") == TenantLedger("hot", 1_000, 100, 900, 0)
        expired = raw.execute(
            f'SELECT count(*) FROM "{schema}".journal WHERE op = %s', ("expire",)
        ).fetchone()
        assert expired == (3,)
        settled(book, raw, schema)


# ------------------------------------------------------------------ fallback


def test_answers_that_need_more_statements_fall_back_and_replay(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("a", 1_000)
    book.try_reserve("a", 100, ttl=timedelta(microseconds=1))
    lapsing = book.try_reserve("a", 50, ttl=timedelta(milliseconds=300))
    time.sleep(0.4)

    # try_reserve finds lapsed holds (remaining 850 < 900): expire them, reserve.
    with recorder.capture("keyed fallback: try_reserve (lapsed holds)") as remote:
        out = book.try_reserve("a", 900, idempotency_key="f1")
    assert out.status == "reserved" and out.remaining_microcents == 100
    assert "routed_keyed_" in remote.statements[0]
    assert len(remote.statements) > 1 and len(remote.nodes) == 1 and not remote.two_phase, (
        remote.summary()
    )
    assert stored(raw, schema, "a", "f1") == json.loads(json.dumps(out.to_dict()))
    with recorder.capture() as remote:
        assert book.try_reserve("a", 900, idempotency_key="f1") == out
    assert remote.one_round_trip(), remote.summary()
    assert book.tenant("a") == TenantLedger("a", 1_000, 100, 900, 0)

    # A settlement that finds its hold gone (expired above): 'expired' from the journal.
    late = book.commit(rid(lapsing), 10, tenant_id="a", idempotency_key="f2")
    assert late.status == "expired" and late.returned_microcents == 50
    assert book.commit(rid(lapsing), 10, tenant_id="a", idempotency_key="f2") == late
    # A settlement that finds its hold lapsed: expired now.
    short = book.try_reserve("a", 30, ttl=timedelta(microseconds=1))
    time.sleep(0.01)
    lapsed = book.release(rid(short), tenant_id="a", idempotency_key="f3")
    assert lapsed.status == "expired" and lapsed.returned_microcents == 30
    # A hold that never existed.
    nothing = book.release(12345, tenant_id="a", idempotency_key="f4")
    assert nothing.status == "missing_reservation"
    assert book.release(12345, tenant_id="a", idempotency_key="f4") == nothing
    assert book.tenant("a") == TenantLedger("a", 1_000, 100, 900, 0)
    settled(book, raw, schema)


def test_a_period_renewal_falls_back_and_renews_once(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("p", 1_000)
    day = timedelta(days=1)
    book.set_allowance("p", 500, days=1, anchor=datetime.now(UTC) - 10 * day).raise_for_status()
    # The next boundary in the past: the tenant is due for renewal.
    raw.execute(
        f"UPDATE \"{schema}\".tenants SET renews_at = now() - interval '1 second'"
        " WHERE tenant_id = %s",
        ("p",),
    )
    renewals = (
        f'SELECT count(*) FROM "{schema}".journal WHERE tenant_id = %s AND op = %s',
        ("p", "renew"),
    )
    (before,) = raw.execute(*renewals).fetchone()  # type: ignore[misc]
    with recorder.capture("keyed fallback: top_up_tenant (renewal)") as remote:
        out = book.top_up_tenant("p", 5, idempotency_key="t")
    assert out.status == "topped_up"
    assert len(remote.statements) > 1 and len(remote.nodes) == 1 and not remote.two_phase, (
        remote.summary()
    )
    assert raw.execute(*renewals).fetchone() == (before + 1,)
    assert book.top_up_tenant("p", 5, idempotency_key="t") == out
    assert raw.execute(*renewals).fetchone() == (before + 1,)
    assert stored(raw, schema, "p", "t") == json.loads(json.dumps(out.to_dict()))
    settled(book, raw, schema)


def test_keyed_batch_items_fall_back_inside_the_batch(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str
) -> None:
    book.ensure_tenant("a", 1_000)
    book.ensure_tenant("b", 1_000)
    book.try_reserve("a", 500, ttl=timedelta(microseconds=1))
    time.sleep(0.01)
    items = [
        ReserveItem("a", 800, idempotency_key="i1"),  # lapsed hold first: falls back
        ReserveItem("b", 100, idempotency_key="i2"),
        ReserveItem("b", 100, idempotency_key="i2"),  # same key in the same batch: replay
    ]
    outs = book.try_reserve_many(items)
    assert [o.status for o in outs] == ["reserved", "reserved", "reserved"]
    assert outs[1] == outs[2]
    assert book.try_reserve_many(items) == outs
    assert book.tenant("a") == TenantLedger("a", 1_000, 200, 800, 0)
    assert book.tenant("b") == TenantLedger("b", 1_000, 900, 100, 0)
    settled(book, raw, schema)


def test_async_ledger_keyed_calls_take_one_command(
    citus_url: str, book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    async def scenario() -> None:
        from sqlalchemy import event

        engine = create_async_engine(
            alchemy(citus_url), connect_args={"options": "-c citus.log_remote_commands=on"}
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _listen(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.driver_connection.add_notice_handler(recorder.notice)

        lg = ledger.AsyncLedger(engine, schema=schema)
        await lg.ensure_tenant("a", 1_000)
        with recorder.capture("async: try_reserve (key)") as remote:
            hold = await lg.try_reserve("a", 100, idempotency_key="k")
        assert hold.status == "reserved" and remote.one_round_trip(), remote.summary()
        assert await lg.try_reserve("a", 100, idempotency_key="k") == hold
        with recorder.capture("async: commit (tenant_id, key)") as remote:
            out = await lg.commit(rid(hold), 40, tenant_id="a", idempotency_key="c")
        assert out.status == "committed" and remote.one_round_trip(), remote.summary()
        short = await lg.try_reserve("a", 10, ttl=timedelta(microseconds=1))
        await asyncio.sleep(0.01)
        late = await lg.release(rid(short), tenant_id="a", idempotency_key="l")
        assert late.status == "expired"
        await lg.close()
        await engine.dispose()

    asyncio.run(scenario())
    assert book.tenant("a") == TenantLedger("a", 1_000, 960, 0, 40)
    settled(book, raw, schema)
