"""As-of queries on a million journal entries, with and without as-of checkpoints.

    python -m bench.asof [--database-url URL] [--entries 1000000] [--tenants 1000]

Builds the journal with the set-based batches (``try_reserve_many`` then
``commit_many``: 2 entries per item, a valid, verifiable chain), taking an
as-of checkpoint after every tenth of the build, and notes the time at a
quarter, half and three quarters of it. Then times each query against a
baseline measured in the same run: the naive plain-SQL answer to "spend per
tenant up to T", a scan of the whole journal. Each figure is the best of
``--repeat`` runs. ``EXPLAIN (ANALYZE, BUFFERS)`` of the all-tenant query is
printed with and without checkpoints, to say where the time goes.
Without ``--database-url`` an embedded PostgreSQL is started in a temporary
directory and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import make_url

import ledger
from ledger import BudgetSnapshot, TenantLedger, embedded

SCHEMA = "ledger_asof"
RESULTS = Path(__file__).resolve().parent / "results"

BASELINE = f"""
SELECT tenant_id, sum(amount_microcents) AS spent
FROM {SCHEMA}.journal
WHERE op = 'commit' AND created_at <= %(at)s
GROUP BY tenant_id
"""


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def build(
    book: ledger.Ledger, entries: int, tenants: int, say: Callable[[str], None]
) -> tuple[dict[str, datetime], list[float]]:
    """Grow the journal to ``entries``; returns the marked times and each checkpoint's cost."""
    book.restore_from_snapshot(
        BudgetSnapshot(
            0,
            tuple(TenantLedger(f"t{i:05d}", 10**15, 10**15, 0, 0) for i in range(tenants)),
            0,
        )
    )
    done = tenants
    batch = [(f"t{i % tenants:05d}", 1_000) for i in range(1_000)]
    marks: dict[str, datetime] = {}
    checkpoints: list[float] = []
    tenth = entries // 10
    next_checkpoint = tenth
    while done < entries:
        holds = book.try_reserve_many(batch)
        book.commit_many([(h.reservation_id, 900) for h in holds])
        done += 2 * len(batch)
        for name, fraction in (("t25", 0.25), ("t50", 0.5), ("t75", 0.75)):
            if name not in marks and done >= entries * fraction:
                marks[name] = datetime.now(UTC)
        if done >= next_checkpoint:
            start = time.perf_counter()
            book.asof_checkpoint()
            checkpoints.append(time.perf_counter() - start)
            next_checkpoint += tenth
            say(f"journal at {done:,} entries")
    marks["end"] = datetime.now(UTC)
    return marks, checkpoints


def explain(raw: psycopg.Connection, sql: str, params: dict[str, Any]) -> str:
    rows = raw.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
    return "\n".join(r[0] for r in rows)


def run(url: str, entries: int, tenants: int, repeat: int) -> dict[str, Any]:
    def say(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    ledger.migrate(url, schema=SCHEMA)
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    raw = psycopg.connect(plain, autocommit=True)
    with ledger.Ledger(url, schema=SCHEMA) as book:
        started = time.perf_counter()
        marks, checkpoint_costs = build(book, entries, tenants, say)
        build_seconds = time.perf_counter() - started
        total = raw.execute(f"SELECT count(*) FROM {SCHEMA}.journal").fetchone()[0]  # type: ignore[index]
        raw.execute(f"VACUUM ANALYZE {SCHEMA}.journal")
        raw.execute(f"VACUUM ANALYZE {SCHEMA}.asof_checkpoints")
        raw.execute(f"VACUUM ANALYZE {SCHEMA}.tenants")
        say(f"built {total:,} entries in {build_seconds:.1f} s; measuring")
        one = "t00042"
        queries: dict[str, Callable[[], Any]] = {
            "balance_at one tenant, T = half": lambda: book.balance_at(one, marks["t50"]),
            "balance_at one tenant, T = end": lambda: book.balance_at(one, marks["end"]),
            "balances_at all tenants, T = half": lambda: book.balances_at(marks["t50"]),
            "balances_at all tenants, T = end": lambda: book.balances_at(marks["end"]),
            "spend_between all tenants, quarter..3 quarters": lambda: book.spend_between(
                marks["t25"], marks["t75"]
            ),
            "spend_between one tenant, quarter..3 quarters": lambda: book.spend_between(
                marks["t25"], marks["t75"], tenant_id=one
            ),
            "SQL balances_at(T = half)": lambda: raw.execute(
                f"SELECT * FROM {SCHEMA}.balances_at(%s)", (marks["t50"],)
            ).fetchall(),
        }
        baseline = best(lambda: raw.execute(BASELINE, {"at": marks["t50"]}).fetchall(), repeat)
        answers = {name: fn() for name, fn in queries.items()}
        with_marks = {name: best(fn, repeat) for name, fn in queries.items()}
        all_sql = book._q.asof_balances
        window = {"start": marks["t25"], "end": marks["t75"]}
        plan_with = explain(raw, all_sql, {"at": marks["t50"]})
        spend_with = explain(raw, book._q.asof_spends, window)
        raw.execute(f"CREATE TEMP TABLE saved AS SELECT * FROM {SCHEMA}.asof_checkpoints")
        raw.execute(f"DELETE FROM {SCHEMA}.asof_checkpoints")
        without = {name: best(fn, repeat) for name, fn in queries.items()}
        assert {name: fn() for name, fn in queries.items()} == answers, "a checkpoint changed"
        plan_without = explain(raw, all_sql, {"at": marks["t50"]})
        spend_without = explain(raw, book._q.asof_spends, window)
        start = time.perf_counter()
        book.asof_checkpoint()  # from nothing: reads the whole journal once
        full_checkpoint = time.perf_counter() - start
        raw.execute(f"DELETE FROM {SCHEMA}.asof_checkpoints")
        raw.execute(f"INSERT INTO {SCHEMA}.asof_checkpoints SELECT * FROM saved")
        report = book.verify_journal()
        assert report.ok, report.discrepancies[:3]
    raw.close()
    rows = [
        {
            "query": name,
            "with_checkpoints_s": with_marks[name],
            "without_checkpoints_s": without[name],
            "with_vs_baseline": with_marks[name] / baseline,
            "without_vs_baseline": without[name] / baseline,
        }
        for name in queries
    ]
    return {
        "entries": total,
        "tenants": tenants,
        "build_seconds": build_seconds,
        "baseline_s": baseline,
        "queries": rows,
        "incremental_checkpoint_s": sorted(checkpoint_costs)[len(checkpoint_costs) // 2],
        "full_checkpoint_s": full_checkpoint,
        "plan_with_checkpoints": plan_with,
        "plan_without_checkpoints": plan_without,
        "spend_plan_with_checkpoints": spend_with,
        "spend_plan_without_checkpoints": spend_without,
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['entries']:,} journal entries, {r['tenants']:,} tenants")
    print(
        f"baseline (plain SQL spend per tenant up to T, full journal scan): "
        f"{r['baseline_s'] * 1000:.1f} ms"
    )
    print(f"{'query':<50} {'with ckpt':>10} {'ratio':>7} {'without':>10} {'ratio':>7}")
    for q in r["queries"]:
        print(
            f"{q['query']:<50} {q['with_checkpoints_s'] * 1000:>8.1f}ms "
            f"{q['with_vs_baseline']:>7.3f} {q['without_checkpoints_s'] * 1000:>8.1f}ms "
            f"{q['without_vs_baseline']:>7.3f}"
        )
    print(
        f"asof_checkpoint: {r['incremental_checkpoint_s'] * 1000:.1f} ms per tenth of the build "
        f"(median), {r['full_checkpoint_s'] * 1000:.1f} ms from nothing"
    )
    print("\nEXPLAIN (ANALYZE, BUFFERS) balances_at all tenants, T = half, with checkpoints:")
    print(r["plan_with_checkpoints"])
    print("\n... and without:")
    print(r["plan_without_checkpoints"])
    print("\nEXPLAIN (ANALYZE, BUFFERS) spend_between all tenants, with checkpoints:")
    print(r["spend_plan_with_checkpoints"])
    print("\n... and without:")
    print(r["spend_plan_without_checkpoints"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    server = None
    url = args.database_url
    if url is None:
        server = embedded.start(
            Path(tempfile.mkdtemp(prefix="ledger-bench-asof-")) / "data", cleanup="delete"
        )
        url = server.url
    url = make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    try:
        report = run(url, args.entries, args.tenants, args.repeat)
    finally:
        if server is not None:
            server.stop()
    print_report(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "asof.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
