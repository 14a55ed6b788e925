"""The one rule that turns a LiteLLM cost in dollars into ledger microcents.

LiteLLM reports costs as Python floats (``response_cost``, the price map's
``input_cost_per_token``). A float is not a decimal amount: ``0.1 + 0.2`` is
``0.30000000000000004``. The rule reads the float as the shortest decimal
that round-trips it (``Decimal(repr(cost))``, so ``0.0003`` is exactly
``0.0003``, not ``0.000299999999999999973...``), multiplies by 10**8
microcents per dollar, and rounds *up* to a whole microcent: a budget may
charge a fraction of a microcent too much, never too little. A cost that is
missing, negative, NaN or infinite is not a price; the caller must refuse
the call rather than charge 0 (:class:`UnpriceableCall`).

This module imports nothing from LiteLLM, so the rule is testable alone.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal, Inexact, InvalidOperation, localcontext

from ...errors import InputError

#: Microcents per dollar: 100 cents of 1,000,000 microcents each.
MICROCENTS_PER_DOLLAR = 10**8


class UnpriceableCall(InputError):
    """LiteLLM cannot price this call (no price for the model, or no output limit).

    The call is refused before it runs: an unpriced call is never charged 0.
    """


def dollars(value: float | int | str | Decimal) -> Decimal:
    """A price or cost as an exact Decimal: floats through ``repr``, the shortest round trip."""
    if isinstance(value, bool):
        raise UnpriceableCall(f"not a cost: {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnpriceableCall(f"not a cost: {value!r}")
        exact = Decimal(repr(value))
    elif isinstance(value, int | Decimal):
        exact = Decimal(value)
    elif isinstance(value, str):
        try:
            exact = Decimal(value)
        except InvalidOperation:
            raise UnpriceableCall(f"not a cost: {value!r}") from None
    else:
        raise UnpriceableCall(f"not a cost: {value!r}")
    if not exact.is_finite() or exact < 0:
        raise UnpriceableCall(f"not a cost: {value!r}")
    return exact


def microcents(cost: float | int | str | Decimal | None) -> int:
    """Dollars -> microcents: ``ceil(Decimal(repr(cost)) * 10**8)``; None or junk raises.

    ``microcents(0.0003) == 30_000``; ``microcents(1e-9) == 1`` (rounded up);
    ``microcents(0) == 0`` (a free call is free, but it was priced).
    """
    if cost is None:
        raise UnpriceableCall("LiteLLM reported no cost for this call")
    exact = dollars(cost)
    with localcontext() as ctx:
        # A shift of the exponent, then one rounding, up; nothing else may round.
        ctx.prec = max(ctx.prec, len(exact.as_tuple().digits) + 20)
        ctx.traps[Inexact] = True
        scaled = exact.scaleb(8)
        return int(scaled.to_integral_value(rounding=ROUND_CEILING))


__all__ = ["MICROCENTS_PER_DOLLAR", "UnpriceableCall", "dollars", "microcents"]
