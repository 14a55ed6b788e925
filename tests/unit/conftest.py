"""The database-free tier: everything under tests/unit runs without PostgreSQL.

``tests/conftest.py`` starts a server only when a test asks for ``server_url``
(directly or through ``db_url``, ``book``, ``raw``...). Overriding that one
fixture here turns any such request into an immediate, explained failure, so a
unit test cannot quietly start a server and ``pytest tests/unit`` stays a
seconds-long run on a machine with no database at all.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def server_url() -> str:
    pytest.fail(
        "tests/unit is the database-free tier: this test asked for a PostgreSQL server "
        "(server_url, db_url, book, raw...); move it to the integration tests, tests/integration/<area>/"
    )
