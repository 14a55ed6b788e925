"""``/``: the ledger at a glance.

Conservation (every tenant, and the ledger-wide sums), reserved totals
against open holds, what the auditor can check of the journal, the latest
certificate, open and lapsed holds, refusals over time and the top spenders.
``?hours=N`` sets the refusal window (default 24).
"""

from __future__ import annotations

from ..charts import Bar, bar_chart
from ..formatting import count, duration, timestamp
from ..page import Page, Rendered, View
from ..params import whole_number
from ..queries import (
    Refusals,
    fetch_holds,
    fetch_journal_checks,
    fetch_lapsed_holds,
    fetch_latest_certificate,
    fetch_mismatches,
    fetch_refusals,
    fetch_top_spenders,
    fetch_totals,
    fetch_violations,
)

#: How many rows each list shows (the counts above them are always complete).
LISTED = 20
TOP_SPENDERS = 10
#: Slices of the refusal chart; the window in hours times 3600 divides by it exactly.
SLICES = 24
MAX_HOURS = 24 * 92


async def view(v: View) -> Rendered:
    hours = whole_number(v.params, "hours", default=24, lowest=1, highest=MAX_HOURS)
    q = v.statements
    async with v.snapshot() as conn:
        totals = await fetch_totals(conn, q)
        violations_total, violations = await fetch_violations(conn, q, LISTED)
        mismatches_total, mismatches = await fetch_mismatches(conn, q, LISTED)
        journal = await fetch_journal_checks(conn, q, LISTED)
        certificate = await fetch_latest_certificate(conn, q)
        holds = await fetch_holds(conn, q)
        lapsed = await fetch_lapsed_holds(conn, q, LISTED)
        spenders = await fetch_top_spenders(conn, q, TOP_SPENDERS)
        refusals = await fetch_refusals(conn, q, hours, SLICES)
    return Rendered(
        "overview.html",
        "Overview",
        {
            "totals": totals,
            "violations_total": violations_total,
            "violations": violations,
            "mismatches_total": mismatches_total,
            "mismatches": mismatches,
            "journal": journal,
            "certificate": certificate,
            "holds": holds,
            "lapsed": lapsed,
            "spenders": spenders,
            "hours": hours,
            "slice": duration(hours * 3600 // SLICES),
            "refusals": refusals,
            "refusal_chart": _refusal_chart(refusals),
        },
    )


def _refusal_chart(refusals: Refusals) -> str:
    bars = [
        Bar(
            label=_ago(len(refusals.over_time) - i, refusals.hours, len(refusals.over_time)),
            value=s.n,
            title=f"{count(s.n)} refused after {timestamp(s.starts_at)}, "
            f"up to {timestamp(s.ends_at)}",
        )
        for i, s in enumerate(refusals.over_time)
    ]
    return bar_chart(
        bars,
        caption=f"Refusals in the last {refusals.hours} h, in {len(bars)} slices",
        scale=count,
    )


def _ago(slices_back: int, hours: int, slices: int) -> str:
    """Axis label of a slice: how long before now it starts (``-24 h``, ``-90 min``)."""
    seconds = slices_back * hours * 3600 // slices
    if seconds % 3600 == 0:
        return f"-{seconds // 3600} h"
    return f"-{seconds // 60} min"


PAGE = Page("/", "overview", "Overview", view)
