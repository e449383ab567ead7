#!/usr/bin/env bash
# The main job on this machine: a local blue (PostgreSQL 15) and green (PostgreSQL 17),
# a workload through the pgcutover proxy, replication blue → green, a switchover
# mid-load, and a report of what the clients saw (exit 0 only when every check holds).
# Installs what is missing first (scripts/setup.sh), builds the release binary, then
# runs `pgcutover demo` with this script's arguments:
#
#   scripts/demo.sh [--clients N] [--seconds S] [--keep]
#     --clients N   clients writing through the proxy (default 16)
#     --seconds S   seconds of load once green is in sync; the switchover runs halfway (default 10)
#     --keep        after the report, keep everything running and print how to connect; Ctrl-C ends it
#
# Ctrl-C at any point stops the servers and removes their files.
set -euo pipefail
case "${1:-}" in
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/setup.sh" >&2
echo "[demo] building pgcutover (release)" >&2
(cd "$REPO" && cargo build --release --bin pgcutover --quiet)
exec "${CARGO_TARGET_DIR:-$REPO/target}/release/pgcutover" demo "$@"
