"""``ledger tenant create --parent``, ``tenant move``, ``tenant tree`` and ``limited_by`` (issue 24)."""

from __future__ import annotations

from ledger import cli
from tests.integration.cli.test_cli import data, invoke


def test_a_tree_from_the_command_line(db_url: str) -> None:
    assert invoke(db_url, "tenant", "create", "org", "10000").exit_code == 0
    assert invoke(db_url, "tenant", "create", "team", "100", "--parent", "org").exit_code == 0
    assert invoke(db_url, "tenant", "create", "key", "5000", "--parent", "team").exit_code == 0
    refused = invoke(db_url, "reserve", "key", "500")
    assert refused.exit_code == cli.EXIT_REFUSED
    assert data(refused)["status"] == "insufficient" and data(refused)["limited_by"] == "team"
    human = invoke(db_url, "reserve", "key", "500", as_json=False)
    assert "limited_by: team" in human.output
    tree = data(invoke(db_url, "tenant", "tree", "org"))
    assert [(t["tenant_id"], t["parent_id"], t["depth"]) for t in tree["tenants"]] == [
        ("org", None, 0),
        ("team", "org", 1),
        ("key", "team", 2),
    ]
    shown = invoke(db_url, "tenant", "tree", "org", as_json=False).output.splitlines()
    assert shown[0].startswith("org") and shown[2].startswith("    key")
    moved = invoke(db_url, "tenant", "move", "key", "--root")
    assert moved.exit_code == 0 and data(moved)["parent_id"] is None
    assert data(invoke(db_url, "reserve", "key", "500"))["status"] == "reserved"
    cycle = invoke(db_url, "tenant", "move", "org", "team")
    assert cycle.exit_code == cli.EXIT_BAD_INPUT
    unknown = invoke(db_url, "tenant", "create", "x", "1", "--parent", "nobody")
    assert unknown.exit_code == cli.EXIT_BAD_INPUT
    assert invoke(db_url, "tenant", "move", "key").exit_code == cli.EXIT_BAD_INPUT
