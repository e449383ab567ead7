# Shared by scripts/try-proxy.sh and bench/*.sh: a throwaway local PostgreSQL 15
# cluster on a free loopback port, plus small process and port helpers.
# Source it after setting LOG_PREFIX; it defines functions only (and IS_ROOT).

PG15_BINDIR="${PG15_BINDIR:-/usr/lib/postgresql/15/bin}"
PSQL="$PG15_BINDIR/psql"
PGBENCH="$PG15_BINDIR/pgbench"

log() { printf '[%s] %s\n' "${LOG_PREFIX:-pgcutover}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${LOG_PREFIX:-pgcutover}" "$*" >&2; exit 1; }

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1
# initdb, postgres and pgbouncer refuse to run as root.
as_pg() {
    if [ "$IS_ROOT" -eq 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

require_pg15() {
    local b
    for b in initdb pg_ctl postgres psql pgbench; do
        [ -x "$PG15_BINDIR/$b" ] || die "$PG15_BINDIR/$b missing: run scripts/setup.sh"
    done
}

# A work dir the postgres OS user can write.
make_workdir() { # template -> path
    local dir
    dir="$(mktemp -d "/tmp/$1.XXXXXX")"
    chmod 755 "$dir"
    [ "$IS_ROOT" -eq 1 ] && chown postgres: "$dir"
    echo "$dir"
}

stop_pid() { # pid: TERM, wait up to 5 s, then KILL
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() { # a port no socket uses (bounded tries)
    local i p
    for i in $(seq 1 100); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 30000 ))
        # Any state, not just listening: the range overlaps the ephemeral ports, and
        # a port an outgoing connection holds cannot be bound either.
        if ! port_open "$p" && ! ss -Htan "sport = :$p" 2>/dev/null | grep -q .; then
            echo "$p"; return 0
        fi
    done
    die "no free port found"
}

wait_port() { # port seconds [pid]: wait until the port accepts connections
    local port="$1" secs="$2" pid="${3:-}" i
    for i in $(seq 1 $((secs * 10))); do
        port_open "$port" && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

# PostgreSQL 17's bin dir, installed by scripts/setup.sh (same rule as the harness).
pg17_bindir() {
    local cache="${PGCUTOVER_CACHE_DIR:-}"
    if [ -z "$cache" ]; then
        if [ "$IS_ROOT" -eq 1 ]; then cache=/var/cache/pgcutover; else cache="${XDG_CACHE_HOME:-$HOME/.cache}/pgcutover"; fi
    fi
    echo "${PG17_BINDIR:-$cache/pg17/bin}"
}

# Starts PostgreSQL 15 in $1/data with superuser postgres / password $2 (SCRAM over
# TCP), extra postgresql.conf lines on stdin. Sets PGPORT.
start_pg15() { # workdir password
    start_pg "$PG15_BINDIR" "$@"
}

# The same for the server binaries in $1 (e.g. "$(pg17_bindir)"); the cluster lives
# in $2/data.
start_pg() { # bindir workdir password
    local bindir="$1" work="$2" password="$3" data="$2/data" extra attempt port
    extra="$(cat)"
    printf '%s\n' "$password" > "$work/pw"
    chmod 644 "$work/pw"
    log "initdb ($("$bindir/postgres" --version)) in $data"
    as_pg "$bindir/initdb" -D "$data" -A trust --auth-host=scram-sha-256 --auth-local=trust \
        -U postgres --pwfile="$work/pw" -E UTF8 --locale=C -N --no-instructions > "$work/initdb.log" 2>&1 \
        || { cat "$work/initdb.log" >&2; die "initdb failed"; }
    rm -f "$work/pw"
    cat > "$data/pg_hba.conf" <<HBA
local all all trust
host all all 127.0.0.1/32 scram-sha-256
HBA
    cp "$data/postgresql.conf" "$work/postgresql.conf.orig"
    PGPORT=""
    for attempt in 1 2 3 4 5; do
        port="$(free_port)"
        cat "$work/postgresql.conf.orig" - > "$data/postgresql.conf" <<CONF
# ---- scripts/lib/local-pg.sh ----
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work'
password_encryption = 'scram-sha-256'
logging_collector = off
wal_level = logical
$extra
CONF
        if as_pg "$bindir/pg_ctl" -D "$data" -l "$work/postgres.log" -w -t 60 start >/dev/null 2>&1; then
            PGPORT="$port"; break
        fi
        log "postgres did not start on port $port (attempt $attempt):"
        tail -n 5 "$work/postgres.log" >&2 || true
    done
    [ -n "$PGPORT" ] || die "could not start PostgreSQL"
    log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT"
}

stop_pg15() { # workdir
    stop_pg "$PG15_BINDIR" "$1"
}

stop_pg() { # bindir workdir (never fails: it runs in cleanups)
    local data="$2/data" pid
    if [ -f "$data/postmaster.pid" ]; then
        as_pg "$1/pg_ctl" -D "$data" stop -m immediate -w -t 30 >/dev/null 2>&1 && return 0
        # pg_ctl gave up or the server is already going: stop the postmaster by pid.
        pid="$(head -n1 "$data/postmaster.pid" 2>/dev/null)" || return 0
        [ -n "$pid" ] && stop_pid "$pid"
    fi
    return 0
}

# Runs SQL as postgres over TCP: port sql [db]; password in $PGPASSWORD.
sql() {
    PGCONNECT_TIMEOUT=10 timeout 60 "$PSQL" -X -q -At -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$1" -U postgres -d "${3:-postgres}" -c "$2"
}
