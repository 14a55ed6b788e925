"""The README's Python examples run, in order, against a real database."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import ledger

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 4


def test_readme_examples_run(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger.embedded, "start", lambda *a, **k: SimpleNamespace(url=db_url))
    namespace: dict[str, object] = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    book = namespace["book"]
    assert isinstance(book, ledger.Ledger)
    assert book.verify_conservation().is_balanced
    book.close()
    namespace["engine"].dispose()  # type: ignore[attr-defined]
