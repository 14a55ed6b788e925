"""A LiteLLM proxy killed mid-call: its hold lapses by TTL, and a retry is charged once.

A proxy that dies (SIGKILL: no hook runs) cannot release the hold of the
call it was serving. The hold's TTL (``LEDGER_LITELLM_HOLD_TTL``) returns the
money; a client that retries on a restarted proxy with the same
idempotency key is charged once, for the call that finished.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

import ledger
from ledger.contrib.litellm import microcents
from tests import litellm_proxy

PROMPT = [{"role": "user", "content": "Say hello to the ledger, please."}]


def ask(proxy: litellm_proxy.Proxy, model: str, key: str) -> Any:
    async def main() -> Any:
        c = openai.AsyncOpenAI(
            base_url=f"{proxy.base_url}/v1", api_key=proxy.master_key, max_retries=0, timeout=120
        )
        try:
            return await c.chat.completions.with_raw_response.create(
                model=model,
                messages=PROMPT,
                user="crash",
                max_tokens=50,
                extra_headers={"Idempotency-Key": key},
            )
        finally:
            await c.close()

    return asyncio.run(main())


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.1)


def test_a_killed_proxys_holds_lapse_and_retries_are_charged_once(
    tmp_path: Path, db_url: str, book: ledger.Ledger
) -> None:
    initial = 10**9
    book.ensure_tenant("crash", initial)
    silent = litellm_proxy.Silent()
    env = {"LEDGER_LITELLM_HOLD_TTL": "3"}
    first = litellm_proxy.start(tmp_path, db_url, hang_port=silent.port, env=env)
    try:
        done = ask(first, "mock", "order-1")
        cost = microcents(float(done.headers["x-litellm-response-cost"]))
        wait_for(lambda: book.reserved_microcents("crash") == 0)
        assert book.committed_microcents("crash") == cost

        # A call whose provider never answers: its hold is open when the proxy dies.
        def hang() -> None:
            with pytest.raises(openai.APIError):
                ask(first, "hangs", "order-2")

        stuck = threading.Thread(target=hang, daemon=True)
        stuck.start()
        wait_for(lambda: book.active_reservations() == 1)
        held = book.reserved_microcents("crash")
        assert held is not None and held > 0
    finally:
        first.stop(signal.SIGKILL)
    stuck.join(timeout=60)

    second = litellm_proxy.start(tmp_path, db_url, hang_port=silent.port, env=env)
    try:
        again = ask(second, "mock", "order-1")  # finished before the crash: not charged again
        retried = ask(second, "mock", "order-2")  # never finished: charged now, once
        retried_cost = microcents(float(retried.headers["x-litellm-response-cost"]))
        assert again.parse().choices and retried.parse().choices
        # The dead proxy's hold lapses by its TTL (the sweeper expires it).
        wait_for(lambda: book.expire_holds() >= 0 and book.active_reservations() == 0)
    finally:
        second.stop()
        silent.close()
    row = book.tenant("crash")
    assert row is not None
    assert row.reserved_microcents == 0
    assert row.committed_microcents == cost + retried_cost
    assert row.remaining_microcents == initial - cost - retried_cost
