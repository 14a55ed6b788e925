"""The example apps under their real servers, with real clients, slow work and one hot tenant.

Each test starts an example app the way production runs it (gunicorn with
``gthread`` workers for Flask and Django, uvicorn for FastAPI) on a free
loopback port, against this test's own database, and drives it over HTTP
with httpx. Every request holds budget, works for 200 ms outside any
transaction, then settles in one transaction with its job row.

What must hold:

- exact money: every success settled exactly its price, refusals (the budget
  runs out mid-run) are answered 402 and cost nothing, no hold stays open,
  the journal verifies;
- real concurrency: 32 clients on ONE tenant get at least 8x the throughput
  of one client (a ratio measured in the same run, never a timing). Under the
  old recipe the reserve's row lock lasted the whole work and the ratio was 1;
- a worker SIGKILLed mid-work leaves its hold open; the hold expires by its
  TTL, the money comes back, nothing is lost and the journal verifies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

import httpx
import psycopg
import pytest

import ledger
from bench.http import Server, create_tenant, drive, serve
from tests.conftest import _plain

pytestmark = pytest.mark.alone

APPS = ["flask", "django", "fastapi"]
PRICE = 1_000  # microcents a job really costs
ESTIMATE = 2 * PRICE  # what each request holds before the work
WORK_MS = 200
CLIENTS = 32
SOLO_REQUESTS = 5
ROUNDS = 6  # budget for about this many rounds of CLIENTS requests, then refusals


def _jobs(app: str, db_url: str, tenant: str) -> tuple[int, int]:
    """How many job rows the app wrote for ``tenant``, and what they cost in total."""
    table = "shop_job" if app == "django" else "jobs"
    with psycopg.connect(_plain(db_url)) as conn:
        row = conn.execute(
            f"SELECT count(*), coalesce(sum(cost_microcents), 0) FROM {table} WHERE tenant = %s",
            (tenant,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("app", APPS)
def test_one_hot_tenant_under_load(app: str, db_url: str, tmp_path: Any) -> None:
    budget = PRICE * (SOLO_REQUESTS + ROUNDS * CLIENTS)
    tenant = f"hot-{app}"
    body = {"estimate": ESTIMATE, "actual": PRICE, "work_ms": WORK_MS}
    with serve(app, db_url, threads=CLIENTS + 8, log_dir=tmp_path) as server:
        create_tenant(server, tenant, budget)
        # Warm up as production would be: every thread's pooled connections open.
        create_tenant(server, "warm-up", 10**12)
        drive(server, "warm-up", CLIENTS, body, requests_each=2)
        solo = drive(server, tenant, 1, body, requests_each=SOLO_REQUESTS)
        crowd = drive(server, tenant, CLIENTS, body, until_refused=True)

    # exact money
    assert solo.statuses == [201] * SOLO_REQUESTS
    assert set(crowd.statuses) == {201, 402}, "the budget must run out mid-run"
    assert crowd.statuses.count(402) == CLIENTS  # every client stopped at its refusal
    assert all(r["status"] == "insufficient" for r in crowd.refusals), crowd.refusals[:3]
    successes = solo.successes + crowd.successes
    with ledger.Ledger(db_url) as book:
        state = book.tenant(tenant)
        assert state is not None
        assert state.committed_microcents == successes * PRICE
        assert state.reserved_microcents == 0
        assert state.remaining_microcents == budget - successes * PRICE
        assert book.active_reservations() == 0
        assert book.verify_journal().ok
        assert book.verify_conservation().is_balanced
    assert _jobs(app, db_url, tenant) == (successes, successes * PRICE)

    # real concurrency, as a ratio of two throughputs measured in this run
    ratio = crowd.per_second / solo.per_second
    print(
        f"\n{app}: 1 client {solo.per_second:.1f} req/s, {CLIENTS} clients "
        f"{crowd.per_second:.1f} req/s over {crowd.seconds:.2f}s: {ratio:.1f}x"
    )
    assert ratio >= 8, f"{CLIENTS} clients only {ratio:.1f}x one client: requests are serialised"


def _post_in_background(server: Server, tenant: str, body: dict[str, Any]) -> threading.Thread:
    def post() -> None:
        with contextlib.suppress(httpx.TransportError):  # the worker dies under it: the point
            httpx.post(f"{server.url}/jobs/{tenant}", json=body, timeout=60)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("app", APPS)
def test_a_worker_killed_mid_work_leaves_a_hold_that_expires(
    app: str, db_url: str, tmp_path: Any
) -> None:
    ttl = 2
    tenant = f"killed-{app}"
    with (
        ledger.Ledger(db_url) as book,
        serve(app, db_url, env={"HOLD_TTL_SECONDS": str(ttl)}, log_dir=tmp_path) as server,
    ):
        create_tenant(server, tenant, 10 * ESTIMATE)
        done = drive(server, tenant, 1, {"estimate": ESTIMATE, "actual": PRICE}, requests_each=1)
        assert done.statuses == [201]
        _post_in_background(
            server, tenant, {"estimate": ESTIMATE, "actual": PRICE, "work_ms": 30_000}
        )
        deadline = time.monotonic() + 30
        while book.reserved_microcents(tenant) != ESTIMATE:  # the hold is committed: mid-work
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
        # Dead: nobody will settle or release it, so the hold stays until its TTL.
        assert book.active_reservations() == 1
        assert book.tenant(tenant) == ledger.TenantLedger(
            tenant, 10 * ESTIMATE, 10 * ESTIMATE - PRICE - ESTIMATE, ESTIMATE, PRICE
        )
        deadline = time.monotonic() + ttl + 30
        expired = 0
        while expired == 0:
            assert time.monotonic() < deadline, "the hold never expired"
            time.sleep(0.2)
            expired = book.expire_holds()
        assert expired == 1
        assert book.tenant(tenant) == ledger.TenantLedger(
            tenant, 10 * ESTIMATE, 10 * ESTIMATE - PRICE, 0, PRICE
        )
        assert book.active_reservations() == 0
        assert book.verify_journal().ok
        assert book.verify_conservation().is_balanced
        assert _jobs(app, db_url, tenant) == (1, PRICE)  # the killed job left no row
