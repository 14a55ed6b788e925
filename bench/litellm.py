"""What the ledger's LiteLLM callback adds to each proxied call: p50 and p99, same run.

    python -m bench.run --litellm                       # 400 calls per proxy, 1 and 8 clients
    python -m bench.run --litellm --litellm-calls 2000

Two real ``litellm`` proxies run side by side on the same machine, with the
same mock model (``mock_response``: no provider, so the figures are the
proxy's own path): one plain, one with ``ledger.contrib.litellm.proxy_handler``
against an embedded PostgreSQL. Calls alternate between the two in rounds,
so drift on a shared machine hits both alike, and the report is each
latency percentile of the budgeted proxy minus the same percentile of the
plain one. The callback's settlement runs in LiteLLM's logging task after
the response is sent, so a call's latency carries the hold (one statement)
and whatever the settlement competes for on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ANSWER = "Hello from the benchmark's mock model."
CONFIG = """\
model_list:
  - model_name: mock
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-bench-none
      mock_response: "{answer}"
litellm_settings:
  num_retries: 0
{callbacks}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    workdir: Path, name: str, url: str, budgeted: bool
) -> tuple[subprocess.Popen[bytes], str, str]:
    cfg = workdir / f"{name}.yaml"
    callbacks = "  callbacks: ledger.contrib.litellm.proxy_handler" if budgeted else ""
    cfg.write_text(CONFIG.format(answer=ANSWER, callbacks=callbacks), encoding="utf-8")
    port, key = _port(), f"sk-{secrets.token_hex(16)}"
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MASTER_KEY": key,
        "LITELLM_TELEMETRY": "False",
        "LEDGER_DATABASE_URL": url,
    }
    litellm = Path(sys.executable).with_name("litellm")
    if not litellm.exists():
        raise RuntimeError("the LiteLLM proxy is not installed: pip install -e '.[litellm]'")
    with (workdir / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            [str(litellm), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {name} proxy exited; see {workdir / (name + '.log')}")
        try:
            if httpx.get(f"{base}/health/liveliness", timeout=2).status_code == 200:
                return process, base, key
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the {name} proxy did not start")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


async def _drive(
    targets: dict[str, tuple[str, str]], calls: int, clients: int
) -> dict[str, list[float]]:
    body = {
        "model": "mock",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 20,
        "user": "bench",
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:

        async def one(name: str) -> None:
            base, key = targets[name]
            started = time.perf_counter()
            r = await http.post(
                f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            r.raise_for_status()
            times[name].append(time.perf_counter() - started)

        for name in targets:  # warm up both: first calls pay imports and connections
            await asyncio.gather(*(one(name) for _ in range(clients * 2)))
        times = {name: [] for name in targets}
        for _ in range(max(1, calls // clients)):
            for name in targets:  # alternate rounds: drift hits both proxies alike
                await asyncio.gather(*(one(name) for _ in range(clients)))
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def bench(url: str, calls: int, clients: list[int]) -> list[dict[str, Any]]:
    """Start both proxies, drive them, return one row per client count."""
    import ledger

    with ledger.Ledger(url) as book:
        book.ensure_tenant("bench", 10**15)
    workdir = Path(tempfile.mkdtemp(prefix="ledger-bench-litellm-"))
    plain = _start(workdir, "plain", url, budgeted=False)
    try:
        budgeted = _start(workdir, "budgeted", url, budgeted=True)
        try:
            targets = {"plain": plain[1:], "budgeted": budgeted[1:]}
            rows = []
            for n in clients:
                times = asyncio.run(_drive(targets, calls, n))
                row: dict[str, Any] = {"clients": n, "calls": len(times["plain"])}
                for name, values in times.items():
                    row[f"{name}_p50_ms"] = _pct(values, 0.50)
                    row[f"{name}_p99_ms"] = _pct(values, 0.99)
                    row[f"{name}_mean_ms"] = statistics.fmean(values) * 1000
                row["added_p50_ms"] = row["budgeted_p50_ms"] - row["plain_p50_ms"]
                row["added_p99_ms"] = row["budgeted_p99_ms"] - row["plain_p99_ms"]
                rows.append(row)
        finally:
            _stop(budgeted[0])
    finally:
        _stop(plain[0])
    with ledger.Ledger(url) as book:
        assert book.verify_conservation().is_balanced
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'clients':>8}{'calls':>7}{'plain p50':>11}{'p99':>8}{'ledger p50':>12}{'p99':>8}"
        f"{'added p50':>11}{'p99':>8}  (ms)"
    ]
    for r in rows:
        lines.append(
            f"{r['clients']:>8}{r['calls']:>7}{r['plain_p50_ms']:>11.2f}{r['plain_p99_ms']:>8.2f}"
            f"{r['budgeted_p50_ms']:>12.2f}{r['budgeted_p99_ms']:>8.2f}"
            f"{r['added_p50_ms']:>11.2f}{r['added_p99_ms']:>8.2f}"
        )
    return "\n".join(lines)
