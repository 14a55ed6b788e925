"""A read-only web dashboard of a ledger (``ledger dashboard``; the ``[dashboard]`` extra).

Server-rendered pages (Starlette, Jinja2 templates, inline SVG charts; no
JavaScript anywhere) served by uvicorn, reading the audit views as the
auditor role only. docs/dashboard.md says how to run it and what it shows.

- :func:`create_app` returns the ASGI app, to mount or serve yourself;
- :func:`serve` checks the access, binds the socket and serves (the CLI);
- the pages are ``pages/*.py``, one module each.

The ledger's core never imports this package.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from ..errors import MissingExtra

#: The packages of the [dashboard] extra.
MODULES = ("starlette", "jinja2", "uvicorn")

__all__ = ["create_app", "serve"]

if TYPE_CHECKING:
    from .app import create_app
    from .server import serve


def require_extra() -> None:
    """Raise :class:`~ledger.errors.MissingExtra` naming the extra if a package is missing."""
    for module in MODULES:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(module, feature="the dashboard", extra="dashboard")


def __getattr__(name: str) -> Any:
    if name == "create_app":
        require_extra()
        from .app import create_app

        return create_app
    if name == "serve":
        require_extra()
        from .server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
