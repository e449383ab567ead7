//! The `pgcutover` command: parses the command line, sets up logging, loads the
//! configuration and hands over to the proxy or the orchestrator's commands.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgcutover_api::{Direction, ProxyControl, Report};
use pgcutover_config::{AdminToken, Config, HumanDuration};
use pgcutover_orchestrator::switchover::{self, RemoteProxy, SwitchoverOptions};
use pgcutover_orchestrator::{CheckStatus, Progress, ReplicateOptions, Targets, VerifyOptions};
use pgcutover_proxy::local::LocalProxy;
use pgcutover_proxy::{Proxy, SwitchoverRunner};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

mod aws;
mod systemd;

/// Zero-downtime PostgreSQL blue/green switchover.
///
/// Applications connect to the pgcutover proxy instead of the database; pgcutover
/// moves them from the blue database to the green one without dropping a
/// connection or losing a write.
#[derive(Parser)]
#[command(name = "pgcutover", version, about, long_about)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "PGCUTOVER_LOG_FORMAT", global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve PostgreSQL clients: authenticate them, connect each to the blue
    /// database and forward its traffic. SIGTERM/SIGINT shut down gracefully: no new
    /// connections, sessions close at their next transaction boundary, and after
    /// [proxy] shutdown_timeout the rest are closed with FATAL 57P01.
    ///
    /// Log verbosity follows RUST_LOG (default "info"), e.g. RUST_LOG=pgcutover_proxy=debug.
    Proxy(ProxyArgs),

    /// Preflight: check blue and green for everything replication and the switchover
    /// need (wal_level, privileges, capacity, keys on every table, large objects,
    /// conflicting slots and publications, extensions, green's schema, whether green
    /// reaches blue). Prints each check with its status (ok / warn / fail), the objects
    /// involved and the exact fix. Exits 0 only when nothing fails.
    Check(CheckArgs),

    /// Set up logical replication blue → green for every [replication] database:
    /// copy method (default): roles with their password hashes, the schema (pg_dump),
    /// a publication FOR ALL TABLES on blue, a subscription on green that copies the
    /// data, then wait until every table is ready. Clone method: --prepare-clone first
    /// (publication and slot on blue), take the clone, then run again to start
    /// replication at the clone's start LSN. Safe to re-run: it continues where it
    /// stopped, and refuses (changing nothing) when a preflight check fails.
    Replicate(ReplicateArgs),

    /// Replication status per database: slot lag in bytes and time, WAL kept for the
    /// slot, the subscription worker, table sync states, DDL run on blue since
    /// replication began, and a one-line verdict. Exits 1 only when blue or green
    /// cannot be read.
    Status(StatusArgs),

    /// Compare blue's and green's data: row counts and hashes over primary-key ranges,
    /// in parallel; tables without a primary key as a whole. Run it after writes stop
    /// (ranges still receiving writes are re-checked a few times). Exits 0 only when
    /// the data is identical.
    Verify(VerifyArgs),
    /// Move the application from blue to green now: preflight guardrails, hold and
    /// drain every proxy (this one at [proxy] admin_listen and [proxy] peers), fence
    /// blue, wait for green to apply the sentinel, sync sequences, flip, resume. Any
    /// failure or the timeout before the flip rolls everything back; clients see only
    /// a pause. Prints the report; exit 0 only when completed (or --dry-run passed).
    Switchover(SwitchoverArgs),
    /// After a completed switchover with reverse_replication: the same protocol from
    /// green back to blue, with the writes made on green.
    Rollback(SwitchoverArgs),
    /// Find a switchover that died (killed, its machine lost) in the journal and
    /// converge: undo it if it died before its commit point (blue unfenced, every
    /// proxy resumed on blue), finish it if after (every proxy on green). Proxies with
    /// [green] configured do this by themselves within 10 s; this does it now. Exit 0
    /// when there was nothing to recover or the recovery worked.
    Recover(StatusArgs),
    /// Lift pgcutover's fence from a side, exactly what the fence set: the
    /// server-wide default_transaction_read_only and the pgcutover_fence trigger on
    /// every table of every [replication] database. Refused while a switchover runs,
    /// and, without --force, on the side the journal says clients do not belong on.
    Unfence(UnfenceArgs),

    /// See it work: starts a local blue (PostgreSQL 15) and green (PostgreSQL 17,
    /// installed into the cache dir if missing), loads a sample schema, starts the
    /// proxy, runs a workload through it, sets up replication, switches over mid-load
    /// and prints the switchover's report and what the clients saw, with the checks
    /// (no error, every acknowledged write on green, sequences continuing, server
    /// version 17, blue fenced). Exits 0 only when every check holds. Everything it
    /// started is stopped and removed at the end, on error and on Ctrl-C.
    Demo(DemoArgs),

    /// Ask a running proxy whether it is ready for new clients (GET /ready on its
    /// admin API): exits 0 when ready, 1 with the reason when not or unreachable.
    /// For container HEALTHCHECKs and scripts; plain HTTP (a loopback admin API).
    Ready(ReadyArgs),

    /// AWS: make green from blue on Aurora PostgreSQL, switch over with AWS's own
    /// Blue/Green while the proxies hold clients, and clean up after ([aws] in the
    /// config; credentials from the AWS SDK's default chain).
    #[command(subcommand)]
    Aws(aws::AwsCommand),
}

#[derive(clap::Args)]
struct ReadyArgs {
    /// The proxy's admin API address.
    #[arg(long, default_value = "127.0.0.1:9187", env = "PGCUTOVER_READY_ADMIN")]
    admin: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s")]
    timeout: HumanDuration,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Clients writing through the proxy.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=200))]
    clients: u16,
    /// Seconds of load once green is in sync; the switchover runs halfway.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=600))]
    seconds: u64,
    /// After the report, keep blue, green and the proxy running (and print how to
    /// connect) until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file (TOML); [blue], [green] and [replication] are used.
    #[arg(long, short, env = "PGCUTOVER_CONFIG", default_value = "pgcutover.toml")]
    config: PathBuf,
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print the checks as JSON (an array of {name, scope, status, message, objects, fix}).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReplicateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Clone method, step 1: create the publication and the slot on blue, print the
    /// next steps and stop. Take the clone after this.
    #[arg(long, conflicts_with_all = ["clone_log", "start_lsn"])]
    prepare_clone: bool,
    /// Clone method: the clone's first start-up log; its "redo done at X/Y" (or
    /// "invalid record length at X/Y") line gives the start LSN.
    #[arg(long, value_name = "FILE")]
    clone_log: Option<PathBuf>,
    /// Clone method: the start LSN (X/Y). Given, it is used as is, before --clone-log
    /// and Aurora's aurora_volume_logical_start_lsn() (read it before upgrading an
    /// Aurora clone, as AWS's guide does, and pass it here).
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    start_lsn: Option<pgcutover_orchestrator::Lsn>,
    /// Return once the subscription exists instead of waiting for the initial copy.
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args)]
struct SwitchoverArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Hard deadline from the hold to the flip (default: [switchover] timeout).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<HumanDuration>,
    /// Run the preflight and predict the hold; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct UnfenceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The side to lift the fence from.
    #[arg(long, default_value = "blue", value_parser = parse_side)]
    side: pgcutover_api::Side,
    /// Lift it even though clients belong on the other side (writes there do not
    /// reach the application): to decommission it, or to give up a switchover.
    #[arg(long)]
    force: bool,
}

fn parse_side(s: &str) -> Result<pgcutover_api::Side, String> {
    match s {
        "blue" => Ok(pgcutover_api::Side::Blue),
        "green" => Ok(pgcutover_api::Side::Green),
        other => Err(format!("{other:?} is not a side: blue or green")),
    }
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Concurrent range comparisons (each uses one connection to blue and one to green).
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Rows per primary-key range.
    #[arg(long, default_value_t = 20_000)]
    chunk_rows: i64,
    /// Re-checks of a range that differs (rows still in flight), one second apart.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_lsn(s: &str) -> Result<pgcutover_orchestrator::Lsn, String> {
    s.parse()
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Configuration file (TOML). Every key can be overridden by an environment
    /// variable PGCUTOVER_<SECTION>_<KEY>, e.g. PGCUTOVER_PROXY_LISTEN=0.0.0.0:6432.
    #[arg(long, short, env = "PGCUTOVER_CONFIG", default_value = "pgcutover.toml")]
    config: PathBuf,

    /// Address to accept clients on; overrides [proxy] listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo reports through its progress lines; per-session proxy logs would drown them.
    let default_filter = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Proxy(args) => run_proxy(args).await.map(|()| ExitCode::SUCCESS),
            Command::Check(args) => run_check(args).await,
            Command::Replicate(args) => run_replicate(args).await,
            Command::Status(args) => run_status(args).await,
            Command::Verify(args) => run_verify(args).await,
            Command::Switchover(args) => run_switchover(args, Direction::Forward).await,
            Command::Rollback(args) => run_switchover(args, Direction::Rollback).await,
            Command::Recover(args) => run_recover(args).await,
            Command::Unfence(args) => {
                let targets = targets(&args.config)?;
                switchover::unfence(&targets, args.side, args.force, &Progress::stderr()).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Demo(args) => run_demo(args).await,
            Command::Ready(args) => run_ready(args).await,
            Command::Aws(command) => aws::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.proxy.listen = listen;
    }
    let runner_config = config.green.is_some().then(|| config.clone());
    let proxy = Proxy::bind(config).await.context("cannot start the proxy")?;
    let mut monitor = None;
    let mut journal = None;
    let runs = Arc::new(tokio::sync::watch::Sender::new(0usize));
    if let Some(config) = runner_config {
        let targets = Targets::from_config(&config)?;
        // Before the first client is accepted: serve where the journal says.
        let follower = JournalFollower {
            control: proxy.control(),
            targets: targets.clone(),
            config: config.clone(),
        };
        follower.follow().await;
        journal = Some(tokio::spawn(follower.watch()));
        monitor = Some(replication_monitor(&proxy, targets.clone(), &config));
        let token = AdminToken::load_optional(config.proxy.admin_token_file.as_deref())?;
        switchover::check_peers(
            &config.proxy.peers,
            token.as_ref(),
            config.proxy.admin_tls_ca_file.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("[proxy] peers: {e}"))?;
        let runner = Runner {
            local: proxy.control(),
            targets,
            config,
            runs: runs.clone(),
        };
        proxy.set_switchover_runner(Arc::new(runner));
    }
    // Listening (bind) and routed where the journal says (follow): ready for clients.
    systemd::notify(&format!("READY=1\nSTATUS=serving on {}", proxy.local_addr()));
    proxy.run(shutdown_signal()).await;
    // A switchover this proxy runs drives its peers too: stopping it mid-hold would
    // leave them held and blue fenced until a recovery.
    let mut under_way = runs.subscribe();
    if *under_way.borrow() > 0 {
        tracing::warn!("waiting (at most {RUN_FINISH_LIMIT:?}) for the switchover this proxy runs to finish");
        let _ = tokio::time::timeout(RUN_FINISH_LIMIT, under_way.wait_for(|n| *n == 0)).await;
    }
    for task in monitor.into_iter().chain(journal) {
        task.abort();
    }
    Ok(())
}

/// How long a proxy waits for the journal of each side.
const JOURNAL_READ: Duration = Duration::from_secs(5);

/// How often a running proxy reads the journal: a proxy that missed a run (down,
/// unreachable, or not among the run's peers) follows it within this.
const JOURNAL_WATCH: Duration = Duration::from_secs(10);

/// A proxy's reader of the switchover journal: it routes the proxy where the
/// journal says clients belong, and recovers a run that died.
struct JournalFollower {
    control: Arc<pgcutover_proxy::control::Control>,
    targets: Targets,
    config: Config,
}

impl JournalFollower {
    /// Routes the proxy where the journal says clients belong, unless a run is
    /// under way (it routes the proxy itself); recovers a dead run. An unreadable
    /// journal changes nothing.
    async fn follow(&self) {
        let journal = match pgcutover_orchestrator::journal::current(&self.targets, JOURNAL_READ).await {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(
                    "cannot read the switchover journal, so the route stays {}: {e}",
                    self.control.route().target.name()
                );
                return;
            }
        };
        if journal.running {
            return;
        }
        if journal.dead_run().is_some() {
            return self.recover().await;
        }
        let (route, epoch) = journal.route();
        match self.control.follow(route).await {
            Ok(Some(r)) => tracing::info!(
                target = route.name(),
                journal_epoch = epoch,
                moved = r.moved,
                not_moved = r.not_moved,
                "routed as the switchover journal says"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!("the switchover journal says {}: {e}", route.name()),
        }
    }

    /// Finishes or undoes a run that died, with this proxy and its peers: the first
    /// proxy to take the run lock does it, the others find it done.
    async fn recover(&self) {
        let proxies = match proxies(Some(self.control.clone()), &self.config).await {
            Ok(p) => p,
            Err(e) => return tracing::error!("cannot recover the switchover that died: {e}"),
        };
        match switchover::recover(&self.targets, &self.config, &proxies, &Progress::quiet()).await {
            Ok(Some(report)) => tracing::warn!(
                outcome = report.outcome.name(),
                reason = report.reason.as_deref().unwrap_or(""),
                "recovered a switchover that died"
            ),
            Ok(None) => {}
            Err(e) => tracing::error!("recovering the switchover that died: {e}"),
        }
    }

    /// [`JournalFollower::follow`] every [`JOURNAL_WATCH`].
    async fn watch(self) {
        loop {
            tokio::time::sleep(JOURNAL_WATCH).await;
            self.follow().await;
        }
    }
}

/// With [green] configured: exports replication lag and DDL drift every 10 s as
/// the `pgcutover_replication_lag_bytes` and `pgcutover_ddl_drift` gauges.
fn replication_monitor(proxy: &Proxy, targets: Targets, config: &Config) -> tokio::task::JoinHandle<()> {
    let control = proxy.control();
    let max_lag = config.switchover.max_lag_bytes;
    tokio::spawn(pgcutover_orchestrator::status::monitor(
        targets,
        max_lag,
        Duration::from_secs(10),
        move |database, lag, drift| control.metrics().set_replication_status(database, lag, drift),
    ))
}

/// `POST /switchover` on this proxy: the switchover with this proxy in-process and
/// its peers through their admin API.
struct Runner {
    config: Config,
    targets: Targets,
    /// This proxy; its peers are resolved at the start of each run.
    local: Arc<pgcutover_proxy::control::Control>,
    /// How many runs are under way: the proxy's shutdown waits for them.
    runs: Arc<tokio::sync::watch::Sender<usize>>,
}

/// One run under way, counted in [`Runner::runs`] until it is dropped.
struct Running(Arc<tokio::sync::watch::Sender<usize>>);

impl Running {
    fn start(runs: &Arc<tokio::sync::watch::Sender<usize>>) -> Running {
        runs.send_modify(|n| *n += 1);
        Running(runs.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// How long a proxy told to stop waits for the switchover it runs: its hold limit
/// and the work after the flip.
const RUN_FINISH_LIMIT: Duration = Duration::from_secs(120);

impl SwitchoverRunner for Runner {
    fn run(&self, dry_run: bool, timeout: Option<Duration>) -> pgcutover_api::BoxFuture<'static, Report> {
        let (config, targets, local) = (self.config.clone(), self.targets.clone(), self.local.clone());
        let running = Running::start(&self.runs);
        Box::pin(async move {
            let _running = running;
            let proxies = match proxies(Some(local), &config).await {
                Ok(p) => p,
                Err(e) => {
                    let mut report = Report::new(Direction::Forward);
                    report.reason = Some(format!("{e:#}"));
                    return report;
                }
            };
            let opts = SwitchoverOptions {
                direction: Direction::Forward,
                timeout: timeout.unwrap_or(config.switchover.timeout.0),
                dry_run,
            };
            switchover::run(&targets, &config, &proxies, &opts, &Progress::quiet()).await
        })
    }
}

/// Every proxy a switchover drives: this process's (when it runs one) or the one at
/// [proxy] admin_listen, then [proxy] peers.
async fn proxies(
    local: Option<Arc<pgcutover_proxy::control::Control>>,
    config: &Config,
) -> anyhow::Result<Vec<Arc<dyn ProxyControl>>> {
    let token = AdminToken::load_optional(config.proxy.admin_token_file.as_deref())?;
    let ca = config.proxy.admin_tls_ca_file.as_deref();
    let mut proxies: Vec<Arc<dyn ProxyControl>> = Vec::new();
    match local {
        Some(control) => proxies.push(Arc::new(LocalProxy(control))),
        None => {
            let url = config.proxy.admin_url();
            proxies.push(Arc::new(
                RemoteProxy::new(&url, token.clone(), ca).map_err(anyhow::Error::msg)?,
            ));
        }
    }
    // Resolved now, at the start of this run: DNS names stand for whoever is there.
    let peers = switchover::resolve_peers(&config.proxy.peers, config.proxy.admin_listen, token.as_ref(), ca)
        .await
        .map_err(|e| anyhow::anyhow!("[proxy] peers: {e}"))?;
    if !config.proxy.peers.is_empty() {
        tracing::info!(
            peers = %peers.iter().map(|p| p.url()).collect::<Vec<_>>().join(", "),
            "switchover peers"
        );
    }
    proxies.extend(peers.into_iter().map(|p| Arc::new(p) as Arc<dyn ProxyControl>));
    Ok(proxies)
}

/// `pgcutover switchover` / `rollback`: drives the proxy at [proxy] admin_listen and
/// the peers through their admin API.
async fn run_switchover(args: SwitchoverArgs, direction: Direction) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let targets = Targets::from_config(&config)?;
    if config.proxy.admin_token_file.is_none() && !args.dry_run {
        anyhow::bail!(
            "the proxies' mutating admin calls need a token: set [proxy] admin_token_file (the same file the proxies use)"
        );
    }
    let proxies = proxies(None, &config).await?;
    let opts = SwitchoverOptions {
        direction,
        timeout: args.timeout.map(|t| t.0).unwrap_or(config.switchover.timeout.0),
        dry_run: args.dry_run,
    };
    let progress = if args.json {
        Progress::quiet()
    } else {
        Progress::stderr()
    };
    let interrupt = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tokio::spawn(interrupt_on_signals(interrupt.clone()));
    let report = switchover::run_interruptible(&targets, &config, &proxies, &opts, &progress, Some(interrupt)).await;
    watcher.abort();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", switchover::render(&report));
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `pgcutover recover`: the proxy at [proxy] admin_listen and the peers.
async fn run_recover(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let targets = Targets::from_config(&config)?;
    let proxies = proxies(None, &config).await?;
    let progress = if args.json {
        Progress::quiet()
    } else {
        Progress::stderr()
    };
    let Some(report) = switchover::recover(&targets, &config, &proxies, &progress).await? else {
        let journal = pgcutover_orchestrator::journal::current(&targets, JOURNAL_READ).await?;
        println!("nothing to recover: {}", journal.summary());
        return Ok(ExitCode::SUCCESS);
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", switchover::render(&report));
    }
    Ok(
        if matches!(report.outcome, pgcutover_api::Outcome::RolledBack) || report.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// Sets `interrupt` at every SIGINT or SIGTERM while a switchover runs, so that it
/// stops where that is safe, instead of dying with clients held and blue fenced.
async fn interrupt_on_signals(interrupt: Arc<std::sync::atomic::AtomicBool>) {
    loop {
        shutdown_signal().await;
        interrupt.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "pgcutover: interrupted: before its commit point the switchover rolls back at its next step; past it, it finishes (kill -9 would leave the proxies held until their timeout)"
        );
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); only Ctrl-C stops the proxy gracefully");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    systemd::notify("STOPPING=1\nSTATUS=draining: sessions close at their next transaction boundary");
}

/// `pgcutover ready`: GET /ready, one HTTP/1.0 request (no client library needed
/// for a health check).
async fn run_ready(args: ReadyArgs) -> anyhow::Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(&args.admin).await?;
        s.write_all(format!("GET /ready HTTP/1.0\r\nHost: {}\r\n\r\n", args.admin).as_bytes())
            .await?;
        let mut reply = Vec::new();
        s.take(64 * 1024).read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = match tokio::time::timeout(args.timeout.0, ask).await {
        Err(_) => anyhow::bail!(
            "the admin API at {} did not answer within {:?}",
            args.admin,
            args.timeout.0
        ),
        Ok(Err(e)) => anyhow::bail!("cannot reach the admin API at {}: {e}", args.admin),
        Ok(Ok(r)) => String::from_utf8_lossy(&r).into_owned(),
    };
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.split(' ').nth(1).unwrap_or("");
    let ready: Option<pgcutover_api::ReadyReply> = serde_json::from_str(body).ok();
    match (status, ready) {
        ("200", Some(r)) if r.ready => {
            println!("ready (routing to {})", r.route);
            Ok(ExitCode::SUCCESS)
        }
        (_, Some(r)) => {
            println!("not ready: {}", r.reason.unwrap_or_else(|| "no reason given".into()));
            Ok(ExitCode::FAILURE)
        }
        _ => anyhow::bail!(
            "{} answered GET /ready with {:?}: is it a pgcutover admin API?",
            args.admin,
            head.lines().next().unwrap_or("")
        ),
    }
}

fn targets(config: &ConfigArg) -> anyhow::Result<Targets> {
    let config = Config::load(&config.config)?;
    Ok(Targets::from_config(&config)?)
}

async fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let targets = targets(&args.config)?;
    let results = pgcutover_orchestrator::run_checks(&targets).await;
    let failed = results.iter().filter(|r| r.status == CheckStatus::Fail).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", pgcutover_orchestrator::check::render(&results));
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_replicate(args: ReplicateArgs) -> anyhow::Result<ExitCode> {
    let targets = targets(&args.config)?;
    let opts = ReplicateOptions {
        prepare_clone: args.prepare_clone,
        clone_log: args.clone_log,
        start_lsn: args.start_lsn,
        no_wait: args.no_wait,
    };
    pgcutover_orchestrator::replicate(&targets, &opts, &Progress::stderr()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let targets = Targets::from_config(&config)?;
    let mut status = pgcutover_orchestrator::replication_status(&targets, config.switchover.max_lag_bytes).await;
    match pgcutover_orchestrator::journal::current(&targets, JOURNAL_READ).await {
        Ok(j) => status.switchover = Some(j),
        Err(e) => status.journal_error = Some(e.to_string()),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", pgcutover_orchestrator::status::render(&status));
    }
    // 0 also when replication is not (fully) set up; 1 when a server could not be read.
    let unreadable = status
        .databases
        .iter()
        .any(|d| d.blue_error.is_some() || d.green_error.is_some());
    Ok(if unreadable {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let targets = targets(&args.config)?;
    let opts = VerifyOptions {
        jobs: args.jobs.max(1),
        chunk_rows: args.chunk_rows.max(1),
        retries: args.retries,
        ..VerifyOptions::default()
    };
    let report = pgcutover_orchestrator::verify(&targets, &opts, &Progress::stderr()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for d in &report.differences {
            match &d.error {
                Some(e) => println!("DIFFERS  {}/{}  {}: {e}", d.database, d.table, d.range),
                None => println!(
                    "DIFFERS  {}/{}  {}: {} rows on blue, {} on green",
                    d.database, d.table, d.range, d.blue_rows, d.green_rows
                ),
            }
        }
        println!("{}", report.summary());
    }
    Ok(if report.identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let opts = pgcutover_demo::DemoOptions {
        clients: args.clients.into(),
        seconds: args.seconds,
        keep: args.keep,
        progress: Progress::stderr(),
    };
    let report = match pgcutover_demo::run(opts).await {
        Ok(r) => r,
        Err(pgcutover_demo::DemoError::Interrupted) => {
            eprintln!("interrupted: everything the demo started was stopped and removed");
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e.into()),
    };
    if !args.keep {
        // --keep printed it already, before waiting.
        print!("{}", report.render());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
