#!/usr/bin/env bash
# Client-visible pause of a flip: pgbench runs through pgcutover against blue
# (PostgreSQL 15) while the script prepares (standby connections to green), holds,
# flips to green (PostgreSQL 17) and resumes through the admin API. The pause is the longest any client waited for a reply
# (pgbench's per-transaction log), next to the longest wait in the same run away from
# the flip (the machine's own noise), with the proxy's hold/drain/flip timings.
#
# Usage: bench/flip_pause.sh [--clients "16 64 256"] [--runs R] [--seconds N] [--no-build]
#   --clients  client counts to measure (default "16 64 256")
#   --runs     runs per client count; medians are reported (default 3)
#   --seconds  pgbench duration per run; the flip happens at 40% of it (default 10)
#   --no-build use the existing release binary (PGCUTOVER_BIN or target/release)
#   --proxy-log FILE  keep the proxy's log (per-move timings: "session moved ... ms")
#
# Workload: pgbench select-only with -M prepared (named prepared statements, so every
# session carries state that must be replayed on green), scale 10, loaded on both
# servers directly. No replication is involved: this measures the proxy's part.
# Needs scripts/setup.sh. Loopback only; everything is cleaned up on exit.
set -euo pipefail

CLIENTS="16 64 256"
RUNS=3
SECS=10
BUILD=1
PROXY_LOG=""
while [ $# -gt 0 ]; do
    case "$1" in
        --clients) CLIENTS="${2:?}"; shift 2 ;;
        --runs) RUNS="${2:?}"; shift 2 ;;
        --seconds) SECS="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --proxy-log) PROXY_LOG="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_PREFIX=flip-pause
# shellcheck source=../scripts/lib/local-pg.sh
. "$REPO/scripts/lib/local-pg.sh"
require_pg15
PG17="$(pg17_bindir)"
[ -x "$PG17/postgres" ] || die "PostgreSQL 17 missing at $PG17: run scripts/setup.sh"
BIN="${PGCUTOVER_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/pgcutover}"
if [ "$BUILD" -eq 1 ]; then
    log "cargo build --release --bin pgcutover"
    (cd "$REPO" && cargo build --release --bin pgcutover --quiet)
fi
[ -x "$BIN" ] || die "no pgcutover binary at $BIN"

PASSWORD=bench-secret
export PGPASSWORD="$PASSWORD"
WORK="$(make_workdir pgcutover-flip)"
mkdir -p "$WORK/blue" "$WORK/green"
chmod 755 "$WORK/blue" "$WORK/green"
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$WORK/blue" "$WORK/green"
PROXY_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$PROXY_PID" ]; then stop_pid "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null; fi
    [ -n "$PROXY_LOG" ] && cp "$WORK/pgcutover.log" "$PROXY_LOG"
    stop_pg "$PG15_BINDIR" "$WORK/blue"
    stop_pg "$PG17" "$WORK/green"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

max_clients=0
for c in $CLIENTS; do [ "$c" -gt "$max_clients" ] && max_clients=$c; done
conf="max_connections = $((max_clients + 20))
shared_buffers = 128MB
fsync = off
synchronous_commit = off"
start_pg "$PG15_BINDIR" "$WORK/blue" "$PASSWORD" <<< "$conf"
BLUE_PORT=$PGPORT
start_pg "$PG17" "$WORK/green" "$PASSWORD" <<< "$conf"
GREEN_PORT=$PGPORT
for port in "$BLUE_PORT" "$GREEN_PORT"; do
    "$PGBENCH" -i -q -s 10 -h 127.0.0.1 -p "$port" -U postgres postgres > "$WORK/init-$port.log" 2>&1 \
        || { cat "$WORK/init-$port.log" >&2; die "pgbench -i failed on port $port"; }
done

# As in a real switchover (the orchestrator copies roles with their hashes): green
# holds blue's SCRAM verifier, and the proxy holds only that verifier, so its logins to
# either side use SCRAM pass-through.
VERIFIER="$(sql "$BLUE_PORT" "select rolpassword from pg_authid where rolname = 'postgres'")"
sql "$GREEN_PORT" "alter role postgres password '$VERIFIER'" > /dev/null
TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$TOKEN" > "$WORK/admin.token"
printf '"postgres" "%s"\n' "$VERIFIER" > "$WORK/userlist.txt"
PROXY_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
cat > "$WORK/pgcutover.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
admin_token_file = "admin.token"
server_tls_mode = "disable"
max_client_conn = $((max_clients + 20))

[auth]
auth_file = "userlist.txt"

[blue]
url = "postgres://postgres@127.0.0.1:$BLUE_PORT/postgres"

[green]
url = "postgres://postgres@127.0.0.1:$GREEN_PORT/postgres"
TOML
"$BIN" proxy --config "$WORK/pgcutover.toml" 2> "$WORK/pgcutover.log" &
PROXY_PID=$!
wait_port "$PROXY_PORT" 20 "$PROXY_PID" || { cat "$WORK/pgcutover.log" >&2; die "the proxy did not start"; }

admin() { # path [body] -> JSON
    curl -s --max-time 60 -X POST -H "Authorization: Bearer $TOKEN" \
        "http://127.0.0.1:$ADMIN_PORT$1" ${2:+-d "$2"}
}
json() { # field <<< json
    python3 -c "import json,sys; v=json.load(sys.stdin).get('$1'); print('err' if v is None else (round(v, 1) if isinstance(v, float) else v))"
}

# One run: pgbench for SECS seconds, a hold/flip/resume at 40%, then flip back to
# blue (untimed) so every run starts from the same place. Prints
# "pause_ms baseline_ms hold_ms drain_ms flip_ms moved failed prepare_ms".
run_once() { # clients
    local c="$1" dir="$WORK/run" t0 prepare hold flip resume out failed pause baseline
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir" && timeout $((SECS + 60)) "$PGBENCH" -n -S -M prepared -c "$c" -j 2 -T "$SECS" -l \
        -h 127.0.0.1 -p "$PROXY_PORT" -U postgres postgres > "$dir/pgbench.out" 2>&1) &
    local bench=$!
    sleep "$(awk -v s="$SECS" 'BEGIN { print s * 0.4 }')"
    prepare="$(admin /prepare '{"target":"green"}')"
    t0="$(date +%s%N)"
    # One curl process for the three calls, as one orchestrator would make them:
    # three process start-ups on a loaded machine would add ~100 ms to the hold.
    local a="http://127.0.0.1:$ADMIN_PORT" h="Authorization: Bearer $TOKEN" replies
    replies="$(curl -s --max-time 60 -w '\n' -X POST -H "$h" "$a/hold" \
        --next -s --max-time 60 -w '\n' -X POST -H "$h" -d '{"target":"green","force":true}' "$a/route" \
        --next -s --max-time 60 -w '\n' -X POST -H "$h" "$a/resume")"
    hold="$(sed -n 1p <<< "$replies")"
    flip="$(sed -n 2p <<< "$replies")"
    resume="$(sed -n 3p <<< "$replies")"
    local t1; t1="$(date +%s%N)"
    wait "$bench" || true
    out="$(cat "$dir/pgbench.out")"
    failed="$(printf '%s\n' "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')"
    [ -n "$failed" ] || { printf '%s\n' "$out" | tail -n 5 >&2; failed=err; }
    # pgbench -l lines: client tx latency_us script epoch_s epoch_us. The pause is the
    # longest latency of a transaction that was under way at some moment of the hold
    # (the ones the hold can have delayed); the baseline is the longest one that ended
    # more than a second before it.
    read -r pause baseline < <(cat "$dir"/pgbench_log.* | awk -v t0="$t0" -v t1="$t1" '
        { end_ns = ($5 * 1000000 + $6) * 1000; lat = $3 / 1000.0
          if (end_ns >= t0 && end_ns - $3 * 1000 <= t1) { if (lat > p) p = lat }
          else if (end_ns < t0 - 1e9) { if (lat > b) b = lat } }
        END { printf "%.1f %.1f\n", p, b }')
    echo "$pause $baseline $(json held_ms <<< "$resume") $(json drain_ms <<< "$hold") $(json flip_ms <<< "$flip") $(json moved <<< "$flip") $failed $(json prepare_ms <<< "$prepare")"
    admin /hold > /dev/null
    admin /route '{"target":"blue","force":true}' > /dev/null
    admin /resume > /dev/null
}

median() {
    printf '%s\n' "$@" | grep -v '^err$' | sort -g | awk '{a[NR]=$1} END {
        if (NR == 0) { print "err"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

echo
echo "### Client-visible pause of a flip blue (PostgreSQL 15) → green (PostgreSQL 17)"
echo
echo "pgbench -S -M prepared -j 2, ${SECS}s per run, flip at 40%, median of $RUNS runs; $(nproc) cores shared by"
echo "pgbench, both servers and the proxy; loopback TCP; $(date -u +%Y-%m-%dT%H:%MZ)."
echo
echo "| clients | pause (longest wait, ms) | baseline longest wait (ms) | hold (ms) | drain (ms) | flip (ms) | prepare, before the hold (ms) | sessions moved | failed transactions |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $CLIENTS; do
    declare -a P=() B=() H=() D=() F=() M=() X=() R=()
    for r in $(seq 1 "$RUNS"); do
        # In this shell: the run's flip back to blue must finish before the next run.
        run_once "$c" > "$WORK/result"
        read -r p b h d f m x pr < "$WORK/result"
        log "clients $c run $r: pause ${p} ms (baseline ${b} ms), hold ${h} ms, drain ${d} ms, flip ${f} ms, prepare ${pr} ms, moved $m, failed $x"
        P+=("$p"); B+=("$b"); H+=("$h"); D+=("$d"); F+=("$f"); M+=("$m"); X+=("$x"); R+=("$pr")
    done
    failed_total="$(printf '%s\n' "${X[@]}" | awk '$1 == "err" { e = 1 } { s += $1 } END { print (e ? "err" : s) }')"
    echo "| $c | $(median "${P[@]}") | $(median "${B[@]}") | $(median "${H[@]}") | $(median "${D[@]}") | $(median "${F[@]}") | $(median "${R[@]}") | $(median "${M[@]}") | $failed_total (all runs) |"
done
