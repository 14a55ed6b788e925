"""A short end-to-end run: migrate, create tenants, spend concurrently, certify.

Runs against any PostgreSQL URL, or the embedded server by default. It uses
its own schema (``ledger_demo``) and empties it first, so it never touches a
real ledger and can be run again and again.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import create_engine

from . import migrator
from ._engine import normalise_url
from ._ledger import Ledger
from .certificates import FinancialCertificate
from .outcomes import ConservationStatus
from .snapshot import BudgetSnapshot

DEMO_SCHEMA = "ledger_demo"
CENT = 1_000_000  # microcents
DOLLAR = 100 * CENT
TENANTS = {
    "acme-corp": 50 * DOLLAR,
    "globex": 20 * DOLLAR,
    "initech": 5 * DOLLAR,
    "umbrella": DOLLAR,
}
CAPS = {"globex": 3 * DOLLAR}  # at most $3 of open holds at once


@dataclass
class DemoResult:
    snapshot: BudgetSnapshot
    conservation: ConservationStatus
    certificate: FinancialCertificate
    operations: int
    refused: int
    committed_microcents: int


def run(
    url: str,
    *,
    workers: int = 8,
    operations_per_worker: int = 60,
    seed: int = 7,
    progress: Callable[[int], None] | None = None,
) -> DemoResult:
    """Run the demo load and return what it observed (the caller prints it)."""
    migrator.migrate(url, schema=DEMO_SCHEMA)
    engine = create_engine(normalise_url(url), pool_size=workers + 2, max_overflow=0)
    try:
        book = Ledger(engine, schema=DEMO_SCHEMA)
        book.restore_from_snapshot(BudgetSnapshot(version=0, tenants=(), active_reservations=0))
        for tenant, budget in TENANTS.items():
            book.ensure_tenant(tenant, budget)
        for tenant, cap in CAPS.items():
            book.set_max_reserved_microcents(tenant, cap)

        lock = threading.Lock()
        totals = {"ops": 0, "refused": 0, "committed": 0}

        def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            names = list(TENANTS)
            for _ in range(operations_per_worker):
                tenant = rng.choice(names)
                amount = rng.randint(CENT, DOLLAR // 2)
                hold = book.try_reserve(tenant, amount)
                refused = not hold.ok
                spent = 0
                if hold.ok and hold.reservation_id is not None:
                    if rng.random() < 0.25:
                        book.release(hold.reservation_id, tenant_id=tenant)
                    else:
                        actual = rng.randint(0, amount * 11 // 10)  # sometimes overruns
                        out = book.commit(hold.reservation_id, actual, tenant_id=tenant)
                        if out.ok:
                            spent = actual
                        else:  # an unaffordable overrun keeps the hold: give it back
                            book.release(hold.reservation_id, tenant_id=tenant)
                with lock:
                    totals["ops"] += 1
                    totals["refused"] += refused
                    totals["committed"] += spent
                if progress is not None:
                    progress(1)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        conservation = book.verify_conservation()
        certificate = book.certify()
        snapshot = book.snapshot()
        return DemoResult(
            snapshot=snapshot,
            conservation=conservation,
            certificate=certificate,
            operations=totals["ops"],
            refused=totals["refused"],
            committed_microcents=totals["committed"],
        )
    finally:
        engine.dispose()
