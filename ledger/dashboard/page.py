"""What a page is: a path, a title, and a view that reads the ledger and names a template.

A page module (``ledger/dashboard/pages/*.py``) defines one :class:`Page`.
Its ``view`` checks the query parameters first (a bad one raises
:class:`~ledger.dashboard.params.BadParameter` before the database is
touched), then reads everything it shows inside one ``async with
v.snapshot() as conn`` block, so all its numbers come from one snapshot,
and returns a :class:`Rendered`: the template and its variables.
:mod:`ledger.dashboard.app` does the rest (routing, errors, headers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from psycopg import AsyncConnection

from .access import Access, Database
from .queries import Statements


@dataclass(frozen=True, slots=True)
class Rendered:
    template: str
    title: str
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class View:
    """What a page's view gets: the query parameters and the way to the database."""

    params: Mapping[str, Sequence[str]]
    access: Access
    statements: Statements
    database: Database

    def snapshot(self) -> AbstractAsyncContextManager[AsyncConnection[Any]]:
        return self.database.snapshot()


@dataclass(frozen=True, slots=True)
class Page:
    #: The URL path, e.g. ``"/tenant"``; pages take their arguments as query parameters.
    path: str
    #: The route's name (unique), used for links.
    name: str
    #: The label in the navigation bar; None keeps the page out of it.
    nav: str | None
    view: Callable[[View], Awaitable[Rendered]]


def href(path: str, **params: object) -> str:
    """``href("/tenant", id="a b", page=2)`` -> ``"/tenant?id=a+b&page=2"``; drops Nones."""
    pairs = [(k, str(v)) for k, v in params.items() if v is not None]
    return f"{path}?{urlencode(pairs)}" if pairs else path
