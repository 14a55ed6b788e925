"""How the dashboard reaches PostgreSQL: as a read-only auditor role, one snapshot per page.

:func:`check` runs once, before anything is served: it connects with the
given URL, makes sure the login may act as the auditor role, that the role
can read every audit view and function, and that it can write nothing at
all in the ledger's schema (a superuser, the schema's owner or the
application role is refused). Every failure is a :class:`ledger.errors`
error whose message says what to do.

:class:`Database` then keeps a small pool of connections, each set up with
``SET ROLE`` to that role, ``default_transaction_read_only`` on, a statement
timeout and UTC, and runs each page in one ``REPEATABLE READ READ ONLY``
transaction. So even a bug in a page could not write: the role has no write
privilege and the transaction is read-only. Give the dashboard a login that
holds only the auditor role (docs/dashboard.md) and not even a ``RESET
ROLE`` could gain anything.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .. import _validate, errors
from ..audit import AUDIT_FUNCTIONS, AUDIT_VIEWS

#: The role ``ledger grant-auditor`` creates.
DEFAULT_ROLE = "ledger_auditor"
#: What PostgreSQL may spend on one statement of a page before the page says so.
STATEMENT_TIMEOUT_MS = 15_000
APPLICATION_NAME = "ledger-dashboard"

_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Access:
    """What :func:`check` found: who connects, as which role, and what that role may read."""

    conninfo: str
    schema: str
    role: str
    login: str


def conninfo(url: str) -> str:
    """A libpq URL for psycopg from a ``postgresql://`` or ``postgresql+psycopg://`` URL."""
    if not isinstance(url, str) or not url.strip():
        raise errors.InputError("the database URL is empty")
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The URL itself is never repeated: it may hold a password.
        raise errors.InputError(
            "the database URL is not a PostgreSQL URL; write it as "
            "postgresql://user:password@host:port/database"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        raise errors.InputError(
            f"the database URL is for {parsed.get_backend_name()!r}, not PostgreSQL; write it "
            "as postgresql://user:password@host:port/database"
        )
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def role_name(role: str) -> str:
    if not isinstance(role, str) or not _ROLE_RE.match(role):
        raise errors.InputError(f"role must be a lowercase SQL identifier, got {role!r}")
    return role


def _connect_error(exc: psycopg.Error) -> errors.DatabaseError:
    detail = " ".join(str(exc).split())[:400] or type(exc).__name__
    return errors.DatabaseError(
        f"could not connect to PostgreSQL ({detail}); check the host, port, database, "
        "user and password of the database URL (--database-url or LEDGER_DATABASE_URL)"
    )


_FACTS = """
SELECT current_user AS login,
       r.oid IS NOT NULL AS role_exists,
       COALESCE(pg_has_role(current_user, r.oid, 'MEMBER'), false) AS is_member,
       COALESCE(r.rolsuper OR r.rolbypassrls, false) AS role_is_superuser,
       n.oid IS NOT NULL AS schema_exists,
       r.oid IS NOT NULL AND n.oid IS NOT NULL
           AND has_schema_privilege(r.oid, n.oid, 'USAGE') AS role_has_usage,
       r.oid IS NOT NULL AND n.oid IS NOT NULL
           AND has_schema_privilege(r.oid, n.oid, 'CREATE') AS role_may_create
FROM (SELECT 1) AS one
LEFT JOIN pg_roles AS r ON r.rolname = %(role)s
LEFT JOIN pg_namespace AS n ON n.nspname = %(schema)s
"""

_RELATIONS = """
SELECT c.relname AS name, c.relkind IN ('v', 'm') AS is_view,
       has_table_privilege(r.oid, c.oid, 'SELECT') AS readable,
       has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS writable
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
CROSS JOIN (SELECT oid FROM pg_roles WHERE rolname = %(role)s) AS r
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm')
ORDER BY c.relname
"""

_FUNCTIONS = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS signature,
       has_function_privilege(r.oid, p.oid, 'EXECUTE') AS callable
FROM pg_proc AS p
JOIN pg_namespace AS n ON n.oid = p.pronamespace
CROSS JOIN (SELECT oid FROM pg_roles WHERE rolname = %(role)s) AS r
WHERE n.nspname = %(schema)s AND p.proname = ANY(%(names)s)
"""


def _function_key(signature: str) -> str:
    """``spend_between(start_at timestamp with time zone, ...)`` -> ``spend_between``."""
    return signature.split("(", 1)[0]


def check(url: str, *, schema: str = "ledger", role: str = DEFAULT_ROLE) -> Access:
    """Connect once and make sure the dashboard can run as ``role``, reading only.

    Raises :class:`~ledger.errors.InputError` for a bad URL, schema or role
    name, :class:`~ledger.errors.DatabaseError` when the server cannot be
    reached, :class:`~ledger.errors.SchemaNotMigrated` when the audit views
    are missing, and :class:`~ledger.errors.PermissionDenied` when the login
    or the role is not what a read-only dashboard needs.
    """
    info = conninfo(url)
    schema = _validate.schema_name(schema)
    role = role_name(role)
    try:
        conn = psycopg.connect(
            info, autocommit=True, connect_timeout=10, application_name=APPLICATION_NAME
        )
    except psycopg.Error as exc:
        raise _connect_error(exc) from exc
    try:
        with conn:
            return _check(conn, info, schema, role)
    except psycopg.Error as exc:
        raise errors.DatabaseError(
            f"PostgreSQL refused the dashboard's checks: {' '.join(str(exc).split())[:400]}"
        ) from exc


def _check(conn: psycopg.Connection[Any], info: str, schema: str, role: str) -> Access:
    args = {"role": role, "schema": schema}
    facts = conn.execute(_FACTS, args).fetchone()
    assert facts is not None
    login, role_exists, is_member, superuser, schema_exists, usage, may_create = facts
    if not schema_exists:
        raise errors.SchemaNotMigrated(
            f"this database has no schema {schema!r}: migrate it first (`ledger migrate`), "
            "or name the ledger's schema with --schema"
        )
    if not role_exists:
        raise errors.PermissionDenied(
            f"role {role!r} does not exist; create it as the owner of the ledger schema "
            f"with `ledger grant-auditor {role}`"
        )
    relations = {
        name: (is_view, readable, writable)
        for name, is_view, readable, writable in conn.execute(_RELATIONS, args).fetchall()
    }
    missing = [v for v in AUDIT_VIEWS if not relations.get(v, (False,))[0]]
    functions = {
        _function_key(sig): callable_
        for sig, callable_ in conn.execute(
            _FUNCTIONS, {**args, "names": [_function_key(f) for f in AUDIT_FUNCTIONS]}
        ).fetchall()
    }
    missing += [f for f in AUDIT_FUNCTIONS if _function_key(f) not in functions]
    if missing:
        raise errors.SchemaNotMigrated(
            f"schema {schema!r} lacks the audit views and functions {', '.join(missing)}: "
            "it is not migrated to the newest revision; run `ledger migrate` first"
        )
    writable = sorted(name for name, (_, _, w) in relations.items() if w)
    if superuser or writable or may_create:
        what = (
            "is a superuser (or bypasses row-level security)"
            if superuser
            else f"can change {schema}.{writable[0]}"
            if writable
            else f"can create objects in schema {schema!r}"
        )
        raise errors.PermissionDenied(
            f"role {role!r} {what}; the dashboard runs only as a read-only role, such as "
            "the one `ledger grant-auditor` creates"
        )
    unreadable = [v for v in AUDIT_VIEWS if not relations[v][1]]
    unreadable += [f for f in AUDIT_FUNCTIONS if not functions[_function_key(f)]]
    if not usage or unreadable:
        what = ", ".join(unreadable) or f"schema {schema!r}"
        raise errors.PermissionDenied(
            f"role {role!r} cannot read {what}; as the owner of the ledger schema, run "
            f"`ledger grant-auditor {role}`"
        )
    if not is_member:
        raise errors.PermissionDenied(
            f"login {login!r} may not act as role {role!r}; as the owner, run "
            f'GRANT "{role}" TO "{login}" (or connect as a login that holds the role)'
        )
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("SELECT 1 FROM {}.balances LIMIT 1").format(sql.Identifier(schema)))
    return Access(info, schema, role, str(login))


class Database:
    """A small pool of auditor connections; :meth:`snapshot` runs one page's reads."""

    def __init__(self, access: Access, *, max_size: int = 4) -> None:
        self.access = access
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            access.conninfo,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=10,
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            kwargs={"connect_timeout": 10, "application_name": APPLICATION_NAME},
            name="ledger-dashboard",
        )

    async def _configure(self, conn: AsyncConnection[Any]) -> None:
        await conn.set_autocommit(True)
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.access.role)))
        await conn.execute("SET default_transaction_read_only = on")
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('TimeZone', 'UTC', false)",
            (f"{STATEMENT_TIMEOUT_MS}ms",),
        )
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)

    async def open(self) -> None:
        # wait=False: a database that is down now makes pages answer 503, not the server fail.
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection inside a ``REPEATABLE READ READ ONLY`` transaction, for one page."""
        async with self._pool.connection() as conn, conn.transaction():
            yield conn
