//! Parameter groups, a cluster's (Aurora) or an instance's (RDS for PostgreSQL):
//! the same questions and changes through the two APIs RDS has for them.

use crate::aurora::{GroupScope, Step};
use crate::AwsError;
use aws_sdk_rds::types::{ApplyMethod, Parameter, Tag};
use aws_sdk_rds::Client;

const LOGICAL_REPLICATION: &str = "rds.logical_replication";

/// The not-found fault of either API, which both spell the same.
macro_rules! not_found {
    ($result:expr) => {
        match $result {
            Ok(out) => Ok(Some(out)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_db_parameter_group_not_found_fault()) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    };
}

/// The family of `group` (`aurora-postgresql15`, `postgres15`), `None` when RDS
/// cannot describe it (moto lists no default groups).
pub(crate) async fn family(rds: &Client, scope: GroupScope, group: &str) -> Result<Option<String>, AwsError> {
    let call = format!("DescribeDB{}ParameterGroups {group}", scope.infix());
    Ok(match scope {
        GroupScope::Cluster => not_found!(
            rds.describe_db_cluster_parameter_groups()
                .db_cluster_parameter_group_name(group)
                .send()
                .await
        )
        .map_err(|e| AwsError::api(call, e))?
        .and_then(|out| {
            out.db_cluster_parameter_groups()
                .first()
                .and_then(|g| g.db_parameter_group_family().map(str::to_owned))
        }),
        GroupScope::Instance => not_found!(
            rds.describe_db_parameter_groups()
                .db_parameter_group_name(group)
                .send()
                .await
        )
        .map_err(|e| AwsError::api(call, e))?
        .and_then(|out| {
            out.db_parameter_groups()
                .first()
                .and_then(|g| g.db_parameter_group_family().map(str::to_owned))
        }),
    })
}

/// Whether `group` exists.
pub(crate) async fn exists(rds: &Client, scope: GroupScope, group: &str) -> Result<bool, AwsError> {
    let call = format!("DescribeDB{}ParameterGroups {group}", scope.infix());
    Ok(match scope {
        GroupScope::Cluster => not_found!(
            rds.describe_db_cluster_parameter_groups()
                .db_cluster_parameter_group_name(group)
                .send()
                .await
        )
        .map_err(|e| AwsError::api(call, e))?
        .is_some_and(|out| !out.db_cluster_parameter_groups().is_empty()),
        GroupScope::Instance => not_found!(
            rds.describe_db_parameter_groups()
                .db_parameter_group_name(group)
                .send()
                .await
        )
        .map_err(|e| AwsError::api(call, e))?
        .is_some_and(|out| !out.db_parameter_groups().is_empty()),
    })
}

/// Whether `group` sets `rds.logical_replication = 1` (a group that does not
/// exist yet, a dry run's, sets nothing).
pub(crate) async fn logical_replication_on(rds: &Client, scope: GroupScope, group: &str) -> Result<bool, AwsError> {
    let call = format!("DescribeDB{}Parameters {group}", scope.infix());
    let params: Vec<Parameter> = match scope {
        GroupScope::Cluster => not_found!(
            rds.describe_db_cluster_parameters()
                .db_cluster_parameter_group_name(group)
                .send()
                .await
        )
        .map_err(|e| AwsError::api(call, e))?
        .map(|out| out.parameters().to_vec()),
        GroupScope::Instance => not_found!(rds.describe_db_parameters().db_parameter_group_name(group).send().await)
            .map_err(|e| AwsError::api(call, e))?
            .map(|out| out.parameters().to_vec()),
    }
    .unwrap_or_default();
    Ok(params
        .iter()
        .any(|p| p.parameter_name() == Some(LOGICAL_REPLICATION) && p.parameter_value() == Some("1")))
}

/// Creates `name` of `family`, tagged.
pub(crate) async fn create(
    rds: &Client,
    scope: GroupScope,
    name: &str,
    family: &str,
    description: String,
    tags: Vec<Tag>,
) -> Result<(), AwsError> {
    let call = format!("CreateDB{}ParameterGroup {name}", scope.infix());
    match scope {
        GroupScope::Cluster => rds
            .create_db_cluster_parameter_group()
            .db_cluster_parameter_group_name(name)
            .db_parameter_group_family(family)
            .description(description)
            .set_tags(Some(tags))
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::api(call, e)),
        GroupScope::Instance => rds
            .create_db_parameter_group()
            .db_parameter_group_name(name)
            .db_parameter_group_family(family)
            .description(description)
            .set_tags(Some(tags))
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::api(call, e)),
    }
}

/// Sets `rds.logical_replication = 1` in `group`, applied at the next reboot (it
/// is a static parameter).
pub(crate) async fn enable_logical_replication(rds: &Client, scope: GroupScope, group: &str) -> Result<(), AwsError> {
    let parameter = Parameter::builder()
        .parameter_name(LOGICAL_REPLICATION)
        .parameter_value("1")
        .apply_method(ApplyMethod::PendingReboot)
        .build();
    let call = format!("ModifyDB{}ParameterGroup {group}", scope.infix());
    match scope {
        GroupScope::Cluster => rds
            .modify_db_cluster_parameter_group()
            .db_cluster_parameter_group_name(group)
            .parameters(parameter)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::api(call, e)),
        GroupScope::Instance => rds
            .modify_db_parameter_group()
            .db_parameter_group_name(group)
            .parameters(parameter)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::api(call, e)),
    }
}

/// Blue's side of a plan: the steps that give `resource` (blue's cluster or
/// instance, using `current` of `family`) a group with `rds.logical_replication
/// = 1` (`configured`, else `current` when it is custom, else one made from the
/// family), and the reboot of `writer` that makes it take effect.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn blue_steps(
    rds: &Client,
    scope: GroupScope,
    resource: &str,
    current: &str,
    family: &str,
    configured: Option<&str>,
    pending_reboot: bool,
    writer: &str,
    allow_reboot: bool,
) -> Result<Vec<Step>, AwsError> {
    let mut steps = Vec::new();
    let mut needs_reboot = pending_reboot;
    let wanted = match configured {
        Some(g) => g.to_owned(),
        None if current.starts_with("default.") || current.is_empty() => format!("pgcutover-{resource}-{family}"),
        None => current.to_owned(),
    };
    if wanted != current && !exists(rds, scope, &wanted).await? {
        steps.push(Step::CreateParameterGroup {
            name: wanted.clone(),
            family: family.to_owned(),
            side: "blue",
            scope,
        });
        steps.push(Step::EnableLogicalReplication {
            group: wanted.clone(),
            scope,
        });
    } else if !logical_replication_on(rds, scope, &wanted).await? {
        steps.push(Step::EnableLogicalReplication {
            group: wanted.clone(),
            scope,
        });
        needs_reboot = true;
    }
    if wanted != current {
        steps.push(Step::UseParameterGroup {
            resource: resource.to_owned(),
            group: wanted,
            scope,
        });
        needs_reboot = true;
    }
    if needs_reboot {
        steps.push(Step::RebootWriter {
            instance: writer.to_owned(),
            allowed: allow_reboot,
        });
    }
    Ok(steps)
}

/// Green's group of the new family: `configured`, else `pgcutover-<green>-<family>`,
/// with the steps that make it when it does not exist yet.
pub(crate) async fn green_group(
    rds: &Client,
    scope: GroupScope,
    green: &str,
    family: &str,
    configured: Option<&str>,
    steps: &mut Vec<Step>,
) -> Result<String, AwsError> {
    if let Some(g) = configured {
        return Ok(g.to_owned());
    }
    let name = format!("pgcutover-{green}-{family}");
    if !exists(rds, scope, &name).await? {
        steps.push(Step::CreateParameterGroup {
            name: name.clone(),
            family: family.to_owned(),
            side: "green",
            scope,
        });
        steps.push(Step::EnableLogicalReplication {
            group: name.clone(),
            scope,
        });
    }
    Ok(name)
}
