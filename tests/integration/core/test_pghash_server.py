"""ledger.citus.hash.hashtext equals the server's hashtext on any text (hypothesis)."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.citus.hash import hashtext

pytestmark = pytest.mark.pg_versions

# PostgreSQL text cannot hold NUL or lone surrogates (not valid UTF-8).
TEXTS = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=80)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(TEXTS, min_size=1, max_size=20))
def test_hashtext_matches_the_server(raw: psycopg.Connection, texts: list[str]) -> None:
    row = raw.execute(
        "SELECT array_agg(hashtext(t) ORDER BY o) FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, o)",
        (texts,),
    ).fetchone()
    assert row is not None
    assert [hashtext(t) for t in texts] == row[0]
