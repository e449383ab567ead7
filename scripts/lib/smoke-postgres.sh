# Sourced by scripts/image.sh and scripts/systemd-smoke.sh: a throwaway PostgreSQL 15
# on 127.0.0.1 with an `app` role and database, and the proxy config that reaches it
# (files under /etc/pgcutover inside the container; plain TCP on loopback).
#
#   smoke_postgres WORK PG_PORT PROXY_PORT ADMIN_PORT
#
# Leaves the cluster in WORK/pg (stop it with smoke_postgres_stop WORK) and the
# config in WORK/etc (pgcutover.toml, userlist.txt), readable by the proxy's user.
# The app's password is in SMOKE_APP_PASSWORD.

PG=/usr/lib/postgresql/15/bin
SMOKE_APP_PASSWORD=smoke-app-password

smoke_postgres() {
    local work="$1" pg_port="$2" proxy_port="$3" admin_port="$4"
    [ -x "$PG/postgres" ] || { echo "PostgreSQL 15 missing: run scripts/setup.sh" >&2; return 1; }
    echo smoke-superuser > "$work/pwfile" && chown postgres "$work/pwfile"
    mkdir "$work/pg" && chown postgres "$work/pg"
    runuser -u postgres -- "$PG/initdb" -D "$work/pg" -A scram-sha-256 -U postgres --pwfile="$work/pwfile" >/dev/null
    runuser -u postgres -- "$PG/pg_ctl" -D "$work/pg" -l "$work/pg/log" -w \
        -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work/pg" start >/dev/null
    PGPASSWORD=smoke-superuser "$PG/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
        -c "create role app login password '$SMOKE_APP_PASSWORD'" -c "create database app owner app" >/dev/null
    mkdir "$work/etc"
    cat > "$work/etc/pgcutover.toml" <<CONF
[proxy]
listen = "127.0.0.1:$proxy_port"
admin_listen = "127.0.0.1:$admin_port"
server_tls_mode = "disable"
[auth]
auth_file = "/etc/pgcutover/userlist.txt"
[blue]
url = "postgres://127.0.0.1:$pg_port/app"
CONF
    printf '"app" "%s"\n' "$SMOKE_APP_PASSWORD" > "$work/etc/userlist.txt"
    chmod 0755 "$work/etc" && chmod 0644 "$work/etc/"*
}

smoke_postgres_stop() {
    [ ! -d "$1/pg" ] || runuser -u postgres -- "$PG/pg_ctl" -D "$1/pg" -m immediate stop >/dev/null 2>&1 || true
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
