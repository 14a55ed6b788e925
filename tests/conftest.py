"""Where the test PostgreSQL comes from, and one fresh database per test.

Order of preference (the first that works wins):

1. ``LEDGER_TEST_DATABASE_URL``: any PostgreSQL you point us at (needs CREATEDB);
2. testcontainers, when a Docker engine answers;
3. the embedded PostgreSQL wheel, started in a temporary directory.

The session migrates one template database; each test gets a clone made with
``CREATE DATABASE ... TEMPLATE``, which is far cheaper than migrating again.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url

import ledger
from ledger import embedded

# LiteLLM (tests of ledger.contrib.litellm) must use the price map it ships, never
# fetch one: set before any test module imports it.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_counter = itertools.count()

#: (scenario, what was injected, how much ran, what was lost): printed at the end.
FIGURES: list[tuple[str, str, str, str]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures (docs/reliability.md)")
    for scenario, injected, ran, lost in FIGURES:
        terminalreporter.write_line(f"{scenario}: injected {injected}; ran {ran}; {lost}")


def _docker_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def _plain(url: str) -> str:
    """libpq-style URL for psycopg.connect (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A server-level URL whose role may CREATE DATABASE."""
    given = os.environ.get("LEDGER_TEST_DATABASE_URL")
    if given:
        yield given
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18", driver="psycopg") as pg:
            yield pg.get_connection_url()
        return
    tmp = tempfile.mkdtemp(prefix="ledger-test-pg-")
    server = embedded.start(
        os.path.join(tmp, "data"),
        cleanup="delete",
        settings={
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        },
    )
    try:
        yield server.url
    finally:
        for key in [k for k in _admins if k[1] == server.url]:
            _admins.pop(key).close()
        server.stop()


def _admin(server: str) -> psycopg.Connection:
    return psycopg.connect(_plain(server), autocommit=True)


def _database_url(server: str, name: str) -> str:
    return make_url(server).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_version(server_url: str) -> int:
    with _admin(server_url) as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    name = f"ledger_tpl_{uuid.uuid4().hex[:8]}"
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    ledger.migrate(_database_url(server_url, name))
    yield name
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_admins: dict[tuple[int, str], psycopg.Connection] = {}


def _shared_admin(server: str) -> psycopg.Connection:
    """One autocommit admin connection per process and server, reused by every test.

    Opening a connection costs a few milliseconds, and the suite makes well
    over a thousand databases. Keyed by pid so that a forked child never
    shares its parent's socket.
    """
    key = (os.getpid(), server)
    conn = _admins.get(key)
    if conn is None or conn.closed:
        conn = _admins[key] = _admin(server)
    return conn


def make_database(server_url: str, template: str | None) -> str:
    """A new database, cloned from ``template`` when one is given.

    ``STRATEGY FILE_COPY`` (PostgreSQL 15 and later) copies the template's
    files instead of WAL-logging every block: a few percent cheaper on a server
    with fsync off (``python -m bench.clone_cost``; docs/design.md, "Tests").
    """
    name = f"ledger_t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    conn = _shared_admin(server_url)
    source = f' TEMPLATE "{template}"' if template else ""
    strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
    conn.execute(f'CREATE DATABASE "{name}"{source}{strategy}')
    return name


def drop_database(server_url: str, name: str) -> None:
    _shared_admin(server_url).execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """URL of a freshly migrated database that belongs to this test alone."""
    name = make_database(server_url, template_db)
    try:
        yield _database_url(server_url, name)
    finally:
        drop_database(server_url, name)


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """URL of an empty, never-migrated database (for migration tests)."""
    name = make_database(server_url, None)
    try:
        yield _database_url(server_url, name)
    finally:
        drop_database(server_url, name)


@pytest.fixture
def book(db_url: str) -> Iterator[ledger.Ledger]:
    with ledger.Ledger(db_url) as lg:
        yield lg


@pytest.fixture
def raw(db_url: str) -> Iterator[psycopg.Connection]:
    """A plain psycopg connection to the test database, for raw-SQL checks."""
    with psycopg.connect(_plain(db_url), autocommit=True) as conn:
        yield conn
