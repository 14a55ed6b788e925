"""OpenTelemetry for the ledger: spans and metrics per operation, gauges on request.

``pip install 'sql-ledger[otel]'`` adds the OpenTelemetry API; the
application installs and configures the SDK and its exporters. With the API
present, every operation of every :class:`~ledger.Ledger` and
:class:`~ledger.AsyncLedger` produces a span and metrics through the global
providers (or those given to :func:`configure`); without it, nothing is
produced and nothing is paid but a function call.

The gauges that need a query (open and lapsed holds, the oldest hold's age,
the journal drift check) are opt-in: :func:`observe` registers them for one
ledger, and their statements run only when the metrics are collected (a
Prometheus scrape, a periodic reader's export), never on the hot path.

Names, units and attributes: docs/observability.md.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from . import _alerts, _stats, errors
from ._telemetry import (
    ALERTS_BACKLOG,
    CAS_RETRIES,
    DRIFT,
    DURATION,
    HOLDS_EXPIRED,
    HOLDS_LAPSED,
    HOLDS_OPEN,
    HOLDS_OPENED,
    HOLDS_RELEASED,
    HOLDS_SETTLED,
    OLDEST_ALERT_AGE,
    OLDEST_HOLD_AGE,
    OUTCOMES,
    REPLAYS,
    SCOPE,
    TRANSACTION_RETRIES,
    configure,
)
from ._telemetry import observe as _observe

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from ._ledger import Ledger

__all__ = [
    "ALERTS_BACKLOG",
    "CAS_RETRIES",
    "DRIFT",
    "DURATION",
    "HOLDS_EXPIRED",
    "HOLDS_LAPSED",
    "HOLDS_OPEN",
    "HOLDS_OPENED",
    "HOLDS_RELEASED",
    "HOLDS_SETTLED",
    "OLDEST_ALERT_AGE",
    "OLDEST_HOLD_AGE",
    "OUTCOMES",
    "REPLAYS",
    "SCOPE",
    "TRANSACTION_RETRIES",
    "configure",
    "observe",
]

log = logging.getLogger("ledger")


def observe(book: Ledger, *, meter_provider: MeterProvider | None = None) -> None:
    """Register the gauges that need a query, for ``book``; they run only when collected.

    ``ledger.holds.open``, ``ledger.holds.oldest_age``, ``ledger.holds.lapsed``
    (one small statement over the open holds each) and ``ledger.tenants.drift``
    (tenant rows against their journal heads: one index probe per tenant,
    always 0 in a sound ledger), ``ledger.alerts.backlog`` and
    ``ledger.alerts.oldest_age`` (undelivered alerts and the oldest one's age
    in seconds, one statement over the outbox's partial index: docs/alerts.md).
    The ledger is held weakly: once it is closed or collected the gauges
    report nothing. For an :class:`~ledger.AsyncLedger`, observe a ``Ledger``
    on the same database (collection callbacks are not coroutines). A no-op without OpenTelemetry.
    """
    ref = weakref.ref(book)

    def run(op: Any) -> Any:
        target = ref()
        if target is None:
            return None
        try:
            # Straight to the database: a scrape is not a ledger operation.
            return target._db.run(op, None)
        except errors.LedgerError as exc:
            log.warning("could not read the ledger's gauges: %s", exc)
            return None

    def read() -> Any:
        target = ref()
        return None if target is None else run(_stats.holds(target._queries()))

    def drift() -> int:
        target = ref()
        count = None if target is None else run(_stats.drift(target._queries()))
        return -1 if count is None else int(count)

    def alerts() -> Any:
        target = ref()
        return None if target is None else run(_alerts.alert_backlog(target._queries()))

    _observe(read, drift, meter_provider, alerts)
