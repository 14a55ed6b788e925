"""The sync and async faces must stay twins: same public methods, same signatures.

``tests/integration/core/test_async.py`` compares outcomes; this compares the interfaces, so a
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
from ledger._async_executor import AsyncDatabase
from ledger._executor import Database
from ledger._routing import AsyncRouting, Routing

TWINS = [(ledger.Ledger, ledger.AsyncLedger), (ledger.Hold, ledger.AsyncHold)]

#: The names the async annotations use for the sync ones (scripts/unasync.py's table).
RENAMED = {
    "AsyncConnectable": "Connectable",
    "AsyncDatabase": "Database",
    "AsyncHold": "Hold",
    "AsyncIterator": "Iterator",
    "AsyncLedger": "Ledger",
}

#: Private helpers every facade method goes through: one name and shape on both sides
#: (``Ledger._q`` was an attribute where ``AsyncLedger._queries()`` was a method).
HELPERS = ["_run", "_at", "_op", "_tenant_op", "_queries", "_tenant_row", "_counts"]


def _public(cls: type) -> dict[str, Any]:
    return {n: m for n, m in inspect.getmembers(cls) if not n.startswith("_") and callable(m)}


def _properties(cls: type) -> list[str]:
    return sorted(
        n for n, m in inspect.getmembers(cls) if not n.startswith("_") and isinstance(m, property)
    )


def _unasync(annotation: Any) -> Any:
    if not isinstance(annotation, str):
        return annotation
    for old, new in RENAMED.items():
        annotation = annotation.replace(old, new)
    return annotation


def _shape(method: Any, rename: bool = False) -> list[tuple[str, Any, Any, Any]]:
    """Each parameter's name, kind, default and annotation, then the return annotation."""
    fix = _unasync if rename else (lambda a: a)
    signature = inspect.signature(method)
    shape = [(p.name, p.kind, p.default, fix(p.annotation)) for p in signature.parameters.values()]
    return [*shape, ("return", None, None, fix(signature.return_annotation))]


def _differences(sync: type, async_: type, names: Any) -> dict[str, Any]:
    """The methods among ``names`` whose signatures differ between the two classes."""
    out = {}
    for name in names:
        mine, theirs = _shape(getattr(sync, name)), _shape(getattr(async_, name), rename=True)
        if name == "hold":  # a context manager: Iterator[Hold] against AsyncIterator[AsyncHold]
            mine, theirs = mine[:-1], theirs[:-1]
        if mine != theirs:
            out[name] = (mine, theirs)
    return out


@pytest.mark.parametrize(("sync", "async_"), TWINS, ids=lambda c: c.__name__)
def test_both_sides_have_the_same_public_methods(sync: type, async_: type) -> None:
    assert sorted(_public(sync)) == sorted(_public(async_))
    assert _properties(sync) == _properties(async_)


@pytest.mark.parametrize(("sync", "async_"), TWINS, ids=lambda c: c.__name__)
def test_each_method_takes_the_same_parameters_on_both_sides(sync: type, async_: type) -> None:
    shared = sorted(_public(sync).keys() & _public(async_).keys())
    assert _differences(sync, async_, shared) == {}


@pytest.mark.parametrize(("sync", "async_"), TWINS, ids=lambda c: c.__name__)
def test_async_methods_are_coroutines_and_sync_ones_are_not(sync: type, async_: type) -> None:
    for name, theirs in _public(async_).items():
        mine = getattr(sync, name)
        if name == "hold":  # (async) context managers around (async) generators
            assert inspect.isasyncgenfunction(theirs.__wrapped__)
            assert inspect.isgeneratorfunction(mine.__wrapped__)
            continue
        if name == "alerts":  # the consumer: an (async) generator (docs/alerts.md)
            assert inspect.isasyncgenfunction(theirs)
            assert inspect.isgeneratorfunction(mine)
            continue
        assert inspect.iscoroutinefunction(theirs), f"{async_.__name__}.{name} must be async"
        assert not inspect.iscoroutinefunction(mine), f"{sync.__name__}.{name} must not be"


def test_the_facades_share_their_private_helpers() -> None:
    sync, async_ = ledger.Ledger, ledger.AsyncLedger
    assert all(inspect.iscoroutinefunction(getattr(async_, n)) for n in HELPERS)
    assert not any(inspect.iscoroutinefunction(getattr(sync, n)) for n in HELPERS)
    assert _differences(sync, async_, HELPERS) == {}


def test_a_difference_in_a_default_or_a_kind_is_caught() -> None:
    class Sync:
        def f(self, a: int, *, b: int = 1) -> int:
            return a

        def g(self, a: int, b: int = 1) -> int:
            return a

    class Async:
        async def f(self, a: int, *, b: int = 2) -> int:
            return a

        async def g(self, a: int, *, b: int = 1) -> int:
            return a

    assert sorted(_differences(Sync, Async, ["f", "g"])) == ["f", "g"]


# ------------------------------------------------ the drivers and the routing


def test_database_run_takes_the_same_parameters_on_both_sides() -> None:
    """One way to run an operation: ``run(op, caller)``, no ``pool=`` on the sync side.

    A call routed to a Citus worker runs on the worker's own database on both
    sides (``Routing.at`` and ``AsyncRouting.at`` answer one).
    """
    assert _differences(Database, AsyncDatabase, ["run", "close"]) == {}
    assert list(inspect.signature(Database.run).parameters) == ["self", "op", "caller"]
    assert inspect.iscoroutinefunction(AsyncDatabase.run)
    assert inspect.iscoroutinefunction(AsyncDatabase.close)
    assert not inspect.iscoroutinefunction(Database.run)
    assert not inspect.iscoroutinefunction(Database.close)


def test_routing_has_the_same_public_methods_on_both_sides() -> None:
    assert sorted(_public(Routing)) == sorted(_public(AsyncRouting))
    assert _properties(Routing) == _properties(AsyncRouting)
    assert {"queries", "at", "close"} <= set(_public(Routing))


def test_routing_methods_take_the_same_parameters_on_both_sides() -> None:
    assert _differences(Routing, AsyncRouting, sorted(_public(Routing))) == {}
    # The constructors differ only in what ``run`` returns (a coroutine on the async side).
    mine, theirs = inspect.signature(Routing), inspect.signature(AsyncRouting)
    assert [(p.name, p.kind, p.default) for p in mine.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]
    for name in _public(AsyncRouting):
        assert inspect.iscoroutinefunction(getattr(AsyncRouting, name)), name
        assert not inspect.iscoroutinefunction(getattr(Routing, name)), name


def test_a_routing_difference_is_caught() -> None:
    class Sync:
        def at(self, tenant_id: object) -> tuple[Any, Database | None]: ...

    class AsyncPool:
        async def at(self, tenant_id: object) -> tuple[Any, object | None]: ...

    class AsyncExtra:
        async def at(self, tenant_id: object, pool: object = None) -> tuple[Any, Any]: ...

    assert list(_differences(Sync, AsyncPool, ["at"])) == ["at"]
    assert list(_differences(Sync, AsyncExtra, ["at"])) == ["at"]


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
