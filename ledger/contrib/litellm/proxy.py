"""The LiteLLM proxy callback: every proxied call held before, settled after, exactly.

Name the shipped instance in the proxy's config::

    litellm_settings:
      callbacks: ledger.contrib.litellm.proxy_handler

and set ``LEDGER_DATABASE_URL`` (the other settings are in docs/litellm.md).
What each hook does, and why each is needed:

- ``async_pre_call_hook``: price the worst case (:mod:`._pricing`), map the
  caller to a tenant (:mod:`._tenants`), hold it. A refusal is HTTP 429
  naming the level and tenant; an unpriceable call is HTTP 400; a ledger
  that cannot be reached is 503 (the call does not run unbudgeted). The
  hold is remembered under a random token put in the request's metadata,
  which LiteLLM hands to every later hook; not under ``litellm_call_id``,
  which a client may choose (the ``x-litellm-call-id`` header).
- ``async_log_success_event``: commit at ``response_cost``. For a stream
  LiteLLM calls it once, after the stream ends, with the cost of the
  stream's own usage; for a stream the client abandoned, with what it
  billed of it.
- ``async_post_call_failure_hook``: release, once the request as a whole
  has failed. LiteLLM calls it for the pre-call hook's own 429 too, and may
  call failure hooks more than once for one request: the token is taken out
  of the table once, so only the first does anything.
  ``async_log_failure_event`` does nothing: LiteLLM's router reports every
  failed *attempt* of a retried call there, and the retry may succeed.
- A call no hook reports (a bug, a cancelled task) keeps its hold until the
  TTL; its table entry is forgotten then too.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from ... import errors
from ._budget import Budget, BudgetRefused, Held
from ._money import UnpriceableCall
from ._pricing import request_limit, worst_case_microcents
from ._tenants import Caller

log = logging.getLogger("ledger.contrib.litellm")

#: The request-metadata key under which a call's hold token travels between hooks.
MARK = "sql_ledger_hold"
#: Request headers read as an idempotency key (lower case, as the proxy forwards them).
IDEMPOTENCY_HEADERS = ("idempotency-key", "x-idempotency-key")


def _http_error(status: int, detail: str) -> Exception:
    from fastapi import HTTPException  # the proxy's own web framework

    return HTTPException(status_code=status, detail=detail)


def _deployments(model: str) -> list[tuple[str, Mapping[str, Any]]]:
    """The LiteLLM models a proxy model name may be routed to, with their params."""
    # Only the running proxy's own router: importing the proxy server here, outside
    # it, would start its module-level machinery for nothing.
    server = sys.modules.get("litellm.proxy.proxy_server")
    llm_router = getattr(server, "llm_router", None)
    found: list[tuple[str, Mapping[str, Any]]] = []
    if llm_router is not None:
        for deployment in llm_router.get_model_list(model_name=model) or []:
            params = deployment.get("litellm_params") or {}
            if isinstance(params.get("model"), str):
                found.append((params["model"], params))
    return found or [(model, {})]


def _headers(data: Mapping[str, Any]) -> Mapping[str, Any]:
    request = data.get("proxy_server_request") or {}
    headers = request.get("headers") if isinstance(request, Mapping) else None
    return headers if isinstance(headers, Mapping) else {}


def _idempotency_key(data: Mapping[str, Any]) -> str | None:
    headers = {str(k).lower(): v for k, v in _headers(data).items()}
    for name in IDEMPOTENCY_HEADERS:
        value = headers.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def worst_case_for(data: Mapping[str, Any], call_type: str) -> int:
    """The hold for a proxied request: the worst case over the deployments it may reach."""
    model = data.get("model")
    if not isinstance(model, str):
        raise UnpriceableCall("the request names no model")
    limit = request_limit(data)
    return max(
        worst_case_microcents(
            name,
            messages=data.get("messages"),
            prompt=data.get("prompt", data.get("input")),
            max_tokens=limit,
            call_type=call_type,
            litellm_params=params,
        )
        for name, params in _deployments(model)
    )


class LedgerCallback(CustomLogger):
    """Budgets for the LiteLLM proxy; :data:`ledger.contrib.litellm.proxy_handler` is one.

    ``LedgerCallback(budget)`` takes a configured :class:`Budget` (a tenant
    map, the unknown-tenant rule, a TTL); without one it builds
    ``Budget.from_env()`` on the first call.
    """

    def __init__(self, budget: Budget | None = None) -> None:
        super().__init__()
        self._budget = budget
        #: token -> (when the hold's TTL ends, on this process's clock; the hold), oldest first
        self._open: dict[str, tuple[float, Held]] = {}

    @property
    def budget(self) -> Budget:
        if self._budget is None:
            self._budget = Budget.from_env()
        return self._budget

    @property
    def open_holds(self) -> int:
        """Holds this process placed and has not settled yet."""
        return len(self._open)

    def _take(self, metadata: Any) -> Held | None:
        token = metadata.get(MARK) if isinstance(metadata, Mapping) else None
        entry = self._open.pop(token, None) if isinstance(token, str) else None
        return None if entry is None else entry[1]

    def _forget_lapsed(self) -> None:
        """Drop entries whose hold has lapsed: a call no hook reported must not leak memory.

        The ledger already returned their money (TTL); entries are in the
        order they were made and share one TTL, so the lapsed ones are first.
        """
        now = time.monotonic()
        while self._open:
            token, (deadline, _) = next(iter(self._open.items()))
            if deadline > now:
                return
            del self._open[token]

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any]:
        budget = self.budget
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            metadata = data["metadata"] = {}
        metadata.pop(MARK, None)  # only this hook may name a hold, never the request body
        self._forget_lapsed()
        payer = budget.tenants(Caller.from_proxy(user_api_key_dict, data))
        if payer is None:
            raise _http_error(400, "the request names no one to charge (set the 'user' field)")
        try:
            amount = worst_case_for(data, call_type)
            held = await budget.hold(payer, amount, _idempotency_key(data))
        except BudgetRefused as refused:
            raise _http_error(429, str(refused)) from None
        except UnpriceableCall as unpriced:
            raise _http_error(400, f"cannot price this call: {unpriced}") from None
        except errors.LedgerError:
            log.exception("the ledger could not hold a call")
            raise _http_error(503, "the budget service is unavailable") from None
        token = uuid.uuid4().hex
        self._open[token] = (time.monotonic() + budget.ttl, held)
        metadata[MARK] = token
        return data

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        held = self._take((kwargs.get("litellm_params") or {}).get("metadata"))
        if held is not None:
            await self._settle(held, kwargs.get("response_cost"))

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Nothing: LiteLLM's router reports every failed *attempt* here.

        A call retried (``num_retries``, another deployment of the group)
        after a failed attempt may still succeed; releasing its hold here
        made that success free (a test caught it). The request as a whole
        failing is :meth:`async_post_call_failure_hook`'s to handle.
        """

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        held = self._take(request_data.get("metadata"))
        if held is not None:
            await self._release(held)

    async def _settle(self, held: Held, cost: Any) -> None:
        try:
            await self.budget.settle(held, cost)
        except errors.LedgerError:
            # The hold stays open and lapses by its TTL: never charged twice.
            log.exception("could not settle hold %s", held.reservation_id)

    async def _release(self, held: Held) -> None:
        try:
            await self.budget.release(held)
        except errors.LedgerError:
            log.exception("could not release hold %s; its TTL will", held.reservation_id)


__all__ = ["IDEMPOTENCY_HEADERS", "MARK", "LedgerCallback", "worst_case_for"]
