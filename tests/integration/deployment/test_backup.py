"""Backups: pg_dump under load, point-in-time recovery, and catching a rollback.

A restored ledger must verify (journal, conservation, holds) and hold every
operation acknowledged before the backup point. A database restored to a
point before its latest certificate verifies too, being internally
consistent, so only a certificate kept outside it can tell: the test shows
``ledger verify --certificate FILE`` catching it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine

import ledger
from tests.conftest import FIGURES
from tests.faults import PG_BIN, PgServer, require_replication_binaries
from tests.helpers import holds_match_reserved
from tests.integration.core.test_faults import CrashHarness
from tests.integration.deployment.test_failover import _harness


@pytest.fixture
def root() -> Iterator[Path]:
    require_replication_binaries()
    path = PgServer.workspace()
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Load:
    """The crash suite's keyed workers, started and stopped around a backup."""

    def __init__(self, harness: CrashHarness, url: str) -> None:
        self.harness = harness
        self.engine = create_engine(url, pool_size=4)
        self.book = ledger.Ledger(self.engine)
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(
                target=harness._worker, args=(self.book, f"w{i}-{time.time_ns()}", self.stop)
            )
            for i in range(4)
        ]
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        self.engine.dispose()


def _entries(conn: psycopg.Connection, tenant: str, key: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM ledger.journal WHERE tenant_id = %s AND idempotency_key = %s",
        (tenant, key),
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def _audit(url: str, acked: list[tuple[str, str, bool]]) -> dict[str, int]:
    """What a restored ledger must satisfy for operations acknowledged before its backup point."""
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn, ledger.Ledger(url) as book:
        lost = sum(1 for t, k, applied in acked if applied and _entries(conn, t, k) != 1)
        phantom = sum(1 for t, k, applied in acked if not applied and _entries(conn, t, k) != 0)
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM ledger.journal WHERE idempotency_key IS NOT NULL"
            " GROUP BY tenant_id, idempotency_key HAVING count(*) > 1) AS d"
        ).fetchone()[0]  # type: ignore[index]
        return {
            "acked": len(acked),
            "lost": lost,
            "phantom": phantom,
            "doubled": int(doubled),
            "hold_mismatch": len(holds_match_reserved(conn)),
            "balanced": int(book.verify_conservation().is_balanced),
            "journal_ok": int(book.verify_journal().ok),
        }


def _database(server: PgServer, name: str) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def test_pg_dump_of_a_live_ledger_restores_to_a_verified_state(root: Path) -> None:
    primary = PgServer(root, "primary").init_primary()
    try:
        ledger.migrate(primary.url)
        harness = _harness(primary, primary.url)
        load = Load(harness, primary.url)
        time.sleep(0.5)
        with ledger.Ledger(primary.url) as book:
            certificate = book.certify().to_dict()  # kept outside, issued before the dump
        with harness.lock:
            before = list(harness.acked)  # acknowledged before the dump began
        dump = root / "ledger.dump"
        subprocess.run(
            [str(PG_BIN / "pg_dump"), "-Fc", "-f", str(dump), primary.plain],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        time.sleep(0.3)
        load.finish()
        with psycopg.connect(primary.plain, autocommit=True) as conn:
            conn.execute("CREATE DATABASE restored")
        subprocess.run(
            [str(PG_BIN / "pg_restore"), "--exit-on-error", "-d", _plain(primary, "restored"),
             str(dump)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        report = _audit(_database(primary, "restored"), before)
        with ledger.Ledger(_database(primary, "restored")) as book:
            check = book.check_against_certificate(certificate)
        during = len(harness.acked) - len(before)
    finally:
        primary.stop()
    FIGURES.append(
        (
            "pg_dump/pg_restore under keyed load",
            "dump while 4 workers write",
            f"{report['acked']} acked before the dump, {during} during and after",
            f"lost {report['lost']}, phantom {report['phantom']}, doubled {report['doubled']}",
        )
    )
    assert report["acked"] > 0 and during > 0
    assert check.ok, check  # the dump is from after the certificate
    assert (report["lost"], report["phantom"], report["doubled"]) == (0, 0, 0), report
    assert report["balanced"] and report["journal_ok"] and report["hold_mismatch"] == 0, report


def _plain(server: PgServer, database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{server.port}/{database}"


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", "--database-url", url, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_point_in_time_recovery_and_a_rollback_caught_by_an_outside_certificate(
    root: Path,
) -> None:
    archive = root / "wal"
    archive.mkdir()
    shutil.chown(archive, "postgres") if os.geteuid() == 0 else None
    primary = PgServer(root, "primary").init_primary(
        {
            "archive_mode": "on",
            "archive_command": f"'test ! -f {archive}/%f && cp %p {archive}/%f'",
        }
    )
    restored: PgServer | None = None
    try:
        ledger.migrate(primary.url)
        harness = _harness(primary, primary.url)
        base = root / "base"
        primary._run(
            str(PG_BIN / "pg_basebackup"), "-D", str(base), "-X", "stream",
            "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
        )  # fmt: skip
        load = Load(harness, primary.url)  # phase 1: after the base backup, before the target
        time.sleep(0.8)
        load.finish()
        phase1 = list(harness.acked)
        with psycopg.connect(primary.plain, autocommit=True) as conn:
            target = conn.execute("SELECT clock_timestamp()::text").fetchone()[0]  # type: ignore[index]
            expected = conn.execute(
                "SELECT tenant_id, remaining_microcents, reserved_microcents,"
                " committed_microcents FROM ledger.tenants ORDER BY tenant_id"
            ).fetchall()
        time.sleep(0.2)
        load = Load(harness, primary.url)  # phase 2: after the target
        time.sleep(0.8)
        load.finish()
        phase2 = harness.acked[len(phase1) :]
        outside = root / "certificate.json"  # kept outside the database
        done = _cli(primary.url, "certify", "-o", str(outside))
        assert done.returncode == 0, done.stderr
        with ledger.Ledger(primary.url) as book:
            assert book.check_against_certificate(outside).ok  # the live database is fine
        with psycopg.connect(primary.plain, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        primary._run(str(PG_BIN / "pg_ctl"), "-D", str(primary.data), "-m", "fast", "-w", "stop")

        restored = PgServer(root, "restored")
        primary._run("cp", "-a", str(base), str(restored.data))
        restored._configure(
            {
                "restore_command": f"'cp {archive}/%f %p'",
                "recovery_target_time": f"'{target}'",
                "recovery_target_action": "'promote'",
                "archive_mode": "off",
            }
        )
        primary._run("touch", str(restored.data / "recovery.signal"))
        restored.start()
        with psycopg.connect(restored.plain, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while conn.execute("SELECT pg_is_in_recovery()").fetchone() != (False,):
                assert time.monotonic() < deadline, "recovery did not finish"
                time.sleep(0.1)
            got = conn.execute(
                "SELECT tenant_id, remaining_microcents, reserved_microcents,"
                " committed_microcents FROM ledger.tenants ORDER BY tenant_id"
            ).fetchall()
            after_target = sum(1 for t, k, _ in phase2 if _entries(conn, t, k) != 0)
        report = _audit(restored.url, phase1)
        with ledger.Ledger(restored.url) as book:
            check = book.check_against_certificate(outside)
        cli = _cli(restored.url, "--json", "verify", "--certificate", str(outside))
    finally:
        if restored is not None:
            restored.stop()
        primary.stop()
    FIGURES.append(
        (
            "point-in-time recovery to a timestamp",
            "base backup + archived WAL, target between two load phases",
            f"{report['acked']} acked before the target, {len(phase2)} after",
            f"lost {report['lost']}, phantom {report['phantom']}, doubled {report['doubled']}, "
            f"after-target present {after_target}; rollback caught {int(not check.ok)}",
        )
    )
    assert got == expected  # exactly the state at the target time
    assert report["acked"] > 0 and phase2
    assert (report["lost"], report["phantom"], report["doubled"], after_target) == (0, 0, 0, 0)
    assert report["balanced"] and report["journal_ok"] and report["hold_mismatch"] == 0, report
    # The restored database is internally perfect, yet it is from before the certificate.
    assert not check.ok and "rollback" in check.problems[0], check
    assert cli.returncode == 4, (cli.stdout, cli.stderr)
    payload: dict[str, Any] = json.loads(cli.stdout)
    assert payload["certificate"]["ok"] is False and payload["journal"]["ok"] is True
