"""The test tree shows the architecture, and the PostgreSQL 15 subset keeps its rule.

Tiers: ``tests/unit`` (no server), ``tests/integration/<area>`` (a real server;
one folder per area of the library) and ``tests/citus`` (a Citus cluster).
CI runs every integration test on PostgreSQL 18 and, on 15, the modules marked
``pg_versions``: those whose outcome the server decides (docs/design.md,
"Tests"). Whole areas are server-decided, and a module there without the
marker would silently stop running on 15, so this checks it.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
AREAS = {
    "core",
    "security",
    "journal",
    "periods",
    "deployment",
    "migrations",
    "integrations",
    "cli",
    "docs",
    "alerts",
}
# Areas whose every module checks what the server decides: privileges and row-level
# security, the journal's hashing in SQL, periods and as-of arithmetic in SQL, DDL.
SERVER_DECIDED = {"security", "journal", "periods", "migrations", "alerts"}
# Modules of other areas that are server-decided too: the spend statements' semantics
# (the CAS, batches, expiry, keys, restore), the constraints, and hashtext.
SERVER_DECIDED_MODULES = {
    "core/test_batch.py",
    "core/test_concurrency.py",
    "core/test_database.py",
    "core/test_differential.py",
    "core/test_expiry.py",
    "core/test_idempotency.py",
    "core/test_nested.py",
    "core/test_nested_concurrency.py",
    "core/test_nested_refunds.py",
    "core/test_pghash_server.py",
    "core/test_restore_certify.py",
    "core/test_seed_ports.py",
}


def _test_modules() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def marks(source: str) -> set[str]:
    """The marker names of a module's ``pytestmark`` (one mark or a list of them)."""
    found: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            for sub in ast.walk(node.value):
                parent = sub.value if isinstance(sub, ast.Attribute) else None
                if isinstance(parent, ast.Attribute) and parent.attr == "mark":
                    found.add(sub.attr)  # pytest.mark.<name>
    return found


def test_every_test_module_is_in_a_tier() -> None:
    misplaced = []
    for path in _test_modules():
        parts = path.relative_to(TESTS).parts
        if parts[0] in ("unit", "citus") and len(parts) == 2:
            continue
        if parts[0] == "integration" and len(parts) == 3 and parts[1] in AREAS:
            continue
        misplaced.append("/".join(parts))
    assert not misplaced, (
        f"put these under tests/unit, tests/citus or tests/integration/<area>: {misplaced}"
    )


def test_every_area_has_tests_and_a_package() -> None:
    for area in AREAS:
        folder = TESTS / "integration" / area
        assert (folder / "__init__.py").is_file(), folder
        assert list(folder.glob("test_*.py")), f"{folder} has no tests: drop it from AREAS"


def test_no_two_test_modules_share_a_name() -> None:
    names = Counter(path.name for path in _test_modules())
    assert not [n for n, c in names.items() if c > 1], names.most_common(3)


def test_server_decided_modules_run_on_every_version() -> None:
    unmarked = []
    for path in sorted((TESTS / "integration").glob("*/test_*.py")):
        rel = path.relative_to(TESTS / "integration").as_posix()
        decided = path.parent.name in SERVER_DECIDED or rel in SERVER_DECIDED_MODULES
        if decided and "pg_versions" not in marks(path.read_text()):
            unmarked.append(rel)
    assert not unmarked, f"add `pytestmark = pytest.mark.pg_versions` to {unmarked}"


def test_only_the_rules_modules_carry_the_marker() -> None:
    """The subset is the rule, not a list that grows by habit: others run on 18 only."""
    extra = []
    for path in sorted((TESTS / "integration").glob("*/test_*.py")):
        rel = path.relative_to(TESTS / "integration").as_posix()
        decided = path.parent.name in SERVER_DECIDED or rel in SERVER_DECIDED_MODULES
        if not decided and "pg_versions" in marks(path.read_text()):
            extra.append(rel)
    assert not extra, f"{extra} carry pg_versions; add them to the rule here and in docs/design.md"


def test_the_marker_reader_sees_one_mark_or_a_list() -> None:
    assert marks("import pytest\npytestmark = pytest.mark.pg_versions\n") == {"pg_versions"}
    both = "pytestmark = [pytest.mark.pg_versions, pytest.mark.alone]\n"
    assert marks(both) == {"pg_versions", "alone"}
    assert marks("x = pytest.mark.pg_versions\n") == set()
    assert marks("") == set()
