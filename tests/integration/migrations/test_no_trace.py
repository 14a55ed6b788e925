"""pytest-alembic's downgrade_leaves_no_trace, looking at the ledger schema.

It reflects the connection's default schema, so the engine's ``search_path``
is the ledger's: with the default (``public``) it would compare two empty
schemas and prove nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.config import Config
from pytest_alembic.tests.experimental import test_downgrade_leaves_no_trace
from sqlalchemy import Engine, create_engine, text

from ledger.migrator import script_location

pytestmark = pytest.mark.pg_versions

__all__ = ["test_downgrade_leaves_no_trace"]


@pytest.fixture
def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    return cfg


@pytest.fixture
def alembic_engine(empty_db_url: str) -> Iterator[Engine]:
    engine = create_engine(empty_db_url, connect_args={"options": "-c search_path=ledger"})
    with engine.connect() as conn:
        assert conn.execute(text("SHOW search_path")).scalar() == "ledger"
    yield engine
    engine.dispose()
