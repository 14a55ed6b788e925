"""The sync and async faces must stay twins: same public methods, same signatures.

``tests/test_async.py`` compares outcomes; this compares the interfaces, so a
parameter added to one side only (or renamed, or given another default) fails
here before any user meets it.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import ledger

TWINS = [(ledger.Ledger, ledger.AsyncLedger), (ledger.Hold, ledger.AsyncHold)]


def _public(cls: type) -> dict[str, Any]:
    return {n: m for n, m in inspect.getmembers(cls) if not n.startswith("_") and callable(m)}


def _shape(method: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]


@pytest.mark.parametrize(("sync", "async_"), TWINS, ids=lambda c: c.__name__)
def test_both_sides_have_the_same_public_methods(sync: type, async_: type) -> None:
    assert sorted(_public(sync)) == sorted(_public(async_))


@pytest.mark.parametrize(("sync", "async_"), TWINS, ids=lambda c: c.__name__)
def test_each_method_takes_the_same_parameters_on_both_sides(sync: type, async_: type) -> None:
    mine, theirs = _public(sync), _public(async_)
    differ = {n: (_shape(mine[n]), _shape(theirs[n])) for n in mine if n in theirs}
    assert {n: s for n, s in differ.items() if s[0] != s[1]} == {}
    for name in mine.keys() & theirs.keys():
        if inspect.isfunction(theirs[name]) and not name.startswith("__"):
            sync_coro = inspect.iscoroutinefunction(mine[name])
            assert not sync_coro, f"{sync.__name__}.{name} must not be a coroutine"
