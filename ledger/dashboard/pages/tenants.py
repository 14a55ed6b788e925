"""``/tenants``: every tenant's balances, a page at a time, optionally by id prefix.

``?prefix=acme`` keeps the ids that start with it (byte order, as the ledger
sorts); ``?page=N`` is 1-based.
"""

from __future__ import annotations

from ..page import Page, Rendered, View
from ..params import check_page, last_page, page, prefix
from ..queries import fetch_tenant_count, fetch_tenant_page

PER_PAGE = 50


async def view(v: View) -> Rendered:
    number = page(v.params)
    start = prefix(v.params)
    async with v.snapshot() as conn:
        total = await fetch_tenant_count(conn, v.statements, start)
        check_page(number, total, PER_PAGE, "the list of tenants")
        rows = await fetch_tenant_page(conn, v.statements, start, PER_PAGE, (number - 1) * PER_PAGE)
    return Rendered(
        "tenants.html",
        "Tenants",
        {
            "rows": rows,
            "total": total,
            "page": number,
            "pages": last_page(total, PER_PAGE),
            "prefix": start,
        },
    )


PAGE = Page("/tenants", "tenants", "Tenants", view)
