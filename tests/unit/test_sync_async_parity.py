"""The sync and async faces must stay twins: same public methods, same signatures.

``tests/test_async.py`` compares outcomes; this compares the interfaces, so a
parameter added to one side only (or renamed, or given another default) fails
here before any user meets it.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

import pytest

import ledger
from ledger import _async_ledger, _ledger

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


# ------------------------------------------------ telemetry operation names

RUNNERS = {"_run", "_tenant_row", "_counts"}


def _misnamed(source: str) -> list[str]:
    """Public facade methods whose telemetry name (``name="..."``) is not their own.

    Span names are ``ledger.<method>`` (docs/observability.md), passed
    explicitly by each method to the helper that runs its operation.
    """
    wrong = []
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for fn in cls.body:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if fn.name.startswith("_"):
                continue
            for node in ast.walk(fn):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in RUNNERS
                ):
                    continue
                names = [k.value for k in node.keywords if k.arg == "name"]
                if not (
                    len(names) == 1
                    and isinstance(names[0], ast.Constant)
                    and names[0].value == fn.name
                ):
                    wrong.append(f"{cls.name}.{fn.name}")
    return wrong


@pytest.mark.parametrize("module", [_ledger, _async_ledger], ids=lambda m: m.__name__)
def test_every_operation_is_named_after_its_public_method(module: Any) -> None:
    assert _misnamed(inspect.getsource(module)) == []


def test_a_misnamed_operation_is_caught() -> None:
    source = inspect.getsource(_async_ledger)
    assert 'name="tenant_count"' in source
    tampered = source.replace('name="tenant_count"', 'name="tenants"')
    assert _misnamed(tampered) == ["AsyncLedger.tenant_count"]
    assert _misnamed(source.replace(', name="snapshot_version"', "")) == [
        "AsyncLedger.snapshot_version"
    ]
