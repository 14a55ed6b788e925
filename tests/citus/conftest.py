"""The API contract on a distributed schema: a Citus coordinator named by LEDGER_CITUS_URL.

Without ``LEDGER_CITUS_URL`` every test here is skipped (``bash scripts/citus.sh
test`` builds Citus, starts a coordinator and two workers, and sets it; CI does
that through scripts/test.sh).

Citus lives in one database (``postgres``), so a test cannot get a database of
its own: each gets a fresh schema instead, migrated and distributed with
``LEDGER_CITUS_SHARDS`` shards (default 4, which still spreads every table over
both workers and keeps set-up near a second), and dropped afterwards.

Every connection the ledger opens here runs with ``citus.log_remote_commands``,
so a test can record what one call sent to the workers (:class:`Remote`). The
figures are printed at the end of the run ("Citus routing").
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, make_url

import ledger
from ledger import distribute

HERE = Path(__file__).resolve().parent
SHARDS = int(os.environ.get("LEDGER_CITUS_SHARDS", "4"))

#: operation -> what one call sent, for the end-of-run table.
ROUTING: dict[str, Remote] = {}


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    if os.environ.get("LEDGER_CITUS_URL"):
        return
    skip = pytest.mark.skip(
        reason="LEDGER_CITUS_URL is not set (bash scripts/citus.sh test runs these on a cluster)"
    )
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROUTING:
        return
    terminalreporter.section(f"Citus routing (remote commands per call, {SHARDS} shards/table)")
    terminalreporter.write_line(
        f"{'operation':<34}{'commands':>9}{'statements':>11}{'nodes':>6}{'shards':>7}  commit"
    )
    for name, r in sorted(ROUTING.items()):
        terminalreporter.write_line(
            f"{name:<34}{len(r.commands):>9}{len(r.statements):>11}{len(r.nodes):>6}"
            f"{len(r.shards):>7}  {'2PC' if r.two_phase else '1PC' if r.commands else '-'}"
        )


def plain(url: str) -> str:
    """libpq URL (no SQLAlchemy driver suffix) for psycopg.connect."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def alchemy(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def citus_url() -> str:
    url = os.environ.get("LEDGER_CITUS_URL")
    if not url:  # pragma: no cover - collection already skipped these
        pytest.skip("LEDGER_CITUS_URL is not set")
    return url


# ------------------------------------------------------------------ remote commands

_CONTROL = re.compile(
    r"^(BEGIN|COMMIT|ROLLBACK|PREPARE TRANSACTION|COMMIT PREPARED|ROLLBACK PREPARED|"
    r"SELECT assign_distributed_transaction_id|SET |RESET |SAVEPOINT|RELEASE SAVEPOINT|"
    r"ROLLBACK TO SAVEPOINT)",
    re.I,
)
_SHARD = re.compile(r"\b[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*_(\d{6,})\b")
_NODE = re.compile(r"on server \S*@([^ ]+)")


@dataclass
class Remote:
    """What the coordinator sent to other nodes during one call."""

    commands: list[tuple[str, str]] = field(default_factory=list)  # (command, node)

    @property
    def statements(self) -> list[str]:
        """The commands that are not transaction control."""
        return [c for c, _ in self.commands if not _CONTROL.match(c)]

    @property
    def two_phase(self) -> bool:
        return any(c.upper().startswith("PREPARE TRANSACTION") for c, _ in self.commands)

    @property
    def nodes(self) -> set[str]:
        return {n for _, n in self.commands if n}

    @property
    def shards(self) -> set[str]:
        return {m for c, _ in self.commands for m in _SHARD.findall(c)}

    def one_round_trip(self) -> bool:
        """The issue's target: one command, to one worker, no two-phase commit."""
        return len(self.commands) == 1 and len(self.nodes) == 1 and not self.two_phase

    def summary(self) -> str:
        return (
            f"{len(self.commands)} remote commands ({len(self.statements)} statements) to "
            f"{len(self.nodes)} nodes, {len(self.shards)} shards, "
            f"{'2PC' if self.two_phase else 'no 2PC'}"
        )


class Recorder:
    """Collects ``citus.log_remote_commands`` notices of the calling thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def notice(self, diag: psycopg.errors.Diagnostic) -> None:
        target: Remote | None = getattr(self._local, "target", None)
        primary = diag.message_primary or ""
        if target is None or not primary.startswith("issuing "):
            return
        node = _NODE.search(diag.message_detail or "")
        target.commands.append((primary[len("issuing ") :], node.group(1) if node else ""))

    @contextmanager
    def capture(self, name: str | None = None) -> Iterator[Remote]:
        """Record the remote commands of the block; ``name`` also files them for the summary."""
        remote = Remote()
        self._local.target = remote
        try:
            yield remote
        finally:
            self._local.target = None
        if name is not None:
            ROUTING[name] = remote


@pytest.fixture(scope="session")
def recorder() -> Recorder:
    return Recorder()


def logged_engine(url: str, recorder: Recorder, pool_size: int = 5) -> Engine:
    """An engine whose connections report every remote command to ``recorder``."""
    engine = create_engine(
        alchemy(url),
        pool_size=pool_size,
        max_overflow=0,
        connect_args={"options": "-c citus.log_remote_commands=on"},
    )

    @event.listens_for(engine, "connect")
    def _listen(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.add_notice_handler(recorder.notice)

    return engine


# ------------------------------------------------------------------ schemas


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def fresh_schema(url: str, *, distributed: bool = True, revision: str = "head") -> Iterator[str]:
    """A newly migrated (and distributed) schema of its own, dropped afterwards."""
    name = f"ct_{uuid.uuid4().hex[:10]}"
    try:
        ledger.migrate(alchemy(url), revision, schema=name)
        if distributed:
            distribute(alchemy(url), name, shard_count=SHARDS)
        yield name
    finally:
        drop_schema(url, name)


@pytest.fixture
def schema(citus_url: str) -> Iterator[str]:
    with fresh_schema(citus_url) as name:
        yield name


@pytest.fixture
def engine(citus_url: str, recorder: Recorder) -> Iterator[Engine]:
    eng = logged_engine(citus_url, recorder)
    yield eng
    eng.dispose()


@pytest.fixture
def book(engine: Engine, schema: str) -> Iterator[ledger.Ledger]:
    with ledger.Ledger(engine, schema=schema) as lg:
        yield lg


@pytest.fixture
def raw(citus_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(plain(citus_url), autocommit=True) as conn:
        yield conn
