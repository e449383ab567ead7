//! `pgcutover aws managed-switchover`: AWS's own Blue/Green deployment with every
//! proxy holding clients across its switchover. AWS builds green, replicates into
//! it and swaps the endpoint names; its switchover ends every connection on both
//! sides (RDS Proxy passes that on). With the proxies in front the application sees
//! a pause: hold and drain every proxy, AWS's switchover, route every proxy to
//! `[green] url` once it serves writes at the target version, resume.
//!
//! The commit point is AWS's `SWITCHOVER_COMPLETED`. Before it, any failure (a
//! drain that does not finish, AWS refusing, `SWITCHOVER_FAILED`, the hold's limit)
//! resumes the proxies on blue, which AWS leaves as it was. After it, blue's name
//! belongs to green: the run rolls forward.

use crate::wait::{wait_until, Backoff, Clock, Poll};
use crate::{describe, AwsError, BoxFuture, RUN_TAG, SOURCE_TAG};
use aws_sdk_rds::types::{BlueGreenDeployment, Tag};
use aws_sdk_rds::Client;
use futures_util::future::join_all;
use pgcutover_api::{Outcome, Phase, PhaseTime, PhaseUpdate, ProxyControl, Report, Side};
use pgcutover_config::AwsConfig;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// AWS's shortest `SwitchoverTimeout`.
const AWS_MIN_SWITCHOVER: Duration = Duration::from_secs(30);

/// What the hold keeps back from AWS's switchover for routing: the SQL check of
/// green and every proxy's flip.
const ROUTE_BUDGET: Duration = Duration::from_secs(20);

/// Statuses from which a deployment never becomes `AVAILABLE`.
const BROKEN: &[&str] = &["INVALID_CONFIGURATION", "PROVISIONING_FAILED", "DELETING"];

/// The SQL side of the switchover, which the orchestrator owns.
pub trait GreenProbe: Send + Sync {
    /// The host the proxies route to as green (`[green] url`).
    fn host(&self) -> String;
    /// Whether that address now serves writes at `major`: `Err` says what it does
    /// instead (still in recovery, read-only, the old major version: DNS not yet
    /// moved, a connection refused).
    fn serves_writes(&self, major: u32) -> BoxFuture<'_, Result<(), String>>;
}

/// How `managed-switchover` runs.
#[derive(Debug, Clone)]
pub struct ManagedOptions {
    /// Print the plan and change nothing.
    pub dry_run: bool,
    /// Create the deployment and wait for it, but do not switch over.
    pub no_switchover: bool,
    /// The id the deployment is tagged with when this run creates it.
    pub run_id: String,
    /// The longest the deployment's creation may take.
    pub wait_limit: Duration,
    /// How often the creation is polled.
    pub backoff: Backoff,
    /// The longest clients are held: AWS gets this less [`ROUTE_BUDGET`].
    pub timeout: Duration,
    /// How often AWS's switchover is polled while clients wait.
    pub switch_poll: Backoff,
}

impl ManagedOptions {
    /// AWS's `SwitchoverTimeout` for this hold, if the hold leaves it AWS's minimum.
    pub fn aws_timeout(&self) -> Option<Duration> {
        self.timeout
            .checked_sub(ROUTE_BUDGET)
            .filter(|t| *t >= AWS_MIN_SWITCHOVER)
    }
}

/// Blue, as the deployment names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The cluster or instance identifier.
    pub id: String,
    /// Its ARN: the deployment's `Source`.
    pub arn: String,
    /// The engine version it runs.
    pub engine_version: String,
    /// An Aurora cluster (else an RDS instance).
    pub cluster: bool,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedStep {
    /// `CreateBlueGreenDeployment`.
    Create {
        /// The deployment's name.
        name: String,
        /// Blue's ARN.
        source: String,
        /// The target engine version.
        version: String,
        /// Green's parameter group (cluster or instance), when configured.
        group: Option<String>,
    },
    /// Wait until the deployment is `AVAILABLE`.
    WaitAvailable,
    /// Hold, drain, `SwitchoverBlueGreenDeployment`, route, resume.
    Switchover {
        /// The deployment (its id once it exists).
        deployment: String,
        /// Proxies driven.
        proxies: usize,
        /// AWS's `SwitchoverTimeout`.
        aws_timeout: Duration,
        /// The longest clients wait.
        hold_limit: Duration,
    },
}

impl fmt::Display for ManagedStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagedStep::Create {
                name,
                source,
                version,
                group,
            } => {
                write!(f, "CreateBlueGreenDeployment {name} (Source = {source}, TargetEngineVersion = {version}")?;
                if let Some(g) = group {
                    write!(f, ", parameter group {g}")?;
                }
                write!(f, "), tagged")
            }
            ManagedStep::WaitAvailable => write!(
                f,
                "wait until the deployment is AVAILABLE (AWS copies blue and replicates into green)"
            ),
            ManagedStep::Switchover {
                deployment,
                proxies,
                aws_timeout,
                hold_limit,
            } => write!(
                f,
                "hold and drain {proxies} prox{}, SwitchoverBlueGreenDeployment {deployment} (SwitchoverTimeout = {} s), wait for SWITCHOVER_COMPLETED, check [green] url serves writes, route to green, resume (clients wait at most {} s)",
                if *proxies == 1 { "y" } else { "ies" },
                aws_timeout.as_secs(),
                hold_limit.as_secs()
            ),
        }
    }
}

/// What `managed-switchover` will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedPlan {
    /// Blue.
    pub source: Source,
    /// The deployment, when it exists.
    pub deployment: Option<String>,
    /// The steps, in order.
    pub steps: Vec<ManagedStep>,
}

impl fmt::Display for ManagedPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "{:>2}. {step}", i + 1)?;
        }
        Ok(())
    }
}

fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// The resource name in an RDS ARN (`arn:aws:rds:region:account:cluster:NAME`).
fn arn_name(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

async fn describe_source(rds: &Client, config: &AwsConfig) -> Result<Source, AwsError> {
    match (&config.source_cluster, &config.source_instance) {
        (Some(id), _) => {
            let c = describe::cluster(rds, id)
                .await?
                .ok_or_else(|| AwsError::refused(format!("no cluster {id}"), "check [aws] source_cluster and region"))?;
            Ok(Source {
                id: id.clone(),
                arn: c.db_cluster_arn().unwrap_or_default().to_owned(),
                engine_version: c.engine_version().unwrap_or_default().to_owned(),
                cluster: true,
            })
        }
        (None, Some(id)) => {
            let i = describe::instance(rds, id).await?.ok_or_else(|| {
                AwsError::refused(format!("no DB instance {id}"), "check [aws] source_instance and region")
            })?;
            Ok(Source {
                id: id.clone(),
                arn: i.db_instance_arn().unwrap_or_default().to_owned(),
                engine_version: i.engine_version().unwrap_or_default().to_owned(),
                cluster: false,
            })
        }
        (None, None) => Err(AwsError::Config(
            "neither source_cluster (Aurora) nor source_instance (RDS for PostgreSQL) is set: the database blue runs on".into(),
        )),
    }
}

/// Every deployment whose source is `arn`.
async fn deployments_of(rds: &Client, arn: &str) -> Result<Vec<BlueGreenDeployment>, AwsError> {
    let mut found = Vec::new();
    let mut pages = rds.describe_blue_green_deployments().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::api("DescribeBlueGreenDeployments", e))?;
        found.extend(
            page.blue_green_deployments()
                .iter()
                .filter(|d| d.source() == Some(arn))
                .cloned(),
        );
    }
    Ok(found)
}

async fn deployment(rds: &Client, id: &str) -> Result<BlueGreenDeployment, AwsError> {
    rds.describe_blue_green_deployments()
        .blue_green_deployment_identifier(id)
        .send()
        .await
        .map_err(|e| AwsError::api(format!("DescribeBlueGreenDeployments {id}"), e))?
        .blue_green_deployments()
        .first()
        .cloned()
        .ok_or_else(|| AwsError::refused(format!("the deployment {id} is gone"), "run managed-switchover again"))
}

/// Makes the plan from read-only calls. `proxies` is how many the switchover drives.
pub async fn plan(
    rds: &Client,
    config: &AwsConfig,
    opts: &ManagedOptions,
    proxies: usize,
) -> Result<ManagedPlan, AwsError> {
    let source = describe_source(rds, config).await?;
    let version = config
        .target_engine_version
        .as_deref()
        .ok_or_else(|| AwsError::Config("target_engine_version is not set, e.g. \"17.4\"".into()))?;
    let aws_timeout = opts.aws_timeout().ok_or_else(|| {
        AwsError::refused(
            format!(
                "a hold of {:?} leaves AWS's switchover less than its minimum of {} s (the last {} s are for routing)",
                opts.timeout,
                AWS_MIN_SWITCHOVER.as_secs(),
                ROUTE_BUDGET.as_secs()
            ),
            "set [switchover] timeout (here and on every proxy) or --timeout to at least \"50s\"; AWS usually switches within a minute",
        )
    })?;
    let live: Vec<_> = deployments_of(rds, &source.arn)
        .await?
        .into_iter()
        .filter(|d| d.status() != Some("SWITCHOVER_COMPLETED"))
        .collect();
    let mut steps = Vec::new();
    let deployment = match live.as_slice() {
        [] => {
            if major(&source.engine_version).is_some_and(|m| Some(m) >= major(version)) {
                return Err(AwsError::refused(
                    format!(
                        "{} runs {} already; target_engine_version is {version}",
                        source.id, source.engine_version
                    ),
                    "set target_engine_version to a newer major version",
                ));
            }
            let group = match source.cluster {
                true => config.target_cluster_parameter_group.clone(),
                false => config.target_instance_parameter_group.clone(),
            };
            steps.push(ManagedStep::Create {
                name: format!("pgcutover-{}", source.id),
                source: source.arn.clone(),
                version: version.to_owned(),
                group,
            });
            steps.push(ManagedStep::WaitAvailable);
            None
        }
        [one] => {
            let status = one.status().unwrap_or("unknown");
            if BROKEN.contains(&status) {
                return Err(AwsError::refused(
                    format!(
                        "the Blue/Green deployment {} of {} is {status}: {}",
                        one.blue_green_deployment_identifier().unwrap_or("?"),
                        source.id,
                        one.status_details().unwrap_or("no details")
                    ),
                    "fix what it names and delete it (aws rds delete-blue-green-deployment --delete-target), then run again",
                ));
            }
            if status != "AVAILABLE" {
                steps.push(ManagedStep::WaitAvailable);
            }
            one.blue_green_deployment_identifier().map(str::to_owned)
        }
        many => {
            return Err(AwsError::refused(
                format!("{} has {} Blue/Green deployments under way", source.id, many.len()),
                "delete all but the one to switch to",
            ))
        }
    };
    if !opts.no_switchover {
        steps.push(ManagedStep::Switchover {
            deployment: deployment.clone().unwrap_or_else(|| "(the new one)".into()),
            proxies,
            aws_timeout,
            hold_limit: opts.timeout,
        });
    }
    Ok(ManagedPlan {
        source,
        deployment,
        steps,
    })
}

/// Creates the deployment (if the plan says so) and waits until it is available:
/// its id.
pub async fn prepare(
    rds: &Client,
    plan: &ManagedPlan,
    opts: &ManagedOptions,
    clock: &dyn Clock,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<String, AwsError> {
    let mut id = plan.deployment.clone();
    for step in &plan.steps {
        match step {
            ManagedStep::Create {
                name,
                source,
                version,
                group,
            } => {
                progress(step.to_string());
                let mut create = rds
                    .create_blue_green_deployment()
                    .blue_green_deployment_name(name)
                    .source(source)
                    .target_engine_version(version)
                    .tags(Tag::builder().key(RUN_TAG).value(&opts.run_id).build())
                    .tags(Tag::builder().key(SOURCE_TAG).value(&plan.source.id).build());
                create = match plan.source.cluster {
                    true => create.set_target_db_cluster_parameter_group_name(group.clone()),
                    false => create.set_target_db_parameter_group_name(group.clone()),
                };
                let out = create
                    .send()
                    .await
                    .map_err(|e| AwsError::api(format!("CreateBlueGreenDeployment {name}"), e))?;
                id = out
                    .blue_green_deployment()
                    .and_then(|d| d.blue_green_deployment_identifier())
                    .map(str::to_owned);
                progress(format!("deployment {}", id.as_deref().unwrap_or("?")));
            }
            ManagedStep::WaitAvailable => {
                progress(step.to_string());
                let id = id.as_deref().unwrap_or_default();
                wait_until(
                    clock,
                    "the Blue/Green deployment",
                    opts.wait_limit,
                    opts.backoff,
                    || async {
                        let d = deployment(rds, id).await?;
                        match d.status().unwrap_or("unknown") {
                            "AVAILABLE" => Ok(Poll::Ready(())),
                            broken if BROKEN.contains(&broken) => Err(AwsError::refused(
                                format!(
                                    "the deployment {id} is {broken}: {}",
                                    d.status_details().unwrap_or("no details")
                                ),
                                "see its tasks in the RDS console; delete it and run again",
                            )),
                            other => Ok(Poll::Pending(other.to_owned())),
                        }
                    },
                )
                .await?;
            }
            ManagedStep::Switchover { .. } => {}
        }
    }
    id.ok_or_else(|| AwsError::refused("CreateBlueGreenDeployment named no deployment", "run again"))
}

/// How AWS's switchover ended.
enum AwsEnd {
    /// Green has blue's name: the commit point.
    Completed,
    /// AWS undid it, or never started it: blue is as it was.
    NotDone(String),
}

/// The switchover itself: every proxy held and drained, AWS's switchover, every
/// proxy routed to green once `green` serves writes, resumed. It never leaves a
/// proxy held. `target_major` is the version green must run.
#[allow(clippy::too_many_arguments)]
pub async fn switchover(
    rds: &Client,
    deployment_id: &str,
    target_major: u32,
    proxies: &[Arc<dyn ProxyControl>],
    green: &dyn GreenProbe,
    opts: &ManagedOptions,
    clock: &dyn Clock,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Report {
    let mut run = ManagedRun {
        report: Report::new(pgcutover_api::Direction::Forward),
        phase: None,
        started: Instant::now(),
        proxies,
        run_id: &opts.run_id,
        timeout: opts.timeout,
        progress,
    };
    let preflight = async {
        run.enter(Phase::Preflight).await;
        preflight(rds, deployment_id, proxies, green, opts).await
    };
    if let Err(e) = preflight.await {
        run.report.reason = Some(e.to_string());
        return run.end(Outcome::Refused).await;
    }
    let held_at = Instant::now();
    let deadline = clock.elapsed() + opts.timeout;
    run.enter(Phase::Hold).await;
    let before = run.hold_and_drain().await;
    let aws = match before {
        Ok(()) => {
            run.enter(Phase::Flip).await;
            aws_switchover(rds, deployment_id, opts, clock, deadline, progress).await
        }
        Err(e) => Err(e),
    };
    match aws {
        Ok(AwsEnd::Completed) => {}
        Ok(AwsEnd::NotDone(why)) => return run.resume_on_blue(why, held_at).await,
        Err(e) => return run.resume_on_blue(e.to_string(), held_at).await,
    }
    // Past the commit point: blue's name is green's. Route once green answers as
    // the new primary; if it never does in time, route anyway (blue is no more).
    let left = deadline.saturating_sub(clock.elapsed()).max(Duration::from_secs(5));
    let probed = wait_until(clock, "[green] url serving writes", left, opts.switch_poll, || async {
        Ok(match green.serves_writes(target_major).await {
            Ok(()) => Poll::Ready(()),
            Err(why) => Poll::Pending(why),
        })
    })
    .await;
    if let Err(e) = probed {
        run.add_reason(format!("routed to green although {e}"));
    }
    let routes = proxies.iter().map(|p| p.route(&opts.run_id, Side::Green, ROUTE_BUDGET));
    let mut every_routed = true;
    for (p, r) in proxies.iter().zip(join_all(routes).await) {
        match r {
            Ok(reply) => {
                run.report.sessions_moved += reply.moved;
                run.report.unmoved_sessions.extend(reply.unmoved);
            }
            Err(e) => {
                every_routed = false;
                run.add_reason(format!("{}: not routed to green: {e}", p.name()));
            }
        }
    }
    run.enter(Phase::Resume).await;
    run.resume_all(held_at).await;
    run.enter(Phase::Done).await;
    let outcome = match every_routed && run.report.unmoved_sessions.is_empty() && run.report.reason.is_none() {
        true => Outcome::Completed,
        false => Outcome::Incomplete,
    };
    run.end(outcome).await
}

/// Nothing changed yet: the deployment is ready and so is every proxy.
async fn preflight(
    rds: &Client,
    deployment_id: &str,
    proxies: &[Arc<dyn ProxyControl>],
    green: &dyn GreenProbe,
    opts: &ManagedOptions,
) -> Result<(), AwsError> {
    let d = deployment(rds, deployment_id).await?;
    if d.status() != Some("AVAILABLE") {
        return Err(AwsError::refused(
            format!(
                "the deployment {deployment_id} is {}, not AVAILABLE",
                d.status().unwrap_or("unknown")
            ),
            "wait for it (managed-switchover --no-switchover waits), or look at its tasks in the RDS console",
        ));
    }
    // Green's own endpoint goes away when it takes blue's name.
    if let Some(target) = d.target().map(arn_name) {
        let target_endpoint = match describe::cluster(rds, target).await? {
            Some(c) => c.endpoint().map(str::to_owned),
            None => describe::instance(rds, target)
                .await?
                .and_then(|i| i.endpoint().and_then(|e| e.address()).map(str::to_owned)),
        };
        if target_endpoint.is_some_and(|e| e.eq_ignore_ascii_case(&green.host())) {
            return Err(AwsError::refused(
                format!(
                    "[green] url names {}, green's endpoint before the switchover, which AWS renames away",
                    green.host()
                ),
                "set [green] url's host to blue's endpoint: AWS gives that name to green at the switchover",
            ));
        }
    }
    let statuses = join_all(proxies.iter().map(|p| p.status())).await;
    for (p, s) in proxies.iter().zip(statuses) {
        let s = s.map_err(|e| AwsError::refused(e.to_string(), "every proxy must answer before clients are held"))?;
        if s.route != Side::Blue {
            return Err(AwsError::refused(
                format!("{} routes to {} already", p.name(), s.route.name()),
                "managed-switchover moves clients from blue; route it back first",
            ));
        }
        if s.hold_limit_ms < opts.timeout.as_millis() as u64 {
            return Err(AwsError::refused(
                format!(
                    "{} releases held clients after {} ms, before this run's hold of {:?} could end",
                    p.name(),
                    s.hold_limit_ms,
                    opts.timeout
                ),
                "set the same [switchover] timeout on every proxy as here (or pass a shorter --timeout)",
            ));
        }
    }
    Ok(())
}

/// `SwitchoverBlueGreenDeployment`, then polls until AWS says how it ended, for
/// at most the time left before `deadline` less the routing budget.
async fn aws_switchover(
    rds: &Client,
    id: &str,
    opts: &ManagedOptions,
    clock: &dyn Clock,
    deadline: Duration,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<AwsEnd, AwsError> {
    let aws_timeout = opts.aws_timeout().unwrap_or(AWS_MIN_SWITCHOVER);
    progress(format!(
        "SwitchoverBlueGreenDeployment {id} (SwitchoverTimeout = {} s)",
        aws_timeout.as_secs()
    ));
    rds.switchover_blue_green_deployment()
        .blue_green_deployment_identifier(id)
        .switchover_timeout(aws_timeout.as_secs() as i32)
        .send()
        .await
        .map_err(|e| AwsError::api(format!("SwitchoverBlueGreenDeployment {id}"), e))?;
    pause_for_tests().await;
    let limit = deadline
        .saturating_sub(clock.elapsed())
        .saturating_sub(ROUTE_BUDGET)
        .max(aws_timeout);
    wait_until(clock, "AWS's switchover", limit, opts.switch_poll, || async {
        let d = deployment(rds, id).await?;
        let status = d.status().unwrap_or("unknown");
        Ok(match status {
            "SWITCHOVER_COMPLETED" => Poll::Ready(AwsEnd::Completed),
            "SWITCHOVER_FAILED" | "AVAILABLE" | "INVALID_CONFIGURATION" => Poll::Ready(AwsEnd::NotDone(format!(
                "AWS's switchover did not happen ({status}: {}); blue is as it was",
                d.status_details().unwrap_or("no details")
            ))),
            other => Poll::Pending(other.to_owned()),
        })
    })
    .await
}

/// A fault point for tests: with `PGCUTOVER_TEST_PAUSE_AT=aws_switchover[:<seconds>]`
/// a run waits (3 s by default) after AWS accepted the switchover, as a real one
/// takes seconds where moto's is done at once, so that a test can do meanwhile
/// what AWS does (end blue's connections). Unset, always outside tests.
async fn pause_for_tests() {
    let Ok(at) = std::env::var("PGCUTOVER_TEST_PAUSE_AT") else {
        return;
    };
    if let Some(secs) = at.strip_prefix("aws_switchover") {
        let secs = secs.strip_prefix(':').and_then(|s| s.parse().ok()).unwrap_or(3);
        tracing::warn!("PGCUTOVER_TEST_PAUSE_AT: pausing {secs} s in AWS's switchover");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

/// One run's proxies, phases and report.
struct ManagedRun<'a> {
    report: Report,
    phase: Option<Phase>,
    started: Instant,
    proxies: &'a [Arc<dyn ProxyControl>],
    run_id: &'a str,
    /// The longest clients wait (each proxy's drain has its own drain_timeout).
    timeout: Duration,
    progress: &'a (dyn Fn(String) + Send + Sync),
}

impl ManagedRun<'_> {
    /// Ends the phase running (timed) and starts `phase`, on every proxy's `/status` too.
    async fn enter(&mut self, phase: Phase) {
        let ended = self.finish_phase();
        self.phase = Some(phase);
        self.started = Instant::now();
        self.tell(PhaseUpdate {
            phase: Some(phase),
            ended,
            outcome: None,
        })
        .await;
    }

    fn finish_phase(&mut self) -> Option<PhaseTime> {
        let ended = PhaseTime {
            phase: self.phase?,
            ms: self.started.elapsed().as_secs_f64() * 1000.0,
        };
        (self.progress)(format!("managed switchover {}: {:.1} ms", ended.phase, ended.ms));
        self.report.phases.push(ended.clone());
        Some(ended)
    }

    async fn tell(&self, update: PhaseUpdate) {
        let told = join_all(self.proxies.iter().map(|p| p.report_phase(update.clone()))).await;
        for (p, r) in self.proxies.iter().zip(told) {
            if let Err(e) = r {
                tracing::warn!("{}: phase report: {e}", p.name());
            }
        }
    }

    fn add_reason(&mut self, reason: String) {
        self.report.reason = Some(match self.report.reason.take() {
            Some(r) => format!("{r}; {reason}"),
            None => reason,
        });
    }

    async fn hold_and_drain(&mut self) -> Result<(), AwsError> {
        let holds = join_all(self.proxies.iter().map(|p| p.hold(self.run_id))).await;
        for r in holds {
            let r = r.map_err(|e| {
                AwsError::refused(
                    e.to_string(),
                    "AWS was not asked to switch over; every proxy was resumed on blue",
                )
            })?;
            self.report.transactions_drained += r.in_flight;
        }
        self.enter(Phase::Drain).await;
        let drains = join_all(self.proxies.iter().map(|p| p.drain(self.run_id, self.timeout))).await;
        for (p, r) in self.proxies.iter().zip(drains) {
            let r = r.map_err(|e| AwsError::refused(e.to_string(), "AWS was not asked to switch over"))?;
            self.report.sessions_held += r.sessions;
            if !r.drained {
                return Err(AwsError::refused(
                    format!(
                        "{}: {} transactions still running after the drain",
                        p.name(),
                        r.in_flight
                    ),
                    r.error.unwrap_or_else(|| {
                        "raise [switchover] drain_timeout, or run when no long transaction is open".into()
                    }),
                ));
            }
        }
        Ok(())
    }

    async fn resume_all(&mut self, held_at: Instant) {
        let resumes = join_all(self.proxies.iter().map(|p| p.resume(self.run_id))).await;
        for (p, r) in self.proxies.iter().zip(resumes) {
            if let Err(e) = r {
                // Its hold lapses by itself at the hold limit.
                self.add_reason(format!("{}: resume: {e}", p.name()));
            }
        }
        self.report.max_hold_ms = held_at.elapsed().as_secs_f64() * 1000.0;
    }

    async fn resume_on_blue(mut self, why: String, held_at: Instant) -> Report {
        self.add_reason(why);
        self.enter(Phase::RollingBack).await;
        self.resume_all(held_at).await;
        self.enter(Phase::RolledBack).await;
        self.end(Outcome::RolledBack).await
    }

    async fn end(mut self, outcome: Outcome) -> Report {
        let ended = self.finish_phase();
        self.report.outcome = outcome;
        self.tell(PhaseUpdate {
            phase: None,
            ended,
            outcome: Some(outcome),
        })
        .await;
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::tests::FakeClock;
    use aws_sdk_rds::operation::describe_blue_green_deployments::DescribeBlueGreenDeploymentsOutput;
    use aws_sdk_rds::operation::describe_db_clusters::DescribeDbClustersOutput;
    use aws_sdk_rds::operation::describe_db_instances::DescribeDbInstancesOutput;
    use aws_sdk_rds::operation::switchover_blue_green_deployment::SwitchoverBlueGreenDeploymentOutput;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use pgcutover_api::{
        BoxFuture, HoldReply, PerSide, PrepareReply, ProxyError, ProxyPhase, ResumeReply, RouteReply, StatusReply,
    };
    use std::sync::Mutex;

    /// A proxy that records every call, and answers as a healthy one does.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
    }

    impl Fake {
        fn log(&self, call: &str) {
            self.calls.lock().unwrap().push(call.to_owned());
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl ProxyControl for Fake {
        fn name(&self) -> String {
            "fake proxy".into()
        }
        fn status(&self) -> BoxFuture<'_, Result<StatusReply, ProxyError>> {
            self.log("status");
            Box::pin(async {
                Ok(StatusReply {
                    route: Side::Blue,
                    epoch: 0,
                    phase: ProxyPhase::Serving,
                    held_ms: None,
                    held_clients: 0,
                    in_flight: 0,
                    clients: 0,
                    server_connections: PerSide::default(),
                    server_pids: None,
                    hold_limit_ms: 120_000,
                    databases: Default::default(),
                    closes_unreplicated: false,
                })
            })
        }
        fn prepare<'a>(&'a self, _: &'a str, _: Side, _: Duration) -> BoxFuture<'a, Result<PrepareReply, ProxyError>> {
            unreachable!("a managed switchover opens no standbys")
        }
        fn hold<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<HoldReply, ProxyError>> {
            self.log("hold");
            Box::pin(async { Ok(reply(true)) })
        }
        fn drain<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<HoldReply, ProxyError>> {
            self.log("drain");
            Box::pin(async { Ok(reply(true)) })
        }
        fn route<'a>(&'a self, _: &'a str, to: Side, _: Duration) -> BoxFuture<'a, Result<RouteReply, ProxyError>> {
            self.log(&format!("route {}", to.name()));
            Box::pin(async move {
                Ok(RouteReply {
                    route: to,
                    epoch: 1,
                    moved: 2,
                    not_moved: 0,
                    flip_ms: 1.0,
                    unmoved: Vec::new(),
                })
            })
        }
        fn resume<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<ResumeReply, ProxyError>> {
            self.log("resume");
            Box::pin(async {
                Ok(ResumeReply {
                    held: false,
                    route: Side::Blue,
                    held_ms: Some(1.0),
                })
            })
        }
        fn report_phase(&self, update: PhaseUpdate) -> BoxFuture<'_, Result<(), ProxyError>> {
            if let Some(p) = update.phase {
                self.log(&format!("phase {p}"));
            }
            Box::pin(async { Ok(()) })
        }
    }

    fn reply(drained: bool) -> HoldReply {
        HoldReply {
            held: true,
            drained,
            in_flight: 0,
            sessions: 2,
            drain_ms: 0.0,
            error: None,
        }
    }

    /// Blue's endpoint, which `[green] url` should name.
    const BLUE_ENDPOINT: &str = "shop.cluster-abc.us-east-1.rds.amazonaws.com";
    /// Green's own endpoint before the switchover, which AWS renames away.
    const GREEN_ENDPOINT: &str = "shop-green-x.cluster-abc.us-east-1.rds.amazonaws.com";

    /// Green's probe at `host`: fails `not_yet` times (DNS still on the old
    /// server), then serves.
    struct Probe {
        host: &'static str,
        not_yet: Mutex<usize>,
    }

    impl GreenProbe for Probe {
        fn host(&self) -> String {
            self.host.into()
        }
        fn serves_writes(&self, _: u32) -> BoxFuture<'_, Result<(), String>> {
            let mut left = self.not_yet.lock().unwrap();
            let r = match *left {
                0 => Ok(()),
                _ => Err("in recovery".to_owned()),
            };
            *left = left.saturating_sub(1);
            Box::pin(async move { r })
        }
    }

    fn deployment(status: &str) -> DescribeBlueGreenDeploymentsOutput {
        DescribeBlueGreenDeploymentsOutput::builder()
            .blue_green_deployments(
                BlueGreenDeployment::builder()
                    .blue_green_deployment_identifier("bgd-1")
                    .source("arn:aws:rds:us-east-1:1:cluster:shop")
                    .target("arn:aws:rds:us-east-1:1:cluster:shop-green-x")
                    .status(status)
                    .status_details("as the test says")
                    .build(),
            )
            .build()
    }

    fn opts() -> ManagedOptions {
        ManagedOptions {
            dry_run: false,
            no_switchover: false,
            run_id: "run-1".into(),
            wait_limit: Duration::from_secs(3600),
            backoff: Backoff::default(),
            timeout: Duration::from_secs(120),
            switch_poll: Backoff {
                first: Duration::from_millis(250),
                max: Duration::from_secs(1),
            },
        }
    }

    async fn run(statuses: &'static [&'static str], probe_fails: usize) -> (Report, Vec<String>, usize) {
        run_at(BLUE_ENDPOINT, statuses, probe_fails).await
    }

    async fn run_at(
        green_host: &'static str,
        statuses: &'static [&'static str],
        probe_fails: usize,
    ) -> (Report, Vec<String>, usize) {
        let mut describe = mock!(Client::describe_blue_green_deployments).sequence();
        for s in statuses {
            describe = describe.output(move || deployment(s));
        }
        let describe = describe.build();
        let target = mock!(Client::describe_db_clusters).then_output(|| {
            DescribeDbClustersOutput::builder()
                .db_clusters(
                    aws_sdk_rds::types::DbCluster::builder()
                        .endpoint(GREEN_ENDPOINT)
                        .build(),
                )
                .build()
        });
        let instances =
            mock!(Client::describe_db_instances).then_output(|| DescribeDbInstancesOutput::builder().build());
        let switch = mock!(Client::switchover_blue_green_deployment)
            .then_output(|| SwitchoverBlueGreenDeploymentOutput::builder().build());
        let rds = mock_client!(
            aws_sdk_rds,
            RuleMode::MatchAny,
            [&describe, &target, &instances, &switch]
        );
        let fake = Arc::new(Fake::default());
        let proxies: Vec<Arc<dyn ProxyControl>> = vec![fake.clone()];
        let probe = Probe {
            host: green_host,
            not_yet: Mutex::new(probe_fails),
        };
        let clock = FakeClock::default();
        let report = switchover(&rds, "bgd-1", 17, &proxies, &probe, &opts(), &clock, &|_| {}).await;
        (report, fake.calls(), switch.num_calls())
    }

    #[tokio::test]
    async fn clients_wait_across_aws_switchover_and_resume_on_green() {
        let (report, calls, switched) = run(
            &[
                "AVAILABLE",
                "SWITCHOVER_IN_PROGRESS",
                "SWITCHOVER_IN_PROGRESS",
                "SWITCHOVER_COMPLETED",
            ],
            2,
        )
        .await;
        assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
        assert_eq!(switched, 1);
        let order: Vec<_> = calls.iter().filter(|c| !c.starts_with("phase")).cloned().collect();
        assert_eq!(order, ["status", "hold", "drain", "route green", "resume"]);
        assert_eq!(report.sessions_moved, 2);
        let phases: Vec<_> = report.phases.iter().map(|p| p.phase).collect();
        assert_eq!(
            phases,
            [
                Phase::Preflight,
                Phase::Hold,
                Phase::Drain,
                Phase::Flip,
                Phase::Resume,
                Phase::Done
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_aws_switchover_resumes_on_blue_without_routing() {
        let (report, calls, _) = run(&["AVAILABLE", "SWITCHOVER_IN_PROGRESS", "SWITCHOVER_FAILED"], 0).await;
        assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
        let reason = report.reason.unwrap();
        assert!(
            reason.contains("SWITCHOVER_FAILED") && reason.contains("blue is as it was"),
            "{reason}"
        );
        assert!(calls.contains(&"resume".to_owned()), "{calls:?}");
        assert!(!calls.iter().any(|c| c.starts_with("route")), "{calls:?}");
    }

    #[tokio::test]
    async fn aws_never_finishing_ends_the_hold_on_blue_within_the_limit() {
        let statuses: &'static [&'static str] = Box::leak(
            std::iter::once("AVAILABLE")
                .chain(std::iter::repeat_n("SWITCHOVER_IN_PROGRESS", 500))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let (report, calls, _) = run(statuses, 0).await;
        assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
        assert!(
            report
                .reason
                .as_deref()
                .unwrap()
                .contains("still SWITCHOVER_IN_PROGRESS"),
            "{report:?}"
        );
        assert!(!calls.iter().any(|c| c.starts_with("route")), "{calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("phase rolled_back"), "{calls:?}");
    }

    #[tokio::test]
    async fn a_deployment_not_available_is_refused_before_anyone_is_held() {
        let (report, calls, switched) = run(&["PROVISIONING"], 0).await;
        assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
        assert!(report.reason.unwrap().contains("PROVISIONING, not AVAILABLE"));
        assert_eq!(switched, 0);
        assert!(!calls.contains(&"hold".to_owned()), "{calls:?}");
    }

    #[tokio::test]
    async fn green_at_its_own_endpoint_is_refused_before_anyone_is_held() {
        let (report, calls, switched) = run_at(GREEN_ENDPOINT.to_uppercase().leak(), &["AVAILABLE"], 0).await;
        assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
        let reason = report.reason.unwrap();
        assert!(
            reason.contains("which AWS renames away") && reason.contains("blue's endpoint"),
            "{reason}"
        );
        assert_eq!(switched, 0);
        assert!(!calls.contains(&"hold".to_owned()), "{calls:?}");
    }

    #[test]
    fn the_hold_must_leave_aws_its_minimum() {
        let mut o = opts();
        o.timeout = Duration::from_secs(30);
        assert_eq!(o.aws_timeout(), None);
        o.timeout = Duration::from_secs(120);
        assert_eq!(o.aws_timeout(), Some(Duration::from_secs(100)));
    }
}
