"""The real LiteLLM proxy with the ledger's callback, driven by the ``openai`` client.

One proxy serves the whole module (starting one takes seconds), with two
uvicorn worker processes, so every test's calls land in two processes that
share the tenant; each test uses tenants of its own in the module's database. Money is checked
against what the proxy itself reports per call (``x-litellm-response-cost``),
converted by the one rule (``ledger.contrib.litellm.microcents``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest

import ledger
from ledger.contrib.litellm import microcents, worst_case_microcents
from tests import litellm_proxy
from tests.conftest import _database_url, _plain, drop_database, make_database

PROMPT = [{"role": "user", "content": "Say hello to the ledger, please."}]


@pytest.fixture(scope="module")
def proxy_db(server_url: str, template_db: str) -> Iterator[str]:
    name = make_database(server_url, template_db)
    try:
        yield _database_url(server_url, name)
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, proxy_db: str) -> Iterator[litellm_proxy.Proxy]:
    silent, slow = litellm_proxy.Silent(), litellm_proxy.SlowStream()
    running = litellm_proxy.start(
        tmp_path_factory.mktemp("litellm"),
        proxy_db,
        hang_port=silent.port,
        slow_port=slow.port,
        workers=2,  # two processes share every tenant: exactness is the database's
    )
    try:
        yield running
    finally:
        running.stop()
        silent.close()
        slow.close()


@pytest.fixture(scope="module")
def book(proxy_db: str) -> Iterator[ledger.Ledger]:
    with ledger.Ledger(proxy_db) as lg:
        yield lg


def client(proxy: litellm_proxy.Proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{proxy.base_url}/v1", api_key=proxy.master_key, max_retries=0, timeout=120
    )


def answer_tokens(proxy: litellm_proxy.Proxy, book: ledger.Ledger) -> int:
    """How many completion tokens the proxy's mock answer reports (LiteLLM's mock usage)."""
    book.ensure_tenant("calibrate", 10**9)

    async def main() -> int:
        c = client(proxy)
        try:
            r = await c.chat.completions.create(
                model="exact", messages=PROMPT, user="calibrate", max_tokens=1000
            )
        finally:
            await c.close()
        assert r.usage is not None
        return int(r.usage.completion_tokens)

    return asyncio.run(main())


def settled(book: ledger.Ledger, tenant: str, timeout: float = 30.0) -> ledger.TenantLedger:
    """The tenant once LiteLLM's (asynchronous) logging hooks have settled every hold."""
    deadline = time.monotonic() + timeout
    while True:
        row = book.tenant(tenant)
        assert row is not None
        if row.reserved_microcents == 0 or time.monotonic() > deadline:
            return row
        time.sleep(0.1)


async def call(
    c: openai.AsyncOpenAI, user: str, model: str = "mock", **extra: Any
) -> tuple[int, float | None, str]:
    """One request: (status, the proxy's reported cost, the error message)."""
    try:
        raw = await c.chat.completions.with_raw_response.create(
            model=model, messages=PROMPT, user=user, **extra
        )
    except openai.APIStatusError as e:
        return e.status_code, None, str(e)
    cost = raw.headers.get("x-litellm-response-cost")
    raw.parse()
    return 200, None if cost is None else float(cost), ""


def holds(proxy_db: str, tenant: str) -> int:
    with psycopg.connect(_plain(proxy_db)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger.reservations WHERE tenant_id = %s", (tenant,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_load_successes_are_exactly_what_the_budget_allows(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger, proxy_db: str
) -> None:
    # The "exact" model's calls cost exactly their worst case (prompt priced 0, the
    # answer as long as max_tokens), so the budget allows exactly 10 of them.
    limit = answer_tokens(proxy, book)
    worst = worst_case_microcents(
        "openai/gpt-4o-mini",
        messages=PROMPT,
        max_tokens=limit,
        litellm_params={"input_cost_per_token": 0, "output_cost_per_token": 0.0000006},
    )
    budget = 10 * worst + worst // 2
    book.ensure_tenant("load", budget)

    async def main() -> list[tuple[int, float | None, str]]:
        c = client(proxy)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(64):
            queue.put_nowait(i)
        results: list[tuple[int, float | None, str]] = []

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                results.append(await call(c, "load", "exact", max_tokens=limit))

        await asyncio.gather(*(worker() for _ in range(16)))
        await c.close()
        return results

    results = asyncio.run(main())
    ok = [cost for status, cost, _ in results if status == 200]
    refused = [msg for status, _, msg in results if status != 200]
    assert len(ok) == 10
    assert all(status in (200, 429) for status, _, _ in results)
    assert len(refused) == 54
    assert all("budget refused at user 'load'" in m for m in refused)
    assert all(cost is not None and microcents(cost) == worst for cost in ok)
    row = settled(book, "load")
    assert row.reserved_microcents == 0
    assert holds(proxy_db, "load") == 0
    assert row.committed_microcents == sum(microcents(c) for c in ok if c is not None)
    assert row.remaining_microcents == budget - row.committed_microcents


def test_priced_calls_commit_litellms_cost_rounded_up(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger
) -> None:
    # The "mock" model prices the prompt too: each call commits less than its hold.
    book.ensure_tenant("priced", 10**9)
    worst = worst_case_microcents("openai/gpt-4o-mini", messages=PROMPT, max_tokens=200)

    async def main() -> list[tuple[int, float | None, str]]:
        c = client(proxy)
        try:
            return await asyncio.gather(*(call(c, "priced", max_tokens=200) for _ in range(16)))
        finally:
            await c.close()

    results = asyncio.run(main())
    assert [s for s, _, _ in results] == [200] * 16
    costs = [microcents(cost) for _, cost, _ in results if cost is not None]
    assert len(costs) == 16 and all(0 < c < worst for c in costs)
    row = settled(book, "priced")
    assert row.reserved_microcents == 0
    assert row.committed_microcents == sum(costs)


def test_a_refusal_names_the_level_and_nothing_internal(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger
) -> None:
    book.ensure_tenant("poor", 1)

    async def main() -> list[tuple[int, float | None, str]]:
        c = client(proxy)
        try:
            return [await call(c, "poor"), await call(c, "nobody-knows-me")]
        finally:
            await c.close()

    (poor, _, poor_msg), (unknown, _, unknown_msg) = asyncio.run(main())
    assert poor == 429 and "budget refused at user 'poor': budget exhausted" in poor_msg
    assert unknown == 429 and "budget refused at user 'nobody-knows-me': no budget" in unknown_msg
    for msg in (poor_msg, unknown_msg):
        assert "microcent" not in msg and "reservation" not in msg and "Traceback" not in msg
    assert book.tenant("nobody-knows-me") is None
    row = book.tenant("poor")
    assert row is not None and (row.remaining_microcents, row.committed_microcents) == (1, 0)


def test_an_unpriceable_call_is_refused_before_it_runs(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger
) -> None:
    book.ensure_tenant("unpriced", 10**9)

    async def main() -> list[tuple[int, float | None, str]]:
        c = client(proxy)
        try:
            return [
                await call(c, "unpriced", "unpriced", max_tokens=10),
                await call(c, "unpriced", "mock"),  # no max_tokens: the map's limit
            ]
        finally:
            await c.close()

    (status, _, msg), (fallback, cost, _) = asyncio.run(main())
    assert status == 400 and "cannot price this call" in msg
    assert fallback == 200 and cost is not None
    row = settled(book, "unpriced")
    assert row.committed_microcents == microcents(cost)
    assert row.reserved_microcents == 0


def test_a_failing_provider_leaves_no_hold_and_no_charge(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger, proxy_db: str
) -> None:
    book.ensure_tenant("fails", 10**9)

    async def main() -> list[tuple[int, float | None, str]]:
        c = client(proxy)
        try:
            return await asyncio.gather(
                *(call(c, "fails", "broken", max_tokens=20) for _ in range(8))
            )
        finally:
            await c.close()

    results = asyncio.run(main())
    assert all(status >= 500 for status, _, _ in results)
    row = settled(book, "fails")
    assert (row.remaining_microcents, row.reserved_microcents, row.committed_microcents) == (
        10**9,
        0,
        0,
    )
    assert holds(proxy_db, "fails") == 0


def test_streams_settle_once_at_the_streams_own_cost(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger, raw_journal: Any
) -> None:
    book.ensure_tenant("streams", 10**9)
    worst = worst_case_microcents("openai/gpt-4o-mini", messages=PROMPT, max_tokens=100)

    async def main() -> list[str]:
        c = client(proxy)
        texts = []
        try:
            for options in (None, {"include_usage": True}):
                extra: dict[str, Any] = {} if options is None else {"stream_options": options}
                stream = await c.chat.completions.create(
                    model="mock",
                    messages=PROMPT,
                    user="streams",
                    max_tokens=100,
                    stream=True,
                    **extra,
                )
                parts = [
                    chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices
                ]
                texts.append("".join(parts))
        finally:
            await c.close()
        return texts

    assert asyncio.run(main()) == [litellm_proxy.ANSWER] * 2
    row = settled(book, "streams")
    assert row.reserved_microcents == 0
    assert 0 < row.committed_microcents < 2 * worst
    assert raw_journal("streams") == {"reserve": 2, "commit": 2}


def test_an_idempotency_key_is_charged_once(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger
) -> None:
    book.ensure_tenant("retries", 10**9)

    async def main() -> list[tuple[int, float | None, str]]:
        c = client(proxy)
        headers = {"Idempotency-Key": "order-42"}
        try:
            first = await call(c, "retries", max_tokens=50, extra_headers=headers)
            again = await asyncio.gather(
                *(call(c, "retries", max_tokens=50, extra_headers=headers) for _ in range(4))
            )
            other = await call(
                c, "retries", max_tokens=50, extra_headers={"Idempotency-Key": "order-43"}
            )
            return [first, *again, other]
        finally:
            await c.close()

    results = asyncio.run(main())
    assert [s for s, _, _ in results] == [200] * 6
    first_cost, other_cost = results[0][1], results[-1][1]
    assert first_cost is not None and other_cost is not None
    row = settled(book, "retries")
    assert row.reserved_microcents == 0
    assert row.committed_microcents == microcents(first_cost) + microcents(other_cost)


@pytest.fixture
def raw_journal(proxy_db: str) -> Any:
    def kinds(tenant: str) -> dict[str, int]:
        with psycopg.connect(_plain(proxy_db)) as conn:
            rows = conn.execute(
                "SELECT op, count(*) FROM ledger.journal WHERE tenant_id = %s"
                " AND op IN ('reserve', 'commit', 'release', 'expire') GROUP BY op",
                (tenant,),
            ).fetchall()
        return {str(k): int(n) for k, n in rows}

    return kinds


def test_the_example_config_runs_the_callback_with_a_mock_model() -> None:
    import yaml

    root = Path(__file__).resolve().parents[3]
    example = yaml.safe_load((root / "examples/litellm_proxy/config.yaml").read_text())
    assert example["litellm_settings"]["callbacks"] == "ledger.contrib.litellm.proxy_handler"
    (model,) = example["model_list"]
    assert model["litellm_params"]["mock_response"]  # runs with no provider, offline
    ours = yaml.safe_load(litellm_proxy.config(hang_port=9))
    assert ours["litellm_settings"]["callbacks"] == example["litellm_settings"]["callbacks"]


def test_a_stream_the_client_abandons_leaves_no_hold(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger, raw_journal: Any
) -> None:
    book.ensure_tenant("leaves", 10**9)
    worst = worst_case_microcents("openai/gpt-4o-mini", messages=PROMPT, max_tokens=1000)

    async def main() -> int:
        c = client(proxy)
        try:
            stream = await c.chat.completions.create(
                model="slow", messages=PROMPT, user="leaves", max_tokens=1000, stream=True
            )
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 3:
                    break
            await stream.close()  # hang up mid-stream (the provider has ~10 s to go)
            return seen
        finally:
            await c.close()

    assert asyncio.run(main()) == 3
    row = settled(book, "leaves", timeout=60)
    assert row.reserved_microcents == 0  # settled or released by LiteLLM's hooks, not the TTL
    assert 0 <= row.committed_microcents < worst
    journal = raw_journal("leaves")
    assert journal.get("reserve") == 1
    assert journal.get("commit", 0) + journal.get("release", 0) == 1


def test_a_call_retried_after_a_failed_attempt_is_charged(
    proxy: litellm_proxy.Proxy, book: ledger.Ledger, raw_journal: Any
) -> None:
    # LiteLLM's router reports each failed attempt to the failure hooks; the hold
    # must outlive them, so the attempt that succeeds is charged, once.
    book.ensure_tenant("flaky", 10**9)

    async def main() -> list[tuple[int, float | None, str]]:
        c = client(proxy)
        try:
            return await asyncio.gather(
                *(
                    call(c, "flaky", "flaky", max_tokens=50, extra_body={"num_retries": 6})
                    for _ in range(12)
                )
            )
        finally:
            await c.close()

    results = asyncio.run(main())
    ok = [cost for status, cost, _ in results if status == 200 and cost is not None]
    assert len(ok) == len(results) == 12
    row = settled(book, "flaky")
    assert row.reserved_microcents == 0
    assert row.committed_microcents == sum(microcents(c) for c in ok)
    assert raw_journal("flaky") == {"reserve": 12, "commit": 12}
