//! `pgcutover aws prepare-green` for Aurora PostgreSQL: AWS's logical-replication
//! major upgrade with a fast clone, every console step as an API call.
//!
//! 1. blue's cluster parameter group has `rds.logical_replication = 1` (a custom
//!    group is modified, a default one replaced by one made from blue's family; a
//!    reboot of blue's writer makes it take effect, only with `--allow-reboot`);
//! 2. the publication and the slot on blue (`replicate --prepare-clone`), before
//!    the clone, so that the slot's start is older than the clone;
//! 3. the clone (`RestoreDBClusterToPointInTime`, copy-on-write) and its writer;
//! 4. the clone's start LSN (`aurora_volume_logical_start_lsn()`), read before the
//!    upgrade as AWS's guide says;
//! 5. the major-version upgrade, with cluster (and instance) parameter groups of
//!    the new family, awaited until the engine version is the target's;
//! 6. replication from the start LSN (`replicate`, clone method), unless
//!    `--no-attach`.
//!
//! The plan is made from read-only calls first; `--dry-run` prints it and stops.
//! Everything created is tagged with the run id and blue's name, which is what
//! `pgcutover aws cleanup` deletes by. Re-running continues: what exists (tagged
//! by pgcutover) is not created again.

use crate::wait::{wait_until, Backoff, Clock, Poll};
use crate::AwsError;
use crate::{describe, instance, params};
use aws_sdk_rds::types::Tag;
use aws_sdk_rds::Client;
use pgcutover_config::AwsConfig;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The tag every resource pgcutover creates carries: the run that created it.
pub const RUN_TAG: &str = "pgcutover:run";
/// The tag naming the blue cluster a resource was made for.
pub const SOURCE_TAG: &str = "pgcutover:source";
/// The only engine this command handles.
const AURORA_POSTGRESQL: &str = "aurora-postgresql";

/// A boxed future, for the database steps the caller supplies.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The SQL steps, which the orchestrator owns: given by the caller.
pub trait Database: Send + Sync {
    /// `replicate --prepare-clone`: the publication and the slot on blue.
    fn prepare_clone(&self) -> BoxFuture<'_, Result<(), String>>;
    /// `SELECT aurora_volume_logical_start_lsn()` on green at `host:port`.
    fn start_lsn(&self, host: &str, port: u16) -> BoxFuture<'_, Result<String, String>>;
    /// `replicate` with the clone method from `lsn`, green at `host:port`.
    fn attach(&self, host: &str, port: u16, lsn: &str) -> BoxFuture<'_, Result<(), String>>;
    /// The start LSN a restored instance's first start-up `log` names, if any.
    fn lsn_in_log(&self, log: &str) -> Option<String>;
}

/// Which kind of parameter group: a cluster's (Aurora) or an instance's (RDS for
/// PostgreSQL, and Aurora's writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupScope {
    /// `DBClusterParameterGroup`.
    Cluster,
    /// `DBParameterGroup`.
    Instance,
}

impl GroupScope {
    /// The API's spelling: `CreateDB{}ParameterGroup`.
    pub(crate) fn infix(self) -> &'static str {
        match self {
            GroupScope::Cluster => "Cluster",
            GroupScope::Instance => "",
        }
    }
}

/// How `prepare-green` runs.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Print the plan of API calls and change nothing.
    pub dry_run: bool,
    /// Reboot blue's writer when its parameter group needs it (an outage of blue).
    pub allow_reboot: bool,
    /// Stop after the AWS steps (green upgraded, its start LSN read).
    pub no_attach: bool,
    /// The id every created resource is tagged with.
    pub run_id: String,
    /// The longest any one wait may take (a clone of a large cluster, an upgrade).
    pub wait_limit: Duration,
    /// How often waits poll.
    pub backoff: Backoff,
    /// Green's start LSN as the operator read it (instead of asking green).
    pub start_lsn: Option<String>,
}

/// What `prepare-green` did or would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `CreateDBClusterParameterGroup` / `CreateDBParameterGroup`.
    CreateParameterGroup {
        /// Its name.
        name: String,
        /// Its family (`aurora-postgresql15`, `postgres15`).
        family: String,
        /// For which side.
        side: &'static str,
        /// A cluster's or an instance's.
        scope: GroupScope,
    },
    /// `ModifyDB[Cluster]ParameterGroup`: `rds.logical_replication = 1` (pending-reboot).
    EnableLogicalReplication {
        /// The group.
        group: String,
        /// A cluster's or an instance's.
        scope: GroupScope,
    },
    /// `ModifyDBCluster` / `ModifyDBInstance`: blue uses this parameter group.
    UseParameterGroup {
        /// Blue's cluster or instance.
        resource: String,
        /// The group.
        group: String,
        /// A cluster's or an instance's.
        scope: GroupScope,
    },
    /// `RebootDBInstance` of blue's writer, then wait until its parameters are in sync.
    RebootWriter {
        /// The writer instance.
        instance: String,
        /// Whether `--allow-reboot` permits it.
        allowed: bool,
    },
    /// SQL on blue: the publication and the slot.
    PrepareClone,
    /// `RestoreDBClusterToPointInTime` (copy-on-write, latest restorable time).
    Clone {
        /// Blue's cluster.
        source: String,
        /// Green's cluster.
        green: String,
    },
    /// `CreateDBInstance`: green's writer (a clone starts with none).
    CreateWriter {
        /// The instance.
        instance: String,
        /// Its class.
        class: String,
    },
    /// Wait until green and its writer are available.
    WaitAvailable,
    /// SQL on green: `aurora_volume_logical_start_lsn()`.
    ReadStartLsn,
    /// `CreateDBSnapshot` of blue's instance, awaited until available.
    Snapshot {
        /// Blue's instance.
        source: String,
        /// The snapshot.
        snapshot: String,
    },
    /// `RestoreDBInstanceFromDBSnapshot`: green, as blue's class, network and
    /// parameter group.
    Restore {
        /// The snapshot.
        snapshot: String,
        /// Green's instance.
        green: String,
        /// Its class.
        class: String,
    },
    /// Wait until green's instance is available.
    WaitRestored,
    /// `DownloadDBLogFilePortion`: the start LSN from green's first start-up log.
    ReadLogLsn {
        /// Green's instance.
        green: String,
    },
    /// The start LSN the operator gave (`--start-lsn`).
    GivenStartLsn {
        /// It.
        lsn: String,
    },
    /// `ModifyDBInstance` on green: the major-version upgrade.
    UpgradeInstance {
        /// Green's instance.
        green: String,
        /// The target engine version.
        version: String,
        /// The parameter group of the new family.
        group: String,
    },
    /// `ModifyDBCluster` on green: the major-version upgrade.
    Upgrade {
        /// Green's cluster.
        green: String,
        /// The target engine version.
        version: String,
        /// The cluster parameter group of the new family.
        cluster_group: String,
        /// The instance parameter group, when configured.
        instance_group: Option<String>,
    },
    /// Wait until green is available at the target version.
    WaitUpgraded {
        /// The target engine version.
        version: String,
    },
    /// `replicate` (clone method) from the start LSN.
    Attach,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateParameterGroup {
                name,
                family,
                side,
                scope,
            } => write!(
                f,
                "CreateDB{}ParameterGroup {name} (family {family}) for {side}, tagged",
                scope.infix()
            ),
            Step::EnableLogicalReplication { group, scope } => write!(
                f,
                "ModifyDB{}ParameterGroup {group}: rds.logical_replication = 1 (pending-reboot)",
                scope.infix()
            ),
            Step::UseParameterGroup { resource, group, scope } => match scope {
                GroupScope::Cluster => write!(f, "ModifyDBCluster {resource}: DBClusterParameterGroupName = {group}"),
                GroupScope::Instance => write!(f, "ModifyDBInstance {resource}: DBParameterGroupName = {group}"),
            },
            Step::RebootWriter { instance, allowed: true } => write!(
                f,
                "RebootDBInstance {instance} (blue's writer: an outage of blue), then wait for its parameters to be in sync"
            ),
            Step::RebootWriter { instance, allowed: false } => write!(
                f,
                "RebootDBInstance {instance} is needed for rds.logical_replication to take effect: not without --allow-reboot"
            ),
            Step::PrepareClone => write!(f, "SQL on blue: publication and slot (replicate --prepare-clone)"),
            Step::Clone { source, green } => write!(
                f,
                "RestoreDBClusterToPointInTime {green} from {source} (RestoreType = copy-on-write, latest restorable time), tagged"
            ),
            Step::CreateWriter { instance, class } => {
                write!(f, "CreateDBInstance {instance} ({class}), green's writer, tagged")
            }
            Step::WaitAvailable => write!(f, "wait until green and its writer are available"),
            Step::ReadStartLsn => write!(f, "SQL on green: SELECT aurora_volume_logical_start_lsn() (before the upgrade)"),
            Step::Snapshot { source, snapshot } => {
                write!(f, "CreateDBSnapshot {snapshot} of {source}, tagged; wait until it is available")
            }
            Step::Restore { snapshot, green, class } => write!(
                f,
                "RestoreDBInstanceFromDBSnapshot {green} ({class}) from {snapshot}, with blue's network and parameter group, tagged"
            ),
            Step::WaitRestored => write!(f, "wait until green is available"),
            Step::ReadLogLsn { green } => write!(
                f,
                "DownloadDBLogFilePortion of {green}'s first logs: the start LSN from \"redo done at X/Y\" (before the upgrade)"
            ),
            Step::GivenStartLsn { lsn } => write!(f, "start LSN {lsn} (--start-lsn)"),
            Step::UpgradeInstance { green, version, group } => write!(
                f,
                "ModifyDBInstance {green}: EngineVersion = {version}, AllowMajorVersionUpgrade, DBParameterGroupName = {group}, ApplyImmediately"
            ),
            Step::Upgrade {
                green,
                version,
                cluster_group,
                instance_group,
            } => {
                write!(
                    f,
                    "ModifyDBCluster {green}: EngineVersion = {version}, AllowMajorVersionUpgrade, DBClusterParameterGroupName = {cluster_group}"
                )?;
                if let Some(g) = instance_group {
                    write!(f, ", DBInstanceParameterGroupName = {g}")?;
                }
                write!(f, ", ApplyImmediately")
            }
            Step::WaitUpgraded { version } => {
                write!(f, "wait until green is available at engine version {version}")
            }
            Step::Attach => write!(f, "replicate (clone method) from the start LSN"),
        }
    }
}

/// The steps of one run, made before anything changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Green's cluster and writer.
    pub green: String,
    /// Green's writer instance (green itself for an RDS instance).
    pub writer: String,
    /// Green is an RDS for PostgreSQL instance (else an Aurora cluster).
    pub instance: bool,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "{:>2}. {step}", i + 1)?;
        }
        Ok(())
    }
}

/// What `prepare-green` leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Green {
    /// Green's cluster.
    pub cluster: String,
    /// Its writer endpoint.
    pub endpoint: String,
    /// Its port.
    pub port: u16,
    /// The clone's start LSN.
    pub start_lsn: String,
    /// Whether replication was started.
    pub attached: bool,
}

/// What the plan is made from: blue as RDS describes it.
#[derive(Debug, Clone)]
struct Blue {
    engine_version: String,
    family: String,
    group: String,
    pending_reboot: bool,
    writer: String,
    writer_class: String,
    subnet_group: Option<String>,
    security_groups: Vec<String>,
}

pub(crate) fn tags(run_id: &str, source: &str) -> Vec<Tag> {
    vec![
        Tag::builder().key(RUN_TAG).value(run_id).build(),
        Tag::builder().key(SOURCE_TAG).value(source).build(),
    ]
}

pub(crate) fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

async fn describe_blue(rds: &Client, id: &str) -> Result<Blue, AwsError> {
    let cluster = describe::cluster(rds, id)
        .await?
        .ok_or_else(|| AwsError::refused(format!("no cluster {id}"), "check [aws] source_cluster and region"))?;
    if cluster.engine() != Some(AURORA_POSTGRESQL) {
        return Err(AwsError::refused(
            format!("{id} is {}, not {AURORA_POSTGRESQL}", cluster.engine().unwrap_or("of no engine")),
            "source_cluster is an Aurora PostgreSQL cluster; for an RDS for PostgreSQL instance set [aws] source_instance",
        ));
    }
    let writer = cluster
        .db_cluster_members()
        .iter()
        .find(|m| m.is_cluster_writer() == Some(true))
        .and_then(|m| m.db_instance_identifier())
        .ok_or_else(|| AwsError::refused(format!("{id} has no writer instance"), "add one, or wait for it"))?
        .to_owned();
    let pending_reboot = cluster
        .db_cluster_members()
        .iter()
        .any(|m| m.db_cluster_parameter_group_status() == Some("pending-reboot"));
    let group = cluster.db_cluster_parameter_group().unwrap_or_default().to_owned();
    // When the group cannot be described (moto lists no default groups), the
    // family its engine version implies.
    let family = params::family(rds, GroupScope::Cluster, &group)
        .await?
        .unwrap_or_else(|| {
            format!(
                "{AURORA_POSTGRESQL}{}",
                major(cluster.engine_version().unwrap_or("")).unwrap_or(0)
            )
        });
    let writer_class = describe::instance(rds, &writer)
        .await?
        .and_then(|i| i.db_instance_class().map(str::to_owned))
        .unwrap_or_else(|| "db.r6g.large".to_owned());
    Ok(Blue {
        engine_version: cluster.engine_version().unwrap_or_default().to_owned(),
        family,
        group,
        pending_reboot,
        writer,
        writer_class,
        subnet_group: cluster.db_subnet_group().map(str::to_owned),
        security_groups: cluster
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id().map(str::to_owned))
            .collect(),
    })
}

/// Green's cluster as RDS describes it, if it exists: refused when pgcutover did
/// not make it (it would be taken over, or deleted by cleanup).
async fn describe_green(
    rds: &Client,
    green: &str,
    source: &str,
) -> Result<Option<aws_sdk_rds::types::DbCluster>, AwsError> {
    let Some(c) = describe::cluster(rds, green).await? else {
        return Ok(None);
    };
    let ours = c
        .tag_list()
        .iter()
        .any(|t| t.key() == Some(SOURCE_TAG) && t.value() == Some(source));
    if !ours {
        return Err(AwsError::refused(
            format!("a cluster named {green} exists and pgcutover did not create it for {source}"),
            "set [aws] green_cluster to another name",
        ));
    }
    Ok(Some(c))
}

/// `target_engine_version` and its major version.
pub(crate) fn target_version(config: &AwsConfig) -> Result<(&str, u32), AwsError> {
    let version = config
        .target_engine_version
        .as_deref()
        .ok_or_else(|| AwsError::Config("target_engine_version is not set, e.g. \"17.4\"".into()))?;
    let target_major = major(version).ok_or_else(|| {
        AwsError::Config(format!(
            "target_engine_version {version:?} is not a version like \"17.4\""
        ))
    })?;
    Ok((version, target_major))
}

/// Refuses a blue that is not older than the target major version.
pub(crate) fn older_than_target(source: &str, running: &str, version: &str, target_major: u32) -> Result<(), AwsError> {
    match major(running) {
        Some(m) if m >= target_major => Err(AwsError::refused(
            format!("{source} runs {running} already; target_engine_version is {version}"),
            "set target_engine_version to a newer major version",
        )),
        _ => Ok(()),
    }
}

/// Where the start LSN comes from: `--start-lsn` when given, else `read`.
pub(crate) fn start_lsn_step(opts: &PrepareOptions, read: Step) -> Step {
    match &opts.start_lsn {
        Some(lsn) => Step::GivenStartLsn { lsn: lsn.clone() },
        None => read,
    }
}

/// Makes the plan: read-only calls only.
pub async fn plan(rds: &Client, config: &AwsConfig, opts: &PrepareOptions) -> Result<Plan, AwsError> {
    if config.source_instance.is_some() && config.source_cluster.is_none() {
        return instance::plan(rds, config, opts).await;
    }
    let source = config
        .source_cluster
        .as_deref()
        .ok_or_else(|| AwsError::Config("source_cluster is not set: the Aurora cluster blue runs on".into()))?;
    let (version, target_major) = target_version(config)?;
    let blue = describe_blue(rds, source).await?;
    older_than_target(source, &blue.engine_version, version, target_major)?;
    let green = config
        .green_cluster
        .clone()
        .unwrap_or_else(|| format!("{source}-green"));
    let writer = format!("{green}-writer");

    // 1. Logical replication on blue.
    let mut steps = params::blue_steps(
        rds,
        GroupScope::Cluster,
        source,
        &blue.group,
        &blue.family,
        config.source_cluster_parameter_group.as_deref(),
        blue.pending_reboot,
        &blue.writer,
        opts.allow_reboot,
    )
    .await?;

    // 2-3. The slot, then the clone and its writer.
    let existing = describe_green(rds, &green, source).await?;
    if existing.is_none() {
        steps.push(Step::PrepareClone);
        steps.push(Step::Clone {
            source: source.to_owned(),
            green: green.clone(),
        });
    }
    let has_writer = existing.as_ref().is_some_and(|c| {
        c.db_cluster_members()
            .iter()
            .any(|m| m.db_instance_identifier() == Some(&writer))
    });
    if !has_writer {
        steps.push(Step::CreateWriter {
            instance: writer.clone(),
            class: config.green_instance_class.clone().unwrap_or(blue.writer_class.clone()),
        });
    }
    steps.push(Step::WaitAvailable);

    // 4-5. The start LSN, then the upgrade.
    let upgraded = existing
        .as_ref()
        .and_then(|c| c.engine_version())
        .is_some_and(|v| v == version);
    if !upgraded {
        steps.push(start_lsn_step(opts, Step::ReadStartLsn));
        let cluster_group = params::green_group(
            rds,
            GroupScope::Cluster,
            &green,
            &format!("{AURORA_POSTGRESQL}{target_major}"),
            config.target_cluster_parameter_group.as_deref(),
            &mut steps,
        )
        .await?;
        steps.push(Step::Upgrade {
            green: green.clone(),
            version: version.to_owned(),
            cluster_group,
            instance_group: config.target_instance_parameter_group.clone(),
        });
    }
    steps.push(Step::WaitUpgraded {
        version: version.to_owned(),
    });
    if upgraded && opts.start_lsn.is_some() {
        steps.push(start_lsn_step(opts, Step::ReadStartLsn));
    }
    if !opts.no_attach {
        steps.push(Step::Attach);
    }
    Ok(Plan {
        steps,
        green,
        writer,
        instance: false,
    })
}

/// Carries out `plan`, reporting each step through `progress`.
pub async fn execute(
    rds: &Client,
    config: &AwsConfig,
    plan: &Plan,
    opts: &PrepareOptions,
    db: &dyn Database,
    clock: &dyn Clock,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Green, AwsError> {
    let source = config
        .source_cluster
        .as_deref()
        .or(config.source_instance.as_deref())
        .unwrap_or_default();
    // A reboot it may not do would stop the run halfway: refuse before the first change.
    if let Some(Step::RebootWriter {
        instance,
        allowed: false,
    }) = plan
        .steps
        .iter()
        .find(|s| matches!(s, Step::RebootWriter { allowed: false, .. }))
    {
        return Err(AwsError::refused(
            format!("blue's writer {instance} must reboot for rds.logical_replication = 1 to take effect (a short outage of blue); nothing was changed"),
            "run again with --allow-reboot, or set the parameter group and reboot in a maintenance window yourself, then run again",
        ));
    }
    let tags = tags(&opts.run_id, source);
    let mut start_lsn: Option<String> = None;
    for step in &plan.steps {
        progress(format!("{step}"));
        match step {
            Step::CreateParameterGroup {
                name,
                family,
                side,
                scope,
            } => {
                let description = format!("pgcutover: {side} of {source}, with rds.logical_replication");
                params::create(rds, *scope, name, family, description, tags.clone()).await?;
            }
            Step::EnableLogicalReplication { group, scope } => {
                params::enable_logical_replication(rds, *scope, group).await?;
            }
            Step::UseParameterGroup {
                resource,
                group,
                scope: GroupScope::Cluster,
            } => {
                rds.modify_db_cluster()
                    .db_cluster_identifier(resource)
                    .db_cluster_parameter_group_name(group)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| AwsError::api(format!("ModifyDBCluster {resource}"), e))?;
            }
            Step::UseParameterGroup {
                resource,
                group,
                scope: GroupScope::Instance,
            } => instance::modify(rds, resource, group, None).await?,
            Step::RebootWriter { instance, .. } => {
                rds.reboot_db_instance()
                    .db_instance_identifier(instance)
                    .send()
                    .await
                    .map_err(|e| AwsError::api(format!("RebootDBInstance {instance}"), e))?;
                wait_until(clock, "blue's parameters", opts.wait_limit, opts.backoff, || async {
                    let pending = match plan.instance {
                        true => instance::describe_blue(rds, source).await?.pending_reboot,
                        false => describe_blue(rds, source).await?.pending_reboot,
                    };
                    Ok(match pending {
                        false => Poll::Ready(()),
                        true => Poll::Pending("pending-reboot".into()),
                    })
                })
                .await?;
            }
            Step::PrepareClone => db.prepare_clone().await.map_err(AwsError::Database)?,
            Step::Clone { source, green } => {
                let blue = describe_blue(rds, source).await?;
                let mut restore = rds
                    .restore_db_cluster_to_point_in_time()
                    .db_cluster_identifier(green)
                    .source_db_cluster_identifier(source)
                    .restore_type("copy-on-write")
                    .use_latest_restorable_time(true)
                    .db_cluster_parameter_group_name(&blue.group)
                    .set_tags(Some(tags.clone()));
                if let Some(subnets) = &blue.subnet_group {
                    restore = restore.db_subnet_group_name(subnets);
                }
                for sg in &blue.security_groups {
                    restore = restore.vpc_security_group_ids(sg);
                }
                restore
                    .send()
                    .await
                    .map_err(|e| AwsError::api(format!("RestoreDBClusterToPointInTime {green}"), e))?;
            }
            Step::CreateWriter { instance, class } => {
                rds.create_db_instance()
                    .db_instance_identifier(instance)
                    .db_cluster_identifier(&plan.green)
                    .engine(AURORA_POSTGRESQL)
                    .db_instance_class(class)
                    .set_tags(Some(tags.clone()))
                    .send()
                    .await
                    .map_err(|e| AwsError::api(format!("CreateDBInstance {instance}"), e))?;
            }
            Step::WaitAvailable => {
                wait_available(rds, &plan.green, &plan.writer, None, clock, opts).await?;
            }
            Step::ReadStartLsn => {
                let (host, port) = endpoint(rds, plan).await?;
                let lsn = db.start_lsn(&host, port).await.map_err(AwsError::Database)?;
                progress(format!("green's start LSN: {lsn}"));
                start_lsn = Some(lsn);
            }
            Step::Snapshot { source, snapshot } => {
                instance::snapshot(rds, source, snapshot, tags.clone(), clock, opts).await?;
            }
            Step::Restore { snapshot, green, class } => {
                instance::restore(rds, source, snapshot, green, class, tags.clone()).await?;
            }
            Step::WaitRestored => instance::wait_available(rds, &plan.green, None, clock, opts).await?,
            Step::ReadLogLsn { green } => {
                let lsn = instance::log_start_lsn(rds, green, db).await?;
                progress(format!("green's start LSN: {lsn}"));
                start_lsn = Some(lsn);
            }
            Step::GivenStartLsn { lsn } => start_lsn = Some(lsn.clone()),
            Step::UpgradeInstance { green, version, group } => {
                instance::modify(rds, green, group, Some(version)).await?;
            }
            Step::Upgrade {
                green,
                version,
                cluster_group,
                instance_group,
            } => {
                rds.modify_db_cluster()
                    .db_cluster_identifier(green)
                    .engine_version(version)
                    .allow_major_version_upgrade(true)
                    .apply_immediately(true)
                    .db_cluster_parameter_group_name(cluster_group)
                    .set_db_instance_parameter_group_name(instance_group.clone())
                    .send()
                    .await
                    .map_err(|e| AwsError::api(format!("ModifyDBCluster {green} (upgrade to {version})"), e))?;
            }
            Step::WaitUpgraded { version } if plan.instance => {
                instance::wait_available(rds, &plan.green, Some(version), clock, opts).await?;
            }
            Step::WaitUpgraded { version } => {
                wait_available(rds, &plan.green, &plan.writer, Some(version), clock, opts).await?;
            }
            Step::Attach => {
                let (host, port) = endpoint(rds, plan).await?;
                let lsn = start_lsn.as_deref().ok_or_else(|| {
                    AwsError::refused(
                        "green was upgraded before its start LSN was read",
                        "recreate green (pgcutover aws cleanup, then prepare-green), or run replicate --start-lsn with the LSN you read before the upgrade",
                    )
                })?;
                db.attach(&host, port, lsn).await.map_err(AwsError::Database)?;
            }
        }
    }
    let (endpoint, port) = endpoint(rds, plan).await?;
    Ok(Green {
        cluster: plan.green.clone(),
        endpoint,
        port,
        start_lsn: start_lsn.unwrap_or_default(),
        attached: plan.steps.contains(&Step::Attach),
    })
}

/// Green's writer endpoint and port.
async fn endpoint(rds: &Client, plan: &Plan) -> Result<(String, u16), AwsError> {
    let green = &plan.green;
    let gone = || AwsError::refused(format!("{green} is gone"), "run prepare-green again");
    let (host, port) = match plan.instance {
        true => describe::instance(rds, green)
            .await?
            .ok_or_else(gone)?
            .endpoint()
            .map(|e| (e.address().map(str::to_owned), e.port()))
            .unwrap_or((None, None)),
        false => {
            let c = describe::cluster(rds, green).await?.ok_or_else(gone)?;
            (c.endpoint().map(str::to_owned), c.port())
        }
    };
    let host = host.ok_or_else(|| {
        AwsError::refused(
            format!("{green} has no endpoint yet"),
            "run prepare-green again once it is available",
        )
    })?;
    Ok((host, port.unwrap_or(5432) as u16))
}

/// States after which waiting is pointless.
pub(crate) const FAILED: &[&str] = &[
    "failed",
    "deleting",
    "deleted",
    "incompatible-restore",
    "incompatible-parameters",
    "inaccessible-encryption-credentials",
];

/// Waits until green and its writer are `available` (and, with `version`, green
/// runs it: a cluster still says `available` for a moment after the upgrade's
/// modify, at the old version).
pub async fn wait_available(
    rds: &Client,
    green: &str,
    writer: &str,
    version: Option<&str>,
    clock: &dyn Clock,
    opts: &PrepareOptions,
) -> Result<(), AwsError> {
    let what = match version {
        Some(v) => format!("green ({green}) at {v}"),
        None => format!("green ({green}) and its writer"),
    };
    wait_until(clock, &what, opts.wait_limit, opts.backoff, || async {
        let Some(c) = describe::cluster(rds, green).await? else {
            return Ok(Poll::Pending("not listed yet".into()));
        };
        if let Poll::Pending(why) = availability(green, c.status(), c.engine_version(), version)? {
            return Ok(Poll::Pending(why));
        }
        let inst = describe::instance(rds, writer).await?;
        Ok(
            match availability(writer, inst.as_ref().and_then(|i| i.db_instance_status()), None, None)? {
                Poll::Pending(why) => Poll::Pending(format!("writer {why}")),
                ready => ready,
            },
        )
    })
    .await
}

/// Where one resource stands in a wait for it to be `available` (at `version`,
/// when given, which it `runs`): a failed state ends the wait.
pub(crate) fn availability(
    name: &str,
    status: Option<&str>,
    runs: Option<&str>,
    version: Option<&str>,
) -> Result<Poll<()>, AwsError> {
    let status = status.unwrap_or("unknown");
    if FAILED.contains(&status) {
        return Err(AwsError::refused(
            format!("{name} is {status}"),
            "see its events in the RDS console; pgcutover aws cleanup removes what this run created",
        ));
    }
    let runs = runs.unwrap_or("unknown");
    Ok(match version {
        _ if status != "available" => Poll::Pending(status.to_owned()),
        Some(v) if runs != v => Poll::Pending(format!("available at {runs}, not yet {v}")),
        _ => Poll::Ready(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::tests::FakeClock;
    use aws_sdk_rds::operation::describe_db_clusters::DescribeDbClustersOutput;
    use aws_sdk_rds::operation::describe_db_instances::DescribeDbInstancesOutput;
    use aws_sdk_rds::types::{DbCluster, DbInstance};
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    fn cluster(status: &str, version: &str) -> DescribeDbClustersOutput {
        DescribeDbClustersOutput::builder()
            .db_clusters(
                DbCluster::builder()
                    .db_cluster_identifier("shop-green")
                    .status(status)
                    .engine(AURORA_POSTGRESQL)
                    .engine_version(version)
                    .build(),
            )
            .build()
    }

    fn opts() -> PrepareOptions {
        PrepareOptions {
            dry_run: false,
            allow_reboot: false,
            no_attach: true,
            run_id: "run-1".into(),
            wait_limit: Duration::from_secs(7200),
            backoff: Backoff::default(),
            start_lsn: None,
        }
    }

    #[tokio::test]
    async fn an_upgrade_is_awaited_until_the_version_changes_not_just_available() {
        // Right after the modify: available at the old version, then upgrading,
        // then available at the new one.
        let clusters = mock!(Client::describe_db_clusters)
            .sequence()
            .output(|| cluster("available", "15.8"))
            .output(|| cluster("upgrading", "15.8"))
            .output(|| cluster("available", "17.4"))
            .build();
        let instances = mock!(Client::describe_db_instances).then_output(|| {
            DescribeDbInstancesOutput::builder()
                .db_instances(DbInstance::builder().db_instance_status("available").build())
                .build()
        });
        let rds = mock_client!(aws_sdk_rds, RuleMode::MatchAny, [&clusters, &instances]);
        let clock = FakeClock::default();
        wait_available(&rds, "shop-green", "shop-green-writer", Some("17.4"), &clock, &opts())
            .await
            .unwrap();
        assert_eq!(clusters.num_calls(), 3);
        assert_eq!(clock.sleeps.lock().unwrap().len(), 2, "two pauses, no real sleeping");
    }

    #[tokio::test]
    async fn a_failed_green_ends_the_wait_with_what_to_do() {
        let clusters = mock!(Client::describe_db_clusters).then_output(|| cluster("incompatible-parameters", "15.8"));
        let rds = mock_client!(aws_sdk_rds, [&clusters]);
        let e = wait_available(&rds, "shop-green", "w", None, &FakeClock::default(), &opts())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("shop-green is incompatible-parameters"), "{e}");
        assert!(e.to_string().contains("pgcutover aws cleanup"), "{e}");
    }

    #[test]
    fn every_step_reads_as_the_api_call_it_is() {
        let plan = Plan {
            green: "shop-green".into(),
            writer: "shop-green-writer".into(),
            instance: false,
            steps: vec![
                Step::RebootWriter {
                    instance: "shop-1".into(),
                    allowed: false,
                },
                Step::Upgrade {
                    green: "shop-green".into(),
                    version: "17.4".into(),
                    cluster_group: "g17".into(),
                    instance_group: Some("i17".into()),
                },
            ],
        };
        let text = plan.to_string();
        assert!(text.contains(" 1. RebootDBInstance shop-1 is needed"), "{text}");
        assert!(text.contains("not without --allow-reboot"), "{text}");
        assert!(
            text.contains(" 2. ModifyDBCluster shop-green: EngineVersion = 17.4, AllowMajorVersionUpgrade, DBClusterParameterGroupName = g17, DBInstanceParameterGroupName = i17, ApplyImmediately"),
            "{text}"
        );
    }
}
