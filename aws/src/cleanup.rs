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
    /// A DB cluster parameter group (deleted last; kept while a cluster uses it).
    ClusterParameterGroup(String),
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tagged::Instance(id) => write!(f, "DB instance {id}"),
            Tagged::Cluster(id) => write!(f, "DB cluster {id}"),
            Tagged::ClusterParameterGroup(id) => write!(f, "DB cluster parameter group {id}"),
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
        if matches(i.tag_list(), source, run) {
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
    let groups: Vec<_> = rds
        .describe_db_cluster_parameter_groups()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .map_err(|e| AwsError::api("DescribeDBClusterParameterGroups", e))?;
    for g in &groups {
        let (Some(name), Some(arn)) = (g.db_cluster_parameter_group_name(), g.db_cluster_parameter_group_arn()) else {
            continue;
        };
        if name.starts_with("default.") {
            continue;
        }
        let tags = rds
            .list_tags_for_resource()
            .resource_name(arn)
            .send()
            .await
            .map_err(|e| AwsError::api(format!("ListTagsForResource {arn}"), e))?;
        if matches(tags.tag_list(), source, run) {
            found.push(Tagged::ClusterParameterGroup(name.to_owned()));
        }
    }
    found.sort();
    Ok(found)
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
/// parameter groups).
pub async fn delete(
    rds: &Client,
    items: &[Tagged],
    clock: &dyn Clock,
    limit: Duration,
    backoff: Backoff,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Vec<Deleted>, AwsError> {
    let mut done = Vec::new();
    for item in items {
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
            Tagged::ClusterParameterGroup(name) => {
                match rds
                    .delete_db_cluster_parameter_group()
                    .db_cluster_parameter_group_name(name)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_invalid_db_parameter_group_state_fault()) =>
                    {
                        done.push(Deleted::Kept(
                            item.clone(),
                            "still in use (blue's, with rds.logical_replication = 1): detach it from blue first".into(),
                        ));
                        continue;
                    }
                    Err(e) => return Err(AwsError::api(format!("DeleteDBClusterParameterGroup {name}"), e)),
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
        Tagged::ClusterParameterGroup(_) => Ok(None),
    }
}
