"""The ledger behind PgBouncer in transaction pooling mode (docs/deployment.md).

Each test talks to a real PgBouncer that the module starts in front of the
test server. PgBouncer hands its server connections out in turn
(``server_round_robin``), so consecutive transactions of one client land on
different backends: anything that relies on session state, such as
psycopg's automatic server-side prepared statements, fails here at once.
The negative control shows that it does, so the other tests can fail.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine

import ledger
from ledger import errors
from ledger._engine import POOLER_KEY, behind_pooler
from ledger.audit import AUDIT_VIEWS
from ledger.migrator import current_revision, head_revision
from tests.conftest import FIGURES, _plain
from tests.faults import PgBouncer, pgbouncer_binary, pgbouncer_version
from tests.helpers import holds_match_reserved

ROOT = Path(__file__).resolve().parents[3]
VERSION = pgbouncer_version()
#: PgBouncer 1.21 added protocol-level prepared statements (max_prepared_statements).
SUPPORTS_PREPARED = VERSION >= (1, 21)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(0, id="prepared-off"),
        pytest.param(200, id="prepared-on"),
    ],
)
def bouncer(request: pytest.FixtureRequest, server_url: str) -> Iterator[PgBouncer]:
    in_ci = os.environ.get("CI") == "true"
    if pgbouncer_binary() is None:
        if in_ci:
            pytest.fail("CI expects pgbouncer (scripts/test.sh installs it)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    if request.param and not SUPPORTS_PREPARED:
        why = f"PgBouncer {VERSION[0]}.{VERSION[1]} has no max_prepared_statements"
        if in_ci:
            pytest.fail(f"{why}; CI builds PgBouncer >= 1.21 (scripts/pgbouncer.sh)")
        pytest.skip(f"{why}: LEDGER_PGBOUNCER=$(bash scripts/pgbouncer.sh build)")
    mps = request.param if SUPPORTS_PREPARED else None
    # Not under pytest's tmp_path: PgBouncer runs as another user and must reach its files.
    root = Path(tempfile.mkdtemp(prefix="ledger-pgbouncer-"))
    pgb = PgBouncer(server_url, root, max_prepared_statements=mps)
    pgb.prepared = bool(request.param)  # type: ignore[attr-defined]
    try:
        yield pgb
    finally:
        pgb.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pooled_url(bouncer: PgBouncer, db_url: str) -> str:
    """The test's database through PgBouncer, which already holds 4 server connections."""
    bouncer.warm(db_url, 4)
    return bouncer.url_for(db_url)


def test_negative_control_session_prepares_break_behind_the_pooler(
    bouncer: PgBouncer, pooled_url: str
) -> None:
    """A statement prepared in one transaction is gone (or another) in the next one."""
    with psycopg.connect(_plain(pooled_url), autocommit=True) as conn:
        if getattr(bouncer, "prepared", False):  # PgBouncer >= 1.21 tracks them itself
            for _ in range(4):
                assert conn.execute("SELECT 1", prepare=True).fetchone() == (1,)
            return
        with pytest.raises(psycopg.Error, match="prepared statement"):
            for _ in range(4):
                conn.execute("SELECT 1", prepare=True)


def test_the_pooler_is_detected_and_direct_connections_keep_prepares(
    pooled_url: str, db_url: str
) -> None:
    with psycopg.connect(_plain(pooled_url)) as conn:
        assert behind_pooler(conn)
    with psycopg.connect(_plain(db_url)) as conn:
        assert not behind_pooler(conn)
    for url, pooled in ((pooled_url, True), (db_url, False)):
        with ledger.Ledger(url) as book:
            book.ensure_tenant("t", 10)
            raw = book.engine.raw_connection()
            try:
                assert raw._connection_record.info[POOLER_KEY] is pooled  # type: ignore[union-attr]
                threshold = raw.driver_connection.prepare_threshold  # type: ignore[union-attr]
                assert (threshold is None) is pooled
            finally:
                raw.close()


def test_an_engine_the_caller_made_earlier_is_covered_too(pooled_url: str) -> None:
    """Connections the caller's pool opened before the ledger saw the engine get the check."""
    engine = create_engine(pooled_url, pool_size=2)
    with engine.connect() as conn:  # pooled before the ledger exists
        conn.exec_driver_sql("SELECT 1")
    book = ledger.Ledger(engine)
    book.ensure_tenant("early", 10**9)
    for n in range(30):  # well past psycopg's prepare threshold of 5
        assert book.try_reserve("early", 1, idempotency_key=f"k{n}").ok
    assert book.reserved_microcents("early") == 30
    engine.dispose()


def exercise(book: ledger.Ledger) -> dict[str, Any]:
    """Every public operation, each repeated past psycopg's prepare threshold."""
    book.ensure_tenant("a", 10**9)
    book.ensure_tenant("b", 10**9)
    book.set_max_reserved_microcents("a", 10**8)
    seen: dict[str, Any] = {}
    for n in range(8):
        hold = book.try_reserve("a", 1_000, idempotency_key=f"r{n}")
        again = book.try_reserve("a", 1_000, idempotency_key=f"r{n}")
        assert again == hold and hold.ok
        assert book.commit(hold.reservation_id, 600, tenant_id="a", idempotency_key=f"c{n}").ok  # type: ignore[arg-type]
        other = book.try_reserve("b", 500)
        assert book.release(other.reservation_id).ok  # type: ignore[arg-type]
        assert book.top_up_tenant("b", 7, idempotency_key=f"t{n}").ok
        holds = book.try_reserve_many([("a", 10), ("b", 20)])
        assert all(o.ok for o in holds)
        assert all(
            o.ok
            for o in book.commit_many([ledger.CommitItem(holds[0].reservation_id, 5)])  # type: ignore[arg-type]
        )
        assert all(o.ok for o in book.release_many([holds[1].reservation_id]))  # type: ignore[list-item]
        seen["tenant"] = book.tenant("a")
        seen["remaining"] = book.remaining_microcents("a")
        assert book.verify_conservation().is_balanced
        assert book.verify_journal().ok
        snap = book.snapshot()
        assert ledger.conservation_status_for_snapshot(snap).is_balanced
        assert book.expire_holds() == 0
    # A refusal rolls its transaction back, and psycopg forgets its prepared
    # statements on ROLLBACK, so this comes after the loop, which must reach them.
    with pytest.raises(errors.IdempotencyConflict):
        book.try_reserve("a", 999, idempotency_key="r0")
    seen["certificate"] = book.certify()
    seen["snapshot"] = book.snapshot()
    seen["count"] = book.tenant_count()
    assert book.prune_idempotency_keys(timedelta(hours=1)) == 0
    return seen


def test_every_public_operation_through_pgbouncer(pooled_url: str, db_url: str) -> None:
    with ledger.Ledger(pooled_url) as book:
        seen = exercise(book)
        assert seen["tenant"] == ledger.TenantLedger("a", 10**9, 10**9 - 8 * 605, 0, 8 * 605)
        assert seen["count"] == 2 and book.active_reservations() == 0
        assert seen["certificate"].tenant_count == 2
        restored = book.snapshot()
        book.restore_from_snapshot(restored)
        assert book.snapshot().tenants == restored.tenants
        with psycopg.connect(_plain(pooled_url), autocommit=True) as conn:
            for view in AUDIT_VIEWS:  # the auditor's views read through the pooler too
                for _ in range(6):
                    conn.execute(f"SELECT count(*) FROM ledger.{view}", prepare=False).fetchone()
    with ledger.Ledger(db_url) as direct:  # and the server agrees, read directly
        assert direct.tenant("a") == seen["tenant"]
        assert direct.verify_journal().ok


def test_migrate_through_pgbouncer(bouncer: PgBouncer, empty_db_url: str) -> None:
    url = bouncer.url_for(empty_db_url)
    ledger.migrate(url)
    ledger.migrate(url)  # idempotent, as at every application start
    assert current_revision(url) == head_revision()
    with ledger.Ledger(url) as book:
        book.ensure_tenant("m", 5)
        assert book.try_reserve("m", 5).ok


def test_hot_tenant_exact_sums_through_pgbouncer(pooled_url: str, db_url: str) -> None:
    """8 threads on one tenant through a pool of 4 server connections; every unit accounted."""
    workers, ops = 8, 60
    engine = create_engine(pooled_url, pool_size=workers, max_overflow=0)
    book = ledger.Ledger(engine)
    initial = workers * ops * 6_000 // 2  # so that a good share is refused
    book.ensure_tenant("hot", initial)
    failures: list[BaseException] = []
    tallies: list[dict[str, int]] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        t = {"committed": 0, "topped": 0, "refused": 0, "ops": 0}
        try:
            for n in range(ops):
                t["ops"] += 1
                key = f"{seed}-{n}"
                if rng.random() < 0.05:
                    t["topped"] += (
                        book.top_up_tenant("hot", 1_000, idempotency_key=key).added_microcents or 0
                    )
                    continue
                hold = book.try_reserve("hot", rng.randint(1, 12_000), idempotency_key=key)
                if not hold.ok:
                    t["refused"] += 1
                    continue
                rid: int = hold.reservation_id  # type: ignore[assignment]
                if rng.random() < 0.3:
                    assert book.release(rid, tenant_id="hot", idempotency_key=key + "r").ok
                    continue
                actual = rng.randint(0, 12_000)
                done = book.commit(rid, actual, tenant_id="hot", idempotency_key=key + "c")
                if done.ok:
                    t["committed"] += actual
                else:
                    assert book.release(rid, tenant_id="hot", idempotency_key=key + "r").ok
        except BaseException as exc:  # any error at all behind the pooler is a failure
            failures.append(exc)
        with lock:
            tallies.append(t)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    engine.dispose()
    assert failures == []
    committed = sum(t["committed"] for t in tallies)
    topped = sum(t["topped"] for t in tallies)
    total = sum(t["ops"] for t in tallies)
    refused = sum(t["refused"] for t in tallies)
    with ledger.Ledger(db_url) as direct, psycopg.connect(_plain(db_url)) as raw:
        assert direct.tenant("hot") == ledger.TenantLedger(
            "hot", initial + topped, initial + topped - committed, 0, committed
        )
        assert direct.verify_journal().ok and direct.verify_conservation().is_balanced
        assert holds_match_reserved(raw) == []
    assert refused > 0 and committed > 0
    FIGURES.append(
        (
            "PgBouncer transaction pooling, hot tenant",
            f"PgBouncer {VERSION[0]}.{VERSION[1]}, pool 4, {workers} threads",
            f"{total} keyed operations, {refused} refused",
            "errors 0, overspent 0, sums exact",
        )
    )


def test_flask_integration_through_pgbouncer(pooled_url: str) -> None:
    from tests.integration.integrations.test_flask_app import load_example

    module = load_example()
    app = module.create_app(pooled_url)
    app.config["TESTING"] = False
    client = app.test_client()
    try:
        assert client.post("/tenants/acme", json={"budget": 100_000}).status_code == 201
        for _ in range(8):
            done = client.post("/jobs/acme", json={"estimate": 300, "actual": 250})
            assert done.status_code == 201, done.get_data(as_text=True)
        assert client.get("/tenants/acme").get_json()["committed_microcents"] == 8 * 250
    finally:
        with app.app_context():
            module.db.engine.dispose()


DJANGO_SCRIPT = """
import django, ledger
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.db import transaction
from ledger.contrib.django import get_ledger
book = get_ledger()
book.ensure_tenant("dj", 10_000)
for n in range(8):
    with transaction.atomic():
        hold = book.try_reserve("dj", 100, idempotency_key=f"k{n}")
        assert book.commit(hold.reservation_id, 60).ok
assert book.tenant("dj") == ledger.TenantLedger("dj", 10_000, 10_000 - 480, 0, 480), book.tenant("dj")
assert book.ledger.verify_journal().ok
print("ok")
"""


def test_django_integration_through_pgbouncer(bouncer: PgBouncer, empty_db_url: str) -> None:
    """manage.py migrate and ledger calls in atomic blocks, in a fresh process through the pooler."""
    env = {
        **os.environ,
        "DATABASE_URL": bouncer.url_for(empty_db_url),
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "examples/django_project"), str(ROOT)]),
    }
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_a_connection_that_died_idle_before_the_check_is_replaced(db_url: str) -> None:
    """The pooler check is the first statement on a pooled connection; if that connection
    died while idle in the caller's pool, the pool replaces it instead of raising."""
    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    with engine.connect() as conn:  # pooled before the ledger installs its hook
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with psycopg.connect(_plain(db_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    book = ledger.Ledger(engine)
    assert book.tenant_count() == 0
    engine.dispose()
