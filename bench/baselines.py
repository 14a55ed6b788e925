"""The implementations the ledger is measured against, all on the same tables.

- ``naive``: how most applications write it: one transaction per operation,
  ``SELECT ... FOR UPDATE``, check in Python, then separate UPDATE/INSERT.
- ``nojournal``: the ledger's own single-statement compare-and-swap without
  the journal entry and chain update, to price the journal.

Both run through SQLAlchemy and psycopg like the ledger, so the comparison is
about the SQL, not the driver. They exist only for benchmarking.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, text

NOJOURNAL_RESERVE = text("""
WITH rid AS MATERIALIZED (SELECT nextval('ledger.reservation_id_seq') AS id),
applied AS (
    UPDATE ledger.tenants AS t
    SET remaining_microcents = t.remaining_microcents - CAST(:amount AS bigint),
        reserved_microcents = t.reserved_microcents + CAST(:amount AS bigint)
    WHERE t.tenant_id = :tenant_id
      AND t.remaining_microcents >= CAST(:amount AS bigint)
      AND t.reserved_microcents <= 9223372036854775807 - CAST(:amount AS bigint)
      AND (t.max_reserved_microcents = 0
           OR t.reserved_microcents <= t.max_reserved_microcents - CAST(:amount AS bigint))
    RETURNING t.tenant_id, t.remaining_microcents
), hold AS (
    INSERT INTO ledger.reservations (tenant_id, reservation_id, amount_microcents)
    SELECT a.tenant_id, (SELECT id FROM rid), CAST(:amount AS bigint) FROM applied AS a
    RETURNING reservation_id
)
SELECT h.reservation_id FROM hold AS h
""")

NOJOURNAL_COMMIT = text("""
WITH hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount FROM ledger.reservations
    WHERE reservation_id = CAST(:reservation_id AS bigint) AND tenant_id = :tenant_id
    FOR UPDATE
), applied AS (
    UPDATE ledger.tenants AS t
    SET remaining_microcents = t.remaining_microcents
            - (CAST(:actual AS bigint) - (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents + CAST(:actual AS bigint)
    WHERE t.tenant_id = (SELECT tenant_id FROM hold)
      AND t.committed_microcents <= 9223372036854775807 - CAST(:actual AS bigint)
      AND t.remaining_microcents >= CAST(:actual AS bigint) - (SELECT amount FROM hold)
    RETURNING t.tenant_id
), gone AS (
    DELETE FROM ledger.reservations AS r
    WHERE r.reservation_id = CAST(:reservation_id AS bigint)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING 1
)
SELECT count(*) FROM gone
""")


class NoJournal:
    """Same client path as the ledger's own (its psycopg pool, autocommit, ``$n`` statements).

    Since the ledger keeps its own connections when made from a URL
    (ledger/_pool.py), this baseline does too, so that journaled/journal-less
    compares statements, not pools.
    """

    def __init__(self, engine: Engine) -> None:
        from sqlalchemy.dialects.postgresql import psycopg as dialect

        from ledger._executor import positional
        from ledger._pool import OwnPool

        d = dialect.dialect()  # type: ignore[no-untyped-call]
        self.reserve = NOJOURNAL_RESERVE.compile(dialect=d)
        self.commit = NOJOURNAL_COMMIT.compile(dialect=d)
        self._converted = {id(c): positional(str(c)) for c in (self.reserve, self.commit)}
        self.pool = OwnPool(engine)

    def _one(self, compiled: Any, params: dict[str, Any]) -> Any:
        conn = self.pool.get()
        try:
            converted = self._converted[id(compiled)]
            bound = compiled.construct_params(params)
            with psycopg.RawCursor(conn) as cur:
                assert converted is not None
                cur.execute(converted[0], [bound[name] for name in converted[1]])
                row = cur.fetchone()
                assert row is not None
                return row[0]
        finally:
            self.pool.put(conn)

    def close(self) -> None:
        self.pool.dispose()

    def cycle(self, tenant: str, amount: int, actual: int) -> None:
        rid = self._one(self.reserve, {"tenant_id": tenant, "amount": amount})
        assert rid is not None, "benchmark budgets are sized so that reserves never fail"
        done = self._one(
            self.commit, {"reservation_id": rid, "tenant_id": tenant, "actual": actual}
        )
        assert done == 1


class Naive:
    """SELECT ... FOR UPDATE, decide in Python, write with separate statements."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _reserve(self, conn: Connection, tenant: str, amount: int) -> int:
        row: Any = conn.execute(
            text(
                "SELECT remaining_microcents, reserved_microcents, max_reserved_microcents"
                " FROM ledger.tenants WHERE tenant_id = :t FOR UPDATE"
            ),
            {"t": tenant},
        ).one()
        if row.remaining_microcents < amount:
            raise AssertionError("benchmark budgets are sized so that reserves never fail")
        conn.execute(
            text(
                "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents - :a,"
                " reserved_microcents = reserved_microcents + :a WHERE tenant_id = :t"
            ),
            {"a": amount, "t": tenant},
        )
        rid: int = conn.execute(text("SELECT nextval('ledger.reservation_id_seq')")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO ledger.reservations (tenant_id, reservation_id, amount_microcents)"
                " VALUES (:t, :r, :a)"
            ),
            {"t": tenant, "r": rid, "a": amount},
        )
        return rid

    def _commit(self, conn: Connection, tenant: str, rid: int, actual: int) -> None:
        hold: Any = conn.execute(
            text(
                "SELECT amount_microcents FROM ledger.reservations"
                " WHERE tenant_id = :t AND reservation_id = :r FOR UPDATE"
            ),
            {"t": tenant, "r": rid},
        ).one()
        row: Any = conn.execute(
            text("SELECT remaining_microcents FROM ledger.tenants WHERE tenant_id = :t FOR UPDATE"),
            {"t": tenant},
        ).one()
        delta = actual - hold.amount_microcents
        if delta > row.remaining_microcents:
            raise AssertionError("benchmark actuals never overrun")
        conn.execute(
            text(
                "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents - :d,"
                " reserved_microcents = reserved_microcents - :h,"
                " committed_microcents = committed_microcents + :a WHERE tenant_id = :t"
            ),
            {"d": delta, "h": hold.amount_microcents, "a": actual, "t": tenant},
        )
        conn.execute(
            text("DELETE FROM ledger.reservations WHERE tenant_id = :t AND reservation_id = :r"),
            {"t": tenant, "r": rid},
        )

    def cycle(self, tenant: str, amount: int, actual: int) -> None:
        with self.engine.begin() as conn:
            rid = self._reserve(conn, tenant, amount)
        with self.engine.begin() as conn:
            self._commit(conn, tenant, rid, actual)


def pgbench_script(statements: Any, tenants: int) -> str:
    """The ledger's own reserve and commit statements as a pgbench script."""

    def as_pgbench(sql: str) -> str:
        sql = sql.replace("%(tenant_id)s", "('t' || :tid)")
        for name in ("ikey", "ttl_us", "expires_at"):
            sql = sql.replace(f"%({name})s", "NULL")
        sql = re.sub(r"%\((\w+)\)s", r":\1", sql).replace("%%", "%")
        # One line per command for pgbench: drop the statements' own -- comments
        # first, or the first one would comment out the rest of the line.
        sql = re.sub(r"--[^\n]*", "", sql)
        return " ".join(sql.split())

    reserve = as_pgbench(statements.try_reserve)
    commit = as_pgbench(statements.commit_for_tenant)
    return (
        f"\\set tid random(0, {tenants - 1})\n"
        "\\set amount 1000\n"
        "\\set actual 900\n"
        f"{reserve}\n\\gset\n"
        f"{commit}\n"
    )
