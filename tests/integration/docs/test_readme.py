"""The README's Python examples run, in order, against a real database."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import ledger
from tests.helpers import python_blocks

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_has_examples() -> None:
    assert len(python_blocks(README)) >= 4


def test_readme_examples_run(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger.embedded, "start", lambda *a, **k: SimpleNamespace(url=db_url))
    # Twice against the same database: the embedded server keeps its data, so
    # a reader who runs the quickstart again must not see it fail.
    for _ in range(2):
        namespace: dict[str, object] = {}
        for block in python_blocks(README):
            exec(compile(block, str(README), "exec"), namespace)
        book = namespace["book"]
        assert isinstance(book, ledger.Ledger)
        assert book.verify_conservation().is_balanced
        book.close()
        namespace["engine"].dispose()  # type: ignore[attr-defined]


def test_the_first_install_command_works_without_pypi() -> None:
    # sql-ledger is not on PyPI: the first pip command a reader meets must
    # install a checkout (`.`, `-e .`, '.[cli]') or a built wheel.
    text = README.read_text(encoding="utf-8")
    first = next(line for line in text.splitlines() if line.lstrip().startswith("pip install"))
    target = first.split("#")[0].split()[-1].strip("'\"")
    assert target.startswith(".") or target.startswith("dist/"), first


def test_readme_shows_closing_and_links_deployment() -> None:
    text = README.read_text(encoding="utf-8")
    assert "with ledger.Ledger(" in text and "book.close()" in text
    assert "(docs/deployment.md)" in text
    assert "ledger embedded reset" in text
