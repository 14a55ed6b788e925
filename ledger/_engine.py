"""Engines and URLs: the one place that turns what a user passes into a SQLAlchemy engine.

Only PostgreSQL through psycopg 3 is supported; anything else is refused with
an :class:`~ledger.errors.InputError` that says what to pass instead.

Every engine the ledger uses, its own or one the caller passes in, gets one
pool hook, :func:`_detect_pooler`: psycopg prepares a statement on the server
after it ran five times on a connection, which a transaction pooler such as
PgBouncer breaks (the next transaction may run on another server connection,
where ``_pg3_N`` does not exist or names a different query). The hook notices
the pooler and turns automatic preparation off for that connection only, so
direct connections keep the speed-up and nobody has to set an option.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url

from . import errors

EngineLike = Engine | URL | str

#: ``connection_record.info`` key: whether the pooler check ran, and what it found.
POOLER_KEY = "ledger_behind_pooler"


def normalise_url(url: URL | str) -> URL:
    """Point plain ``postgresql://`` URLs at psycopg 3, the only driver we support."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername != "postgresql+psycopg":
        raise errors.InputError(
            f"sql-ledger needs PostgreSQL through psycopg 3; got driver {parsed.drivername!r}. "
            "Use a postgresql:// or postgresql+psycopg:// URL."
        )
    return parsed


def behind_pooler(dbapi_connection: Any) -> bool:
    """Whether a connection talks to PostgreSQL through a pooler (PgBouncer and the like).

    libpq learns the backend's pid from the BackendKeyData message at login. A
    pooler answers the login itself and makes up that key (it needs its own
    key to route cancel requests), so the pid it reports differs from the one
    the server backend that runs our query reports about itself.
    """
    told = dbapi_connection.info.backend_pid
    autocommit = dbapi_connection.autocommit
    try:
        row = dbapi_connection.execute("SELECT pg_backend_pid()").fetchone()
    finally:
        if not autocommit:
            dbapi_connection.rollback()
    return bool(row is None or int(row[0]) != told)


def _detect_pooler(dbapi_connection: Any, connection_record: Any, *_: Any) -> None:
    """Pool hook: once per connection, switch off server-side prepares behind a pooler."""
    info = connection_record.info
    if POOLER_KEY in info or not hasattr(dbapi_connection, "prepare_threshold"):
        return
    pooled = behind_pooler(dbapi_connection)
    if pooled:
        dbapi_connection.prepare_threshold = None
    info[POOLER_KEY] = pooled


def install_pooler_hook(engine: Engine) -> Engine:
    """Install :func:`_detect_pooler` on an engine's pool (once; idempotent).

    It runs at checkout rather than at connect so that connections the
    caller's pool opened before the ledger saw the engine are covered too;
    after the first checkout of a connection it costs one dict lookup.
    """
    if not event.contains(engine, "checkout", _detect_pooler):
        event.listen(engine, "checkout", _detect_pooler)
    return engine


def as_engine(engine_or_url: EngineLike) -> tuple[Engine, bool]:
    """Return an engine and whether we created it (and so must dispose of it)."""
    if isinstance(engine_or_url, Engine):
        if engine_or_url.dialect.name != "postgresql":
            raise errors.InputError(
                f"sql-ledger needs PostgreSQL; this engine is {engine_or_url.dialect.name}"
            )
        if engine_or_url.dialect.driver == "psycopg":
            install_pooler_hook(engine_or_url)
        return engine_or_url, False
    if isinstance(engine_or_url, (str, URL)):
        engine = create_engine(normalise_url(engine_or_url), pool_pre_ping=False)
        return install_pooler_hook(engine), True
    raise errors.InputError(
        f"expected a SQLAlchemy Engine or a database URL, got {type(engine_or_url).__name__}"
    )
