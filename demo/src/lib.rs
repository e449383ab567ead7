//! `pgcutover demo`: the product's main job on this machine, end to end.
//!
//! 1. starts a throwaway blue (PostgreSQL 15) and green (PostgreSQL 17, installed into
//!    the cache dir by the embedded `scripts/setup.sh --pg17-only` if missing) on free
//!    loopback ports, `wal_level = logical`, SCRAM logins for an app role and an admin;
//! 2. loads a sample schema on blue (identity, bigserial and serial keys);
//! 3. starts the proxy in this process with the app role's SCRAM verifier;
//! 4. runs a workload through the proxy: N clients, short write transactions, every
//!    acknowledged id and every transaction's latency recorded;
//! 5. runs `replicate` (copy method: green gets roles, schema and data from blue),
//!    waits until replication is in sync, runs the switchover mid-load, keeps the load
//!    going on green;
//! 6. checks what the clients saw against green: no error, every acknowledged write
//!    present, sequences continuing, server_version 17, blue fenced.
//!
//! Everything it starts is stopped and removed when [`run`] returns, fails or is
//! interrupted (SIGINT/SIGTERM): the clusters live in a temp dir that goes with them.

mod checks;
mod report;
mod servers;
mod setup_script;
mod workload;

pub use checks::Check;
pub use report::{ClientsSeen, DemoReport};

use pgcutover_config::Config;
use pgcutover_orchestrator::switchover::{Direction, SwitchoverOptions};
use pgcutover_orchestrator::{OrchestratorError, Progress, ReplicateOptions, Targets};
use pgcutover_proxy::local::LocalProxy;
use servers::Servers;
use std::time::{Duration, Instant};
use workload::Workload;

/// The demo's database on blue and green.
pub const DATABASE: &str = "app";
/// The role the workload logs in as (SCRAM-SHA-256, through the proxy).
pub const APP_USER: &str = "app";
/// The superuser the orchestrator logs in as.
pub const ADMIN_USER: &str = "admin";

/// Longest the switchover may hold clients before it rolls back by itself.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest `replicate` plus reaching sync may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Concurrent clients through the proxy (at least 1).
    pub clients: usize,
    /// Seconds of load once replication is in sync; the switchover runs at the midpoint
    /// (at least 2).
    pub seconds: u64,
    /// After the report, keep blue, green and the proxy running (the report and how to
    /// connect are printed to stdout) until SIGINT/SIGTERM.
    pub keep: bool,
    /// Where progress lines go.
    pub progress: Progress,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            clients: 16,
            seconds: 10,
            keep: false,
            progress: Progress::stderr(),
        }
    }
}

/// Why the demo could not run to its report (a failed invariant is not an error: it
/// is a failed [`Check`] in the report).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Something the demo needs is not installed.
    #[error("{what}: {fix}")]
    Missing {
        /// What is missing.
        what: String,
        /// How to get it.
        fix: String,
    },
    /// Installing PostgreSQL 17 failed.
    #[error(
        "PostgreSQL 17 is not installed and installing it failed: {0}. Fix: let this machine reach the npm \
         registry and run scripts/setup.sh, or set PG17_BINDIR to a PostgreSQL 17 bin directory"
    )]
    Pg17Install(String),
    /// A local server did not start.
    #[error("starting {side} failed: {message}")]
    Server {
        /// blue or green.
        side: &'static str,
        /// Why, with the server log tail.
        message: String,
    },
    /// A statement the demo runs itself failed.
    #[error("{side}: {doing} failed: {message}")]
    Sql {
        /// blue, green or proxy.
        side: &'static str,
        /// What the demo was doing.
        doing: String,
        /// The server's message.
        message: String,
    },
    /// A file in the demo's work dir could not be written.
    #[error("{what}: {source}")]
    Io {
        /// Which file or directory.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The generated proxy configuration was refused (a bug in the demo).
    #[error("proxy config: {0}")]
    Config(#[from] pgcutover_config::ConfigError),
    /// The proxy could not start.
    #[error("the proxy did not start: {0}")]
    Proxy(#[from] pgcutover_proxy::StartError),
    /// An orchestrator step failed.
    #[error("{step}: {source}")]
    Orchestrator {
        /// replicate, status, ...
        step: &'static str,
        /// What the orchestrator said (boxed: it is large and rare).
        source: Box<OrchestratorError>,
    },
    /// Replication did not reach sync in time.
    #[error("replication blue → green was not in sync after {waited:?}: {verdict}")]
    NotInSync {
        /// How long the demo waited.
        waited: Duration,
        /// The last status verdict.
        verdict: String,
    },
    /// The workload's clients could not connect through the proxy.
    #[error("workload: {0}")]
    Workload(String),
    /// SIGINT or SIGTERM arrived; everything was stopped and removed.
    #[error("interrupted: everything the demo started was stopped and removed")]
    Interrupted,
}

/// Runs the demo (see the crate docs) and returns its report; exits through
/// [`DemoError::Interrupted`] on SIGINT/SIGTERM. Everything it started is stopped and
/// removed before it returns, in every case.
pub async fn run(opts: DemoOptions) -> Result<DemoReport, DemoError> {
    let opts = DemoOptions {
        clients: opts.clients.max(1),
        seconds: opts.seconds.max(2),
        ..opts
    };
    let mut interrupt = std::pin::pin!(interrupted());
    let mut servers: Option<Servers> = None;
    let result = tokio::select! {
        r = demo(&opts, &mut servers) => r,
        _ = &mut interrupt => Err(DemoError::Interrupted),
    };
    if let (Ok(report), Some(s), true) = (&result, &servers, opts.keep) {
        print!("{}", report.render());
        print!("{}", s.keep_message());
        interrupt.await;
    }
    if let Some(s) = servers.take() {
        let t = Instant::now();
        s.shutdown().await;
        opts.progress
            .done(t, "stopped the proxy, blue and green; removed their files");
    }
    result
}

async fn demo(opts: &DemoOptions, slot: &mut Option<Servers>) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let p = &opts.progress;
    let bins = servers::binaries(p).await?;
    let servers = slot.insert(Servers::start(bins, p).await?);
    let config = servers.proxy_config()?;
    let targets = Targets::from_config(&config).map_err(|source| DemoError::Orchestrator {
        source: Box::new(source),
        step: "targets",
    })?;
    servers.start_proxy(config.clone(), p).await?;

    let t = Instant::now();
    let load = Workload::start(&servers.proxy_conninfo(), opts.clients).await?;
    p.done(t, format!("{} clients writing through the proxy", opts.clients));

    let t = Instant::now();
    p.line("replicate: roles, schema and data from blue to green (copy method), under load");
    tokio::time::timeout(
        SYNC_TIMEOUT,
        pgcutover_orchestrator::replicate(&targets, &ReplicateOptions::default(), p),
    )
    .await
    .map_err(|_| DemoError::NotInSync {
        waited: SYNC_TIMEOUT,
        verdict: "replicate did not finish".into(),
    })?
    .map_err(|source| DemoError::Orchestrator {
        source: Box::new(source),
        step: "replicate",
    })?;
    wait_in_sync(&targets, &config, p).await?;
    p.done(t, format!("green in sync; {}", load.summary()));

    let half = Duration::from_secs(opts.seconds) / 2;
    load.run_for(half, p, "on blue").await;

    p.line("switchover: blue → green, under load");
    let report = pgcutover_orchestrator::switchover::run(
        &targets,
        &config,
        &[std::sync::Arc::new(LocalProxy(servers.control())) as std::sync::Arc<dyn pgcutover_api::ProxyControl>],
        &SwitchoverOptions {
            direction: Direction::Forward,
            timeout: SWITCHOVER_TIMEOUT,
            dry_run: false,
        },
        p,
    )
    .await;
    load.run_for(half, p, "after the switchover").await;
    let t = Instant::now();
    let seen = load.stop().await;
    p.done(t, format!("load stopped: {}", seen.one_line()));

    let t = Instant::now();
    let checks = checks::run(servers, &report, &seen).await;
    p.done(t, "checked what the clients saw against green");
    Ok(DemoReport {
        blue_version: servers.blue_version.clone(),
        green_version: servers.green_version.clone(),
        switchover: report,
        clients: seen,
        checks,
        elapsed: started.elapsed(),
    })
}

/// Polls `status` until every database is in sync (subscription streaming, every
/// table ready, lag under `max_lag_bytes`).
async fn wait_in_sync(targets: &Targets, config: &Config, p: &Progress) -> Result<(), DemoError> {
    let t = Instant::now();
    loop {
        let status = pgcutover_orchestrator::replication_status(targets, config.switchover.max_lag_bytes).await;
        if status.ready {
            return Ok(());
        }
        if t.elapsed() > SYNC_TIMEOUT {
            return Err(DemoError::NotInSync {
                waited: t.elapsed(),
                verdict: status.verdict,
            });
        }
        if t.elapsed() > Duration::from_secs(5) {
            p.line(format!("waiting for sync: {}", status.verdict));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
