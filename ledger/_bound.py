"""A ledger whose operations always run on a connection chosen by the framework."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from ._db import Connectable
from .core import Ledger


class BoundLedger:
    """Proxy to a :class:`Ledger` that passes ``connection=`` to every call.

    Framework integrations hand this out so that ledger writes join the
    framework's transaction (Flask-SQLAlchemy's ``db.session``, Django's
    ``transaction.atomic()``) without the caller having to remember it. An
    explicit ``connection=`` argument still wins.
    """

    def __init__(self, ledger: Ledger, connection: Callable[[], Connectable]) -> None:
        self._ledger = ledger
        self._connection = connection

    @property
    def ledger(self) -> Ledger:
        """The unbound ledger (operations run in their own transactions)."""
        return self._ledger

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ledger, name)
        if not callable(attr) or "connection" not in inspect.signature(attr).parameters:
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("connection", self._connection())
            return attr(*args, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"BoundLedger({self._ledger!r})"
