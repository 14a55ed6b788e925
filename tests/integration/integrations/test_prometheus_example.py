"""examples/prometheus: the real app on a real port, driven over HTTP and scraped.

Counts are exact: the app is a fresh process, so its counters start at zero.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[3]
PAST = "2000-01-01T00:00:00+00:00"


@pytest.fixture
def app(db_url: str) -> Iterator[str]:
    argv = [sys.executable, str(ROOT / "examples/prometheus/app.py"), "--database-url", db_url]
    with subprocess.Popen(
        [*argv, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line.startswith("serving on "), proc.stderr.read()  # type: ignore[union-attr]
            yield line.split()[-1]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (
            s.name,
            frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_")),
        ): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_scraped_metrics_count_the_workload_exactly(app: str) -> None:
    post = lambda path, **body: httpx.post(f"{app}{path}", json=body)  # noqa: E731
    assert post("/tenants/acme", budget=1_000).status_code == 201
    first = post("/reserve/acme", amount=300).json()["reservation_id"]
    second = post("/reserve/acme", amount=300).json()["reservation_id"]
    refused = post("/reserve/acme", amount=5_000)
    assert refused.status_code == 409 and refused.json()["status"] == "insufficient"
    assert post("/reserve/acme", amount=100, ttl=1).status_code == 200
    assert post(f"/commit/{first}", actual=250).json()["status"] == "committed"
    assert post(f"/release/{second}").json()["status"] == "released"
    assert post("/release/999999").json()["status"] == "missing_reservation"

    time.sleep(1.1)  # the hold lapses (an expires_at in the past is refused)
    before = scrape(app)
    assert value(before, "ledger_holds_open") == 1
    assert value(before, "ledger_holds_lapsed") == 1
    assert value(before, "ledger_tenants_drift") == 0
    assert value(before, "ledger_holds_expired_total") == 0

    assert post("/expire").json() == {"expired": 1}
    m = scrape(app)
    assert value(m, "ledger_holds_opened_total") == 3
    assert value(m, "ledger_holds_settled_total") == 1
    assert value(m, "ledger_holds_released_total") == 1
    assert value(m, "ledger_holds_expired_total") == 1
    assert value(m, "ledger_holds_open") == 0
    assert value(m, "ledger_holds_lapsed") == 0
    assert value(m, "ledger_holds_oldest_age_seconds") == 0
    assert value(m, "ledger_tenants_drift") == 0
    outcomes = "ledger_operation_outcomes_total"
    assert value(m, outcomes, ledger_operation="try_reserve", ledger_outcome="reserved") == 3
    assert value(m, outcomes, ledger_operation="try_reserve", ledger_outcome="insufficient") == 1
    assert value(m, outcomes, ledger_operation="release", ledger_outcome="missing_reservation") == 1
    # ensure_tenant, 4 reserves, commit, 2 releases, expire_holds
    assert value(m, "ledger_operation_duration_seconds_count") == 9
    assert value(m, "ledger_operation_duration_seconds_count", ledger_operation="commit") == 1
    assert value(m, "ledger_cas_retries_total") == 0


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/reserve/acme", b'{"amount": 1.5}'),
        ("/reserve/acme", b'{"amount": "abc"}'),
        ("/reserve/acme", b'{"amount": %d}' % 2**63),
        ("/reserve/acme", b'{"amount": -1}'),
        ("/reserve/acme", b"not json"),
        ("/reserve/acme", b"[1, 2]"),
        ("/tenants/other", b'{"budget": 1.5}'),
    ],
)
def test_bad_bodies_are_a_400_with_a_message(app: str, path: str, content: bytes) -> None:
    assert httpx.post(f"{app}/tenants/acme", json={"budget": 1_000}).status_code == 201
    answer = httpx.post(f"{app}{path}", content=content)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]
    assert httpx.post(f"{app}/reserve/acme", json={"amount": 1_000}).json()["status"] == "reserved"
