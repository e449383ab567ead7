//! Prometheus metrics (`prometheus-client`), served on the admin API's `GET /metrics`.
//!
//! Per-session gauges are not kept up to date on the data path: they are computed
//! from the session registry when scraped. Byte and message counters are added up by
//! each session and flushed once per state change (about once per transaction), so
//! the data path never touches a shared counter per message.

use crate::pool::IdleCount;
use crate::registry::SessionRegistry;
use pgcutover_api::Side;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

type Labels = [(&'static str, &'static str); 1];
type DatabaseLabels = [(&'static str, String); 1];
type PoolLabels = [(&'static str, String); 3];

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    client_connections: Family<Labels, Gauge>,
    server_connections: Family<Labels, Gauge>,
    held_clients: Gauge,
    in_flight: Gauge,
    held: Gauge,
    /// How long each held session was held, observed at resume.
    pub hold_seconds: Histogram,
    /// How long each drain took.
    pub drain_seconds: Histogram,
    route_flips: Family<Labels, Counter>,
    session_replays: Family<Labels, Counter>,
    pinned_sessions: Family<Labels, Counter>,
    server_reconnects: Family<Labels, Counter>,
    switchover_phase: Family<Labels, Gauge>,
    switchover_phase_seconds: Family<Labels, Histogram>,
    switchovers: Family<Labels, Counter>,
    /// Bytes forwarded client → server.
    pub bytes_to_server: Counter,
    /// Bytes forwarded server → client.
    pub bytes_to_client: Counter,
    /// Messages forwarded client → server.
    pub messages_to_server: Counter,
    /// Messages forwarded server → client.
    pub messages_to_client: Counter,
    replication_lag_bytes: Family<DatabaseLabels, Gauge>,
    ddl_drift: Family<DatabaseLabels, Gauge>,
    server_up: Family<Labels, Gauge>,
    route: Family<Labels, Gauge>,
    max_client_conn: Gauge,
    pool_logins: Family<Labels, Counter>,
    pool_closed: Family<Labels, Counter>,
    pool_idle: Family<PoolLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `pgcutover_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pgcutover");
        // Holds and drains are sub-second when things go well; buckets from 1 ms to ~33 s.
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let bytes =
            |family: &Family<Labels, Counter>, direction| family.get_or_create(&[("direction", direction)]).clone();
        let bytes_family = Family::<Labels, Counter>::default();
        let messages_family = Family::<Labels, Counter>::default();
        let m = Metrics {
            client_connections: Family::default(),
            server_connections: Family::default(),
            held_clients: Gauge::default(),
            in_flight: Gauge::default(),
            held: Gauge::default(),
            hold_seconds: seconds(),
            drain_seconds: seconds(),
            route_flips: Family::default(),
            session_replays: Family::default(),
            pinned_sessions: Family::default(),
            server_reconnects: Family::default(),
            switchover_phase: Family::default(),
            switchover_phase_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            switchovers: Family::default(),
            bytes_to_server: bytes(&bytes_family, "to_server"),
            bytes_to_client: bytes(&bytes_family, "to_client"),
            messages_to_server: bytes(&messages_family, "to_server"),
            messages_to_client: bytes(&messages_family, "to_client"),
            replication_lag_bytes: Family::default(),
            ddl_drift: Family::default(),
            server_up: Family::default(),
            route: Family::default(),
            max_client_conn: Gauge::default(),
            pool_logins: Family::default(),
            pool_closed: Family::default(),
            pool_idle: Family::default(),
            registry: Mutex::new(Registry::default()),
        };
        // name, help, metric: the exported names are `pgcutover_<name>` (+ `_total` for counters).
        macro_rules! register {
            ($($name:literal, $help:literal, $metric:expr;)*) => { $(registry.register($name, $help, $metric.clone());)* };
        }
        register! {
            "client_connections", "Client sessions by state (idle: at a transaction boundary; in_transaction: not)", m.client_connections;
            "server_connections", "Server connections by target database", m.server_connections;
            "held_clients", "Sessions waiting at a transaction boundary while the proxy is held", m.held_clients;
            "in_flight_transactions", "Sessions inside a transaction or with work in flight", m.in_flight;
            "held", "1 while new transactions are held", m.held;
            "hold_seconds", "How long each held session was held, observed at resume", m.hold_seconds;
            "drain_seconds", "How long each drain took", m.drain_seconds;
            "route_flips", "Route changes by target", m.route_flips;
            "session_replays", "Session state recreated on a new server, by kind", m.session_replays;
            "pinned_sessions", "Sessions that could not move, by what pinned them", m.pinned_sessions;
            "server_reconnects", "Server connections lost while their session was idle, by outcome (reconnected: the client noticed nothing; failed: it got the error)", m.server_reconnects;
            "switchover_phase", "1 for the phase of the switchover driving this proxy (whoever runs it)", m.switchover_phase;
            "switchover_phase_seconds", "How long each switchover phase took", m.switchover_phase_seconds;
            "switchovers", "Switchovers by outcome", m.switchovers;
            "bytes_proxied", "Bytes forwarded, by direction", bytes_family;
            "messages_proxied", "Protocol messages forwarded, by direction", messages_family;
            "replication_lag_bytes", "Bytes of blue's WAL the subscription has not confirmed, per database (-1: no slot; set by the replication monitor)", m.replication_lag_bytes;
            "ddl_drift", "DDL statements run on blue since replication began, per database (set by the replication monitor)", m.ddl_drift;
            "server_up", "1 if the server accepted a TCP connection at the last probe (every 5 s), by target", m.server_up;
            "route", "1 for the target new transactions are routed to, 0 for the other", m.route;
            "max_client_conn", "The configured [proxy] max_client_conn", m.max_client_conn;
            "server_logins", "Server connections a client session started on, by how (reused: an idle pooled connection; opened: a new login)", m.pool_logins;
            "pool_closed", "Idle pooled server connections closed, by reason", m.pool_closed;
            "pool_idle_server_connections", "Idle, reset server connections kept for the next client, by target, user and database", m.pool_idle;
        }
        *m.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = registry;
        m
    }

    /// Counts a route change to `target`.
    pub fn route_flipped(&self, target: Side) {
        self.route_flips.get_or_create(&[("target", target.name())]).inc();
    }

    /// Counts `n` pieces of replayed state of one kind (setting, prepared_statement, sql_prepare, listen).
    pub fn replayed(&self, kind: &'static str, n: usize) {
        if n > 0 {
            self.session_replays.get_or_create(&[("kind", kind)]).inc_by(n as u64);
        }
    }

    /// Counts a lost server connection by what became of its session.
    pub fn server_reconnect(&self, outcome: &'static str) {
        self.server_reconnects.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// A switchover phase ended after `took`; `next` is the phase now under way.
    pub fn switchover_phase(&self, ended: &'static str, next: Option<&'static str>, took: std::time::Duration) {
        self.switchover_phase_seconds
            .get_or_create(&[("phase", ended)])
            .observe(took.as_secs_f64());
        self.switchover_phase.get_or_create(&[("phase", ended)]).set(0);
        if let Some(next) = next {
            self.switchover_phase.get_or_create(&[("phase", next)]).set(1);
        }
    }

    /// Sets `pgcutover_replication_lag_bytes{database}` and `pgcutover_ddl_drift{database}`
    /// (DDL statements run on blue since replication began), from the replication monitor.
    pub fn set_replication_status(&self, database: &str, lag_bytes: i64, ddl_drift: i64) {
        let labels = [("database", database.to_owned())];
        self.replication_lag_bytes.get_or_create(&labels).set(lag_bytes);
        self.ddl_drift.get_or_create(&labels).set(ddl_drift);
    }

    /// Counts a finished switchover by outcome (completed, rolled_back, refused, dry_run).
    pub fn switchover_done(&self, outcome: &'static str) {
        self.switchovers.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Records a probe of `target`'s server.
    pub fn server_up(&self, target: Side, up: bool) {
        self.server_up
            .get_or_create(&[("target", target.name())])
            .set(up as i64);
    }

    /// Exports the configured client limit, for alerts on clients near it.
    pub fn set_max_client_conn(&self, limit: usize) {
        self.max_client_conn.set(limit as i64);
    }

    /// Counts the server connection a session started on: `reused` or `opened`.
    pub fn pool_login(&self, how: &'static str) {
        self.pool_logins.get_or_create(&[("how", how)]).inc();
    }

    /// Counts a pooled connection closed for `reason`.
    pub fn pool_closed(&self, reason: &'static str) {
        self.pool_closed.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a session pinned by `reason`.
    pub fn pinned(&self, reason: &'static str) {
        self.pinned_sessions.get_or_create(&[("reason", reason)]).inc();
    }

    /// The text exposition, with session gauges computed from `sessions` now.
    pub fn render(&self, sessions: &SessionRegistry, pool: &[IdleCount], held: bool, route: Side) -> String {
        // Rebuilt from the pool at every scrape: a pool that emptied disappears.
        self.pool_idle.clear();
        for p in pool {
            self.pool_idle
                .get_or_create(&[
                    ("target", p.target.name().to_owned()),
                    ("user", p.user.clone()),
                    ("database", p.database.clone()),
                ])
                .set(p.idle as i64);
        }
        let handles = sessions.handles();
        let in_transaction = handles.iter().filter(|h| h.in_transaction()).count() as i64;
        let idle = handles.len() as i64 - in_transaction;
        self.client_connections.get_or_create(&[("state", "idle")]).set(idle);
        self.client_connections
            .get_or_create(&[("state", "in_transaction")])
            .set(in_transaction);
        for target in [Side::Blue, Side::Green] {
            let n = handles.iter().filter(|h| h.target() == target).count() as i64;
            self.server_connections
                .get_or_create(&[("target", target.name())])
                .set(n);
        }
        self.in_flight.set(in_transaction);
        self.held_clients.set(if held { idle } else { 0 });
        self.held.set(held as i64);
        for target in [Side::Blue, Side::Green] {
            self.route
                .get_or_create(&[("target", target.name())])
                .set((target == route) as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(
            &mut out,
            &self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_the_prefix() {
        let m = Metrics::new();
        m.route_flipped(Side::Green);
        m.replayed("setting", 3);
        m.pinned("temporary tables");
        m.bytes_to_server.inc_by(10);
        m.drain_seconds.observe(0.004);
        m.set_replication_status("app", 4096, 2);
        m.pool_login("reused");
        m.pool_closed("flip");
        let pool = [IdleCount {
            target: Side::Blue,
            user: "app".into(),
            database: "shop".into(),
            idle: 2,
        }];
        let text = m.render(&SessionRegistry::default(), &pool, true, Side::Green);
        for needle in [
            "pgcutover_client_connections{state=\"idle\"} 0",
            "pgcutover_server_connections{target=\"green\"} 0",
            "pgcutover_held_clients 0",
            "pgcutover_in_flight_transactions 0",
            "pgcutover_held 1",
            "pgcutover_hold_seconds_bucket",
            "pgcutover_drain_seconds_count 1",
            "pgcutover_route_flips_total{target=\"green\"} 1",
            "pgcutover_session_replays_total{kind=\"setting\"} 3",
            "pgcutover_pinned_sessions_total{reason=\"temporary tables\"} 1",
            "pgcutover_bytes_proxied_total{direction=\"to_server\"} 10",
            "pgcutover_messages_proxied_total{direction=\"to_client\"} 0",
            "pgcutover_replication_lag_bytes{database=\"app\"} 4096",
            "pgcutover_ddl_drift{database=\"app\"} 2",
            "pgcutover_route{target=\"green\"} 1",
            "pgcutover_route{target=\"blue\"} 0",
            "pgcutover_server_logins_total{how=\"reused\"} 1",
            "pgcutover_pool_closed_total{reason=\"flip\"} 1",
            "pgcutover_pool_idle_server_connections{target=\"blue\",user=\"app\",database=\"shop\"} 2",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
