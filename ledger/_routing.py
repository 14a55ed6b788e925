"""Where the core meets the Citus wing: which statements a ledger uses, and where they run.

A :class:`~ledger.Ledger` or :class:`~ledger.AsyncLedger` asks here, once, which
statements its schema takes (:func:`routed_queries`): one catalog read
(``routed_functions``) tells a schema that ``ledger distribute`` prepared
from any other. On plain PostgreSQL, and on a schema not distributed (yet),
the answer is the plain :class:`~ledger._queries.Queries` and nothing of
:mod:`ledger.citus` runs, then or later. On a distributed schema it is a
:class:`ledger.citus.queries.DistributedQueries`, which answers the steps that
differ there itself (see :mod:`ledger._queries`).

Each facade keeps one :class:`Routing` (:class:`AsyncRouting`) and asks it,
per call, for the statements (``queries()``) or for the statements and the
database a call about one tenant runs on (``at(tenant_id)``): None for the
ledger's own, or with ``route_to_workers=True`` on a distributed schema the
tenant's worker's own ``Database`` (``AsyncDatabase``), kept by a worker
router of :mod:`ledger.citus.routing` (re-exported here so that the facades
import the wing from this one module; a layout test keeps it so).

One source for both faces: :class:`Routing` and :func:`routed_queries` are
generated from :class:`AsyncRouting` and :func:`routed_queries_async`, in
this file (the block marked ``# unasync: twin``, written by
``scripts/unasync.py``, which ``--check`` keeps current). They stay in the
seam's one module rather than in a generated file of their own, because the
Citus wing is reached from the core here only (tests/unit/test_citus_wing.py)
and the lookup cache (``_ROUTED``) must be one for both faces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import URL

from . import errors
from ._queries import Queries, for_schema
from ._requests import Fetch, Op, Steps
from .citus.names import SHARD_LOCK
from .citus.queries import routed_variant
from .citus.routing import AsyncWorkerRouter, WorkerRouter

if TYPE_CHECKING:
    from ._async_executor import AsyncDatabase
    from ._executor import Database

__all__ = [
    "AsyncRouting",
    "AsyncWorkerRouter",
    "Routing",
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


def forget(schema: str) -> None:
    """Look ``schema`` up again: ``ledger distribute`` just changed its functions.

    Ledgers created from now on in this process see the new routed functions;
    other processes pick them up when they next start (docs/scale-out.md).
    """
    for key in [k for k in _ROUTED if k[1] == schema]:
        del _ROUTED[key]


W = TypeVar("W")
#: How the facade runs an operation for its routing (the lookup, the worker map).
Run = Callable[[Op[Any]], Any]
AsyncRun = Callable[[Op[Any]], Awaitable[Any]]


class _Routes(Generic[W]):
    """What :class:`Routing` and :class:`AsyncRouting` keep: the statements once looked
    up, and the worker router, if any (``route_to_workers=True``)."""

    def __init__(self, url: URL, schema: str, run: Run, workers: W | None) -> None:
        self._url = url
        self._schema = schema
        self._run = run
        #: The statements before the lookup (and while it fails): build an operation
        #: with them first to check its arguments before any I/O.
        self.plain = for_schema(schema)
        self._found: Queries | None = None
        self.workers = workers

    @property
    def looked_up(self) -> bool:
        """Has the lookup answered (the statements are known, no more I/O to find them)?"""
        return self._found is not None

    def _keep(self, found: Queries | None) -> Queries:
        if found is None:  # the lookup failed (server down): plain statements this time
            return self.plain
        self._found = found
        return found


# unasync: twin-source (the sync twin below is generated from this block)


async def routed_queries_async(url: URL, schema: str, run: AsyncRun) -> Queries | None:
    """The statements for ``schema``: routed function calls where ``distribute`` made them.

    On plain PostgreSQL and on an undistributed schema this is
    :func:`~ledger._queries.for_schema` unchanged. Found once per URL and
    schema (``run`` carries out :func:`lookup`) and cached, for both faces;
    when the lookup itself fails (server down), None is returned and it runs
    again next time.
    """
    key = _key(url, schema)
    found = _ROUTED.get(key)
    if found is None:
        try:
            found = _ROUTED[key] = await run(lookup(schema))
        except errors.DatabaseError:
            return None
    return found


class AsyncRouting(_Routes[AsyncWorkerRouter]):
    """Which statements a facade's calls take, and where they run.

    ``run`` carries out the lookup on the ledger's own database; ``workers``
    (``route_to_workers=True``) sends a call about one tenant of a distributed
    schema to that tenant's worker, on the worker's own database.
    """

    def __init__(
        self,
        url: URL,
        schema: str,
        run: AsyncRun,
        *,
        workers: AsyncWorkerRouter | None = None,
    ) -> None:
        super().__init__(url, schema, run, workers)

    async def queries(self) -> Queries:
        """The statements: looked up on first use, then kept; plain while the lookup fails."""
        if self._found is not None:
            return self._found
        return self._keep(await routed_queries_async(self._url, self._schema, self._run))

    async def at(self, tenant_id: object) -> tuple[Queries, AsyncDatabase | None]:
        """The statements and database for a call about ``tenant_id`` (None: the ledger's)."""
        q = await self.queries()
        if self.workers is None:
            return q, None
        found = await self.workers.at(tenant_id, q)
        return found if found is not None else (q, None)

    async def close(self) -> None:
        if self.workers is not None:
            await self.workers.close()


# unasync: end
# unasync: twin (generated from the block above by scripts/unasync.py: do not edit)


def routed_queries(url: URL, schema: str, run: Run) -> Queries | None:
    """The statements for ``schema``: routed function calls where ``distribute`` made them.

    On plain PostgreSQL and on an undistributed schema this is
    :func:`~ledger._queries.for_schema` unchanged. Found once per URL and
    schema (``run`` carries out :func:`lookup`) and cached, for both faces;
    when the lookup itself fails (server down), None is returned and it runs
    again next time.
    """
    key = _key(url, schema)
    found = _ROUTED.get(key)
    if found is None:
        try:
            found = _ROUTED[key] = run(lookup(schema))
        except errors.DatabaseError:
            return None
    return found


class Routing(_Routes[WorkerRouter]):
    """Which statements a facade's calls take, and where they run.

    ``run`` carries out the lookup on the ledger's own database; ``workers``
    (``route_to_workers=True``) sends a call about one tenant of a distributed
    schema to that tenant's worker, on the worker's own database.
    """

    def __init__(
        self,
        url: URL,
        schema: str,
        run: Run,
        *,
        workers: WorkerRouter | None = None,
    ) -> None:
        super().__init__(url, schema, run, workers)

    def queries(self) -> Queries:
        """The statements: looked up on first use, then kept; plain while the lookup fails."""
        if self._found is not None:
            return self._found
        return self._keep(routed_queries(self._url, self._schema, self._run))

    def at(self, tenant_id: object) -> tuple[Queries, Database | None]:
        """The statements and database for a call about ``tenant_id`` (None: the ledger's)."""
        q = self.queries()
        if self.workers is None:
            return q, None
        found = self.workers.at(tenant_id, q)
        return found if found is not None else (q, None)

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()


# unasync: end
