"""Clients that connect to the tenant's Citus worker directly.

Through the coordinator, a single-tenant call is two hops: the coordinator
parses it, finds the tenant's worker and sends it on as a new text query,
which the worker parses and plans again. Measured per reserve->commit cycle
(docs/scale-out.md, "Clients on the workers"), those hops cost more CPU than
the statements themselves. Citus runs queries from any node with metadata, so
a ledger made with ``route_to_workers=True`` keeps a map of where each shard
group lives (the ``shard_map`` statement, read from the coordinator), hashes
the tenant id as Citus does (:func:`ledger.citus.hash.hashtext`), and sends the
call to that worker over a pool of its own, as a call of the shard group's
shard function (:func:`ledger.citus.queries.shard_variant`), which psycopg
prepares like any statement.

Correctness never depends on the map being current: the shard function takes
the shard lock a shard move takes, then checks that the placement is on the
node it runs on, and otherwise runs the statement on the distributed tables,
which Citus routes. A stale map (a rebalance since the last read) costs
speed, not money; the map is read again every ``refresh`` seconds and as soon
as a worker cannot be reached, whose calls go through the coordinator
meanwhile (connecting failed, so nothing was sent).

Everything else (settling without the tenant, batches, the sweeper,
snapshots, certificates, verification) runs on the coordinator as before.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg
from sqlalchemy import URL, Engine

from .. import errors
from .._async_executor import AsyncDatabase
from .._engine import as_engine
from .._executor import Database
from .._pool import OwnPool
from .._queries import Queries
from .._requests import Fetch, Op, Steps
from .hash import hashtext
from .queries import DistributedQueries, shard_variant

#: How long a worker that could not be reached is left out (its tenants' calls
#: go through the coordinator meanwhile).
_DOWN_FOR = 5.0

Node = tuple[str, int]
P = TypeVar("P")
#: Tenants whose route is remembered (hashing in Python is ~10 us a call); the
#: memory is cleared when full and whenever the map is read again.
_REMEMBERED = 100_000


@dataclass(frozen=True, slots=True)
class _Group:
    low: int
    high: int
    anchor: int
    node: Node


@dataclass(frozen=True, slots=True)
class _Map:
    lows: list[int]
    groups: list[_Group]
    functions: frozenset[str]


def _read_map(q: Queries) -> Op[_Map]:
    def steps() -> Steps[_Map]:
        rows = yield Fetch(q.shard_map, {})
        names = yield Fetch(q.routed_functions, {})
        groups = [_Group(r.low, r.high, r.anchor, (r.host, r.port)) for r in rows]
        return _Map([g.low for g in groups], groups, frozenset(str(n.name) for n in names))

    return Op(steps, "REPEATABLE READ")


class WorkerPool(OwnPool):
    """A worker's connections: more prepared statements (one per statement and shard group)."""

    def __init__(self, engine: Engine, fallback: OwnPool, down: Callable[[], None]) -> None:
        super().__init__(engine)
        self.fallback = fallback
        self._down = down

    def unreachable(self, error: BaseException) -> None:
        self._down()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = super()._connect()
        conn.prepared_max = 1000
        return conn


class ShardRouter(Generic[P]):
    """Which worker and statements a tenant's call gets: bookkeeping, no I/O.

    The map is read by the owner (:class:`WorkerRouter` on the ledger's own
    connections, :class:`AsyncWorkerRouter` awaiting an ``AsyncLedger``'s)
    when :meth:`due`, which also keeps the pools of the workers in
    :attr:`pools`.
    """

    def __init__(self, refresh: float) -> None:
        self._refresh = refresh
        self._lock = threading.Lock()
        self._map: _Map | None = None
        self._read_at = float("-inf")
        self._queries: dict[int, Queries] = {}  # anchor shard -> its shard functions' calls
        self._routes: dict[object, tuple[Queries, Node]] = {}  # tenant id -> route
        self.pools: dict[Node, P] = {}
        self._down: dict[Node, float] = {}

    def due(self) -> bool:
        """Is the map to be read (again)?"""
        return time.monotonic() - self._read_at >= self._refresh

    def update(self, shards: _Map | None) -> None:
        """The map just read (None: the read failed; the old one stays until the next)."""
        with self._lock:
            if shards is not None:
                self._map = shards
            self._routes.clear()
            self._queries.clear()
            self._read_at = time.monotonic()

    def find(self, tenant_id: object, routed: Queries) -> tuple[Queries, Node] | None:
        """The statements and the worker for ``tenant_id``; None: the coordinator."""
        found = self._routes.get(tenant_id)
        if found is None:
            found = self._find(tenant_id, routed)
            if found is None:
                return None
        if self._down and self._down.get(found[1], 0.0) > time.monotonic():
            return None
        return found

    def _find(self, tenant_id: object, routed: Queries) -> tuple[Queries, Node] | None:
        """Hash, look the group up, remember the answer (until the map is read again)."""
        shards = self._map
        if shards is None or not isinstance(tenant_id, str):
            return None
        try:
            hashed = hashtext(tenant_id)
        except UnicodeEncodeError:  # not a valid tenant id: the operation says so
            return None
        i = bisect.bisect_right(shards.lows, hashed) - 1
        if i < 0 or hashed > shards.groups[i].high:
            return None  # a hole in the map (a shard being split): the coordinator knows
        group = shards.groups[i]
        q = self._queries.get(group.anchor)
        if q is None:
            q = self._queries[group.anchor] = shard_variant(
                routed, group.anchor, set(shards.functions)
            )
        if len(self._routes) >= _REMEMBERED:
            self._routes.clear()
        self._routes[tenant_id] = (q, group.node)
        return q, group.node

    def unreachable(self, node: Node) -> None:
        """A worker refused a connection: leave it out a while, read the map again soon."""
        with self._lock:
            self._unreachable(node)

    def _unreachable(self, node: Node) -> None:
        self._down[node] = time.monotonic() + _DOWN_FOR
        self._read_at = float("-inf")


class WorkerRouter:
    """:class:`ShardRouter` for :class:`~ledger.Ledger`: reads the map on the ledger's own
    connections, keeps a :class:`~ledger._executor.Database` per worker (on a
    :class:`WorkerPool`, which falls back to the coordinator's pool)."""

    def __init__(
        self,
        engine: Engine,
        coordinator: OwnPool,
        run: Callable[[Op[Any]], Any],
        *,
        refresh: float = 30.0,
    ) -> None:
        self._engine = engine
        self._coordinator = coordinator
        self._run = run
        self._engines: list[Engine] = []
        self._shards: ShardRouter[Database] = ShardRouter(refresh)
        self._reading = threading.Lock()

    def at(self, tenant_id: object, routed: Queries) -> tuple[Queries, Database] | None:
        """(statements, database) for a call about ``tenant_id``; None: the coordinator."""
        if not isinstance(routed, DistributedQueries):  # not distributed (yet)
            return None
        if self._shards.due():
            with self._reading:
                if self._shards.due():
                    shards = None
                    with contextlib.suppress(errors.DatabaseError):
                        shards = self._run(_read_map(routed))
                    self._shards.update(shards)
        found = self._shards.find(tenant_id, routed)
        if found is None:
            return None
        q, node = found
        database = self._shards.pools.get(node)
        if database is None:
            with self._reading:
                database = self._shards.pools.get(node)
                if database is None:
                    database = self._shards.pools[node] = self._make_database(node)
        return q, database

    def route(self, tenant_id: object, routed: Queries) -> tuple[Queries, OwnPool] | None:
        """:meth:`at`'s answer with the worker's pool (whose connect arguments name the
        worker: tests and benchmarks read where a tenant goes from it)."""
        found = self.at(tenant_id, routed)
        if found is None:
            return None
        q, database = found
        assert database.pool is not None
        return q, database.pool

    def _make_database(self, node: Node) -> Database:
        host, port = node
        engine, _ = as_engine(self._engine.url.set(host=host, port=port))
        self._engines.append(engine)
        # Connecting happens on first use; a refusal falls back to the coordinator there.
        pool = WorkerPool(engine, self._coordinator, lambda: self._shards.unreachable(node))
        return Database(engine, pool=pool)

    def close(self) -> None:
        databases, self._shards.pools = list(self._shards.pools.values()), {}
        for database in databases:
            database.close()
        for engine in self._engines:
            engine.dispose()


class AsyncWorkerRouter:
    """:class:`ShardRouter` for :class:`~ledger.AsyncLedger`: an :class:`AsyncDatabase`
    (its own async pool) per worker, opened on first use; a worker that cannot be
    reached within ``connect_timeout`` is left out (its tenants' calls go through
    the coordinator) and tried again later."""

    def __init__(
        self,
        url: URL,
        run: Callable[[Op[Any]], Awaitable[Any]],
        *,
        pool_size: int,
        refresh: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._run = run
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._shards: ShardRouter[AsyncDatabase] = ShardRouter(refresh)
        self._reading = asyncio.Lock()

    async def at(self, tenant_id: object, routed: Queries) -> tuple[Queries, AsyncDatabase] | None:
        """(statements, database) for a call about ``tenant_id``; None: the coordinator."""
        if not isinstance(routed, DistributedQueries):
            return None
        if self._shards.due():
            async with self._reading:
                if self._shards.due():
                    try:
                        shards: _Map | None = await self._run(_read_map(routed))
                    except errors.DatabaseError:
                        shards = None
                    self._shards.update(shards)
        found = self._shards.find(tenant_id, routed)
        if found is None:
            return None
        q, node = found
        database = self._shards.pools.get(node)
        if database is None:
            async with self._reading:
                database = self._shards.pools.get(node)
                if database is None:
                    database = await self._open(node)
                    if database is None:
                        self._shards.unreachable(node)
                        return None
                    self._shards.pools[node] = database
        return q, database

    async def _open(self, node: Node) -> AsyncDatabase | None:
        from psycopg_pool import AsyncConnectionPool

        host, port = node
        conninfo = self._url.set(drivername="postgresql", host=host, port=port).render_as_string(
            hide_password=False
        )

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            conn.prepared_max = 1000  # one statement per statement and shard group

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo, open=False, min_size=1, max_size=self._pool_size, configure=configure
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except Exception:  # PoolTimeout, or psycopg's: the worker cannot be reached
            await pool.close()
            return None
        return AsyncDatabase(pool, owned=True)

    async def close(self) -> None:
        databases, self._shards.pools = list(self._shards.pools.values()), {}
        for database in databases:
            await database.close()
