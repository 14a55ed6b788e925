"""Every statement ``ledger distribute`` sends to make its functions, as a reviewable snapshot.

The routed, shard-group and keyed functions are generated from the named
queries (ledger/citus/functions.py, templates in ledger/sql/citus/). This
runs that generation against a stand-in for a Citus coordinator (a fixed
catalog: one shard group, no function made yet, types by parameter name)
and compares every statement it sends with tests/unit/snapshots/, so a
change to what runs on the workers is a plain SQL diff in review.

After an intended change: ``LEDGER_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_citus_functions.py``
and read the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from ledger._queries import for_schema
from ledger.citus import functions
from ledger.citus.functions import ROUTED_STATEMENTS
from ledger.citus.keyed import KEYED

SNAPSHOTS = Path(__file__).parent / "snapshots"
SCHEMA = "ledger"
TENANT_KEYED = ["certificate_checkpoints", "idempotency_keys", "journal", "reservations", "tenants"]
#: One shard group (every group's functions differ only in these names):
#: anchor shard id -> {table: its shard}.
GROUPS = {102008: {t: f'"{SCHEMA}".{t}_{102008 + i * 32}' for i, t in enumerate(TENANT_KEYED)}}
#: journal_hash overloads the catalog holds: (arguments, body).
JOURNAL_HASH = [("prev bytea, tenant text", "SELECT sha256(prev || convert_to(tenant, 'UTF8'))")]

#: What the server would say a parameter's type is, by its name.
PARAMETER_TYPES = {
    "amount": "bigint",
    "actual": "bigint",
    "budget": "bigint",
    "cap": "bigint",
    "reservation_id": "bigint",
    "ttl_us": "bigint",
    "expires_at": "timestamp with time zone",
    "request_hash": "bytea",
    "outcome": "jsonb",
}
#: And the columns a statement returns (the rest: status, tenant_id, remaining).
COLUMNS = {
    "idempotency_claim": [("claimed", "boolean")],
    "idempotency_read": [("request_hash", "bytea"), ("outcome", "jsonb")],
    "idempotency_record": [("recorded", "boolean")],
    "idempotency_unclaim": [("unclaimed", "boolean")],
    "lock_tenant": [("tenant_id", "text")],
    "lock_hold": [("reservation_id", "bigint")],
}


class _Result:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None


class _Savepoint:
    def commit(self) -> None:
        pass

    def rollback(self) -> None:  # pragma: no cover - every statement describes here
        raise AssertionError("rolled back")


class FakeCoordinator:
    """Answers the catalog reads of ledger.citus.functions; records the DDL it is sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def execute(self, statement: Any, params: Any = None) -> _Result:
        sql = str(statement)
        if "pg_get_function_arguments" in sql:
            return _Result(list(JOURNAL_HASH) if params["f"] == "journal_hash" else [])
        if "shard_name(" in sql:
            rows = [(a, t, s) for a, shards in GROUPS.items() for t, s in shards.items()]
            return _Result(rows)
        if sql.lstrip().startswith("DROP"):
            self.sent.append(sql)
            return _Result([])
        return _Result([])  # no function made yet, nothing stale

    def exec_driver_sql(self, sql: str) -> None:
        self.sent.append(sql)

    def begin_nested(self) -> _Savepoint:
        return _Savepoint()


def _fake_describe(statements: dict[str, str]) -> Any:
    def describe(conn: Any, body: str) -> tuple[list[str], list[tuple[str, str]]]:
        name = statements[body]
        params = functions.routed_parameters(getattr(for_schema(SCHEMA), name))
        types = [PARAMETER_TYPES.get(p, "text") for p in params]
        columns = COLUMNS.get(
            name, [("status", "text"), ("tenant_id", "text"), ("remaining", "bigint")]
        )
        return types, columns

    return describe


def _generated(monkeypatch: pytest.MonkeyPatch) -> str:
    queries = for_schema(SCHEMA)
    bodies = {}
    for name in {*ROUTED_STATEMENTS, *(op.statement for op in KEYED.values())}:
        sql = getattr(queries, name)
        params = functions.routed_parameters(sql)
        body = re.sub(r"%\((\w+)\)s", lambda m, p=params: f"${p.index(m.group(1)) + 1}", sql)
        bodies[body] = name
    monkeypatch.setattr(functions, "_describe_statement", _fake_describe(bodies))
    conn = FakeCoordinator()
    changed: list[str] = []
    functions.create_routed(conn, SCHEMA, TENANT_KEYED, changed)  # type: ignore[arg-type]
    return "\n\n".join(f"{s.rstrip()};" for s in conn.sent) + "\n"


def test_the_generated_functions_match_the_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = _generated(monkeypatch)
    snapshot = SNAPSHOTS / "citus_functions.sql"
    if os.environ.get("LEDGER_UPDATE_SNAPSHOTS"):
        snapshot.write_text(rendered, encoding="utf-8")
    assert rendered == snapshot.read_text(encoding="utf-8"), (
        "the generated Citus functions changed; if intended, run with LEDGER_UPDATE_SNAPSHOTS=1 "
        "and review the diff of tests/unit/snapshots/citus_functions.sql"
    )


def test_every_routed_statement_and_keyed_operation_is_in_the_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered = _generated(monkeypatch)
    queries = for_schema(SCHEMA)
    for name in ROUTED_STATEMENTS:
        function = functions.routed_function_name(name, getattr(queries, name))
        assert f'FUNCTION "{SCHEMA}".{function}(' in rendered
        for anchor in GROUPS:
            assert f'FUNCTION "{SCHEMA}".{function}_s{anchor}(' in rendered
    for name in KEYED:
        assert f'FUNCTION "{SCHEMA}".{functions.keyed_function_name(queries, name)}(' in rendered
