"""Exact budgets for LiteLLM: the proxy callback and an SDK helper (docs/litellm.md).

The proxy: ``litellm_settings: callbacks: ledger.contrib.litellm.proxy_handler``
with ``LEDGER_DATABASE_URL`` set. The SDK: ``await acompletion(budget, "alice",
model=..., messages=..., max_tokens=...)``, or ``completion(sync_budget, ...)``
for ``litellm.completion``. Both hold the call's worst case before it runs,
commit LiteLLM's ``response_cost`` after (rounded up to the microcent by
:func:`microcents`), and release on failure.

This package imports LiteLLM; the rest of the ledger never does. Install it
with ``sql-ledger[litellm]``.
"""

from __future__ import annotations

try:
    import litellm  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without LiteLLM
    raise ImportError(
        "ledger.contrib.litellm needs LiteLLM: pip install 'sql-ledger[litellm]'"
    ) from exc

from ._budget import DEFAULT_TTL, Budget, BudgetRefused, Held, SyncBudget
from ._money import MICROCENTS_PER_DOLLAR, UnpriceableCall, microcents
from ._pricing import worst_case_dollars, worst_case_microcents
from ._tenants import (
    Caller,
    Payer,
    TenantMap,
    by_end_user,
    by_key,
    by_org,
    by_team,
    by_tree,
    by_user,
    level_of,
)
from .proxy import LedgerCallback
from .sdk import acompletion, completion

#: The instance a proxy config names: ``callbacks: ledger.contrib.litellm.proxy_handler``.
#: It reads its configuration from the environment on the first call (Budget.from_env).
proxy_handler = LedgerCallback()

__all__ = [
    "DEFAULT_TTL",
    "MICROCENTS_PER_DOLLAR",
    "Budget",
    "BudgetRefused",
    "Caller",
    "Held",
    "LedgerCallback",
    "Payer",
    "SyncBudget",
    "TenantMap",
    "UnpriceableCall",
    "acompletion",
    "by_end_user",
    "by_key",
    "by_org",
    "by_team",
    "by_tree",
    "by_user",
    "completion",
    "level_of",
    "microcents",
    "proxy_handler",
    "worst_case_dollars",
    "worst_case_microcents",
]
