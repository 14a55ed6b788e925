"""What the test suite's per-test database costs, under each ``CREATE DATABASE`` strategy.

    python -m bench.clone_cost                 # embedded PostgreSQL, as the tests run it
    python -m bench.clone_cost --clones 100

``tests/conftest.py`` gives every test its own clone of a migrated template,
over 1,300 times a CI run, so a few tens of milliseconds per clone are
minutes of CI. This migrates one template on a server configured as the
tests' (``fsync``, ``synchronous_commit`` and ``full_page_writes`` off), then
in the same run, alternating so that drift hits both alike, creates and drops
``--clones`` clones with ``STRATEGY WAL_LOG`` (the default since PostgreSQL 15)
and with ``STRATEGY FILE_COPY``, and prints the median milliseconds of each
step and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import psycopg
from sqlalchemy import make_url

import ledger

from .scratch import server

#: The embedded server's settings in tests/conftest.py.
TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
STRATEGIES = ("WAL_LOG", "FILE_COPY")


def measure(url: str | None, clones: int) -> dict[str, dict[str, float]]:
    """Median create and drop milliseconds per strategy, from alternating rounds."""
    with server(url, "clones", TEST_SETTINGS) as base:
        plain = make_url(base).set(drivername="postgresql")
        with psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "ledger_clone_tpl" WITH (FORCE)')
            admin.execute('CREATE DATABASE "ledger_clone_tpl"')
            ledger.migrate(plain.set(database="ledger_clone_tpl").render_as_string(False))
            times: dict[str, dict[str, list[float]]] = {
                s: {"create_ms": [], "drop_ms": []} for s in STRATEGIES
            }
            for i in range(clones):
                for strategy in STRATEGIES:
                    name = f"ledger_clone_{strategy.lower()}_{i}"
                    start = time.perf_counter()
                    admin.execute(
                        f'CREATE DATABASE "{name}" TEMPLATE "ledger_clone_tpl" STRATEGY {strategy}'
                    )
                    made = time.perf_counter()
                    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                    dropped = time.perf_counter()
                    times[strategy]["create_ms"].append((made - start) * 1000)
                    times[strategy]["drop_ms"].append((dropped - made) * 1000)
            admin.execute('DROP DATABASE "ledger_clone_tpl" WITH (FORCE)')
    return {
        s: {step: round(statistics.median(v), 1) for step, v in steps.items()}
        for s, steps in times.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--clones", type=int, default=40)
    args = parser.parse_args(argv)
    result = measure(args.database_url, args.clones)
    wal, copy = result["WAL_LOG"], result["FILE_COPY"]
    both = {s: r["create_ms"] + r["drop_ms"] for s, r in result.items()}
    print(json.dumps(result))
    print(
        f"create+drop: WAL_LOG {both['WAL_LOG']:.1f} ms, FILE_COPY {both['FILE_COPY']:.1f} ms;"
        f" FILE_COPY/WAL_LOG = {both['FILE_COPY'] / both['WAL_LOG']:.2f}"
        f" (create {copy['create_ms'] / wal['create_ms']:.2f},"
        f" drop {copy['drop_ms'] / wal['drop_ms']:.2f})"
    )


if __name__ == "__main__":
    main()
