"""Refuse ledger-wide operations to a role that row-level security confines to one tenant.

``ledger roles isolate`` (:func:`ledger.roles.enable_row_level_security`)
gives a role a policy on the tenant tables: it sees and writes only the
tenant named by ``SET LOCAL ledger.tenant_id``. Operations on that tenant are
fine. Operations that speak for the whole ledger are not: a certificate it
issued would cover one tenant yet enter the ledger's history and move the
certificate baseline; a restore, an expiry sweep or key pruning would act on
its slice only; ``verify_journal`` would see the certificates' checkpoints
of tenants whose journal it cannot read and report false discrepancies.

:func:`refuse_tenant_scoped` is the check. It asks PostgreSQL, inside the
operation's own transaction, whether row-level security is active for the
current role on the tenants table *and* the role is a member of a role that
has a policy of its own there (the isolation policy; the catch-all policy for
everyone else is granted to PUBLIC). The owner and superusers bypass
row-level security, and ``ledger_app`` is no member of the isolated role, so
neither is affected.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from . import errors
from ._db import execute

TENANT_SCOPED = text(
    """
SELECT row_security_active(format('%I.tenants', CAST(:schema AS text))) AND EXISTS (
    SELECT 1
    FROM pg_catalog.pg_policy AS p
    JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL unnest(p.polroles) AS r(role_oid)
    WHERE n.nspname = CAST(:schema AS text) AND c.relname = 'tenants'
      AND r.role_oid <> 0
      AND pg_has_role(current_user, r.role_oid, 'MEMBER')
) AS scoped
"""
)


def refuse_tenant_scoped(conn: Any, schema: str, operation: str) -> None:
    """Raise :class:`~ledger.errors.TenantScopedRole` if ``conn``'s role is confined to a tenant.

    Call it first, on the connection the operation runs on (its transaction).
    """
    rows = execute(conn, TENANT_SCOPED, {"schema": schema})
    if rows and rows[0].scoped:
        raise errors.TenantScopedRole(operation)
