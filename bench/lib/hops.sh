# The reference hops the benchmarks run beside pgcutover, on free loopback ports in
# front of the cluster at $PGPORT, with their files in $WORK. Sourced after
# scripts/lib/local-pg.sh; needs REPO, WORK, PGPORT and PASSWORD. PGBOUNCER and
# HAPROXY in the environment choose other binaries.

PGBOUNCER="${PGBOUNCER:-/usr/sbin/pgbouncer}"
HAPROXY="${HAPROXY:-/usr/sbin/haproxy}"

require_hops() {
    [ -x "$PGBOUNCER" ] || die "$PGBOUNCER missing: run scripts/setup.sh"
    [ -x "$HAPROXY" ] || die "$HAPROXY missing: run scripts/setup.sh"
}

# start_pgbouncer MAX_CLIENTS POOL_SIZE: PgBouncer in session mode, user postgres
# with $PASSWORD; sets BOUNCER_PORT (its pid is in $WORK/pgbouncer.pid).
start_pgbouncer() {
    printf '"postgres" "%s"\n' "$PASSWORD" > "$WORK/userlist.txt"
    chmod 644 "$WORK/userlist.txt"
    BOUNCER_PORT="$(free_port)"
    sed -e "s|@PORT@|$BOUNCER_PORT|g" -e "s|@PGPORT@|$PGPORT|g" -e "s|@DIR@|$WORK|g" \
        -e "s|^max_client_conn = .*|max_client_conn = $1|" \
        -e "s|^default_pool_size = .*|default_pool_size = $2|" \
        "$REPO/bench/pgbouncer.ini.tmpl" > "$WORK/pgbouncer.ini"
    chmod 644 "$WORK/pgbouncer.ini"
    as_pg "$PGBOUNCER" -d -q "$WORK/pgbouncer.ini" || { cat "$WORK/pgbouncer.log" >&2 || true; die "pgbouncer failed to start"; }
    wait_port "$BOUNCER_PORT" 10 || { cat "$WORK/pgbouncer.log" >&2 || true; die "pgbouncer is not listening on $BOUNCER_PORT"; }
}

# start_haproxy MAX_CONNECTIONS: a TCP relay with as many threads as cores, as a
# tuned deployment would run it; sets HAPROXY_PORT and HAPROXY_PID.
start_haproxy() {
    HAPROXY_PORT="$(free_port)"
    cat > "$WORK/haproxy.cfg" <<CFG
global
    maxconn $1
    nbthread $(nproc)
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend pg
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend pg
backend pg
    server pg15 127.0.0.1:$PGPORT
CFG
    "$HAPROXY" -db -f "$WORK/haproxy.cfg" > "$WORK/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    wait_port "$HAPROXY_PORT" 10 "$HAPROXY_PID" || { cat "$WORK/haproxy.log" >&2 || true; die "haproxy is not listening on $HAPROXY_PORT"; }
}
