"""ledger.MAX_TREE_DEPTH says what revision 0010's tree guard enforces (issue 24)."""

from __future__ import annotations

import re
from pathlib import Path

import ledger

REVISION = Path(__file__).resolve().parents[2] / "migrations" / "versions" / "0010_tree.py"


def test_the_documented_depth_is_the_enforced_one() -> None:
    found = re.search(r"^MAX_DEPTH = (\d+)$", REVISION.read_text(encoding="utf-8"), re.M)
    assert found is not None
    assert int(found.group(1)) == ledger.MAX_TREE_DEPTH
    assert 6 <= ledger.MAX_TREE_DEPTH <= 16  # issue 24: at least 6 levels, at most 16
