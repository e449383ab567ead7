//! `pgcutover aws prepare-green` for RDS for PostgreSQL (instances): the snapshot
//! procedure of the slot-advance guide, every console step as an API call.
//!
//! 1. blue's DB parameter group has `rds.logical_replication = 1` (as on Aurora:
//!    a custom group modified, a default one replaced, the reboot only with
//!    `--allow-reboot`);
//! 2. the publication and the slot on blue, before the snapshot;
//! 3. `CreateDBSnapshot`, awaited, then `RestoreDBInstanceFromDBSnapshot` as green
//!    with blue's class, network and parameter group;
//! 4. the start LSN from green's first start-up log: a snapshot is crash-consistent
//!    storage, so the restore replays WAL and logs `redo done at X/Y`
//!    (`DownloadDBLogFilePortion`; moto has no logs, so tests give `--start-lsn`
//!    or mock it);
//! 5. the upgrade (`ModifyDBInstance`, a DB parameter group of the new family),
//!    awaited until green runs the target version;
//! 6. replication from the start LSN, unless `--no-attach`.

use crate::aurora::FAILED;
use crate::aurora::{availability, major, older_than_target, start_lsn_step, target_version, GroupScope, Plan, Step};
use crate::aurora::{Database, PrepareOptions, SOURCE_TAG};
use crate::wait::{wait_until, Clock, Poll};
use crate::{describe, params, AwsError};
use aws_sdk_rds::types::Tag;
use aws_sdk_rds::Client;
use pgcutover_config::AwsConfig;

const POSTGRES: &str = "postgres";

/// How many of green's oldest log files are searched for the start-up's line.
const LOG_FILES_SEARCHED: usize = 4;
/// Portions (up to 1 MB each) read of one log file at most.
const PORTIONS_PER_FILE: usize = 64;

/// Blue's instance as RDS describes it.
#[derive(Debug, Clone)]
pub(crate) struct Blue {
    engine_version: String,
    family: String,
    group: String,
    pub(crate) pending_reboot: bool,
    class: String,
    subnet_group: Option<String>,
    security_groups: Vec<String>,
}

pub(crate) async fn describe_blue(rds: &Client, id: &str) -> Result<Blue, AwsError> {
    let i = describe::instance(rds, id)
        .await?
        .ok_or_else(|| AwsError::refused(format!("no DB instance {id}"), "check [aws] source_instance and region"))?;
    if i.engine() != Some(POSTGRES) {
        return Err(AwsError::refused(
            format!("{id} is {}, not {POSTGRES}", i.engine().unwrap_or("of no engine")),
            "source_instance is an RDS for PostgreSQL instance; for Aurora set [aws] source_cluster",
        ));
    }
    let status = i.db_parameter_groups().first();
    let group = status
        .and_then(|g| g.db_parameter_group_name())
        .unwrap_or_default()
        .to_owned();
    let engine_version = i.engine_version().unwrap_or_default().to_owned();
    let family = params::family(rds, GroupScope::Instance, &group)
        .await?
        .unwrap_or_else(|| format!("{POSTGRES}{}", major(&engine_version).unwrap_or(0)));
    Ok(Blue {
        engine_version,
        family,
        group,
        pending_reboot: status.and_then(|g| g.parameter_apply_status()) == Some("pending-reboot"),
        class: i.db_instance_class().unwrap_or("db.r6g.large").to_owned(),
        subnet_group: i
            .db_subnet_group()
            .and_then(|g| g.db_subnet_group_name())
            .map(str::to_owned),
        security_groups: i
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id().map(str::to_owned))
            .collect(),
    })
}

fn tagged_for(tags: &[Tag], source: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(SOURCE_TAG) && t.value() == Some(source))
}

/// The plan for an RDS instance: read-only calls only.
pub(crate) async fn plan(rds: &Client, config: &AwsConfig, opts: &PrepareOptions) -> Result<Plan, AwsError> {
    let source = config.source_instance.as_deref().unwrap_or_default();
    let (version, target_major) = target_version(config)?;
    let blue = describe_blue(rds, source).await?;
    older_than_target(source, &blue.engine_version, version, target_major)?;
    let green = config
        .green_instance
        .clone()
        .unwrap_or_else(|| format!("{source}-green"));
    let snapshot = format!("pgcutover-{green}");

    // 1. Logical replication on blue, whose only instance is its writer.
    let mut steps = params::blue_steps(
        rds,
        GroupScope::Instance,
        source,
        &blue.group,
        &blue.family,
        config.source_instance_parameter_group.as_deref(),
        blue.pending_reboot,
        source,
        opts.allow_reboot,
    )
    .await?;

    // 2-3. The slot, the snapshot, green restored from it.
    let existing = match describe::instance(rds, &green).await? {
        Some(i) if !tagged_for(i.tag_list(), source) => {
            return Err(AwsError::refused(
                format!("a DB instance named {green} exists and pgcutover did not create it for {source}"),
                "set [aws] green_instance to another name",
            ))
        }
        found => found,
    };
    if existing.is_none() {
        if !snapshot_exists(rds, &snapshot).await? {
            steps.push(Step::PrepareClone);
            steps.push(Step::Snapshot {
                source: source.to_owned(),
                snapshot: snapshot.clone(),
            });
        }
        steps.push(Step::Restore {
            snapshot,
            green: green.clone(),
            class: config.green_instance_class.clone().unwrap_or(blue.class.clone()),
        });
    }
    steps.push(Step::WaitRestored);

    // 4-5. The start LSN, then the upgrade.
    let upgraded = existing
        .as_ref()
        .and_then(|i| i.engine_version())
        .is_some_and(|v| v == version);
    if !upgraded {
        steps.push(start_lsn_step(opts, Step::ReadLogLsn { green: green.clone() }));
        let group = params::green_group(
            rds,
            GroupScope::Instance,
            &green,
            &format!("{POSTGRES}{target_major}"),
            config.target_instance_parameter_group.as_deref(),
            &mut steps,
        )
        .await?;
        steps.push(Step::UpgradeInstance {
            green: green.clone(),
            version: version.to_owned(),
            group,
        });
    }
    steps.push(Step::WaitUpgraded {
        version: version.to_owned(),
    });
    if upgraded && opts.start_lsn.is_some() {
        steps.push(start_lsn_step(opts, Step::ReadLogLsn { green: green.clone() }));
    }
    if !opts.no_attach {
        steps.push(Step::Attach);
    }
    Ok(Plan {
        steps,
        writer: green.clone(),
        green,
        instance: true,
    })
}

async fn snapshot_exists(rds: &Client, id: &str) -> Result<bool, AwsError> {
    Ok(snapshot_status(rds, id).await?.is_some())
}

async fn snapshot_status(rds: &Client, id: &str) -> Result<Option<String>, AwsError> {
    match rds.describe_db_snapshots().db_snapshot_identifier(id).send().await {
        Ok(out) => Ok(out
            .db_snapshots()
            .first()
            .map(|s| s.status().unwrap_or("unknown").to_owned())),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_db_snapshot_not_found_fault()) => Ok(None),
        Err(e) => Err(AwsError::api(format!("DescribeDBSnapshots {id}"), e)),
    }
}

/// `ModifyDBInstance`: `instance` uses `group` (applied at its reboot), and with
/// `version`, the major-version upgrade to it.
pub(crate) async fn modify(rds: &Client, instance: &str, group: &str, version: Option<&str>) -> Result<(), AwsError> {
    rds.modify_db_instance()
        .db_instance_identifier(instance)
        .db_parameter_group_name(group)
        .set_engine_version(version.map(str::to_owned))
        .set_allow_major_version_upgrade(version.map(|_| true))
        .apply_immediately(true)
        .send()
        .await
        .map(drop)
        .map_err(|e| match version {
            Some(v) => AwsError::api(format!("ModifyDBInstance {instance} (upgrade to {v})"), e),
            None => AwsError::api(format!("ModifyDBInstance {instance}"), e),
        })
}

/// `CreateDBSnapshot` of `source`, awaited until it is available.
pub(crate) async fn snapshot(
    rds: &Client,
    source: &str,
    snapshot: &str,
    tags: Vec<Tag>,
    clock: &dyn Clock,
    opts: &PrepareOptions,
) -> Result<(), AwsError> {
    rds.create_db_snapshot()
        .db_instance_identifier(source)
        .db_snapshot_identifier(snapshot)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| AwsError::api(format!("CreateDBSnapshot {snapshot}"), e))?;
    wait_until(
        clock,
        &format!("snapshot {snapshot}"),
        opts.wait_limit,
        opts.backoff,
        || async {
            match snapshot_status(rds, snapshot).await?.as_deref() {
                Some("available") => Ok(Poll::Ready(())),
                Some(failed) if FAILED.contains(&failed) => Err(AwsError::refused(
                    format!("snapshot {snapshot} is {failed}"),
                    "see blue's events in the RDS console; pgcutover aws cleanup removes what this run created",
                )),
                Some(other) => Ok(Poll::Pending(other.to_owned())),
                None => Ok(Poll::Pending("not listed yet".into())),
            }
        },
    )
    .await
}

/// `RestoreDBInstanceFromDBSnapshot`: green from `snapshot`, on blue's network and
/// parameter group (which has logical replication on by now).
pub(crate) async fn restore(
    rds: &Client,
    source: &str,
    snapshot: &str,
    green: &str,
    class: &str,
    tags: Vec<Tag>,
) -> Result<(), AwsError> {
    let blue = describe_blue(rds, source).await?;
    let mut restore = rds
        .restore_db_instance_from_db_snapshot()
        .db_instance_identifier(green)
        .db_snapshot_identifier(snapshot)
        .db_instance_class(class)
        .set_tags(Some(tags));
    if !blue.group.is_empty() {
        restore = restore.db_parameter_group_name(&blue.group);
    }
    if let Some(subnets) = &blue.subnet_group {
        restore = restore.db_subnet_group_name(subnets);
    }
    for sg in &blue.security_groups {
        restore = restore.vpc_security_group_ids(sg);
    }
    restore
        .send()
        .await
        .map(drop)
        .map_err(|e| AwsError::api(format!("RestoreDBInstanceFromDBSnapshot {green}"), e))
}

/// Waits until `green` is `available` (and, with `version`, runs it: right after
/// the upgrade's modify it still says `available` at the old one).
pub(crate) async fn wait_available(
    rds: &Client,
    green: &str,
    version: Option<&str>,
    clock: &dyn Clock,
    opts: &PrepareOptions,
) -> Result<(), AwsError> {
    let what = match version {
        Some(v) => format!("green ({green}) at {v}"),
        None => format!("green ({green})"),
    };
    wait_until(clock, &what, opts.wait_limit, opts.backoff, || async {
        let Some(i) = describe::instance(rds, green).await? else {
            return Ok(Poll::Pending("not listed yet".into()));
        };
        availability(green, i.db_instance_status(), i.engine_version(), version)
    })
    .await
}

/// The start LSN from green's first start-up log: its oldest log files, read
/// whole with `DownloadDBLogFilePortion`, parsed by `db`.
pub(crate) async fn log_start_lsn(rds: &Client, green: &str, db: &dyn Database) -> Result<String, AwsError> {
    let mut files: Vec<(i64, String)> = rds
        .describe_db_log_files()
        .db_instance_identifier(green)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| AwsError::api(format!("DescribeDBLogFiles {green}"), e))?
        .into_iter()
        .filter_map(|f| Some((f.last_written().unwrap_or(0), f.log_file_name()?.to_owned())))
        .collect();
    files.sort();
    let not_found = |why: String| {
        AwsError::refused(
            why,
            "find \"redo done at X/Y\" in green's first log (RDS console, Logs & events), then run again with --start-lsn X/Y (X/Y + 1 for \"redo done at\")",
        )
    };
    for (_, name) in files.iter().take(LOG_FILES_SEARCHED) {
        let text = download(rds, green, name).await?;
        if let Some(lsn) = db.lsn_in_log(&text) {
            return Ok(lsn);
        }
    }
    Err(not_found(format!(
        "none of {green}'s {} oldest log files ({}) has a \"redo done at X/Y\" or \"invalid record length at X/Y\" line",
        files.len().min(LOG_FILES_SEARCHED),
        files
            .iter()
            .take(LOG_FILES_SEARCHED)
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// One log file, whole (portion after portion, bounded).
async fn download(rds: &Client, green: &str, file: &str) -> Result<String, AwsError> {
    let mut text = String::new();
    let mut marker = "0".to_owned();
    for _ in 0..PORTIONS_PER_FILE {
        let out = rds
            .download_db_log_file_portion()
            .db_instance_identifier(green)
            .log_file_name(file)
            .marker(&marker)
            .send()
            .await
            .map_err(|e| AwsError::api(format!("DownloadDBLogFilePortion {green} {file}"), e))?;
        text.push_str(out.log_file_data().unwrap_or_default());
        match (out.additional_data_pending(), out.marker()) {
            (Some(true), Some(next)) if next != marker => marker = next.to_owned(),
            _ => break,
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aurora::BoxFuture;
    use crate::wait::Backoff;
    use aws_sdk_rds::operation::describe_db_log_files::DescribeDbLogFilesOutput;
    use aws_sdk_rds::operation::download_db_log_file_portion::DownloadDbLogFilePortionOutput;
    use aws_sdk_rds::types::DescribeDbLogFilesDetails;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use std::time::Duration;

    /// Parses as the orchestrator does, on the lines that matter here.
    struct LogParser;

    impl Database for LogParser {
        fn prepare_clone(&self) -> BoxFuture<'_, Result<(), String>> {
            unreachable!()
        }
        fn start_lsn(&self, _: &str, _: u16) -> BoxFuture<'_, Result<String, String>> {
            unreachable!()
        }
        fn attach(&self, _: &str, _: u16, _: &str) -> BoxFuture<'_, Result<(), String>> {
            unreachable!()
        }
        fn lsn_in_log(&self, log: &str) -> Option<String> {
            let rest = &log[log.find("redo done at ")? + "redo done at ".len()..];
            rest.split(' ').next().map(|l| format!("{l}+1"))
        }
    }

    fn log_files(names: &[(&str, i64)]) -> DescribeDbLogFilesOutput {
        let mut out = DescribeDbLogFilesOutput::builder();
        for (name, written) in names {
            out = out.describe_db_log_files(
                DescribeDbLogFilesDetails::builder()
                    .log_file_name(*name)
                    .last_written(*written)
                    .build(),
            );
        }
        out.build()
    }

    fn portion(data: &str, pending: bool, marker: &str) -> DownloadDbLogFilePortionOutput {
        DownloadDbLogFilePortionOutput::builder()
            .log_file_data(data)
            .additional_data_pending(pending)
            .marker(marker)
            .build()
    }

    #[tokio::test]
    async fn the_start_lsn_is_read_from_the_oldest_log_across_its_portions() {
        // Listed newest first; the start-up's line is in the second portion of the oldest.
        let files = mock!(Client::describe_db_log_files).then_output(|| {
            log_files(&[
                ("error/postgresql.log.2026-12-03-10", 20),
                ("error/postgresql.log.2026-12-03-09", 10),
            ])
        });
        let portions = mock!(Client::download_db_log_file_portion)
            .match_requests(|r| r.log_file_name() == Some("error/postgresql.log.2026-12-03-09"))
            .sequence()
            .output(|| portion("LOG:  database system was interrupted\n", true, "1:100"))
            .output(|| portion("LOG:  redo done at 0/5000F40 system usage: ...\n", false, "1:200"))
            .build();
        let rds = mock_client!(aws_sdk_rds, RuleMode::MatchAny, [&files, &portions]);
        let lsn = log_start_lsn(&rds, "shop-db-green", &LogParser).await.unwrap();
        assert_eq!(lsn, "0/5000F40+1");
        assert_eq!(portions.num_calls(), 2);
    }

    #[tokio::test]
    async fn no_start_up_line_says_where_to_look_and_to_pass_start_lsn() {
        let files = mock!(Client::describe_db_log_files)
            .then_output(|| log_files(&[("error/postgresql.log.2026-12-03-09", 10)]));
        let portions = mock!(Client::download_db_log_file_portion)
            .then_output(|| portion("LOG:  database system is ready\n", false, "1:50"));
        let rds = mock_client!(aws_sdk_rds, RuleMode::MatchAny, [&files, &portions]);
        let e = log_start_lsn(&rds, "shop-db-green", &LogParser)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("error/postgresql.log.2026-12-03-09") && e.contains("--start-lsn"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_instance_upgrade_is_awaited_until_the_version_changes() {
        use aws_sdk_rds::operation::describe_db_instances::DescribeDbInstancesOutput;
        use aws_sdk_rds::types::DbInstance;
        let at = |status: &str, version: &str| {
            DescribeDbInstancesOutput::builder()
                .db_instances(
                    DbInstance::builder()
                        .db_instance_status(status)
                        .engine_version(version)
                        .build(),
                )
                .build()
        };
        let instances = mock!(Client::describe_db_instances)
            .sequence()
            .output(move || at("available", "15.8"))
            .output(move || at("upgrading", "15.8"))
            .output(move || at("available", "17.4"))
            .build();
        let rds = mock_client!(aws_sdk_rds, [&instances]);
        let clock = crate::wait::tests::FakeClock::default();
        let opts = PrepareOptions {
            dry_run: false,
            allow_reboot: false,
            no_attach: true,
            run_id: "run-1".into(),
            wait_limit: Duration::from_secs(7200),
            backoff: Backoff::default(),
            start_lsn: None,
        };
        wait_available(&rds, "shop-db-green", Some("17.4"), &clock, &opts)
            .await
            .unwrap();
        assert_eq!(instances.num_calls(), 3);
    }
}
