"""How snapshot, conservation checks, certificates and journal replay grow with size.

Each measurement reports wall time and the peak growth of resident memory
during the call: time should grow linearly with the number
of tenants or entries, and replay memory should stay flat.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ledger
from ledger import BudgetSnapshot, TenantLedger

# The throughput baselines write tenants without journal entries (that is
# what they measure), so scale runs use a schema of their own.
SCHEMA = "ledger_scale"


@dataclass
class ScalePoint:
    operation: str
    size: int
    seconds: float
    peak_mib: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "size": self.size,
            "seconds": self.seconds,
            "peak_mib": self.peak_mib,
            "per_item_us": self.seconds / self.size * 1e6,
        }


def measure(operation: str, size: int, fn: Callable[[], Any]) -> ScalePoint:
    """Wall time, and the peak growth of the process's resident memory during the call.

    RSS is sampled from a thread every 20 ms: tracemalloc would be exact but
    slows allocation-heavy code several times over, which distorts the time.
    """
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - began
    done.set()
    sampler.join()
    peak = max(peak, proc.memory_info().rss)
    return ScalePoint(operation, size, elapsed, (peak - base) / 2**20)


def tenant_scale(url: str, sizes: list[int]) -> list[ScalePoint]:
    points = []
    ledger.migrate(url, schema=SCHEMA)
    with ledger.Ledger(url, schema=SCHEMA) as book:
        for n in sizes:
            book.restore_from_snapshot(
                BudgetSnapshot(
                    0, tuple(TenantLedger(f"s{i:07d}", 10**9, 10**9, 0, 0) for i in range(n)), 0
                )
            )
            points.append(measure("snapshot", n, book.snapshot))
            points.append(measure("verify_conservation", n, book.verify_conservation))
            points.append(measure("certify", n, book.certify))
    return points


def journal_scale(url: str, sizes: list[int], progress: Callable[[str], None]) -> list[ScalePoint]:
    """Grow the journal to each size with batches, then time a full replay."""
    points = []
    ledger.migrate(url, schema=SCHEMA)
    with ledger.Ledger(url, schema=SCHEMA) as book:
        book.restore_from_snapshot(
            BudgetSnapshot(
                0, tuple(TenantLedger(f"j{i:04d}", 10**15, 10**15, 0, 0) for i in range(1000)), 0
            )
        )
        entries = book.verify_journal().entries_checked
        batch = [(f"j{i % 1000:04d}", 1_000) for i in range(1000)]
        for target in sorted(sizes):
            while entries < target:
                holds = book.try_reserve_many(batch)
                book.commit_many([(h.reservation_id, 900) for h in holds])
                entries += 2 * len(batch)
                if entries // 100_000 != (entries - 2 * len(batch)) // 100_000:
                    progress(f"journal at {entries:,} entries")
            reports: list[Any] = []
            points.append(
                measure(
                    "verify_journal", entries, lambda out=reports: out.append(book.verify_journal())
                )
            )
            assert reports[0].ok, reports[0].discrepancies[:3]
    return points
