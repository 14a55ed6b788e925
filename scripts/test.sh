#!/usr/bin/env bash
# Set everything up and run the whole test suite.
#
#   bash scripts/test.sh
#
# 1. creates .venv (or $LEDGER_VENV) and installs the package with its test extras;
# 2. runs ruff (lint and format check) and mypy;
# 3. runs pytest on PostgreSQL 18 from the embedded wheel
#    (or on $LEDGER_TEST_DATABASE_URL if you set it);
# 4. runs the benchmark harness in smoke mode;
# 5. if Debian's PostgreSQL 15 server is installed (/usr/lib/postgresql/15/bin),
#    starts a throwaway PostgreSQL 15 and runs pytest again against it.
#
# Extra arguments are passed to pytest, e.g. `bash scripts/test.sh -k concurrency`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${LEDGER_VENV:-.venv}
PG15_BIN=${LEDGER_PG15_BIN:-/usr/lib/postgresql/15/bin}

step() { printf '\n==> %s\n' "$*"; }

step "python environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"

step "ruff (lint, then format check)"
"$VENV/bin/ruff" check ledger tests migrations scripts bench examples
"$VENV/bin/ruff" format --check ledger tests migrations scripts bench examples
step "mypy (strict, ledger/)"
"$VENV/bin/mypy"

step "pytest on ${LEDGER_TEST_DATABASE_URL:+the given URL}${LEDGER_TEST_DATABASE_URL:-PostgreSQL 18 (embedded wheel)}"
"$VENV/bin/python" -m pytest "$@"

step "benchmark harness, smoke mode (proves it runs; timings are not asserted)"
"$VENV/bin/python" -m bench.run --smoke

if [ -x "$PG15_BIN/postgres" ] && [ -z "${LEDGER_TEST_DATABASE_URL:-}" ]; then
    step "pytest on PostgreSQL 15 (Debian)"
    url=$("$VENV/bin/python" scripts/pg15.py start)
    trap '"$VENV/bin/python" scripts/pg15.py stop' EXIT
    LEDGER_TEST_DATABASE_URL="$url" "$VENV/bin/python" -m pytest "$@"
elif [ "${CI:-}" = "true" ] && [ -z "${LEDGER_TEST_DATABASE_URL:-}" ]; then
    echo "CI expects Debian's PostgreSQL 15 at $PG15_BIN; it is missing" >&2
    exit 1
fi
