"""The Citus wing's SQL: ``ledger/sql/citus/*.sql``, read like the rest of ``ledger/sql/``.

The same ``-- name: <name>`` blocks as the ledger's statements
(:func:`ledger._queries.read_folder`), in three files: ``distribute.sql`` (the DDL
of ``ledger distribute``), ``catalog.sql`` (what it reads to decide what to
do) and ``functions.sql`` (templates of the PL/pgSQL functions it
generates). They are not :class:`~ledger._queries.Queries` fields: a ledger
never runs them, only ``ledger distribute`` does.

:func:`render` fills a statement's ``{placeholders}`` in one pass (a value put
in is never scanned again, so the named statements spliced into the
templates are left as they are) and refuses a placeholder without a value.
"""

from __future__ import annotations

import functools
import re

from .._queries import read_folder

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@functools.cache
def statements() -> dict[str, str]:
    """Every named statement of ``ledger/sql/citus/*.sql``."""
    return read_folder("sql", "citus")


def render(name: str, **values: object) -> str:
    """Statement ``name`` with each ``{placeholder}`` replaced by ``values[placeholder]``."""
    template = statements()[name]

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"ledger/sql/citus: {name} needs a value for {{{key}}}")
        return str(values[key])

    return _PLACEHOLDER.sub(fill, template)


def render_body(name: str, **values: object) -> str:
    """A function body template, with the first and last newline the file leaves out."""
    return f"\n{render(name, **values)}\n"
