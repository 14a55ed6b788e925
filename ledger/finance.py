"""The old name of :mod:`ledger.certificates`, kept so that existing imports work.

It was named after calybris-core's ``finance`` module, whose
``finance::ledger_digest`` our digest matches byte for byte; issue 23 renamed
it for what it holds. New code imports :mod:`ledger.certificates`.
"""

from .certificates import (
    DIGEST_TAG,
    ConservationProof,
    FinancialCertificate,
    aggregate_totals,
    certify_ledger,
    certify_snapshot,
    ledger_digest,
    prove_conservation,
)

__all__ = [
    "DIGEST_TAG",
    "ConservationProof",
    "FinancialCertificate",
    "aggregate_totals",
    "certify_ledger",
    "certify_snapshot",
    "ledger_digest",
    "prove_conservation",
]
