//! One cluster or one instance as RDS describes it: `None` when it is not there
//! (the not-found fault, or an empty list), every other failure an error.

use crate::AwsError;
use aws_sdk_rds::types::{DbCluster, DbInstance};
use aws_sdk_rds::Client;

pub(crate) async fn cluster(rds: &Client, id: &str) -> Result<Option<DbCluster>, AwsError> {
    match rds.describe_db_clusters().db_cluster_identifier(id).send().await {
        Ok(out) => Ok(out.db_clusters().first().cloned()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_db_cluster_not_found_fault()) => Ok(None),
        Err(e) => Err(AwsError::api(format!("DescribeDBClusters {id}"), e)),
    }
}

pub(crate) async fn instance(rds: &Client, id: &str) -> Result<Option<DbInstance>, AwsError> {
    match rds.describe_db_instances().db_instance_identifier(id).send().await {
        Ok(out) => Ok(out.db_instances().first().cloned()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_db_instance_not_found_fault()) => Ok(None),
        Err(e) => Err(AwsError::api(format!("DescribeDBInstances {id}"), e)),
    }
}
