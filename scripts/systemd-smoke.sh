#!/usr/bin/env bash
# Runs deploy/systemd/pgcutover.service under a real systemd: a Debian container with
# systemd as PID 1 (podman --systemd=always; --privileged, so that the unit's
# sandboxing can set up its namespaces), the release binary and the unit mounted
# in, in front of a PostgreSQL 15 on the host. Checks that `systemctl start` returns
# once the proxy said READY=1 (Type=notify) with the hardening in force, that psql
# works through it, and that `systemctl stop` drains and ends it cleanly.
#
#   scripts/systemd-smoke.sh
#
# Needs what scripts/image.sh installs (podman, mmdebstrap) and root; builds the
# systemd base image from Debian packages once (cached).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/smoke-postgres.sh
. scripts/lib/smoke-postgres.sh

log() { printf '[systemd-smoke] %s\n' "$*"; }
die() { printf '[systemd-smoke] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (podman with systemd inside needs it)"
CACHE_DIR=${PGCUTOVER_CACHE_DIR:-/var/cache/pgcutover}
command -v podman >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 \
    || die "podman and mmdebstrap missing: scripts/image.sh installs them"
export CONTAINERS_CONF="$CACHE_DIR/containers.conf"
[ -f "$CONTAINERS_CONF" ] || die "$CONTAINERS_CONF missing: run scripts/image.sh first"
BASE=localhost/pgcutover-systemd-base:bookworm
if ! podman image exists "$BASE"; then
    tar="$CACHE_DIR/bookworm-systemd.tar"
    if [ ! -s "$tar" ]; then
        log "building a bookworm image with systemd (mmdebstrap)"
        rm -f "$CACHE_DIR/bookworm-systemd.partial.tar"
        mmdebstrap --quiet --variant=minbase --include=systemd,systemd-sysv,dbus bookworm \
            "$CACHE_DIR/bookworm-systemd.partial.tar" || die "mmdebstrap failed"
        mv "$CACHE_DIR/bookworm-systemd.partial.tar" "$tar"
    fi
    podman import -q "$tar" "$BASE" >/dev/null
fi
[ -x target/release/pgcutover ] || cargo build --release --quiet --bin pgcutover

pg_port=$(free_port)
proxy_port=$(free_port)
admin_port=$(free_port)
work=$(mktemp -d "${TMPDIR:-/tmp}/pgcutover-systemd.XXXXXX")
chmod 0755 "$work"
container="pgcutover-systemd-$$"
cleanup() {
    podman rm -f "$container" >/dev/null 2>&1 || true
    smoke_postgres_stop "$work"
    rm -rf "$work"
}
trap cleanup EXIT

smoke_postgres "$work" "$pg_port" "$proxy_port" "$admin_port"

log "systemd in a container, the unit and the binary mounted in"
podman run -d --name "$container" --privileged --systemd=always --network host \
    -v "$PWD/target/release/pgcutover:/usr/local/bin/pgcutover:ro" \
    -v "$PWD/deploy/systemd/pgcutover.service:/etc/systemd/system/pgcutover.service:ro" \
    -v "$PWD/deploy/systemd/pgcutover.sysusers:/usr/lib/sysusers.d/pgcutover.conf:ro" \
    -v "$work/etc:/etc/pgcutover:ro" \
    "$BASE" /sbin/init >/dev/null
state=""
for _ in $(seq 1 100); do
    state=$(podman exec "$container" systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.2
done
case "$state" in running | degraded) ;; *) die "systemd in the container did not come up ($state)" ;; esac
podman exec "$container" systemd-sysusers >/dev/null
podman exec "$container" systemctl daemon-reload

start=$(date +%s%N)
podman exec "$container" systemctl start pgcutover.service \
    || { podman exec "$container" journalctl -u pgcutover --no-pager | tail -20 >&2; die "systemctl start pgcutover failed"; }
took=$((($(date +%s%N) - start) / 1000000))
show() { podman exec "$container" systemctl show -p "$1" --value pgcutover.service; }
[ "$(show ActiveState)" = active ] || die "pgcutover.service is $(show ActiveState)"
status_text=$(show StatusText)
[ "$status_text" = "serving on 127.0.0.1:$proxy_port" ] || die "StatusText is \"$status_text\""
[ "$(show User)" = pgcutover ] || die "the unit does not run as pgcutover"
log "systemctl start returned after READY=1 in $took ms: active, \"$status_text\""

got=$(PGPASSWORD="$SMOKE_APP_PASSWORD" "$PG/psql" -X -At -h 127.0.0.1 -p "$proxy_port" -U app -d app -c "select 'through the unit'")
[ "$got" = "through the unit" ] || die "psql through the unit answered: $got"
log "psql through the unit works"

podman exec "$container" systemctl stop pgcutover.service
[ "$(show ActiveState)" = inactive ] || die "after stop: $(show ActiveState)"
[ "$(show Result)" = success ] || die "after stop, Result=$(show Result)"
journal=$(podman exec "$container" journalctl -u pgcutover --no-pager)
printf '%s\n' "$journal" | grep -q "pgcutover proxy stopped" || { printf '%s\n' "$journal" | tail -20 >&2; die "no graceful stop in the journal"; }
log "systemctl stop: drained, Result=success"
log "systemd unit ok"
