"""The package's shape: no import cycles, one place for back-ends, SQL only in .sql files.

These read the source; they need no database.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

import ledger
from ledger import _queries

PACKAGE = Path(ledger.__file__).parent
MODULES = {
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
    for p in PACKAGE.rglob("*.py")
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(module: str, path: Path) -> set[str]:
    """Package modules that ``module`` imports when it runs, deferred imports included.

    Only ``if TYPE_CHECKING:`` blocks are left out: they never execute.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES and name != module}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    # The package __init__ re-exports everything, so edges *into* a package
    # __init__ from its own modules are what a cycle would look like; keep them.
    graph = {name: _runtime_imports(name, path) for name, path in MODULES.items()}
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check above must be able to fail.
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


#: Modules whose code is operations (steps that yield requests): they need the
#: request types, never a driver.
OPERATION_MODULES = (
    "ledger._operations",
    "ledger._batch",
    "ledger._verify",
    "ledger._asof",
    "ledger._periods",
    "ledger._corrections",
    "ledger._stats",
    "ledger._certificate_check",
)
#: The drivers: each face's hand-written module and the core they share
#: (ledger/_async_driver.py, the source of the generated ledger/_driver.py).
DRIVERS = {"ledger._executor", "ledger._async_executor", "ledger._driver", "ledger._async_driver"}


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    found |= {
        (n.module or "").split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and not n.level
    }
    return found


def test_the_request_types_need_no_driver() -> None:
    path = MODULES["ledger._requests"]
    assert _runtime_imports("ledger._requests", path) == set()
    assert not _third_party_imports(path) & {"psycopg", "sqlalchemy", "psycopg_pool"}


@pytest.mark.parametrize("module", OPERATION_MODULES)
def test_operations_do_not_import_a_driver(module: str) -> None:
    assert not _runtime_imports(module, MODULES[module]) & DRIVERS


BACKEND_TYPES = re.compile(
    r"isinstance\([^)]*\b(Connection|Session|scoped_session|ForeignConnection|AsyncConnection|"
    r"AsyncSession)\b"
)


#: The drivers: _executor (sync) and _async_executor (asyncio) each hold the
#: one function that tells their back-ends apart. ledger.migrator asks whether
#: alembic was handed a Connection (run inside a host's transaction) or must
#: open its own; that picks a migration target, it does not run ledger
#: statements.
NOT_OPERATIONS = {"ledger._executor", "ledger._async_executor", "ledger.migrator"}


def test_back_ends_are_told_apart_in_one_module_only() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for name, path in MODULES.items()
        if name not in NOT_OPERATIONS
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if BACKEND_TYPES.search(line)
    ]
    assert offenders == []


SQL_TEXT = re.compile(r"\b(SELECT|UPDATE|INSERT|DELETE)\b.*\b(FROM|SET|INTO|WHERE)\b", re.S)


def _string_literals(path: Path) -> list[str]:
    """Every string constant that is not a docstring."""
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


def test_operations_hold_no_sql() -> None:
    """Statements live in ledger/sql/*.sql; the modules that run them only name them."""
    for name in ("_operations", "_batch", "_verify", "_ledger", "_executor", "_async_driver"):
        for literal in _string_literals(PACKAGE / f"{name}.py"):
            assert not SQL_TEXT.search(literal), f"{name}: {literal[:60]!r}"


def test_the_sql_detector_detects_sql() -> None:
    assert SQL_TEXT.search("UPDATE t SET a = 1")
    assert SQL_TEXT.search("SELECT x\nFROM t")
    assert not SQL_TEXT.search("the conditional UPDATE decides")


@pytest.mark.parametrize("schema", ["ledger", "tenant_budgets"])
def test_every_named_query_is_loaded_and_used(schema: str) -> None:
    queries = _queries.for_schema(schema)
    code = "\n".join(
        path.read_text(encoding="utf-8")
        for name, path in MODULES.items()
        if name != "ledger._queries"
    )
    for f in fields(queries):
        sql = getattr(queries, f.name)
        assert "{schema}" not in sql
        assert f'"{schema}".' in sql, f"{f.name} does not name the schema"
        assert re.search(rf"\bq\.{f.name}\b|queries\.{f.name}\b", code), f"{f.name} is never run"


def test_query_files_parse_strictly() -> None:
    assert _queries.parse("-- name: a\n-- doc\nSELECT 1\n\n-- name: b\nSELECT 2\n") == {
        "a": "SELECT 1",
        "b": "SELECT 2",
    }
    with pytest.raises(ValueError, match="twice"):
        _queries.parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")
    with pytest.raises(ValueError, match="no SQL"):
        _queries.parse("-- name: a\n-- only a comment\n")
