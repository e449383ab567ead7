//! `deploy/aws/iam-policy.json` must allow every RDS operation the crate calls:
//! a call added without its permission fails here, not on a user's account.

use std::path::Path;

/// `describe_db_clusters` → `DescribeDBClusters`: the SDK's snake case back to
/// the API's name, with RDS's `DB` spelled as IAM spells it.
fn operation(method: &str) -> String {
    method
        .split('_')
        .map(|word| match word {
            "db" => "DB".to_owned(),
            w => {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
        })
        .collect()
}

/// Every `.verb_object()` call on the client in the crate's sources.
fn called_operations() -> Vec<String> {
    const VERBS: &[&str] = &[
        "add_tags_",
        "create_",
        "delete_",
        "describe_",
        "download_",
        "list_tags_",
        "modify_",
        "promote_",
        "reboot_",
        "restore_",
        "switchover_",
    ];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut ops = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (i, _) in text.match_indices("()") {
            let head = &text[..i];
            let start = head.rfind('.').map_or(i, |d| d + 1);
            let name = &head[start..];
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && VERBS.iter().any(|v| name.starts_with(v))
            {
                ops.push(operation(name));
            }
        }
    }
    ops.sort();
    ops.dedup();
    ops
}

#[test]
fn the_policy_allows_every_operation_the_crate_calls() {
    let policy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/aws/iam-policy.json")).unwrap();
    let ops = called_operations();
    // The scan itself must find the calls, or the test proves nothing.
    for known in [
        "DescribeDBClusters",
        "RestoreDBClusterToPointInTime",
        "SwitchoverBlueGreenDeployment",
    ] {
        assert!(ops.iter().any(|o| o == known), "the scan missed {known}: {ops:?}");
    }
    let missing: Vec<_> = ops
        .iter()
        .filter(|op| !policy.contains(&format!("\"rds:{op}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/aws/iam-policy.json does not allow {missing:?}"
    );
}

#[test]
fn operation_names_follow_the_api() {
    assert_eq!(
        operation("describe_db_cluster_parameter_groups"),
        "DescribeDBClusterParameterGroups"
    );
    assert_eq!(
        operation("switchover_blue_green_deployment"),
        "SwitchoverBlueGreenDeployment"
    );
}
