"""Tenant isolation through every table and view, for any number of scoped roles (issue 22).

Two roles are isolated one after the other (the second call used to free the
first) and each, also granted the auditor role, must see its own tenant's
rows only, through the tables and the audit views alike, and write no
ledger-wide table. The application role's grants are listed against
:data:`ledger.roles.APPLICATION_GRANTS`, each with its reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine, create_engine, pool, text

import ledger
from ledger import roles
from ledger.audit import AUDIT_VIEWS

pytestmark = pytest.mark.pg_versions

SCOPED = {"ledger_scoped_one": "a", "ledger_scoped_two": "b"}
#: Tables with tenant_id a scoped role may read (certificate_checkpoints: no grant at all).
READABLE = tuple(t for t in roles.TENANT_SCOPED if t in roles.SCOPED_GRANTS)
LEDGER_WIDE = ("certificates", "certificate_baseline", "certificate_checkpoints")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = create_engine(db_url, poolclass=pool.NullPool)
    yield e
    e.dispose()


@pytest.fixture
def populated(db_url: str, engine: Engine) -> str:
    """Rows of tenants a and b in every tenant-scoped table, and two isolated roles."""
    with ledger.Ledger(db_url) as book:
        for tenant in ("a", "b"):
            book.ensure_tenant(tenant, 1_000)
            book.set_allowance(tenant, 100, anchor=datetime(2026, 1, 1, tzinfo=UTC), months=1)
            hold = book.try_reserve(tenant, 10, idempotency_key=f"k-{tenant}")
            book.commit(hold.reservation_id, 5)  # type: ignore[arg-type]
            book.try_reserve(tenant, 10, ttl=timedelta(hours=1))
            assert book.try_reserve(tenant, 10**9).status == "insufficient"
            book.set_threshold(tenant, "spent", spent_microcents=1)  # crossed: an alert
        book.certify()
        book.asof_checkpoint()
    with engine.begin() as conn:  # a parked tenant of each (what restore leaves behind)
        conn.execute(
            text(
                "INSERT INTO ledger.detached_tenants (tenant_id, max_reserved_microcents,"
                " journal_seq, journal_head) VALUES ('a', 0, 0, '\\x00'), ('b', 0, 0, '\\x00')"
                " ON CONFLICT DO NOTHING"
            )
        )
    roles.create_roles(db_url)
    for role in SCOPED:
        roles.enable_row_level_security(db_url, role)
        with engine.begin() as conn:
            conn.execute(text(f"GRANT ledger_auditor TO {role}"))
    return db_url


def _as(engine: Engine, role: str, tenant: str | None) -> Connection:
    conn = engine.connect()
    conn.execute(text(f'SET ROLE "{role}"'))
    if tenant is not None:
        conn.execute(text("SELECT set_config('ledger.tenant_id', :t, false)"), {"t": tenant})
    conn.commit()  # a rollback would undo SET ROLE otherwise
    return conn


@pytest.mark.parametrize("role", sorted(SCOPED))
def test_each_scoped_role_sees_its_own_tenant_through_every_table_and_view(
    populated: str, engine: Engine, role: str
) -> None:
    own = SCOPED[role]
    with engine.connect() as owner:
        for table in READABLE:
            assert (
                owner.execute(
                    text(f"SELECT count(DISTINCT tenant_id) FROM ledger.{table}")
                ).scalar()
                == 2
            ), f"the fixture left {table} with rows of one tenant only"
    with _as(engine, role, own) as conn:
        for table in READABLE:
            seen = conn.execute(text(f"SELECT DISTINCT tenant_id FROM ledger.{table}")).scalars()
            assert sorted(seen) == [own], table
        for view in AUDIT_VIEWS:
            if view in ("certificate_history",):
                continue
            seen = conn.execute(text(f"SELECT DISTINCT tenant_id FROM ledger.{view}")).scalars()
            assert set(seen) <= {own}, view
        for view in ("balances", "journal_entries", "open_holds"):
            assert conn.execute(text(f"SELECT count(*) FROM ledger.{view}")).scalar(), view
        # certificates speak for the whole ledger: none through the view
        assert conn.execute(text("SELECT count(*) FROM ledger.certificate_history")).scalar() == 0
    with _as(engine, role, None) as conn:  # no tenant set: nothing at all
        for name in (*READABLE, *(v for v in AUDIT_VIEWS)):
            assert conn.execute(text(f"SELECT count(*) FROM ledger.{name}")).scalar() == 0, name


@pytest.mark.parametrize("role", sorted(SCOPED))
def test_a_scoped_role_writes_no_other_tenant_and_no_ledger_wide_table(
    populated: str, engine: Engine, role: str
) -> None:
    other = "b" if SCOPED[role] == "a" else "a"
    with engine.connect() as owner:
        before = owner.execute(text("SELECT * FROM ledger.tenants ORDER BY tenant_id")).all()
    with _as(engine, role, SCOPED[role]) as conn:
        changed = conn.execute(
            text("UPDATE ledger.tenants SET max_reserved_microcents = 1 WHERE tenant_id = :t"),
            {"t": other},
        )
        assert changed.rowcount == 0
        conn.rollback()
        refused = [
            "INSERT INTO ledger.certificate_checkpoints (checkpoint_id, tenant_id, journal_seq,"
            " journal_head) VALUES (1, 'OTHER', 1, '\\x00')",
            "INSERT INTO ledger.certificates (snapshot_version, ledger_digest, tenant_count,"
            " active_reservations, conservation_balanced, total_initial_microcents,"
            " total_committed_microcents, aggregate_totals_representable,"
            " committed_since_last_certificate, baseline_before_microcents,"
            " baseline_after_microcents) VALUES (1, '\\x00', 0, 0, true, 0, 0, true, 0, 0, 0)",
            "UPDATE ledger.certificate_baseline SET committed_microcents = 0",
            "DELETE FROM ledger.certificate_baseline",
            "SELECT * FROM ledger.certificates",
            "SELECT * FROM ledger.certificate_checkpoints",
            "INSERT INTO ledger.asof_checkpoints (tenant_id, journal_seq, effective_at, commits,"
            " committed_microcents, refunds, refunded_microcents)"
            " VALUES ('OTHER', 99, now(), 0, 0, 0, 0)",
            "INSERT INTO ledger.tenants (tenant_id, initial_microcents, remaining_microcents,"
            " reserved_microcents, committed_microcents) VALUES ('OTHER', 1, 1, 0, 0)",
            "SELECT setval('ledger.reservation_id_seq', 1)",
            "SELECT ledger.asof_checkpoint()",
            # revision 0010: only the trigger writes the outbox and the spend counter
            "INSERT INTO ledger.alerts (tenant_id, threshold, kind, level_microcents,"
            " spent_microcents, initial_microcents, remaining_microcents, reserved_microcents,"
            " committed_microcents, journal_seq) VALUES ('OTHER', 'x', 'spent', 1, 1, 1, 1, 0,"
            " 0, 1)",
            "UPDATE ledger.alerts SET spent_microcents = 0",
            "UPDATE ledger.threshold_spend SET spent_microcents = 0",
            "INSERT INTO ledger.thresholds (tenant_id, name, spent_microcents)"
            " VALUES ('OTHER', 'x', 1)",
        ]
        for sql in refused:
            with pytest.raises(Exception, match=r"permission denied|row-level security"):
                conn.execute(text(sql.replace("OTHER", other)))
            conn.rollback()
    with engine.connect() as owner:
        assert (
            owner.execute(text("SELECT * FROM ledger.tenants ORDER BY tenant_id")).all() == before
        )
    with ledger.Ledger(populated) as book:
        report = book.verify_journal()
        assert report.ok, report  # no false alarm about the other tenant


@pytest.mark.parametrize("role", sorted(SCOPED))
def test_a_scoped_role_sets_thresholds_and_claims_alerts_of_its_own_tenant_only(
    populated: str, engine: Engine, role: str
) -> None:
    own = SCOPED[role]
    other = "b" if own == "a" else "a"
    with ledger.Ledger(populated) as book, _as(engine, role, own) as conn:
        claimed = book.claim_alerts(10, connection=conn)
        assert [a.tenant_id for a in claimed] == [own]
        assert book.ack_alerts(claimed, connection=conn) == 1
        conn.commit()
        # its own spend crosses its own new threshold: the trigger writes as its owner
        book.set_threshold(own, "more", spent_microcents=6, connection=conn)
        hold = book.try_reserve(own, 1, connection=conn)
        book.commit(hold.reservation_id, 1, tenant_id=own, connection=conn)  # type: ignore[arg-type]
        conn.commit()
        assert [a.threshold for a in book.claim_alerts(10, connection=conn)] == ["more"]
        assert book.thresholds(other, connection=conn) == []
        with pytest.raises(ledger.errors.TenantNotFound):
            book.set_threshold(other, "x", spent_microcents=1, connection=conn)
        conn.rollback()
    with ledger.Ledger(populated) as book:
        pending = book.list_alerts(other, undelivered=True)
        assert [r.alert.threshold for r in pending] == ["spent"]  # untouched


def test_the_first_role_stays_confined_after_a_second_is_isolated(
    populated: str, engine: Engine
) -> None:
    """The old shared ``<table>_others`` policy named only the latest role (finding 2)."""
    roles.enable_row_level_security(populated, "ledger_scoped_two")  # again: idempotent
    with ledger.Ledger(populated) as book, _as(engine, "ledger_scoped_one", "a") as conn:
        assert book.try_reserve("b", 1, connection=conn).status == "missing_tenant"
        assert [t.tenant_id for t in book.snapshot(connection=conn).tenants] == ["a"]
        conn.commit()
        changed = conn.execute(
            text("UPDATE ledger.tenants SET max_reserved_microcents = 1 WHERE tenant_id = 'b'")
        )
        assert changed.rowcount == 0
    with engine.connect() as owner:  # one policy per table, whatever the number of roles
        names = owner.execute(
            text("SELECT DISTINCT policyname FROM pg_policies WHERE schemaname = 'ledger'")
        ).scalars()
        assert list(names) == ["tenant_scope"]


def test_the_as_of_cache_is_written_only_by_its_function(populated: str, engine: Engine) -> None:
    """A forged checkpoint once turned 5 spent into 0 (finding 6); now nobody can insert one."""
    start = datetime(2000, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:  # the fixture's parked rows shadow live tenants: not here
        conn.execute(text("DELETE FROM ledger.detached_tenants"))
    with ledger.Ledger(populated) as book:
        end = datetime.now(UTC)
        truth = book.spend_between(start, end)
        assert sum(t.committed_microcents for t in truth.tenants) > 0
        for role in ("ledger_app", *SCOPED):
            with (
                _as(engine, role, "a") as conn,
                pytest.raises(Exception, match="permission denied"),
            ):
                conn.execute(
                    text(
                        "INSERT INTO ledger.asof_checkpoints (tenant_id, journal_seq,"
                        " effective_at, commits, committed_microcents, refunds,"
                        " refunded_microcents) VALUES ('a', 999, now(), 0, 0, 0, 0)"
                    )
                )
        with _as(engine, "ledger_app", None) as conn:
            book.try_reserve("a", 1, connection=conn)
            assert (
                book.asof_checkpoint(connection=conn).tenants >= 1
            )  # allowed, through the function
            conn.commit()
        assert book.spend_between(start, end) == truth


def _privileges(conn: Connection, role: str) -> dict[str, set[str]]:
    """Every grant ``role`` holds in the schema: table-, column- and sequence-level, and EXECUTE."""
    held: dict[str, set[str]] = {}
    rows = conn.execute(
        text(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = :r AND table_schema = 'ledger'"
        ),
        {"r": role},
    )
    for table, privilege in rows:
        held.setdefault(table, set()).add(privilege)
    rows = conn.execute(
        text(
            "SELECT table_name, column_name, privilege_type"
            " FROM information_schema.column_privileges c"
            " WHERE grantee = :r AND table_schema = 'ledger' AND NOT EXISTS ("
            "   SELECT 1 FROM information_schema.role_table_grants t WHERE t.grantee = c.grantee"
            "   AND t.table_schema = c.table_schema AND t.table_name = c.table_name"
            "   AND t.privilege_type = c.privilege_type)"
        ),
        {"r": role},
    )
    for table, column, privilege in rows:
        held.setdefault(table, set()).add(f"{privilege} ({column})")
    for seq in conn.execute(
        text(
            "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = 'ledger'"
        )
    ).scalars():
        for privilege in ("USAGE", "SELECT", "UPDATE"):
            if conn.execute(
                text("SELECT has_sequence_privilege(:r, :s, :p)"),
                {"r": role, "s": f"ledger.{seq}", "p": privilege},
            ).scalar():
                held.setdefault(seq, set()).add(privilege)
    rows = conn.execute(
        text(
            "SELECT p.oid::regprocedure::text FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace,"
            " aclexplode(p.proacl) AS a"
            " WHERE n.nspname = 'ledger' AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = :r)"
        ),
        {"r": role},
    )
    for signature in rows.scalars():
        held.setdefault(signature.removeprefix("ledger."), set()).add("EXECUTE")
    return held


def test_the_application_role_holds_exactly_the_listed_grants_each_with_a_reason(
    db_url: str, engine: Engine
) -> None:
    with engine.begin() as conn:  # what versions before 0007 granted, and more
        conn.execute(text("CREATE ROLE ledger_app_old NOLOGIN"))
        conn.execute(text("GRANT ALL ON ALL TABLES IN SCHEMA ledger TO ledger_app_old"))
        conn.execute(text("GRANT ALL ON ALL SEQUENCES IN SCHEMA ledger TO ledger_app_old"))
    try:
        for role in ("ledger_app", "ledger_app_old"):
            roles.grant_application(db_url, role)
            with engine.connect() as conn:
                held = _privileges(conn, role)
            expected: dict[str, set[str]] = {
                name: set(privileges)
                for grants in (roles.APPLICATION_GRANTS, roles.APPLICATION_SEQUENCE_GRANTS)
                for name, (privileges, _why) in grants.items()
            }
            expected.update({f: {"EXECUTE"} for f in roles.APPLICATION_FUNCTIONS})
            # SELECT is implied for sequences by nothing: only what was granted.
            assert held == expected, role
        for grants in (roles.APPLICATION_GRANTS, roles.APPLICATION_SEQUENCE_GRANTS):
            assert all(len(why) > 20 for _p, why in grants.values())
        assert all(len(why) > 20 for why in roles.APPLICATION_FUNCTIONS.values())
        with _as(engine, "ledger_app", None) as conn:
            for sql in (
                "SELECT setval('ledger.reservation_id_seq', 1)",  # hold ids could repeat
                "DELETE FROM ledger.certificate_baseline",
                "INSERT INTO ledger.certificate_baseline (id, committed_microcents) VALUES (2, 0)",
                "UPDATE ledger.reservations SET amount_microcents = 0",
                "UPDATE ledger.reservations SET expires_at = NULL",
            ):
                with pytest.raises(Exception, match="permission denied"):
                    conn.execute(text(sql))
                conn.rollback()
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP OWNED BY ledger_app_old"))
            conn.execute(text("DROP ROLE ledger_app_old"))


def test_a_scoped_role_cannot_reserve_at_part_of_a_tree(populated: str, engine: Engine) -> None:
    """Nested budgets (issue 24): the ancestors are invisible to it, so it is refused."""
    with _as(engine, "ledger_scoped_one", "a") as conn:
        # It cannot hang its tenant under one it cannot see.
        with pytest.raises(Exception, match="unknown parent"):
            conn.execute(text("UPDATE ledger.tenants SET parent_id = 'b' WHERE tenant_id = 'a'"))
        conn.rollback()
    with ledger.Ledger(populated) as book:
        book.set_parent("a", "b")
        before = [book.tenant(t) for t in ("a", "b")]
    with _as(engine, "ledger_scoped_one", "a") as conn:
        with pytest.raises(Exception, match="cannot see"):
            conn.execute(text("SELECT * FROM ledger.nested_reserve('a', 10, NULL, NULL, NULL)"))
        conn.rollback()
    with ledger.Ledger(populated) as book:
        assert [book.tenant(t) for t in ("a", "b")] == before
