"""As-of queries (docs/asof.md): every answer equals a brute-force reading of the full journal.

The oracle here knows nothing of the ledger's SQL: it reads every journal
entry, checks with :class:`ledger.journal.Replayer` that the recorded
balances follow from replaying the chain, and applies the definition
directly: the state at T is the state after the longest prefix of a
tenant's chain stamped at or before T; spend in (T1, T2] is the commit and
refund entries between the two cuts. Each query is compared with it with
no as-of checkpoints, with checkpoints taken at random points, and with
certificates at random points (which the queries ignore).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg.rows import namedtuple_row
from sqlalchemy import text

import ledger
from ledger import BudgetSnapshot, TenantLedger, errors
from ledger.audit import grant_auditor
from ledger.journal import Replayer, TenantState
from ledger.roles import enable_row_level_security
from tests.integration.cli.test_cli import data, invoke

pytestmark = pytest.mark.pg_versions

US = timedelta(microseconds=1)
Balances = tuple[int, int, int, int, int]


# ------------------------------------------------------------------ the oracle


def read_journal(raw: psycopg.Connection) -> dict[str, list[Any]]:
    """Every entry, per tenant in seq order, after checking replay agrees with what they record."""
    with raw.cursor(row_factory=namedtuple_row) as cur:
        rows = cur.execute("SELECT * FROM ledger.journal ORDER BY tenant_id, seq").fetchall()
    chains: dict[str, list[Any]] = {}
    for row in rows:
        chains.setdefault(row.tenant_id, []).append(row)
    for tenant_id, entries in chains.items():
        report: list[Any] = []
        replayer = Replayer(tenant_id, TenantState(), report)
        for e in entries:
            replayer.apply(e)
        assert report == [], report
    return chains


def cut(entries: list[Any], at: datetime) -> int:
    """How many entries the state at ``at`` includes: those before the first stamped after it."""
    k = 0
    for e in entries:
        if e.created_at > at:
            break
        k += 1
    return k


def oracle_balances(chains: dict[str, list[Any]], at: datetime) -> dict[str, tuple[int, Balances]]:
    out = {}
    for tenant_id, entries in chains.items():
        k = cut(entries, at)
        if k and entries[k - 1].op != "remove":
            e = entries[k - 1]
            out[tenant_id] = (
                e.seq,
                (
                    e.initial_microcents,
                    e.remaining_microcents,
                    e.reserved_microcents,
                    e.committed_microcents,
                    e.max_reserved_microcents,
                ),
            )
    return out


def oracle_spend(
    chains: dict[str, list[Any]], start: datetime, end: datetime
) -> dict[str, tuple[int, int, int, int]]:
    """tenant -> (committed, refunded, commits, refunds), for tenants with any."""
    out = {}
    for tenant_id, entries in chains.items():
        window = entries[cut(entries, start) : cut(entries, end)]
        commits = [e.amount_microcents for e in window if e.op == "commit"]
        refunds = [e.amount_microcents for e in window if e.op == "refund"]
        if commits or refunds:
            out[tenant_id] = (sum(commits), sum(refunds), len(commits), len(refunds))
    return out


def balances_of(b: ledger.BalanceAt) -> tuple[int, Balances]:
    return b.seq, (
        b.initial_microcents,
        b.remaining_microcents,
        b.reserved_microcents,
        b.committed_microcents,
        b.max_reserved_microcents,
    )


def spend_of(t: ledger.TenantSpend) -> tuple[int, int, int, int]:
    return t.committed_microcents, t.refunded_microcents, t.commits, t.refunds


def sample_times(chains: dict[str, list[Any]], rng: random.Random, n: int) -> list[datetime]:
    """Entry stamps and their neighbours (the edges), before everything, and the future."""
    stamps = sorted({e.created_at for entries in chains.values() for e in entries})
    picks = rng.sample(stamps, min(n, len(stamps)))
    times = {stamps[0] - timedelta(hours=1), stamps[-1] + timedelta(days=1)}
    for s in picks:
        times.update((s - US, s, s + US))
    return sorted(times)


def check_everything(
    book: ledger.Ledger, raw: psycopg.Connection, times: list[datetime], rng: random.Random
) -> int:
    """Every query, Python and SQL, against the oracle; returns how many answers were compared."""
    chains = read_journal(raw)
    compared = 0
    for at in times:
        expected = oracle_balances(chains, at)
        got = {b.tenant_id: balances_of(b) for b in book.balances_at(at)}
        assert got == expected, at
        assert [b.tenant_id for b in book.balances_at(at)] == sorted(expected)
        sql = raw.execute("SELECT * FROM ledger.balances_at(%s)", (at,)).fetchall()
        assert {r[0]: (r[1], tuple(r[3:8])) for r in sql} == expected, at
        for tenant_id in chains:
            one = book.balance_at(tenant_id, at)
            assert (None if one is None else balances_of(one)) == expected.get(tenant_id), (
                tenant_id,
                at,
            )
            if one is not None:
                assert one.entry_created_at <= at and one.at == at
        compared += 1
    pairs = [tuple(sorted(rng.sample(times, 2))) for _ in range(min(12, len(times)))]
    # Windows that start or end exactly at a spend entry's stamp: the edges.
    spends = [e.created_at for c in chains.values() for e in c if e.op in ("commit", "refund")]
    for stamp in rng.sample(spends, min(6, len(spends))):
        pairs += [(stamp - US, stamp), (stamp, stamp + US), (min(times[0], stamp), stamp)]
    for start, end in pairs:
        expected_spend = oracle_spend(chains, start, end)
        report = book.spend_between(start, end)
        assert {t.tenant_id: spend_of(t) for t in report} == expected_spend, (start, end)
        assert report.spent_microcents == sum(c - r for c, r, _, _ in expected_spend.values())
        sql = raw.execute("SELECT * FROM ledger.spend_between(%s, %s)", (start, end)).fetchall()
        assert {r[0]: (int(r[2]), int(r[3]), r[4], r[5]) for r in sql} == expected_spend, (
            start,
            end,
        )
        for tenant_id in chains:
            mine = book.spend_between(start, end, tenant_id=tenant_id)
            assert spend_of(mine.get(tenant_id)) == expected_spend.get(tenant_id, (0, 0, 0, 0))
            assert len(mine.tenants) == (tenant_id in expected_spend)
        compared += 1
    return compared


# ------------------------------------------------------------------ workloads


def append_refund(raw: psycopg.Connection, tenant_id: str, commit_id: int, amount: int) -> None:
    """A refund entry as the corrections operation writes it (reservation_id = the commit's hold)."""
    raw.execute(
        """
        WITH t AS (
            UPDATE ledger.tenants
            SET remaining_microcents = remaining_microcents + %(a)s,
                committed_microcents = committed_microcents - %(a)s,
                journal_seq = journal_seq + 1,
                journal_head = ledger.journal_hash(
                    journal_head, tenant_id, journal_seq + 1, 'refund', %(rid)s, %(a)s, NULL,
                    initial_microcents, remaining_microcents + %(a)s, reserved_microcents,
                    committed_microcents - %(a)s, max_reserved_microcents, now(), NULL,
                    NULL, 'refund in a test')
            WHERE tenant_id = %(t)s
            RETURNING *
        )
        INSERT INTO ledger.journal (
            tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
            initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
            max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index, reason)
        SELECT tenant_id, journal_seq, 'refund', %(rid)s, %(a)s, NULL, initial_microcents,
               remaining_microcents, reserved_microcents, committed_microcents,
               max_reserved_microcents, NULL, now(), journal_head, NULL, 'refund in a test'
        FROM t
        """,
        {"t": tenant_id, "rid": commit_id, "a": amount},
    )


def out_of_order(book: ledger.Ledger, tenant_id: str) -> None:
    """Two top-ups whose stamps run against their seq order, as concurrency produces."""
    with book.engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT 1"))  # the transaction has begun: its now() is fixed
        time.sleep(0.002)
        book.top_up_tenant(tenant_id, 5)  # later stamp, earlier seq
        book.top_up_tenant(tenant_id, 7, connection=conn)  # earlier stamp, later seq


def workload(book: ledger.Ledger, raw: psycopg.Connection, rng: random.Random, steps: int) -> None:
    tenants = ["a", "b", "c", "\u00e9t\u00e9"]
    holds: dict[str, list[int]] = {t: [] for t in tenants}
    commits: dict[str, list[tuple[int, int]]] = {t: [] for t in tenants}
    for t in tenants[:2]:
        book.ensure_tenant(t, 1_000_000)
    for _ in range(steps):
        t = rng.choice(tenants)
        if book.tenant(t) is None:
            book.ensure_tenant(t, rng.randrange(1, 2_000_000))
            holds[t], commits[t] = [], []
            continue
        move = rng.random()
        if move < 0.3:
            hold = book.try_reserve(t, rng.randrange(1, 50_000))
            if hold.ok:
                holds[t].append(hold.reservation_id)  # type: ignore[arg-type]
        elif move < 0.5 and holds[t]:
            rid = holds[t].pop(rng.randrange(len(holds[t])))
            amount = rng.randrange(0, 50_000)
            done = book.commit(rid, amount, tenant_id=t)
            if done.ok:
                commits[t].append((rid, done.actual_microcents or 0))
            else:  # an overrun: the hold is still open
                holds[t].append(rid)
        elif move < 0.6 and holds[t]:
            book.release(holds[t].pop(), tenant_id=t)
        elif move < 0.68:
            book.top_up_tenant(t, rng.randrange(1, 10_000))
        elif move < 0.73 and commits[t]:
            rid, left = commits[t].pop()
            if left:
                append_refund(raw, t, rid, rng.randrange(1, left + 1))
        elif move < 0.78:
            out_of_order(book, t)
        elif move < 0.83:
            book.asof_checkpoint()
        elif move < 0.87:
            book.certify()
        elif move < 0.9:
            book.set_max_reserved_microcents(t, rng.choice([0, 10_000_000]))
        elif move < 0.93:
            # Remove one tenant by restoring a snapshot without it (holds are voided).
            snap = book.snapshot()
            kept = tuple(
                TenantLedger(
                    x.tenant_id,
                    x.initial_microcents - x.reserved_microcents,
                    x.remaining_microcents,
                    0,
                    x.committed_microcents,
                )
                for x in snap.tenants
                if x.tenant_id != t
            )
            book.restore_from_snapshot(BudgetSnapshot(snap.version + 1, kept, 0))
            holds = {x: [] for x in tenants}
            commits = {x: [] for x in tenants}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_answers_equal_the_journal_with_and_without_checkpoints(
    book: ledger.Ledger, raw: psycopg.Connection, seed: int
) -> None:
    rng = random.Random(seed)
    workload(book, raw, rng, 160)
    chains = read_journal(raw)
    ops = {e.op for entries in chains.values() for e in entries}
    assert {"create", "reserve", "commit", "release", "top_up", "refund"} <= ops, ops
    marks = raw.execute("SELECT count(*) FROM ledger.asof_checkpoints").fetchone()[0]
    assert marks > 0
    times = sample_times(chains, rng, 25)
    # Stamps really do run against seq somewhere (the definition matters).
    assert any(
        later.created_at < earlier.created_at
        for entries in chains.values()
        for earlier, later in itertools.pairwise(entries)
    )
    assert check_everything(book, raw, times, random.Random(seed)) > 0  # with checkpoints
    raw.execute("DELETE FROM ledger.asof_checkpoints")
    check_everything(book, raw, times, random.Random(seed))  # none at all
    for _ in range(3):  # many: after every further entry
        book.top_up_tenant("a", 1) if book.tenant("a") else book.ensure_tenant("a", 1)
        book.asof_checkpoint()
    raw.execute("DELETE FROM ledger.certificate_checkpoints")
    raw.execute("DELETE FROM ledger.certificates")
    check_everything(book, raw, times, random.Random(seed))  # no certificates either
    assert book.verify_journal().ok


def test_a_checkpoint_is_consulted_so_the_comparison_means_something(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """A forged checkpoint moves the answer: the queries do start from checkpoints."""
    book.ensure_tenant("a", 100)
    first = book.balance_at("a", datetime.now(UTC))
    assert first is not None
    time.sleep(0.002)
    book.top_up_tenant("a", 5)
    at = first.entry_created_at
    assert balances_of(book.balance_at("a", at))[1][0] == 100  # type: ignore[arg-type]
    raw.execute(
        "INSERT INTO ledger.asof_checkpoints (tenant_id, journal_seq, effective_at, commits,"
        " committed_microcents, refunds, refunded_microcents) VALUES ('a', 2, %s, 0, 0, 0, 0)",
        (at,),
    )  # false: entry 2 is stamped after `at`
    assert balances_of(book.balance_at("a", at))[1][0] == 105  # type: ignore[arg-type]
    assert raw.execute(
        "SELECT initial_microcents FROM ledger.balances_at(%s)", (at,)
    ).fetchone() == (105,)
    # Spend reads a checkpoint's running totals when one lies inside the window.
    raw.execute("DELETE FROM ledger.asof_checkpoints")
    for amount in (10, 7):
        hold = book.try_reserve("a", amount)
        book.commit(hold.reservation_id, amount)  # type: ignore[arg-type]
        if amount == 10:
            book.asof_checkpoint()
    end = datetime.now(UTC)
    assert book.spend_between(at, end).get("a").spent_microcents == 17
    raw.execute("UPDATE ledger.asof_checkpoints SET committed_microcents = 1010")
    assert book.spend_between(at, end).get("a").spent_microcents == 1017
    assert book.spend_between(at, end, tenant_id="a").get("a").spent_microcents == 1017
    assert raw.execute(
        "SELECT spent_microcents FROM ledger.spend_between(%s, %s)", (at, end)
    ).fetchone() == (1017,)


def test_checkpoint_rows_are_exact_and_incremental(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    assert book.asof_checkpoint() == ledger.AsOfCheckpoint(0, 0)
    book.ensure_tenant("a", 10)
    book.ensure_tenant("b", 10)
    out_of_order(book, "a")
    assert book.asof_checkpoint() == ledger.AsOfCheckpoint(2, 4)
    assert book.asof_checkpoint() == ledger.AsOfCheckpoint(0, 0)
    book.top_up_tenant("a", 1)
    assert book.asof_checkpoint() == ledger.AsOfCheckpoint(1, 1)
    hold = book.try_reserve("b", 6)
    book.commit(hold.reservation_id, 4)  # type: ignore[arg-type]
    append_refund(raw, "b", hold.reservation_id, 3)  # type: ignore[arg-type]
    assert book.asof_checkpoint() == ledger.AsOfCheckpoint(1, 3)
    rows = raw.execute(
        "SELECT m.tenant_id, m.journal_seq, (m.effective_at, m.commits, m.committed_microcents,"
        "  m.refunds, m.refunded_microcents) = ("
        "  SELECT max(created_at), count(*) FILTER (WHERE op = 'commit'),"
        "         COALESCE(sum(amount_microcents) FILTER (WHERE op = 'commit'), 0),"
        "         count(*) FILTER (WHERE op = 'refund'),"
        "         COALESCE(sum(amount_microcents) FILTER (WHERE op = 'refund'), 0)"
        "  FROM ledger.journal AS j WHERE j.tenant_id = m.tenant_id AND j.seq <= m.journal_seq)"
        " FROM ledger.asof_checkpoints AS m ORDER BY 1, 2"
    ).fetchall()
    assert rows == [("a", 3, True), ("a", 4, True), ("b", 1, True), ("b", 4, True)]


# ------------------------------------------------------------------ edges


def test_before_creation_in_the_future_and_unknown(book: ledger.Ledger) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    book.ensure_tenant("a", 1_000)
    hold = book.try_reserve("a", 300)
    book.commit(hold.reservation_id, 200)  # type: ignore[arg-type]
    assert book.balance_at("a", before) is None
    assert book.balances_at(before) == []
    future = datetime.now(UTC) + timedelta(days=365)
    now = book.balance_at("a", future)
    assert now is not None and balances_of(now)[1] == (1_000, 800, 0, 200, 0)
    assert [b.tenant_id for b in book.balances_at(future)] == ["a"]
    assert book.balance_at("nobody", future) is None
    empty = book.spend_between(before, future, tenant_id="nobody")
    assert empty.tenants == () and empty.get("nobody").spent_microcents == 0
    assert book.spend_between(before, future).get("a").spent_microcents == 200
    assert book.spend_between(future, future).tenants == ()  # an empty window


def test_time_zones_are_instants(book: ledger.Ledger) -> None:
    book.ensure_tenant("a", 1_000)
    entry = book.balance_at("a", datetime.now(UTC))
    assert entry is not None
    stamp = entry.entry_created_at
    india = timezone(timedelta(hours=5, minutes=30))
    assert book.balance_at("a", stamp.astimezone(india)) == book.balance_at(
        "a", stamp.astimezone(india)
    )
    assert balances_of(book.balance_at("a", stamp.astimezone(india))) == balances_of(entry)  # type: ignore[arg-type]
    assert book.balance_at("a", (stamp - US).astimezone(india)) is None


@pytest.mark.parametrize(
    "bad",
    [
        datetime(2026, 1, 1),  # naive
        date(2026, 1, 1),
        "2026-01-01T00:00:00Z",
        None,
        1_700_000_000,
    ],
)
def test_times_must_be_aware_datetimes(book: ledger.Ledger, bad: object) -> None:
    ok = datetime.now(UTC)
    with pytest.raises(errors.InputError, match="datetime"):
        book.balance_at("a", bad)  # type: ignore[arg-type]
    with pytest.raises(errors.InputError, match="datetime"):
        book.balances_at(bad)  # type: ignore[arg-type]
    with pytest.raises(errors.InputError, match="datetime"):
        book.spend_between(bad, ok)  # type: ignore[arg-type]
    with pytest.raises(errors.InputError, match="datetime"):
        book.spend_between(ok, bad)  # type: ignore[arg-type]


def test_start_after_end_and_bad_tenant_ids_are_refused(book: ledger.Ledger) -> None:
    now = datetime.now(UTC)
    with pytest.raises(errors.InputError, match="after end"):
        book.spend_between(now, now - US)
    with pytest.raises(errors.InputError, match="after end"):
        book.spend_between(now, now - US, tenant_id="a")
    with pytest.raises(errors.InvalidTenantId):
        book.balance_at("", now)
    with pytest.raises(errors.InvalidTenantId):
        book.spend_between(now, now, tenant_id="x" * 300)


def test_removed_then_recreated(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("a", 100)
    book.ensure_tenant("b", 100)
    hold = book.try_reserve("a", 40)
    book.commit(hold.reservation_id, 40)  # type: ignore[arg-type]
    alive = datetime.now(UTC)
    time.sleep(0.002)
    book.restore_from_snapshot(BudgetSnapshot(50, (TenantLedger("b", 100, 100, 0, 0),), 0))
    gone = datetime.now(UTC)
    time.sleep(0.002)
    book.ensure_tenant("a", 7)
    back = datetime.now(UTC)
    assert balances_of(book.balance_at("a", alive))[1] == (100, 60, 0, 40, 0)  # type: ignore[arg-type]
    assert book.balance_at("a", gone) is None
    assert [b.tenant_id for b in book.balances_at(gone)] == ["b"]
    again = book.balance_at("a", back)
    assert again is not None and balances_of(again) == (5, (7, 7, 0, 0, 0))  # the chain goes on
    assert book.spend_between(alive - timedelta(hours=1), back).get("a").spent_microcents == 40
    assert book.spend_between(alive, back).tenants == ()


def test_refunds_reduce_spend_in_their_window(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("a", 1_000)
    start = datetime.now(UTC)
    hold = book.try_reserve("a", 500)
    book.commit(hold.reservation_id, 500)  # type: ignore[arg-type]
    middle = datetime.now(UTC)
    time.sleep(0.002)
    append_refund(raw, "a", hold.reservation_id, 120)  # type: ignore[arg-type]
    end = datetime.now(UTC)
    whole = book.spend_between(start, end).get("a")
    assert (whole.spent_microcents, whole.refunds) == (380, 1)
    assert book.spend_between(middle, end).get("a").spent_microcents == -120
    assert book.spend_between(start, middle).get("a").spent_microcents == 500
    assert balances_of(book.balance_at("a", end))[1] == (1_000, 620, 0, 380, 0)  # type: ignore[arg-type]
    assert book.verify_journal().ok  # replay accepts the refund entry


# ------------------------------------------------------------------ concurrency


def test_answers_for_the_past_do_not_change_while_writers_run(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    for t in ("hot", "cold"):
        book.ensure_tenant(t, 10**12)
    for _ in range(20):
        hold = book.try_reserve("hot", 1_000)
        book.commit(hold.reservation_id, 700)  # type: ignore[arg-type]
    past = datetime.now(UTC)
    time.sleep(0.005)
    origin = past - timedelta(hours=1)
    expected = (
        book.balances_at(past),
        book.spend_between(origin, past),
        book.balance_at("hot", past),
    )
    stop = threading.Event()
    failures: list[BaseException] = []
    written = [0]
    count = threading.Lock()

    def writer(tenant: str) -> None:
        with ledger.Ledger(book.engine) as mine:
            while not stop.is_set():
                try:
                    hold = mine.try_reserve(tenant, 1_000)
                    mine.commit(hold.reservation_id, 500)  # type: ignore[arg-type]
                    with count:
                        written[0] += 1
                except BaseException as exc:  # pragma: no cover - reported below
                    failures.append(exc)
                    return

    def checkpointer() -> None:
        with ledger.Ledger(book.engine) as mine:
            while not stop.is_set():
                mine.asof_checkpoint()
                time.sleep(0.01)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("hot", "hot", "cold")]
    threads.append(threading.Thread(target=checkpointer))
    for th in threads:
        th.start()
    try:
        deadline = time.monotonic() + 3
        checks = 0
        while time.monotonic() < deadline:
            now = (
                book.balances_at(past),
                book.spend_between(origin, past),
                book.balance_at("hot", past),
            )
            assert now == expected
            checks += 1
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert not failures, failures
    assert written[0] > 20 and checks > 5
    later = datetime.now(UTC)
    assert book.spend_between(past, later).spent_microcents == written[0] * 500
    check_everything(book, raw, [past, later], random.Random(0))


# ------------------------------------------------------------------ async, roles, CLI


def test_async_ledger_gives_the_same_answers(book: ledger.Ledger, db_url: str) -> None:
    book.ensure_tenant("a", 1_000)
    hold = book.try_reserve("a", 10)
    book.commit(hold.reservation_id, 10)  # type: ignore[arg-type]
    book.asof_checkpoint()
    at = datetime.now(UTC)
    start = at - timedelta(hours=1)

    async def main() -> tuple[Any, ...]:
        async with ledger.AsyncLedger(db_url) as abook:
            return (
                await abook.balance_at("a", at),
                await abook.balances_at(at),
                await abook.spend_between(start, at),
                await abook.spend_between(start, at, tenant_id="a"),
                await abook.asof_checkpoint(),
            )

    one, every, spend, mine, mark = asyncio.run(main())
    assert one == book.balance_at("a", at)
    assert every == book.balances_at(at)
    assert spend == book.spend_between(start, at) == mine
    assert mark == ledger.AsOfCheckpoint(0, 0)


def test_auditor_calls_the_functions_a_tenant_role_cannot(
    book: ledger.Ledger, raw: psycopg.Connection, db_url: str
) -> None:
    book.ensure_tenant("a", 10)
    book.ensure_tenant("b", 20)
    grant_auditor(db_url)
    enable_row_level_security(db_url)
    at = datetime.now(UTC)
    raw.execute("SET ROLE ledger_auditor")
    try:
        rows = raw.execute("SELECT tenant_id FROM ledger.balances_at(%s)", (at,)).fetchall()
        assert rows == [("a",), ("b",)]
        assert raw.execute(
            "SELECT count(*) FROM ledger.spend_between(%s, %s)", (at - timedelta(days=1), at)
        ).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute("SELECT ledger.asof_cut('a', 1, 0, now())")
    finally:
        raw.execute("RESET ROLE")
    raw.execute("SET ROLE ledger_tenant_app")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute("SELECT * FROM ledger.balances_at(now())")
    finally:
        raw.execute("RESET ROLE")


def test_cli_balances_spend_and_checkpoint(book: ledger.Ledger, db_url: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    book.ensure_tenant("acme", 1_000)
    hold = book.try_reserve("acme", 300)
    book.commit(hold.reservation_id, 250)  # type: ignore[arg-type]
    after = datetime.now(UTC).isoformat()
    assert data(invoke(db_url, "asof-checkpoint")) == {"tenants": 1, "entries": 3}
    every = data(invoke(db_url, "balances", "--at", after))
    assert [t["tenant_id"] for t in every["tenants"]] == ["acme"]
    assert every["tenants"][0]["committed_microcents"] == 250
    one = data(invoke(db_url, "balances", "--at", after, "--tenant", "acme"))
    assert one["tenants"] == every["tenants"]
    missing = invoke(db_url, "balances", "--at", before.isoformat(), "--tenant", "acme")
    assert missing.exit_code == 1 and "did not exist" in data(missing)["error"]
    spent = data(invoke(db_url, "spend", "--from", before.isoformat(), "--to", after))
    assert spent["spent_microcents"] == 250 and spent["tenants"][0]["commits"] == 1
    mine = data(
        invoke(db_url, "spend", "--from", before.isoformat(), "--to", after, "--tenant", "acme")
    )
    assert mine["tenants"] == spent["tenants"]
    human = invoke(db_url, "spend", "--from", before.isoformat(), "--to", after, as_json=False)
    assert human.exit_code == 0 and "acme" in human.output and "total" in human.output
    shown = invoke(db_url, "balances", "--at", after, as_json=False)
    assert shown.exit_code == 0 and "acme" in shown.output
    for args in (
        ("balances", "--at", "2026-01-01T00:00:00"),  # no offset
        ("balances", "--at", "yesterday"),
        ("spend", "--from", after, "--to", before.isoformat()),  # reversed
    ):
        refused = invoke(db_url, *args)
        assert refused.exit_code == 2, (args, refused.output)
