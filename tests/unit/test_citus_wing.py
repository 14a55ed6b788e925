"""The Citus wing (ledger/citus/) is reached from the core at one seam only.

On plain PostgreSQL no code of ledger/citus/ runs (tests/integration/core/test_keyed_plain.py
proves it on a server); this keeps the shape that makes it so: the core
modules do not import the wing, except ``ledger._routing`` (the seam), and
the public ``ledger.distribute`` with the CLI command that calls it. No core
module asks which kind of schema it runs on: the statements object answers.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

import ledger
from ledger._queries import Queries
from ledger.citus import sql as citus_sql
from ledger.citus.sql import _PLACEHOLDER

PACKAGE = Path(ledger.__file__).parent
WING = PACKAGE / "citus"

#: Core modules allowed to import ledger.citus, and why.
SEAM = {
    "_routing.py": "the strategy seam: which statements, which worker",
    "__init__.py": "ledger.distribute, public API",
}


def _allowed(relative: str) -> bool:
    """The seam, or the CLI (its ``ledger distribute`` command), a module or a package."""
    return relative in SEAM or relative.startswith("cli/")


def _core_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if WING not in p.parents]


def _imports_the_wing(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] + [target]
            if any(n == "ledger.citus" or n.startswith("ledger.citus.") for n in names):
                return True
        elif isinstance(node, ast.Import) and any(
            a.name.startswith("ledger.citus") for a in node.names
        ):
            return True
    return False


def test_the_core_imports_the_wing_at_the_seam_only() -> None:
    importers = {str(p.relative_to(PACKAGE)) for p in _core_modules() if _imports_the_wing(p)}
    assert all(_allowed(i) for i in importers), (
        f"import ledger.citus through ledger._routing: {importers}"
    )
    assert "_routing.py" in importers


def test_the_wing_detector_detects_an_import() -> None:
    module = PACKAGE / "_routing.py"
    assert _imports_the_wing(module)
    assert not _imports_the_wing(PACKAGE / "_operations.py")


#: What a flag leak looks like: the core asking which kind of schema it has.
FLAGS = {"distributed", "DistributedQueries", "keyed_call"}


def _flags(path: Path) -> list[int]:
    """Lines that name a flag in code (an attribute or a name; docstrings do not count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in FLAGS)
        or (isinstance(node, ast.Name) and node.id in FLAGS)
    )


def test_no_core_module_asks_whether_the_schema_is_distributed() -> None:
    offenders = [
        f"{p.relative_to(PACKAGE)}:{n}"
        for p in _core_modules()
        if not _allowed(str(p.relative_to(PACKAGE)))
        for n in _flags(p)
    ]
    assert offenders == []


def test_the_flag_detector_detects_a_flag(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.py"
    leaky.write_text("def f(q):\n    return q.distributed\n", encoding="utf-8")
    assert _flags(leaky) == [2]


SQL_TEXT = re.compile(
    r"\b(SELECT|UPDATE|INSERT|DELETE|ALTER|CREATE)\b.*\b(FROM|SET|INTO|WHERE|TABLE|FUNCTION)\b",
    re.S,
)


def _string_literals(path: Path) -> list[str]:
    """Every string constant (f-string parts included) that is not a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_the_wing_keeps_its_sql_in_sql_files() -> None:
    """ledger/sql/citus/*.sql holds the wing's statements and templates; the code names them."""
    for path in WING.glob("*.py"):
        for literal in _string_literals(path):
            assert not SQL_TEXT.search(literal), f"{path.name}: {literal[:60]!r}"


def test_every_citus_statement_is_used_and_filled() -> None:
    code = "\n".join(p.read_text(encoding="utf-8") for p in WING.glob("*.py"))
    for name, template in citus_sql.statements().items():
        assert f'"{name}"' in code, f"{name} is never rendered"
        assert "{" not in _PLACEHOLDER.sub("", template), f"{name}: a brace that is no placeholder"


def test_rendering_fills_once_and_refuses_a_missing_value() -> None:
    assert citus_sql.render("routed_call", schema='"s"', function="f", arguments="{x}") == (
        'SELECT * FROM "s".f({x})'
    )
    with pytest.raises(KeyError, match=re.escape("routed_call needs a value for {arguments}")):
        citus_sql.render("routed_call", schema='"s"', function="f")
    # Their own names: a ledger never runs them, they are no Queries fields.
    assert not set(citus_sql.statements()) & {f.name for f in fields(Queries)}


def test_a_routed_call_becomes_its_shard_functions_call() -> None:
    from ledger._queries import for_schema
    from ledger.citus.functions import routed_function_name
    from ledger.citus.names import SHARD_LOCK
    from ledger.citus.queries import DistributedQueries, routed_variant, shard_variant

    plain = for_schema("ledger")
    function = routed_function_name("top_up", plain.top_up)
    routed = routed_variant(plain, "ledger", {SHARD_LOCK, function})
    assert isinstance(routed, DistributedQueries)
    assert routed.top_up == (
        f'SELECT * FROM "ledger".{function}(%(tenant_id)s, %(amount)s, %(ikey)s)'
    )
    assert routed.set_cap == plain.set_cap  # no routed function made: sent as it is
    on_shard = shard_variant(routed, 102008, {f"{function}_s102008"})
    assert on_shard.top_up == (
        f'SELECT * FROM "ledger".{function}_s102008(%(tenant_id)s, %(amount)s, %(ikey)s)'
    )
    assert shard_variant(routed, 102009, set()).top_up == routed.top_up
    assert routed_variant(plain, "ledger", {function}) is plain  # no shard lock: not distributed


def test_routing_is_the_same_on_both_sides() -> None:
    import inspect

    from ledger._routing import AsyncRouting, Routing

    def public(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(member).parameters)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    assert public(Routing) == public(AsyncRouting)
    assert {"queries", "at", "close"} <= set(public(Routing))
    assert all(inspect.iscoroutinefunction(getattr(AsyncRouting, n)) for n in public(AsyncRouting))
