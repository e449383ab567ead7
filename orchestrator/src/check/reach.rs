//! `green_reaches_blue`: green can open the subscription's connection to blue.

use super::{Check, CheckResult, CheckStatus};
use crate::error::pg_message;
use crate::setup::create_subscription_sql;
use crate::targets::Targets;
use crate::{PUBLICATION, SUBSCRIPTION_PREFIX};
use tokio_postgres::Client;

/// Green connects to blue with the subscription's conninfo: a CREATE SUBSCRIPTION
/// that is rolled back (it connects to the publisher while being created).
pub(super) async fn green_reaches_blue(targets: &Targets, db: &str, green: &Client) -> CheckResult {
    let where_ = format!("green/{db}");
    let conninfo = targets.subscription_conninfo(db);
    let name = format!("{SUBSCRIPTION_PREFIX}check_{}", std::process::id());
    let sql = create_subscription_sql(
        &name,
        &conninfo,
        "connect = true, enabled = false, create_slot = false, slot_name = NONE",
    )
    .replace(
        &format!("PUBLICATION \"{PUBLICATION}\""),
        "PUBLICATION pgcutover_reachability_check",
    );
    let result = async {
        green.batch_execute("BEGIN").await?;
        let r = green.batch_execute(&sql).await;
        green.batch_execute("ROLLBACK").await?;
        r
    }
    .await;
    let shown = redact_password(&conninfo);
    match result {
        Ok(()) => CheckResult::ok(
            Check::GreenReachesBlue,
            where_,
            format!("green connects to blue with {shown}"),
        ),
        Err(e) => CheckResult::problem(
            Check::GreenReachesBlue,
            where_,
            CheckStatus::Fail,
            format!("green cannot connect to blue with {shown}: {}", pg_message(&e)),
            vec![shown.clone()],
            "set [replication] source_conninfo to a conninfo that works from green's host (blue's address as green sees it, a user blue's pg_hba.conf allows from green, its password)",
        ),
    }
}

/// The conninfo with its password replaced by `***`.
fn redact_password(conninfo: &str) -> String {
    let mut out = Vec::new();
    let mut rest = conninfo;
    while let Some(i) = rest.find("password=") {
        out.push(rest[..i + 9].to_owned());
        let after = &rest[i + 9..];
        let end = if let Some(q) = after.strip_prefix('\'') {
            let mut j = 0;
            let b = q.as_bytes();
            while j < b.len() && b[j] != b'\'' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            (j + 2).min(after.len())
        } else {
            after.find(' ').unwrap_or(after.len())
        };
        out.push("***".into());
        rest = &after[end..];
    }
    out.push(rest.to_owned());
    out.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_password("host=a password=s3cret dbname=x"),
            "host=a password=*** dbname=x"
        );
        assert_eq!(redact_password("password='a b\\'c' dbname=x"), "password=*** dbname=x");
        assert_eq!(redact_password("host=a"), "host=a");
    }
}
