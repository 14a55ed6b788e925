"""The sync faces are generated from their asyncio sources, and must not go stale.

scripts/unasync.py writes ``ledger/_driver.py``, ``ledger/_hold.py`` and
``ledger/_ledger.py`` from ``ledger/_async_driver.py``,
``ledger/_async_hold.py`` and ``ledger/_async_ledger.py``; an edit made to a
generated file, or a source changed without regenerating, fails here (and
in scripts/test.sh) with the diff. ``ledger/_routing.py`` holds its sync twin
itself (``Routing``, written from ``AsyncRouting`` in place), checked alike.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "unasync.py"
sys.path.insert(0, str(SCRIPT.parent))
import unasync  # noqa: E402


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_generated_files_are_current() -> None:
    done = check(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The sources and generated files (and the ruff settings) in a scratch tree."""
    for name in [*(n for pair in unasync.PAIRS for n in pair), *unasync.IN_PLACE]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_check_passes_on_an_untouched_copy(copy: Path) -> None:
    assert check(copy).returncode == 0


def test_an_edit_to_a_generated_file_fails_the_check(copy: Path) -> None:
    target = copy / "ledger" / "_hold.py"
    target.write_text(target.read_text().replace("def settle(", "def settle2(", 1))
    done = check(copy)
    assert done.returncode == 1
    assert "-    def settle2(" in done.stdout and "+    def settle(" in done.stdout
    assert "stale" in done.stderr


def test_a_source_changed_without_regenerating_fails_the_check(copy: Path) -> None:
    source = copy / "ledger" / "_async_hold.py"
    source.write_text(source.read_text().replace("async def release(", "async def give_back(", 1))
    done = check(copy)
    assert done.returncode == 1
    assert "+    def give_back(" in done.stdout
    assert (
        subprocess.run([sys.executable, str(SCRIPT), "--root", str(copy)], check=False).returncode
        == 0
    )
    assert check(copy).returncode == 0
    assert "def give_back(" in (copy / "ledger" / "_hold.py").read_text()


GENERATED = {
    "ledger/_async_driver.py": "ledger/_driver.py",
    "ledger/_async_hold.py": "ledger/_hold.py",
    "ledger/_async_ledger.py": "ledger/_ledger.py",
}


def test_every_generated_file_is_checked() -> None:
    assert dict(unasync.PAIRS) == GENERATED
    assert unasync.IN_PLACE == ["ledger/_routing.py"]
    for source, target in GENERATED.items():
        assert (ROOT / target).read_text().startswith(f"# Generated from {source} by")


def test_an_edit_to_the_generated_driver_fails_the_check(copy: Path) -> None:
    target = copy / "ledger" / "_driver.py"
    text = target.read_text()
    assert "_RETRY_ATTEMPTS = 5\n" in text and "from time import sleep\n" in text
    target.write_text(text.replace("_RETRY_ATTEMPTS = 5\n", "_RETRY_ATTEMPTS = 3\n", 1))
    done = check(copy)
    assert done.returncode == 1
    assert "-_RETRY_ATTEMPTS = 3" in done.stdout and "+_RETRY_ATTEMPTS = 5" in done.stdout


def test_the_driver_is_the_asyncio_one_without_await() -> None:
    """What the generated driver is made of: the sync names, the sync sleep, no await."""
    text = (ROOT / "ledger" / "_driver.py").read_text()
    for name in ("class Executor(ABC)", "def drive(", "class PsycopgExecutor(Executor)"):
        assert name in text
    assert "class Runner(ABC)" in text and "psycopg.RawCursor(" in text
    assert "await" not in text and "async " not in text and "asyncio" not in text


def test_an_edit_to_a_twin_block_fails_the_check(copy: Path) -> None:
    target = copy / "ledger" / "_routing.py"
    text = target.read_text()
    twin = text.index("# unasync: twin (")
    assert text.index("class AsyncRouting(") < twin < text.index("class Routing(")
    target.write_text(text[:twin] + text[twin:].replace("def at(", "def route(", 1))
    done = check(copy)
    assert done.returncode == 1
    assert "-    def route(" in done.stdout and "+    def at(" in done.stdout
    assert (
        subprocess.run([sys.executable, str(SCRIPT), "--root", str(copy)], check=False).returncode
        == 0
    )
    assert target.read_text() == text


def test_a_twin_source_changed_without_regenerating_fails_the_check(copy: Path) -> None:
    target = copy / "ledger" / "_routing.py"
    text = target.read_text()
    target.write_text(text.replace("    async def close(self)", "    async def shut(self)", 1))
    done = check(copy)
    assert done.returncode == 1
    assert "-    def close(self)" in done.stdout and "+    def shut(self)" in done.stdout


def test_marked_blocks() -> None:
    source = (
        "class AsyncLedger:\n"
        "    # unasync: async-only\n"
        "    x = 1\n"
        "    # unasync: end\n"
        "    # unasync: sync-only\n"
        "    # y = AsyncLedger  # kept as written\n"
        "    # unasync: end\n"
        "    async def f(self) -> int:\n"
        "        return (await self.g()).h + k(await self.g()) + (await f(1) + g(2)).x\n"
    )
    assert unasync.convert(source, "t.py") == (
        "class Ledger:\n"
        "    y = AsyncLedger  # kept as written\n"
        "    def f(self) -> int:\n"
        "        return self.g().h + k(self.g()) + (f(1) + g(2)).x\n"
    )
    with pytest.raises(SystemExit, match="never ends"):
        unasync.convert("# unasync: sync-only\n# x = 1\n", "t.py")
