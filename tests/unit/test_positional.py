"""The executor's own ``%(name)s`` -> ``$n`` conversion says exactly what psycopg's would.

The ledger's own connections run named statements on raw cursors, converted
once (``ledger._executor.positional``), instead of letting psycopg re-parse
statements longer than its 4 KiB cache limit on every call. The statement
PostgreSQL receives and the order of its values must be psycopg's, for every
named query.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
from psycopg._queries import _query2pg_nocache
from psycopg.adapt import PyFormat

from ledger import _queries
from ledger._executor import positional, values


def _psycopg(sql: str) -> tuple[bytes, tuple[str, ...]]:
    query, _formats, order, _parts = _query2pg_nocache(sql.encode(), "utf-8")
    return query, tuple(order or ())


@pytest.mark.parametrize("schema", ["ledger", "tenant_budgets"])
def test_every_named_query_converts_as_psycopg_does(schema: str) -> None:
    queries = _queries.for_schema(schema)
    converted = 0
    for f in fields(queries):
        sql = getattr(queries, f.name)
        mine = positional(sql)
        if mine is None:  # nothing to bind, or %(x)b/%(x)t: psycopg's own path runs it
            formats = _query2pg_nocache(sql.encode(), "utf-8")[1]
            assert any(f is not PyFormat.AUTO for f in formats) or "%(" not in sql, f.name
            continue
        assert mine == _psycopg(sql), f.name
        converted += 1
    assert converted > 20


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT %(a)s, %(b)s, %(a)s",
        "SELECT %(a)s WHERE x LIKE 'a%%'",
        "SELECT '100%%', %(long_name_1)s::bigint",
    ],
)
def test_repeated_names_and_escapes_match_psycopg(sql: str) -> None:
    assert positional(sql) == _psycopg(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",  # nothing to bind
        "SELECT %s",  # positional
        "SELECT %(a)b",  # binary format
        "SELECT %(a)t",  # text format
        "SELECT %(a)s, 'é'",  # bytes depend on the connection's encoding
    ],
)
def test_anything_else_is_left_to_psycopg(sql: str) -> None:
    assert positional(sql) is None


def test_values_follow_the_placeholders_and_a_missing_one_is_left_to_psycopg() -> None:
    converted = positional("SELECT %(b)s, %(a)s, %(b)s")
    assert converted == (b"SELECT $1, $2, $1", ("b", "a"))
    assert values(converted[1], {"a": 1, "b": 2, "unused": 3}) == [2, 1]
    assert values(converted[1], {"a": 1}) is None
