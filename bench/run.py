"""Throughput of reserve->commit cycles, against baselines measured in the same run.

    python -m bench.run                 # full run (a few minutes)
    python -m bench.run --smoke         # seconds; proves the harness works (CI)
    python -m bench.run --database-url postgresql://...
    python -m bench.run --http          # the example apps under gunicorn/uvicorn (bench/http.py)
    python -m bench.run --litellm       # LiteLLM proxy's added latency p50/p99 (bench/litellm.py)
    python -m bench.run --citus postgresql://...   # Citus routing + ratio to plain (bench/citus.py)

Clients are separate processes, so Python's GIL does not hide the database.
Every figure is reported next to a baseline from the same invocation, because
absolute numbers drift on shared machines:

- ``pgbench``: PostgreSQL's own driver running the ledger's exact statements
  (the physical limit for this design on this machine);
- ``naive``: SELECT ... FOR UPDATE, check in Python, separate UPDATE/INSERT;
- ``nojournal``: the ledger's statements without the journal, to price it.

Results go to ``bench/results/latest.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url

import ledger
from ledger import BudgetSnapshot, TenantLedger, embedded
from ledger._queries import for_schema

from .baselines import Naive, NoJournal, pgbench_script

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = 10**15
AMOUNT, ACTUAL = 1_000, 900


@dataclass
class Measurement:
    implementation: str
    workload: str
    clients: int
    cycles: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0


def _worker(
    impl: str, url: str, tenants: int, seconds: float, seed: int, start: Any
) -> tuple[int, float]:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    closers: list[Any] = [engine.dispose]
    if impl == "ledger":
        # Made from the URL, as an application would: the ledger's own pool.
        book = ledger.Ledger(url)
        closers.append(book.close)

        def cycle(tenant: str) -> None:
            hold = book.try_reserve(tenant, AMOUNT)
            assert hold.reservation_id is not None, hold
            out = book.commit(hold.reservation_id, ACTUAL, tenant_id=tenant)
            assert out.ok, out
    elif impl == "nojournal":
        nojournal = NoJournal(engine)
        closers.append(nojournal.close)
        cycle = lambda tenant: nojournal.cycle(tenant, AMOUNT, ACTUAL)  # noqa: E731
    else:
        naive = Naive(engine)
        cycle = lambda tenant: naive.cycle(tenant, AMOUNT, ACTUAL)  # noqa: E731
    import random

    rng = random.Random(seed)
    for _ in range(10):  # warm the pool and psycopg's prepared statements
        cycle(f"t{rng.randrange(tenants)}")
    start.wait()
    count = 0
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        cycle(f"t{rng.randrange(tenants)}")
        count += 1
    elapsed = time.perf_counter() - began
    for close in reversed(closers):
        close()
    return count, elapsed


def _batch_worker(
    url: str, tenants: int, seconds: float, seed: int, start: Any, size: int
) -> tuple[int, float]:
    book = ledger.Ledger(url)
    import random

    rng = random.Random(seed)

    def cycle() -> None:
        items = [(f"t{rng.randrange(tenants)}", AMOUNT) for _ in range(size)]
        holds = book.try_reserve_many(items)
        book.commit_many([(h.reservation_id, ACTUAL) for h in holds])

    cycle()
    start.wait()
    count = 0
    began = time.perf_counter()
    while time.perf_counter() < began + seconds:
        cycle()
        count += size
    elapsed = time.perf_counter() - began
    book.close()
    return count, elapsed


def run_batches(url: str, tenants: int, clients: int, seconds: float, size: int) -> Measurement:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(clients) as pool:
            pending = [
                pool.apply_async(_batch_worker, (url, tenants, seconds, i, start, size))
                for i in range(clients)
            ]
            time.sleep(1.0 + 0.2 * clients)
            start.set()
            results = [p.get(seconds * 20 + 120) for p in pending]
    return Measurement(
        f"batch{size}",
        _name(tenants),
        clients,
        sum(c for c, _ in results),
        max(e for _, e in results),
    )


def run_python(impl: str, url: str, tenants: int, clients: int, seconds: float) -> Measurement:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(clients) as pool:
            pending = [
                pool.apply_async(_worker, (impl, url, tenants, seconds, i, start))
                for i in range(clients)
            ]
            time.sleep(0.5 + 0.2 * clients)  # let every client warm up
            start.set()
            results = [p.get(seconds * 20 + 120) for p in pending]
    cycles = sum(c for c, _ in results)
    elapsed = max(e for _, e in results)
    return Measurement(impl, _name(tenants), clients, cycles, elapsed)


def run_pgbench(pgbench: Path, url: str, tenants: int, clients: int, seconds: float) -> Measurement:
    script = Path(tempfile.mkstemp(suffix=".sql")[1])
    script.write_text(pgbench_script(for_schema("ledger"), tenants))
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    cmd = [
        str(pgbench),
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 4)),
        "-T",
        str(max(1, round(seconds))),
        "-f",
        str(script),
        conninfo,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
    script.unlink()
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr[-2000:]}")
    processed = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    assert processed and tps, out.stdout
    cycles = int(processed.group(1))
    return Measurement("pgbench", _name(tenants), clients, cycles, cycles / float(tps.group(1)))


def _name(tenants: int) -> str:
    return "hot" if tenants == 1 else f"spread{tenants}"


def prepare(url: str, tenants: int) -> None:
    with ledger.Ledger(url) as book:
        book.restore_from_snapshot(
            BudgetSnapshot(
                0,
                tuple(TenantLedger(f"t{i}", BUDGET, BUDGET, 0, 0) for i in range(tenants)),
                0,
            )
        )


def settings(url: str) -> dict[str, str]:
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    names = [
        "server_version",
        "max_connections",
        "shared_buffers",
        "fsync",
        "synchronous_commit",
        "wal_level",
        "full_page_writes",
    ]
    with psycopg.connect(conninfo) as conn:
        return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


def table(rows: list[Measurement]) -> str:
    by_key = {(m.implementation, m.workload, m.clients): m for m in rows}
    lines = [
        f"{'workload':<12}{'clients':>8}{'impl':>11}{'cycles/s':>11}"
        f"{'vs pgbench':>12}{'vs naive':>10}{'vs nojournal':>14}"
    ]
    for m in rows:

        def ratio(other: str, m: Measurement = m) -> str:
            base = by_key.get((other, m.workload, m.clients))
            if base is None or base is m or not base.per_second:
                return "-"
            return f"{m.per_second / base.per_second:.2f}x"

        lines.append(
            f"{m.workload:<12}{m.clients:>8}{m.implementation:>11}{m.per_second:>11.0f}"
            f"{ratio('pgbench'):>12}{ratio('naive'):>10}{ratio('nojournal'):>14}"
        )
    return "\n".join(lines)


def targets(rows: list[Measurement]) -> str:
    """The issue's targets, as ratios measured in this run (reported, never asserted)."""
    rate = {(m.implementation, m.workload, m.clients): m.per_second for m in rows}
    lines = ["targets:"]
    for (impl, workload, clients), value in sorted(rate.items()):
        if impl != "ledger":
            continue
        base = rate.get(("pgbench", workload, clients))
        if base:
            lines.append(
                f"  ledger/pgbench {workload} {clients:>2} clients: "
                f"{value / base:.2f}x (target >= 0.8x)"
            )
    for workload in sorted({w for _, w, _ in rate}):
        naive = rate.get(("naive", workload, 16))
        mine = rate.get(("ledger", workload, 16))
        if naive and mine:
            lines.append(
                f"  ledger/naive {workload} 16 clients: {mine / naive:.2f}x (target >= 2x)"
            )
        hot = [v for (i, w, _), v in rate.items() if i == "ledger" and w == workload]
        at16 = rate.get(("ledger", workload, 16))
        if hot and at16:
            lines.append(
                f"  ledger {workload} at 16 clients / best: {at16 / max(hot):.2f}x (target >= 0.8x)"
            )
        single = rate.get(("ledger", workload, 1))
        batch = max(
            (
                v
                for (i, w, c), v in rate.items()
                if i.startswith("batch") and w == workload and c == 1
            ),
            default=None,
        )
        if single and batch:
            lines.append(
                f"  batch/single {workload} 1 client: {batch / single:.1f}x (target >= 20x)"
            )
    return "\n".join(lines)


def seconds_for(args: argparse.Namespace) -> float:
    return 0.5 if args.smoke else float(args.seconds)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.http:
        return run_http(args)
    if args.litellm:
        return run_litellm(args)
    return run_all(args)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument(
        "--smoke", action="store_true", help="tiny run that proves the harness works"
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--spread", type=int, default=10_000, help="tenants in the spread workload")
    parser.add_argument("--only", default="pgbench,ledger,nojournal,naive")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--scale-tenants", default="10000,100000")
    parser.add_argument("--scale-journal", default="100000,1000000")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--scale-only", action="store_true", help="skip the throughput runs")
    parser.add_argument(
        "--http",
        action="store_true",
        help="only the example apps under their real servers: requests/s, p50, p99",
    )
    parser.add_argument(
        "--litellm",
        action="store_true",
        help="only the LiteLLM proxy with and without the ledger's callback: added p50, p99",
    )
    parser.add_argument("--litellm-calls", type=int, default=400, help="calls per proxy")
    parser.add_argument("--litellm-clients", default="1,8")
    parser.add_argument("--http-apps", default="flask,django,fastapi")
    parser.add_argument("--http-clients", default="1,32")
    parser.add_argument("--http-work-ms", default="200", help="simulated work per request")
    parser.add_argument(
        "--citus",
        metavar="URL",
        help="a Citus coordinator: report remote commands per operation and the "
        "reserve->commit ratio to plain PostgreSQL (--spread tenants, 16 clients), then exit",
    )
    parser.add_argument("--plain", metavar="URL", help="with --citus: plain PostgreSQL to compare")
    return parser.parse_args(argv)


def run_thresholds(
    url: str, args: argparse.Namespace, seconds: float, wanted: bool
) -> dict[str, Any] | None:
    """Issue 26: the same reserve->commit cycles on tenants with and without thresholds."""
    if not wanted:
        return None
    from .thresholds import compare
    from .thresholds import report as thresholds_report

    result = compare(url, seconds, 1 if args.smoke else 4, 1 if args.smoke else 2)
    print("  " + thresholds_report(result), file=sys.stderr)
    return result


def print_thresholds(result: dict[str, Any] | None) -> None:
    if result is not None:
        from .thresholds import report as thresholds_report

        print(thresholds_report(result))


def run_all(args: argparse.Namespace) -> int:
    """The throughput, batch and scale runs (or ``--citus``)."""
    if args.citus:
        from .citus import run as run_citus

        clients_at = 2 if args.smoke else 16
        report = run_citus(args.citus, args.plain, args.spread, clients_at, seconds_for(args))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "citus.json").write_text(json.dumps(report, indent=2))
        return 0

    clients = [1] if args.smoke else [int(c) for c in args.clients.split(",")]
    seconds = 0.5 if args.smoke else args.seconds
    workloads = [] if args.scale_only else [1] if args.smoke else [1, args.spread]
    impls = args.only.split(",")

    server = None
    url = args.database_url
    if url is None:
        server = embedded.start(
            Path(tempfile.mkdtemp(prefix="ledger-bench-")) / "data",
            cleanup="delete",
            settings={"max_connections": "100"},
        )
        url = server.url
    url = make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    ledger.migrate(url)
    pgbench = (server.bin_dir / "pgbench") if server else Path(os.environ.get("PGBENCH", "pgbench"))

    rows: list[Measurement] = []
    try:
        for tenants in workloads:
            prepare(url, tenants)
            for n in clients:
                for impl in impls:
                    if impl == "pgbench":
                        m = run_pgbench(pgbench, url, tenants, n, seconds)
                    else:
                        m = run_python(impl, url, tenants, n, seconds)
                    rows.append(m)
                    print(
                        f"  {m.workload} {n:>2} clients {impl:>10}: {m.per_second:9.0f} cycles/s",
                        file=sys.stderr,
                    )
            for n in [1] if args.smoke else [1, 4]:
                size = 10 if args.smoke else args.batch_size
                m = run_batches(url, tenants, n, max(seconds, 1.0), size)
                rows.append(m)
                print(
                    f"  {m.workload} {n:>2} clients {m.implementation:>10}: "
                    f"{m.per_second:9.0f} cycles/s",
                    file=sys.stderr,
                )
        thresholds = run_thresholds(url, args, seconds, bool(workloads) and "ledger" in impls)
        scale_points: list[dict[str, Any]] = []
        if not args.skip_scale:
            from .scale import journal_scale, tenant_scale

            tenant_sizes = [200] if args.smoke else [int(x) for x in args.scale_tenants.split(",")]
            journal_sizes = (
                [4_000] if args.smoke else [int(x) for x in args.scale_journal.split(",")]
            )
            points = tenant_scale(url, tenant_sizes)
            points += journal_scale(
                url, journal_sizes, lambda msg: print("  " + msg, file=sys.stderr)
            )
            scale_points = [p.as_dict() for p in points]
        with ledger.Ledger(url) as book:
            assert book.verify_conservation().is_balanced
        report = {
            "settings": settings(url),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "seconds_per_run": seconds,
            "measurements": [{**asdict(m), "per_second": m.per_second} for m in rows],
            "scale": scale_points,
            "thresholds": thresholds,
        }
    finally:
        if server is not None:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("smoke.json" if args.smoke else "latest.json")
    out.write_text(json.dumps(report, indent=2))
    print("server:", ", ".join(f"{k}={v}" for k, v in report["settings"].items()))
    print(table(rows))
    print(targets(rows))
    print_thresholds(report["thresholds"])
    if report["scale"]:
        print(f"{'operation':<22}{'size':>10}{'seconds':>10}{'us/item':>10}{'peak MiB':>10}")
        for p in report["scale"]:
            print(
                f"{p['operation']:<22}{p['size']:>10}{p['seconds']:>10.3f}"
                f"{p['per_item_us']:>10.2f}{p['peak_mib']:>10.2f}"
            )
    print(f"results: {out}")
    return 0


def run_litellm(args: argparse.Namespace) -> int:
    """``--litellm``: two real LiteLLM proxies, with and without the callback."""
    from . import litellm as bench_litellm

    server = None
    url = args.database_url
    if url is None:
        server = embedded.start(
            Path(tempfile.mkdtemp(prefix="ledger-bench-litellm-")) / "data",
            cleanup="delete",
            settings={"max_connections": "100"},
        )
        url = server.url
    try:
        ledger.migrate(url)
        calls = 20 if args.smoke else args.litellm_calls
        rows = bench_litellm.bench(url, calls, [int(c) for c in args.litellm_clients.split(",")])
        settings_ = settings(url)
    finally:
        if server is not None:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("litellm-smoke.json" if args.smoke else "litellm.json")
    report = {
        "settings": settings_,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "measurements": rows,
    }
    out.write_text(json.dumps(report, indent=2))
    print("server:", ", ".join(f"{k}={v}" for k, v in settings_.items()))
    print(bench_litellm.table(rows))
    print(f"results: {out}")
    return 0


def run_http(args: argparse.Namespace) -> int:
    """``--http``: each example app under its real server, driven over HTTP."""
    from . import http

    seconds = 1.0 if args.smoke else args.seconds
    server = None
    url = args.database_url
    if url is None:
        server = embedded.start(
            Path(tempfile.mkdtemp(prefix="ledger-bench-http-")) / "data",
            cleanup="delete",
            settings={"max_connections": "300"},
        )
        url = server.url
    rows: list[dict[str, Any]] = []
    try:
        ledger.migrate(url)
        for work_ms in (int(w) for w in args.http_work_ms.split(",")):
            rows += http.bench(
                url,
                apps=args.http_apps.split(","),
                clients=[int(c) for c in args.http_clients.split(",")],
                seconds=seconds,
                work_ms=work_ms,
            )
        settings_ = settings(url)
    finally:
        if server is not None:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("http-smoke.json" if args.smoke else "http.json")
    report = {
        "settings": settings_,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds_per_run": seconds,
        "measurements": rows,
    }
    out.write_text(json.dumps(report, indent=2))
    print("server:", ", ".join(f"{k}={v}" for k, v in settings_.items()))
    print(http.table(rows))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
