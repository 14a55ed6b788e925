"""libpq connection strings: key/value and multi-host forms work, or fail with a typed error.

A standby setup names several servers in one string (docs/deployment.md);
SQLAlchemy cannot parse libpq's forms of that, so the ledger translates them.
The second server here is a real one, reached through a TCP proxy; the first
is a port nobody listens on, so the connection only works if libpq is given
both hosts and moves on to the second.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import make_url

import ledger
from ledger import errors
from ledger.migrator import current_revision, head_revision
from tests.faults import CommitEatingProxy, free_port


@pytest.fixture
def tcp(db_url: str) -> Iterator[tuple[int, str, str]]:
    """(proxy port, database name, user) of the test database, reachable over TCP."""
    proxy = CommitEatingProxy(db_url)
    url = make_url(db_url)
    try:
        yield proxy.port, str(url.database), url.username or "postgres"
    finally:
        proxy.close()


def _use(url: str) -> None:
    ledger.migrate(url)  # a no-op at head, but it must connect and read the version
    assert current_revision(url) == head_revision()
    with ledger.Ledger(url) as book:
        book.ensure_tenant("mh", 100)
        assert book.try_reserve("mh", 10, idempotency_key="k").ok
        assert book.reserved_microcents("mh") == 10


def test_key_value_form(db_url: str) -> None:
    url = make_url(db_url)
    host = url.query.get("host") or url.host
    port = url.port or url.query.get("port") or 5432
    _use(f"host={host} port={port} dbname={url.database} user={url.username or 'postgres'}")


def test_multi_host_uri_with_target_session_attrs(tcp: tuple[int, str, str]) -> None:
    port, db, user = tcp
    dead = free_port()
    _use(
        f"postgresql://{user}@127.0.0.1:{dead},127.0.0.1:{port}/{db}"
        "?target_session_attrs=read-write&connect_timeout=5"
    )


def test_multi_host_key_value_form(tcp: tuple[int, str, str]) -> None:
    port, db, user = tcp
    dead = free_port()
    _use(f"host=127.0.0.1,127.0.0.1 port={dead},{port} dbname={db} user={user}")
    _use(f"postgresql+psycopg://{user}@127.0.0.1:{dead},127.0.0.1:{port}/{db}")


@pytest.mark.parametrize(
    "text",
    [
        "host=a,b port=1,2,3 dbname=x",
        "postgresql://h1:x,h2:5432/db",
        "host=a port=5432 dbname=x nosuchoption=1",
        "not a url",
        "mysql://h1,h2/db",
    ],
)
def test_unreadable_strings_are_typed_input_errors(text: str) -> None:
    with pytest.raises(errors.InputError) as info:
        ledger.Ledger(text)
    assert "postgresql" in str(info.value) or "port" in str(info.value) or "host" in str(info.value)
    with pytest.raises(errors.InputError):
        ledger.migrate(text)


def _dead() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/x"


def test_no_reachable_server_in_a_transaction_is_a_typed_connection_error() -> None:
    """Between a primary's death and a standby's promotion no server takes writes."""
    with ledger.Ledger(_dead()) as book:
        with pytest.raises(errors.ConnectionLost):
            book.try_reserve("t", 1, idempotency_key="k")
        with pytest.raises(errors.ConnectionLost):
            book.snapshot()


def test_no_reachable_server_on_the_hot_path_is_a_typed_connection_error() -> None:
    with ledger.Ledger(_dead()) as book:
        with pytest.raises(errors.ConnectionLost):
            book.try_reserve("t", 1)
        with pytest.raises(errors.ConnectionLost):
            book.tenant_count()
