#!/usr/bin/env bash
# Citus for the ledger's tests: build it, run a local cluster, run tests/citus against it.
#
#   bash scripts/citus.sh build          # apt deps + build/install Citus (cached; idempotent)
#   bash scripts/citus.sh start          # coordinator + 2 workers under /tmp; prints the URL
#                                        # (+ a spare worker on port+3, outside the cluster)
#   bash scripts/citus.sh stop
#   bash scripts/citus.sh test [ARGS]    # build, start, pytest tests/citus ARGS, stop
#   bash scripts/citus.sh available      # exit 0 if this machine can build or has Citus
#
# The build kit (Citus source and scripts) is not in this repository: it lives in
# ../shared/citus next to the checkout (read-only; override with LEDGER_CITUS_KIT).
# build.sh caches its build outside the repository and may upgrade Debian's
# postgresql-15 (server and headers must be the same minor version), so run `build`
# before any PostgreSQL 15 server starts; scripts/test.sh does.
#
# Environment (all optional):
#   LEDGER_CITUS_KIT    the kit folder (default: <repo>/../shared/citus, or, in a clone of
#                       a local checkout, ../shared/citus next to that checkout)
#   LEDGER_CITUS_PORT   coordinator port (default 9760; workers use the next two, the spare
#                       the third)
#   LEDGER_CITUS_DATA   cluster folder (default /tmp/ledger-citus-<port>)
#   LEDGER_VENV         the virtualenv whose python runs pytest (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

find_kit() {
    # ../shared/citus next to this checkout; for a clone of a local checkout made
    # elsewhere (git clone . /tmp/ci-check), next to the checkout it was cloned from.
    local origin
    if [[ -f $PWD/../shared/citus/build.sh ]]; then
        echo "$PWD/../shared/citus"
        return
    fi
    origin=$(git config --get remote.origin.url 2>/dev/null || true)
    origin=${origin#file://}
    if [[ -n $origin && -d $origin && -f $origin/../shared/citus/build.sh ]]; then
        echo "$(cd "$origin/.." && pwd)/shared/citus"
        return
    fi
    echo "$PWD/../shared/citus"
}
KIT=${LEDGER_CITUS_KIT:-$(find_kit)}
PORT=${LEDGER_CITUS_PORT:-9760}
SPARE_PORT=$((PORT + 3))
DATA=${LEDGER_CITUS_DATA:-/tmp/ledger-citus-$PORT}
VENV=${LEDGER_VENV:-.venv}
PG_BIN=/usr/lib/postgresql/15/bin

say() { echo "[scripts/citus.sh] $*"; }
die() { echo "[scripts/citus.sh] ERROR: $*" >&2; exit 1; }

installed() { [[ -f $("$PG_BIN/pg_config" --pkglibdir 2>/dev/null || echo /nonexistent)/citus.so ]]; }

available() {
    # Either Citus is already installed, or we have the kit and can install as root.
    [[ -x $PG_BIN/postgres ]] || return 1
    installed && return 0
    [[ -f $KIT/build.sh && $(id -u) == 0 ]] && command -v apt-get >/dev/null
}

build() {
    [[ -f $KIT/build.sh ]] || die "no Citus kit at $KIT (set LEDGER_CITUS_KIT)"
    # build.sh reads package versions with dpkg-query under `set -e -o pipefail`; for a
    # package dpkg has never heard of (postgresql-server-dev-15 on a fresh machine) that
    # call fails and build.sh exits silently with status 1. Installing the server and
    # its headers together first (what build.sh itself would do) avoids that path.
    if ! dpkg-query -W postgresql-server-dev-15 >/dev/null 2>&1 ||
       [[ $(dpkg-query -W -f='${Version}' postgresql-15) != $(dpkg-query -W -f='${Version}' postgresql-server-dev-15) ]] ||
       [[ $(dpkg-query -W -f='${db:Status-Abbrev}' postgresql-server-dev-15) != ii* ]]; then
        [[ $(id -u) == 0 ]] || die "not root: install postgresql-15 and postgresql-server-dev-15 first"
        say "apt-get install postgresql-15 postgresql-server-dev-15 and the build tools"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends build-essential liblz4-dev libzstd-dev \
            libkrb5-dev libssl-dev postgresql-15 postgresql-server-dev-15 >/dev/null
    fi
    bash "$KIT/build.sh"
}

cluster() {  # start|stop|status
    # Three workers are started; the third is taken out of the cluster again by
    # prepare_spare, so tests can add it and rebalance onto it under load.
    CITUS_PORT=$PORT CITUS_WORKER_PORTS="$((PORT + 1)) $((PORT + 2)) $SPARE_PORT" CITUS_FSYNC=off \
        bash "$KIT/cluster.sh" "$1" "$DATA"
}

at() {  # port sql: psql as the servers' OS user (cluster.sh runs them as postgres under root)
    local run=()
    [[ $(id -u) == 0 ]] && run=(runuser -u postgres --)
    (cd / && "${run[@]}" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres \
        -d postgres -Atc "$2")
}

prepare_spare() {
    # Online shard moves use logical replication, which needs wal_level = logical
    # (a restart, once per cluster folder).
    local p restart=0
    for p in "$PORT" "$((PORT + 1))" "$((PORT + 2))" "$SPARE_PORT"; do
        if [[ $(at "$p" "SHOW wal_level") != logical ]]; then
            at "$p" "ALTER SYSTEM SET wal_level = logical" >/dev/null
            restart=1
        fi
    done
    if (( restart )); then
        cluster stop >/dev/null
        cluster start >/dev/null
    fi
    # The spare leaves the cluster unless shards already live on it (a run that stopped
    # half way); then it stays an ordinary worker and the rebalance test drains it.
    if [[ -z $(at "$PORT" "SELECT 1 FROM citus_shards WHERE nodeport = $SPARE_PORT LIMIT 1") ]]; then
        at "$PORT" "SELECT citus_remove_node('127.0.0.1', $SPARE_PORT)
                    WHERE EXISTS (SELECT 1 FROM pg_dist_node WHERE nodeport = $SPARE_PORT)" >/dev/null
    fi
}

start_cluster() {  # prints the coordinator's URL on its last line
    local url
    url=$(cluster start | tail -n 1)
    prepare_spare
    say "spare worker (not in the cluster): 127.0.0.1:$SPARE_PORT"
    echo "$url"
}

run_tests() {
    build
    local url
    url=$(start_cluster | tail -n 1)
    trap 'cluster stop >/dev/null || true' EXIT
    say "pytest tests/citus against $url"
    LEDGER_CITUS_URL=$url LEDGER_CITUS_SPARE_PORT=$SPARE_PORT \
        "$VENV/bin/python" -m pytest tests/citus "$@"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    build) build ;;
    start) start_cluster ;;
    stop) cluster stop ;;
    status) cluster status ;;
    test) run_tests "$@" ;;
    available) available ;;
    *) echo "usage: $0 build|start|stop|status|test [pytest args]|available" >&2; exit 2 ;;
esac
