"""The LiteLLM integration's worst case and tenant maps, without a server or a provider."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import litellm
import pytest

from ledger.contrib.litellm import (
    Budget,
    Caller,
    Payer,
    UnpriceableCall,
    by_end_user,
    by_key,
    by_org,
    by_team,
    by_user,
    worst_case_dollars,
    worst_case_microcents,
)
from ledger.contrib.litellm._budget import BudgetRefused
from ledger.errors import InputError
from ledger.outcomes import Status

MODEL = "openai/gpt-4o-mini"
PROMPT = [{"role": "user", "content": "How much is this going to cost?"}]


def _prices() -> tuple[Decimal, Decimal, int]:
    info = litellm.get_model_info(MODEL)
    return (
        Decimal(repr(info["input_cost_per_token"])),
        Decimal(repr(info["output_cost_per_token"])),
        int(info["max_output_tokens"]),
    )


def test_the_worst_case_is_the_prompt_plus_max_tokens_at_the_maps_prices() -> None:
    inp, out, _ = _prices()
    tokens = litellm.token_counter(model=MODEL, messages=PROMPT)
    assert worst_case_dollars(MODEL, messages=PROMPT, max_tokens=50) == tokens * inp + 50 * out


def test_without_max_tokens_the_models_output_limit_is_held() -> None:
    inp, out, limit = _prices()
    tokens = litellm.token_counter(model=MODEL, messages=PROMPT)
    assert worst_case_dollars(MODEL, messages=PROMPT) == tokens * inp + limit * out


def test_a_deployments_own_prices_win_and_the_sum_rounds_up_once() -> None:
    got = worst_case_microcents(
        MODEL,
        messages=PROMPT,
        max_tokens=3,
        litellm_params={"input_cost_per_token": 0, "output_cost_per_token": 1e-9},
    )
    assert got == 1  # 3e-9 dollars = 0.3 microcents, rounded up


def test_embeddings_are_priced_by_their_input() -> None:
    inp, _, _ = _prices()
    tokens = litellm.token_counter(model=MODEL, text=["some text"])
    assert worst_case_dollars(MODEL, prompt=["some text"], call_type="aembedding") == tokens * inp


@pytest.mark.parametrize(
    "request_",
    [
        {"model": "openai/not-a-model-litellm-knows", "max_tokens": 10},
        {"model": MODEL, "max_tokens": 10, "call_type": "aimage_generation"},
        {"model": MODEL, "max_tokens": -1},
    ],
)
def test_what_cannot_be_priced_is_refused(request_: dict[str, object]) -> None:
    model = str(request_.pop("model"))
    with pytest.raises(UnpriceableCall):
        worst_case_microcents(model, messages=PROMPT, **request_)  # type: ignore[arg-type]


def test_the_tenant_maps_and_their_ids() -> None:
    key = SimpleNamespace(token="88d0", key_alias=None, user_id="u1", team_id="t1", org_id="o1")
    caller = Caller.from_proxy(key, {"user": "alice"})
    assert by_end_user(caller) == Payer("alice", "user")
    assert by_key(caller) == Payer("key:88d0", "key")
    assert by_user(caller) == Payer("user:u1", "user")
    assert by_team(caller) == Payer("team:t1", "team")
    assert by_org(caller) == Payer("org:o1", "organisation")
    nobody = Caller.from_proxy(SimpleNamespace(), {"user": ""})
    assert [m(nobody) for m in (by_end_user, by_key, by_user, by_team, by_org)] == [None] * 5


def test_a_refusal_names_the_level_and_tenant_only() -> None:
    refused = BudgetRefused(Payer("team:t1", "team"), Status.INSUFFICIENT)
    assert str(refused) == "budget refused at team 'team:t1': budget exhausted"


def test_budget_configuration_is_checked_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError):
        Budget("postgresql://unused", unknown="create")  # no default budget
    with pytest.raises(InputError):
        Budget("postgresql://unused", ttl=0)
    monkeypatch.setenv("LEDGER_DATABASE_URL", "postgresql://unused")
    monkeypatch.setenv("LEDGER_LITELLM_TENANT", "team")
    monkeypatch.setenv("LEDGER_LITELLM_UNKNOWN_TENANT", "create")
    monkeypatch.setenv("LEDGER_LITELLM_DEFAULT_BUDGET_MICROCENTS", "5000")
    monkeypatch.setenv("LEDGER_LITELLM_HOLD_TTL", "30")
    budget = Budget.from_env()
    assert (budget.tenants, budget.unknown, budget.default_budget_microcents, budget.ttl) == (
        by_team,
        "create",
        5000,
        30,
    )
    monkeypatch.setenv("LEDGER_LITELLM_TENANT", "everyone")
    with pytest.raises(InputError):
        Budget.from_env()
    monkeypatch.setenv("LEDGER_LITELLM_TENANT", "team")
    monkeypatch.setenv("LEDGER_LITELLM_UNKNOWN_TENANT", "craete")
    with pytest.raises(InputError):
        Budget.from_env()
