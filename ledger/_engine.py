"""Engines and URLs: the one place that turns what a user passes into a SQLAlchemy engine.

Only PostgreSQL through psycopg 3 is supported; anything else is refused with
an :class:`~ledger.errors.InputError` that says what to pass instead.
"""

from __future__ import annotations

from sqlalchemy import URL, Engine, create_engine, make_url

from . import errors

EngineLike = Engine | URL | str


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


def as_engine(engine_or_url: EngineLike) -> tuple[Engine, bool]:
    """Return an engine and whether we created it (and so must dispose of it)."""
    if isinstance(engine_or_url, Engine):
        if engine_or_url.dialect.name != "postgresql":
            raise errors.InputError(
                f"sql-ledger needs PostgreSQL; this engine is {engine_or_url.dialect.name}"
            )
        return engine_or_url, False
    if isinstance(engine_or_url, (str, URL)):
        return create_engine(normalise_url(engine_or_url), pool_pre_ping=False), True
    raise errors.InputError(
        f"expected a SQLAlchemy Engine or a database URL, got {type(engine_or_url).__name__}"
    )
