//! `[aws]`: where blue lives on AWS, and what green should become.

use serde::Deserialize;

/// `[aws]`: what `pgcutover aws prepare-green` and `pgcutover aws cleanup` work on.
/// Credentials come from the AWS SDK's default chain (environment, profile, SSO,
/// web identity, instance metadata).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// The region (default: the SDK's, e.g. `AWS_REGION`).
    pub region: Option<String>,
    /// Another RDS endpoint, e.g. a moto server in tests (`http://127.0.0.1:5000`).
    pub endpoint_url: Option<String>,
    /// Blue's Aurora PostgreSQL cluster identifier.
    pub source_cluster: Option<String>,
    /// Blue's RDS for PostgreSQL instance identifier (instead of `source_cluster`).
    pub source_instance: Option<String>,
    /// The engine version green is upgraded to, e.g. `"17.4"`.
    pub target_engine_version: Option<String>,
    /// Green's cluster identifier. Default: `<source_cluster>-green`.
    pub green_cluster: Option<String>,
    /// Green's instance identifier (RDS for PostgreSQL). Default: `<source_instance>-green`.
    pub green_instance: Option<String>,
    /// Green's writer instance class. Default: blue's writer's.
    pub green_instance_class: Option<String>,
    /// The cluster parameter group blue should use, with `rds.logical_replication = 1`.
    /// Default: blue's own if it is custom (it is modified), else one created from
    /// blue's family.
    pub source_cluster_parameter_group: Option<String>,
    /// Green's cluster parameter group, of the target family. Default: one created,
    /// with `rds.logical_replication = 1` (reverse replication needs it).
    pub target_cluster_parameter_group: Option<String>,
    /// Green's instance parameter group, of the target family. Aurora: required by
    /// AWS when the writer uses a custom instance parameter group (default: none).
    /// RDS for PostgreSQL: green's DB parameter group (default: one created, with
    /// `rds.logical_replication = 1`).
    pub target_instance_parameter_group: Option<String>,
    /// The DB parameter group blue's instance should use (RDS for PostgreSQL), with
    /// `rds.logical_replication = 1`. Default as for `source_cluster_parameter_group`.
    pub source_instance_parameter_group: Option<String>,
}
