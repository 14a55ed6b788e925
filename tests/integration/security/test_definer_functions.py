"""Every SECURITY DEFINER function of the ledger pins a safe search path (issue 22, finding 12).

A SECURITY DEFINER function runs with its owner's rights, but resolves
unqualified names with the search path it is given. Without ``pg_temp``
named, and last, PostgreSQL searches the caller's temporary schema *first*
for relations, so a caller's TEMP table can stand in for one the function
reads (PostgreSQL docs, "Writing SECURITY DEFINER Functions Safely"). The
Citus functions made by ``ledger distribute`` are checked on a cluster in
tests/citus/test_distribute.py.
"""

from __future__ import annotations

import psycopg
import pytest

import ledger

pytestmark = pytest.mark.pg_versions

DEFINERS = (
    "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_catalog.pg_proc AS p"
    " WHERE p.pronamespace = 'ledger'::regnamespace AND p.prosecdef ORDER BY 1"
)


def search_path(config: list[str] | None) -> list[str] | None:
    for setting in config or ():
        name, _, value = setting.partition("=")
        if name == "search_path":
            return [part.strip() for part in value.split(",")]
    return None


def test_every_security_definer_function_ends_its_search_path_with_pg_temp(
    raw: psycopg.Connection,
) -> None:
    found = raw.execute(DEFINERS).fetchall()
    # revisions 0006 (the auditor's as-of functions) and 0007 (the as-of cache)
    assert {f for f, _ in found} >= {
        "ledger.balances_at(timestamp with time zone)",
        "ledger.spend_between(timestamp with time zone,timestamp with time zone)",
        "ledger.asof_checkpoint()",
    }
    for function, config in found:
        path = search_path(config)
        assert path is not None, f"{function} runs with the caller's search path"
        assert path[0] == "pg_catalog" and path[-1] == "pg_temp", (function, path)


def test_the_check_reads_a_path_without_pg_temp_as_unsafe() -> None:
    assert search_path(["search_path=pg_catalog"]) == ["pg_catalog"]
    assert search_path(["search_path=pg_catalog, pg_temp"]) == ["pg_catalog", "pg_temp"]
    assert search_path(["work_mem=4MB"]) is None


def test_a_temp_table_does_not_change_what_a_definer_function_reads(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """A caller who puts pg_temp first and shadows the ledger's tables gets the real answers."""
    book.ensure_tenant("real", 100)
    raw.execute("SET search_path = pg_temp, ledger, pg_catalog")
    for table in ("tenants", "detached_tenants", "journal", "asof_checkpoints"):
        raw.execute(f"CREATE TEMP TABLE {table} (LIKE ledger.{table})")
    raw.execute("INSERT INTO pg_temp.tenants SELECT * FROM ledger.tenants")
    raw.execute("UPDATE pg_temp.tenants SET tenant_id = 'fake'")
    rows = raw.execute("SELECT tenant_id FROM ledger.balances_at(now())").fetchall()
    assert rows == [("real",)]
