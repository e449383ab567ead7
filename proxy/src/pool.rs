//! Server-connection reuse (`pool_mode = "session"`): a client that leaves at a
//! transaction boundary hands its server connection back, reset with
//! `server_reset_query`, for the next client with the same user, database and
//! startup parameters on the same route. Logging into PostgreSQL (a fork, the
//! authentication, a cold catalog cache) is the dearest part of a short session;
//! a pooled connection skips all of it.
//!
//! A connection is only ever reused on the route epoch it was opened on: a flip
//! makes every idle connection to the old side unreachable, and the reaper closes
//! them. Exact startup parameters in the key mean the next client gets the same
//! ParameterStatus values a fresh login would report.

use crate::auth::ServerCredential;
use crate::metrics::Metrics;
use crate::route::Route;
use crate::server::ServerConn;
use crate::wire::Conn;
use pgcutover_api::Side;
use pgcutover_config::{PoolMode, ProxyConfig};
use pgcutover_protocol::backend::{self, TransactionStatus};
use pgcutover_protocol::build;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};
use tracing::debug;

/// How long a reset may take before the connection is given up instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// How long closing a connection may take (its Terminate write).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which connections are interchangeable: same side and route epoch, same startup
/// parameters (user and database among them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    target: Side,
    epoch: u64,
    /// Sorted, so that the order a driver sends them in does not matter.
    params: Vec<(String, String)>,
}

impl PoolKey {
    pub(crate) fn new(route: Route, params: &[(String, String)]) -> PoolKey {
        let mut params: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| !k.starts_with("_pq_."))
            .cloned()
            .collect();
        params.sort();
        PoolKey {
            target: route.target,
            epoch: route.epoch,
            params,
        }
    }

    /// The route its connections were opened on.
    pub(crate) fn route(&self) -> Route {
        Route {
            target: self.target,
            epoch: self.epoch,
        }
    }

    fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Why a pooled connection was closed, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// Idle for longer than `server_idle_timeout`.
    IdleTimeout,
    /// Older than `server_lifetime`.
    Lifetime,
    /// Opened before the route last changed.
    Flip,
    /// The server sent something or closed while it sat idle (a termination, a restart).
    ServerEnded,
    /// The pool for its key already held `max_idle_server_conn`.
    Full,
    /// `server_reset_query` failed or took too long.
    ResetFailed,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::IdleTimeout => "idle_timeout",
            Closed::Lifetime => "lifetime",
            Closed::Flip => "flip",
            Closed::ServerEnded => "server_ended",
            Closed::Full => "pool_full",
            Closed::ResetFailed => "reset_failed",
        }
    }
}

struct Parked {
    server: ServerConn,
    since: Instant,
}

/// The settings the pool runs by, from `[proxy]`.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    pub(crate) enabled: bool,
    pub(crate) reset_query: String,
    pub(crate) idle_timeout: Duration,
    pub(crate) lifetime: Duration,
    pub(crate) max_idle: usize,
    pub(crate) min_idle: usize,
}

impl PoolSettings {
    pub(crate) fn from_config(p: &ProxyConfig) -> PoolSettings {
        PoolSettings {
            enabled: p.pool_mode == PoolMode::Session && p.max_idle_server_conn > 0,
            reset_query: p.server_reset_query.clone(),
            idle_timeout: p.server_idle_timeout.0,
            lifetime: p.server_lifetime.0,
            max_idle: p.max_idle_server_conn,
            min_idle: p.min_pool_size,
        }
    }
}

/// Idle, reset server connections waiting for their next client. One lock, held
/// only to push or pop: never across I/O.
pub(crate) struct Pool {
    settings: PoolSettings,
    idle: Mutex<HashMap<PoolKey, Vec<Parked>>>,
    /// Connections whose clients left and whose reset is under way, per key: a
    /// client arriving during a hold waits for them rather than for the hold.
    returning: Mutex<HashMap<PoolKey, usize>>,
    /// Bumped whenever a returning connection is parked or given up.
    returned: tokio::sync::watch::Sender<u64>,
    /// With `min_pool_size`: the startup parameters clients used, and what the
    /// latest of them authenticated with, to open connections ahead of clients.
    known: Mutex<HashMap<Vec<(String, String)>, ServerCredential>>,
    metrics: Arc<Metrics>,
}

/// Connections to open ahead of clients: one per `opening` (each announced as
/// returning), with `params`, logging in with `credential`.
pub(crate) struct Shortfall {
    pub(crate) params: Vec<(String, String)>,
    pub(crate) credential: ServerCredential,
    pub(crate) opening: Vec<Returning>,
}

/// A connection on its way back into the pool (see [`Pool::returning`]); dropping
/// it, parked or not, ends the wait of anyone who counted on it.
pub(crate) struct Returning {
    pool: Arc<Pool>,
    key: PoolKey,
}

impl Drop for Returning {
    fn drop(&mut self) {
        let mut returning = self
            .pool
            .returning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = returning.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                returning.remove(&self.key);
            }
        }
        drop(returning);
        self.pool.returned.send_modify(|n| *n += 1);
    }
}

/// Idle connections of one user and database on one side, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdleCount {
    /// Side they are on.
    pub target: Side,
    /// Their user.
    pub user: String,
    /// Their database.
    pub database: String,
    /// How many.
    pub idle: usize,
}

impl Pool {
    pub(crate) fn new(settings: PoolSettings, metrics: Arc<Metrics>) -> Pool {
        Pool {
            settings,
            idle: Mutex::new(HashMap::new()),
            returning: Mutex::new(HashMap::new()),
            returned: tokio::sync::watch::Sender::new(0),
            known: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Whether leaving clients give their connections back at all.
    pub(crate) fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Parked>>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently parked live connection for `key`, if any. Connections found
    /// expired or ended on the way are closed.
    pub(crate) fn take(&self, key: &PoolKey) -> Option<ServerConn> {
        if !self.settings.enabled {
            return None;
        }
        let now = Instant::now();
        loop {
            let parked = self.lock().get_mut(key).and_then(Vec::pop)?;
            let mut server = parked.server;
            let verdict = self
                .expired(&server, parked.since, now)
                .or_else(|| (!quiet(&mut server.conn)).then_some(Closed::ServerEnded));
            match verdict {
                None => {
                    self.metrics.pool_login("reused");
                    return Some(server);
                }
                Some(why) => self.close(server, why),
            }
        }
    }

    /// Notes what a client logged in with, so that `min_pool_size` connections can be
    /// kept open for its parameters.
    pub(crate) fn remember(&self, key: &PoolKey, credential: &ServerCredential) {
        if self.settings.enabled && self.settings.min_idle > 0 {
            self.known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key.params.clone(), credential.clone());
        }
    }

    /// Stops opening connections ahead for `params` (their login failed) until a
    /// client logs in with them again.
    pub(crate) fn forget(&self, params: &[(String, String)]) {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(params);
    }

    /// For every parameter set a client used, how many connections on `route` are
    /// missing to `min_pool_size` (idle ones and ones on their way back count), each
    /// already announced as returning: the caller opens them and gives them back.
    pub(crate) fn shortfalls(self: &Arc<Self>, route: Route) -> Vec<Shortfall> {
        if !self.settings.enabled || self.settings.min_idle == 0 {
            return Vec::new();
        }
        let known: Vec<(Vec<(String, String)>, ServerCredential)> = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(p, c)| (p.clone(), c.clone()))
            .collect();
        let mut out = Vec::new();
        for (params, credential) in known {
            let key = PoolKey {
                target: route.target,
                epoch: route.epoch,
                params: params.clone(),
            };
            let idle = self.lock().get(&key).map_or(0, Vec::len);
            let missing = self.settings.min_idle.saturating_sub(idle + self.coming(&key));
            if missing > 0 {
                out.push(Shortfall {
                    params,
                    credential,
                    opening: (0..missing).map(|_| self.returning(key.clone())).collect(),
                });
            }
        }
        out
    }

    /// Announces that a connection for `key` is coming back (its client left; the
    /// session still has to say goodbye and reset it), so that a client arriving
    /// during a hold waits for it instead of for the hold.
    pub(crate) fn returning(self: &Arc<Self>, key: PoolKey) -> Returning {
        *self
            .returning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default() += 1;
        Returning {
            pool: self.clone(),
            key,
        }
    }

    /// How many connections for `key` are on their way back.
    fn coming(&self, key: &PoolKey) -> usize {
        self.returning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// [`take`](Self::take), and if nothing is idle but connections for `key` are on
    /// their way back, waits for them, up to `limit`.
    pub(crate) async fn take_or_await(&self, key: &PoolKey, limit: Duration) -> Option<ServerConn> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut returned = self.returned.subscribe();
        loop {
            // Counted before looking: a connection parked in between bumps `returned`.
            let coming = self.coming(key);
            if let Some(server) = self.take(key) {
                return Some(server);
            }
            if coming == 0 {
                return None;
            }
            match tokio::time::timeout_at(deadline, returned.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Resets `server` (its client left at a transaction boundary) and parks it
    /// where `returning` said; a connection that fails the reset, or is too old, is
    /// closed instead.
    pub(crate) async fn give_back(&self, returning: Returning, server: ServerConn) {
        let key = returning.key.clone();
        self.reset_and_park(key, server).await;
        drop(returning);
    }

    async fn reset_and_park(&self, key: PoolKey, mut server: ServerConn) {
        let now = Instant::now();
        if let Some(why) = self.expired(&server, now, now) {
            return self.close(server, why);
        }
        let reset = tokio::time::timeout(RESET_TIMEOUT, reset(&mut server.conn, &self.settings.reset_query))
            .await
            .unwrap_or_else(|_| Err(format!("it took over {RESET_TIMEOUT:?}")));
        match reset {
            Ok(changed) => {
                for (name, value) in changed {
                    server.note_parameter(&name, &value);
                }
            }
            Err(why) => {
                debug!(
                    server_pid = server.key.pid,
                    "server connection not pooled: its reset failed: {why}"
                );
                return self.close(server, Closed::ResetFailed);
            }
        }
        server.conn.release_buffers();
        let mut idle = self.lock();
        let parked = idle.entry(key).or_default();
        if parked.len() >= self.settings.max_idle {
            drop(idle);
            return self.close(server, Closed::Full);
        }
        parked.push(Parked {
            server,
            since: Instant::now(),
        });
    }

    /// Closes what can no longer be used: connections idle or alive too long, and
    /// every connection opened on a route epoch other than `route`'s.
    pub(crate) fn reap(&self, route: Route) {
        let now = Instant::now();
        let mut doomed = Vec::new();
        {
            let mut idle = self.lock();
            idle.retain(|key, parked| {
                if key.epoch != route.epoch || key.target != route.target {
                    doomed.extend(parked.drain(..).map(|p| (p.server, Closed::Flip)));
                    return false;
                }
                let mut i = 0;
                while i < parked.len() {
                    match self.expired(&parked[i].server, parked[i].since, now) {
                        // min_pool_size connections are kept through idleness (not
                        // through server_lifetime).
                        Some(Closed::IdleTimeout) if parked.len() <= self.settings.min_idle => i += 1,
                        Some(why) => doomed.push((parked.remove(i).server, why)),
                        None => i += 1,
                    }
                }
                !parked.is_empty()
            });
        }
        for (server, why) in doomed {
            self.close(server, why);
        }
    }

    /// Closes every idle connection (shutdown).
    pub(crate) fn clear(&self) {
        let all: Vec<Parked> = self.lock().drain().flat_map(|(_, v)| v).collect();
        for p in all {
            close_quietly(p.server);
        }
    }

    /// The backend pids of the idle connections to `side`.
    pub(crate) fn idle_pids(&self, side: Side) -> Vec<i32> {
        self.lock()
            .iter()
            .filter(|(key, _)| key.target == side)
            .flat_map(|(_, parked)| parked.iter().map(|p| p.server.key.pid))
            .collect()
    }

    /// Idle connections per side, user and database, for `GET /metrics`.
    pub fn idle_counts(&self) -> Vec<IdleCount> {
        let mut counts: HashMap<(Side, String, String), usize> = HashMap::new();
        for (key, parked) in self.lock().iter() {
            let user = key.param("user").to_owned();
            let database = key.param("database").to_owned();
            *counts.entry((key.target, user, database)).or_default() += parked.len();
        }
        let mut out: Vec<IdleCount> = counts
            .into_iter()
            .map(|((target, user, database), idle)| IdleCount {
                target,
                user,
                database,
                idle,
            })
            .collect();
        out.sort();
        out
    }

    /// Why `server`, idle since `since`, must not serve again, if it must not.
    fn expired(&self, server: &ServerConn, since: Instant, now: Instant) -> Option<Closed> {
        if now.duration_since(server.connected_at) >= self.settings.lifetime {
            Some(Closed::Lifetime)
        } else if now.duration_since(since) >= self.settings.idle_timeout {
            Some(Closed::IdleTimeout)
        } else {
            None
        }
    }

    fn close(&self, server: ServerConn, why: Closed) {
        debug!(
            server_pid = server.key.pid,
            reason = why.label(),
            "pooled server connection closed"
        );
        self.metrics.pool_closed(why.label());
        close_quietly(server);
    }
}

/// Says goodbye to a server connection off the caller's path.
fn close_quietly(mut server: ServerConn) {
    tokio::spawn(async move {
        build::terminate(&mut server.conn.wbuf);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, server.conn.flush()).await;
    });
}

/// Whether an idle connection has said nothing since it was parked. Anything it
/// sent unasked while idle (a FATAL from a termination or an idle-session timeout,
/// or its close) means it is going or gone; one look, without waiting.
fn quiet(conn: &mut Conn) -> bool {
    if !conn.rbuf.is_empty() {
        return false;
    }
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(&mut conn.stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// Runs the reset query on an idle connection; returns the parameters the server
/// reported changed on the way (a `RESET ALL` reports every one the client set).
async fn reset(conn: &mut Conn, query: &str) -> Result<Vec<(String, String)>, String> {
    build::query(&mut conn.wbuf, query);
    let mut changed = Vec::new();
    let mut error = None;
    let mut status = TransactionStatus::Idle;
    let read = crate::server::round_trip(conn, 1, |_, f| {
        match f.tag {
            backend::PARAMETER_STATUS => {
                if let Ok((name, value)) = backend::parse_parameter_status(&f.body) {
                    changed.push((name.to_owned(), value.to_owned()));
                }
            }
            backend::ERROR_RESPONSE => {
                let fields = backend::ErrorFields::new(&f.body);
                error = Some(fields.message().unwrap_or("an error").to_owned());
            }
            backend::READY_FOR_QUERY => {
                status = backend::parse_ready_for_query(&f.body).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
        Ok::<(), String>(())
    });
    read.await.map_err(|e| e.to_string())??;
    if let Some(e) = error {
        return Err(format!("{query:?} failed: {e}"));
    }
    if status != TransactionStatus::Idle {
        return Err(format!("{query:?} left the connection inside a transaction"));
    }
    Ok(changed)
}
