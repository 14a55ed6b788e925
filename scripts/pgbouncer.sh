#!/usr/bin/env bash
# Build a PgBouncer that tracks prepared statements (>= 1.21) and print its path.
#
#   bash scripts/pgbouncer.sh build     # prints .../bin/pgbouncer on its last line
#
# Debian 12 ships PgBouncer 1.18, which cannot pool a client that prepares
# statements (psycopg's default) in transaction mode; 1.21 added
# max_prepared_statements, and the deployment tests run the ledger through both.
# Debian 13's source package is the newest PgBouncer the package registry
# offers, so we fetch that source with apt (checksums verified against the
# signed Release file) and build it against Debian 12's libraries.
#
# The build is cached outside the repository, in $LEDGER_PGBOUNCER_CACHE
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/sql-ledger/pgbouncer); a cached build
# is reused in well under a second. Needs root for apt (CI runs as root).
set -euo pipefail

[ "${1:-}" = build ] || { echo "usage: $0 build" >&2; exit 2; }

cache=${LEDGER_PGBOUNCER_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sql-ledger/pgbouncer}
binary=$cache/install/bin/pgbouncer
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "building PgBouncer needs root (apt-get); run as root or set LEDGER_PGBOUNCER" >&2
    exit 1
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The build dependencies, from Debian 12 itself.
apt-get install -y -q build-essential pkg-config libevent-dev libssl-dev libc-ares-dev >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q build-essential pkg-config \
            libevent-dev libssl-dev libc-ares-dev >/dev/null; }

# Debian 13's source index only, in a private apt state: the machine's own
# package lists and preferences are left exactly as they were.
mkdir -p "$work/apt/lists/partial" "$work/apt/archives/partial"
echo "deb-src http://deb.debian.org/debian trixie main" >"$work/sources.list"
apt_private=(
    -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache::Archives=$work/apt/archives"
    -o "APT::Get::List-Cleanup=0"
)
apt-get "${apt_private[@]}" update -q >/dev/null
(cd "$work" && apt-get "${apt_private[@]}" source --download-only -q pgbouncer >/dev/null)

orig=$(ls "$work"/pgbouncer_*.orig.tar.gz)
tar -xzf "$orig" -C "$work"
src=$(find "$work" -maxdepth 1 -type d -name 'pgbouncer-*' | head -n1)
(
    cd "$src"
    ./configure --prefix="$cache/install" --without-systemd --with-cares >/dev/null
    make -j"$(nproc)" >/dev/null
    make install >/dev/null
)
"$binary" --version >&2
echo "$binary"
