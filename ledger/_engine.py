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

import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy import exc as sa_exc

from . import errors

EngineLike = Engine | URL | str

#: ``connection_record.info`` key: whether the pooler check ran, and what it found.
POOLER_KEY = "ledger_behind_pooler"


_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<netloc>[^/?#]*)(?P<rest>.*)$", re.S)


def _from_libpq(text: str) -> URL | None:
    """A SQLAlchemy URL for libpq forms SQLAlchemy cannot parse, else None.

    Those are the key/value form (``host=a,b port=5432 dbname=x``) and URIs
    with several hosts (``postgresql://h1:5432,h2:5433/x?...``), the usual way
    to name a primary and its standbys. libpq's own parser reads them; the
    result uses SQLAlchemy's multi-host form (one ``host=h:p`` query item per
    server), which the psycopg dialect passes on to libpq unchanged in meaning.
    """
    uri = _URI.match(text.strip())
    if uri is None:
        if "=" not in text:
            return None
        libpq_text = text
    elif "," in uri["netloc"] and uri["scheme"] in (
        "postgresql",
        "postgres",
        "postgresql+psycopg",
    ):
        libpq_text = f"postgresql://{uri['netloc']}{uri['rest']}"
    else:
        return None
    try:
        params = conninfo_to_dict(libpq_text)
    except psycopg.ProgrammingError as exc:
        raise errors.InputError(
            f"cannot read this libpq connection string ({exc}); use "
            "'postgresql://user@host1:port1,host2:port2/dbname?target_session_attrs=read-write' "
            "or 'host=host1,host2 port=port1,port2 dbname=...'"
        ) from None
    hosts, ports = _hosts_and_ports(params)
    user = params.pop("user", None)
    password = params.pop("password", None)
    dbname = params.pop("dbname", None)
    query: dict[str, Any] = {k: str(v) for k, v in params.items()}
    servers = [f"{h}:{p}" if p else h for h, p in zip(hosts, ports, strict=True) if h or p]
    if len(servers) == 1:
        if hosts[0]:
            query["host"] = hosts[0]
        if ports[0]:
            query["port"] = ports[0]
    elif servers:
        if any(h.startswith("/") for h in hosts):
            raise errors.InputError(
                "several hosts with a Unix-socket directory among them are not supported; "
                "name TCP hosts (host1:port1,host2:port2)"
            )
        query["host"] = tuple(servers)
    return URL.create(
        "postgresql+psycopg",
        username=str(user) if user else None,
        password=str(password) if password else None,
        database=str(dbname) if dbname else None,
        query=query,
    )


def _hosts_and_ports(params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """libpq's comma-separated host and port lists, paired (one port may serve all)."""
    hosts = str(params.pop("host", "") or "").split(",")
    ports = str(params.pop("port", "") or "").split(",")
    if len(ports) == 1 and len(hosts) > 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        raise errors.InputError(
            f"the connection string names {len(hosts)} hosts but {len(ports)} ports; "
            "give one port for all hosts or one per host"
        )
    if any(p and not p.isdigit() for p in ports):
        raise errors.InputError(f"port must be a number, got {','.join(ports)!r}")
    return hosts, ports


def normalise_url(url: URL | str) -> URL:
    """Point plain ``postgresql://`` URLs at psycopg 3, the only driver we support.

    libpq's key/value strings and multi-host URIs are accepted too (see
    :func:`_from_libpq`); anything unreadable is an :class:`~ledger.errors.InputError`.
    """
    if isinstance(url, str):
        url = _from_libpq(url) or url
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise errors.InputError(
            f"cannot read the database URL ({exc}); pass "
            "'postgresql://user:password@host:port/dbname', a libpq key/value string "
            "('host=... port=... dbname=...') or a SQLAlchemy URL object"
        ) from None
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
    try:
        pooled = behind_pooler(dbapi_connection)
    except psycopg.Error as exc:
        # A pooled connection that died while idle: the pool replaces it and retries.
        raise sa_exc.DisconnectionError(str(exc)) from exc
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
