"""Input checks that run before any SQL is sent.

Every public entry point validates here first so that bad input raises a
typed error with a message the caller can act on, and so that nothing is ever
half-applied: a value that reaches the database has already been proven to
fit a ``bigint`` and the column constraints.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .errors import (
    AmountTypeError,
    AmountValueError,
    InputError,
    InvalidSchemaName,
    InvalidTenantId,
)

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
U64_MAX = 2**64 - 1
TENANT_ID_MAX_BYTES = 255

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def amount(name: str, value: object) -> int:
    """Accept only a plain ``int`` inside signed 64 bits.

    ``bool`` is an ``int`` subclass and ``True`` as "1 microcent" is a bug
    waiting to happen, so it is refused along with floats, Decimals and strings.
    """
    if type(value) is not int:
        raise AmountTypeError(
            f"{name} must be a plain int of microcents, got {type(value).__name__} {value!r}; "
            "convert explicitly (for example int(Decimal(...) * 1_000_000)) before calling"
        )
    if not I64_MIN <= value <= I64_MAX:
        raise AmountValueError(
            f"{name}={value} does not fit in a signed 64-bit integer "
            f"(allowed range {I64_MIN}..{I64_MAX} microcents)"
        )
    return value


def reservation_id(value: object) -> int:
    """Reservation ids are u64 in the seed; ours come from a bigint sequence."""
    if type(value) is not int:
        raise AmountTypeError(
            f"reservation_id must be a plain int, got {type(value).__name__} {value!r}"
        )
    if not 0 <= value <= U64_MAX:
        raise AmountValueError(
            f"reservation_id={value} is not an unsigned 64-bit integer (0..{U64_MAX})"
        )
    return value


def tenant_id(value: object) -> str:
    """Tenant ids are opaque strings that must round-trip through UTF-8 and ``text``."""
    if not isinstance(value, str):
        raise InvalidTenantId(f"tenant_id must be a str, got {type(value).__name__} {value!r}")
    if not value:
        raise InvalidTenantId("tenant_id must not be empty")
    if "\x00" in value:
        raise InvalidTenantId("tenant_id must not contain a NUL character (PostgreSQL text cannot)")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTenantId(
            f"tenant_id {value!r} is not valid UTF-8 (lone surrogate at {exc.start})"
        ) from exc
    if len(encoded) > TENANT_ID_MAX_BYTES:
        raise InvalidTenantId(
            f"tenant_id is {len(encoded)} UTF-8 bytes; the limit is {TENANT_ID_MAX_BYTES}"
        )
    return value


def schema_name(value: object) -> str:
    """The schema name is spliced into SQL text, so only a plain identifier is allowed.

    PostgreSQL reserves ``pg_*`` names for its own schemas (``pg_catalog``,
    ``pg_toast``, ``pg_temp``) and ``information_schema`` is the standard's
    catalog: a ledger there would be mixed into the system's objects.
    """
    if not isinstance(value, str) or not _SCHEMA_RE.match(value):
        raise InvalidSchemaName(
            f"schema must be a lowercase SQL identifier matching {_SCHEMA_RE.pattern}, "
            f"got {value!r}"
        )
    if value.startswith("pg_") or value == "information_schema":
        raise InvalidSchemaName(
            f"schema {value!r} is reserved for PostgreSQL's own catalogs; "
            "pick another name (the default is 'ledger')"
        )
    return value


def idempotency_key(value: object) -> str | None:
    """Keys are opaque client strings, stored and hashed as UTF-8."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InputError(
            "idempotency_key must be a non-empty str without NUL (a UUID is a good choice), "
            f"got {value!r}"
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InputError("idempotency_key is not valid UTF-8") from exc
    if size > 255:
        raise InputError(f"idempotency_key is {size} UTF-8 bytes; the limit is 255")
    return value


def expiry(ttl: object, expires_at: object) -> tuple[int | None, datetime | None]:
    """A hold deadline: ``ttl`` (timedelta or whole seconds) or an aware ``expires_at``."""
    if ttl is not None and expires_at is not None:
        raise InputError("pass either ttl= or expires_at=, not both")
    if ttl is not None:
        if isinstance(ttl, timedelta):
            micros = ttl // timedelta(microseconds=1)
        elif type(ttl) is int:
            micros = ttl * 1_000_000
        else:
            raise AmountTypeError(
                f"ttl must be a datetime.timedelta or whole seconds (int), got {type(ttl).__name__}"
            )
        if not 0 < micros <= MAX_TTL_US:
            raise AmountValueError(
                f"ttl must be positive and at most {MAX_TTL.days} days, got {ttl!r}; "
                "for a hold that never lapses pass no ttl"
            )
        return micros, None
    if expires_at is not None:
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise InputError(
                "expires_at must be a timezone-aware datetime (for example datetime.now(UTC))"
            )
        now = datetime.now(UTC)
        if expires_at <= now:
            raise InputError(
                f"expires_at {expires_at.isoformat()} is not in the future (now is "
                f"{now.isoformat()}): the hold would be born lapsed; pass a later instant"
            )
        if expires_at - now > MAX_TTL:
            raise InputError(
                f"expires_at must be at most {MAX_TTL.days} days ahead, got "
                f"{expires_at.isoformat()}; for a hold that never lapses pass none"
            )
        # One instant, one spelling: the idempotency request hash must not see the offset.
        return None, expires_at.astimezone(UTC)
    return None, None


#: The longest hold deadline (about a century): ``now() + ttl`` must stay a valid
#: timestamp, and a hold meant never to lapse is a hold without a deadline.
MAX_TTL = timedelta(days=36_600)
MAX_TTL_US = MAX_TTL // timedelta(microseconds=1)


def positive_count(name: str, value: object) -> int:
    if type(value) is not int or value <= 0:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value
