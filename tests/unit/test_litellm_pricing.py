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
    by_tree,
    by_user,
    level_of,
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


def test_the_tree_map_holds_at_the_key_under_its_user_team_and_organisation() -> None:
    key = SimpleNamespace(token="88d0", key_alias=None, user_id="u1", team_id="t1", org_id="o1")
    payer = by_tree(Caller.from_proxy(key, {"user": "alice"}))
    user, team, org = (
        Payer("user:u1", "user"),
        Payer("team:t1", "team"),
        Payer("org:o1", "organisation"),
    )
    assert payer == Payer("key:88d0", "key", (user, team, org))
    assert payer.path() == (org, team, user, Payer("key:88d0", "key"))
    # A level the caller lacks is skipped; the nearest level present is the leaf.
    no_user = SimpleNamespace(token="88d0", user_id=None, team_id="t1", org_id=None)
    assert by_tree(Caller.from_proxy(no_user, {})) == Payer("key:88d0", "key", (team,))
    assert by_tree(Caller(team_id="t1")) == Payer("team:t1", "team")
    assert by_tree(Caller(end_user="alice")) is None
    # The flat maps' payers are unchanged: no parents.
    assert by_key(Caller.from_proxy(key, {})).parents == ()  # type: ignore[union-attr]


def test_a_refusal_names_the_level_that_refused_from_limited_by() -> None:
    team = Payer("team:t1", "team")
    payer = Payer("key:k1", "key", (Payer("user:u1", "user"), team))
    refused = BudgetRefused(payer, Status.INSUFFICIENT, "team:t1")
    assert str(refused) == "budget refused at team 'team:t1': budget exhausted"
    assert (refused.payer, refused.refused_at) == (payer, team)
    assert str(BudgetRefused(payer, Status.INSUFFICIENT, "key:k1")).startswith(
        "budget refused at key 'key:k1'"
    )
    # An ancestor the caller did not name: its id's prefix names its level.
    flat = Payer("key:k1", "key")
    assert str(BudgetRefused(flat, Status.INSUFFICIENT, "org:o7")) == (
        "budget refused at organisation 'org:o7': budget exhausted"
    )
    assert str(BudgetRefused(Payer("alice", "user"), Status.INSUFFICIENT, "acme")) == (
        "budget refused at tenant 'acme': budget exhausted"
    )
    assert [level_of(t) for t in ("key:a", "user:a", "team:a", "org:a", "a")] == [
        "key",
        "user",
        "team",
        "organisation",
        "tenant",
    ]


def test_per_level_default_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", "postgresql://unused")
    monkeypatch.setenv("LEDGER_LITELLM_TENANT", "tree")
    monkeypatch.setenv("LEDGER_LITELLM_UNKNOWN_TENANT", "create")
    monkeypatch.setenv("LEDGER_LITELLM_DEFAULT_BUDGET_MICROCENTS", "5000")
    monkeypatch.setenv("LEDGER_LITELLM_DEFAULT_BUDGET_TEAM_MICROCENTS", "700")
    monkeypatch.setenv("LEDGER_LITELLM_DEFAULT_BUDGET_ORG_MICROCENTS", "900")
    budget = Budget.from_env()
    assert budget.tenants is by_tree
    assert budget.default_budgets == {"team": 700, "organisation": 900}
    with pytest.raises(InputError):
        Budget("postgresql://unused", default_budgets={"galaxy": 5})
    with pytest.raises(InputError):
        Budget("postgresql://unused", default_budgets={"team": -1})
    with pytest.raises(InputError):
        Budget("postgresql://unused", default_budgets={"team": True})
