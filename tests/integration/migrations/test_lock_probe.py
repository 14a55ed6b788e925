"""Lock probe: upgrading a busy ledger must not make its traffic wait.

A ledger of 100,000 tenants and 20,000 open holds is upgraded while a reader
and a writer loop on it. Their sessions run with ``lock_timeout = 1s``, so the
server itself cancels any statement that waits longer than a second for a
lock: the bound the issue sets is enforced by PostgreSQL, not by a wall clock
on a shared machine. Wall-clock latencies and sampled lock waits are measured
too and printed (docs/migrations.md quotes them).

Two upgrades are probed:
- the previous release's revision to head (today 0006 -> 0009, every
  unreleased revision in one upgrade) with the previous release's
  reserve/commit writer (its statements, kept verbatim in tests/released/) and
  a balance reader: what a rolling deploy runs while the migration does;
- 0001 -> 0003, the once-blocking revision 0002 (DDL, then its backfill in
  batches), with a plain reader of ``tenants``. No writer there: writes by
  a pre-journal application during that upgrade would go unjournaled,
  whatever the locks (docs/migrations.md, "Revision 0002").
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory

import ledger
from ledger import errors, migrator
from ledger._queries import parse
from ledger.migrator import current_revision, head_revision
from tests.conftest import _plain

pytestmark = pytest.mark.pg_versions

TENANTS = 100_000
HOLDS = 20_000
WAIT_BOUND_S = 1.0


@dataclass
class Loop:
    """One client looping on the ledger, timing every operation."""

    name: str
    op: Callable[[], None]
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    lock_timeouts: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                self.op()
            except (errors.LockTimeout, psycopg.errors.LockNotAvailable):
                self.lock_timeouts += 1
            except Exception as exc:  # recorded, and the test fails on it
                self.failures.append(repr(exc))
                return
            self.latencies.append((start, time.monotonic() - start))

    def during(self, window: tuple[float, float]) -> list[float]:
        return [d for s, d in self.latencies if window[0] <= s <= window[1]]


class LockSampler:
    """Samples pg_stat_activity: how long each probe session is seen waiting on a lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.longest: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started: dict[str, float] = {}
        with psycopg.connect(_plain(self.url), autocommit=True) as conn:
            while not self.stop.is_set():
                now = time.monotonic()
                waiting = {
                    row[0]
                    for row in conn.execute(
                        "SELECT application_name FROM pg_stat_activity"
                        " WHERE application_name LIKE 'probe-%' AND wait_event_type = 'Lock'"
                    )
                }
                for name in waiting:
                    started.setdefault(name, now)
                    self.longest[name] = max(self.longest.get(name, 0.0), now - started[name])
                for name in set(started) - waiting:
                    del started[name]
                time.sleep(0.005)

    def __enter__(self) -> LockSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def probe_url(url: str, name: str) -> str:
    """The probe's sessions: named for the sampler, and cancelled after 1 s of lock wait."""
    return psycopg.conninfo.make_conninfo(
        _plain(url),
        application_name=f"probe-{name}",
        options=f"-c lock_timeout={int(WAIT_BOUND_S * 1000)}ms",
    )


def load_ledger(url: str) -> None:
    """100,000 tenants, every fifth with an open hold, written as revision 0001 stored them."""
    with psycopg.connect(_plain(url)) as conn:
        conn.execute(
            """
            INSERT INTO ledger.tenants (tenant_id, initial_microcents, remaining_microcents,
                reserved_microcents, committed_microcents)
            SELECT 't' || lpad(g::text, 6, '0'), 1000000,
                   1000000 - CASE WHEN g %% 5 = 0 THEN 700 ELSE 0 END - g %% 7,
                   CASE WHEN g %% 5 = 0 THEN 700 ELSE 0 END, g %% 7
            FROM generate_series(1, %s) AS g
            """,
            (TENANTS,),
        )
        conn.execute(
            """
            INSERT INTO ledger.reservations (tenant_id, reservation_id, amount_microcents)
            SELECT 't' || lpad(g::text, 6, '0'), nextval('ledger.reservation_id_seq'), 700
            FROM generate_series(5, %s, 5) AS g
            """,
            (TENANTS,),
        )
        conn.execute("ANALYZE")


def report(
    title: str, seconds: float, loops: list[Loop], window: tuple[float, float], sampler: LockSampler
) -> list[str]:
    lines = [f"{title}: upgrade took {seconds:.2f} s"]
    for loop in loops:
        during = sorted(loop.during(window))
        p99 = during[int(len(during) * 0.99) - 1] if during else 0.0
        lines.append(
            f"  {loop.name}: {len(during)} operations during the upgrade; longest "
            f"{max(during, default=0.0) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; longest lock "
            f"wait seen {sampler.longest.get('probe-' + loop.name, 0.0) * 1000:.0f} ms; "
            f"lock timeouts (waits over {WAIT_BOUND_S:.0f} s) {loop.lock_timeouts}"
        )
    return lines


def run_probe(
    title: str, url: str, target: str, loops: list[Loop], upgrade: Callable[[], None] | None = None
) -> tuple[list[str], tuple[float, float]]:
    threads = [threading.Thread(target=loop.run, daemon=True) for loop in loops]
    with LockSampler(url) as sampler:
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the loops are warm and running before the upgrade starts
        start = time.monotonic()
        upgrade() if upgrade else ledger.migrate(url, target)
        end = time.monotonic()
        time.sleep(0.3)
        for loop in loops:
            loop.stop.set()
        for thread in threads:
            thread.join(30)
    return report(title, end - start, loops, (start, end), sampler), (start, end)


def tenant_reader(url: str, name: str) -> tuple[Loop, psycopg.Connection]:
    """A plain reader of tenant balances (raw SQL: it works at every revision)."""
    conn = psycopg.connect(probe_url(url, name), autocommit=True)
    rng = random.Random(2)

    def read_tenant() -> None:
        tenant = f"t{rng.randint(1, TENANTS):06d}"
        conn.execute(
            "SELECT remaining_microcents FROM ledger.tenants WHERE tenant_id = %s", (tenant,)
        ).fetchone()

    return Loop(name, read_tenant), conn


#: The revision the previous release ran on; tests/released/ holds its writer's statements.
RELEASED_WRITER = "0006"


def released_writer(url: str, name: str) -> tuple[Loop, psycopg.Connection]:
    """The previous release's reserve and commit, as it sent them (raw SQL, autocommit)."""
    statements = parse(
        (Path(__file__).resolve().parents[2] / "released" / "spend_0006.sql").read_text()
    )
    reserve, commit = (
        statements[n].replace("{schema}", '"ledger"') for n in ("try_reserve", "commit_for_tenant")
    )
    conn = psycopg.connect(probe_url(url, name), autocommit=True)
    rng = random.Random(4)

    def until_answered(sql: str, params: dict[str, object]) -> tuple[object, ...]:
        while True:  # 'retry' is the statement's own compare-and-swap loop
            row = conn.execute(sql, params).fetchone()
            assert row is not None
            if row[0] != "retry":
                return tuple(row)

    def reserve_and_commit() -> None:
        tenant = f"t{rng.randint(1, TENANTS):06d}"
        hold = until_answered(
            reserve,
            {"tenant_id": tenant, "amount": 50, "ikey": None, "ttl_us": None, "expires_at": None},
        )
        assert hold[0] == "reserved", hold
        done = until_answered(
            commit, {"reservation_id": hold[4], "tenant_id": tenant, "actual": 20, "ikey": None}
        )
        assert done[0] == "committed", done

    return Loop(name, reserve_and_commit), conn


@pytest.fixture
def big_ledger(empty_db_url: str) -> Iterator[str]:
    ledger.migrate(empty_db_url, "0001")
    load_ledger(empty_db_url)
    yield empty_db_url


def test_upgrades_of_a_busy_ledger_make_no_one_wait_over_a_second(
    big_ledger: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = big_ledger
    figures: list[str] = []

    # 0001 -> 0003: revision 0002 and its backfill of 120,000 opening entries.
    reader, reader_conn = tenant_reader(url, "reader-0002")
    lines, window = run_probe("0001 -> 0003 (batched 0002 backfill)", url, "0003", [reader])
    reader_conn.close()
    figures += lines
    assert current_revision(url) == "0003"
    assert reader.failures == []
    assert reader.lock_timeouts == 0, figures
    assert reader.during(window), "the reader made no progress during the upgrade"

    # The previous release's revision -> head (every revision since, as a deploy runs
    # them) while that release runs: its reader and writer (the released statements,
    # verbatim) must never wait.
    script = ScriptDirectory.from_config(migrator._config("ledger"))
    since = [r.revision for r in script.walk_revisions("base", "head")]
    assert RELEASED_WRITER in since[1:], "refresh tests/released/ for this release"
    ledger.migrate(url, RELEASED_WRITER)
    reader, reader_conn = tenant_reader(url, "reader")
    writer, writer_conn = released_writer(url, "writer")
    loops = [reader, writer]
    title = f"{RELEASED_WRITER} -> {head_revision()} (previous release -> head)"
    lines, window = run_probe(title, url, "head", loops)
    reader_conn.close()
    writer_conn.close()
    figures += lines
    for loop in loops:
        assert loop.failures == [], loop.failures
        assert loop.lock_timeouts == 0, figures
        assert loop.during(window), f"the {loop.name} made no progress during the upgrade"
    assert current_revision(url) == head_revision()
    with psycopg.connect(_plain(url)) as conn:  # no CONCURRENTLY build left half-done
        assert conn.execute(
            "SELECT count(*) FILTER (WHERE NOT i.indisvalid), count(*) FROM pg_index AS i"
            " JOIN pg_class AS c ON c.oid = i.indexrelid"
            " WHERE c.relnamespace = 'ledger'::regnamespace"
        ).fetchone()[:1] == (0,)  # type: ignore[index]
    # What the previous release wrote, before and during the upgrade, replays under head.
    with ledger.Ledger(url) as book:
        report_ = book.verify_journal()
        assert report_.ok, report_
        assert book.verify_conservation().is_balanced
    with capsys.disabled():
        print(f"\nlock probe ({TENANTS} tenants, {HOLDS} open holds):")
        for line in figures:
            print(line)


def test_the_probe_catches_the_released_0002(
    big_ledger: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probe can fail: 0002 as released holds tenants' lock for the whole backfill."""
    from tests.integration.migrations.test_upgrade import deployed_config

    cfg = deployed_config(tmp_path, big_ledger)
    reader, conn = tenant_reader(big_ledger, "reader-released")
    try:
        lines, _ = run_probe(
            "0001 -> 0002 as released",
            big_ledger,
            "0002",
            [reader],
            upgrade=lambda: command.upgrade(cfg, "0002"),
        )
    finally:
        conn.close()
        cfg.attributes["connection"].dispose()
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert reader.failures == []
    assert reader.lock_timeouts >= 1, lines
