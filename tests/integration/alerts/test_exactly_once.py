"""Exactly once under load: 8 spending processes, 3 webhook deliverers, a kill -9, a renewal.

The issue's scenario, end to end with real processes: one tenant with a
daily allowance and thresholds at 50, 80 and 100 percent; eight processes
spend it to zero, the period renews, they spend it to zero again. Three
deliverer processes post the alerts to a local webhook receiver. The
receiver holds the first request open, and the deliverer that sent it is
killed with SIGKILL in the middle of it: its alert must come back when the
lease ends and be delivered by another one. At the end each threshold has
exactly one alert per period, every alert is delivered (acknowledged)
once, and the receiver answered 200 exactly once per alert.
"""

from __future__ import annotations

import http.server
import json
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import ledger
from ledger import webhook
from tests.conftest import _plain
from tests.integration.periods.test_periods import backdate, daily

pytestmark = pytest.mark.pg_versions

SPENDERS = 8
DELIVERERS = 3
ALLOWANCE = 200_000
STEP = 1_000
THRESHOLDS = {"half": 50, "most": 80, "all": 100}


class Receiver(http.server.ThreadingHTTPServer):
    """Records every POST; holds the first one open until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.answered: list[dict[str, Any]] = []
        self.held: dict[str, Any] | None = None
        self.holding = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Idempotency-Key"] == f"alert-{body['alert_id']}"
        with self.server.lock:
            hold = self.server.held is None
            if hold:
                self.server.held = body
        if hold:
            self.server.holding.set()
            self.server.release.wait(60)
            return  # its deliverer is dead by now: no answer
        with self.server.lock:
            self.server.answered.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def _deliverer(url: str, hook: str) -> None:
    with ledger.Ledger(url) as book:
        webhook.deliver(
            book, hook, timeout=2, backoff=0.2, lease=timedelta(seconds=3), poll_interval=0.2
        )


def _spender(url: str, tenant: str) -> None:
    with ledger.Ledger(url) as book:
        while True:
            hold = book.try_reserve(tenant, STEP)
            if not hold.ok:
                return
            assert hold.reservation_id is not None
            book.commit(hold.reservation_id, STEP, tenant_id=tenant).raise_for_status()


def _spend_to_zero(ctx: Any, url: str, tenant: str) -> None:
    spenders = [ctx.Process(target=_spender, args=(url, tenant)) for _ in range(SPENDERS)]
    for p in spenders:
        p.start()
    for p in spenders:
        p.join(120)
        assert p.exitcode == 0


def test_each_threshold_is_delivered_exactly_once_per_period(
    db_url: str, book: ledger.Ledger, raw: psycopg.Connection, receiver: Receiver
) -> None:
    first = daily(book, "hot", 0, ALLOWANCE)
    book.top_up_tenant("hot", ALLOWANCE)
    for name, percent in THRESHOLDS.items():
        book.set_threshold("hot", name, spent_percent=percent)
    ctx = multiprocessing.get_context("spawn")
    deliverers = [
        ctx.Process(target=_deliverer, args=(db_url, receiver.url)) for _ in range(DELIVERERS)
    ]
    for p in deliverers:
        p.start()
    try:
        _spend_to_zero(ctx, db_url, "hot")
        assert book.period_spend("hot").spent_microcents == ALLOWANCE
        # Kill the deliverer whose request the receiver holds open: mid-handler.
        assert receiver.holding.wait(60)
        assert receiver.held is not None
        held_id = receiver.held["alert_id"]
        row = raw.execute(
            "SELECT claimed_by FROM ledger.alerts WHERE alert_id = %s", (held_id,)
        ).fetchone()
        assert row is not None
        pid = int(row[0].rsplit(":", 1)[1])
        victim = next(p for p in deliverers if p.pid == pid)
        os.kill(pid, signal.SIGKILL)
        victim.join(30)
        assert victim.exitcode == -signal.SIGKILL
        receiver.release.set()

        backdate(raw, "hot", 1)  # the next write renews: a new period re-arms all three
        _spend_to_zero(ctx, db_url, "hot")
        assert book.period_spend("hot").period_index == first + 1

        deadline = time.monotonic() + 90
        while book.alert_backlog().undelivered and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for p in deliverers:
            if p.is_alive():
                p.kill()
            p.join(30)

    records = book.list_alerts(limit=100)
    assert sorted((r.alert.threshold, r.alert.period_index) for r in records) == sorted(
        (name, period) for name in THRESHOLDS for period in (first, first + 1)
    )
    assert all(r.delivered_at is not None for r in records)
    for r in records:  # each crossed when its share was reached, not before
        assert r.alert.spent_microcents >= r.alert.level_microcents
        assert r.alert.spent_microcents - STEP < r.alert.level_microcents
    answered = Counter(body["alert_id"] for body in receiver.answered)
    assert answered == Counter({r.alert.alert_id: 1 for r in records})
    killed = next(r for r in records if r.alert.alert_id == held_id)
    assert killed.alert.attempts >= 2  # claimed by the victim, then by a survivor
    assert book.verify_journal().ok
    with psycopg.connect(_plain(db_url)) as conn:
        assert conn.execute("SELECT count(*) FROM ledger.alerts").fetchone() == (6,)
