"""The worst case a call can cost, priced before it runs from LiteLLM's own tables.

Worst case = the prompt's tokens (LiteLLM's ``token_counter``) at the
model's input price + ``max_tokens`` (or, when the request sets none, the
model's ``max_output_tokens`` from LiteLLM's price map) at its output price.
Prices are read as exact decimals and the sum is rounded up once, by the
rule in :mod:`._money`, so the hold is never a fraction short of the
worst case. A deployment may override the map's prices in its
``litellm_params`` (``input_cost_per_token``/``output_cost_per_token``), as
LiteLLM itself allows; those win. A model the map does not know, or one
with no output limit and no ``max_tokens``, cannot be priced: the call is
refused (:class:`._money.UnpriceableCall`) instead of being held at 0.

The prompt is counted by LiteLLM, not by the provider, so a provider may
report a few more prompt tokens than the hold assumed; the settlement then
debits the overrun when the budget has it (docs/litellm.md, "Failures").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import litellm

from ._money import UnpriceableCall, dollars, microcents

#: Call types priced as chat/text completions (input and output tokens).
COMPLETIONS = frozenset({"completion", "acompletion", "text_completion", "atext_completion"})
#: Call types priced by their input alone.
EMBEDDINGS = frozenset({"embedding", "aembedding"})


def _price(params: Mapping[str, Any], info: Mapping[str, Any], name: str) -> Decimal:
    value = params.get(name)
    if value is None:
        value = info.get(name)
    if value is None:
        raise UnpriceableCall(f"LiteLLM has no {name.replace('_', ' ')} for this model")
    return dollars(value)


def _model_info(model: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        return dict(
            litellm.get_model_info(model, custom_llm_provider=params.get("custom_llm_provider"))
        )
    except Exception:
        if params.get("input_cost_per_token") is not None:
            return {}
        raise UnpriceableCall(f"LiteLLM has no price for the model {model!r}") from None


def worst_case_dollars(
    model: str,
    *,
    messages: Iterable[Mapping[str, Any]] | None = None,
    prompt: Any = None,
    max_tokens: int | None = None,
    call_type: str = "acompletion",
    litellm_params: Mapping[str, Any] | None = None,
) -> Decimal:
    """The most this call can cost, in exact dollars (see the module docstring)."""
    params = dict(litellm_params or {})
    info = _model_info(model, params)
    try:
        if messages is not None:
            tokens = litellm.token_counter(model=model, messages=list(messages))
        else:
            text = prompt if isinstance(prompt, list) else [str(prompt or "")]
            tokens = litellm.token_counter(model=model, text=[str(t) for t in text])
    except Exception:
        raise UnpriceableCall("LiteLLM cannot count this prompt's tokens") from None
    cost = tokens * _price(params, info, "input_cost_per_token")
    if call_type in EMBEDDINGS:
        return cost
    if call_type not in COMPLETIONS:
        raise UnpriceableCall(f"calls of type {call_type!r} are not priced by the ledger")
    limit = max_tokens if max_tokens is not None else info.get("max_output_tokens")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise UnpriceableCall("set max_tokens: the model has no output limit to hold for")
    return cost + limit * _price(params, info, "output_cost_per_token")


def tokens_dollars(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    litellm_params: Mapping[str, Any] | None = None,
) -> Decimal:
    """What ``prompt_tokens`` in and ``completion_tokens`` out cost, exactly, at the map's prices.

    The SDK prices a stream with it: the response LiteLLM rebuilds from a
    stream's chunks may carry no usage and a cost of 0, which is not what
    the stream cost.
    """
    params = dict(litellm_params or {})
    info = _model_info(model, params)
    return prompt_tokens * _price(params, info, "input_cost_per_token") + (
        completion_tokens * _price(params, info, "output_cost_per_token")
    )


def worst_case_microcents(model: str, **request: Any) -> int:
    """:func:`worst_case_dollars`, rounded up to whole microcents."""
    return microcents(worst_case_dollars(model, **request))


def request_limit(request: Mapping[str, Any]) -> int | None:
    """The output limit a request asks for: ``max_tokens`` or ``max_completion_tokens``."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = request.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UnpriceableCall(f"{name} must be a non-negative integer")
            return value
    return None


__all__ = [
    "COMPLETIONS",
    "EMBEDDINGS",
    "request_limit",
    "tokens_dollars",
    "worst_case_dollars",
    "worst_case_microcents",
]
