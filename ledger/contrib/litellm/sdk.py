"""The same budgets for apps that call LiteLLM themselves: ``acompletion`` with a payer.

::

    from ledger.contrib.litellm import Budget, acompletion

    budget = Budget("postgresql://...")          # or Budget(async_ledger)
    response = await acompletion(budget, "alice", model="openai/gpt-4o-mini",
                                 messages=[...], max_tokens=200)
    response = await acompletion(budget, "alice", router=my_router, model="gpt-group", ...)

It holds the worst case (the prompt at the input price plus ``max_tokens``
at the output price; with a ``Router``, the dearest of the group's
deployments), awaits ``litellm.acompletion`` (or ``router.acompletion``),
commits the cost LiteLLM computed for the response, and releases the hold
if the call raises or is cancelled. A streamed call (``stream=True``) is
settled once, when the stream ends, at the cost of the chunks LiteLLM
rebuilds into one response; a stream abandoned part-way settles what was
received, or releases. A refused call raises :class:`BudgetRefused` and
never reaches the provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import litellm

from ._budget import Budget, Held
from ._pricing import request_limit, worst_case_microcents
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


def _worst_case(router: Any, request: Mapping[str, Any]) -> int:
    model = request.get("model")
    if not isinstance(model, str):
        from ._money import UnpriceableCall

        raise UnpriceableCall("the call names no model")
    targets: list[tuple[str, Mapping[str, Any]]] = []
    if router is not None:
        for deployment in router.get_model_list(model_name=model) or []:
            params = deployment.get("litellm_params") or {}
            if isinstance(params.get("model"), str):
                targets.append((params["model"], params))
    return max(
        worst_case_microcents(
            name,
            messages=request.get("messages"),
            max_tokens=request_limit(request),
            litellm_params=params,
        )
        # a direct call's own kwargs may carry prices (input_cost_per_token=...)
        for name, params in (targets or [(model, request)])
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
    who = payer if isinstance(payer, Payer) else Payer(payer, "tenant")
    held = await budget.hold(who, _worst_case(router, request), idempotency_key)
    call = router.acompletion if router is not None else litellm.acompletion
    try:
        response = await call(**request)
    except BaseException:
        await budget.release(held)
        raise
    if request.get("stream"):
        return _settled_stream(budget, held, response, request)
    await budget.settle(held, _cost(response))
    return response


async def _settled_stream(
    budget: Budget, held: Held, stream: Any, request: Mapping[str, Any]
) -> AsyncIterator[Any]:
    chunks: list[Any] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
            yield chunk
    finally:
        built = None
        if chunks:
            try:
                built = litellm.stream_chunk_builder(chunks, messages=request.get("messages"))
            except Exception:
                built = None
        if built is None:
            await budget.release(held)
        else:
            await budget.settle(held, _cost(built))


__all__ = ["acompletion"]
