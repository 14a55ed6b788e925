"""``ledger threshold set|clear|list``, ``ledger alerts`` and ``ledger alerts deliver``."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.cli.test_cli import data, invoke


class Hook(http.server.ThreadingHTTPServer):
    """Answers 500 to the first ``failures`` posts, then 200; records every post."""

    def __init__(self, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures = failures
        self.posts: list[tuple[dict[str, Any], str, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 500 if len(self.server.posts) < self.server.failures else 200
        self.server.posts.append((body, self.headers["Idempotency-Key"], status))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook(failures=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _spend(url: str, tenant: str, amount: str) -> None:
    rid = data(invoke(url, "reserve", tenant, amount))["reservation_id"]
    assert invoke(url, "commit", str(rid), amount, "--tenant", tenant).exit_code == 0


def test_threshold_commands(db_url: str) -> None:
    assert invoke(db_url, "tenant", "create", "acme", "1000000").exit_code == 0
    done = invoke(db_url, "threshold", "set", "acme", "half", "--percent", "50")
    assert done.exit_code == 0, done.output
    assert data(done) == {"tenant_id": "acme", "name": "half", "created": True}
    assert (
        data(invoke(db_url, "threshold", "set", "acme", "half", "--percent", "60"))["created"]
        is False
    )
    low = invoke(db_url, "threshold", "set", "acme", "low", "--remaining-below", "0.001", "--units")
    assert low.exit_code == 0, low.output
    listed = data(invoke(db_url, "threshold", "list", "acme"))["thresholds"]
    assert [
        (t["name"], t["kind"], t["spent_percent"], t["remaining_below_microcents"]) for t in listed
    ] == [
        ("half", "spent_percent", "60", None),
        ("low", "remaining_below", None, 100_000),
    ]
    human = invoke(db_url, "threshold", "list", "acme", as_json=False)
    assert "half: spent >= 60%" in human.output and "low: remaining <" in human.output
    assert invoke(db_url, "threshold", "clear", "acme", "low").exit_code == 0
    assert invoke(db_url, "threshold", "clear", "acme", "low").exit_code == 1


@pytest.mark.parametrize(
    "args",
    [
        ["threshold", "set", "acme", "x"],
        ["threshold", "set", "acme", "x", "--spent", "1", "--percent", "1"],
        ["threshold", "set", "acme", "x", "--percent", "abc"],
        ["threshold", "set", "acme", "x", "--percent", "0"],
        ["threshold", "set", "acme", "x", "--spent", "-3"],
        ["threshold", "set", "nobody", "x", "--spent", "3"],
        ["alerts", "deliver", "--url", "ftp://example.invalid/"],
    ],
)
def test_bad_input_exits_2_and_changes_nothing(db_url: str, args: list[str]) -> None:
    invoke(db_url, "tenant", "create", "acme", "1000")
    result = invoke(db_url, *args)
    assert result.exit_code == 2, result.output
    assert data(invoke(db_url, "threshold", "list", "acme"))["thresholds"] == []


def test_alerts_and_the_webhook_deliverer_with_retries(db_url: str, hook: Hook) -> None:
    invoke(db_url, "tenant", "create", "acme", "1000000")
    invoke(db_url, "threshold", "set", "acme", "half", "--percent", "50")
    invoke(db_url, "threshold", "set", "acme", "most", "--spent", "800000")
    _spend(db_url, "acme", "900000")
    pending = data(invoke(db_url, "alerts", "--undelivered"))["alerts"]
    assert sorted(a["threshold"] for a in pending) == ["half", "most"]
    human = invoke(db_url, "alerts", as_json=False)
    assert "acme half" in human.output and "pending (0 tries)" in human.output
    done = invoke(
        db_url,
        "alerts",
        "deliver",
        "--url",
        hook.url,
        "--backoff",
        "0.05",
        "--no-listen",
        "--poll-interval",
        "0.05",
        "--max-alerts",
        "2",
    )
    assert done.exit_code == 0, done.output
    assert data(done) == {"delivered": 2, "failed_attempts": 2}
    statuses = [(body["threshold"], key, status) for body, key, status in hook.posts]
    assert [s for *_, s in statuses] == [500, 500, 200, 200]
    assert all(key == f"alert-{body['alert_id']}" for body, key, _ in hook.posts)
    assert data(invoke(db_url, "alerts", "--undelivered"))["alerts"] == []
    delivered = data(invoke(db_url, "alerts", "--tenant", "acme"))["alerts"]
    attempts = {a["threshold"]: a["attempts"] for a in delivered}
    assert sum(attempts.values()) == 4  # every attempt recorded
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
        errors = conn.execute("SELECT last_error FROM ledger.alerts").fetchall()
    assert errors == [(None,), (None,)]  # cleared by the delivery
