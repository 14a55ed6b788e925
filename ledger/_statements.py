"""How the ledger's statements go to psycopg, on either driver: ``$n`` form, prepared or not.

Pure functions of the statement text, shared by the sync and asyncio psycopg
executors (:mod:`ledger._driver`, generated from :mod:`ledger._async_driver`)
and by :mod:`ledger._coalesce`. They are here, and not in the generated
driver, so that both drivers share one conversion cache and the generated
file never imports the asyncio one; they import no driver at all.
"""

from __future__ import annotations

import re
from typing import Any

from ._requests import Params

# psycopg's own placeholder pattern (psycopg/_queries.py): ``%`` and the next
# character, or ``%(name)`` and the next character.
_PLACEHOLDER = re.compile(rb"%(?:\(([^)]+)\).|.)")
_POSITIONAL: dict[str, tuple[bytes, tuple[str, ...]] | None] = {}
_POSITIONAL_MAX = 1024


def positional(sql: str) -> tuple[bytes, tuple[str, ...]] | None:
    """``sql`` with ``$n`` placeholders, and the parameter names in ``$n`` order; cached.

    psycopg converts a ``%(name)s`` statement to PostgreSQL's ``$n`` form on
    every execution, and caches the conversion only for statements of at
    most 4,096 bytes. The reserve and commit statements are longer, so
    psycopg re-parsed each of them per call: about half of the client CPU of
    a reserve->commit cycle (``python -m bench.client_cpu --profile cycle``).
    Converted once here, they run on a raw cursor (``$n`` and a sequence of
    values), which dumps the same values with the same formats (``%(x)s`` is
    ``PyFormat.AUTO``, as on a raw cursor). A repeated name reuses its
    ``$n`` and ``%%`` becomes ``%``, as psycopg does.

    Anything else (positional ``%s``, the ``%b``/``%t`` formats, non-ASCII
    text whose bytes depend on the connection's encoding) answers None: the
    statement then goes through psycopg's own conversion as before.
    """
    try:
        return _POSITIONAL[sql]
    except KeyError:
        pass
    converted = _convert(sql)
    if len(_POSITIONAL) < _POSITIONAL_MAX:  # the ledger's statements: a bounded set
        _POSITIONAL[sql] = converted
    return converted


def _convert(sql: str) -> tuple[bytes, tuple[str, ...]] | None:
    if not sql.isascii():
        return None
    query = sql.encode()
    chunks: list[bytes] = []
    names: dict[str, bytes] = {}
    at = 0
    for match in _PLACEHOLDER.finditer(query):
        chunks.append(query[at : match.start()])
        at = match.end()
        token = match.group(0)
        if token == b"%%":
            chunks.append(b"%")
        elif match.group(1) is not None and token.endswith(b"s"):
            name = match.group(1).decode()
            if name not in names:
                names[name] = b"$%d" % (len(names) + 1)
            chunks.append(names[name])
        else:
            return None
    if not names:  # nothing to bind: psycopg's path costs nothing to convert
        return None
    chunks.append(query[at:])
    return b"".join(chunks), tuple(names)


def values(names: tuple[str, ...], params: Params) -> list[Any] | None:
    """The values of a :func:`positional` statement; None if one is missing (psycopg says which)."""
    try:
        return [params[name] for name in names]
    except KeyError:
        return None


#: The first line of a statement planned for each call's parameters, never
#: prepared (the batch statements, ledger/sql/batches.sql): psycopg prepares a
#: statement after five runs, and PostgreSQL's generic plan for arrays of
#: unknown size was 2.4x slower for batches (python -m bench.batch_profile).
PER_CALL = "/* planned per call"


def prepare_for(sql: str) -> bool | None:
    """psycopg's ``prepare=``: False for :data:`PER_CALL` statements, else its default."""
    return False if sql.startswith(PER_CALL) else None
