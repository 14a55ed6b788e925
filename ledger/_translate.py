"""Driver errors become ledger errors here, at the boundary, and nowhere else.

Every psycopg or SQLAlchemy exception is mapped by SQLSTATE to a
:mod:`ledger.errors` type with a message that says what to do; the original
stays attached as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc

from . import errors

_SQLSTATE_ERRORS: dict[str, type[errors.DatabaseError]] = {
    "40001": errors.SerializationConflict,
    "40P01": errors.DeadlockDetected,
    "55P03": errors.LockTimeout,
    "57014": errors.StatementTimeout,
    "42P01": errors.SchemaNotMigrated,
    "3F000": errors.SchemaNotMigrated,
    "42883": errors.SchemaNotMigrated,
    "42501": errors.PermissionDenied,
    "25006": errors.ReadOnlyDatabase,
}


def _driver_error(exc: BaseException) -> BaseException:
    """The psycopg exception behind a SQLAlchemy or framework wrapper."""
    seen = exc
    while seen is not None:
        if getattr(seen, "sqlstate", None) is not None or isinstance(seen, psycopg.Error):
            return seen
        seen = getattr(seen, "orig", None) or seen.__cause__  # type: ignore[assignment]
    return exc


#: SQLSTATEs raised by revision 0010's tree_guard() trigger.
_TREE_ERRORS: dict[str, type[errors.TreeError]] = {
    "LG010": errors.TreeCycle,
    "LG011": errors.TreeTooDeep,
    "LG012": errors.UnknownParent,
}


def translate(exc: BaseException) -> errors.LedgerError:
    """Map a driver error to a ledger error by SQLSTATE, with an actionable message."""
    orig = _driver_error(exc)
    sqlstate = getattr(orig, "sqlstate", None)
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(orig).splitlines()[0]
    if sqlstate in ("23001", "23502", "23503", "23505", "23514", "23P01"):
        constraint = getattr(diag, "constraint_name", None)
        return errors.ConstraintViolation(
            constraint,
            f"PostgreSQL refused the write with constraint {constraint!r} ({primary}); "
            "nothing was applied",
            sqlstate=sqlstate,
        )
    if sqlstate == "LG002":
        return errors.DatabaseError(
            f"{primary}: the journal is append-only; record a correction as a new entry",
            sqlstate=sqlstate,
        )
    tree_error = _TREE_ERRORS.get(sqlstate or "")
    if tree_error is not None:
        return tree_error(f"{primary}; nothing changed")
    if sqlstate == "LG001":
        return errors.DatabaseError(
            f"{primary}; the statement was rolled back. This is a bug: please report it.",
            sqlstate=sqlstate,
        )
    cls = _SQLSTATE_ERRORS.get(sqlstate or "")
    if cls is errors.SchemaNotMigrated:
        return cls(
            f"the ledger schema is missing or out of date ({primary}); "
            "run ledger.migrate(url) or `ledger migrate` first",
            sqlstate=sqlstate,
        )
    if cls is errors.ReadOnlyDatabase:
        return cls(
            f"{primary}: this server is read-only (a hot standby or a read-only session) "
            "and nothing was written; send writes to the primary, for example with every "
            "server in the URL and target_session_attrs=read-write",
            sqlstate=sqlstate,
        )
    if cls is not None:
        return cls(f"{cls.__doc__ and cls.__doc__.splitlines()[0]} ({primary})", sqlstate=sqlstate)
    if isinstance(orig, psycopg.OperationalError) and str(orig).startswith(
        # psycopg's connect() says this when no connection was ever made
        ("connection failed", "connection is bad", "connection timeout expired")
    ):
        return errors.CouldNotConnect(
            f"could not connect to PostgreSQL ({primary}); nothing was sent, so nothing "
            "changed: check the URL's host, port, database name, role and password, and "
            "that the server runs and accepts connections from here",
            sqlstate=sqlstate,
        )
    if (
        isinstance(exc, sa_exc.OperationalError)
        or getattr(exc, "connection_invalidated", False)
        or isinstance(orig, psycopg.OperationalError)
    ):
        return errors.ConnectionLost(
            f"lost the connection to PostgreSQL ({primary}); if this happened after the "
            "statement was sent, check the tenant's balances before retrying",
            sqlstate=sqlstate,
        )
    return errors.DatabaseError(f"PostgreSQL error {sqlstate}: {primary}", sqlstate=sqlstate)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise driver errors from the block as ledger errors."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        raise translate(exc) from exc
