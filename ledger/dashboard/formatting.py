"""How the pages write numbers, times and tenant ids: exact, whole, and unambiguous.

Pure functions (no web stack), used as Jinja2 filters. An amount is always
written with every digit: ``9,223,372,036,854,775,807``, never rounded,
abbreviated or cut. Sums over many tenants can exceed 64 bits; they arrive
as ``int`` (or ``Decimal`` from SQL ``numeric``) and are written the same way.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from decimal import Decimal

from .._money import format_units


def whole(value: int | Decimal) -> int:
    """An exact integer from SQL (``bigint`` -> int, ``numeric`` -> Decimal); refuses fractions."""
    if isinstance(value, bool):
        raise TypeError("a bool is not an amount")
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"not a whole number of microcents: {value}")
        return int(value)
    if not isinstance(value, int):
        raise TypeError(f"not an integer amount: {value!r}")
    return value


def digits(value: int | Decimal) -> str:
    """``1234567`` -> ``"1,234,567"``: every digit, grouped by thousands."""
    return f"{whole(value):,}"


def units(value: int | Decimal) -> str:
    """Microcents as currency units, exact: ``150_000_000`` -> ``"1.50"``."""
    return format_units(whole(value))


def count(value: int) -> str:
    """A count of things (holds, entries, tenants), grouped by thousands."""
    return f"{value:,}"


def timestamp(value: datetime | None) -> str:
    """UTC, to the second, ISO-like: ``2026-11-01 13:05:09Z`` (``-`` for none)."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(value: datetime) -> str:
    """Machine-readable time for ``<time datetime=...>``, in UTC with microseconds."""
    return value.astimezone(UTC).isoformat()


def duration(seconds: int | float) -> str:
    """A short human duration: ``45 s``, ``12 min``, ``3 h 20 min``, ``2 d 4 h``."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s} s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days:,} d {hours} h" if hours else f"{days:,} d"


def visible_id(tenant_id: str) -> list[tuple[str, bool]]:
    """A tenant id as ``(text, is_escape)`` runs, so nothing in it hides or fakes text.

    Ids may hold any character but NUL: control and format characters
    (newline, tab, right-to-left override, zero-width space) are shown as
    escapes such as ``\\n`` or ``\\u202e``; leading and trailing spaces are
    kept (the template renders ids with ``white-space: pre``). The template
    marks the escapes, so ``a\\nb`` (an escape) never reads like ``a\\\\nb``.
    """
    runs: list[tuple[str, bool]] = []
    for ch in tenant_id:
        special = unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
        text = _escape(ch) if special else ch
        if runs and runs[-1][1] == special and not special:
            runs[-1] = (runs[-1][0] + text, False)
        else:
            runs.append((text, special))
    return runs


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )
