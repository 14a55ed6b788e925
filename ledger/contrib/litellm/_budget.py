"""Hold, settle, release: the budget rules the proxy callback and the SDK helper share.

Both paths do the same four things with the same rules, so they live here once:

- **hold** the worst case at the payer's tenant, with a TTL, so a proxy
  that dies mid-call leaves holds that lapse instead of money locked for
  ever; an unknown tenant is refused or created from a default budget
  (``unknown="refuse"``/``"create"``; with a tree map, ``create`` builds
  the missing levels from the root down, each under its parent, with the
  level's default budget); a refusal is a :class:`BudgetRefused` whose
  message names the level and tenant that refused (the outcome's
  ``limited_by``: in a tree, the tightest level, not the leaf) and nothing
  else;
- **settle** at LiteLLM's ``response_cost`` (rounded up by :mod:`._money`).
  A provider that used a few more tokens than the hold is debited the
  overrun when the budget has it, else charged the whole hold; a cost
  LiteLLM could not compute after the call is charged the whole hold (the
  call ran; 0 would be wrong); a hold that lapsed while the call ran is
  charged afresh when the budget still has the money;
- **release** on failure. Settling and releasing are safe to repeat: the
  ledger answers a second settlement of a gone hold ``missing_reservation``
  and changes nothing;
- **charge once per idempotency key**: each attempt holds on its own, and
  the commit carries the key. A retry whose earlier attempt was already
  committed gets :class:`~ledger.errors.IdempotencyConflict` from the ledger
  (same key, another reservation): its own hold is released, so the key is
  charged exactly once, whichever attempt finished first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from ... import AsyncLedger, Ledger, errors
from ...outcomes import ReserveOutcome, SettlementOutcome, Status
from ._money import UnpriceableCall, microcents
from ._tenants import LEVELS, MAPS, Payer, TenantMap, by_end_user, level_of

log = logging.getLogger("ledger.contrib.litellm")

URL_ENV = "LEDGER_DATABASE_URL"
SCHEMA_ENV = "LEDGER_SCHEMA"
TENANT_ENV = "LEDGER_LITELLM_TENANT"
UNKNOWN_ENV = "LEDGER_LITELLM_UNKNOWN_TENANT"
DEFAULT_BUDGET_ENV = "LEDGER_LITELLM_DEFAULT_BUDGET_MICROCENTS"
TTL_ENV = "LEDGER_LITELLM_HOLD_TTL"
#: Per level (``KEY``, ``USER``, ``TEAM``, ``ORG``): the budget ``create`` gives a new
#: tenant of that level, instead of ``LEDGER_LITELLM_DEFAULT_BUDGET_MICROCENTS``.
LEVEL_BUDGET_ENV = "LEDGER_LITELLM_DEFAULT_BUDGET_{}_MICROCENTS"
_ENV_LEVELS = {"KEY": "key", "USER": "user", "TEAM": "team", "ORG": "organisation"}

#: Seconds a hold lives when nothing settles it (a crashed proxy, a lost callback).
DEFAULT_TTL = 600

_REASONS = {
    Status.INSUFFICIENT: "budget exhausted",
    Status.EXPOSURE_LIMIT_EXCEEDED: "too much already held for calls in flight",
    Status.MISSING_TENANT: "no budget",
    Status.OVERFLOW: "budget cannot hold this amount",
    Status.INVALID_AMOUNT: "the call has no cost to hold",
}


def _refusing(payer: Payer, limited_by: str | None) -> Payer:
    """The level that refused: the payer, one of its parents, or a level the ledger knows of."""
    if limited_by is None or limited_by == payer.tenant_id:
        return payer
    for parent in payer.parents:
        if parent.tenant_id == limited_by:
            return parent
    # An ancestor the caller did not name (the tree was built by hand): its id says its level.
    return Payer(limited_by, level_of(limited_by))


class BudgetRefused(errors.LedgerError):
    """A call could not be held: the message names the level and the tenant that refused.

    ``payer`` is who the call was held for; ``refused_at`` the level that
    refused, from the outcome's ``limited_by`` (the payer itself on a flat
    ledger, the tightest level above it in a tree).
    """

    def __init__(self, payer: Payer, status: Status, limited_by: str | None = None) -> None:
        self.payer = payer
        self.status = status
        self.refused_at = at = _refusing(payer, limited_by)
        reason = _REASONS.get(status, "refused")
        super().__init__(f"budget refused at {at.level} {at.tenant_id!r}: {reason}")


@dataclass
class Held:
    """One open hold of one call: where, how much, and the key it settles under."""

    payer: Payer
    reservation_id: int
    amount_microcents: int
    idempotency_key: str | None = None


class _Rules:
    """The configuration both faces share, checked before any call, and the pure rules."""

    def __init__(
        self,
        *,
        tenants: TenantMap,
        unknown: Literal["refuse", "create"],
        default_budget_microcents: int | None,
        ttl: int,
        schema: str,
        default_budgets: Mapping[str, int] | None = None,
    ) -> None:
        levels = dict(default_budgets or {})
        for level, amount in levels.items():
            if level not in LEVELS.values():
                raise errors.InputError(f"default_budgets: no level {level!r}")
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                raise errors.InputError(f"default_budgets[{level!r}] must be a non-negative int")
        if unknown not in ("refuse", "create"):
            raise errors.InputError(f"unknown must be 'refuse' or 'create', not {unknown!r}")
        if unknown == "create" and (
            not isinstance(default_budget_microcents, int) or default_budget_microcents < 0
        ):
            raise errors.InputError(
                "unknown='create' needs default_budget_microcents, a non-negative int"
            )
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise errors.InputError(f"ttl must be a positive number of seconds, not {ttl!r}")
        self.schema = schema
        self.tenants = tenants
        self.unknown = unknown
        self.default_budget_microcents = default_budget_microcents
        self.default_budgets = levels
        self.ttl = ttl

    @staticmethod
    def _env() -> tuple[str, dict[str, Any]]:
        url = os.environ.get(URL_ENV)
        if not url:
            raise RuntimeError(f"the ledger's LiteLLM callback needs {URL_ENV}")
        name = os.environ.get(TENANT_ENV, "end_user")
        if name not in MAPS:
            raise errors.InputError(f"{TENANT_ENV} must be one of {sorted(MAPS)}, not {name!r}")
        unknown = os.environ.get(UNKNOWN_ENV, "refuse")
        if unknown not in ("refuse", "create"):
            raise errors.InputError(f"{UNKNOWN_ENV} must be 'refuse' or 'create', not {unknown!r}")
        default = os.environ.get(DEFAULT_BUDGET_ENV)
        per_level = {
            level: int(value)
            for name, level in _ENV_LEVELS.items()
            if (value := os.environ.get(LEVEL_BUDGET_ENV.format(name))) is not None
        }
        return url, {
            "default_budgets": per_level,
            "tenants": MAPS[name],
            "unknown": unknown,
            "default_budget_microcents": None if default is None else int(default),
            "ttl": int(os.environ.get(TTL_ENV, str(DEFAULT_TTL))),
            "schema": os.environ.get(SCHEMA_ENV, "ledger"),
        }

    @staticmethod
    def _check(amount_microcents: int) -> None:
        if amount_microcents <= 0:
            raise UnpriceableCall("the call's worst case is not a positive amount")

    def _creates(self, outcome: ReserveOutcome) -> bool:
        return outcome.status is Status.MISSING_TENANT and self.unknown == "create"

    def _to_create(self, payer: Payer) -> list[tuple[str, int, str | None]]:
        """``(tenant, budget, parent)`` for each level of the payer, from the root down.

        Each level is created only if missing (``ensure_tenant``), so
        concurrent first calls create it once, and an existing level keeps
        its budget and its place in the tree.
        """
        assert self.default_budget_microcents is not None
        steps: list[tuple[str, int, str | None]] = []
        parent: str | None = None
        for level in payer.path():
            budget = self.default_budgets.get(level.level, self.default_budget_microcents)
            steps.append((level.tenant_id, budget, parent))
            parent = level.tenant_id
        return steps

    @staticmethod
    def _held(payer: Payer, outcome: ReserveOutcome, amount: int, key: str | None) -> Held:
        if outcome.status is not Status.RESERVED or outcome.reservation_id is None:
            raise BudgetRefused(payer, outcome.status, outcome.limited_by)
        return Held(payer, outcome.reservation_id, amount, key)

    @staticmethod
    def _actual(held: Held, cost_dollars: float | Decimal | None) -> int:
        try:
            return microcents(cost_dollars)
        except UnpriceableCall:
            log.warning("LiteLLM reported no usable cost for hold %s; charging the hold", held)
            return held.amount_microcents

    @staticmethod
    def _key(held: Held) -> str | None:
        return None if held.idempotency_key is None else f"litellm:{held.idempotency_key}"


class Budget(_Rules):
    """The ledger side of a LiteLLM call, for the proxy callback and the asyncio SDK helper.

    ``Budget(ledger_or_url)``: an :class:`~ledger.AsyncLedger` (shared, not
    closed here) or a URL (a ledger of its own, opened on first use, so it
    binds to the event loop that uses it). :meth:`from_env` reads the
    configuration the proxy gets from its environment. :class:`SyncBudget`
    is the same on a :class:`~ledger.Ledger`, for ``completion``.
    """

    def __init__(
        self,
        ledger: AsyncLedger | str,
        *,
        tenants: TenantMap = by_end_user,
        unknown: Literal["refuse", "create"] = "refuse",
        default_budget_microcents: int | None = None,
        ttl: int = DEFAULT_TTL,
        schema: str = "ledger",
        default_budgets: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(
            tenants=tenants,
            unknown=unknown,
            default_budget_microcents=default_budget_microcents,
            ttl=ttl,
            schema=schema,
            default_budgets=default_budgets,
        )
        self._given = ledger if isinstance(ledger, AsyncLedger) else None
        self._url = None if isinstance(ledger, AsyncLedger) else ledger
        self._book: AsyncLedger | None = self._given

    @classmethod
    def from_env(cls) -> Budget:
        """The proxy's configuration, from the environment (docs/litellm.md, "Configure")."""
        url, settings = cls._env()
        return cls(url, **settings)

    @property
    def ledger(self) -> AsyncLedger:
        """The ledger, opened on first use."""
        if self._book is None:
            assert self._url is not None
            self._book = AsyncLedger(self._url, schema=self.schema)
        return self._book

    async def close(self) -> None:
        """Close a ledger this budget opened itself (a passed one is its owner's)."""
        if self._book is not None and self._given is None:
            book, self._book = self._book, None
            await book.close()

    async def hold(
        self, payer: Payer, amount_microcents: int, idempotency_key: str | None = None
    ) -> Held:
        """Hold the worst case at ``payer``; refuse with :class:`BudgetRefused`."""
        self._check(amount_microcents)
        book = self.ledger
        outcome = await book.try_reserve(payer.tenant_id, amount_microcents, ttl=self.ttl)
        if self._creates(outcome):
            for tenant, budget, parent in self._to_create(payer):
                await book.ensure_tenant(tenant, budget, parent)
            outcome = await book.try_reserve(payer.tenant_id, amount_microcents, ttl=self.ttl)
        return self._held(payer, outcome, amount_microcents, idempotency_key)

    async def settle(
        self, held: Held, cost_dollars: float | Decimal | None
    ) -> SettlementOutcome | None:
        """Commit ``held`` at LiteLLM's cost; the rules are in the module docstring."""
        actual = self._actual(held, cost_dollars)
        book, tenant, rid = self.ledger, held.payer.tenant_id, held.reservation_id
        try:
            outcome = await book.commit(
                rid, actual, tenant_id=tenant, idempotency_key=self._key(held)
            )
        except errors.IdempotencyConflict:
            # An earlier attempt with this key was charged: this one is not.
            await self.release(held)
            return None
        if outcome.status is Status.OVERRUN:
            log.warning(
                "call on hold %s cost %s, more than the budget had: charging the hold", rid, actual
            )
            outcome = await book.commit(rid, held.amount_microcents, tenant_id=tenant)
        elif outcome.status is Status.EXPIRED and actual > 0:
            # The hold lapsed while the call ran: charge afresh if the money is there.
            late = await book.try_reserve(tenant, actual)
            if late.reservation_id is not None:
                outcome = await book.commit(late.reservation_id, actual, tenant_id=tenant)
            else:
                log.warning("hold %s lapsed during its call and the budget is spent", rid)
        return outcome

    async def release(self, held: Held) -> SettlementOutcome:
        """Give the hold back; a hold already gone changes nothing (safe to repeat)."""
        return await self.ledger.release(held.reservation_id, tenant_id=held.payer.tenant_id)


class SyncBudget(_Rules):
    """:class:`Budget` on a synchronous :class:`~ledger.Ledger`: the same rules, line for line.

    For apps that call ``litellm.completion`` (``ledger.contrib.litellm.completion``).
    """

    def __init__(
        self,
        ledger: Ledger | str,
        *,
        tenants: TenantMap = by_end_user,
        unknown: Literal["refuse", "create"] = "refuse",
        default_budget_microcents: int | None = None,
        ttl: int = DEFAULT_TTL,
        schema: str = "ledger",
        default_budgets: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(
            tenants=tenants,
            unknown=unknown,
            default_budget_microcents=default_budget_microcents,
            ttl=ttl,
            schema=schema,
            default_budgets=default_budgets,
        )
        self._owned = not isinstance(ledger, Ledger)
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger, schema=schema)

    def close(self) -> None:
        """Close a ledger this budget opened itself (a passed one is its owner's)."""
        if self._owned:
            self.ledger.close()

    def hold(
        self, payer: Payer, amount_microcents: int, idempotency_key: str | None = None
    ) -> Held:
        """Hold the worst case at ``payer``; refuse with :class:`BudgetRefused`."""
        self._check(amount_microcents)
        book = self.ledger
        outcome = book.try_reserve(payer.tenant_id, amount_microcents, ttl=self.ttl)
        if self._creates(outcome):
            for tenant, budget, parent in self._to_create(payer):
                book.ensure_tenant(tenant, budget, parent)
            outcome = book.try_reserve(payer.tenant_id, amount_microcents, ttl=self.ttl)
        return self._held(payer, outcome, amount_microcents, idempotency_key)

    def settle(self, held: Held, cost_dollars: float | Decimal | None) -> SettlementOutcome | None:
        """Commit ``held`` at LiteLLM's cost (:meth:`Budget.settle`'s rules)."""
        actual = self._actual(held, cost_dollars)
        book, tenant, rid = self.ledger, held.payer.tenant_id, held.reservation_id
        try:
            outcome = book.commit(rid, actual, tenant_id=tenant, idempotency_key=self._key(held))
        except errors.IdempotencyConflict:
            self.release(held)
            return None
        if outcome.status is Status.OVERRUN:
            log.warning(
                "call on hold %s cost %s, more than the budget had: charging the hold", rid, actual
            )
            outcome = book.commit(rid, held.amount_microcents, tenant_id=tenant)
        elif outcome.status is Status.EXPIRED and actual > 0:
            late = book.try_reserve(tenant, actual)
            if late.reservation_id is not None:
                outcome = book.commit(late.reservation_id, actual, tenant_id=tenant)
            else:
                log.warning("hold %s lapsed during its call and the budget is spent", rid)
        return outcome

    def release(self, held: Held) -> SettlementOutcome:
        """Give the hold back; a hold already gone changes nothing (safe to repeat)."""
        return self.ledger.release(held.reservation_id, tenant_id=held.payer.tenant_id)


__all__ = ["DEFAULT_TTL", "Budget", "BudgetRefused", "Held", "SyncBudget"]
