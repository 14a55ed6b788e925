"""The README's Python examples run, in order, against a real database."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import ledger

from .helpers import python_blocks

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_has_examples() -> None:
    assert len(python_blocks(README)) >= 4


def test_readme_examples_run(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger.embedded, "start", lambda *a, **k: SimpleNamespace(url=db_url))
    namespace: dict[str, object] = {}
    for block in python_blocks(README):
        exec(compile(block, str(README), "exec"), namespace)
    book = namespace["book"]
    assert isinstance(book, ledger.Ledger)
    assert book.verify_conservation().is_balanced
    book.close()
    namespace["engine"].dispose()  # type: ignore[attr-defined]
