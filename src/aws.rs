//! `pgcutover aws ...`: the AWS steps (crate `pgcutover-aws`) with the
//! orchestrator's SQL and the proxies around them.

use super::{parse_lsn, proxies, ConfigArg};
use clap::Subcommand;
use pgcutover_api::Side;
use pgcutover_config::{Config, HumanDuration};
use pgcutover_orchestrator::switchover;
use pgcutover_orchestrator::{Progress, ReplicateOptions, Targets};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub(crate) enum AwsCommand {
    /// Make green: rds.logical_replication on blue (a reboot only with
    /// --allow-reboot), the publication and slot on blue, then for an Aurora
    /// [aws] source_cluster a copy-on-write clone and its writer, for an RDS
    /// source_instance a snapshot restored as green; green's start LSN, the
    /// major-version upgrade to [aws] target_engine_version, then replication from
    /// that LSN. Every resource created is tagged with the run id. Re-running
    /// continues where it stopped.
    PrepareGreen(PrepareGreenArgs),
    /// Delete what prepare-green created for [aws] source_cluster or source_instance (found by its
    /// tags; never an untagged resource, never blue). Lists them and asks first.
    Cleanup(CleanupArgs),
    /// Switch over with AWS's own Blue/Green deployment while every proxy holds its
    /// clients: creates the deployment for [aws] source_cluster or source_instance
    /// at target_engine_version if there is none (and waits until AWS has built
    /// green), then holds and drains every proxy, runs AWS's switchover, routes to
    /// [green] url once it serves writes at the new version, and resumes. AWS's
    /// switchover ends every connection; through the proxies, clients see a pause.
    /// A failed or timed-out switchover resumes on blue. [green] url's host should
    /// be blue's endpoint: AWS gives that name to green.
    ManagedSwitchover(ManagedArgs),
}

#[derive(clap::Args)]
pub(crate) struct PrepareGreenArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print the plan of API calls (made from read-only calls) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Reboot blue's writer when its parameter group needs it (an outage of blue).
    #[arg(long)]
    allow_reboot: bool,
    /// Stop after the AWS steps and print green's endpoint and start LSN.
    #[arg(long)]
    no_attach: bool,
    /// The longest any one wait (the clone, the upgrade) may take.
    #[arg(long, default_value = "2h")]
    wait_limit: HumanDuration,
    /// Green's start LSN as you read it (e.g. "redo done at X/Y" in its first log,
    /// plus one), instead of asking green or reading its log.
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    start_lsn: Option<pgcutover_orchestrator::Lsn>,
}

#[derive(clap::Args)]
pub(crate) struct ManagedArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print the plan (made from read-only calls) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Create the deployment and wait until it is available; do not switch over.
    #[arg(long)]
    no_switchover: bool,
    /// The longest clients are held (default: [switchover] timeout, which every
    /// proxy must have at least as long); AWS's SwitchoverTimeout is this less 20 s.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<HumanDuration>,
    /// The longest AWS may take to build green.
    #[arg(long, default_value = "6h")]
    wait_limit: HumanDuration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(crate) struct CleanupArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only what this run created (its id, printed by prepare-green).
    #[arg(long)]
    run: Option<String>,
    /// Delete without asking.
    #[arg(long)]
    yes: bool,
}

pub(crate) async fn run(command: AwsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AwsCommand::PrepareGreen(args) => run_prepare_green(args).await,
        AwsCommand::Cleanup(args) => run_aws_cleanup(args).await,
        AwsCommand::ManagedSwitchover(args) => run_managed(args).await,
    }
}

/// A run's id: what its resources are tagged with.
fn run_id() -> String {
    format!(
        "pgcutover-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    )
}

/// Progress lines on stderr, timed from now.
fn progress() -> impl Fn(String) + Send + Sync {
    let started = std::time::Instant::now();
    move |line: String| eprintln!("[{:>7.1}s] {line}", started.elapsed().as_secs_f64())
}

/// The SQL around the AWS steps, by the orchestrator: blue's publication and slot,
/// the clone's start LSN, and replication from it.
struct AwsDatabase {
    config: Config,
}

impl AwsDatabase {
    /// The config with `[green] url` at `host:port` (blue's credentials: the clone
    /// has blue's roles), and the clone method.
    fn green_at(&self, host: &str, port: u16) -> Config {
        let mut config = self.config.clone();
        let mut url = config.blue.url.clone();
        // Tests point the SQL at a local server instead of the endpoint RDS reports.
        match std::env::var("PGCUTOVER_TEST_AWS_GREEN_URL")
            .ok()
            .and_then(|u| pgcutover_config::PgUrl::parse(&u).ok())
        {
            Some(test) => url = test,
            None => {
                url.host = host.to_owned();
                url.port = port;
            }
        }
        match &mut config.green {
            Some(g) => g.url = url,
            None => {
                let mut g = config.blue.clone();
                g.url = url;
                config.green = Some(g);
            }
        }
        config.replication.method = pgcutover_config::ReplicationMethod::Clone;
        config
    }
}

impl pgcutover_aws::Database for AwsDatabase {
    fn prepare_clone(&self) -> pgcutover_aws::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut config = self.config.clone();
            config.replication.method = pgcutover_config::ReplicationMethod::Clone;
            let targets = Targets::from_config(&config).map_err(|e| e.to_string())?;
            let opts = ReplicateOptions {
                prepare_clone: true,
                ..Default::default()
            };
            pgcutover_orchestrator::replicate(&targets, &opts, &Progress::stderr())
                .await
                .map_err(|e| format!("replicate --prepare-clone: {e}"))
        })
    }

    fn start_lsn(&self, host: &str, port: u16) -> pgcutover_aws::BoxFuture<'_, Result<String, String>> {
        let config = self.green_at(host, port);
        Box::pin(async move {
            let targets = Targets::from_config(&config).map_err(|e| e.to_string())?;
            pgcutover_orchestrator::aurora_start_lsn(&targets)
                .await
                .map(|lsn| lsn.to_string())
                .map_err(|e| format!("reading the clone's start LSN on green: {e}"))
        })
    }

    fn attach(&self, host: &str, port: u16, lsn: &str) -> pgcutover_aws::BoxFuture<'_, Result<(), String>> {
        let config = self.green_at(host, port);
        let lsn = lsn.to_owned();
        Box::pin(async move {
            let targets = Targets::from_config(&config).map_err(|e| e.to_string())?;
            let opts = ReplicateOptions {
                start_lsn: Some(parse_lsn(&lsn)?),
                ..Default::default()
            };
            pgcutover_orchestrator::replicate(&targets, &opts, &Progress::stderr())
                .await
                .map_err(|e| format!("replicate (clone method, from {lsn}): {e}"))
        })
    }

    fn lsn_in_log(&self, log: &str) -> Option<String> {
        pgcutover_orchestrator::parse_clone_log(log).map(|start| start.lsn.to_string())
    }
}

async fn run_prepare_green(args: PrepareGreenArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let rds = pgcutover_aws::connect(&config.aws).await;
    let run_id = run_id();
    let opts = pgcutover_aws::PrepareOptions {
        dry_run: args.dry_run,
        allow_reboot: args.allow_reboot,
        no_attach: args.no_attach,
        run_id: run_id.clone(),
        wait_limit: args.wait_limit.0,
        backoff: pgcutover_aws::Backoff::default(),
        start_lsn: args.start_lsn.map(|l| l.to_string()),
    };
    let plan = pgcutover_aws::plan(&rds, &config.aws, &opts).await?;
    println!("plan for green {} (run {run_id}):", plan.green);
    print!("{plan}");
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let progress = progress();
    let db = AwsDatabase { config: config.clone() };
    let green = pgcutover_aws::execute(
        &rds,
        &config.aws,
        &plan,
        &opts,
        &db,
        &pgcutover_aws::SystemClock::default(),
        &progress,
    )
    .await?;
    println!(
        "green: {} at {}:{} (start LSN {})",
        green.cluster, green.endpoint, green.port, green.start_lsn
    );
    if green.attached {
        println!(
            "replication runs from the start LSN: set [green] url to host {} port {}, then pgcutover status",
            green.endpoint, green.port
        );
    } else {
        println!(
            "next: set [green] url to host {} port {} and [replication] method = \"clone\", then pgcutover replicate --start-lsn {}",
            green.endpoint, green.port, green.start_lsn
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_aws_cleanup(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let source = config
        .aws
        .source_cluster
        .clone()
        .or(config.aws.source_instance.clone())
        .ok_or_else(|| {
            anyhow::anyhow!("[aws] source_cluster (or source_instance) is not set: blue, whose green to clean up")
        })?;
    let rds = pgcutover_aws::connect(&config.aws).await;
    let found = pgcutover_aws::find(&rds, &source, args.run.as_deref()).await?;
    if found.is_empty() {
        println!("nothing tagged {}={source} to delete", pgcutover_aws::SOURCE_TAG);
        return Ok(ExitCode::SUCCESS);
    }
    println!("tagged {}={source}:", pgcutover_aws::SOURCE_TAG);
    for item in &found {
        println!("  {item}");
    }
    if !args.yes {
        eprint!("delete these {} resources? [y/N] ", found.len());
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing deleted");
            return Ok(ExitCode::FAILURE);
        }
    }
    let progress = progress();
    let done = pgcutover_aws::delete(
        &rds,
        &source,
        &found,
        &pgcutover_aws::SystemClock::default(),
        Duration::from_secs(3600),
        pgcutover_aws::Backoff::default(),
        &progress,
    )
    .await?;
    for d in &done {
        match d {
            pgcutover_aws::Deleted::Deleted(item) => println!("deleted {item}"),
            pgcutover_aws::Deleted::Kept(item, why) => println!("kept {item}: {why}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Green as the proxies will reach it, asked over SQL (the admin connection of
/// `[green] url`) whether it is the new primary yet.
struct GreenSql {
    targets: Targets,
}

impl pgcutover_aws::managed::GreenProbe for GreenSql {
    fn host(&self) -> String {
        self.targets.url(Side::Green).host.clone()
    }

    fn serves_writes(&self, major: u32) -> pgcutover_aws::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (_, client) = self
                .targets
                .connect_admin(Side::Green)
                .await
                .map_err(|e| e.to_string())?;
            let row = client
                .query_one(
                    "select pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only'), \
                     pg_catalog.current_setting('server_version_num')::int / 10000",
                    &[],
                )
                .await
                .map_err(|e| pgcutover_orchestrator::pg_message(&e))?;
            let (recovery, read_only, running): (bool, String, i32) = (row.get(0), row.get(1), row.get(2));
            match () {
                _ if running as u32 != major => Err(format!(
                    "[green] url reaches PostgreSQL {running}, not {major} (DNS not moved yet?)"
                )),
                _ if recovery => Err("[green] url reaches a server in recovery".into()),
                _ if read_only == "on" => Err("[green] url reaches a read-only server".into()),
                _ => Ok(()),
            }
        })
    }
}

async fn run_managed(args: ManagedArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let targets = Targets::from_config(&config)?;
    if config.green.is_none() {
        anyhow::bail!("[green] url is not set: where clients go after the switchover (blue's endpoint: AWS gives its name to green)");
    }
    if config.proxy.admin_token_file.is_none() && !args.dry_run {
        anyhow::bail!(
            "the proxies' mutating admin calls need a token: set [proxy] admin_token_file (the same file the proxies use)"
        );
    }
    let version = config.aws.target_engine_version.clone().unwrap_or_default();
    let target_major = version.split('.').next().and_then(|m| m.parse::<u32>().ok());
    let proxies = proxies(None, &config).await?;
    let opts = pgcutover_aws::managed::ManagedOptions {
        dry_run: args.dry_run,
        no_switchover: args.no_switchover,
        run_id: run_id(),
        wait_limit: args.wait_limit.0,
        backoff: pgcutover_aws::Backoff::default(),
        timeout: args.timeout.map(|t| t.0).unwrap_or(config.switchover.timeout.0),
        switch_poll: pgcutover_aws::Backoff {
            first: Duration::from_millis(250),
            max: Duration::from_secs(1),
        },
    };
    let rds = pgcutover_aws::connect(&config.aws).await;
    let plan = pgcutover_aws::managed::plan(&rds, &config.aws, &opts, proxies.len()).await?;
    let target_major = target_major
        .ok_or_else(|| anyhow::anyhow!("[aws] target_engine_version {version:?} is not a version like \"17.4\""))?;
    // With --json, stdout is the report alone.
    let plan_text = format!("plan for {} (run {}):\n{plan}", plan.source.id, opts.run_id);
    match args.json {
        true => eprint!("{plan_text}"),
        false => print!("{plan_text}"),
    }
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let clock = pgcutover_aws::SystemClock::default();
    let progress = progress();
    let id = pgcutover_aws::managed::prepare(&rds, &plan, &opts, &clock, &progress).await?;
    if args.no_switchover {
        println!("deployment {id} is available; run managed-switchover again to switch over");
        return Ok(ExitCode::SUCCESS);
    }
    let green = GreenSql { targets };
    let report =
        pgcutover_aws::managed::switchover(&rds, &id, target_major, &proxies, &green, &opts, &clock, &progress).await;
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
