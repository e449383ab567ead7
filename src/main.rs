//! The `pgcutover` command: parses the command line, sets up logging, loads the
//! configuration and hands over to the proxy (and, as they arrive, the
//! orchestrator's commands).

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgcutover_proxy::config::Config;
use pgcutover_proxy::Proxy;
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Proxy(args) => run_proxy(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
    let proxy = Proxy::bind(config).await.context("cannot start the proxy")?;
    proxy.run(shutdown_signal()).await;
    Ok(())
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
}
