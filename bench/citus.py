"""Routing report and throughput ratio on Citus: ``python -m bench.run --citus URL``.

1. **Routing.** On a fresh schema distributed with the server's shard count,
   every single-tenant operation runs once with ``citus.log_remote_commands``
   on; the report counts the commands the coordinator sent, the statements
   among them (the rest is transaction control), the nodes and shards they
   reached, and whether the call ended in a two-phase commit. The issue's
   target is 1 command to 1 worker without 2PC.
2. **Throughput.** reserve->commit cycles (commit with ``tenant_id``) over
   10,000 tenants at 16 client processes, on the Citus cluster and on a plain
   PostgreSQL of the same major version started on this machine by the bench
   (or ``--plain URL``), in the same run; the ratio is the figure that counts
   (every node shares the same cores, so it is not a scaling claim). Citus
   twice: clients through the coordinator, and clients on the workers
   (``Ledger(url, route_to_workers=True)``, ledger/citus/routing.py). reserve->release
   (with ``tenant_id``) is measured too.
3. **CPU per cycle** (with the bench's own plain server): one client, 2,000
   reserve->commit cycles on each back-end; the CPU time of every process of
   each node (from /proc) and of the client. With 16 clients every core is
   busy, so the ratio of throughputs follows the ratio of these totals: the
   profile that says where a missed ratio comes from.
"""

from __future__ import annotations

import multiprocessing
import os
import pwd
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, make_url

import ledger
from ledger import BudgetSnapshot, TenantLedger, distribute

AMOUNT, ACTUAL = 1_000, 900
BUDGET = 10**15
PG_BIN = Path(os.environ.get("LEDGER_PG15_BIN", "/usr/lib/postgresql/15/bin"))
_CONTROL = re.compile(
    r"^(BEGIN|COMMIT|ROLLBACK|PREPARE TRANSACTION|COMMIT PREPARED|SELECT assign_distributed_"
    r"transaction_id|SET |RESET |SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)",
    re.I,
)
_SHARD = re.compile(r"\.[a-z_][a-z0-9_]*_(\d{6,})\b")
_NODE = re.compile(r"on server \S*@([^ ]+)")


def _alchemy(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# ------------------------------------------------------------------ routing


@dataclass
class Routing:
    operation: str
    commands: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def statements(self) -> int:
        return sum(1 for c, _ in self.commands if not _CONTROL.match(c))

    @property
    def nodes(self) -> int:
        return len({n for _, n in self.commands if n})

    @property
    def shards(self) -> int:
        return len({s for c, _ in self.commands for s in _SHARD.findall(c)})

    @property
    def two_phase(self) -> bool:
        return any(c.upper().startswith("PREPARE TRANSACTION") for c, _ in self.commands)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "commands": len(self.commands),
            "statements": self.statements,
            "nodes": self.nodes,
            "shards": self.shards,
            "two_phase": self.two_phase,
            "error": self.error,
        }


class _Recorder:
    def __init__(self) -> None:
        self.target: Routing | None = None

    def notice(self, diag: psycopg.errors.Diagnostic) -> None:
        primary = diag.message_primary or ""
        if self.target is not None and primary.startswith("issuing "):
            node = _NODE.search(diag.message_detail or "")
            self.target.commands.append((primary[8:], node.group(1) if node else ""))

    @contextmanager
    def capture(self, routing: Routing) -> Iterator[None]:
        self.target = routing
        try:
            yield
        finally:
            self.target = None


def _logged_engine(url: str, recorder: _Recorder) -> Engine:
    engine = create_engine(
        _alchemy(url),
        pool_size=1,
        max_overflow=0,
        connect_args={"options": "-c citus.log_remote_commands=on"},
    )
    event.listen(engine, "connect", lambda dbapi, _rec: dbapi.add_notice_handler(recorder.notice))
    return engine


def _operations() -> list[tuple[str, Callable[[ledger.Ledger, int], object] | None]]:
    """Each single-tenant call, on tenant "acme" that has an open hold ``rid``."""
    return [
        ("ensure_tenant", lambda b, rid: b.ensure_tenant(f"new-{uuid.uuid4().hex}", 5)),
        ("top_up_tenant", lambda b, rid: b.top_up_tenant("acme", 5)),
        ("top_up_tenant (key)", lambda b, rid: b.top_up_tenant("acme", 5, idempotency_key="k1")),
        ("set_max_reserved_microcents", lambda b, rid: b.set_max_reserved_microcents("acme", 0)),
        ("try_reserve", lambda b, rid: b.try_reserve("acme", 5)),
        ("try_reserve (key)", lambda b, rid: b.try_reserve("acme", 5, idempotency_key="k2")),
        ("try_reserve (refused)", lambda b, rid: b.try_reserve("acme", BUDGET * 10)),
        ("commit (tenant_id)", lambda b, rid: b.commit(rid, 50, tenant_id="acme")),
        (
            "commit (tenant_id, key)",
            lambda b, rid: b.commit(rid, 50, tenant_id="acme", idempotency_key="k3"),
        ),
        ("release (tenant_id)", lambda b, rid: b.release(rid, tenant_id="acme")),
        (
            "release (tenant_id, key)",
            lambda b, rid: b.release(rid, tenant_id="acme", idempotency_key="k4"),
        ),
        ("lazy expiry (try_reserve)", None),  # set up below: a lapsed hold blocks it
        ("tenant (read)", lambda b, rid: b.tenant("acme")),
        # Last: Citus refuses these, and after that planning error it stops delegating
        # function calls for the rest of the session (measured: routed calls then send
        # 11-14 commands), which would misreport every row below them.
        ("commit (no tenant_id)", lambda b, rid: b.commit(rid, 50)),
        ("release (no tenant_id)", lambda b, rid: b.release(rid)),
    ]


def routing_report(url: str) -> tuple[list[Routing], int]:
    schema = f"bench_routing_{uuid.uuid4().hex[:8]}"
    ledger.migrate(_alchemy(url), schema=schema)
    shards = distribute(_alchemy(url), schema).shard_count
    recorder = _Recorder()
    engine = _logged_engine(url, recorder)
    rows: list[Routing] = []
    try:
        book = ledger.Ledger(engine, schema=schema)
        book.ensure_tenant("acme", BUDGET)
        for name, op in _operations():
            routing = Routing(name)
            if op is None:  # a lapsed hold that blocks the reserve, so it is expired first
                book.ensure_tenant("lapsing", 1_000)
                book.try_reserve("lapsing", 900, ttl=timedelta(microseconds=1))
                time.sleep(0.01)
                op = lambda b, rid: b.try_reserve("lapsing", 500)  # noqa: E731
                rid = 0
            else:
                held = book.try_reserve("acme", 100)
                assert held.reservation_id is not None, held
                rid = held.reservation_id
            try:
                with recorder.capture(routing):
                    op(book, rid)
            except ledger.errors.LedgerError as exc:
                routing.error = str(exc).splitlines()[0]
            rows.append(routing)
    finally:
        engine.dispose()
        with psycopg.connect(_plain(url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return rows, shards


def routing_table(rows: list[Routing], shards: int) -> str:
    lines = [
        f"remote commands per call ({shards} shards per table; target: 1 command, 1 node, no 2PC)",
        f"{'operation':<28}{'commands':>9}{'statements':>11}{'nodes':>6}{'shards':>7}  commit",
    ]
    for r in rows:
        if r.error:
            lines.append(f"{r.operation:<28}  fails: {r.error[:100]}")
            continue
        lines.append(
            f"{r.operation:<28}{len(r.commands):>9}{r.statements:>11}{r.nodes:>6}{r.shards:>7}"
            f"  {'2PC' if r.two_phase else '1PC' if r.commands else '-'}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ throughput


def _cycle_worker(
    url: str, schema: str, mode: str, tenants: int, seconds: float, seed: int, start: Any
) -> tuple[int, float, str | None]:
    """One client process: reserve->``mode`` cycles on random tenants for ``seconds``.

    ``url`` ending in ``#direct`` makes the ledger route each tenant's calls to
    its Citus worker (``route_to_workers=True``); every back-end gets a ledger
    made from its URL (the ledger's own connections), as an application would.
    """
    direct = url.endswith("#direct")
    book = ledger.Ledger(
        _alchemy(url.removesuffix("#direct")), schema=schema, route_to_workers=direct
    )
    rng = random.Random(seed)

    def cycle() -> None:
        tenant = f"t{rng.randrange(tenants)}"
        hold = book.try_reserve(tenant, AMOUNT)
        assert hold.reservation_id is not None, hold
        if mode == "commit":
            out = book.commit(hold.reservation_id, ACTUAL, tenant_id=tenant)
        else:
            out = book.release(hold.reservation_id, tenant_id=tenant)
        assert out.ok, out

    try:
        for _ in range(5):
            cycle()
    except ledger.errors.LedgerError as exc:
        start.wait()
        book.close()
        return 0, 0.0, str(exc).splitlines()[0]
    start.wait()
    count, began = 0, time.perf_counter()
    while time.perf_counter() < began + seconds:
        cycle()
        count += 1
    elapsed = time.perf_counter() - began
    book.close()
    return count, elapsed, None


def throughput(
    url: str, schema: str, mode: str, tenants: int, clients: int, seconds: float
) -> tuple[float, str | None]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(clients) as pool:
            pending = [
                pool.apply_async(_cycle_worker, (url, schema, mode, tenants, seconds, i, start))
                for i in range(clients)
            ]
            time.sleep(1.0 + 0.2 * clients)
            start.set()
            results = [p.get(seconds * 20 + 180) for p in pending]
    errors = [e for _, _, e in results if e]
    if errors:
        return 0.0, errors[0]
    return sum(c for c, _, _ in results) / max(e for _, e, _ in results), None


# ------------------------------------------------------------------ CPU per cycle

_TICK = os.sysconf("SC_CLK_TCK")


def _server_cpu(postmasters: list[int]) -> float:
    """CPU seconds (user + system) of every process under these postmasters, from /proc."""
    children: dict[int, list[tuple[int, float]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        children.setdefault(int(fields[1]), []).append((int(entry), cpu))
    total, stack = 0.0, list(postmasters)
    while stack:
        for pid, cpu in children.get(stack.pop(), []):
            total += cpu
            stack.append(pid)
    return total


def _postmasters(url: str) -> dict[str, int]:
    """name -> postmaster pid of each node of the server at ``url`` (this machine only)."""
    nodes = {"server": _plain(url)}
    with psycopg.connect(_plain(url)) as conn:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone():
            base = make_url(_alchemy(url))
            nodes = {"coordinator": _plain(url)}
            for host, port in conn.execute(
                "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0 ORDER BY nodeport"
            ).fetchall():
                worker = base.set(host=host, port=port).render_as_string(hide_password=False)
                nodes[f"worker:{port}"] = _plain(worker)
    found = {}
    for name, node in nodes.items():
        with psycopg.connect(node) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert backend is not None
            stat = Path(f"/proc/{backend[0]}/stat").read_text().rsplit(")", 1)[1].split()
            found[name] = int(stat[1])  # a backend's parent is the postmaster
    return found


def cpu_per_cycle(
    url: str, schema: str, tenants: int, cycles: int, direct: bool = False
) -> dict[str, float]:
    """ms of CPU per reserve->commit cycle: each node's processes, and this client.

    One client, so the figures add up to what a cycle costs the machine; with
    every core busy (16 clients), throughput follows the total.
    """
    import resource

    nodes = _postmasters(url)
    rng = random.Random(7)
    with ledger.Ledger(_alchemy(url), schema=schema, route_to_workers=direct) as book:

        def cycle() -> None:
            tenant = f"t{rng.randrange(tenants)}"
            hold = book.try_reserve(tenant, AMOUNT)
            assert hold.reservation_id is not None
            assert book.commit(hold.reservation_id, ACTUAL, tenant_id=tenant).ok

        for _ in range(200):
            cycle()
        before = {k: _server_cpu([pid]) for k, pid in nodes.items()}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(cycles):
            cycle()
        after = resource.getrusage(resource.RUSAGE_SELF)
        figures = {k: (_server_cpu([pid]) - before[k]) * 1000 / cycles for k, pid in nodes.items()}
    figures["client"] = (
        (after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) * 1000 / cycles
    )
    return figures


def _prepare(url: str, schema: str, tenants: int, citus: bool) -> None:
    """10k funded tenants; on Citus they are created locally, then distributed with the rest."""
    ledger.migrate(_alchemy(url), schema=schema)
    with ledger.Ledger(_alchemy(url), schema=schema) as book:
        book.restore_from_snapshot(
            BudgetSnapshot(
                0,
                tuple(TenantLedger(f"t{i}", BUDGET, BUDGET, 0, 0) for i in range(tenants)),
                0,
            )
        )
    if citus:
        distribute(_alchemy(url), schema)


@contextmanager
def plain_server() -> Iterator[str]:
    """A plain PostgreSQL from the same Debian binaries as the Citus nodes (fsync off, TCP)."""
    root = Path(tempfile.mkdtemp(prefix="ledger-bench-plain-"))
    owner: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        owner = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(
        [
            *owner,
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k '' -c fsync=off -c max_connections=200"
    subprocess.run(
        [
            *owner,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-o",
            options,
            "-w",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*owner, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(root, ignore_errors=True)


#: The back-ends of the throughput run: name -> how its URL is given to the clients.
BACKENDS = ("citus", "citus direct", "plain")


def run(
    citus_url: str, plain_url: str | None, tenants: int, clients: int, seconds: float
) -> dict[str, Any]:
    rows, shards = routing_report(citus_url)
    print(routing_table(rows, shards), flush=True)
    if "sslmode" not in citus_url:  # the bench's plain server has no TLS: the same transport
        citus_url = (
            make_url(citus_url)
            .update_query_dict({"sslmode": "disable"})
            .render_as_string(hide_password=False)
        )
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = {"routing": [r.as_dict() for r in rows], "shard_count": shards}
    with plain_server() if plain_url is None else _given(plain_url) as plain:
        try:
            _prepare(citus_url, schema, tenants, citus=True)
            _prepare(plain, schema, tenants, citus=False)
            urls = {"citus": citus_url, "citus direct": f"{citus_url}#direct", "plain": plain}
            figures: dict[str, tuple[float, str | None]] = {}
            for mode in ("commit", "release"):
                # Each back-end twice, in mirrored order (A B C C B A), averaged: the
                # machine drifts during a run (autovacuum of the new tables, other load).
                rates: dict[str, list[float]] = {name: [] for name in BACKENDS}
                for name in (*BACKENDS, *reversed(BACKENDS)):
                    rate, error = throughput(urls[name], schema, mode, tenants, clients, seconds)
                    rates[name].append(rate)
                    if error:
                        figures[f"{name} reserve->{mode}"] = (0.0, error)
                    print(
                        f"  {name:>12} reserve->{mode:<7} {clients} clients: "
                        + (f"fails: {error}" if error else f"{rate:8.0f} cycles/s"),
                        flush=True,
                    )
                for name, got in rates.items():
                    figures.setdefault(f"{name} reserve->{mode}", (sum(got) / len(got), None))
            cpu = _cpu_table(citus_url, plain, schema, tenants) if plain_url is None else {}
            with ledger.Ledger(_alchemy(citus_url), schema=schema) as book:
                assert book.verify_conservation().is_balanced
        finally:
            with psycopg.connect(_plain(citus_url), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print(
        f"throughput, {tenants} tenants, {clients} client processes, {seconds:g} s per run, "
        "mean of two runs per back-end"
    )
    print(
        f"{'cycle':<18}{'citus/s':>10}{'direct/s':>10}{'plain/s':>10}{'citus/plain':>13}"
        f"{'direct/plain':>14}"
    )
    for mode in ("commit", "release"):
        c, d, p = (figures[f"{n} reserve->{mode}"] for n in BACKENDS)
        ratios = [f"{x[0] / p[0]:.3f}x" if x[0] and p[0] else "-" for x in (c, d)]
        shown = ["fails" if x[1] else f"{x[0]:.0f}" for x in (c, d)]
        print(
            f"reserve->{mode:<9}{shown[0]:>10}{shown[1]:>10}{p[0]:>10.0f}{ratios[0]:>13}"
            f"{ratios[1]:>14}"
        )
    result["throughput"] = {k: {"per_second": v[0], "error": v[1]} for k, v in figures.items()}
    result["cpu_ms_per_cycle"] = cpu
    return result


def _cpu_table(citus_url: str, plain: str, schema: str, tenants: int) -> dict[str, Any]:
    """CPU per reserve->commit cycle of each back-end (one client), printed and returned."""
    cycles = 2000
    table = {
        "plain": cpu_per_cycle(plain, schema, tenants, cycles),
        "citus": cpu_per_cycle(citus_url, schema, tenants, cycles),
        "citus direct": cpu_per_cycle(citus_url, schema, tenants, cycles, direct=True),
    }
    print(f"CPU ms per reserve->commit cycle, one client, {cycles} cycles:")
    for name, parts in table.items():
        servers = sum(v for k, v in parts.items() if k != "client")
        detail = ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
        print(
            f"  {name:<13} {detail}; servers {servers:.3f}, total {servers + parts['client']:.3f}"
        )
    return table


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


__all__ = ["routing_report", "routing_table", "run", "throughput"]
