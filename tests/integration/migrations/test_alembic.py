"""pytest-alembic's built-in tests against the shipped env.py, with nothing injected.

The env itself sets ``target_metadata`` (``ledger.tables.metadata()``) and
accepts the Engine pytest-alembic hands it, so these are the checks any user
running pytest-alembic on the package would see.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.config import Config
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import Engine, create_engine

from ledger.migrator import script_location

pytestmark = pytest.mark.pg_versions

__all__ = [
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]


@pytest.fixture
def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    return cfg


@pytest.fixture
def alembic_engine(empty_db_url: str) -> Iterator[Engine]:
    engine = create_engine(empty_db_url)
    yield engine
    engine.dispose()
