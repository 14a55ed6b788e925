"""Clients on the workers: ``Ledger(url, route_to_workers=True)`` (ledger/citus/routing.py).

What must hold, checked against Citus itself:

- the ledger hashes a tenant id as Citus does and finds the worker that holds
  the tenant's shard group;
- its single-tenant calls never touch the coordinator (proved by shutting the
  application's role out of the coordinator: they keep working, while a
  snapshot, which needs the coordinator, fails with a typed error);
- a map that a shard move made stale costs speed, not money: the call lands
  on the old worker, which no longer has the placement, and Citus routes it;
- under load on one hot tenant and while shard groups move between workers,
  every sum is exact and the journal verifies.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

import ledger
from ledger import errors
from ledger.citus.hash import hashtext
from tests.helpers import holds_match_reserved

from .conftest import alchemy, plain


def direct(url: str, schema: str, **kw: object) -> ledger.Ledger:
    return ledger.Ledger(alchemy(url), schema=schema, route_to_workers=True, **kw)  # type: ignore[arg-type]


def placement_port(url: str, schema: str, tenant: str) -> int:
    """The port of the node that holds ``tenant``'s row, as Citus says."""
    with psycopg.connect(plain(url)) as conn:
        row = conn.execute(
            "SELECT n.nodeport FROM pg_dist_placement AS p JOIN pg_dist_node AS n USING (groupid)"
            " WHERE p.shardid = get_shard_id_for_distribution_column(%s, %s::text)",
            (f'"{schema}".tenants', tenant),
        ).fetchone()
    assert row is not None
    return int(row[0])


def routed_port(book: ledger.Ledger, tenant: str) -> int | None:
    """The port of the pool the ledger picks for ``tenant`` (None: the coordinator)."""
    router = book._routing.workers
    assert router is not None
    found = router.route(tenant, book._q)
    if found is None:
        return None
    pool = found[1]
    return int(pool._args[1]["port"])  # type: ignore[attr-defined]


def tenant_ids(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcxyz0123456789-_.:/ éü€中文😀"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) for _ in range(n)]


def test_tenant_ids_hash_as_citus_hashes_them(citus_url: str) -> None:
    """PostgreSQL's hashtext in Python equals Citus's worker_hash, on any UTF-8 text."""
    ids = ["", "acme", "x" * 200, *tenant_ids(500)]
    with psycopg.connect(plain(citus_url)) as conn:
        server = conn.execute(
            "SELECT array_agg(worker_hash(t) ORDER BY o) FROM unnest(%s::text[])"
            " WITH ORDINALITY AS u(t, o)",
            (ids,),
        ).fetchone()
    assert server is not None
    assert [hashtext(t) for t in ids] == list(server[0])


def test_each_tenant_is_routed_to_the_worker_that_holds_it(citus_url: str, schema: str) -> None:
    ids = tenant_ids(300, seed=2)
    with direct(citus_url, schema) as book:
        book.ensure_tenant("first", 1)  # reads the map
        routed = {t: routed_port(book, t) for t in ids}
    expected = {t: placement_port(citus_url, schema, t) for t in ids}
    assert routed == expected
    assert len(set(expected.values())) == 2  # both workers hold some of them


@contextmanager
def shut_out_of_coordinator(url: str, role: str) -> Iterator[None]:
    """``role`` may not log in to the coordinator (the workers still let it in)."""
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute("SET citus.enable_ddl_propagation = off")
        conn.execute(f'ALTER ROLE "{role}" NOLOGIN')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE usename = %s AND pid <> pg_backend_pid()",
            (role,),
        )
        try:
            yield
        finally:
            conn.execute(f'ALTER ROLE "{role}" LOGIN')


@contextmanager
def own_role(url: str) -> Iterator[tuple[str, str]]:
    """(role, its URL): a login role of the test's own, on every node, dropped afterwards."""
    role = f"direct_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN SUPERUSER')  # propagated to the workers
    try:
        yield role, make_url(alchemy(url)).set(username=role).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(plain(url), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.execute(f'DROP ROLE "{role}"')


def test_single_tenant_calls_never_touch_the_coordinator(citus_url: str, schema: str) -> None:
    with own_role(citus_url) as (role, url):
        with direct(url, schema) as book:
            book.ensure_tenant("acme", 1_000)  # reads the map from the coordinator
            with shut_out_of_coordinator(citus_url, role):
                assert book.ensure_tenant("beta", 500)
                assert book.top_up_tenant("acme", 100).ok
                book.set_max_reserved_microcents("acme", 800)
                first = book.try_reserve("acme", 300)
                second = book.try_reserve("acme", 200, idempotency_key="k1")
                assert first.ok and second.ok
                assert first.reservation_id is not None and second.reservation_id is not None
                assert book.try_reserve("acme", 200, idempotency_key="k1") == second
                assert book.try_reserve("acme", 400).status is ledger.Status.EXPOSURE_LIMIT_EXCEEDED
                assert book.commit(first.reservation_id, 250, tenant_id="acme").ok
                assert book.release(second.reservation_id, tenant_id="acme").ok
                assert book.adjust("beta", -100, reason="goodwill").ok
                assert book.tenant("acme") == ledger.TenantLedger("acme", 1_100, 850, 0, 250)
                # A ledger-wide call needs the coordinator: a typed error, not a traceback.
                with pytest.raises(errors.DatabaseError):
                    book.snapshot()
        with ledger.Ledger(alchemy(citus_url), schema=schema) as check:
            assert check.tenant("beta") == ledger.TenantLedger("beta", 400, 400, 0, 0)
            assert check.verify_journal().ok
            assert check.verify_conservation().is_balanced


def move_group(url: str, schema: str, tenant: str) -> int:
    """Move ``tenant``'s shard group to the other worker; returns the new port."""
    with psycopg.connect(plain(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT p.shardid, n.nodename, n.nodeport FROM pg_dist_placement AS p"
            " JOIN pg_dist_node AS n USING (groupid)"
            " WHERE p.shardid = get_shard_id_for_distribution_column(%s, %s::text)",
            (f'"{schema}".tenants', tenant),
        ).fetchone()
        assert row is not None
        shard, host, port = row
        target = conn.execute(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE noderole = 'primary'"
            " AND groupid <> 0 AND shouldhaveshards AND isactive AND nodeport <> %s"
            " ORDER BY nodeport LIMIT 1",
            (port,),
        ).fetchone()
        assert target is not None
        conn.execute(
            "SELECT citus_move_shard_placement(%s, %s, %s, %s, %s,"
            " shard_transfer_mode => 'block_writes')",
            (shard, host, port, target[0], target[1]),
        )
    return int(target[1])


def test_a_stale_map_after_a_shard_move_costs_speed_not_money(citus_url: str, schema: str) -> None:
    with direct(citus_url, schema) as book:
        book.ensure_tenant("acme", 1_000)
        hold = book.try_reserve("acme", 100)
        assert hold.reservation_id is not None
        before = routed_port(book, "acme")
        after = move_group(citus_url, schema, "acme")
        assert before != after
        # The ledger still sends acme's calls to the old worker (its map is not read
        # again for 30 s); there the placement is gone and Citus routes the statement.
        assert routed_port(book, "acme") == before
        assert book.commit(hold.reservation_id, 60, tenant_id="acme").ok
        again = book.try_reserve("acme", 200, idempotency_key="after-move")
        assert again.ok and again.reservation_id is not None
        assert book.release(again.reservation_id, tenant_id="acme").ok
        assert book.tenant("acme") == ledger.TenantLedger("acme", 1_000, 940, 0, 60)
        with ledger.Ledger(alchemy(citus_url), schema=schema) as check:  # the coordinator
            assert check.tenant("acme") == ledger.TenantLedger("acme", 1_000, 940, 0, 60)
        # Reading the map again routes to the new worker.
        assert book._routing.workers is not None
        book._routing.workers._shards._read_at = float("-inf")
        assert routed_port(book, "acme") == after
        assert book.try_reserve("acme", 40).ok
        assert book.verify_journal().ok
        assert book.verify_conservation().is_balanced


def test_hot_tenant_under_threads_exact_sums(citus_url: str, schema: str) -> None:
    """16 threads on one tenant through its worker: the budget runs out exactly."""
    budget, price, threads, attempts = 60_000, 7, 16, 600
    with direct(citus_url, schema) as book:
        book.ensure_tenant("hot", budget)
        committed = [0] * threads

        def work(i: int) -> None:
            for n in range(attempts):
                hold = book.try_reserve("hot", 10)
                if not hold.ok:
                    continue
                assert hold.reservation_id is not None
                if n % 3 == 0:
                    assert book.release(hold.reservation_id, tenant_id="hot").ok
                else:
                    assert book.commit(hold.reservation_id, price, tenant_id="hot").ok
                    committed[i] += price

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
        t = book.tenant("hot")
        assert t.committed_microcents == sum(committed)
        assert t.remaining_microcents == budget - sum(committed)
        assert t.reserved_microcents == 0
        assert book.verify_journal().ok


def test_writers_keep_exact_sums_while_shard_groups_move(citus_url: str, schema: str) -> None:
    """Direct writers on 12 tenants while their shard groups move between the workers."""
    tenants = [f"m{i}" for i in range(12)]
    budget = 10_000_000
    stop = threading.Event()
    spent: dict[str, int] = dict.fromkeys(tenants, 0)
    lock = threading.Lock()
    failures: list[str] = []
    with direct(citus_url, schema) as book:
        for t in tenants:
            book.ensure_tenant(t, budget)

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                t = rng.choice(tenants)
                try:
                    hold = book.try_reserve(t, 50)
                    assert hold.ok and hold.reservation_id is not None
                    out = book.commit(hold.reservation_id, 30, tenant_id=t)
                except errors.DatabaseError as exc:  # block_writes moves wait, never fail
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return
                assert out.ok
                with lock:
                    spent[t] += 30

        with ThreadPoolExecutor(6) as pool:
            running = [pool.submit(writer, i) for i in range(6)]
            for t in tenants[:6]:
                move_group(citus_url, schema, t)
            stop.set()
            for f in running:
                f.result()
        assert failures == []
        assert sum(spent.values()) > 0
        for t in tenants:
            assert book.tenant(t) == ledger.TenantLedger(t, budget, budget - spent[t], 0, spent[t])
        with psycopg.connect(plain(citus_url)) as conn:
            assert holds_match_reserved(conn, schema) == []
        assert book.verify_journal().ok
        assert book.verify_conservation().is_balanced


# ------------------------------------------------------------------ asyncio and fallback


def test_async_single_tenant_calls_never_touch_the_coordinator(citus_url: str, schema: str) -> None:
    """AsyncLedger(url, route_to_workers=True): the same proof as for Ledger."""

    async def scenario(role: str, url: str) -> None:
        async with ledger.AsyncLedger(url, schema=schema, route_to_workers=True) as book:
            await book.ensure_tenant("acme", 1_000)  # reads the map from the coordinator
            with shut_out_of_coordinator(citus_url, role):
                hold = await book.try_reserve("acme", 300, idempotency_key="a1")
                assert hold.ok and hold.reservation_id is not None
                assert await book.try_reserve("acme", 300, idempotency_key="a1") == hold
                assert (await book.commit(hold.reservation_id, 200, tenant_id="acme")).ok
                assert (await book.top_up_tenant("acme", 50)).ok
                async with book.hold("acme", 100, ttl=60) as h:
                    await h.settle(90)
                assert await book.tenant("acme") == ledger.TenantLedger("acme", 1_050, 760, 0, 290)
                with pytest.raises(errors.DatabaseError):
                    await book.snapshot()

    with own_role(citus_url) as (role, url):
        asyncio.run(scenario(role, url))
        with ledger.Ledger(alchemy(citus_url), schema=schema) as check:
            assert check.tenant("acme") == ledger.TenantLedger("acme", 1_050, 760, 0, 290)
            assert check.verify_journal().ok


def _point_map_at_a_closed_port(router: object) -> None:
    """Make the router believe every shard group lives on a port nobody listens on."""
    shards = router._shards  # type: ignore[attr-defined]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    m = shards._map
    groups = [replace(g, node=("127.0.0.1", closed)) for g in m.groups]
    shards._map = replace(m, groups=groups)
    shards._routes.clear()
    shards._read_at = time.monotonic()  # not read again during the test


def test_an_unreachable_worker_sends_calls_through_the_coordinator(
    citus_url: str, schema: str
) -> None:
    with direct(citus_url, schema) as book:
        book.ensure_tenant("acme", 1_000)
        assert book._routing.workers is not None
        _point_map_at_a_closed_port(book._routing.workers)
        hold = book.try_reserve("acme", 100)  # connecting fails: nothing sent, coordinator
        assert hold.ok and hold.reservation_id is not None
        # The closed port is left out for a while and the map is read again at once:
        # acme goes to its real worker again.
        assert routed_port(book, "acme") == placement_port(citus_url, schema, "acme")
        assert book.commit(hold.reservation_id, 70, tenant_id="acme").ok
        assert book.tenant("acme") == ledger.TenantLedger("acme", 1_000, 930, 0, 70)

    async def scenario() -> None:
        async with ledger.AsyncLedger(
            alchemy(citus_url), schema=schema, route_to_workers=True
        ) as book:
            await book.ensure_tenant("beta", 500)
            assert book._routing.workers is not None
            book._routing.workers._connect_timeout = 1.0
            await book._routing.workers.close()  # forget the pools opened so far
            _point_map_at_a_closed_port(book._routing.workers)
            hold = await book.try_reserve("beta", 100)
            assert hold.ok and hold.reservation_id is not None
            assert (await book.release(hold.reservation_id, tenant_id="beta")).ok
            assert await book.tenant("beta") == ledger.TenantLedger("beta", 500, 500, 0, 0)

    asyncio.run(scenario())
    with ledger.Ledger(alchemy(citus_url), schema=schema) as check:
        assert check.verify_journal().ok


def test_route_to_workers_needs_a_url_and_no_coalescing(citus_url: str, schema: str) -> None:
    engine = create_engine(alchemy(citus_url))
    try:
        with pytest.raises(errors.InputError, match="needs a database URL"):
            ledger.Ledger(engine, schema=schema, route_to_workers=True)
        with pytest.raises(errors.InputError, match="coalesce=False"):
            ledger.Ledger(alchemy(citus_url), schema=schema, route_to_workers=True, coalesce=True)
    finally:
        engine.dispose()
