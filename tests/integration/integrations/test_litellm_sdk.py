"""The SDK helper: ``acompletion(budget, payer, ...)`` around ``litellm.acompletion`` and a Router.

The calls use LiteLLM's ``mock_response`` (no provider); its usage is fixed
(10 prompt and 20 completion tokens), so with the prompt priced 0 and
``max_tokens=20`` every call costs exactly its worst case and the budget's
count of successes is exact.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import litellm
import pytest

import ledger
from ledger.contrib.litellm import (
    Budget,
    BudgetRefused,
    Caller,
    SyncBudget,
    acompletion,
    by_tree,
    completion,
    microcents,
)
from ledger.contrib.litellm import worst_case_microcents as worst_case
from tests import litellm_proxy

PROMPT = [{"role": "user", "content": "Say hello to the ledger, please."}]
EXACT = {"input_cost_per_token": 0, "output_cost_per_token": 0.0000006}
MODEL = "openai/gpt-4o-mini"


def run(db_url: str, scenario: Any) -> Any:
    async def main() -> Any:
        async with ledger.AsyncLedger(db_url) as book:
            return await scenario(book, Budget(book, ttl=60))

    return asyncio.run(main())


def test_load_successes_are_exactly_what_the_budget_allows(
    book: ledger.Ledger, db_url: str
) -> None:
    worst = worst_case(MODEL, messages=PROMPT, max_tokens=20, litellm_params=EXACT)
    budget = 10 * worst + worst // 2
    book.ensure_tenant("sdk", budget)

    async def scenario(_: ledger.AsyncLedger, b: Budget) -> list[Any]:
        pending = list(range(64))
        results: list[Any] = []

        async def worker() -> None:
            while pending:
                pending.pop()
                try:
                    results.append(
                        await acompletion(
                            b,
                            "sdk",
                            model=MODEL,
                            messages=PROMPT,
                            max_tokens=20,
                            mock_response=litellm_proxy.ANSWER,
                            **EXACT,
                        )
                    )
                except BudgetRefused as refused:
                    results.append(refused)

        await asyncio.gather(*(worker() for _ in range(16)))
        return results

    results = run(db_url, scenario)
    ok = [r for r in results if not isinstance(r, BudgetRefused)]
    refused = [r for r in results if isinstance(r, BudgetRefused)]
    assert (len(ok), len(refused)) == (10, 54)
    assert all(str(r) == "budget refused at tenant 'sdk': budget exhausted" for r in refused)
    costs = [microcents(r._hidden_params["response_cost"]) for r in ok]
    assert costs == [worst] * 10
    row = book.tenant("sdk")
    assert row is not None
    assert (row.reserved_microcents, row.committed_microcents) == (0, sum(costs))
    assert book.active_reservations() == 0


def test_a_failing_call_releases_its_hold(book: ledger.Ledger, db_url: str) -> None:
    book.ensure_tenant("sdk-fails", 10**9)

    async def scenario(_: ledger.AsyncLedger, b: Budget) -> None:
        with pytest.raises((litellm.exceptions.APIConnectionError, litellm.InternalServerError)):
            await acompletion(
                b,
                "sdk-fails",
                model=MODEL,
                messages=PROMPT,
                max_tokens=20,
                api_key="sk-test-none",
                api_base=f"http://127.0.0.1:{litellm_proxy.free_port()}/v1",
                max_retries=0,
                num_retries=0,
            )

    run(db_url, scenario)
    row = book.tenant("sdk-fails")
    assert row is not None
    assert (row.remaining_microcents, row.reserved_microcents, row.committed_microcents) == (
        10**9,
        0,
        0,
    )


def test_a_stream_settles_once_when_it_ends_or_is_abandoned(
    book: ledger.Ledger, db_url: str
) -> None:
    book.ensure_tenant("sdk-stream", 10**9)

    async def scenario(_: ledger.AsyncLedger, b: Budget) -> str:
        request: dict[str, Any] = {
            "model": MODEL,
            "messages": PROMPT,
            "max_tokens": 100,
            "mock_response": litellm_proxy.ANSWER,
            "stream": True,
        }
        stream = await acompletion(b, "sdk-stream", **request)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        abandoned = await acompletion(b, "sdk-stream", **request)
        async for _ in abandoned:
            break
        await abandoned.aclose()
        return text

    assert run(db_url, scenario) == litellm_proxy.ANSWER
    row = book.tenant("sdk-stream")
    worst = worst_case(MODEL, messages=PROMPT, max_tokens=100)
    assert row is not None and row.reserved_microcents == 0
    assert 0 < row.committed_microcents <= 2 * worst
    assert book.active_reservations() == 0


def test_a_router_is_held_at_its_dearest_deployment(book: ledger.Ledger, db_url: str) -> None:
    book.ensure_tenant("sdk-router", 10**9)
    router = litellm.Router(
        model_list=[
            {
                "model_name": "group",
                "litellm_params": {
                    "model": MODEL,
                    "mock_response": litellm_proxy.ANSWER,
                    "api_key": "sk-test-none",
                },
            },
            {
                "model_name": "group",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "mock_response": litellm_proxy.ANSWER,
                    "api_key": "sk-test-none",
                },
            },
        ]
    )
    dearest = worst_case("openai/gpt-4o", messages=PROMPT, max_tokens=50)
    book.ensure_tenant("sdk-router-poor", dearest - 1)

    async def scenario(_: ledger.AsyncLedger, b: Budget) -> Any:
        with pytest.raises(BudgetRefused):
            await acompletion(
                b, "sdk-router-poor", router=router, model="group", messages=PROMPT, max_tokens=50
            )
        return await acompletion(
            b, "sdk-router", router=router, model="group", messages=PROMPT, max_tokens=50
        )

    response = run(db_url, scenario)
    row = book.tenant("sdk-router")
    assert row is not None and row.reserved_microcents == 0
    assert row.committed_microcents == microcents(response._hidden_params["response_cost"])
    poor = book.tenant("sdk-router-poor")
    assert poor is not None and poor.committed_microcents == 0


def test_unknown_tenants_are_refused_or_created_from_a_default_budget(
    book: ledger.Ledger, db_url: str
) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": PROMPT,
        "max_tokens": 20,
        "mock_response": litellm_proxy.ANSWER,
    }

    async def scenario(own: ledger.AsyncLedger, refusing: Budget) -> list[Any]:
        with pytest.raises(BudgetRefused, match="budget refused at tenant 'new': no budget"):
            await acompletion(refusing, "new", **request)
        assert await own.tenant("new") is None
        creating = Budget(own, unknown="create", default_budget_microcents=10**8)
        return await asyncio.gather(*(acompletion(creating, "new", **request) for _ in range(8)))

    responses = run(db_url, scenario)
    row = book.tenant("new")
    assert row is not None and row.initial_microcents == 10**8
    spent = sum(microcents(r._hidden_params["response_cost"]) for r in responses)
    assert (row.reserved_microcents, row.committed_microcents) == (0, spent)


def test_a_call_dearer_than_its_hold_debits_the_overrun_or_charges_the_hold(
    book: ledger.Ledger, db_url: str
) -> None:
    # max_tokens=5, but LiteLLM's mock reports 20 completion tokens: an overrun.
    worst = worst_case(MODEL, messages=PROMPT, max_tokens=5, litellm_params=EXACT)
    book.ensure_tenant("roomy", 10**9)
    book.ensure_tenant("tight", worst)
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": PROMPT,
        "max_tokens": 5,
        "mock_response": litellm_proxy.ANSWER,
        **EXACT,
    }

    async def scenario(_: ledger.AsyncLedger, b: Budget) -> list[Any]:
        return [await acompletion(b, t, **request) for t in ("roomy", "tight")]

    roomy_response, _ = run(db_url, scenario)
    actual = microcents(roomy_response._hidden_params["response_cost"])
    assert actual > worst
    roomy, tight = book.tenant("roomy"), book.tenant("tight")
    assert roomy is not None and tight is not None
    assert (roomy.committed_microcents, roomy.reserved_microcents) == (actual, 0)
    assert (tight.committed_microcents, tight.reserved_microcents) == (worst, 0)


def test_an_idempotency_key_is_charged_once(book: ledger.Ledger, db_url: str) -> None:
    book.ensure_tenant("sdk-keys", 10**9)
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": PROMPT,
        "max_tokens": 20,
        "mock_response": litellm_proxy.ANSWER,
    }

    async def scenario(_: ledger.AsyncLedger, b: Budget) -> list[Any]:
        return await asyncio.gather(
            *(acompletion(b, "sdk-keys", idempotency_key="job-7", **request) for _ in range(6))
        )

    responses = run(db_url, scenario)
    row = book.tenant("sdk-keys")
    assert row is not None and row.reserved_microcents == 0
    assert row.committed_microcents == microcents(responses[0]._hidden_params["response_cost"])


def test_the_sync_helper_under_threads_is_exact_too(book: ledger.Ledger, db_url: str) -> None:
    worst = worst_case(MODEL, messages=PROMPT, max_tokens=20, litellm_params=EXACT)
    budget = 10 * worst + worst // 2
    book.ensure_tenant("sync", budget)
    sync = SyncBudget(book, ttl=60)
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": PROMPT,
        "max_tokens": 20,
        "mock_response": litellm_proxy.ANSWER,
        **EXACT,
    }

    def one(_: int) -> Any:
        try:
            return completion(sync, "sync", **request)
        except BudgetRefused as refused:
            return refused

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(64)))
    ok = [r for r in results if not isinstance(r, BudgetRefused)]
    assert (len(ok), len(results) - len(ok)) == (10, 54)
    spent = sum(microcents(r._hidden_params["response_cost"]) for r in ok)
    row = book.tenant("sync")
    assert row is not None
    assert (row.reserved_microcents, row.committed_microcents) == (0, spent)
    assert spent == 10 * worst

    with pytest.raises(BudgetRefused):  # 10 calls spent it: no worst case fits any more
        completion(sync, "sync", **{**request, "stream": True})
    book.top_up_tenant("sync", 10**9)
    chunks = list(completion(sync, "sync", **{**request, "stream": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == litellm_proxy.ANSWER
    row = book.tenant("sync")
    assert row is not None and row.reserved_microcents == 0
    assert spent < row.committed_microcents <= spent + worst


def test_the_proxy_hook_fails_closed(book: ledger.Ledger, db_url: str) -> None:
    # The proxy's pre-call hook, called in-process: what it refuses, and with which status.
    from fastapi import HTTPException

    from ledger.contrib.litellm import LedgerCallback
    from ledger.contrib.litellm.proxy import MARK

    key = SimpleNamespace(token="k", key_alias=None, user_id=None, team_id=None, org_id=None)
    request = {"model": MODEL, "messages": PROMPT, "max_tokens": 20}
    book.ensure_tenant("hook", 10**9)

    async def statuses() -> list[int]:
        down = ledger.AsyncLedger(
            f"postgresql://nobody@127.0.0.1:{litellm_proxy.free_port()}/none", pool_timeout=2
        )
        found = []
        async with ledger.AsyncLedger(db_url) as up:
            for budget, data in [
                (Budget(down), {**request, "user": "hook"}),  # the ledger is unreachable
                (Budget(up), dict(request)),  # no one to charge
                (Budget(up), {**request, "user": "hook", "model": "openai/no-such-model"}),
            ]:
                with pytest.raises(HTTPException) as refused:
                    await LedgerCallback(budget).async_pre_call_hook(key, None, data, "acompletion")
                found.append(refused.value.status_code)
            # A request body cannot name a hold: the hook replaces the mark with its own.
            hook = LedgerCallback(Budget(up))
            data = {**request, "user": "hook", "metadata": {MARK: "forged"}}
            await hook.async_pre_call_hook(key, None, data, "acompletion")
            assert data["metadata"][MARK] != "forged" and hook.open_holds == 1
            await hook.async_post_call_failure_hook(data, RuntimeError("x"), key)
            await hook.async_post_call_failure_hook(data, RuntimeError("again"), key)
            assert hook.open_holds == 0
        await down.close()
        return found

    assert asyncio.run(statuses()) == [503, 400, 400]
    row = book.tenant("hook")
    assert row is not None
    assert (row.remaining_microcents, row.reserved_microcents, row.committed_microcents) == (
        10**9,
        0,
        0,
    )


def test_the_tree_map_creates_missing_levels_and_the_team_refuses(
    book: ledger.Ledger, db_url: str
) -> None:
    # The team exists and is the tightest level; users and keys are created on
    # first use, under their parents, from the default budget.
    worst = worst_case(MODEL, messages=PROMPT, max_tokens=20, litellm_params=EXACT)
    book.ensure_tenant("team:sdk", 10 * worst + worst // 2)
    callers = {
        "key:a": Caller(key="a", user_id="ua", team_id="sdk"),
        "key:b": Caller(key="b", user_id="ub", team_id="sdk"),
    }

    async def scenario(lg: ledger.AsyncLedger, _: Budget) -> list[Any]:
        b = Budget(
            lg, tenants=by_tree, unknown="create", default_budget_microcents=100 * worst, ttl=60
        )
        pending = [list(callers)[i % 2] for i in range(32)]
        results: list[Any] = []

        async def worker() -> None:
            while pending:
                key = pending.pop()
                payer = by_tree(callers[key])
                assert payer is not None
                try:
                    r = await acompletion(
                        b,
                        payer,
                        model=MODEL,
                        messages=PROMPT,
                        max_tokens=20,
                        mock_response=litellm_proxy.ANSWER,
                        **EXACT,
                    )
                    results.append((key, microcents(r._hidden_params["response_cost"])))
                except BudgetRefused as refused:
                    results.append((key, refused))

        await asyncio.gather(*(worker() for _ in range(8)))
        return results

    results = run(db_url, scenario)
    ok = [(k, c) for k, c in results if not isinstance(c, BudgetRefused)]
    refused = [c for _, c in results if isinstance(c, BudgetRefused)]
    assert (len(ok), len(refused)) == (10, 22)
    assert all(str(r) == "budget refused at team 'team:sdk': budget exhausted" for r in refused)
    spent = {t: 0 for t in ("key:a", "key:b", "user:ua", "user:ub", "team:sdk")}
    for key, cost in ok:
        assert cost == worst
        for level in (key, "user:u" + key[-1], "team:sdk"):
            spent[level] += cost
    for level, parent in (
        ("key:a", "user:ua"),
        ("key:b", "user:ub"),
        ("user:ua", "team:sdk"),
        ("user:ub", "team:sdk"),
        ("team:sdk", None),
    ):
        row = book.tenant(level)
        assert row is not None
        assert (row.parent_id, row.reserved_microcents, row.committed_microcents) == (
            parent,
            0,
            spent[level],
        )
