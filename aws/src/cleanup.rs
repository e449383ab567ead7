//! `pgcutover aws cleanup`: deletes what prepare-green created for this blue, found
//! by its tags, never an untagged resource, never blue itself.

use crate::aurora::{RUN_TAG, SOURCE_TAG};
use crate::describe;
use crate::wait::{wait_until, Backoff, Clock, Poll};
use crate::AwsError;
use aws_sdk_rds::types::Tag;
use aws_sdk_rds::Client;
use std::fmt;
use std::time::Duration;

/// One resource a run created.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tagged {
    /// A DB instance (deleted first: a cluster with members cannot be).
    Instance(String),
    /// A DB cluster.
    Cluster(String),
    /// A DB snapshot (green's starting point on RDS for PostgreSQL).
    Snapshot(String),
    /// A DB cluster parameter group (deleted last; kept while a cluster uses it).
    ClusterParameterGroup(String),
    /// A DB parameter group (kept while an instance uses it).
    ParameterGroup(String),
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tagged::Instance(id) => write!(f, "DB instance {id}"),
            Tagged::Cluster(id) => write!(f, "DB cluster {id}"),
            Tagged::Snapshot(id) => write!(f, "DB snapshot {id}"),
            Tagged::ClusterParameterGroup(id) => write!(f, "DB cluster parameter group {id}"),
            Tagged::ParameterGroup(id) => write!(f, "DB parameter group {id}"),
        }
    }
}

fn matches(tags: &[Tag], source: &str, run: Option<&str>) -> bool {
    let has = |k: &str, v: &str| tags.iter().any(|t| t.key() == Some(k) && t.value() == Some(v));
    has(SOURCE_TAG, source) && run.is_none_or(|r| has(RUN_TAG, r))
}

/// Everything tagged for `source` (and `run`, when given), in deletion order.
pub async fn find(rds: &Client, source: &str, run: Option<&str>) -> Result<Vec<Tagged>, AwsError> {
    let mut found = Vec::new();
    // The SDK's paginators follow the markers; a page's failure fails the whole list.
    let instances: Vec<_> = rds
        .describe_db_instances()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .map_err(|e| AwsError::api("DescribeDBInstances", e))?;
    for i in &instances {
        // Blue is never ours to delete, whatever its tags say.
        if i.db_instance_identifier() != Some(source) && matches(i.tag_list(), source, run) {
            found.extend(i.db_instance_identifier().map(|id| Tagged::Instance(id.to_owned())));
        }
    }
    let clusters: Vec<_> = rds
        .describe_db_clusters()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .map_err(|e| AwsError::api("DescribeDBClusters", e))?;
    for c in &clusters {
        // Blue is never ours to delete, whatever its tags say.
        if c.db_cluster_identifier() != Some(source) && matches(c.tag_list(), source, run) {
            found.extend(c.db_cluster_identifier().map(|id| Tagged::Cluster(id.to_owned())));
        }
    }
    let snapshots: Vec<_> = rds
        .describe_db_snapshots()
        .snapshot_type("manual")
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .map_err(|e| AwsError::api("DescribeDBSnapshots", e))?;
    for s in &snapshots {
        if matches(s.tag_list(), source, run) {
            found.extend(s.db_snapshot_identifier().map(|id| Tagged::Snapshot(id.to_owned())));
        }
    }
    // Parameter groups carry no tags in their listing: asked one by one.
    let cluster_groups: Vec<_> = rds
        .describe_db_cluster_parameter_groups()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| AwsError::api("DescribeDBClusterParameterGroups", e))?
        .into_iter()
        .map(|g| (g.db_cluster_parameter_group_name, g.db_cluster_parameter_group_arn))
        .collect();
    let instance_groups: Vec<_> = rds
        .describe_db_parameter_groups()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| AwsError::api("DescribeDBParameterGroups", e))?
        .into_iter()
        .map(|g| (g.db_parameter_group_name, g.db_parameter_group_arn))
        .collect();
    let kinds = [
        (Tagged::ClusterParameterGroup as fn(String) -> Tagged, cluster_groups),
        (Tagged::ParameterGroup, instance_groups),
    ];
    for (kind, groups) in kinds {
        for (name, arn) in groups {
            let (Some(name), Some(arn)) = (name, arn) else {
                continue;
            };
            if !name.starts_with("default.") && matches(&tags_of(rds, &arn).await?, source, run) {
                found.push(kind(name));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Why a parameter group is kept.
const IN_USE: &str = "blue uses it (rds.logical_replication = 1): detach it from blue first if you want it gone";

/// The parameter groups blue uses, cluster's or instance's.
async fn groups_of(rds: &Client, source: &str) -> Result<Vec<String>, AwsError> {
    let mut groups = Vec::new();
    if let Some(c) = describe::cluster(rds, source).await? {
        groups.extend(c.db_cluster_parameter_group().map(str::to_owned));
    }
    if let Some(i) = describe::instance(rds, source).await? {
        groups.extend(
            i.db_parameter_groups()
                .iter()
                .filter_map(|g| g.db_parameter_group_name().map(str::to_owned)),
        );
    }
    Ok(groups)
}

async fn tags_of(rds: &Client, arn: &str) -> Result<Vec<Tag>, AwsError> {
    Ok(rds
        .list_tags_for_resource()
        .resource_name(arn)
        .send()
        .await
        .map_err(|e| AwsError::api(format!("ListTagsForResource {arn}"), e))?
        .tag_list()
        .to_vec())
}

/// What became of each resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// Gone.
    Deleted(Tagged),
    /// Still used (blue's parameter group): kept, with why.
    Kept(Tagged, String),
}

/// Deletes `items` in order (instances, then clusters, each awaited, then
/// snapshots and parameter groups); a parameter group blue (`source`) uses is kept.
pub async fn delete(
    rds: &Client,
    source: &str,
    items: &[Tagged],
    clock: &dyn Clock,
    limit: Duration,
    backoff: Backoff,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Vec<Deleted>, AwsError> {
    let mut done = Vec::new();
    let blue_groups = groups_of(rds, source).await?;
    for item in items {
        if let Tagged::ClusterParameterGroup(name) | Tagged::ParameterGroup(name) = item {
            if blue_groups.contains(name) {
                done.push(Deleted::Kept(item.clone(), IN_USE.into()));
                continue;
            }
        }
        progress(format!("deleting {item}"));
        match item {
            Tagged::Instance(id) => {
                rds.delete_db_instance()
                    .db_instance_identifier(id)
                    .skip_final_snapshot(true)
                    .send()
                    .await
                    .map_err(|e| AwsError::api(format!("DeleteDBInstance {id}"), e))?;
                wait_gone(rds, item, clock, limit, backoff).await?;
            }
            Tagged::Cluster(id) => {
                rds.delete_db_cluster()
                    .db_cluster_identifier(id)
                    .skip_final_snapshot(true)
                    .send()
                    .await
                    .map_err(|e| AwsError::api(format!("DeleteDBCluster {id}"), e))?;
                wait_gone(rds, item, clock, limit, backoff).await?;
            }
            Tagged::Snapshot(id) => {
                rds.delete_db_snapshot()
                    .db_snapshot_identifier(id)
                    .send()
                    .await
                    .map_err(|e| AwsError::api(format!("DeleteDBSnapshot {id}"), e))?;
            }
            Tagged::ClusterParameterGroup(name) => {
                let deleted = rds
                    .delete_db_cluster_parameter_group()
                    .db_cluster_parameter_group_name(name)
                    .send()
                    .await;
                if let Err(e) = deleted {
                    match e
                        .as_service_error()
                        .is_some_and(|s| s.is_invalid_db_parameter_group_state_fault())
                    {
                        true => {
                            done.push(Deleted::Kept(item.clone(), IN_USE.into()));
                            continue;
                        }
                        false => return Err(AwsError::api(format!("DeleteDBClusterParameterGroup {name}"), e)),
                    }
                }
            }
            Tagged::ParameterGroup(name) => {
                let deleted = rds
                    .delete_db_parameter_group()
                    .db_parameter_group_name(name)
                    .send()
                    .await;
                if let Err(e) = deleted {
                    match e
                        .as_service_error()
                        .is_some_and(|s| s.is_invalid_db_parameter_group_state_fault())
                    {
                        true => {
                            done.push(Deleted::Kept(item.clone(), IN_USE.into()));
                            continue;
                        }
                        false => return Err(AwsError::api(format!("DeleteDBParameterGroup {name}"), e)),
                    }
                }
            }
        }
        done.push(Deleted::Deleted(item.clone()));
    }
    Ok(done)
}

/// Waits until RDS no longer lists `item` (a cluster with members, or one still
/// deleting, cannot be followed by what depends on it).
async fn wait_gone(
    rds: &Client,
    item: &Tagged,
    clock: &dyn Clock,
    limit: Duration,
    backoff: Backoff,
) -> Result<(), AwsError> {
    wait_until(clock, &format!("deletion of {item}"), limit, backoff, || async {
        Ok(match status_of(rds, item).await? {
            None => Poll::Ready(()),
            Some(status) => Poll::Pending(status),
        })
    })
    .await
}

/// `item`'s status, `None` once it is gone.
async fn status_of(rds: &Client, item: &Tagged) -> Result<Option<String>, AwsError> {
    match item {
        Tagged::Instance(id) => Ok(describe::instance(rds, id)
            .await?
            .and_then(|i| i.db_instance_status().map(str::to_owned))),
        Tagged::Cluster(id) => Ok(describe::cluster(rds, id)
            .await?
            .and_then(|c| c.status().map(str::to_owned))),
        Tagged::Snapshot(_) | Tagged::ClusterParameterGroup(_) | Tagged::ParameterGroup(_) => Ok(None),
    }
}
