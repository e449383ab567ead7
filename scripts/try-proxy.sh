#!/usr/bin/env bash
# Try pgcutover: starts a throwaway PostgreSQL 15, puts the pgcutover proxy in front
# of it and tells you how to connect. Ctrl-C stops everything and removes the files.
#
# Usage: scripts/try-proxy.sh [--check] [--port N]
#   --check    run psql and a short pgbench through the proxy, print what they saw,
#              and exit (non-interactive; used by CI)
#   --port N   where the proxy listens (default 6432, or a free port if taken)
#
# The proxy alone, to try with your own psql or pgbench; scripts/demo.sh shows the
# whole switchover. Installs what is missing first (scripts/setup.sh).
set -euo pipefail

CHECK=0
PORT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --check) CHECK=1; shift ;;
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_PREFIX=try-proxy
# shellcheck source=lib/local-pg.sh
. "$REPO/scripts/lib/local-pg.sh"

"$REPO/scripts/setup.sh" >&2
require_pg15
log "building pgcutover (release)"
(cd "$REPO" && cargo build --release --bin pgcutover --quiet)
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/pgcutover"

ADMIN_PASSWORD="try-admin-$RANDOM$RANDOM"
APP_USER=app
APP_PASSWORD=app-secret
WORK="$(make_workdir pgcutover-try)"
PROXY_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$PROXY_PID" ]; then stop_pid "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null; fi
    stop_pg15 "$WORK"
    rm -rf "$WORK"
    log "stopped and cleaned up"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export PGPASSWORD="$ADMIN_PASSWORD"
start_pg15 "$WORK" "$ADMIN_PASSWORD" <<CONF
max_connections = 100
CONF
sql "$PGPORT" "create role $APP_USER login password '$APP_PASSWORD'" >/dev/null
sql "$PGPORT" "create database $APP_USER owner $APP_USER" >/dev/null

if [ -z "$PORT" ]; then
    PORT=6432
    port_open "$PORT" && PORT="$(free_port)"
fi
# The app's secret as PostgreSQL stores it: the proxy never needs the plain password.
VERIFIER="$(sql "$PGPORT" "select rolpassword from pg_authid where rolname = '$APP_USER'")"
printf '"%s" "%s"\n' "$APP_USER" "$VERIFIER" > "$WORK/userlist.txt"
cat > "$WORK/pgcutover.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PORT"

[auth]
auth_type = "scram-sha-256"
auth_file = "userlist.txt"

[blue]
url = "postgres://postgres@127.0.0.1:$PGPORT/postgres"
TOML
"$BIN" proxy --config "$WORK/pgcutover.toml" 2> "$WORK/pgcutover.log" &
PROXY_PID=$!
wait_port "$PORT" 20 "$PROXY_PID" || { cat "$WORK/pgcutover.log" >&2; die "the proxy did not start"; }

CONNINFO="host=127.0.0.1 port=$PORT user=$APP_USER dbname=$APP_USER"
if [ "$CHECK" -eq 1 ]; then
    export PGPASSWORD="$APP_PASSWORD"
    log "psql through the proxy:"
    "$PSQL" -X -v ON_ERROR_STOP=1 "$CONNINFO" -c "select current_user, version()" >&2
    log "pgbench -c 4 for 5 s through the proxy:"
    "$PGBENCH" -i -q -s 1 -h 127.0.0.1 -p "$PORT" -U "$APP_USER" "$APP_USER" >/dev/null 2>&1
    out="$("$PGBENCH" -n -c 4 -j 2 -T 5 -h 127.0.0.1 -p "$PORT" -U "$APP_USER" "$APP_USER" 2>&1)"
    printf '%s\n' "$out" | grep -E "^(number of|tps)" >&2
    printf '%s\n' "$out" | grep -q "number of failed transactions: 0 " || die "pgbench saw failed transactions"
    log "ok: the proxy served psql and pgbench"
    exit 0
fi

cat >&2 <<MSG

  pgcutover proxy is listening on 127.0.0.1:$PORT, in front of PostgreSQL 15 on port $PGPORT.

  Connect:   psql "$CONNINFO"      (password: $APP_PASSWORD)
  Load:      PGPASSWORD=$APP_PASSWORD $PGBENCH -i -h 127.0.0.1 -p $PORT -U $APP_USER $APP_USER
  Config:    $WORK/pgcutover.toml
  Proxy log: $WORK/pgcutover.log

  Ctrl-C stops the proxy and the database and removes $WORK.

MSG
wait "$PROXY_PID"
