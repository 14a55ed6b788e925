"""Alerts behind PgBouncer in transaction mode: polling consumers deliver everything once.

``LISTEN`` needs a session, which a transaction pooler does not keep
(docs/alerts.md, "Behind a transaction pooler"). Consumers that poll
(``listen=False``) need none: each claim and each acknowledgement is one
statement. PgBouncer is started as tests/integration/deployment/test_pgbouncer.py
starts it (``server_round_robin``: consecutive transactions land on different
backends).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import ledger
from tests.faults import PgBouncer, pgbouncer_binary

pytestmark = pytest.mark.pg_versions

TENANTS = 6
THRESHOLDS = ("a", "b", "c")


@pytest.fixture(scope="module")
def bouncer(server_url: str) -> Iterator[PgBouncer]:
    if pgbouncer_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI expects pgbouncer (scripts/test.sh installs it)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    root = Path(tempfile.mkdtemp(prefix="ledger-pgbouncer-alerts-"))
    pgb = PgBouncer(server_url, root)
    try:
        yield pgb
    finally:
        pgb.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pooled_url(bouncer: PgBouncer, db_url: str) -> str:
    bouncer.warm(db_url, 4)
    return bouncer.url_for(db_url)


def _crossings(book: ledger.Ledger) -> None:
    for t in range(TENANTS):
        tenant = f"t{t}"
        book.ensure_tenant(tenant, 1_000)
        for n, name in enumerate(THRESHOLDS):
            book.set_threshold(tenant, name, spent_microcents=100 * (n + 1))
    for t in range(TENANTS):
        for _ in range(3):
            hold = book.try_reserve(f"t{t}", 100).raise_for_status()
            assert hold.reservation_id is not None
            book.commit(hold.reservation_id, 100, tenant_id=f"t{t}").raise_for_status()


@pytest.mark.parametrize("listen", [False, True], ids=["polling", "listen-through-pooler"])
def test_consumers_through_pgbouncer_deliver_every_alert_once(
    pooled_url: str, db_url: str, listen: bool
) -> None:
    seen: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            with ledger.Ledger(pooled_url) as book:
                for alert in book.alerts(listen=listen, poll_interval=0.1, idle_timeout=1.5):
                    with lock:
                        seen.append(alert.alert_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    with ledger.Ledger(pooled_url) as writer:
        _crossings(writer)  # every write, and the trigger, through the pooler
        consumers = [threading.Thread(target=consume) for _ in range(3)]
        for c in consumers:
            c.start()
        for c in consumers:
            c.join(60)
        assert not errors, errors
        records = writer.list_alerts(limit=1_000)
    assert len(records) == TENANTS * len(THRESHOLDS)
    assert Counter(seen) == Counter({r.alert.alert_id: 1 for r in records})
    assert all(r.delivered_at is not None and r.alert.attempts == 1 for r in records)
    with ledger.Ledger(db_url) as direct:
        assert direct.alert_backlog().undelivered == 0
