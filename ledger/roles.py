"""Least privilege: an application role, an auditor role, and optional tenant isolation.

Run these as the owner of the ledger schema (the role that ran the
migrations). The application role can run every ledger operation but owns
nothing, so it cannot update or delete journal entries, disable the journal's
triggers or drop the CHECK constraints. The auditor role reads the audit
views only. Row-level security, if enabled, confines a tenant-scoped role to
the tenant named by ``SET LOCAL ledger.tenant_id = '...'`` in its transaction.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, text

from . import _validate, errors
from ._engine import EngineLike, as_engine
from ._translate import translate_errors
from .audit import AUDIT_FUNCTIONS, grant_auditor

_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: Tables the application writes through the ledger's statements.
WRITABLE = (
    "tenants",
    "reservations",
    "detached_tenants",
    "idempotency_keys",
    "certificate_baseline",
    # periods: set_allowance / clear_allowance write a tenant's allowance
    "allowances",
)
#: Tables it may only append to and read.
#: (``refusals``: the spend statements log refusals there; nothing rewrites them.)
APPEND_ONLY = (
    "journal",
    "certificates",
    "certificate_checkpoints",
    "refusals",
    "asof_checkpoints",
)
#: Tables carrying tenant_id, isolated by row-level security when enabled.
TENANT_SCOPED = (
    "tenants",
    "reservations",
    "journal",
    "idempotency_keys",
    "detached_tenants",
    "allowances",
    "asof_checkpoints",
    "refusals",
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


def grant_application(
    engine_or_url: EngineLike, role: str = "ledger_app", *, schema: str = "ledger"
) -> None:
    """Create ``role`` (NOLOGIN if missing) with exactly what ledger operations need."""
    role = _role(role)
    schema = _validate.schema_name(schema)
    q = f'"{schema}"'
    engine, owned = as_engine(engine_or_url)
    try:
        with translate_errors(), engine.begin() as conn:
            _ensure_role(conn, role)
            conn.execute(text(f'GRANT USAGE ON SCHEMA {q} TO "{role}"'))
            writable = ", ".join(f"{q}.{t}" for t in WRITABLE)
            conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {writable} TO "{role}"'))
            append = ", ".join(f"{q}.{t}" for t in APPEND_ONLY)
            conn.execute(text(f'GRANT SELECT, INSERT ON {append} TO "{role}"'))
            conn.execute(text(f'GRANT USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA {q} TO "{role}"'))
            conn.execute(text(f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {q} TO "{role}"'))
            conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA {q} TO "{role}"'))
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

    The role gets the application grants plus a policy on every tenant-scoped
    table: rows of other tenants are invisible and cannot be written, and
    with no tenant set it sees nothing. Other roles are not affected.
    """
    role = _role(role)
    schema = _validate.schema_name(schema)
    grant_application(engine_or_url, role, schema=schema)
    q = f'"{schema}"'
    engine, owned = as_engine(engine_or_url)
    try:
        with translate_errors(), engine.begin() as conn:
            for table in TENANT_SCOPED:
                policy = f"{table}_{role}_isolation"
                conn.execute(text(f"ALTER TABLE {q}.{table} ENABLE ROW LEVEL SECURITY"))
                conn.execute(text(f'DROP POLICY IF EXISTS "{policy}" ON {q}.{table}'))
                conn.execute(
                    text(
                        f'CREATE POLICY "{policy}" ON {q}.{table} TO "{role}" '
                        "USING (tenant_id = current_setting('ledger.tenant_id', true)) "
                        "WITH CHECK (tenant_id = current_setting('ledger.tenant_id', true))"
                    )
                )
                # Roles without a policy of their own keep seeing everything.
                everyone = f"{table}_others"
                conn.execute(text(f'DROP POLICY IF EXISTS "{everyone}" ON {q}.{table}'))
                conn.execute(
                    text(
                        f'CREATE POLICY "{everyone}" ON {q}.{table} '
                        f"USING (NOT pg_has_role(current_user, '{role}', 'MEMBER')) "
                        f"WITH CHECK (NOT pg_has_role(current_user, '{role}', 'MEMBER'))"
                    )
                )
            # The as-of audit functions run with their owner's rights, past
            # these policies: a tenant-scoped role asks Ledger.balances_at,
            # which reads the tables as the role.
            functions = ", ".join(f"{q}.{f}" for f in AUDIT_FUNCTIONS)
            conn.execute(text(f'REVOKE EXECUTE ON FUNCTION {functions} FROM "{role}"'))
    finally:
        if owned:
            engine.dispose()
