#!/usr/bin/env bash
# Proxy overhead: pgbench straight at PostgreSQL 15 vs through PgBouncer (session mode)
# vs through HAProxy (a bare TCP relay: the floor of any hop) vs through pgcutover, on
# one throwaway cluster on this machine (loopback only). Besides tps it reports each
# proxy's CPU time and context switches per transaction.
#
# Usage: bench/proxy_overhead.sh [--seconds N] [--runs R] [--scale S] [--no-build] [--baseline BIN] [--only REGEX]
#   --seconds N   length of every pgbench run (default 10)
#   --runs R      runs per cell; medians are reported (default 1)
#   --scale S     pgbench -i scale (default 10)
#   --no-build    do not run `cargo build --release --bin pgcutover`; use the binary
#                 that is there (PGCUTOVER_BIN, else $CARGO_TARGET_DIR or target/release)
#   --baseline BIN  also measure another pgcutover build (e.g. the previous commit's
#                 release binary) as a fourth column, interleaved in the same rounds,
#                 so a before/after comparison shares every run's conditions
#   --only REGEX  run only the rows whose name matches (e.g. 'TPC-B'), to look
#                 closer at one row with more runs
#
# Needs scripts/setup.sh (PostgreSQL 15, pgbench, pgbouncer, haproxy). As root, postgres and
# pgbouncer run as the `postgres` OS user (both refuse root). If pgcutover cannot be
# built or started, its column says n/a and why; the other columns are still measured.
# Everything (processes, temp dir) is cleaned up on exit, also on Ctrl-C.
# Environment: PG15_BINDIR, PGBOUNCER, HAPROXY, PGCUTOVER_BIN, CARGO_TARGET_DIR, KEEP_BENCH_DIR=1.
set -euo pipefail

SECS=10
RUNS=1
SCALE=10
BUILD=1
BASELINE_BIN="${PGCUTOVER_BASELINE_BIN:-}"
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECS="${2:?--seconds needs a value}"; shift 2 ;;
        --runs) RUNS="${2:?--runs needs a value}"; shift 2 ;;
        --scale) SCALE="${2:?--scale needs a value}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --baseline) BASELINE_BIN="${2:?--baseline needs a binary}"; shift 2 ;;
        --only) ONLY="${2:?--only needs a pattern}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in "$SECS" "$RUNS" "$SCALE"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "not a positive integer: $v" >&2; exit 2; }
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_PREFIX=bench
# shellcheck source=../scripts/lib/local-pg.sh
. "$REPO/scripts/lib/local-pg.sh"
# shellcheck source=lib/hops.sh
. "$REPO/bench/lib/hops.sh"
PGCUTOVER_BIN="${PGCUTOVER_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/pgcutover}"
PASSWORD="bench-secret"
export PGPASSWORD="$PASSWORD"
DB="pgbench"

require_pg15
require_hops

WORK="$(make_workdir pgcutover-bench)"
PROXY_PID=""
BASELINE_PID=""
HAPROXY_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$PROXY_PID" ]; then stop_pid "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null; fi
    if [ -n "$BASELINE_PID" ]; then stop_pid "$BASELINE_PID"; wait "$BASELINE_PID" 2>/dev/null; fi
    if [ -n "$HAPROXY_PID" ]; then stop_pid "$HAPROXY_PID"; wait "$HAPROXY_PID" 2>/dev/null; fi
    if [ -f "$WORK/pgbouncer.pid" ]; then stop_pid "$(cat "$WORK/pgbouncer.pid")"; fi
    stop_pg15 "$WORK"
    if [ "${KEEP_BENCH_DIR:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ PostgreSQL 15
log "temp dir $WORK"
start_pg15 "$WORK" "$PASSWORD" <<EOF
max_connections = 200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
sql "$PGPORT" "create database $DB" >/dev/null
log "pgbench -i -s $SCALE"
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres "$DB" \
    > "$WORK/pgbench-init.log" 2>&1 || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ------------------------------------------------------------------ PgBouncer, HAProxy
start_pgbouncer 200 100
[ "$(sql "$BOUNCER_PORT" 'select 1' "$DB")" = 1 ] || die "query through pgbouncer failed"
log "PgBouncer $("$PGBOUNCER" --version | head -n1 | awk '{print $2}') on 127.0.0.1:$BOUNCER_PORT (session pooling)"
start_haproxy 1000
[ "$(sql "$HAPROXY_PORT" 'select 1' "$DB")" = 1 ] || die "query through haproxy failed"
log "HAProxy $("$HAPROXY" -v | head -n1 | awk '{print $3}') on 127.0.0.1:$HAPROXY_PORT (TCP relay, $(nproc) threads)"

# ------------------------------------------------------------------ pgcutover
PGC_REASON=""
PGC_PORT=""
if [ "$BUILD" -eq 1 ]; then
    log "cargo build --release --bin pgcutover"
    if ! (cd "$REPO" && cargo build --release --bin pgcutover) > "$WORK/build.log" 2>&1; then
        tail -n 20 "$WORK/build.log" >&2
        PGC_REASON="cargo build --release --bin pgcutover failed: $(grep -m1 '^error' "$WORK/build.log" || tail -n1 "$WORK/build.log")"
    fi
fi
if [ -z "$PGC_REASON" ] && [ ! -x "$PGCUTOVER_BIN" ]; then
    PGC_REASON="no binary at $PGCUTOVER_BIN"
fi
# start_pgcutover NAME BIN: a pgcutover proxy in front of the cluster; sets
# STARTED_PORT and STARTED_PID, or STARTED_REASON when it cannot be used.
start_pgcutover() {
    local name="$1" bin="$2" out code
    STARTED_PORT="$(free_port)"; STARTED_PID=""; STARTED_REASON=""
    cat > "$WORK/$name.toml" <<EOF
[proxy]
listen = "127.0.0.1:$STARTED_PORT"
admin_listen = "127.0.0.1:$(free_port)"
server_tls_mode = "disable"

[auth]
auth_type = "scram-sha-256"
auth_file = "$WORK/userlist.txt"

[blue]
url = "postgres://postgres@127.0.0.1:$PGPORT/postgres"
EOF
    "$bin" proxy --config "$WORK/$name.toml" > "$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    if ! wait_port "$STARTED_PORT" 20 "$STARTED_PID"; then
        if kill -0 "$STARTED_PID" 2>/dev/null; then
            STARTED_REASON="$name is not listening on $STARTED_PORT after 20 s"
        else
            code=0; wait "$STARTED_PID" 2>/dev/null || code=$?
            STARTED_REASON="$name exited with status $code: $(tail -n 3 "$WORK/$name.log" | tr '\n' ' ')"
            STARTED_PID=""
        fi
    elif ! out="$(sql "$STARTED_PORT" 'select 1' "$DB" 2>&1)" || [ "$out" != 1 ]; then
        STARTED_REASON="select 1 through $name failed: $(printf '%s' "$out" | tail -n 2 | tr '\n' ' ')"
    fi
    if [ -n "$STARTED_REASON" ]; then
        log "$name log tail:"; tail -n 10 "$WORK/$name.log" >&2 || true
    fi
}
if [ -z "$PGC_REASON" ]; then
    start_pgcutover pgcutover "$PGCUTOVER_BIN"
    PGC_PORT="$STARTED_PORT"; PROXY_PID="$STARTED_PID"; PGC_REASON="$STARTED_REASON"
fi
BASE_PORT=""
if [ -n "$BASELINE_BIN" ]; then
    [ -x "$BASELINE_BIN" ] || die "--baseline $BASELINE_BIN is not an executable"
    start_pgcutover baseline "$BASELINE_BIN"
    [ -z "$STARTED_REASON" ] || die "the baseline cannot be used: $STARTED_REASON"
    BASE_PORT="$STARTED_PORT"; BASELINE_PID="$STARTED_PID"
    log "baseline pgcutover ($BASELINE_BIN) on 127.0.0.1:$BASE_PORT"
fi
if [ -n "$PGC_REASON" ]; then
    log "pgcutover: n/a ($PGC_REASON)"
else
    log "pgcutover on 127.0.0.1:$PGC_PORT"
fi

# ------------------------------------------------------------------ runs
ROW_NAMES=(
    "select-only, c=1 j=1"
    "select-only, c=8 j=2"
    "select-only, c=32 j=2"
    "select-only prepared, c=8 j=2"
    "TPC-B, c=8 j=2"
    "select-only reconnect (-C), c=8 j=2"
)
ROW_ARGS=(
    "-S -c 1 -j 1"
    "-S -c 8 -j 2"
    "-S -c 32 -j 2"
    "-S -M prepared -c 8 -j 2"
    "-c 8 -j 2"
    "-S -C -c 8 -j 2"
)
if [ -n "$ONLY" ]; then
    kept_names=(); kept_args=()
    for i in "${!ROW_NAMES[@]}"; do
        if [[ "${ROW_NAMES[$i]}" =~ $ONLY ]]; then kept_names+=("${ROW_NAMES[$i]}"); kept_args+=("${ROW_ARGS[$i]}"); fi
    done
    [ "${#kept_names[@]}" -gt 0 ] || die "--only $ONLY matches no row"
    ROW_NAMES=("${kept_names[@]}"); ROW_ARGS=("${kept_args[@]}")
fi
TARGETS=(direct pgbouncer haproxy pgcutover)
declare -A PORT_OF=([direct]="$PGPORT" [pgbouncer]="$BOUNCER_PORT" [haproxy]="$HAPROXY_PORT" [pgcutover]="$PGC_PORT" [baseline]="$BASE_PORT")
declare -A PID_OF=([direct]="" [pgbouncer]="$(cat "$WORK/pgbouncer.pid" 2>/dev/null || true)" [haproxy]="$HAPROXY_PID" [pgcutover]="$PROXY_PID" [baseline]="$BASELINE_PID")
if [ -n "$BASELINE_BIN" ]; then TARGETS+=(baseline); fi
declare -A TPS LAT CPU CSW CLIENT

cpu_ticks() { # pid -> utime+stime in clock ticks ("" when unknown)
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] && awk '{print $14 + $15}' "/proc/$1/stat"
}
CLK_TCK="$(getconf CLK_TCK)"
ctx_switches() { # pid -> voluntary + involuntary context switches of all its threads
    [ -n "$1" ] && [ -d "/proc/$1/task" ] && cat /proc/"$1"/task/*/status 2>/dev/null \
        | awk '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'
}

run_cell() { # port pid args... -> "tps latency_ms cpu_us_per_tx csw_per_tx client_cpu_us_per_tx" or "err"
    local port="$1" pid="$2" out tps lat tx c0 c1 cpu s0 s1 csw client_s client
    shift 2
    c0="$(cpu_ticks "$pid" || true)"; s0="$(ctx_switches "$pid" || true)"
    # shellcheck disable=SC2068
    if ! out="$(timeout $((SECS + 60)) "$PGBENCH" -n -T "$SECS" \
        -h 127.0.0.1 -p "$port" -U postgres "$@" "$DB" 2>&1)"; then
        printf '%s\n' "$out" | tail -n 3 >&2
        echo err; return
    fi
    c1="$(cpu_ticks "$pid" || true)"; s1="$(ctx_switches "$pid" || true)"
    # pgbench's own CPU (this subshell's children): with -C its SCRAM (PBKDF2 per
    # login) bounds what any hop can gain.
    # (`times` itself, not in a pipe: a forked shell has no children's times.)
    times > "$WORK/times"
    client_s="$(tail -n1 "$WORK/times" | awk '{ split($1, u, /[ms]/); split($2, y, /[ms]/); print u[1] * 60 + u[2] + y[1] * 60 + y[2] }')"
    tps="$(printf '%s\n' "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n1)"
    lat="$(printf '%s\n' "$out" | sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' | head -n1)"
    tx="$(printf '%s\n' "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' | head -n1)"
    cpu=na
    if [ -n "$c0" ] && [ -n "$c1" ] && [ -n "$tx" ] && [ "$tx" -gt 0 ]; then
        cpu="$(awk -v d=$((c1 - c0)) -v t="$tx" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", d * 1e6 / hz / t }')"
    fi
    csw=na
    if [ -n "$s0" ] && [ -n "$s1" ] && [ -n "$tx" ] && [ "$tx" -gt 0 ]; then
        csw="$(awk -v d=$((s1 - s0)) -v t="$tx" 'BEGIN { printf "%.2f", d / t }')"
    fi
    client=na
    if [ -n "$client_s" ] && [ -n "$tx" ] && [ "$tx" -gt 0 ]; then
        client="$(awk -v s="$client_s" -v t="$tx" 'BEGIN { printf "%.1f", s * 1e6 / t }')"
    fi
    if [ -z "$tps" ] || [ -z "$lat" ]; then echo err; else echo "$tps $lat $cpu $csw $client"; fi
}

log "warm-up: 2 s select-only, direct"
timeout 60 "$PGBENCH" -n -S -T 2 -c 4 -j 2 -h 127.0.0.1 -p "$PGPORT" \
    -U postgres "$DB" > /dev/null 2>&1 || true

total=$(( ${#ROW_NAMES[@]} * ${#TARGETS[@]} * RUNS ))
log "$total runs of ${SECS}s each (about $(( total * SECS / 60 + 1 )) min)"
for run in $(seq 1 "$RUNS"); do
    for i in "${!ROW_NAMES[@]}"; do
        for t in "${TARGETS[@]}"; do
            if [ "$t" = pgcutover ] && [ -n "$PGC_REASON" ]; then continue; fi
            # shellcheck disable=SC2086
            res="$(run_cell "${PORT_OF[$t]}" "${PID_OF[$t]}" ${ROW_ARGS[$i]})"
            if [ "$res" = err ]; then
                TPS["$i,$t,$run"]=err; LAT["$i,$t,$run"]=err; CPU["$i,$t,$run"]=err; CSW["$i,$t,$run"]=err; CLIENT["$i,$t,$run"]=err
            else
                read -r TPS["$i,$t,$run"] LAT["$i,$t,$run"] CPU["$i,$t,$run"] CSW["$i,$t,$run"] CLIENT["$i,$t,$run"] <<< "$res"
            fi
            log "run $run/$RUNS | ${ROW_NAMES[$i]} | $t: tps ${TPS["$i,$t,$run"]}, latency ${LAT["$i,$t,$run"]} ms"
        done
    done
done

# ------------------------------------------------------------------ report
median() { # values... (any "err" -> err)
    local v
    for v in "$@"; do [ "$v" = err ] && { echo err; return; }; done
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
        if (NR == 0) { print "err"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
cell_median() { # array-name row target
    local -n arr="$1"
    local vals=() r
    for r in $(seq 1 "$RUNS"); do vals+=("${arr["$2,$3,$r"]:-err}"); done
    median "${vals[@]}"
}
fmt_tps() { if [ "$1" = err ]; then echo err; else printf '%.0f' "$1"; fi; }
fmt_ratio() { # tps direct
    if [ "$1" = err ] || [ "$2" = err ]; then echo "err"; else awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f (%.2f)", a, (b > 0 ? a / b : 0) }'; fi
}
fmt_lat() { if [ "$1" = err ]; then echo err; else printf '%.3f' "$1"; fi; }

echo
echo "### Proxy overhead: PostgreSQL 15 direct vs PgBouncer (session) vs HAProxy (TCP) vs pgcutover"
echo
echo "pgbench scale $SCALE, ${SECS}s per run, median of $RUNS run(s); all over TCP 127.0.0.1 with SCRAM-SHA-256;"
echo "$(nproc) cores shared by pgbench, postgres and the proxy; $(date -u +%Y-%m-%dT%H:%MZ);"
if [ -n "$PGC_REASON" ]; then pgc_desc="n/a"; else pgc_desc="$PGCUTOVER_BIN"; fi
echo "$("$PG15_BINDIR/postgres" --version); $("$PGBOUNCER" --version | head -n1); HAProxy $("$HAPROXY" -v | head -n1 | awk '{print $3}'); pgcutover: $pgc_desc"
echo
echo "| row | direct tps | pgbouncer tps (ratio) | haproxy tps (ratio) | pgcutover tps (ratio) | latency ms direct / pgbouncer / haproxy / pgcutover |"
echo "|---|---:|---:|---:|---:|---|"
for i in "${!ROW_NAMES[@]}"; do
    d_tps="$(cell_median TPS "$i" direct)"; d_lat="$(cell_median LAT "$i" direct)"
    b_tps="$(cell_median TPS "$i" pgbouncer)"; b_lat="$(cell_median LAT "$i" pgbouncer)"
    h_tps="$(cell_median TPS "$i" haproxy)"; h_lat="$(cell_median LAT "$i" haproxy)"
    if [ -n "$PGC_REASON" ]; then
        p_cell="n/a"; p_lat="n/a"
    else
        p_tps="$(cell_median TPS "$i" pgcutover)"; p_lat="$(fmt_lat "$(cell_median LAT "$i" pgcutover)")"
        p_cell="$(fmt_ratio "$p_tps" "$d_tps")"
    fi
    echo "| ${ROW_NAMES[$i]} | $(fmt_tps "$d_tps") | $(fmt_ratio "$b_tps" "$d_tps") | $(fmt_ratio "$h_tps" "$d_tps") | $p_cell | $(fmt_lat "$d_lat") / $(fmt_lat "$b_lat") / $(fmt_lat "$h_lat") / $p_lat |"
done
echo
added() { # target -> µs added per query at c=1 (row 0) vs direct
    local d t
    d="$(cell_median LAT 0 direct)"; t="$(cell_median LAT 0 "$1")"
    if [ "$d" = err ] || [ "$t" = err ]; then echo err; else awk -v a="$t" -v b="$d" 'BEGIN { printf "%+.0f µs", (a - b) * 1000 }'; fi
}
if [ -n "$PGC_REASON" ]; then pgc_added="n/a"; else pgc_added="$(added pgcutover)"; fi
echo
echo "Proxy CPU time (user + system) per transaction, µs, and the proxy's context switches per"
echo "transaction, all threads (medians; steadier than tps on a shared machine):"
echo
echo "| row | pgbouncer µs | haproxy µs | pgcutover µs | pgbouncer csw | haproxy csw | pgcutover csw |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for i in "${!ROW_NAMES[@]}"; do
    if [ -n "$PGC_REASON" ]; then p_cpu="n/a"; p_csw="n/a"; else
        p_cpu="$(cell_median CPU "$i" pgcutover)"; p_csw="$(cell_median CSW "$i" pgcutover)"; fi
    echo "| ${ROW_NAMES[$i]} | $(cell_median CPU "$i" pgbouncer) | $(cell_median CPU "$i" haproxy) | $p_cpu | $(cell_median CSW "$i" pgbouncer) | $(cell_median CSW "$i" haproxy) | $p_csw |"
done
echo
echo "pgbench's own CPU time per transaction, µs (what the client spends, whatever the hop):"
echo
echo "| row | direct | pgbouncer | haproxy | pgcutover |"
echo "|---|---:|---:|---:|---:|"
for i in "${!ROW_NAMES[@]}"; do
    if [ -n "$PGC_REASON" ]; then p_client="n/a"; else p_client="$(cell_median CLIENT "$i" pgcutover)"; fi
    echo "| ${ROW_NAMES[$i]} | $(cell_median CLIENT "$i" direct) | $(cell_median CLIENT "$i" pgbouncer) | $(cell_median CLIENT "$i" haproxy) | $p_client |"
done
if [ -n "$BASELINE_BIN" ]; then
    echo
    echo "Before/after, interleaved in the same rounds: baseline $BASELINE_BIN vs $PGCUTOVER_BIN (tps ratio to direct; proxy CPU µs per transaction):"
    echo
    echo "| row | baseline tps (ratio) | pgcutover tps (ratio) | baseline CPU µs/tx | pgcutover CPU µs/tx |"
    echo "|---|---:|---:|---:|---:|"
    for i in "${!ROW_NAMES[@]}"; do
        d_tps="$(cell_median TPS "$i" direct)"
        echo "| ${ROW_NAMES[$i]} | $(fmt_ratio "$(cell_median TPS "$i" baseline)" "$d_tps") | $(fmt_ratio "$(cell_median TPS "$i" pgcutover)" "$d_tps") | $(cell_median CPU "$i" baseline) | $(cell_median CPU "$i" pgcutover) |"
    done
fi
echo
if [ "${ROW_NAMES[0]}" = "select-only, c=1 j=1" ]; then
    echo "Added latency per query at c=1 (select-only) vs direct: pgbouncer $(added pgbouncer), haproxy $(added haproxy), pgcutover $pgc_added"
fi
if [ -n "$PGC_REASON" ]; then
    echo
    echo "pgcutover n/a: $PGC_REASON"
fi
