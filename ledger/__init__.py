"""sql-ledger: per-tenant budgets in PostgreSQL that cannot overspend, lose or invent money.

Quick start::

    import ledger

    ledger.migrate(url)
    book = ledger.Ledger(url)
    book.ensure_tenant("acme", 10_000_000)            # microcents
    hold = book.try_reserve("acme", 250_000)
    if hold.ok:
        book.commit(hold.reservation_id, 180_000)     # surplus refunded

Everything a user needs is importable from here; modules whose names start
with an underscore are internal. :mod:`ledger.errors` holds every exception.
"""

from importlib.metadata import version as _version

from . import embedded as embedded  # `ledger.embedded`: the CLI's server (lazy imports)
from . import errors
from ._alerts import Alert, AlertBacklog, AlertRecord, Threshold
from ._asof import AsOfCheckpoint, BalanceAt, SpendReport, TenantSpend
from ._async_ledger import AsyncLedger
from ._batch import CommitItem, ReleaseItem, ReserveItem
from ._certificate_check import CertificateCheck
from ._executor import Connectable
from ._hold import AsyncHold, Hold
from ._ledger import BoundLedger, Ledger
from ._money import MICROCENTS_PER_CENT
from ._stats import LedgerStats
from ._tree import MAX_TREE_DEPTH, TreeNode
from .certificates import (
    ConservationProof,
    FinancialCertificate,
    certify_ledger,
    certify_snapshot,
    ledger_digest,
    prove_conservation,
)
from .citus.distribute import distribute
from .journal import JournalReport
from .migrator import migrate
from .outcomes import (
    AdjustOutcome,
    AllowanceOutcome,
    Balance,
    ConservationStatus,
    ExpiredHolds,
    PeriodSpend,
    RefundOutcome,
    Renewals,
    ReserveOutcome,
    SettlementOutcome,
    SkippedTenant,
    Status,
    TopUpOutcome,
)
from .snapshot import BudgetSnapshot, TenantLedger, conservation_status_for_snapshot

__version__ = _version("sql-ledger")

__all__ = [
    "MAX_TREE_DEPTH",
    "MICROCENTS_PER_CENT",
    "AdjustOutcome",
    "Alert",
    "AlertBacklog",
    "AlertRecord",
    "AllowanceOutcome",
    "AsOfCheckpoint",
    "AsyncHold",
    "AsyncLedger",
    "Balance",
    "BalanceAt",
    "BoundLedger",
    "BudgetSnapshot",
    "CertificateCheck",
    "CommitItem",
    "Connectable",
    "ConservationProof",
    "ConservationStatus",
    "ExpiredHolds",
    "FinancialCertificate",
    "Hold",
    "JournalReport",
    "Ledger",
    "LedgerStats",
    "PeriodSpend",
    "RefundOutcome",
    "ReleaseItem",
    "Renewals",
    "ReserveItem",
    "ReserveOutcome",
    "SettlementOutcome",
    "SkippedTenant",
    "SpendReport",
    "Status",
    "TenantLedger",
    "TenantSpend",
    "Threshold",
    "TopUpOutcome",
    "TreeNode",
    "certify_ledger",
    "certify_snapshot",
    "conservation_status_for_snapshot",
    "distribute",
    "errors",
    "ledger_digest",
    "migrate",
    "prove_conservation",
]
