#!/usr/bin/env bash
# Memory per idle client connection: N logged-in clients that send nothing, through
# PgBouncer (session mode), HAProxy (TCP relay) and pgcutover, one after the other
# against one throwaway PostgreSQL 15 (loopback only). Reports each proxy's resident
# memory (VmRSS) before and with the N clients connected, and the difference per
# client.
#
# Usage: bench/idle_connections.sh [--clients N] [--no-build]
#   --clients N   idle clients per proxy (default 1000; the server gets N + 20
#                 max_connections: in session mode every client has a backend)
#   --no-build    use the existing release binary (PGCUTOVER_BIN or target/release)
#
# The clients are pgbench with -t 1 and a script that only sleeps: it logs every
# client in (SCRAM), then they sit idle until the sample is taken. Needs
# scripts/setup.sh. Everything is cleaned up on exit, also on Ctrl-C.
set -euo pipefail

CLIENTS=1000
BUILD=1
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --clients) CLIENTS="${2:?--clients needs a number}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || { echo "not a positive integer: $CLIENTS" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_PREFIX=bench
# shellcheck source=../scripts/lib/local-pg.sh
. "$REPO/scripts/lib/local-pg.sh"
# shellcheck source=lib/hops.sh
. "$REPO/bench/lib/hops.sh"
PGCUTOVER_BIN="${PGCUTOVER_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/pgcutover}"
PASSWORD="bench-secret"
export PGPASSWORD="$PASSWORD"
DB="postgres"

require_pg15
require_hops
# Two sockets per client in every proxy, and pgbench holds N.
ulimit -n "$(( CLIENTS * 3 + 1024 ))" 2>/dev/null || die "cannot raise the open-files limit to $(( CLIENTS * 3 + 1024 )) (ulimit -n)"

WORK="$(make_workdir pgcutover-idle)"
PIDS=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    set +e
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [ -f "$WORK/pgbouncer.pid" ]; then stop_pid "$(cat "$WORK/pgbouncer.pid")"; fi
    stop_pg15 "$WORK"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$BUILD" -eq 1 ]; then
    log "cargo build --release --bin pgcutover"
    (cd "$REPO" && cargo build --release --bin pgcutover) > "$WORK/build.log" 2>&1 || { tail -n 20 "$WORK/build.log" >&2; die "build failed"; }
fi
[ -x "$PGCUTOVER_BIN" ] || die "no binary at $PGCUTOVER_BIN"

log "temp dir $WORK"
start_pg15 "$WORK" "$PASSWORD" <<EOF
max_connections = $(( CLIENTS + 20 ))
shared_buffers = 128MB
EOF

# ------------------------------------------------------------------ the proxies
start_pgbouncer $(( CLIENTS + 100 )) $(( CLIENTS + 10 ))
start_haproxy $(( CLIENTS + 100 ))
PIDS+=("$HAPROXY_PID")

PGC_PORT="$(free_port)"
cat > "$WORK/pgcutover.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PGC_PORT"
admin_listen = "127.0.0.1:$(free_port)"
server_tls_mode = "disable"
max_client_conn = $(( CLIENTS + 100 ))

[auth]
auth_type = "scram-sha-256"
auth_file = "$WORK/userlist.txt"

[blue]
url = "postgres://postgres@127.0.0.1:$PGPORT/postgres"
EOF
"$PGCUTOVER_BIN" proxy --config "$WORK/pgcutover.toml" > "$WORK/pgcutover.log" 2>&1 &
PIDS+=("$!"); PGC_PID=$!
wait_port "$PGC_PORT" 20 "$PGC_PID" || { tail -n 5 "$WORK/pgcutover.log" >&2; die "pgcutover is not listening on $PGC_PORT"; }

# ------------------------------------------------------------------ measuring
# pgbench keeps sleeps in microseconds in an int: 1800 s is about its longest.
printf '\\sleep 1800 s\n' > "$WORK/idle.sql"
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
backends() { sql "$PGPORT" "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()" "$DB"; }

# measure NAME PORT PID -> "rss_before_kib rss_with_kib"
measure() {
    local name="$1" port="$2" pid="$3" before with bench_pid deadline
    # A first client and its exit: pools, caches and arenas the first login sets up
    # are counted in "before", not spread over the N clients.
    sql "$port" 'select 1' "$DB" > /dev/null
    sleep 1
    before="$(rss_kib "$pid")"
    "$PGBENCH" -n -t 1 -c "$CLIENTS" -j 2 -f "$WORK/idle.sql" \
        -h 127.0.0.1 -p "$port" -U postgres "$DB" > "$WORK/pgbench-$name.log" 2>&1 &
    bench_pid=$!
    deadline=$(( $(date +%s) + 300 ))
    # Connected clients, counted at their end of the sockets (PgBouncer opens a
    # server connection only at a client's first query, so backends do not tell).
    until [ "$(ss -Htn state established "( dport = :$port )" | wc -l)" -ge "$CLIENTS" ]; do
        kill -0 "$bench_pid" 2>/dev/null || { tail -n 5 "$WORK/pgbench-$name.log" >&2; die "pgbench through $name exited early"; }
        [ "$(date +%s)" -lt "$deadline" ] || { tail -n 5 "$WORK/pgbench-$name.log" >&2; die "$CLIENTS clients through $name did not all connect within 300 s"; }
        sleep 1
    done
    # The last ones' logins (a SCRAM exchange each) finish within milliseconds.
    sleep 3
    with="$(rss_kib "$pid")"
    kill "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + 60 ))
    until [ "$(backends)" -le 0 ] || [ "$(date +%s)" -ge "$deadline" ]; do sleep 1; done
    # pgcutover keeps up to 20 backends per pool idle: close them for the next proxy.
    sql "$PGPORT" "select count(pg_terminate_backend(pid)) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()" "$DB" > /dev/null
    echo "$before $with"
}

echo
echo "### Memory per idle client connection: PgBouncer (session) vs HAProxy (TCP) vs pgcutover"
echo
echo "$CLIENTS logged-in idle clients (pgbench -t 1 -f sleep, SCRAM-SHA-256) through each proxy in turn;"
echo "VmRSS of the proxy process before and with them connected; $(date -u +%Y-%m-%dT%H:%MZ);"
echo "$("$PGBOUNCER" --version | head -n1); HAProxy $("$HAPROXY" -v | head -n1 | awk '{print $3}'); pgcutover: $PGCUTOVER_BIN"
echo
echo "| proxy | RSS before (KiB) | RSS with $CLIENTS clients (KiB) | per idle client (KiB) |"
echo "|---|---:|---:|---:|"
for t in pgbouncer haproxy pgcutover; do
    case "$t" in
        pgbouncer) port="$BOUNCER_PORT"; pid="$(cat "$WORK/pgbouncer.pid")" ;;
        haproxy) port="$HAPROXY_PORT"; pid="$HAPROXY_PID" ;;
        pgcutover) port="$PGC_PORT"; pid="$PGC_PID" ;;
    esac
    log "$CLIENTS idle clients through $t"
    read -r before with <<< "$(measure "$t" "$port" "$pid")" || true
    [ -n "${with:-}" ] || die "no measurement through $t (see above)"
    echo "| $t | $before | $with | $(awk -v a="$before" -v b="$with" -v n="$CLIENTS" 'BEGIN { printf "%.1f", (b - a) / n }') |"
done
