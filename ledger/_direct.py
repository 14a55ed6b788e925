"""Clients that connect to the tenant's Citus worker directly.

Through the coordinator, a single-tenant call is two hops: the coordinator
parses it, finds the tenant's worker and sends it on as a new text query,
which the worker parses and plans again. Measured per reserve->commit cycle
(docs/scale-out.md, "Clients on the workers"), those hops cost more CPU than
the statements themselves. Citus runs queries from any node with metadata, so
a ledger made with ``route_to_workers=True`` keeps a map of where each shard
group lives (the ``shard_map`` statement, read from the coordinator), hashes
the tenant id as Citus does (:func:`ledger._pghash.hashtext`), and sends the
call to that worker over a pool of its own, as a call of the shard group's
shard function (:func:`ledger._distribute.shard_variant`), which psycopg
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

import bisect
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Engine

from . import errors
from ._distribute import shard_variant
from ._engine import as_engine
from ._executor import Fetch, Op, Steps
from ._pghash import hashtext
from ._pool import OwnPool
from ._queries import Queries

#: How long a worker that could not be reached is left out (its tenants' calls
#: go through the coordinator meanwhile).
_DOWN_FOR = 5.0

Node = tuple[str, int]
_Route = tuple[Queries, OwnPool, Node]
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


class WorkerRouter:
    """Picks the worker, its pool and its statements for a tenant's call."""

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
        self._refresh = refresh
        self._lock = threading.Lock()
        self._map: _Map | None = None
        self._read_at = float("-inf")
        self._queries: dict[int, Queries] = {}  # anchor shard -> its shard functions' calls
        self._routes: dict[object, _Route] = {}  # tenant id -> what route() answers
        self._pools: dict[Node, tuple[Engine, WorkerPool]] = {}
        self._down: dict[Node, float] = {}

    def route(self, tenant_id: object, routed: Queries) -> tuple[Queries, OwnPool] | None:
        """(statements, pool) for a call about ``tenant_id``; None: go through the coordinator."""
        if not routed.distributed:  # plain PostgreSQL, or a schema not distributed (yet)
            return None
        if time.monotonic() - self._read_at >= self._refresh:
            self._reload(routed)
        found = self._routes.get(tenant_id)
        if found is None:
            found = self._find(tenant_id, routed)
            if found is None:
                return None
        if self._down and self._down.get(found[2], 0.0) > time.monotonic():
            return None
        return found[0], found[1]

    def _find(self, tenant_id: object, routed: Queries) -> _Route | None:
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
        found = (q, self._pool(group.node), group.node)
        if len(self._routes) >= _REMEMBERED:
            self._routes.clear()
        self._routes[tenant_id] = found
        return found

    def _reload(self, routed: Queries) -> None:
        with self._lock:
            if time.monotonic() - self._read_at < self._refresh:
                return  # another thread just did
            # A failed read keeps the old map (or none) until the next refresh.
            with contextlib.suppress(errors.DatabaseError):
                self._map = self._run(_read_map(routed))
            self._routes.clear()
            self._queries.clear()
            self._read_at = time.monotonic()

    def _pool(self, node: Node) -> OwnPool:
        found = self._pools.get(node)
        if found is None:
            with self._lock:
                found = self._pools.get(node)
                if found is None:
                    host, port = node
                    engine, _ = as_engine(self._engine.url.set(host=host, port=port))
                    pool = WorkerPool(engine, self._coordinator, lambda: self._unreachable(node))
                    found = self._pools[node] = (engine, pool)
        return found[1]

    def _unreachable(self, node: Node) -> None:
        """A worker refused a connection: leave it out a while, read the map again soon."""
        with self._lock:
            self._down[node] = time.monotonic() + _DOWN_FOR
            self._read_at = float("-inf")

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for engine, pool in pools:
            pool.dispose()
            engine.dispose()
