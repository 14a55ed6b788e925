"""A read-only auditor role: SELECT on the audit views, EXECUTE on the audit functions."""

from __future__ import annotations

import re

from sqlalchemy import text

from . import _validate, errors
from ._engine import EngineLike, as_engine
from ._translate import translate_errors

AUDIT_VIEWS = (
    "balances",
    "conservation_violations",
    "open_holds",
    "reserved_mismatches",
    "certificate_history",
    "journal_entries",
    # revision 0008: the refused spends (refusals), filtered like the others
    "refusal_log",
)

#: Audit functions (revision 0006, docs/asof.md): SECURITY DEFINER, EXECUTE revoked from PUBLIC.
AUDIT_FUNCTIONS = (
    "balances_at(timestamptz)",
    "spend_between(timestamptz, timestamptz)",
)

_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def grant_auditor(
    engine_or_url: EngineLike, role: str = "ledger_auditor", *, schema: str = "ledger"
) -> None:
    """Create ``role`` (NOLOGIN, if missing): SELECT on the audit views, EXECUTE on the functions.

    Run it as the owner of the ledger schema. Give people access by granting
    them the role (``GRANT ledger_auditor TO alice``) or by setting a
    password and LOGIN on it. The views run with their owner's rights, so the
    role needs, and gets, no rights on the tables themselves; they filter by
    ``tenant_visible()`` (revision 0007), so a tenant-scoped role that is
    also an auditor still sees only its own tenant (docs/deployment.md).
    """
    schema = _validate.schema_name(schema)
    if not isinstance(role, str) or not _ROLE_RE.match(role):
        raise errors.InputError(f"role must be a lowercase SQL identifier, got {role!r}")
    engine, owned = as_engine(engine_or_url)
    q = f'"{schema}"'
    try:
        with translate_errors(), engine.begin() as conn:
            conn.execute(
                text(
                    f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
                    f'THEN CREATE ROLE "{role}" NOLOGIN; END IF; END $$'
                )
            )
            # Exactly these grants, however often it runs (and whatever it held before).
            conn.execute(text(f'REVOKE ALL ON ALL TABLES IN SCHEMA {q} FROM "{role}"'))
            conn.execute(text(f'REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {q} FROM "{role}"'))
            conn.execute(text(f'GRANT USAGE ON SCHEMA {q} TO "{role}"'))
            views = ", ".join(f"{q}.{v}" for v in AUDIT_VIEWS)
            conn.execute(text(f'GRANT SELECT ON {views} TO "{role}"'))
            functions = ", ".join(f"{q}.{f}" for f in AUDIT_FUNCTIONS)
            conn.execute(text(f'GRANT EXECUTE ON FUNCTION {functions} TO "{role}"'))
    finally:
        if owned:
            engine.dispose()
