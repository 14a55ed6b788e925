#!/usr/bin/env bash
# Set everything up and run the whole test suite.
#
#   bash scripts/test.sh
#
# 0. installs Debian's pgbouncer when it is missing and we are root (CI), and builds a
#    PgBouncer >= 1.21 (scripts/pgbouncer.sh, cached outside the repo) for the
#    prepared-statements variant of the pooler tests; installs Debian's chromium and
#    chromium-driver for the dashboard's browser tests (in CI they fail without them);
# 1. creates .venv (or $LEDGER_VENV) and installs the package with its test extras,
#    from a wheel cache outside the repo when one was built for this pyproject.toml;
# 2. runs ruff (lint and format check), mypy, the unasync check and squawk;
# 3. runs pytest on PostgreSQL 18 from the embedded wheel (or on
#    $LEDGER_TEST_DATABASE_URL if you set it): the whole suite, tests/citus aside;
# 4. if Debian's PostgreSQL 15 server is installed (/usr/lib/postgresql/15/bin),
#    starts a throwaway PostgreSQL 15 and runs the tests marked `pg_versions` against
#    it: those whose behaviour the server decides (the rule is in docs/design.md, "Tests");
# 5. in CI (CI=true) or with LEDGER_CITUS=1: builds Citus (first, since the build may
#    upgrade Debian's postgresql-15) and runs tests/citus on a local coordinator with two
#    workers (scripts/citus.sh);
# 6. runs the benchmark harness in smoke mode.
#
# The steps run one after another (docs/design.md, "Tests", says why).
# The tests marked `alone` (they measure a concurrency ratio) run after all of that,
# on a quiet machine. Every pytest run prints its 25 slowest tests.
#
# Extra arguments are passed to pytest, e.g. `bash scripts/test.sh -k concurrency`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${LEDGER_VENV:-.venv}
PG15_BIN=${LEDGER_PG15_BIN:-/usr/lib/postgresql/15/bin}

# Each step prints the seconds since the start, so a CI log shows where its time went.
step() { printf '\n==> [+%ss] %s\n' "$SECONDS" "$*"; }

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
    step "apt-get install pgbouncer (the connection-pooler tests start their own)"
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q pgbouncer >/dev/null || { apt-get update -q && apt-get install -y -q pgbouncer; }
    else
        echo "pgbouncer is missing; its tests will be skipped (CI installs it as root)" >&2
    fi
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    step "apt-get install chromium chromium-driver (the dashboard's browser tests)"
    if [ "$(id -u)" = 0 ]; then
        # Without recommends (printing, avahi, samba, perl: ~100 packages the headless
        # browser never loads); fonts-liberation is the one recommended font.
        chromium_pkgs=(--no-install-recommends chromium chromium-driver fonts-liberation)
        apt-get install -y -q "${chromium_pkgs[@]}" >/dev/null \
            || { apt-get update -q && apt-get install -y -q "${chromium_pkgs[@]}"; }
    else
        echo "chromium is missing; the dashboard's browser tests will be skipped (CI installs it as root, and fails without it)" >&2
    fi
fi

if [ -z "${LEDGER_PGBOUNCER:-}" ] && [ "$(id -u)" = 0 ]; then
    step "PgBouncer >= 1.21 (Debian 13's source, built against Debian 12; cached)"
    LEDGER_PGBOUNCER=$(bash scripts/pgbouncer.sh build | tail -n1)
    export LEDGER_PGBOUNCER
fi

step "python environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# Built wheels are cached outside the repo, one folder per pyproject.toml and Python;
# a cache that cannot serve the install is ignored and the index is used.
wheels_key=$( (cat pyproject.toml; "$VENV/bin/python" -VV) | sha256sum | cut -c1-16)
WHEELS=${LEDGER_WHEEL_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sql-ledger/wheels}/$wheels_key
if [ -f "$WHEELS/complete" ] \
    && "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" -e ".[test]"; then
    echo "installed from the wheel cache $WHEELS"
else
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    # Fill the cache in the background: the tests do not wait for it.
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    ("$VENV/bin/python" -m pip wheel -q -w "$WHEELS" ".[test]" >/dev/null 2>&1 \
        && touch "$WHEELS/complete") &
fi

CITUS=${LEDGER_CITUS:-$([ "${CI:-}" = "true" ] && echo 1 || echo 0)}
if [ "$CITUS" = "1" ]; then
    step "Citus build (before any PostgreSQL 15 server starts)"
    bash scripts/citus.sh build
fi

step "ruff (lint, then format check)"
"$VENV/bin/ruff" check ledger tests migrations scripts bench examples
"$VENV/bin/ruff" format --check ledger tests migrations scripts bench examples
step "mypy (strict, ledger/)"
"$VENV/bin/mypy"
"$VENV/bin/python" scripts/unasync.py --check
step "squawk: offline SQL of the migrations after the last pre-rules revision (.squawk.toml)"
"$VENV/bin/python" -c 'from ledger import migrator as m; print(m.sql(m.LINT_FROM + ":head"))' >"${TMPDIR:-/tmp}/ledger-new-migrations.sql"
"$VENV/bin/squawk" --config .squawk.toml "${TMPDIR:-/tmp}/ledger-new-migrations.sql"

PYTEST=("$VENV/bin/python" -m pytest --durations=25)

PG15=0
if [ -x "$PG15_BIN/postgres" ] && [ -z "${LEDGER_TEST_DATABASE_URL:-}" ]; then
    PG15=1
elif [ "${CI:-}" = "true" ] && [ -z "${LEDGER_TEST_DATABASE_URL:-}" ]; then
    echo "CI expects Debian's PostgreSQL 15 at $PG15_BIN; it is missing" >&2
    exit 1
fi

# The passes run one after another. Side by side (the PostgreSQL 15 and Citus
# passes in the background) the PostgreSQL 18 pass took 1104 s instead of 464 s
# alone, and the whole run was no shorter (docs/design.md, "Tests").
step "pytest on ${LEDGER_TEST_DATABASE_URL:+the given URL}${LEDGER_TEST_DATABASE_URL:-PostgreSQL 18 (embedded wheel)}"
fg_rc=0
"${PYTEST[@]}" -m "not slow and not alone" "$@" || fg_rc=$?

bg_rc=0
if [ "$PG15" = "1" ]; then
    step "pytest -m pg_versions on PostgreSQL 15 (Debian)"
    trap '"$VENV/bin/python" scripts/pg15.py stop >/dev/null 2>&1 || true' EXIT
    url=$("$VENV/bin/python" scripts/pg15.py start)
    LEDGER_TEST_DATABASE_URL="$url" "${PYTEST[@]}" -m "pg_versions and not slow" "$@" || bg_rc=1
    "$VENV/bin/python" scripts/pg15.py stop || true
fi
if [ "$CITUS" = "1" ]; then
    step "pytest tests/citus on a Citus coordinator + 2 workers"
    LEDGER_VENV=$VENV bash scripts/citus.sh test -q --durations=25 || bg_rc=1
fi

step "pytest -m alone on PostgreSQL 18 (concurrency ratios)"
alone_rc=0
"${PYTEST[@]}" -m "alone and not slow" "$@" || alone_rc=$?
# pytest exits 5 when no test was selected (e.g. a -k that matches none of them)
[ "$alone_rc" = 5 ] && alone_rc=0

step "benchmark harness, smoke mode (proves it runs; timings are not asserted)"
"$VENV/bin/python" -m bench.run --smoke
step "every step ran"

if [ "$fg_rc" != 0 ] || [ "$bg_rc" != 0 ] || [ "$alone_rc" != 0 ]; then
    echo "FAILED: PostgreSQL 18 rc=$fg_rc, PostgreSQL 15 or Citus rc=$bg_rc, alone rc=$alone_rc" >&2
    exit 1
fi
