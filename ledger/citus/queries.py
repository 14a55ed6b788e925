"""The statements of a distributed schema, and the steps that differ on Citus.

:class:`DistributedQueries` is the Citus side of the seam that
:class:`ledger._queries.Queries` defines: the same named statements, with the
single-tenant ones replaced by calls of their routed functions
(:func:`routed_variant`), and the few operations whose plan differs on Citus
answered here (:mod:`ledger.citus.steps`): a settlement without a tenant finds
the hold's tenant first, the expiry sweep goes tenant by tenant, batches lock
on the workers and apply item by item, keyed calls are one command
(:mod:`ledger.citus.keyed`). The core operations ask the statements object
and never test which kind it is (docs/scale-out.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .. import errors
from .._queries import Gone, OutcomeT, Queries, Settlement
from .._requests import Op, Steps
from . import keyed as _keyed
from . import steps as _steps
from .functions import (
    ROUTED_STATEMENTS,
    keyed_function_name,
    keyed_parameters,
    routed_function_name,
    routed_parameters,
)
from .keyed import KEYED
from .names import ROUTED_PREFIX, SHARD_LOCK, SHARD_SUFFIX
from .sql import render


@dataclass(frozen=True, slots=True)
class DistributedQueries(Queries):
    """The statements of a schema that ``ledger distribute`` spread over Citus workers.

    Single-tenant statements may be calls of their routed functions
    (:func:`routed_variant`); settlements without a tenant and the expiry
    sweeper look the tenant up first (ledger/sql/distributed.sql).
    """

    def check_nested(self, what: str) -> None:
        """Nested budgets are not distributed yet: refuse clearly rather than answer wrongly."""
        raise errors.NestedNotSupported(
            f"{what}: nested budgets are not available on a Citus-distributed ledger yet; "
            "nothing changed"
        )

    def trees(self) -> bool:
        """No: nested budgets are refused here (check_nested), so no commit has levels."""
        return False

    #: (operation, call of its ``routed_keyed_*`` function) where ``distribute`` made one.
    keyed: tuple[tuple[str, str], ...] = ()

    def keyed_call(self, operation: str) -> str | None:
        """The call of ``operation``'s ``routed_keyed_*`` function, or None (none made)."""
        for name, call in self.keyed:
            if name == operation:
                return call
        return None

    def idempotent(
        self,
        operation: tuple[str, Mapping[str, Any]] | None,
        request_hash: bytes,
        replayed: Callable[[Any, Any], OutcomeT],
        three_statements: Op[OutcomeT],
    ) -> Op[OutcomeT]:
        call = None if operation is None else self.keyed_call(operation[0])
        if operation is None or call is None:
            return three_statements
        name, params = operation
        return _keyed.one_command(
            call, KEYED[name], params, request_hash, replayed, three_statements
        )

    def hold_owner(self, rid: int, tenant_id: str | None) -> Steps[str | Gone | None]:
        return _steps.hold_owner(self, rid, tenant_id)

    def sweep(
        self, count: int, skipped: dict[str, str], one_server: Callable[[], Steps[int]]
    ) -> Steps[int]:
        return _steps.sweep_by_tenant(self, count, skipped)

    def reserve_batch(
        self,
        tenants: list[str],
        singles: Callable[[], Iterator[Op[OutcomeT]]],
        one_server: Callable[[], Steps[list[OutcomeT]]],
    ) -> Steps[list[OutcomeT]]:
        return _steps.reserve_on_workers(self, tenants, singles)

    def settle_batch(
        self,
        prepared: list[Settlement],
        single: Callable[[Settlement], Op[OutcomeT]],
        one_server: Callable[[], Steps[list[OutcomeT]]],
    ) -> Steps[list[OutcomeT]]:
        return _steps.settle_on_workers(self, prepared, single)


def routed_variant(plain: Queries, schema: str, functions: set[str]) -> Queries:
    """``plain`` with each routed statement whose function exists replaced by its call.

    A schema with the shard lock function is distributed: its statements are a
    :class:`DistributedQueries` (settlements without a tenant look it up
    first), even where a routed function is missing (a schema at an older
    revision: that statement is sent as it is, and Citus routes it).
    """
    if SHARD_LOCK not in functions:
        return plain
    q = f'"{schema}"'
    calls: dict[str, str] = {}
    for name in ROUTED_STATEMENTS:
        sql = getattr(plain, name)
        function = routed_function_name(name, sql)
        if function in functions:
            args = ", ".join(f"%({p})s" for p in routed_parameters(sql))
            calls[name] = render("routed_call", schema=q, function=function, arguments=args)
    statements = {f.name: calls.get(f.name, getattr(plain, f.name)) for f in fields(plain)}
    keyed = []
    for name, operation in KEYED.items():
        function = keyed_function_name(plain, name)
        if function in functions:
            args = ", ".join(f"%({p})s" for p in keyed_parameters(plain, operation))
            keyed.append((name, render("routed_call", schema=q, function=function, arguments=args)))
    return DistributedQueries(**statements, keyed=tuple(keyed))


def shard_variant(routed: Queries, anchor: int, functions: set[str]) -> Queries:
    """``routed`` with each routed call made a call of that shard group's shard function.

    For a client connected to the worker that holds the group
    (:mod:`ledger.citus.routing`): the shard function locks the shard, checks
    its placement and runs the statement as static SQL, without the routed
    function's lookup and ``EXECUTE``. A statement whose shard function is
    missing (a shard split since ``ledger distribute``) keeps its routed call,
    which also runs on this worker.
    """

    def on_shards(sql: str) -> str:
        match = _ROUTED_CALL.match(sql)
        if match is not None and f"{match.group(2)}{SHARD_SUFFIX}{anchor}" in functions:
            return f"{match.group(1)}{match.group(2)}{SHARD_SUFFIX}{anchor}({match.group(3)}"
        return sql

    statements: dict[str, Any] = {}
    for f in fields(routed):
        value = getattr(routed, f.name)
        if f.name == "keyed":  # (operation, call of its keyed function) pairs
            value = tuple((name, on_shards(call)) for name, call in value)
        elif isinstance(value, str):
            value = on_shards(value)
        statements[f.name] = value
    return type(routed)(**statements)


def _call_pattern() -> re.Pattern[str]:
    """``SELECT * FROM "schema".routed_<name>_<hash>(<args>``: a ``routed_call`` as
    :func:`routed_variant` writes it (ledger/sql/citus/functions.sql), read back as
    (up to the function, the function, what follows its opening parenthesis)."""
    head = render("routed_call", schema="\x00", function="\x01", arguments="").partition("\x01")[0]
    before, after = head.split("\x00")
    schema = f'{re.escape(before)}"[^"]+"{re.escape(after)}'
    return re.compile(rf"^({schema})({ROUTED_PREFIX}\w+_[0-9a-f]{{8}})\((.*)$", re.S)


_ROUTED_CALL = _call_pattern()
