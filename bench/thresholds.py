"""What thresholds cost the spend path: reserve→commit cycles/s with and without (issue 26).

    python -m bench.thresholds [--database-url URL] [--seconds 5] [--clients 4] [--smoke]

One run, one database, the same client processes: tenants without thresholds,
tenants with three percent thresholds (50/80/100 % of a daily allowance, never
reached: every write runs the check and finds nothing), and tenants whose
three (absolute) thresholds have all fired (every write runs the check and the
"already fired" probe). The kinds alternate in rounds so that each sees the
same machine, and the ratio to the plain tenants is printed: the target is
>= 0.9x (docs/alerts.md). ``bench.run`` runs it too (``--smoke`` in CI).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

import ledger

from . import scratch

TENANTS = 50
KINDS = ("plain", "watched", "fired")
AMOUNT, ACTUAL = 1_000, 900


def prepare(url: str) -> None:
    """TENANTS tenants of each kind, each with the same daily allowance."""
    anchor = datetime.now(UTC) - timedelta(hours=12)
    with ledger.Ledger(url) as book:
        for kind in KINDS:
            for i in range(TENANTS):
                tenant = f"th-{kind}-{i}"
                book.ensure_tenant(tenant, 10**15)
                book.set_allowance(tenant, 10**14, days=1, anchor=anchor)
                if kind == "plain":
                    continue
                for percent in (50, 80, 100):
                    if kind == "watched":
                        book.set_threshold(tenant, f"at-{percent}", spent_percent=percent)
                    else:  # crossed by the first commit
                        book.set_threshold(tenant, f"at-{percent}", spent_microcents=percent)
                if kind == "fired":
                    hold = book.try_reserve(tenant, AMOUNT)
                    book.commit(hold.reservation_id, ACTUAL, tenant_id=tenant)  # type: ignore[arg-type]


def _client(url: str, kind: str, seconds: float, seed: int, start: Any) -> int:
    with ledger.Ledger(url) as book:
        tenants = [f"th-{kind}-{(seed * 7 + i) % TENANTS}" for i in range(TENANTS)]
        start.wait()
        done, i = 0, 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            tenant = tenants[i % TENANTS]
            i += 1
            hold = book.try_reserve(tenant, AMOUNT)
            assert hold.reservation_id is not None, hold
            book.commit(hold.reservation_id, ACTUAL, tenant_id=tenant).raise_for_status()
            done += 1
        return done


def _round(url: str, kind: str, clients: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(clients) as pool:
            results = [
                pool.apply_async(_client, (url, kind, seconds, n, start)) for n in range(clients)
            ]
            time.sleep(0.5)  # let every client connect
            start.set()
            cycles = sum(r.get(timeout=seconds + 120) for r in results)
    return cycles / seconds


def compare(url: str, seconds: float, clients: int, rounds: int = 2) -> dict[str, Any]:
    """Cycles/s of each kind (best of ``rounds``, kinds interleaved) and the ratios to plain."""
    prepare(url)
    best = dict.fromkeys(KINDS, 0.0)
    for _ in range(rounds):
        for kind in KINDS:
            best[kind] = max(best[kind], _round(url, kind, clients, seconds))
    with ledger.Ledger(url) as book:  # (bench.run's database holds baselines' rows too)
        fired = sum(
            1 for r in book.list_alerts(limit=10_000) if r.alert.tenant_id.startswith("th-")
        )
    assert fired == 3 * TENANTS, fired  # only the "fired" tenants crossed, once each
    return {
        "clients": clients,
        "seconds_per_round": seconds,
        "cycles_per_second": best,
        "ratio_watched": best["watched"] / best["plain"],
        "ratio_fired": best["fired"] / best["plain"],
    }


def server_side(url: str, updates: int = 3_000) -> dict[str, float]:
    """µs per tenant-row update inside one transaction (rolled back), per kind: the
    check's own cost, without the client, the round trip or the WAL flush."""
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    out: dict[str, float] = {}
    with psycopg.connect(plain) as conn:
        for attempt in range(2):  # the first pass warms caches and plans
            for kind in KINDS:
                started = time.perf_counter()
                conn.execute(
                    "DO $$ BEGIN FOR i IN 1.." + str(updates) + " LOOP "
                    "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents - 1,"
                    " committed_microcents = committed_microcents + 1,"
                    f" journal_seq = journal_seq + 1 WHERE tenant_id = 'th-{kind}-1';"
                    " END LOOP; END $$"
                )
                elapsed = time.perf_counter() - started
                conn.rollback()
                if attempt:
                    out[kind] = elapsed / updates * 1e6
    return out


def report(result: dict[str, Any]) -> str:
    per = result["cycles_per_second"]
    return (
        f"thresholds, {result['clients']} clients: plain {per['plain']:.0f} cycles/s, "
        f"3 thresholds {per['watched']:.0f} ({result['ratio_watched']:.2f}x), "
        f"3 fired {per['fired']:.0f} ({result['ratio_fired']:.2f}x); target >= 0.9x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("LEDGER_BENCH_DATABASE_URL"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (CI)")
    args = parser.parse_args(argv)
    seconds = 0.5 if args.smoke else args.seconds
    rounds = 1 if args.smoke else 3
    with scratch.fresh_database(args.database_url, "thresholds") as db_url:
        result = compare(db_url, seconds, 1 if args.smoke else args.clients, rounds)
        per_update = server_side(db_url, 300 if args.smoke else 3_000)
        with ledger.Ledger(db_url) as book:
            assert book.verify_journal().ok
    print(report(result))
    print(
        "server side, µs per tenant update that spends (the full check): "
        + ", ".join(f"{kind} {us:.1f}" for kind, us in per_update.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
