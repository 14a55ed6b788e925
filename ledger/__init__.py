"""sql-ledger: per-tenant budgets in PostgreSQL that cannot overspend, lose or invent money.

Quick start::

    import ledger

    ledger.migrate(url)
    book = ledger.Ledger(url)
    book.ensure_tenant("acme", 10_000_000)            # microcents
    hold = book.try_reserve("acme", 250_000)
    if hold.ok:
        book.commit(hold.reservation_id, 180_000)     # surplus refunded
"""

from . import embedded, errors
from ._batch import CommitItem, ReleaseItem, ReserveItem
from ._db import Connectable
from .core import Ledger
from .finance import (
    ConservationProof,
    FinancialCertificate,
    certify_ledger,
    certify_snapshot,
    ledger_digest,
    prove_conservation,
)
from .migrator import migrate
from .outcomes import (
    Balance,
    ConservationStatus,
    Outcome,
    ReserveOutcome,
    SettlementOutcome,
    Status,
    TopUpOutcome,
)
from .snapshot import BudgetSnapshot, TenantLedger, conservation_status_for_snapshot

MICROCENTS_PER_CENT = 1_000_000

__version__ = "0.1.0"

__all__ = [
    "MICROCENTS_PER_CENT",
    "Balance",
    "BudgetSnapshot",
    "CommitItem",
    "Connectable",
    "ConservationProof",
    "ConservationStatus",
    "FinancialCertificate",
    "Ledger",
    "Outcome",
    "ReleaseItem",
    "ReserveItem",
    "ReserveOutcome",
    "SettlementOutcome",
    "Status",
    "TenantLedger",
    "TopUpOutcome",
    "certify_ledger",
    "certify_snapshot",
    "conservation_status_for_snapshot",
    "embedded",
    "errors",
    "ledger_digest",
    "migrate",
    "prove_conservation",
]
