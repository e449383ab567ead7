#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets of both fuzz crates (protocol/fuzz and
# proxy/fuzz), one at a time, and prints per target: executions, exec/s, wall time,
# corpus size and whether it crashed.
#
#   scripts/fuzz.sh [--smoke] [target...]
#
#   --smoke     20 s per target (for CI); default: 10,000,000 executions per target,
#               bounded by FUZZ_MAX_TIME seconds (default 1800) each
#   target...   only these (default: every target of both crates)
#
# Environment: FUZZ_SANITIZER (default none; `address` for AddressSanitizer),
# FUZZ_RUNS (default 10000000), FUZZ_MAX_TIME (default 1800), FUZZ_SMOKE_TIME (20).
#
# Needs a nightly toolchain (cargo-fuzz passes -Z flags); installs cargo-fuzz with
# `cargo install cargo-fuzz --locked` when it is missing. The corpus grows in
# <crate>/fuzz/corpus/<target> (git-ignored), seeded from <crate>/fuzz/seeds/<target>;
# a crash, timeout or OOM is written to <crate>/fuzz/artifacts/<target>/ and makes
# the script exit 1 after the other targets ran.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

smoke=false
targets=()
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=true ;;
        -h | --help)
            sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "unknown option: $arg (usage: scripts/fuzz.sh [--smoke] [target...])" >&2
            exit 2
            ;;
        *) targets+=("$arg") ;;
    esac
done

SANITIZER=${FUZZ_SANITIZER:-none}
RUNS=${FUZZ_RUNS:-10000000}
MAX_TIME=${FUZZ_MAX_TIME:-1800}
SMOKE_TIME=${FUZZ_SMOKE_TIME:-20}
CRATES=(protocol proxy)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: no nightly Rust toolchain. cargo-fuzz builds with -Z flags, which" >&2
    echo "only nightly accepts: install one with 'rustup toolchain install nightly'." >&2
    exit 3
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

# target -> crate, from `cargo fuzz list` in each crate.
declare -A crate_of=()
all=()
for crate in "${CRATES[@]}"; do
    while read -r t; do
        [ -n "$t" ] || continue
        crate_of[$t]=$crate
        all+=("$t")
    done < <(cd "$ROOT/$crate" && cargo +nightly fuzz list)
done
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
    if [ -z "${crate_of[$t]:-}" ]; then
        echo "unknown target: $t (targets: ${all[*]})" >&2
        exit 2
    fi
done

build_flags=(-s "$SANITIZER" --debug-assertions)
declare -A built=()
for t in "${targets[@]}"; do
    crate=${crate_of[$t]}
    if [ -z "${built[$crate]:-}" ]; then
        echo "== building $crate/fuzz (sanitizer: $SANITIZER, debug assertions on)"
        (cd "$ROOT/$crate" && nice -n 19 cargo +nightly fuzz build "${build_flags[@]}")
        built[$crate]=1
    fi
done

if $smoke; then
    limit=(-max_total_time="$SMOKE_TIME")
    bound=$((SMOKE_TIME + 60))
else
    limit=(-runs="$RUNS" -max_total_time="$MAX_TIME")
    bound=$((MAX_TIME + 120))
fi

failed=0
summary=()
for t in "${targets[@]}"; do
    crate=${crate_of[$t]}
    dir="$ROOT/$crate/fuzz"
    bin="$dir/target/x86_64-unknown-linux-gnu/release/$t"
    corpus="$dir/corpus/$t"
    artifacts="$dir/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    opts=(-timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/")
    if [ -f "$dir/dict/$t.dict" ]; then
        opts+=(-dict="$dir/dict/$t.dict")
    fi
    case "$t" in
        # Startup packets go up to 10000 bytes: let inputs exceed the cap.
        startup) opts+=(-max_len=10240) ;;
    esac
    seeds=()
    if [ -d "$dir/seeds/$t" ]; then
        seeds=("$dir/seeds/$t")
    fi
    log=$(mktemp "${TMPDIR:-/tmp}/fuzz-$t.XXXXXX.log")
    before=$(find "$artifacts" -type f | wc -l)
    echo "== $crate/fuzz $t (log: $log)"
    start=$(date +%s)
    rc=0
    (cd "$dir" && timeout --kill-after=30 "$bound" nice -n 19 \
        "$bin" "${opts[@]}" "${limit[@]}" "$corpus" "${seeds[@]}") >"$log" 2>&1 || rc=$?
    wall=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    files=$(find "$corpus" -type f | wc -l)
    bytes=$(find "$corpus" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    new=$(($(find "$artifacts" -type f | wc -l) - before))
    if [ "$rc" -eq 0 ] && [ "$new" -eq 0 ]; then
        crash=none
    else
        crash="rc=$rc, $new new artifact(s) in ${artifacts#"$ROOT"/}"
        failed=1
        grep -E "^==[0-9]+== ERROR|panicked at|^SUMMARY|Test unit written" "$log" | head -5 || true
    fi
    line=$(printf '%-16s %12s %10s %7ss %8s files %10s bytes  crash: %s' \
        "$t" "${execs:-?}" "${rate:-?}/s" "$wall" "$files" "$bytes" "$crash")
    echo "$line"
    summary+=("$line")
done

echo
echo "target           executions     exec/s    wall     corpus                   crash"
printf '%s\n' "${summary[@]}"
exit "$failed"
