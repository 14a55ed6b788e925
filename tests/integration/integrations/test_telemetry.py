"""Spans, metrics and log records of ledger operations, against a real server and the real SDK.

The ledger's telemetry is pointed at an SDK ``TracerProvider`` with an
in-memory span exporter and a ``MeterProvider`` with an in-memory reader, per
test (``ledger.telemetry.configure``), so counts are exact and tests do not
see each other's operations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import make_url

import ledger
import ledger.telemetry
from ledger import errors
from ledger._operations import cas, expire_one
from ledger._requests import Fetch, Op
from ledger.cli import commands as _cli

#: A deadline 1 µs after the reserve (on the database clock): lapsed by the next
#: statement. (An expires_at in the past is refused: the hold would be born lapsed.)
LAPSING = timedelta(microseconds=1)


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, Any]]], Any]:
        """{(name, attributes): value}; a histogram's value is its count."""
        out: dict[tuple[str, frozenset[tuple[str, Any]]], Any] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[attr-defined]
                        out[(metric.name, frozenset(point.attributes.items()))] = value
        return out

    def total(self, name: str, **attrs: Any) -> Any:
        """Sum of a metric over the points whose attributes include ``attrs``."""
        want = set(attrs.items())
        return sum(v for (n, a), v in self.metrics().items() if n == name and want <= a)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    ledger.telemetry.configure(tracer_provider=t.tracer_provider, meter_provider=t.meter_provider)
    try:
        yield t
    finally:
        ledger.telemetry.configure()
        t.meter_provider.shutdown()


def attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes)


# ------------------------------------------------------------------- spans


def test_a_span_per_operation_with_tenant_outcome_and_retries(
    telemetry: Telemetry, book: ledger.Ledger
) -> None:
    book.ensure_tenant("acme", 1_000)
    hold = book.try_reserve("acme", 400)
    book.try_reserve("acme", 5_000)  # refused: insufficient
    book.commit(hold.reservation_id, 300)  # type: ignore[arg-type]
    book.release(10**9)  # missing_reservation
    assert book.remaining_microcents("acme") == 700
    spans = telemetry.spans.get_finished_spans()
    assert [s.name for s in spans] == [
        "ledger.ensure_tenant",
        "ledger.try_reserve",
        "ledger.try_reserve",
        "ledger.commit",
        "ledger.release",
        "ledger.remaining_microcents",  # named after the public method, not _tenant_row
    ]
    reserve, refused, commit, release = (attrs(s) for s in spans[1:5])
    assert reserve["ledger.tenant_id"] == "acme"
    assert reserve["ledger.outcome"] == "reserved"
    assert reserve["ledger.retries"] == 0 and reserve["ledger.cas_retries"] == 0
    assert reserve["ledger.idempotent_replay"] is False
    assert refused["ledger.outcome"] == "insufficient"
    assert commit["ledger.reservation_id"] == hold.reservation_id
    assert commit["ledger.outcome"] == "committed"
    assert "ledger.tenant_id" not in commit  # commit() was not told the tenant
    assert release["ledger.outcome"] == "missing_reservation"
    assert attrs(spans[5])["ledger.tenant_id"] == "acme"


def test_an_error_ends_its_span_with_the_error_type(
    telemetry: Telemetry, book: ledger.Ledger
) -> None:
    with pytest.raises(errors.TenantNotFound):
        book.set_max_reserved_microcents("nobody", 5)
    (span,) = telemetry.spans.get_finished_spans()
    assert span.name == "ledger.set_max_reserved_microcents"
    assert attrs(span)["error.type"] == "TenantNotFound"
    assert span.status.status_code.name == "ERROR"
    assert telemetry.total("ledger.operation.outcomes", **{"ledger.outcome": "error"}) == 1


#: Reads whose statement runs in a private helper (``_tenant_row``, ``_counts``):
#: each span must still carry the public method's name, as documented.
READS = [
    ("tenant", ("acme",)),
    ("remaining_microcents", ("acme",)),
    ("reserved_microcents", ("acme",)),
    ("committed_microcents", ("acme",)),
    ("initial_microcents", ("acme",)),
    ("max_reserved_microcents", ("acme",)),
    ("tenant_count", ()),
    ("active_reservations", ()),
    ("total_committed_microcents", ()),
    ("committed_since_last_certificate", ()),
    ("snapshot_version", ()),
]


def test_each_span_is_named_after_the_public_method_called(
    telemetry: Telemetry, book: ledger.Ledger, db_url: str
) -> None:
    book.ensure_tenant("acme", 1_000)
    telemetry.spans.clear()
    for method, args in READS:
        getattr(book, method)(*args)

    async def main() -> None:
        async with ledger.AsyncLedger(db_url) as abook:
            for method, args in READS:
                await getattr(abook, method)(*args)

    asyncio.run(main())
    names = [s.name for s in telemetry.spans.get_finished_spans()]
    documented = [f"ledger.{method}" for method, _ in READS]
    assert names == documented + documented
    tenants = [attrs(s).get("ledger.tenant_id") for s in telemetry.spans.get_finished_spans()]
    assert tenants == 2 * [("acme" if args else None) for _, args in READS]


class BrokenProcessor(SpanProcessor):
    """A span processor that fails (the SDK passes its exception on to span.end())."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if span.name == "ledger.ensure_tenant":
            raise RuntimeError("processor broken at start")

    def on_end(self, span: Any) -> None:
        raise RuntimeError("processor broken at end")


def test_failing_telemetry_does_not_change_what_an_operation_does(
    telemetry: Telemetry, book: ledger.Ledger, caplog: Any
) -> None:
    """A spend that happened must not look failed (the caller would retry it)."""
    telemetry.tracer_provider.add_span_processor(BrokenProcessor())
    caplog.set_level(logging.WARNING, logger="ledger")
    assert book.ensure_tenant("t", 1_000) is True  # the span could not even start
    hold = book.try_reserve("t", 100)
    assert hold.status == "reserved"
    assert book.commit(hold.reservation_id, 100).status == "committed"  # type: ignore[arg-type]
    assert book.tenant("t") == ledger.TenantLedger("t", 1_000, 900, 0, 100)
    assert telemetry.total("ledger.holds.opened") == 1  # metrics still recorded
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 4  # ensure_tenant's start, then three span ends
    assert all("operation is unaffected" in r.getMessage() for r in warned)


# ------------------------------------------------------------------ metrics


def scripted(book: ledger.Ledger) -> None:
    """4 holds opened (one replayed, not counted twice), 1 settled, 1 released, 1 expired."""
    book.ensure_tenant("t", 1_000)
    a = book.try_reserve("t", 100, idempotency_key="k-1")
    again = book.try_reserve("t", 100, idempotency_key="k-1")  # a replay
    assert again == a
    b = book.try_reserve("t", 100)
    c = book.try_reserve("t", 100)
    assert book.try_reserve("t", 10_000).status == "insufficient"
    book.try_reserve("t", 100, ttl=LAPSING)  # swept below
    assert book.commit(a.reservation_id, 50).status == "committed"  # type: ignore[arg-type]
    assert book.release(b.reservation_id).status == "released"  # type: ignore[arg-type]
    assert book.expire_holds() == 1
    assert c.ok


def check_scripted(t: Telemetry) -> None:
    assert t.total("ledger.holds.opened") == 4
    assert t.total("ledger.holds.settled") == 1
    assert t.total("ledger.holds.released") == 1
    assert t.total("ledger.holds.expired") == 1
    assert t.total("ledger.idempotent.replays") == 1
    assert t.total("ledger.idempotent.replays", **{"ledger.operation": "try_reserve"}) == 1
    assert t.total("ledger.cas.retries") == 0
    out = "ledger.operation.outcomes"
    assert t.total(out, **{"ledger.operation": "try_reserve", "ledger.outcome": "reserved"}) == 5
    assert (
        t.total(out, **{"ledger.operation": "try_reserve", "ledger.outcome": "insufficient"}) == 1
    )
    assert t.total(out, **{"ledger.outcome": "committed"}) == 1
    assert t.total(out, **{"ledger.outcome": "released"}) == 1
    # every operation timed: ensure, 6 reserves, commit, release, expire_holds
    assert t.total("ledger.operation.duration") == 10
    assert t.total("ledger.operation.duration", **{"ledger.operation": "expire_holds"}) == 1


def test_metrics_are_exact_after_a_scripted_workload(
    telemetry: Telemetry, book: ledger.Ledger
) -> None:
    scripted(book)
    check_scripted(telemetry)
    spans = telemetry.spans.get_finished_spans()
    assert [attrs(s)["ledger.idempotent_replay"] for s in spans[1:3]] == [False, True]


def test_async_ledger_metrics_and_spans(telemetry: Telemetry, db_url: str) -> None:
    async def main() -> None:
        async with ledger.AsyncLedger(db_url) as book:
            await book.ensure_tenant("t", 1_000)
            a = await book.try_reserve("t", 100, idempotency_key="k-1")
            assert await book.try_reserve("t", 100, idempotency_key="k-1") == a
            b = await book.try_reserve("t", 100)
            c = await book.try_reserve("t", 100)
            assert (await book.try_reserve("t", 10_000)).status == "insufficient"
            await book.try_reserve("t", 100, ttl=LAPSING)
            await book.commit(a.reservation_id, 50)  # type: ignore[arg-type]
            await book.release(b.reservation_id)  # type: ignore[arg-type]
            assert await book.expire_holds() == 1
            assert c.ok

    asyncio.run(main())
    check_scripted(telemetry)
    spans = telemetry.spans.get_finished_spans()
    assert spans[1].name == "ledger.try_reserve"
    assert attrs(spans[1])["ledger.tenant_id"] == "t"


def test_batches_count_every_item(telemetry: Telemetry, book: ledger.Ledger) -> None:
    book.ensure_tenant("t", 1_000)
    holds = book.try_reserve_many([("t", 100), ("t", 100), ("t", 5_000)])
    assert [h.status for h in holds] == ["reserved", "reserved", "insufficient"]
    book.commit_many([(holds[0].reservation_id, 100)])
    assert telemetry.total("ledger.holds.opened") == 2
    assert telemetry.total("ledger.holds.settled") == 1
    span = telemetry.spans.get_finished_spans()[1]
    assert attrs(span)["ledger.outcome"] == "batch"
    assert attrs(span)["ledger.batch.size"] == 3


def probe(book: ledger.Ledger, op: Op[Any]) -> Any:
    return book._run(op, None, name="probe")


def test_cas_and_serialization_retries_reach_span_metrics_and_log(
    telemetry: Telemetry, book: ledger.Ledger, raw: psycopg.Connection, caplog: Any
) -> None:
    # Real statements that answer 'retry' once, and fail with 40001 once.
    raw.execute("CREATE SEQUENCE tries")
    raw.execute("CREATE SEQUENCE fails")
    raw.execute(
        "CREATE FUNCTION conflict_once() RETURNS text LANGUAGE plpgsql AS $$ BEGIN "
        "IF nextval('fails') = 1 THEN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; "
        "END IF; RETURN 'done'; END $$"
    )
    retry_once = "SELECT CASE WHEN nextval('tries') = 1 THEN 'retry' ELSE 'done' END AS status"

    def cas_steps() -> Any:
        return (yield from cas(retry_once, {})).status

    def conflict_steps() -> Any:
        return (yield Fetch("SELECT conflict_once() AS status", {}))[0].status

    caplog.set_level(logging.INFO, logger="ledger")
    assert probe(book, Op(cas_steps)) == "done"
    assert probe(book, Op(conflict_steps, "SERIALIZABLE")) == "done"  # whole transaction
    raw.execute("SELECT setval('fails', 1, false)")
    assert probe(book, Op(conflict_steps)) == "done"  # one autocommit statement
    spans = [attrs(s) for s in telemetry.spans.get_finished_spans()]
    assert [(s["ledger.cas_retries"], s["ledger.retries"]) for s in spans] == [
        (1, 0),
        (0, 1),
        (0, 1),
    ]
    assert telemetry.total("ledger.cas.retries") == 1
    assert telemetry.total("ledger.transaction.retries") == 2
    assert telemetry.total("ledger.transaction.retries", **{"error.type": "SerializationConflict"})
    cas_logged = [r for r in caplog.records if "compare-and-swap" in r.getMessage()]
    assert cas_logged == []  # DEBUG: routine under contention
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.INFO, logging.INFO]
    assert "transaction after SerializationConflict" in retries[0].getMessage()
    assert "statement after SerializationConflict" in retries[1].getMessage()

    # What a rolled-back attempt reported is forgotten: one expiry, not two.
    book.ensure_tenant("t", 100)
    book.try_reserve("t", 40, ttl=LAPSING)
    raw.execute("SELECT setval('fails', 1, false)")

    def expire_then_conflict() -> Any:
        yield from expire_one(book._q, book._q.expire_any, skip=[])
        return (yield Fetch("SELECT conflict_once() AS status", {}))[0].status

    assert probe(book, Op(expire_then_conflict, "READ COMMITTED")) == "done"
    assert attrs(telemetry.spans.get_finished_spans()[-1])["ledger.retries"] == 1
    assert telemetry.total("ledger.holds.expired") == 1
    assert book.tenant("t") == ledger.TenantLedger("t", 100, 100, 0, 0)


def test_async_retries(telemetry: Telemetry, db_url: str, raw: psycopg.Connection) -> None:
    raw.execute("CREATE SEQUENCE fails")
    raw.execute(
        "CREATE FUNCTION conflict_once() RETURNS text LANGUAGE plpgsql AS $$ BEGIN "
        "IF nextval('fails') = 1 THEN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; "
        "END IF; RETURN 'done'; END $$"
    )

    def conflict_steps() -> Any:
        return (yield Fetch("SELECT conflict_once() AS status", {}))[0].status

    async def main() -> None:
        async with ledger.AsyncLedger(db_url) as book:
            assert await book._run(Op(conflict_steps, "SERIALIZABLE"), None, name="probe") == "done"
            raw.execute("SELECT setval('fails', 1, false)")
            assert await book._run(Op(conflict_steps), None, name="probe") == "done"

    asyncio.run(main())
    spans = [attrs(s) for s in telemetry.spans.get_finished_spans()]
    assert [s["ledger.retries"] for s in spans] == [1, 1]
    assert telemetry.total("ledger.transaction.retries") == 2


# ---------------------------------------------------------- observed gauges


def test_observed_gauges_run_only_when_collected(
    telemetry: Telemetry, book: ledger.Ledger, raw: psycopg.Connection, caplog: Any
) -> None:
    book.ensure_tenant("u", 1_000)
    book.ensure_tenant("gone", 5)
    # Every kind of write keeps rows and journal heads together: drift stays 0.
    book.restore_from_snapshot(
        ledger.BudgetSnapshot(7, (ledger.TenantLedger("u", 1_000, 1_000, 0, 0),), 0)
    )
    book.ensure_tenant("t", 1_000)
    book.top_up_tenant("t", 500, idempotency_key="top")
    book.set_max_reserved_microcents("t", 10_000)
    spent = book.try_reserve("t", 300)
    book.commit(spent.reservation_id, 200)  # type: ignore[arg-type]
    book.commit_many([(book.try_reserve("t", 10).reservation_id, 10)])
    book.certify()
    book.set_threshold("t", "spent", spent_microcents=1)  # already crossed: one alert
    book.try_reserve("t", 100, ttl=LAPSING)
    book.try_reserve("t", 100, ttl=timedelta(hours=1))
    raw.execute("UPDATE ledger.reservations SET created_at = now() - interval '1 hour'")
    raw.execute("UPDATE ledger.alerts SET created_at = now() - interval '2 minutes'")
    ledger.telemetry.observe(book, meter_provider=telemetry.meter_provider)
    m = telemetry.metrics()
    assert m[("ledger.alerts.backlog", frozenset())] == 1
    assert 120 <= m[("ledger.alerts.oldest_age", frozenset())] < 200
    assert m[("ledger.holds.open", frozenset())] == 2
    assert m[("ledger.holds.lapsed", frozenset())] == 1
    assert 3600 <= m[("ledger.holds.oldest_age", frozenset())] < 3700
    assert m[("ledger.tenants.drift", frozenset())] == 0
    # A row written around the ledger (balances still conserve) is drift.
    raw.execute(
        "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents - 1,"
        " committed_microcents = committed_microcents + 1 WHERE tenant_id = 'u'"
    )
    caplog.set_level(logging.ERROR, logger="ledger")
    assert telemetry.metrics()[("ledger.tenants.drift", frozenset())] == 1
    assert [r.levelno for r in caplog.records if "drift" in r.getMessage()] == [logging.ERROR]
    # Collection is the only time the queries run: no ledger spans from it.
    assert telemetry.spans.get_finished_spans()[-1].name == "ledger.try_reserve"


# ------------------------------------------------------------------ logging


def test_log_records_at_their_levels_and_no_secrets(
    server_url: str, db_url: str, raw: psycopg.Connection, caplog: Any
) -> None:
    secret = "s3cr3t-Pa55word"
    raw.execute(f"CREATE ROLE telemetry_app LOGIN PASSWORD '{secret}' SUPERUSER")
    url = make_url(db_url).set(username="telemetry_app", password=secret)
    caplog.set_level(logging.DEBUG)  # every logger, every level
    with ledger.Ledger(url.render_as_string(hide_password=False)) as book:
        book.ensure_tenant("t", 100)
        book.try_reserve("t", 1_000, idempotency_key="secret-key-7f3a")  # refused
        book.commit(10**9, 1, tenant_id="t", idempotency_key="secret-key-7f3a-2")  # missing
        book.try_reserve("t", 40, ttl=LAPSING)
        assert book.expire_holds() == 1
        raw.execute(
            "UPDATE ledger.tenants SET initial_microcents = initial_microcents + 1,"
            " remaining_microcents = remaining_microcents + 1"
        )
        assert not book.verify_journal().ok
        bad = ledger.Ledger(url.set(port=1).render_as_string(hide_password=False))
        with pytest.raises(errors.LedgerError):
            bad.ensure_tenant("t", 1)
        bad.close()
    mine = [r for r in caplog.records if r.name == "ledger"]
    levels = {r.getMessage().split(":")[0].split(" (")[0]: r.levelno for r in mine}
    assert levels["try_reserve refused"] == logging.DEBUG
    assert levels["commit refused"] == logging.DEBUG
    assert any(
        r.levelno == logging.INFO and r.getMessage().startswith("expired hold") for r in mine
    )
    failures = [r for r in mine if r.levelno == logging.ERROR]
    assert len(failures) == 1 and failures[0].getMessage().startswith("verify_journal failed")
    text = caplog.text + "".join(str(vars(r)) for r in caplog.records)
    assert secret not in text
    assert "secret-key" not in text


def test_without_opentelemetry_the_ledger_works_and_still_logs(db_url: str) -> None:
    script = """
import logging, sys
sys.modules["opentelemetry"] = None  # as if the package were not installed
import ledger, ledger.telemetry
from ledger import _telemetry
assert _telemetry._OTEL is False
records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("ledger").addHandler(handler)
logging.getLogger("ledger").setLevel(logging.DEBUG)
with ledger.Ledger(sys.argv[1]) as book:
    ledger.telemetry.configure()
    ledger.telemetry.observe(book)
    book.ensure_tenant("t", 100)
    hold = book.try_reserve("t", 60)
    book.try_reserve("t", 60)
    book.commit(hold.reservation_id, 60)
    print(book.remaining_microcents("t"), [r.getMessage() for r in records])
"""
    done = subprocess.run(
        [sys.executable, "-c", script, db_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "40 ['try_reserve refused: insufficient (tenant t, reservation -)']"
    )


def test_global_providers_are_used_once_the_application_sets_them(db_url: str) -> None:
    """The default path: no configure(), the API's placeholders until the SDK is set."""
    script = """
import sys
import ledger
from ledger import _telemetry
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
with ledger.Ledger(sys.argv[1]) as book:
    book.ensure_tenant("t", 100)
    assert _telemetry._active() is None  # nothing would record: the light path
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    _telemetry._next_check = 0.0  # the next operation asks again (else within a second)
    book.try_reserve("t", 10)
    book.try_reserve("t", 10)
points = [
    (m.name, p.count)
    for rm in reader.get_metrics_data().resource_metrics
    for sm in rm.scope_metrics
    for m in sm.metrics
    for p in m.data.data_points
    if m.name == "ledger.operation.duration"
]
print(points)
"""
    done = subprocess.run(
        [sys.executable, "-c", script, db_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('ledger.operation.duration', 2)]"


# -------------------------------------------------------------------- stats


def test_stats_command(db_url: str, raw: psycopg.Connection) -> None:
    """Refusal rows of chosen ages are written straight into the log here, to test
    the window; test_stats_counts_the_refusals_the_ledger_logged drives real ones."""
    with ledger.Ledger(db_url) as book:
        for tenant, spend in (("a", 50), ("b", 300), ("c", 200), ("idle", 0)):
            book.ensure_tenant(tenant, 1_000)
            if spend:
                hold = book.try_reserve(tenant, spend)
                book.commit(hold.reservation_id, spend)  # type: ignore[arg-type]
        book.try_reserve("a", 10, ttl=LAPSING)
        book.try_reserve("a", 10, ttl=timedelta(hours=1))
    raw.execute(
        "INSERT INTO ledger.refusals (tenant_id, op, status, amount_microcents, created_at) VALUES"
        " ('a', 'reserve', 'insufficient', 5000, now()),"
        " ('b', 'reserve', 'insufficient', 7000, now() - interval '5 minutes'),"
        " ('b', 'commit', 'overrun', 900, now()),"
        " ('c', 'reserve', 'insufficient', 1, now() - interval '2 hours')"
    )
    raw.execute(
        "UPDATE ledger.tenants SET renews_at = now() - interval '1 day' WHERE tenant_id = 'c';"
        "UPDATE ledger.tenants SET renews_at = now() + interval '1 day' WHERE tenant_id = 'b'"
    )
    argv = ["--database-url", db_url, "--json", "stats", "--minutes", "30", "--top", "2"]
    result = CliRunner().invoke(_cli.main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["open_holds"] == 2 and out["lapsed_holds"] == 1
    assert out["refusals"] == {
        "minutes": 30,
        "total": 3,
        "by_status": [
            {"operation": "reserve", "status": "insufficient", "count": 2},
            {"operation": "commit", "status": "overrun", "count": 1},
        ],
    }
    assert out["top_spenders"] == [
        {"tenant_id": "b", "committed_microcents": 300},
        {"tenant_id": "c", "committed_microcents": 200},
    ]
    assert out["renewals_due"]["total"] == 1
    assert [t["tenant_id"] for t in out["renewals_due"]["tenants"]] == ["c"]
    human = CliRunner().invoke(_cli.main, ["--database-url", db_url, "stats"])
    assert human.exit_code == 0
    assert "open holds: 2 (lapsed: 1" in human.output
    assert "refusals in the last 60 min: 3" in human.output
    bad = CliRunner().invoke(_cli.main, ["--database-url", db_url, "--json", "stats", "--top", "0"])
    assert bad.exit_code == _cli.EXIT_BAD_INPUT
    assert "top must be a positive int" in json.loads(bad.output)["error"]


def test_stats_counts_the_refusals_the_ledger_logged(db_url: str) -> None:
    """End to end: refused spends write the refusals log, and stats reads it back."""
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("r", 100)
        assert book.try_reserve("r", 500).status == "insufficient"
        book.set_max_reserved_microcents("r", 60)
        assert book.try_reserve("r", 70).status == "exposure_limit_exceeded"
        hold = book.try_reserve("r", 50).raise_for_status()
        assert book.commit(hold.reservation_id, 101, tenant_id="r").status == "overrun"
        assert [o.status for o in book.try_reserve_many([("r", 20), ("r", 5)])] == [
            "exposure_limit_exceeded",
            "reserved",
        ]
        stats = book.stats(minutes=5)
    assert sorted(stats.refusals) == [
        ("commit", "overrun", 1),
        ("reserve", "exposure_limit_exceeded", 2),
        ("reserve", "insufficient", 1),
    ]
    assert stats.refused == 4


def test_stats_async_matches(db_url: str) -> None:
    async def main() -> ledger.LedgerStats:
        async with ledger.AsyncLedger(db_url) as book:
            await book.ensure_tenant("a", 100)
            await book.try_reserve("a", 10)
            return await book.stats()

    found = asyncio.run(main())
    with ledger.Ledger(db_url) as book:
        now = book.stats()
    assert replace(now, oldest_hold_age_seconds=0) == replace(found, oldest_hold_age_seconds=0)
    assert found.open_holds == 1 and found.top_spenders == ()
