"""Input validation (ledger/_validate.py), without a database.

Every check runs before any SQL is sent, so it can be exercised on its own:
each accepted type and range comes back unchanged, each refused one raises
the documented ``ledger.errors`` type (which also subclasses the matching
builtin, so generic ``TypeError``/``ValueError`` handlers keep working).
The integration tier (tests/integration/core/test_validation.py) checks that the public API
calls these checks and leaves the database unchanged on refusal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import _validate, errors

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
U64_MAX = 2**64 - 1


class IntSubclass(int):
    """An int subclass is refused too: only the exact type is known to bind as bigint."""


NOT_PLAIN_INTS: list[Any] = [
    True,
    False,
    1.0,
    0.5,
    float("nan"),
    float("inf"),
    Decimal("1"),
    Fraction(1, 1),
    IntSubclass(1),
    "1",
    b"1",
    None,
    [1],
    (1,),
    {1: 1},
    1j,
    object(),
]


# --------------------------------------------------------------------- amounts


@pytest.mark.parametrize("value", [I64_MIN, I64_MIN + 1, -1, 0, 1, 1_000_000, I64_MAX - 1, I64_MAX])
def test_amount_accepts_every_signed_64_bit_int(value: int) -> None:
    assert _validate.amount("amount", value) == value


@given(st.integers(min_value=I64_MIN, max_value=I64_MAX))
def test_amount_accepts_any_i64(value: int) -> None:
    assert _validate.amount("amount", value) == value


@pytest.mark.parametrize("value", [I64_MAX + 1, I64_MIN - 1, 2**64, -(2**64), 2**200, -(2**200)])
def test_amount_out_of_range_is_an_amount_value_error(value: int) -> None:
    with pytest.raises(errors.AmountValueError, match="signed 64-bit") as info:
        _validate.amount("budget", value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, errors.InputError)
    assert "budget=" in str(info.value)


@given(
    st.one_of(
        st.integers(min_value=I64_MAX + 1),
        st.integers(max_value=I64_MIN - 1),
    )
)
def test_amount_refuses_any_int_outside_i64(value: int) -> None:
    with pytest.raises(errors.AmountValueError):
        _validate.amount("amount", value)


@pytest.mark.parametrize("value", NOT_PLAIN_INTS, ids=lambda v: type(v).__name__ + repr(v)[:10])
def test_amount_refuses_everything_but_a_plain_int(value: Any) -> None:
    with pytest.raises(errors.AmountTypeError, match="plain int") as info:
        _validate.amount("amount", value)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, errors.LedgerError)
    assert type(value).__name__ in str(info.value)


# ------------------------------------------------------------- reservation ids


@pytest.mark.parametrize("value", [0, 1, I64_MAX, I64_MAX + 1, U64_MAX])
def test_reservation_id_accepts_u64(value: int) -> None:
    assert _validate.reservation_id(value) == value


@pytest.mark.parametrize("value", [-1, I64_MIN, U64_MAX + 1, 2**200])
def test_reservation_id_out_of_range(value: int) -> None:
    with pytest.raises(errors.AmountValueError, match="unsigned 64-bit"):
        _validate.reservation_id(value)


@pytest.mark.parametrize("value", NOT_PLAIN_INTS, ids=lambda v: type(v).__name__ + repr(v)[:10])
def test_reservation_id_refuses_non_ints(value: Any) -> None:
    with pytest.raises(errors.AmountTypeError, match="reservation_id must be a plain int"):
        _validate.reservation_id(value)


# ----------------------------------------------------------------- tenant ids


@pytest.mark.parametrize(
    "value",
    [
        "t",
        " ",
        " spaced ",
        "x" * 255,  # 255 bytes: the limit
        "é" * 127,  # 254 bytes
        "租户-🙂",
        "🙂" * 63,  # 252 bytes
        "'; DROP TABLE ledger.tenants; --",
        "line\nbreak\ttab",
    ],
    ids=lambda v: repr(v)[:20],
)
def test_tenant_id_accepts_utf8_up_to_255_bytes(value: str) -> None:
    assert _validate.tenant_id(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must not be empty"),
        ("\x00", "NUL"),
        ("a\x00b", "NUL"),
        ("x" * 256, "256 UTF-8 bytes"),
        ("é" * 128, "256 UTF-8 bytes"),
        ("🙂" * 64, "256 UTF-8 bytes"),
        ("\udcff", "not valid UTF-8"),
        ("ok\ud800", "not valid UTF-8"),
        (None, "must be a str"),
        (7, "must be a str"),
        (b"bytes", "must be a str"),
        (["t"], "must be a str"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_tenant_id_refusals_are_typed(value: Any, message: str) -> None:
    with pytest.raises(errors.InvalidTenantId, match=message) as info:
        _validate.tenant_id(value)
    assert isinstance(info.value, ValueError)


@given(st.text(min_size=1))
def test_tenant_id_accepts_exactly_the_documented_set(value: str) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        size = None
    valid = size is not None and size <= 255 and "\x00" not in value
    if valid:
        assert _validate.tenant_id(value) == value
    else:
        with pytest.raises(errors.InvalidTenantId):
            _validate.tenant_id(value)


# --------------------------------------------------------------- schema names


@pytest.mark.parametrize("value", ["ledger", "_x", "a", "billing_2", "a" * 63])
def test_schema_name_accepts_lowercase_identifiers(value: str) -> None:
    assert _validate.schema_name(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "Ledger", "a-b", "x;drop", "1abc", "a" * 64, "a b", '"q"', "é", None, 5, b"ledger"],
)
def test_schema_name_refusals_are_typed(value: Any) -> None:
    with pytest.raises(errors.InvalidSchemaName, match="lowercase SQL identifier"):
        _validate.schema_name(value)


# ------------------------------------------------------------ idempotency keys


@pytest.mark.parametrize("value", [None, "k", "550e8400-e29b-41d4-a716-446655440000", "x" * 255])
def test_idempotency_key_accepts_none_and_short_strings(value: str | None) -> None:
    assert _validate.idempotency_key(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "non-empty str"),
        ("a\x00", "without NUL"),
        ("x" * 256, "256 UTF-8 bytes"),
        ("é" * 128, "256 UTF-8 bytes"),
        ("\udcff", "not valid UTF-8"),
        (5, "non-empty str"),
        (b"k", "non-empty str"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_idempotency_key_refusals_are_input_errors(value: Any, message: str) -> None:
    with pytest.raises(errors.InputError, match=message):
        _validate.idempotency_key(value)


# ---------------------------------------------------------------------- expiry


@pytest.mark.parametrize(
    ("ttl", "micros"),
    [
        (1, 1_000_000),
        (3600, 3_600_000_000),
        (timedelta(microseconds=1), 1),
        (timedelta(seconds=1.5), 1_500_000),
        (timedelta(days=1), 86_400_000_000),
        (36_600 * 86_400, 36_600 * 86_400 * 1_000_000),  # the longest: about a century
    ],
)
def test_expiry_ttl_becomes_exact_microseconds(ttl: Any, micros: int) -> None:
    assert _validate.expiry(ttl, None) == (micros, None)


def test_expiry_accepts_an_aware_deadline_and_nothing() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert _validate.expiry(None, at) == (None, at)
    east = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    assert _validate.expiry(None, east) == (None, east)
    assert _validate.expiry(None, None) == (None, None)


@pytest.mark.parametrize(
    ("ttl", "error"),
    [
        (0, errors.AmountValueError),
        (-1, errors.AmountValueError),
        (timedelta(0), errors.AmountValueError),
        (timedelta(microseconds=-1), errors.AmountValueError),
        (I64_MAX // 1_000_000 + 1, errors.AmountValueError),
        (2**80, errors.AmountValueError),
        (True, errors.AmountTypeError),
        (1.5, errors.AmountTypeError),
        (Decimal(1), errors.AmountTypeError),
        ("60", errors.AmountTypeError),
    ],
    ids=repr,
)
def test_expiry_ttl_refusals_are_typed(ttl: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="ttl must be"):
        _validate.expiry(ttl, None)


@pytest.mark.parametrize(
    "expires_at", [datetime(2030, 1, 1), "2030-01-01T00:00:00Z", 1_900_000_000, timedelta(1)]
)
def test_expiry_refuses_naive_or_non_datetime_deadlines(expires_at: Any) -> None:
    with pytest.raises(errors.InputError, match="timezone-aware"):
        _validate.expiry(None, expires_at)


def test_expiry_refuses_both_ttl_and_deadline() -> None:
    with pytest.raises(errors.InputError, match="either ttl= or expires_at="):
        _validate.expiry(5, datetime(2030, 1, 1, tzinfo=UTC))


# ------------------------------------------------------------ positive counts


@pytest.mark.parametrize("value", [1, 2, 10**6, 2**80])
def test_positive_count_accepts_positive_ints(value: int) -> None:
    assert _validate.positive_count("limit", value) == value


@pytest.mark.parametrize("value", [0, -1, True, 1.0, "1", None])
def test_positive_count_refusals_are_input_errors(value: Any) -> None:
    with pytest.raises(errors.InputError, match="limit must be a positive int"):
        _validate.positive_count("limit", value)
