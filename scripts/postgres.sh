#!/usr/bin/env bash
# A project-local PostgreSQL server for the workbench's tests and benchmarks.
#
#   eval "$(scripts/postgres.sh)"      # install if needed, start, export WORKBENCH_PG_URL
#   scripts/postgres.sh start          # the same (prints `export WORKBENCH_PG_URL=...`)
#   scripts/postgres.sh url            # print the URL only (the server must be running)
#   scripts/postgres.sh status         # exit 0 when the server answers
#   scripts/postgres.sh stop           # stop it (the data stays in .pg/ for the next start)
#   scripts/postgres.sh destroy        # stop it and delete .pg/
#
# Installs Debian's `postgresql` package with apt-get when initdb/pg_ctl are missing, keeps the
# cluster in <repo>/.pg/ (gitignored), listens on 127.0.0.1 and a unix socket in .pg/run only,
# trusts local connections (a throwaway test server: nothing outside the machine can reach it),
# and creates the database. Postgres refuses to run as root, so as root the server runs as the
# `postgres` system user (created when absent). Idempotent: a second start only prints the URL.
#
# Environment: WORKBENCH_PG_PORT (default 54329), WORKBENCH_PG_DB (default workbench),
# WORKBENCH_PG_DIR (default <repo>/.pg). Progress goes to stderr; stdout carries only the export
# line, so `eval "$(scripts/postgres.sh)"` is safe.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGROOT="${WORKBENCH_PG_DIR:-$REPO/.pg}"
PGDATA="$PGROOT/data"
SOCKDIR="$PGROOT/run"
LOGFILE="$PGROOT/server.log"
PORT="${WORKBENCH_PG_PORT:-54329}"
DB="${WORKBENCH_PG_DB:-workbench}"
PGUSER_NAME="postgres"

say() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local d
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir 2>/dev/null || true)"
        if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    fi
    # Debian keeps the server binaries out of PATH, one folder per major version: newest first.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    done
    for tool in initdb pg_ctl; do command -v "$tool" >/dev/null 2>&1 || return 1; done
    dirname "$(readlink -f "$(command -v pg_ctl)")"
}

install_postgres() {
    if [ "$(id -u)" != 0 ]; then
        say "PostgreSQL is not installed and this user cannot apt-get; install the 'postgresql' package"
        exit 1
    fi
    say "installing Debian's postgresql package (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # policy-rc.d 101: do not let the package start its own cluster in this container.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
    apt-get install -y -qq --no-install-recommends postgresql >&2
    if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
}

BINDIR="$(find_bindir || true)"

# Run a server tool as the right user: ourselves, or `postgres` when we are root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u "$PGUSER_NAME" -- "$@"
        else
            su -s /bin/sh "$PGUSER_NAME" -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

db_user() { if [ "$(id -u)" = 0 ]; then echo "$PGUSER_NAME"; else id -un; fi; }

url() { echo "postgresql+psycopg://$(db_user)@127.0.0.1:$PORT/$DB"; }

running() { [ -n "$BINDIR" ] && [ -f "$PGDATA/PG_VERSION" ] && as_pg "$BINDIR/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

ready() { as_pg "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d postgres >/dev/null 2>&1; }

psql_q() { as_pg "$BINDIR/psql" -X -q -t -A -h 127.0.0.1 -p "$PORT" -d postgres -v ON_ERROR_STOP=1 "$@"; }

start() {
    if [ -z "$BINDIR" ]; then
        install_postgres
        BINDIR="$(find_bindir)" || { say "initdb/pg_ctl still missing after the install"; exit 1; }
    fi
    if [ "$(id -u)" = 0 ] && ! id "$PGUSER_NAME" >/dev/null 2>&1; then
        say "creating the $PGUSER_NAME system user"
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$PGUSER_NAME"
    fi
    mkdir -p "$PGROOT" "$SOCKDIR"
    if [ "$(id -u)" = 0 ]; then chown -R "$PGUSER_NAME" "$PGROOT"; fi
    chmod 700 "$PGROOT"
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        say "initializing a cluster in $PGDATA"
        as_pg "$BINDIR/initdb" -D "$PGDATA" -U "$(db_user)" --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null 2>&1 \
            || as_pg "$BINDIR/initdb" -D "$PGDATA" -U "$(db_user)" --auth=trust --encoding=UTF8 --locale=C >&2
    fi
    if running; then
        say "already running on 127.0.0.1:$PORT"
    else
        say "starting on 127.0.0.1:$PORT (log: $LOGFILE)"
        as_pg "$BINDIR/pg_ctl" -D "$PGDATA" -l "$LOGFILE" -w -t 60 \
            -o "-p $PORT -k $SOCKDIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB ${WORKBENCH_PG_OPTIONS:-}" \
            start >&2 || { say "start failed; last lines of $LOGFILE:"; tail -n 20 "$LOGFILE" >&2 || true; exit 1; }
    fi
    for _ in $(seq 1 60); do ready && break; sleep 0.5; done
    ready || { say "server does not answer on 127.0.0.1:$PORT"; exit 1; }
    if [ "$(psql_q -c "select 1 from pg_database where datname = '$DB'")" != 1 ]; then
        say "creating database $DB"
        psql_q -c "create database \"$DB\""
    fi
    echo "export WORKBENCH_PG_URL=$(url)"
}

stop() {
    if running; then
        say "stopping"
        as_pg "$BINDIR/pg_ctl" -D "$PGDATA" -m fast -w stop >&2
    else
        say "not running"
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    url) running || { say "not running; start it with scripts/postgres.sh"; exit 1; }; url ;;
    status) if running && ready; then say "running: $(url)"; else say "not running"; exit 1; fi ;;
    destroy) stop; rm -rf "$PGROOT"; say "removed $PGROOT" ;;
    *) echo "usage: scripts/postgres.sh [start|stop|url|status|destroy]" >&2; exit 2 ;;
esac
