"""The example apps under their real servers, driven by a real HTTP client.

    python -m bench.run --http                  # requests/s, p50, p99 at 1 and 32 clients
    python -m bench.run --http --http-work-ms 0 --seconds 3

Each app runs as production would run it: Flask and Django under gunicorn
(``gthread`` workers, threads enough for every client), FastAPI under uvicorn
(one process, one event loop). The client is httpx on asyncio in this
process. Every request holds budget, "works" for ``work_ms`` (a sleep: the
stand-in for an LLM call), then settles in one transaction with the app's job
row. ``tests/integration/integrations/test_http_load.py`` drives the same
servers with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
APPS = ("flask", "django", "fastapi")


@dataclass
class Server:
    """A running example app: its base URL and the process tree behind it."""

    app: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: gunicorn's workers, or uvicorn itself."""
        children = _children(self.process.pid)
        return children or [self.process.pid]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after it
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def command(app: str, port: int, threads: int, workers: int) -> tuple[list[str], Path]:
    """The server command line for one example app, and the directory it runs in."""
    bind = f"127.0.0.1:{port}"
    if app == "fastapi":
        cwd = EXAMPLES / "fastapi_app"
        # One process: under `uvicorn --workers N` every response took 40+ ms more here
        # (uvicorn 0.54; /docs as well, so not the ledger: the workers' inherited socket
        # seems to lose TCP_NODELAY), which would flatter the 32-vs-1-client ratio.
        cmd = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
        return cmd, cwd
    cwd = EXAMPLES / ("flask_app" if app == "flask" else "django_project")
    target = "app:create_app()" if app == "flask" else "project.wsgi:application"
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", str(workers)]
    cmd += ["--threads", str(threads), "-b", bind, "--log-level", "warning"]
    cmd += ["--graceful-timeout", "3", target]
    return cmd, cwd


def prepare(app: str, database_url: str) -> None:
    """One-time deploy step: Django's ``manage.py migrate`` (the others set up at startup)."""
    if app != "django":
        return
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=EXAMPLES / "django_project",
        env=_env(database_url, {}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py migrate failed:\n{done.stderr[-4000:]}")


def _env(database_url: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="project.settings",
        DJANGO_DEBUG="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@contextmanager
def serve(
    app: str,
    database_url: str,
    *,
    threads: int = 40,
    workers: int = 2,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
) -> Iterator[Server]:
    """Start one example app on a free loopback port; stop it (and its workers) after."""
    prepare(app, database_url)
    port = free_port()
    cmd, cwd = command(app, port, threads, workers)
    log = Path(log_dir or "/tmp") / f"ledger-http-{app}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=_env(database_url, env or {}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping it stops the workers
        )
    server = Server(app, f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(proc)
        log.unlink(missing_ok=True)


def _wait_ready(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.app} server exited at startup:\n{server.output()}")
        try:
            # any answer (404: no such tenant) proves the app and its database are up
            if httpx.get(f"{server.url}/tenants/-ready-", timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.app} server not ready after {timeout}s:\n{server.output()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
    with contextlib.suppress(ProcessLookupError):  # workers left by a master that died first
        os.killpg(proc.pid, signal.SIGKILL)


# ------------------------------------------------------------------- client


@dataclass
class Run:
    """What the clients saw: one (status, latency, body) per request, and the wall time."""

    clients: int
    seconds: float = 0.0
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return self.statuses.count(201)

    @property
    def per_second(self) -> float:
        """Successful requests per second of wall time."""
        return self.successes / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ok = sorted(lat for lat, s in zip(self.latencies, self.statuses, strict=True) if s == 201)
        if not ok:
            return float("nan")
        return ok[min(len(ok) - 1, round(p / 100 * (len(ok) - 1)))]


def create_tenant(server: Server, tenant: str, budget: int) -> None:
    answer = httpx.post(f"{server.url}/tenants/{tenant}", json={"budget": budget}, timeout=30)
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"creating {tenant}: {answer.status_code} {answer.text}")


def drive(
    server: Server,
    tenant: str,
    clients: int,
    body: dict[str, Any],
    *,
    requests_each: int | None = None,
    seconds: float | None = None,
    until_refused: bool = False,
) -> Run:
    """``clients`` concurrent clients, each posting jobs in a loop until its stop condition.

    A client stops after ``requests_each`` requests, after ``seconds``, or
    (``until_refused``) at its first refusal: the budget has run out.
    """
    if requests_each is None and seconds is None and not until_refused:
        raise ValueError("drive() needs requests_each, seconds or until_refused")
    return asyncio.run(
        _drive(server.url, tenant, clients, body, requests_each, seconds, until_refused)
    )


async def _drive(
    url: str,
    tenant: str,
    clients: int,
    body: dict[str, Any],
    requests_each: int | None,
    seconds: float | None,
    until_refused: bool,
) -> Run:
    run = Run(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        began = time.perf_counter()
        deadline = None if seconds is None else began + seconds

        async def client() -> None:
            done = 0
            while True:
                if requests_each is not None and done >= requests_each:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                sent = time.perf_counter()
                answer = await http.post(f"/jobs/{tenant}", json=body)
                run.latencies.append(time.perf_counter() - sent)
                run.statuses.append(answer.status_code)
                done += 1
                if answer.status_code == 402:
                    run.refusals.append(answer.json())
                    if until_refused:
                        return
                elif answer.status_code != 201:
                    raise RuntimeError(f"unexpected {answer.status_code}: {answer.text[:500]}")

        await asyncio.gather(*(client() for _ in range(clients)))
        run.seconds = time.perf_counter() - began
    return run


# -------------------------------------------------------------------- bench


def bench(
    database_url: str,
    apps: Sequence[str] = APPS,
    clients: Sequence[int] = (1, 32),
    seconds: float = 5.0,
    work_ms: int = 200,
) -> list[dict[str, Any]]:
    """Requests/s and p50/p99 latency per app and client count, on one tenant."""
    rows = []
    price = 1_000
    for app in apps:
        with serve(app, database_url, threads=max(clients) + 8) as server:
            tenant = f"bench-{app}-{time.time_ns()}"
            create_tenant(server, tenant, 10**15)
            body = {"estimate": 2 * price, "actual": price, "work_ms": work_ms}
            drive(server, tenant, max(clients), body, requests_each=2)  # warm every worker
            for n in clients:
                run = drive(server, tenant, n, body, seconds=seconds)
                rows.append(
                    {
                        "app": app,
                        "server": "uvicorn" if app == "fastapi" else "gunicorn gthread",
                        "clients": n,
                        "work_ms": work_ms,
                        "requests": run.successes,
                        "seconds": run.seconds,
                        "per_second": run.per_second,
                        "p50_ms": run.percentile(50) * 1000,
                        "p99_ms": run.percentile(99) * 1000,
                    }
                )
                print(
                    f"  {app:<8}{n:>3} clients: {run.per_second:8.1f} req/s",
                    file=sys.stderr,
                )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'app':<9}{'server':<18}{'work ms':>8}{'clients':>8}{'req/s':>9}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'vs 1 client':>13}"
    ]
    one = {(r["app"], r["work_ms"]): r["per_second"] for r in rows if r["clients"] == 1}
    for r in rows:
        base = one.get((r["app"], r["work_ms"]))
        ratio = f"{r['per_second'] / base:.1f}x" if base else "-"
        lines.append(
            f"{r['app']:<9}{r['server']:<18}{r['work_ms']:>8}{r['clients']:>8}"
            f"{r['per_second']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{ratio:>13}"
        )
    return "\n".join(lines)
