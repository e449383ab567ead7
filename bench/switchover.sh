#!/usr/bin/env bash
# A whole switchover under load: blue (PostgreSQL 15) replicates to green
# (PostgreSQL 17) with `pgcutover replicate`; pgbench TPC-B -M prepared runs
# through the proxy; halfway through the run `POST /switchover` moves everything to green.
# Reports failed transactions, the longest time any client waited for a reply
# (pgbench's per-transaction log) next to the longest wait away from the switchover,
# and the per-phase durations from the switchover report. Fresh clusters per run.
#
# Usage: bench/switchover.sh [--clients "16 64 256"] [--runs R] [--seconds N] [--scale S] [--no-build]
#   --clients  client counts to measure (default "16 64 256")
#   --runs     runs per client count; medians are reported (default 3)
#   --seconds  pgbench duration per run; the switchover starts halfway (default 16)
#   --scale    pgbench scale (default 10)
#   --no-build use the existing release binary (PGCUTOVER_BIN or target/release)
#
# Needs scripts/setup.sh. Loopback only; everything is cleaned up on exit.
set -euo pipefail

CLIENTS="16 64 256"
RUNS=3
SECS=16
SCALE=10
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --clients) CLIENTS="${2:?}"; shift 2 ;;
        --runs) RUNS="${2:?}"; shift 2 ;;
        --seconds) SECS="${2:?}"; shift 2 ;;
        --scale) SCALE="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_PREFIX=switchover-bench
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
WORK="$(make_workdir pgcutover-switchover)"
PROXY_PID=""
stop_run() {
    if [ -n "$PROXY_PID" ]; then stop_pid "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=""; fi
    [ -n "${SWITCHOVER_BENCH_LOG:-}" ] && [ -f "$WORK/run/pgcutover.log" ] && cp "$WORK/run/pgcutover.log" "$SWITCHOVER_BENCH_LOG"
    stop_pg "$PG15_BINDIR" "$WORK/blue"
    stop_pg "$PG17" "$WORK/green"
    # The postmasters may still be exiting; their files go once they are gone.
    local i
    for i in $(seq 1 100); do
        [ -f "$WORK/blue/data/postmaster.pid" ] || [ -f "$WORK/green/data/postmaster.pid" ] || break
        sleep 0.1
    done
    rm -rf "$WORK/blue" "$WORK/green" "$WORK/run"
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_run
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

json() { # field <<< json
    python3 -c "import json,sys; v=json.load(sys.stdin).get('$1'); print('err' if v is None else (round(v, 1) if isinstance(v, float) else v))"
}
phase() { # name <<< report json
    python3 -c "import json,sys; r=json.load(sys.stdin); print(next((round(p['ms'], 1) for p in r.get('phases', []) if p['phase'] == '$1'), 'err'))"
}

# One run on fresh clusters. Prints
# "wait_ms baseline_ms failed outcome max_hold_ms drain fence catch_up sync flip".
run_once() { # clients
    local c="$1" conf dir="$WORK/run" t0 t1 report out failed wait baseline
    rm -rf "$WORK/blue" "$WORK/green" "$dir"
    mkdir -p "$WORK/blue" "$WORK/green" "$dir"
    chmod 755 "$WORK/blue" "$WORK/green"
    [ "$IS_ROOT" -eq 1 ] && chown postgres: "$WORK/blue" "$WORK/green"
    conf="max_connections = $((2 * c + 40))
shared_buffers = 128MB
fsync = off
synchronous_commit = off"
    start_pg "$PG15_BINDIR" "$WORK/blue" "$PASSWORD" <<< "$conf"
    local blue_port=$PGPORT
    start_pg "$PG17" "$WORK/green" "$PASSWORD" <<< "$conf"
    local green_port=$PGPORT
    "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$blue_port" -U postgres postgres > "$dir/init.log" 2>&1 \
        || { cat "$dir/init.log" >&2; die "pgbench -i failed"; }
    # pgbench_history has no key; logical replication of it needs one.
    sql "$blue_port" "alter table pgbench_history add column id bigserial primary key" > /dev/null
    local verifier token proxy_port admin_port
    verifier="$(sql "$blue_port" "select rolpassword from pg_authid where rolname = 'postgres'")"
    # replicate copies roles with their hashes but leaves green's admin role alone;
    # pgbench logs in as postgres, so green needs blue's verifier for pass-through.
    sql "$green_port" "alter role postgres password '$verifier'" > /dev/null
    token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    printf '%s\n' "$token" > "$dir/admin.token"
    printf '"postgres" "%s"\n' "$verifier" > "$dir/userlist.txt"
    proxy_port="$(free_port)"
    admin_port="$(free_port)"
    cat > "$dir/pgcutover.toml" <<TOML
[proxy]
listen = "127.0.0.1:$proxy_port"
admin_listen = "127.0.0.1:$admin_port"
admin_token_file = "admin.token"
server_tls_mode = "disable"
max_client_conn = $((c + 20))

[auth]
auth_file = "userlist.txt"

[blue]
url = "postgres://postgres:$PASSWORD@127.0.0.1:$blue_port/postgres"

[green]
url = "postgres://postgres:$PASSWORD@127.0.0.1:$green_port/postgres"

[replication]
databases = ["postgres"]

[switchover]
timeout = "30s"
reverse_replication = true
TOML
    "$BIN" replicate -c "$dir/pgcutover.toml" > "$dir/replicate.log" 2>&1 \
        || { tail -n 20 "$dir/replicate.log" >&2; die "replicate failed"; }
    (cd "$dir" && RUST_LOG="${RUST_LOG:-info}" exec "$BIN" proxy --config "$dir/pgcutover.toml" 2> "$dir/pgcutover.log") &
    PROXY_PID=$!
    wait_port "$proxy_port" 20 "$PROXY_PID" || { cat "$dir/pgcutover.log" >&2; die "the proxy did not start"; }
    wait_port "$admin_port" 20 "$PROXY_PID" || die "the admin API did not start"

    (cd "$dir" && timeout $((SECS + 60)) "$PGBENCH" -n -M prepared -c "$c" -j 2 -T "$SECS" -l \
        -h 127.0.0.1 -p "$proxy_port" -U postgres postgres > "$dir/pgbench.out" 2>&1) &
    local bench=$!
    sleep "$(awk -v s="$SECS" 'BEGIN { print s * 0.5 }')"
    t0="$(date +%s%N)"
    report="$(curl -s --max-time 60 -X POST -H "Authorization: Bearer $token" \
        -d '{"timeout": "30s"}' "http://127.0.0.1:$admin_port/switchover")"
    t1="$(date +%s%N)"
    wait "$bench" || true
    out="$(cat "$dir/pgbench.out")"
    failed="$(printf '%s\n' "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')"
    [ -n "$failed" ] || { printf '%s\n' "$out" | tail -n 5 >&2; failed=err; }
    # pgbench -l lines: client tx latency_us script epoch_s epoch_us. The wait is the
    # longest latency of a transaction under way at some moment of the hold (from the
    # report: the hold ended about when the call returned, max_hold_ms before that);
    # the baseline is the longest one that ended more than a second before the call.
    local held_ms t_hold
    held_ms="$(json max_hold_ms <<< "$report")"
    [ "$held_ms" = err ] && held_ms=0
    t_hold="$(awk -v t1="$t1" -v h="$held_ms" 'BEGIN { printf "%.0f", t1 - h * 1e6 }')"
    read -r wait baseline < <(cat "$dir"/pgbench_log.* | awk -v t0="$t0" -v th="$t_hold" -v t1="$t1" '
        { end_ns = ($5 * 1000000 + $6) * 1000; lat = $3 / 1000.0
          if (end_ns >= th && end_ns - $3 * 1000 <= t1) { if (lat > p) p = lat }
          else if (end_ns < t0 - 1e9) { if (lat > b) b = lat } }
        END { printf "%.1f %.1f\n", p, b }')
    log "POST /switchover took $(( (t1 - t0) / 1000000 )) ms; the hold ended with it, after $held_ms ms"
    echo "$wait $baseline $failed $(json outcome <<< "$report") $(json max_hold_ms <<< "$report") $(phase drain <<< "$report") $(phase fence <<< "$report") $(phase catch_up <<< "$report") $(phase sync_sequences <<< "$report") $(phase flip <<< "$report")"
    stop_run
}

median() {
    printf '%s\n' "$@" | grep -v '^err$' | sort -g | awk '{a[NR]=$1} END {
        if (NR == 0) { print "err"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

echo
echo "### Switchover under load, blue (PostgreSQL 15) → green (PostgreSQL 17)"
echo
echo "pgbench TPC-B -M prepared -j 2, scale $SCALE, ${SECS}s per run, POST /switchover halfway, median of $RUNS runs;"
echo "$(nproc) cores shared by pgbench, both servers and the proxy; loopback TCP; $(date -u +%Y-%m-%dT%H:%MZ)."
echo
echo "| clients | longest client wait (ms) | baseline longest wait (ms) | clients held (ms) | drain | fence | catch-up | sequences | flip (ms) | failed transactions | outcomes |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for c in $CLIENTS; do
    declare -a W=() B=() X=() O=() H=() D=() FE=() C=() S=() FL=()
    for r in $(seq 1 "$RUNS"); do
        # In this shell, not a process substitution: the run's cleanup must finish
        # before the next run starts (and the exit trap must know the proxy's pid).
        run_once "$c" > "$WORK/result"
        read -r w b x o h d fe cu s fl < "$WORK/result"
        log "clients $c run $r: wait ${w} ms (baseline ${b} ms), failed $x, $o, held ${h} ms: drain $d, fence $fe, catch-up $cu, sequences $s, flip $fl ms"
        W+=("$w"); B+=("$b"); X+=("$x"); O+=("$o"); H+=("$h"); D+=("$d"); FE+=("$fe"); C+=("$cu"); S+=("$s"); FL+=("$fl")
    done
    failed_total="$(printf '%s\n' "${X[@]}" | awk '$1 == "err" { e = 1 } { s += $1 } END { print (e ? "err" : s) }')"
    outcomes="$(printf '%s\n' "${O[@]}" | sort | uniq -c | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}')"
    echo "| $c | $(median "${W[@]}") | $(median "${B[@]}") | $(median "${H[@]}") | $(median "${D[@]}") | $(median "${FE[@]}") | $(median "${C[@]}") | $(median "${S[@]}") | $(median "${FL[@]}") | $failed_total (all runs) | $outcomes |"
done
