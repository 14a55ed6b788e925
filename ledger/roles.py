"""Least privilege: an application role, an auditor role, and optional tenant isolation.

Run these as the owner of the ledger schema (the role that ran the
migrations). The application role can run every ledger operation but owns
nothing, so it cannot update or delete journal entries, disable the journal's
triggers or drop the CHECK constraints. The auditor role reads the audit
views only. Row-level security, if enabled, confines a tenant-scoped role to
the tenant named by ``SET LOCAL ledger.tenant_id = '...'`` in its transaction.

Every grant is listed below with the statement that needs it
(docs/deployment.md prints the same table); the functions revoke everything
first, so re-running them after an upgrade leaves exactly these grants.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, text

from . import _validate, errors
from ._engine import EngineLike, as_engine
from ._translate import translate_errors
from .audit import grant_auditor

_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: The group role whose members row-level security confines to one tenant
#: (revision 0007's ``caller_is_tenant_scoped()`` names it; cluster-wide).
SCOPED_GROUP = "ledger_tenant_scoped"

#: Table -> (privileges, why the application role needs them).
APPLICATION_GRANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "tenants": (
        ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "every operation reads and updates its tenant row (the compare-and-swap);"
        " ensure_tenant inserts; restore_from_snapshot deletes tenants the snapshot lacks",
    ),
    "reservations": (
        ("SELECT", "INSERT", "DELETE", "UPDATE (created_at)"),
        "try_reserve inserts a hold; commit, release and expiry lock it (SELECT ... FOR"
        " UPDATE needs UPDATE on one column: created_at, which no money rule reads) and"
        " delete it; no amount, tenant or expiry can be rewritten",
    ),
    "journal": (
        ("SELECT", "INSERT"),
        "every state change appends its entry in the same statement; verify_journal reads;"
        " nothing updates or deletes (the triggers refuse it, and the role lacks the grant)",
    ),
    "idempotency_keys": (
        ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "a keyed call claims its key, records its outcome, and forgets keys past retention",
    ),
    "detached_tenants": (
        ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "restore parks a removed tenant's chain head (INSERT ... ON CONFLICT DO UPDATE when"
        " it was parked before); ensure_tenant and restore unpark it (DELETE)",
    ),
    "allowances": (
        ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "set_allowance and clear_allowance write the tenant's schedule; restore drops it",
    ),
    "refusals": (("SELECT", "INSERT"), "a refused spend logs its refusal; nothing rewrites it"),
    "certificates": (("SELECT", "INSERT"), "certify appends a certificate"),
    "certificate_checkpoints": (
        ("SELECT", "INSERT"),
        "certify records every tenant's chain head; verify_journal compares them",
    ),
    "certificate_baseline": (
        ("SELECT", "UPDATE"),
        "certify moves the one baseline row; never inserted or deleted after revision 0001",
    ),
    "asof_checkpoints": (
        ("SELECT",),
        "the as-of queries read the cache; only asof_checkpoint() (the owner's) writes it",
    ),
    "thresholds": (
        ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "set_threshold and clear_threshold write a tenant's thresholds; thresholds() reads",
    ),
    "threshold_spend": (
        ("SELECT", "DELETE"),
        "clear_threshold drops the spend counter with the last threshold; only the trigger"
        " check_thresholds() (the owner's, SECURITY DEFINER) writes it",
    ),
    "alerts": (
        (
            "SELECT",
            "UPDATE (claimed_until)",
            "UPDATE (claimed_by)",
            "UPDATE (attempts)",
            "UPDATE (last_error)",
            "UPDATE (delivered_at)",
        ),
        "claim_alerts leases (FOR UPDATE SKIP LOCKED), ack_alerts and release_alerts"
        " record delivery; only the trigger inserts, and no balance of an alert can change",
    ),
}
#: Sequence -> (privileges, why).
APPLICATION_SEQUENCE_GRANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "reservation_id_seq": (("USAGE",), "nextval draws hold ids; no setval, so ids never repeat"),
    "snapshot_version_seq": (
        ("USAGE", "UPDATE"),
        "snapshots draw a version; restore_from_snapshot sets it to the snapshot's (setval)",
    ),
    "checkpoint_id_seq": (("USAGE",), "certify draws a checkpoint id"),
}
#: Functions revoked from PUBLIC that the application role executes, and why.
APPLICATION_FUNCTIONS: dict[str, str] = {
    "asof_checkpoint()": "Ledger.asof_checkpoint writes the as-of cache from the journal",
}

#: A tenant-scoped role: the single-tenant subset (ledger-wide operations are refused).
SCOPED_GRANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "tenants": (("SELECT", "INSERT", "UPDATE"), "its tenant's operations; no restore"),
    "reservations": APPLICATION_GRANTS["reservations"],
    "journal": APPLICATION_GRANTS["journal"],
    "idempotency_keys": APPLICATION_GRANTS["idempotency_keys"],
    "detached_tenants": (("SELECT", "DELETE"), "ensure_tenant unparks its own tenant"),
    "allowances": APPLICATION_GRANTS["allowances"],
    "refusals": APPLICATION_GRANTS["refusals"],
    "asof_checkpoints": (("SELECT",), "its own tenant's as-of answers"),
    "thresholds": APPLICATION_GRANTS["thresholds"],
    "threshold_spend": APPLICATION_GRANTS["threshold_spend"],
    "alerts": APPLICATION_GRANTS["alerts"],
}
SCOPED_SEQUENCE_GRANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "reservation_id_seq": APPLICATION_SEQUENCE_GRANTS["reservation_id_seq"],
    "snapshot_version_seq": (("USAGE",), "snapshot of its own tenant draws a version"),
}

#: Tables carrying tenant_id: one row-level security policy each (revision 0007).
TENANT_SCOPED = (
    "tenants",
    "reservations",
    "journal",
    "idempotency_keys",
    "detached_tenants",
    "allowances",
    "asof_checkpoints",
    "refusals",
    "certificate_checkpoints",
    "thresholds",  # revision 0010
    "threshold_spend",
    "alerts",
)


def _role(name: str) -> str:
    if not isinstance(name, str) or not _ROLE_RE.match(name):
        raise errors.InputError(f"role must be a lowercase SQL identifier, got {name!r}")
    return name


def _ensure_role(conn: Connection, role: str) -> None:
    conn.execute(
        text(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f'THEN CREATE ROLE "{role}" NOLOGIN; END IF; END $$'
        )
    )


def _grant_exactly(
    conn: Connection,
    q: str,
    role: str,
    tables: dict[str, tuple[tuple[str, ...], str]],
    sequences: dict[str, tuple[tuple[str, ...], str]],
    functions: dict[str, str],
) -> None:
    """Revoke what ``role`` holds in the schema, then grant exactly the lists."""
    conn.execute(text(f'REVOKE ALL ON ALL TABLES IN SCHEMA {q} FROM "{role}"'))
    conn.execute(text(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA {q} FROM "{role}"'))
    conn.execute(text(f'REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {q} FROM "{role}"'))
    conn.execute(text(f'GRANT USAGE ON SCHEMA {q} TO "{role}"'))
    for table, (privileges, _why) in tables.items():
        conn.execute(text(f'GRANT {", ".join(privileges)} ON {q}.{table} TO "{role}"'))
    for sequence, (privileges, _why) in sequences.items():
        conn.execute(text(f'GRANT {", ".join(privileges)} ON SEQUENCE {q}.{sequence} TO "{role}"'))
    for function in functions:
        conn.execute(text(f'GRANT EXECUTE ON FUNCTION {q}.{function} TO "{role}"'))


def grant_application(
    engine_or_url: EngineLike, role: str = "ledger_app", *, schema: str = "ledger"
) -> None:
    """Create ``role`` (NOLOGIN if missing) with exactly what ledger operations need.

    :data:`APPLICATION_GRANTS` lists each grant and the statement that needs
    it. Re-running it replaces whatever the role held before (roles made by
    versions before revision 0007 held more: ``setval`` on the hold ids, say).
    """
    role = _role(role)
    schema = _validate.schema_name(schema)
    engine, owned = as_engine(engine_or_url)
    try:
        with translate_errors(), engine.begin() as conn:
            _ensure_role(conn, role)
            _grant_exactly(
                conn,
                f'"{schema}"',
                role,
                APPLICATION_GRANTS,
                APPLICATION_SEQUENCE_GRANTS,
                APPLICATION_FUNCTIONS,
            )
    finally:
        if owned:
            engine.dispose()


def create_roles(
    engine_or_url: EngineLike,
    *,
    app: str = "ledger_app",
    auditor: str = "ledger_auditor",
    schema: str = "ledger",
) -> None:
    """Both roles at once; give people or services access with ``GRANT role TO login``."""
    grant_application(engine_or_url, app, schema=schema)
    grant_auditor(engine_or_url, _role(auditor), schema=schema)


def enable_row_level_security(
    engine_or_url: EngineLike, role: str = "ledger_tenant_app", *, schema: str = "ledger"
) -> None:
    """Confine ``role`` to the tenant set with ``SET LOCAL ledger.tenant_id``.

    The role joins the group :data:`SCOPED_GROUP` and gets the single-tenant
    grants (:data:`SCOPED_GRANTS`). Every tenant-scoped table carries one
    policy, ``tenant_scope``, on the rule ``tenant_visible(tenant_id)``: a
    member of the group sees and writes its own tenant's rows only (none
    with no tenant set), everyone else every row. The audit views apply the
    same rule, so any number of roles can be isolated and none frees another.
    Ledger-wide tables (certificates, the baseline) it cannot touch at all.
    """
    role = _role(role)
    schema = _validate.schema_name(schema)
    q = f'"{schema}"'
    engine, owned = as_engine(engine_or_url)
    try:
        with translate_errors(), engine.begin() as conn:
            _ensure_role(conn, SCOPED_GROUP)
            _ensure_role(conn, role)
            _grant_exactly(conn, q, role, SCOPED_GRANTS, SCOPED_SEQUENCE_GRANTS, {})
            conn.execute(text(f'GRANT "{SCOPED_GROUP}" TO "{role}"'))
            for table in TENANT_SCOPED:
                _drop_legacy_policies(conn, schema, table)
                conn.execute(text(f"ALTER TABLE {q}.{table} ENABLE ROW LEVEL SECURITY"))
                conn.execute(text(f"DROP POLICY IF EXISTS tenant_scope ON {q}.{table}"))
                conn.execute(
                    text(
                        f"CREATE POLICY tenant_scope ON {q}.{table} "
                        f"USING ({q}.tenant_visible(tenant_id)) "
                        f"WITH CHECK ({q}.tenant_visible(tenant_id))"
                    )
                )
    finally:
        if owned:
            engine.dispose()


def _drop_legacy_policies(conn: Connection, schema: str, table: str) -> None:
    """Drop what versions before 0007 made: ``<table>_others`` and ``<table>_<role>_isolation``."""
    names = conn.execute(
        text(
            "SELECT policyname FROM pg_catalog.pg_policies "
            "WHERE schemaname = :schema AND tablename = :table "
            "AND (policyname = :others OR policyname LIKE :isolation)"
        ),
        {
            "schema": schema,
            "table": table,
            "others": f"{table}_others",
            "isolation": f"{table}\\_%\\_isolation",
        },
    ).scalars()
    for name in list(names):
        conn.execute(text(f'DROP POLICY "{name}" ON "{schema}".{table}'))
