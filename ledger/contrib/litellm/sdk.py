"""The same budgets for apps that call LiteLLM themselves: ``acompletion`` with a payer.

::

    from ledger.contrib.litellm import Budget, acompletion

    budget = Budget("postgresql://...")          # or Budget(async_ledger)
    response = await acompletion(budget, "alice", model="openai/gpt-4o-mini",
                                 messages=[...], max_tokens=200)
    response = await acompletion(budget, "alice", router=my_router, model="gpt-group", ...)

    sync = SyncBudget("postgresql://...")       # or SyncBudget(ledger.Ledger(...))
    response = completion(sync, "alice", model=..., messages=[...], max_tokens=200)

It holds the worst case (the prompt at the input price plus ``max_tokens``
at the output price; with a ``Router``, the dearest of the group's
deployments), awaits ``litellm.acompletion`` (or ``router.acompletion``),
commits the cost LiteLLM computed for the response, and releases the hold
if the call raises or is cancelled. A streamed call (``stream=True``) is
settled once, when the stream ends, at the cost of the chunks LiteLLM
rebuilds into one response, priced from its usage (or, when the rebuilt
response carries none, its tokens counted by LiteLLM); a stream abandoned
part-way settles what was received, or releases. A refused call raises :class:`BudgetRefused` and
never reaches the provider. :func:`completion` is the same around
``litellm.completion`` (or ``router.completion``), on a :class:`SyncBudget`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from decimal import Decimal
from typing import Any

import litellm

from ._budget import Budget, Held, SyncBudget
from ._money import UnpriceableCall
from ._pricing import request_limit, tokens_dollars, worst_case_microcents
from ._tenants import Payer


def _cost(response: Any) -> Any:
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
    if cost is None:
        try:
            cost = litellm.completion_cost(completion_response=response)
        except Exception:
            cost = None
    return cost


def _targets(router: Any, request: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The models a call may reach, with their params: a Router's group, or the call itself."""
    model = request.get("model")
    if not isinstance(model, str):
        raise UnpriceableCall("the call names no model")
    targets: list[tuple[str, Mapping[str, Any]]] = []
    if router is not None:
        for deployment in router.get_model_list(model_name=model) or []:
            params = deployment.get("litellm_params") or {}
            if isinstance(params.get("model"), str):
                targets.append((params["model"], params))
    # a direct call's own kwargs may carry prices (input_cost_per_token=...)
    return targets or [(model, request)]


def _worst_case(router: Any, request: Mapping[str, Any]) -> int:
    return max(
        worst_case_microcents(
            name,
            messages=request.get("messages"),
            max_tokens=request_limit(request),
            litellm_params=params,
        )
        for name, params in _targets(router, request)
    )


async def acompletion(
    budget: Budget,
    payer: str | Payer,
    *,
    router: Any = None,
    idempotency_key: str | None = None,
    **request: Any,
) -> Any:
    """``litellm.acompletion(**request)`` (or ``router.acompletion``) within ``payer``'s budget."""
    who = _payer(payer)
    held = await budget.hold(who, _worst_case(router, request), idempotency_key)
    call = router.acompletion if router is not None else litellm.acompletion
    try:
        response = await call(**request)
    except BaseException:
        await budget.release(held)
        raise
    if request.get("stream"):
        return _settled_stream(budget, held, response, request, router)
    await budget.settle(held, _cost(response))
    return response


async def _settled_stream(
    budget: Budget, held: Held, stream: Any, request: Mapping[str, Any], router: Any
) -> AsyncIterator[Any]:
    chunks: list[Any] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
            yield chunk
    finally:
        if chunks:
            await budget.settle(held, _built_cost(chunks, request, router))
        else:
            await budget.release(held)


def _payer(payer: str | Payer) -> Payer:
    return payer if isinstance(payer, Payer) else Payer(payer, "tenant")


def _built_cost(chunks: list[Any], request: Mapping[str, Any], router: Any) -> Decimal | None:
    """What a stream delivered, priced from its usage (or, without usage, its counted tokens).

    None when it cannot be priced: the settlement then charges the whole hold.
    """
    try:
        return _priced_stream(chunks, request, router)
    except Exception:
        return None


def _priced_stream(chunks: list[Any], request: Mapping[str, Any], router: Any) -> Decimal:
    built = litellm.stream_chunk_builder(chunks, messages=request.get("messages"))
    usage = getattr(built, "usage", None)
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    if prompt == 0 and completion == 0:
        text = "".join(
            (choice.delta.content or "")
            for chunk in chunks
            for choice in (getattr(chunk, "choices", None) or [])
            if getattr(choice, "delta", None) is not None
        )
        targets = _targets(router, request)
        name = targets[0][0]
        prompt = litellm.token_counter(model=name, messages=list(request.get("messages") or []))
        completion = litellm.token_counter(model=name, text=text) if text else 0
    return max(
        tokens_dollars(name, prompt, completion, params)
        for name, params in _targets(router, request)
    )


def completion(
    budget: SyncBudget,
    payer: str | Payer,
    *,
    router: Any = None,
    idempotency_key: str | None = None,
    **request: Any,
) -> Any:
    """``litellm.completion(**request)`` (or ``router.completion``) within ``payer``'s budget."""
    who = _payer(payer)
    held = budget.hold(who, _worst_case(router, request), idempotency_key)
    call = router.completion if router is not None else litellm.completion
    try:
        response = call(**request)
    except BaseException:
        budget.release(held)
        raise
    if request.get("stream"):
        return _settled_sync_stream(budget, held, response, request, router)
    budget.settle(held, _cost(response))
    return response


def _settled_sync_stream(
    budget: SyncBudget, held: Held, stream: Any, request: Mapping[str, Any], router: Any
) -> Iterator[Any]:
    chunks: list[Any] = []
    try:
        for chunk in stream:
            chunks.append(chunk)
            yield chunk
    finally:
        if chunks:
            budget.settle(held, _built_cost(chunks, request, router))
        else:
            budget.release(held)


__all__ = ["acompletion", "completion"]
