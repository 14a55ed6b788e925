"""Query parameters, checked: a bad one is a 400 page that says what was wrong.

Pure functions over a ``Mapping[str, list[str]]`` view of the query string
(Starlette's ``request.query_params.multi_items()`` grouped), so they are unit
tested without a server. A parameter given twice is refused rather than
guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from .._validate import TENANT_ID_MAX_BYTES

#: Highest page number accepted (a 1-based page of at most a few hundred rows).
MAX_PAGE = 10**9

_WHOLE = re.compile(r"[0-9]{1,10}")


class BadParameter(ValueError):
    """A query parameter that cannot be used; the page answers 400 with this message."""

    status = 400


class NotFound(LookupError):
    """Something the URL names does not exist (a tenant, a page past the last); 404."""

    status = 404


def group(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``[("a", "1"), ("a", "2")]`` -> ``{"a": ["1", "2"]}``."""
    out: dict[str, list[str]] = {}
    for key, value in items:
        out.setdefault(key, []).append(value)
    return out


def one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    """The single value of ``name``, or None when absent; refuses it given twice."""
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadParameter(f"give {name} once, not {len(values)} times")
    return values[0]


def page(params: Mapping[str, Sequence[str]], name: str = "page") -> int:
    """A 1-based page number (default 1)."""
    raw = one(params, name)
    if raw is None:
        return 1
    text = raw.strip()
    if not _WHOLE.fullmatch(text) or not 1 <= int(text) <= MAX_PAGE:
        raise BadParameter(
            f"{name} must be a whole number from 1 to {MAX_PAGE:,}, got {_shown(raw)}"
        )
    return int(text)


def whole_number(
    params: Mapping[str, Sequence[str]], name: str, *, default: int, lowest: int, highest: int
) -> int:
    raw = one(params, name)
    if raw is None:
        return default
    text = raw.strip()
    if not _WHOLE.fullmatch(text) or not lowest <= int(text) <= highest:
        raise BadParameter(
            f"{name} must be a whole number from {lowest:,} to {highest:,}, got {_shown(raw)}"
        )
    return int(text)


def choice(
    params: Mapping[str, Sequence[str]], name: str, options: Sequence[str], *, default: str
) -> str:
    raw = one(params, name)
    if raw is None:
        return default
    if raw not in options:
        raise BadParameter(f"{name} must be one of {', '.join(options)}; got {_shown(raw)}")
    return raw


def tenant_id(params: Mapping[str, Sequence[str]], name: str = "id") -> str:
    """A tenant id that could exist: non-empty, no NUL, at most 255 UTF-8 bytes.

    Deliberately not the write path's validation: a lookup must find every
    tenant that exists, including ids that stricter rules would refuse today.
    """
    raw = one(params, name)
    if raw is None:
        raise BadParameter(f"which tenant? Name it in the address: ?{name}=<tenant id>")
    if not raw:
        raise BadParameter(f"{name} is empty; a tenant id has at least one character")
    _text(raw, name)
    return raw


def prefix(params: Mapping[str, Sequence[str]], name: str = "prefix") -> str:
    """A tenant id prefix to filter by ('' for all)."""
    raw = one(params, name) or ""
    _text(raw, name)
    return raw


def _text(raw: str, name: str) -> None:
    if "\x00" in raw:
        raise BadParameter(f"{name} contains a NUL character, which no tenant id holds")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadParameter(f"{name} is not valid UTF-8 text") from None
    if size > TENANT_ID_MAX_BYTES:
        raise BadParameter(
            f"{name} is {size:,} bytes long; tenant ids are at most {TENANT_ID_MAX_BYTES} bytes"
        )


def last_page(rows: int, per_page: int) -> int:
    """How many pages ``rows`` make (at least one, so an empty list still has page 1)."""
    return max((rows + per_page - 1) // per_page, 1)


def check_page(number: int, rows: int, per_page: int, what: str) -> None:
    """Raise :class:`NotFound` for a page past the last one."""
    pages = last_page(rows, per_page)
    if number > pages:
        raise NotFound(
            f"page {number:,} does not exist: {what} has {pages:,} page{'s' if pages > 1 else ''}"
        )


def _shown(raw: str) -> str:
    """A user's value, quoted and bounded, for an error message."""
    return repr(raw if len(raw) <= 40 else raw[:40] + "…")
