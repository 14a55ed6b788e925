"""A real LiteLLM proxy for the tests: ``litellm --config ...`` in a subprocess.

The proxy runs the ledger's callback (``ledger.contrib.litellm.proxy_handler``)
against a test database, with mock models that answer without a provider:

- ``mock``: gpt-4o-mini prices from LiteLLM's shipped map, a fixed answer;
- ``exact``: the same answer, but the prompt priced at 0 and the output at the
  map's price, so a call with ``max_tokens`` equal to the answer's length costs
  exactly its worst case (the load test counts successes exactly);
- ``broken``: a real provider call to a closed local port (it fails);
- ``hangs``: a provider at ``hang_port`` that accepts and never answers;
- ``unpriced``: a model LiteLLM's map does not know;
- ``flaky``: two deployments, one ``broken`` and one ``mock``: a call that
  fails on the first and is retried on the second;
- ``slow``: a provider at ``slow_port`` (:class:`SlowStream`) that streams its
  answer a word every 100 ms, so a client can leave in the middle.

``LITELLM_LOCAL_MODEL_COST_MAP=True`` keeps LiteLLM from fetching a price map.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ANSWER = "Hello there, this is a mock answer from the test proxy."
LITELLM = Path(sys.executable).with_name("litellm")

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(hang_port: int, slow_port: int = 9) -> str:
    closed = free_port()  # nothing listens there
    return f"""\
model_list:
  - model_name: mock
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-test-none
      mock_response: "{ANSWER}"
  - model_name: exact
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-test-none
      mock_response: "{ANSWER}"
      input_cost_per_token: 0
      output_cost_per_token: 0.0000006
  - model_name: broken
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-test-none
      api_base: http://127.0.0.1:{closed}/v1
      max_retries: 0
  - model_name: hangs
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-test-none
      api_base: http://127.0.0.1:{hang_port}/v1
      max_retries: 0
      timeout: 600
  - model_name: slow
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-test-none
      api_base: http://127.0.0.1:{slow_port}/v1
      max_retries: 0
  - model_name: flaky
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-test-none
      api_base: http://127.0.0.1:{closed}/v1
      max_retries: 0
  - model_name: flaky
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-test-none
      mock_response: "{ANSWER}"
  - model_name: unpriced
    litellm_params:
      model: openai/not-a-model-litellm-knows
      api_key: sk-test-none
      mock_response: "{ANSWER}"
litellm_settings:
  callbacks: ledger.contrib.litellm.proxy_handler
  num_retries: 0
  request_timeout: 600
"""


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    base_url: str
    master_key: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the proxy's process group (it is the only member we started)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def start(
    workdir: Path,
    database_url: str,
    *,
    hang_port: int,
    slow_port: int = 9,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    master_key: str | None = None,
    workers: int = 1,
    extra_config: str = "",
    files: Mapping[str, str] | None = None,
) -> Proxy:
    """Start the proxy (``workers`` uvicorn processes) and wait until it answers.

    ``extra_config`` is appended to the config (another top-level section,
    such as ``general_settings``); ``files`` are written next to it (a module
    the config names, which LiteLLM loads from the config's directory).
    """
    cfg = workdir / "litellm.yaml"
    cfg.write_text(config(hang_port, slow_port) + extra_config, encoding="utf-8")
    for name, text in (files or {}).items():
        (workdir / name).write_text(text, encoding="utf-8")
    port = port or free_port()
    key = master_key or f"sk-{secrets.token_hex(16)}"
    log = workdir / f"proxy-{port}-{time.monotonic_ns()}.log"
    full_env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MASTER_KEY": key,
        "LEDGER_DATABASE_URL": database_url,
        "LITELLM_TELEMETRY": "False",
        **(env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(LITELLM), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
            + (["--num_workers", str(workers)] if workers > 1 else []),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=workdir,
            start_new_session=True,
        )
    proxy = Proxy(process, f"http://127.0.0.1:{port}", key, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{proxy.base_url}/health/liveliness", timeout=2).status_code == 200:
                return proxy
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proxy.stop(signal.SIGKILL)
    raise RuntimeError(f"the proxy did not start: {log.read_text(errors='replace')[-3000:]}")


class Silent:
    """A TCP server that accepts connections and never answers: a provider that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


class _Streamer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            for i in range(100):
                chunk = {
                    "id": "chatcmpl-slow",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "gpt-4o-mini",
                    "choices": [
                        {"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}
                    ],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.1)
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:
            pass  # the proxy hung up: the client left


class SlowStream:
    """An OpenAI-compatible provider that streams a long answer slowly (a real socket)."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Streamer)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
