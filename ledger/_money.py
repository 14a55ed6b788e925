"""Exact display of microcent amounts; integer arithmetic only, never floats."""

from __future__ import annotations

import re

MICROCENTS_PER_CENT = 1_000_000
MICROCENTS_PER_UNIT = 100 * MICROCENTS_PER_CENT

_AMOUNT = re.compile(r"([+-]?)(\d*)(?:\.(\d{1,8}))?")


def format_units(microcents: int, *, min_decimals: int = 2) -> str:
    """``123456789`` -> ``"1.23456789"``: currency units, exact, trailing zeros trimmed."""
    sign = "-" if microcents < 0 else ""
    whole, frac = divmod(abs(microcents), MICROCENTS_PER_UNIT)
    digits = f"{frac:08d}".rstrip("0")
    if len(digits) < min_decimals:
        digits = digits.ljust(min_decimals, "0")
    return f"{sign}{whole:,}.{digits}" if digits else f"{sign}{whole:,}"


def parse_units(text: str) -> int:
    """``"1.25"`` -> ``125000000`` microcents; refuses more than 8 decimals or junk."""
    raw = text.strip().replace("_", "").replace(",", "")
    match = _AMOUNT.fullmatch(raw)
    if match is None or not (match.group(2) or match.group(3)):
        raise ValueError(
            f"not an amount: {text!r} (use digits with at most 8 decimals, e.g. 12.50)"
        )
    sign, whole, frac = match.groups()
    value = int(whole or "0") * MICROCENTS_PER_UNIT + int((frac or "").ljust(8, "0"))
    return -value if sign == "-" else value
