"""Generate the sync twins from their asyncio sources: one source for both faces.

``python scripts/unasync.py`` rewrites each generated file from its source
(:data:`PAIRS`) and each twin block (:data:`IN_PLACE`); ``--check`` writes
nothing, prints a diff and exits 1 when a generated file or block is stale
(scripts/test.sh and tests/unit/test_generated.py run it). In the spirit
of psycopg's ``tools/async_to_sync.py``, but on the text:

- whole words are renamed from :data:`NAMES` (``AsyncLedger`` -> ``Ledger``),
  and ``async def``, ``async with``, ``async for`` and ``await`` lose their
  ``async``/``await`` (``(await x.y()).z`` becomes ``x.y().z``);
- a block between ``# unasync: async-only`` and ``# unasync: end`` is left out
  of the sync file;
- a block between ``# unasync: sync-only`` and ``# unasync: end`` is written
  in the source as comments (``# `` before each line, at the code's
  indentation) and comes out of the sync file as code, as it stands: no
  renaming;
- the result is formatted with ruff (imports sorted, lines joined where the
  shorter names let them), then headed by a "do not edit" comment;
- a hand-written file listed in :data:`IN_PLACE` holds its own twin: the
  block between ``# unasync: twin`` and ``# unasync: end`` is written from
  the ``# unasync: twin-source`` block just before it, with the same
  renaming (``ledger/_routing.py``: ``Routing`` from ``AsyncRouting``, in
  the one module the core reaches the Citus wing through).

The source's docstring says where and why the two faces differ. The script
knows nothing of the ledger: the pragmas in the sources carry every
difference, so that a reader sees them where they are.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (source, generated), relative to the repository root.
PAIRS = [
    ("ledger/_async_driver.py", "ledger/_driver.py"),
    ("ledger/_async_hold.py", "ledger/_hold.py"),
    ("ledger/_async_ledger.py", "ledger/_ledger.py"),
]

#: Hand-written files that hold a sync twin of their own: the block between
#: ``# unasync: twin`` and ``# unasync: end`` is generated from the block
#: between ``# unasync: twin-source`` and the ``# unasync: end`` just before it
#: (for code that must stay in one module, which the file's docstring says why).
IN_PLACE = ["ledger/_routing.py"]

#: Whole words renamed in the sync file (outside sync-only blocks).
NAMES = {
    "AsyncLedger": "Ledger",
    "AsyncHold": "Hold",
    "AsyncRouting": "Routing",
    "AsyncWorkerRouter": "WorkerRouter",
    "AsyncDatabase": "Database",
    "AsyncExecutor": "Executor",
    "AsyncPsycopgExecutor": "PsycopgExecutor",
    "AsyncRunner": "Runner",
    "adrive": "drive",
    "AsyncConnection": "Connection",
    "AsyncRawCursor": "RawCursor",
    "AsyncServerCursor": "ServerCursor",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "AsyncConnectable": "Connectable",
    "AsyncIterator": "Iterator",
    "asynccontextmanager": "contextmanager",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "AsyncRun": "Run",
    "routed_queries_async": "routed_queries",
    "arun": "run",
    "_async_executor": "_executor",
    "_async_driver": "_driver",
    "_async_ledger": "_ledger",
    "_async_hold": "_hold",
}

_WORDS = re.compile(r"\b(" + "|".join(map(re.escape, NAMES)) + r")\b")
_ASYNC = re.compile(r"\basync (def|with|for)\b")
_AWAIT = re.compile(r"\bawait ")
_PRAGMA = re.compile(r"^\s*# unasync: (async-only|sync-only|end)\s*$")
_COMMENTED = re.compile(r"^(\s*)# ?(.*)$")
_OPEN_AWAIT = re.compile(r"\(\s*await ")
_CALL = re.compile(r"[\w.]+\(")
#: Kept the source's pragma-marked imports where they are; the sync file is sorted whole.
_ISORT = re.compile(r"^\s*# isort: (off|on|split)\s*\n", re.MULTILINE)
#: The source block, the twin's opening line, the twin, its end (see :data:`IN_PLACE`).
_TWIN = re.compile(
    r"^# unasync: twin-source\b.*?\n(.*?)^# unasync: end\n(# unasync: twin\b.*?\n)(.*?)"
    r"^# unasync: end\n",
    re.MULTILINE | re.DOTALL,
)


def _header(source: str) -> str:
    return (
        f"# Generated from {source} by scripts/unasync.py: do not edit.\n"
        "# Edit the source, then run `python scripts/unasync.py` (CI checks with --check).\n"
    )


def _plain_awaits(text: str) -> str:
    """``(await f(x)).y`` -> ``f(x).y``: the parentheses were only for the await.

    Not the parentheses of a call: ``g(await f(x))`` stays ``g(f(x))``.
    """
    out, i = [], 0
    while (found := _OPEN_AWAIT.search(text, i)) is not None:
        start = found.start()
        depth, j = 0, start
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        inner = text[found.end() : j].strip()
        called = start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_)]")
        if not called and j < len(text) and _one_call(inner):
            out.append(text[i:start] + inner)
            i = j + 1
        else:
            out.append(text[i : start + 1])
            i = start + 1
    out.append(text[i:])
    return "".join(out)


def _one_call(text: str) -> bool:
    """Is ``text`` a single call, ``a.b(...)``, its first parenthesis closed by its last?"""
    name = _CALL.match(text)
    if name is None:
        return False
    depth = 0
    for index in range(name.end() - 1, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index == len(text) - 1
    return False


def _unasync(text: str) -> str:
    text = _plain_awaits(text)
    text = _ASYNC.sub(r"\1", text)
    text = _AWAIT.sub("", text)
    return _WORDS.sub(lambda m: NAMES[m.group(1)], text)


def convert(source: str, path: str) -> str:
    """The sync file for ``source`` (the text of ``path``), before formatting."""
    out: list[str] = []
    chunk: list[str] = []
    mode = None
    for number, line in enumerate(source.splitlines(keepends=True), 1):
        pragma = _PRAGMA.match(line)
        if pragma is None:
            if mode == "sync-only":
                m = _COMMENTED.match(line.rstrip("\n"))
                if m is None or not line.lstrip().startswith("#"):
                    raise SystemExit(f"{path}:{number}: a sync-only line must be a comment")
                out.append(m.group(1) + m.group(2) + "\n" if m.group(2) else "\n")
            elif mode is None:
                chunk.append(line)
            continue
        kind = pragma.group(1)
        if (kind == "end") == (mode is None):
            raise SystemExit(f"{path}:{number}: unexpected '# unasync: {kind}'")
        if mode is None:
            out.append(_unasync("".join(chunk)))
            chunk = []
        mode = None if kind == "end" else kind
    if mode is not None:
        raise SystemExit(f"{path}: '# unasync: {mode}' never ends")
    out.append(_unasync("".join(chunk)))
    return _ISORT.sub("", "".join(out))


def _ruff(text: str, target: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", target, "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff {' '.join(args)} failed on {target}:\n{done.stderr}{done.stdout}")
    return done.stdout


def generate(source: str, target: str, root: Path = ROOT) -> str:
    """The generated text of ``target`` from ``source`` (paths relative to ``root``)."""
    text = convert((root / source).read_text(), source)
    text = _ruff(text, target, "check", "--fix", "--select", "I,F401", "--quiet", "--exit-zero")
    text = _ruff(text, target, "format", "--quiet")
    return _header(source) + text


def generate_in_place(path: str, root: Path = ROOT) -> str:
    """The text of ``path`` (an :data:`IN_PLACE` file) with its twin block written anew."""
    text = (root / path).read_text()
    found = _TWIN.search(text)
    if found is None:
        raise SystemExit(f"{path}: no '# unasync: twin-source' block followed by a twin")
    twin = convert(found.group(1), path).strip("\n")
    text = text[: found.start(3)] + "\n\n" + twin + "\n\n\n" + text[found.end(3) :]
    return _ruff(text, path, "format", "--quiet")


def _wanted(root: Path) -> list[tuple[str, str, str]]:
    """(target, where it comes from, its text) for every generated file and block."""
    out = [(target, source, generate(source, target, root)) for source, target in PAIRS]
    out += [(path, "its twin-source block", generate_in_place(path, root)) for path in IN_PLACE]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stale = 0
    for target, source, want in _wanted(args.root):
        path = args.root / target
        have = path.read_text() if path.exists() else ""
        if have == want:
            continue
        if args.check:
            stale += 1
            sys.stdout.writelines(
                difflib.unified_diff(
                    have.splitlines(keepends=True),
                    want.splitlines(keepends=True),
                    f"{target} (as it is)",
                    f"{target} (generated from {source})",
                )
            )
        else:
            path.write_text(want)
            print(f"wrote {target}")
    if stale:
        print(f"{stale} generated file(s) stale: run python scripts/unasync.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
