"""The LiteLLM cost rule: ceil(Decimal(repr(cost)) * 10**8) microcents, never rounded down."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.contrib.litellm._money import UnpriceableCall, microcents
from ledger.errors import InputError


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        (0.0003, 30_000),  # binary 0.000299999... is read as the decimal 0.0003
        (1.35e-05, 1_350),
        (0.1 + 0.2, 30_000_001),  # 0.30000000000000004 dollars: the tail rounds up
        (1e-9, 1),  # a tenth of a microcent is charged as one
        (0, 0),
        (0.0, 0),
        (2, 200_000_000),
        ("0.000000015", 2),
        (Decimal("1.00000001"), 100_000_001),
    ],
)
def test_examples(cost: object, expected: int) -> None:
    assert microcents(cost) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "cost", [None, -0.01, math.nan, math.inf, -math.inf, "abc", True, [1], Decimal("NaN")]
)
def test_what_is_not_a_price_is_refused_not_charged_zero(cost: object) -> None:
    with pytest.raises(UnpriceableCall):
        microcents(cost)  # type: ignore[arg-type]
    assert issubclass(UnpriceableCall, InputError)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_floats_round_up_from_their_shortest_decimal(cost: float) -> None:
    exact = Fraction(Decimal(repr(cost))) * 10**8
    got = microcents(cost)
    assert got == math.ceil(exact)
    assert got - 1 < exact <= got


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=12))
def test_decimal_amounts_are_exact(units: int, places: int) -> None:
    amount = Decimal(units).scaleb(-places)
    assert microcents(str(amount)) == math.ceil(Fraction(amount) * 10**8)
