"""Client CPU of telemetry per reserve->commit cycle (docs/observability.md, "Overhead").

    python -m bench.telemetry                        # embedded PostgreSQL
    python -m bench.telemetry --database-url postgresql://...
    python -m bench.telemetry --before DIR           # also a tree without telemetry

Each mode runs in a fresh process, one client, ``--cycles`` reserve->commit
cycles after a warm-up, and reports client CPU (``time.process_time``) per
cycle; modes are interleaved ``--rounds`` times and the median is kept, since
the machine is shared. Modes:

- ``before``: the package from ``--before DIR`` (e.g. ``git archive`` of the
  commit before telemetry), the baseline;
- ``absent``: OpenTelemetry not importable (the base install);
- ``api``: the API installed, no SDK configured (a library user who does not
  collect telemetry);
- ``sdk``: the SDK recording every span and metric (spans to a processor that
  drops them, metrics to a reader that is never read).

End to end, a cycle costs a few hundred microseconds of client CPU and varies
by tens between runs on a busy machine, more than the absent/api overhead. So
each mode also times the instrumentation alone (``--micro``): a facade
method whose database call returns a fixed outcome at once, with and without
``_telemetry.run`` in between (``timeit``, best of 5 x 100,000 calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

MODES = ("before", "absent", "api", "sdk")

CHILD = """
import sys, time
mode, url, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "absent":
    sys.modules["opentelemetry"] = None
if mode == "sdk":
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
import ledger
book = ledger.Ledger(url)
tenant = f"bench-{mode}-{time.monotonic_ns()}"
book.ensure_tenant(tenant, 10**15)
def cycle():
    hold = book.try_reserve(tenant, 1_000)
    book.commit(hold.reservation_id, 900)
for _ in range(300):
    cycle()
start = time.process_time()
for _ in range(cycles):
    cycle()
cpu = (time.process_time() - start) / cycles * 1e6
micro = 0.0
if mode != "before":
    import timeit
    from ledger import _telemetry
    out = ledger.ReserveOutcome(ledger.Status.RESERVED, reservation_id=1, remaining_microcents=1)

    def database(op, connection):
        return out

    class Facade:
        def _run(self, op, connection):
            return _telemetry.run(database, op, connection)

        def _bare(self, op, connection):
            return database(op, connection)

        def try_reserve(self, tenant_id, cost):
            return self._run(None, None)

        def try_reserve_bare(self, tenant_id, cost):
            return self._bare(None, None)

    f = Facade()
    best = lambda fn: min(timeit.repeat(fn, number=100_000, repeat=5)) / 100_000 * 1e6
    micro = best(lambda: f.try_reserve("acme", 5)) - best(lambda: f.try_reserve_bare("acme", 5))
print(cpu, micro)
"""


def measure(mode: str, url: str, cycles: int, before: str | None) -> tuple[float, float]:
    env = dict(os.environ)
    if mode == "before":
        env["PYTHONPATH"] = before or ""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, url, str(cycles)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    cpu, micro = out.stdout.split()
    return float(cpu), float(micro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url")
    parser.add_argument("--before", help="a directory holding the package without telemetry")
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    modes = [m for m in MODES if m != "before" or args.before]
    server = None
    url = args.database_url
    if url is None:
        import ledger
        from ledger import embedded

        data = os.path.join(tempfile.mkdtemp(prefix="ledger-bench-tel-"), "data")
        server = embedded.start(data, cleanup="delete")
        url = server.url
        ledger.migrate(url)
    try:
        runs: dict[str, list[float]] = {m: [] for m in modes}
        micro: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode in modes:
                cpu, added = measure(mode, url, args.cycles, args.before)
                runs[mode].append(cpu)
                micro[mode].append(added)
    finally:
        if server is not None:
            server.stop()
    base = statistics.median(runs[modes[0]])
    print(f"client CPU per reserve->commit cycle, median of {args.rounds} x {args.cycles} cycles")
    print("  mode     cycle CPU   vs first   instrumentation per operation (micro)")
    for mode in modes:
        med = statistics.median(runs[mode])
        added = "-" if mode == "before" else f"{statistics.median(micro[mode]):.2f} us"
        print(f"  {mode:7s} {med:7.1f} us  {med - base:+7.1f} us   {added}")


if __name__ == "__main__":
    main()
