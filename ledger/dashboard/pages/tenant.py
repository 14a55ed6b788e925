"""``/tenant?id=...``: one tenant's balances, spend per period, open holds and journal.

``period=day|week|month`` picks the chart's calendar periods (UTC; the last
31 days, 26 weeks or 12 months, the current one included); ``page=N`` pages
through the journal, newest entry first. An unknown tenant is a 404.
"""

from __future__ import annotations

from ..charts import Bar, bar_chart
from ..formatting import digits, timestamp
from ..page import Page, Rendered, View
from ..params import NotFound, check_page, choice, last_page, page, tenant_id
from ..queries import (
    PeriodSpend,
    fetch_tenant,
    fetch_tenant_holds,
    fetch_tenant_journal,
    fetch_tenant_spend,
)

PER_PAGE = 50
HOLDS_LISTED = 100
#: period -> (date_trunc unit, step, how many periods the chart shows).
PERIODS = {
    "day": ("day", "1 day", 31),
    "week": ("week", "1 week", 26),
    "month": ("month", "1 month", 12),
}


async def view(v: View) -> Rendered:
    tid = tenant_id(v.params)
    number = page(v.params)
    period = choice(v.params, "period", tuple(PERIODS), default="day")
    unit, step, periods = PERIODS[period]
    q = v.statements
    async with v.snapshot() as conn:
        row = await fetch_tenant(conn, q, tid)
        if row is None:
            raise NotFound(f"there is no tenant {tid!r} in this ledger")
        check_page(number, row.journal_entries, PER_PAGE, f"the journal of {tid!r}")
        holds_total, holds = await fetch_tenant_holds(conn, q, tid, HOLDS_LISTED)
        entries = await fetch_tenant_journal(conn, q, tid, PER_PAGE, (number - 1) * PER_PAGE)
        spend = await fetch_tenant_spend(conn, q, tid, unit=unit, step=step, periods=periods)
    return Rendered(
        "tenant.html",
        f"Tenant {tid}",
        {
            "tenant": row,
            "holds_total": holds_total,
            "holds": holds,
            "entries": entries,
            "page": number,
            "pages": last_page(row.journal_entries, PER_PAGE),
            "period": period,
            "periods": tuple(PERIODS),
            "spend": spend,
            "spend_chart": _spend_chart(spend, period),
            "spent_in_chart": sum(p.spent for p in spend),
        },
    )


def _label(p: PeriodSpend, period: str) -> str:
    if period == "month":
        return p.starts_at.strftime("%Y-%m")
    return p.starts_at.strftime("%m-%d")


def _spend_chart(spend: list[PeriodSpend], period: str) -> str:
    bars = [
        Bar(
            label=_label(p, period),
            value=p.spent,
            title=f"{digits(p.spent)} µ¢ spent after {timestamp(p.starts_at)}, "
            f"up to {timestamp(p.ends_at)}",
        )
        for p in spend
    ]
    return bar_chart(bars, caption=f"Spend per {period} (commits minus refunds), in microcents")


PAGE = Page("/tenant", "tenant", None, view)
