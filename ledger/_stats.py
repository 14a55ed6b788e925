"""Read-only looks at a live ledger: the observed gauges and ``ledger stats``.

The statements are in ``ledger/sql/stats.sql``. Nothing here writes, and
nothing runs on the hot path: the gauges run when metrics are collected
(:func:`ledger.telemetry.observe`), the summary when someone asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import _validate, errors
from ._operations import first_row
from ._queries import Queries
from ._requests import Op


@dataclass(frozen=True, slots=True)
class LedgerStats:
    """What :meth:`Ledger.stats` (and ``ledger stats``) reports."""

    #: Holds open now, and those among them past their deadline (not yet expired).
    open_holds: int
    lapsed_holds: int
    #: Age of the oldest open hold, in seconds (0 when none is open).
    oldest_hold_age_seconds: float
    #: The window the refusal counts cover.
    refusal_window_minutes: int
    #: ``(operation, status, count)`` of refused spends in the window, most frequent first.
    refusals: tuple[tuple[str, str, int], ...]
    #: ``(tenant_id, committed_microcents)``, largest lifetime spend first.
    top_spenders: tuple[tuple[str, int], ...]
    #: Tenants whose period has ended and whose renewal has not happened yet.
    renewals_due: int
    #: ``(tenant_id, renews_at)`` of the first due renewals, oldest first.
    due: tuple[tuple[str, datetime], ...]

    @property
    def refused(self) -> int:
        """Refusals in the window, all operations and statuses."""
        return sum(n for _, _, n in self.refusals)

    def to_dict(self) -> dict[str, Any]:
        return {
            "open_holds": self.open_holds,
            "lapsed_holds": self.lapsed_holds,
            "oldest_hold_age_seconds": self.oldest_hold_age_seconds,
            "refusals": {
                "minutes": self.refusal_window_minutes,
                "total": self.refused,
                "by_status": [
                    {"operation": op, "status": status, "count": n}
                    for op, status, n in self.refusals
                ],
            },
            "top_spenders": [
                {"tenant_id": t, "committed_microcents": c} for t, c in self.top_spenders
            ],
            "renewals_due": {
                "total": self.renewals_due,
                "tenants": [{"tenant_id": t, "renews_at": at.isoformat()} for t, at in self.due],
            },
        }


def holds(q: Queries) -> Op[Any]:
    """Open holds, lapsed holds and the oldest hold's age, in one row."""
    return Op(lambda: first_row(q.stats_holds, {}))


def drift(q: Queries) -> Op[int]:
    """How many tenant rows disagree with their journal head (0 in a sound ledger)."""

    def steps() -> Any:
        row = yield from first_row(q.stats_drift, {})
        return int(row.drifted)

    return Op(steps)


def stats(q: Queries, minutes: int, top: int) -> Op[LedgerStats]:
    minutes = _validate.positive_count("minutes", minutes)
    top = _validate.positive_count("top", top)
    if minutes > 10**6:
        raise errors.InputError(f"minutes must be at most 1000000 (about two years), got {minutes}")
    if top > 1000:
        raise errors.InputError(f"top must be at most 1000, got {top}")

    def steps() -> Any:
        row = yield from first_row(q.stats, {"minutes": minutes, "top": top})
        return LedgerStats(
            open_holds=int(row.open_holds),
            lapsed_holds=int(row.lapsed_holds),
            oldest_hold_age_seconds=float(row.oldest_age),
            refusal_window_minutes=minutes,
            refusals=tuple((str(o), str(s), int(n)) for o, s, n in row.refusals),
            top_spenders=tuple((str(t), int(c)) for t, c in row.top_spenders),
            renewals_due=int(row.renewals_due),
            due=tuple((str(t), datetime.fromisoformat(at)) for t, at in row.renewals),
        )

    return Op(steps)
