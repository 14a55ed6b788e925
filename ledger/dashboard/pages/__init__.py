"""The dashboard's pages, one module each, in navigation order.

To add a page (the tree of nested budgets, once tenants have parents): write
``pages/tree.py`` defining ``PAGE = Page("/tree", "tree", "Tree", view)``,
its statements in ``queries.sql`` (audit views only), a template
``templates/tree.html`` extending ``base.html``, and list it here. The app
routes, guards and renders it like the others; nothing else changes.
"""

from __future__ import annotations

from ..page import Page
from . import overview, tenant, tenants

PAGES: tuple[Page, ...] = (overview.PAGE, tenants.PAGE, tenant.PAGE)
