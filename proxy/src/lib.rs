//! pgcutover's PostgreSQL proxy.
//!
//! Applications connect here instead of to the database. The proxy authenticates
//! them itself, logs into the active server with their identity, and then forwards
//! bytes in both directions, reading only the few messages that tell it where
//! transactions begin and end. [`Proxy::bind`] then [`Proxy::run`] is the whole API.

mod admin;
pub mod auth;
mod buffers;
pub mod control;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod guesses;
pub mod health;
pub mod local;
pub mod metrics;
mod pool;
pub mod pump;
pub mod registry;
pub mod route;
pub mod server;
mod session;
pub mod state_log;
pub mod statements;
pub mod stream;
pub mod tls;
mod wire;

use auth::{AuthQuery, Userlist};
use control::Control;
use metrics::Metrics;
use pgcutover_api::Side;
use pgcutover_api::{BoxFuture, Report};
use pgcutover_config::Config;
use registry::SessionRegistry;
use server::{Backend, LoginOptions};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

/// After `shutdown_timeout`, how long forcibly closed sessions get to say goodbye.
const FORCED_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address is taken or not ours.
    #[error(
        "cannot listen on {addr}: {source} (is another pgcutover or PgBouncer running there? change [proxy] listen)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS material is unusable.
    #[error("{0}")]
    Tls(#[from] pgcutover_config::TlsError),
    /// The auth_file is unusable.
    #[error("{0}")]
    Userlist(#[from] auth::UserlistError),
    /// auth_user has no secret to log in with.
    #[error("auth_user \"{0}\" has no entry in auth_file: add its password (plain or md5) there")]
    AuthUserSecret(String),
    /// The admin listen address is taken.
    #[error("cannot listen for the admin API on {addr}: {source} (change [proxy] admin_listen)")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A token over plain HTTP on a network address.
    #[error("the admin API on {addr} would take the admin token over plain HTTP from the network: set [proxy] admin_tls_cert_file and admin_tls_key_file (and use https:// peers), or listen on a loopback address")]
    AdminPlaintext {
        /// The address.
        addr: SocketAddr,
    },
    /// The admin token file is unreadable or too short.
    #[error("{0}")]
    AdminToken(#[from] pgcutover_config::AdminTokenError),
}

/// Where graceful shutdown stands; sessions watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShutdownPhase {
    /// Serving normally.
    Running,
    /// Close each session at its next transaction boundary.
    Draining,
    /// Close every session now.
    Forced,
}

/// State every session reads; written once at start.
pub(crate) struct Shared {
    config: Config,
    userlist: Option<Userlist>,
    auth_query: Option<AuthQuery>,
    tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    login: LoginOptions,
    blue: Backend,
    green: Option<Backend>,
    registry: Arc<SessionRegistry>,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    health: health::Health,
    clients: AtomicUsize,
    /// Idle server connections kept for the next client.
    pool: Arc<pool::Pool>,
    /// Runs `POST /switchover`: installed by the binary, which owns the orchestrator.
    switchover: std::sync::OnceLock<Arc<dyn SwitchoverRunner>>,
}

/// Runs `POST /switchover`. The proxy cannot run the orchestrator itself (the
/// orchestrator drives proxies, not the other way round), so the binary, which owns
/// both, implements this and installs it with [`Proxy::set_switchover_runner`].
pub trait SwitchoverRunner: Send + Sync {
    /// Runs one switchover (or its dry run) to the end and reports it. `timeout`
    /// overrides `[switchover] timeout`.
    fn run(&self, dry_run: bool, timeout: Option<Duration>) -> BoxFuture<'static, Report>;
}

impl Shared {
    /// The server a target stands for; green falls back to blue when not configured
    /// (the control refuses flips to an unconfigured green).
    fn backend(&self, target: Side) -> &Backend {
        match (target, &self.green) {
            (Side::Green, Some(g)) => g,
            _ => &self.blue,
        }
    }
}

/// Secrets in a file other users can read are not secret: say so at start (not
/// refused: a container's mounted secret may be 0644 by design).
fn warn_if_others_can_read(what: &str, file: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(file) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(
                file = %file.display(),
                mode = format!("{:o}", mode & 0o777),
                "{what} can be read by other users than its owner: chmod 600 it"
            );
        }
    }
}

/// Connections refused with 53300 at once, each for at most a couple of seconds;
/// beyond them a connection over `max_client_conn` is closed at accept.
const MAX_REFUSING: usize = 64;

/// One accepted client's place in the `max_client_conn` count, released on drop.
pub(crate) struct ClientSlot {
    shared: Arc<Shared>,
    /// The client arrived when the proxy was full: it is refused with FATAL 53300
    /// (see `session::refuse`).
    over_limit: bool,
}

impl ClientSlot {
    fn take(shared: &Arc<Shared>) -> ClientSlot {
        let before = shared.clients.fetch_add(1, Ordering::AcqRel);
        ClientSlot {
            shared: shared.clone(),
            over_limit: before >= shared.config.proxy.max_client_conn,
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bound, ready-to-run proxy.
pub struct Proxy {
    listener: TcpListener,
    admin: admin::AdminServer,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Loads the secrets and TLS material and binds the listen address; every
    /// configuration problem surfaces here, before any client is accepted.
    pub async fn bind(config: Config) -> Result<Proxy, StartError> {
        for (what, file) in [
            ("auth_file", &config.auth.auth_file),
            ("admin_token_file", &config.proxy.admin_token_file),
            ("admin_tls_key_file", &config.proxy.admin_tls_key_file),
            ("tls_key_file", &config.proxy.tls_key_file),
        ] {
            if let Some(file) = file {
                warn_if_others_can_read(what, file);
            }
        }
        if config.auth.auth_type == pgcutover_config::AuthType::Trust && !config.proxy.listen.ip().is_loopback() {
            warn!(listen = %config.proxy.listen, "auth_type = \"trust\" on a network address: anyone who reaches it logs in as any user in auth_file");
        }
        let userlist = config.auth.auth_file.as_deref().map(Userlist::load).transpose()?;
        let auth_query = match &config.auth.auth_user {
            Some(user) => {
                let secret = userlist
                    .as_ref()
                    .and_then(|u| u.get(user))
                    .ok_or_else(|| StartError::AuthUserSecret(user.clone()))?;
                Some(AuthQuery::new(
                    user.clone(),
                    secret.server_credential(),
                    config.auth.auth_query.clone(),
                    config.auth.auth_dbname(&config.replication),
                    config.auth.auth_cache_ttl.0,
                ))
            }
            None => None,
        };
        let tls_acceptor = tls::client_acceptor(&config.proxy)?;
        let login = LoginOptions {
            tls: pgcutover_config::ServerTls::new(&config.proxy)?,
            timeout: config.proxy.server_connect_timeout.0,
            max_message_len: config.proxy.max_message_bytes,
            cleartext_password: config.proxy.server_cleartext_password,
            keepalive: config.proxy.server_tcp_keepalive.0,
        };
        let listener = TcpListener::bind(config.proxy.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.proxy.listen,
                source,
            })?;
        let blue = Backend {
            side: Side::Blue,
            url: config.blue.url.clone(),
        };
        let green = config.green.as_ref().map(|g| Backend {
            side: Side::Green,
            url: g.url.clone(),
        });
        let registry = Arc::new(SessionRegistry::default());
        let metrics = Arc::new(Metrics::new());
        metrics.set_max_client_conn(config.proxy.max_client_conn);
        let control = Control::new(
            registry.clone(),
            config.switchover.clone(),
            green.is_some(),
            metrics.clone(),
        );
        let admin = admin::AdminServer::bind(&config).await?;
        let pool = Arc::new(pool::Pool::new(
            pool::PoolSettings::from_config(&config.proxy),
            metrics.clone(),
        ));
        control.set_pool(pool.clone());
        Ok(Proxy {
            listener,
            admin,
            shared: Arc::new(Shared {
                config,
                userlist,
                auth_query,
                tls_acceptor,
                login,
                blue,
                green,
                registry,
                control,
                metrics,
                health: health::Health::default(),
                clients: AtomicUsize::new(0),
                pool,
                switchover: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The cutover controls (what the admin API drives).
    pub fn control(&self) -> Arc<Control> {
        self.shared.control.clone()
    }

    /// Installs what `POST /switchover` runs (once; later calls are ignored).
    pub fn set_switchover_runner(&self, runner: Arc<dyn SwitchoverRunner>) {
        let _ = self.shared.switchover.set(runner);
    }

    /// Serves clients until `shutdown` completes; then stops accepting, lets each
    /// session finish its transaction (closing it with FATAL 57P01 at its next
    /// boundary) for up to `shutdown_timeout`, and closes the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Proxy {
            listener,
            admin,
            shared,
        } = self;
        let admin_task = tokio::spawn(admin.serve(shared.clone()));
        let probes = tokio::spawn(health::probe_servers(shared.clone()));
        let reaper = tokio::spawn(reap_pool(shared.clone()));
        info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), blue = %shared.blue.url.host_port(), "pgcutover proxy ready");
        let (phase_tx, phase_rx) = watch::channel(ShutdownPhase::Running);
        let mut sessions = JoinSet::new();
        let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let slot = ClientSlot::take(&shared);
                        if !slot.over_limit {
                            sessions.spawn(session::run(shared.clone(), tcp, peer, phase_rx.clone(), slot));
                        } else if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                let _refusing = refusing;
                                session::refuse::over_limit(&shared, tcp, peer, slot).await;
                            });
                        } else {
                            debug!(%peer, "connection closed at accept: max_client_conn reached and {MAX_REFUSING} refusals under way");
                        }
                    }
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning on the error.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = sessions.join_next(), if !sessions.is_empty() => log_session_exit(done),
            }
        }
        drop(listener);
        // The admin API stays up while sessions drain (a peer's switchover may still
        // call it; GET /ready now says no), and goes with the last session.
        shared.health.shutting_down();
        // An operator's hold must not keep sessions from reaching the boundary they
        // close at. A switchover's is left to it (its run may be this process's, and
        // goes on): resuming would start transactions on a fenced source; held
        // sessions close at the boundary they wait at.
        if shared.control.lease_holder().is_none() {
            let _ = shared.control.resume();
        }
        let timeout = shared.config.proxy.shutdown_timeout.0;
        info!(
            sessions = sessions.len(),
            "shutting down: no new connections; sessions close at their next transaction boundary, within {timeout:?}"
        );
        let _ = phase_tx.send(ShutdownPhase::Draining);
        if !drain(&mut sessions, timeout).await {
            warn!(
                sessions = sessions.len(),
                "shutdown_timeout passed: closing the remaining sessions"
            );
            let _ = phase_tx.send(ShutdownPhase::Forced);
            if !drain(&mut sessions, FORCED_CLOSE_GRACE).await {
                sessions.abort_all();
            }
        }
        probes.abort();
        reaper.abort();
        shared.pool.clear();
        admin_task.abort();
        info!("pgcutover proxy stopped");
    }
}

/// How often idle pooled connections are checked against their timeouts.
const POOL_REAP_EVERY: Duration = Duration::from_secs(1);

/// Closes pooled connections that timed out, and at once every one a flip left on
/// the old side (they would otherwise keep backends there open for up to
/// `server_idle_timeout`).
async fn reap_pool(shared: Arc<Shared>) {
    let mut cutover = shared.control.watch();
    let mut tick = tokio::time::interval(POOL_REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = cutover.changed() => if changed.is_err() { return },
        }
        let now = *cutover.borrow_and_update();
        shared.pool.reap(now.route);
        // Not while held: the side being left may be fenced or going away.
        if !now.gate.is_held() {
            open_ahead(&shared, now.route);
        }
    }
}

/// Opens what `min_pool_size` asks for on `route`, in the background.
fn open_ahead(shared: &Arc<Shared>, route: route::Route) {
    for shortfall in shared.pool.shortfalls(route) {
        for returning in shortfall.opening {
            let shared = shared.clone();
            let (params, credential) = (shortfall.params.clone(), shortfall.credential.clone());
            tokio::spawn(async move {
                let backend = shared.backend(route.target);
                match server::connect(backend, &shared.login, &params, &credential).await {
                    Ok(server) => shared.pool.give_back(returning, server).await,
                    Err(e) => {
                        // A credential that stopped working is not retried every
                        // second: the next client's login brings a fresh one.
                        warn!(
                            target = route.target.name(),
                            "min_pool_size: could not open a server connection ahead of clients: {e}"
                        );
                        shared.pool.forget(&params);
                    }
                }
            });
        }
    }
}

/// Waits for every session to end, up to `limit`; true if they all did.
async fn drain(sessions: &mut JoinSet<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while let Some(done) = sessions.join_next().await {
            log_session_exit(done);
        }
    })
    .await
    .is_ok()
}

fn log_session_exit(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            // A bug, but one session's: the others keep running.
            error!("session task panicked: {e}");
        }
    }
}
