"""Where the core meets the Citus wing: which statements a ledger uses, and where they run.

A :class:`~ledger.Ledger` or :class:`~ledger.AsyncLedger` asks here, once, which
statements its schema takes (:func:`routed_queries`): one catalog read
(``routed_functions``) tells a schema that ``ledger distribute`` prepared
from any other. On plain PostgreSQL, and on a schema not distributed (yet),
the answer is the plain :class:`~ledger._queries.Queries` and nothing of
:mod:`ledger.citus` runs, then or later. On a distributed schema it is a
:class:`ledger.citus.queries.DistributedQueries`, which answers the steps that
differ there itself (see :mod:`ledger._queries`).

With ``route_to_workers=True`` a ledger also keeps a worker router
(:mod:`ledger.citus.routing`), re-exported here so that the facades import
the wing from this one module (a layout test keeps it so).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import URL

from . import errors
from ._queries import Queries, for_schema
from ._requests import Fetch, Op, Steps
from .citus.names import SHARD_LOCK
from .citus.queries import routed_variant
from .citus.routing import AsyncWorkerRouter, WorkerRouter

__all__ = [
    "AsyncWorkerRouter",
    "WorkerRouter",
    "forget",
    "lookup",
    "routed_queries",
    "routed_queries_async",
]

#: (engine url, schema) -> the Queries a Ledger or AsyncLedger uses there (routed on Citus).
_ROUTED: dict[tuple[str, str], Queries] = {}


def _key(url: URL, schema: str) -> tuple[str, str]:
    return (url.render_as_string(hide_password=True), schema)


def lookup(schema: str) -> Op[Queries]:
    """Find the schema's routed functions (one catalog read) and the statements to use.

    An operation like any other, so :class:`~ledger.Ledger` and
    :class:`~ledger.AsyncLedger` run the same lookup on their own back-ends.
    In a transaction of its own (not coalesced with other callers' statements).
    A schema without the shard lock function is not distributed: its plain
    statements, without a call into :mod:`ledger.citus`.
    """
    q = for_schema(schema)

    def steps() -> Steps[Queries]:
        rows = yield Fetch(q.routed_functions, {})
        functions = {str(r.name) for r in rows}
        if SHARD_LOCK not in functions:
            return q
        return routed_variant(q, schema, functions)

    return Op(steps, "READ COMMITTED")


def routed_queries(url: URL, schema: str, run: Callable[[Op[Queries]], Queries]) -> Queries | None:
    """The statements for ``schema``: routed function calls where ``distribute`` made them.

    On plain PostgreSQL and on an undistributed schema this is
    :func:`~ledger._queries.for_schema` unchanged. Found once per URL and
    schema (``run`` carries out :func:`lookup`) and cached; when the lookup
    itself fails (server down), None is returned and it runs again next time.
    """
    key = _key(url, schema)
    found = _ROUTED.get(key)
    if found is None:
        try:
            found = _ROUTED[key] = run(lookup(schema))
        except errors.DatabaseError:
            return None
    return found


async def routed_queries_async(
    url: URL, schema: str, run: Callable[[Op[Queries]], Awaitable[Queries]]
) -> Queries | None:
    """:func:`routed_queries` for :class:`~ledger.AsyncLedger`: the same lookup and cache."""
    key = _key(url, schema)
    found = _ROUTED.get(key)
    if found is None:
        try:
            found = _ROUTED[key] = await run(lookup(schema))
        except errors.DatabaseError:
            return None
    return found


def forget(schema: str) -> None:
    """Look ``schema`` up again: ``ledger distribute`` just changed its functions.

    Ledgers created from now on in this process see the new routed functions;
    other processes pick them up when they next start (docs/scale-out.md).
    """
    for key in [k for k in _ROUTED if k[1] == schema]:
        del _ROUTED[key]
