"""Failover to a standby under keyed load: kill -9 the primary, promote, reconnect, retry.

Clients name both servers in one URL with ``target_session_attrs=read-write``
(docs/deployment.md), so after the promotion their new connections reach the
new primary. The audit is the crash suite's (tests/integration/core/test_faults.py): every
acknowledged operation is present exactly once, every refused one absent,
every in-doubt one retried with its key and applied at most once,
conservation holds and the journal verifies. The negative control runs the
same load with an asynchronous standby that had fallen behind and shows the
audit seeing acknowledged operations vanish.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine

import ledger
from ledger._engine import normalise_url
from tests.conftest import FIGURES
from tests.faults import PgServer, require_replication_binaries
from tests.integration.core.test_faults import CrashHarness


@pytest.fixture
def root() -> Iterator[Path]:
    require_replication_binaries()
    path = PgServer.workspace()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _pair(root: Path, synchronous: bool) -> tuple[PgServer, PgServer]:
    primary = PgServer(root, "primary").init_primary()
    ledger.migrate(primary.url)
    standby = PgServer(root, "standby").standby_of(primary)
    if synchronous:
        with psycopg.connect(primary.plain, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while conn.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
            ).fetchone() != (1,):
                assert time.monotonic() < deadline, "the standby never became synchronous"
                time.sleep(0.05)
    return primary, standby


def _harness(primary: PgServer, url: str) -> CrashHarness:
    """The crash suite's load and audit, pointed at this pair instead of one embedded server."""
    harness = CrashHarness.__new__(CrashHarness)
    harness.server = SimpleNamespace(url=url)  # type: ignore[assignment]
    harness.tenants = [f"c{i}" for i in range(4)]
    with ledger.Ledger(primary.url) as book:
        for t in harness.tenants:
            book.ensure_tenant(t, 10**9)
    harness.acked, harness.ambiguous = [], []
    harness.lock = threading.Lock()
    harness.restarts = harness.broken_restarts = 0
    return harness


def _load_then_kill(harness: CrashHarness, url: str, primary: PgServer, run_for: float) -> None:
    """Workers run keyed operations until the primary dies under them (kill -9)."""
    engine = create_engine(normalise_url(url), pool_size=4)
    book = ledger.Ledger(engine)
    stop = threading.Event()
    threads = [
        threading.Thread(target=harness._worker, args=(book, f"w{i}-{time.time_ns()}", stop))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(run_for)
    primary.crash()
    stop.set()
    for t in threads:
        t.join(60)
    engine.dispose()


def _reconnect_and_retry(harness: CrashHarness, url: str) -> int:
    """Clients come back on the same multi-host URL and retry what was in doubt, same key."""
    with ledger.Ledger(url) as book:
        for _tenant, _key, call in harness.ambiguous:
            call(book)
        # and carry on: new work lands on the promoted server
        return sum(1 for t in harness.tenants if book.try_reserve(t, 1).ok)


def doubled(server: PgServer) -> int:
    """Idempotency keys that produced more than one journal entry (must be none)."""
    with psycopg.connect(server.plain, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM ledger.journal WHERE idempotency_key IS NOT NULL"
            " GROUP BY tenant_id, idempotency_key HAVING count(*) > 1) AS d"
        ).fetchone()
    return int(row[0])  # type: ignore[index]


def multi_host(*servers: PgServer) -> str:
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    return (
        f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write&connect_timeout=5"
    )


def test_failover_to_a_synchronous_standby_loses_nothing(root: Path) -> None:
    primary, standby = _pair(root, synchronous=True)
    url = multi_host(primary, standby)
    try:
        harness = _harness(primary, url)
        _load_then_kill(harness, url, primary, run_for=1.5)
        standby.promote()
        after = _reconnect_and_retry(harness, url)
        harness.server = SimpleNamespace(url=standby.url)  # type: ignore[assignment]
        report = harness.audit()
        twice = doubled(standby)
    finally:
        standby.stop()
        primary.stop()
    FIGURES.append(
        (
            "failover to a synchronous standby",
            "kill -9 primary, promote standby",
            f"{report['acked']} acked, {report['ambiguous']} ambiguous "
            f"({report['ambiguous_applied']} applied on retry)",
            f"lost {report['lost']}, phantom {report['phantom']}, doubled {twice}",
        )
    )
    assert report["acked"] > 0 and after == 4 and twice == 0
    assert (report["lost"], report["phantom"], report["hold_mismatch"]) == (0, 0, 0), report
    assert report["balanced"] and report["journal_ok"], report


def test_negative_control_asynchronous_standby_loses_acknowledged_operations(
    root: Path,
) -> None:
    """An asynchronous standby that is behind when the primary dies: the audit sees the loss."""
    primary, standby = _pair(root, synchronous=False)
    url = multi_host(primary, standby)
    try:
        harness = _harness(primary, url)
        standby.wait_replayed(primary)
        standby.stop()  # it falls behind (a network partition, a slow disk...)
        _load_then_kill(harness, url, primary, run_for=1.0)
        standby.start()
        standby.promote()
        _reconnect_and_retry(harness, url)
        harness.server = SimpleNamespace(url=standby.url)  # type: ignore[assignment]
        report: dict[str, Any] = harness.audit()
    finally:
        standby.stop()
        primary.stop()
    FIGURES.append(
        (
            "negative control (asynchronous standby, behind)",
            "kill -9 primary, promote standby",
            f"{report['acked']} acked",
            f"lost {report['lost']} (detected)",
        )
    )
    assert report["lost"] > 0, report
    assert report["balanced"] and report["journal_ok"], report
