//! `green_reaches_blue`: green can open the subscription's connection to blue.

use super::{Check, CheckResult, CheckStatus};
use crate::error::pg_message;
use crate::setup::{create_subscription_sql, quiet_statement_log};
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
    quiet_statement_log(green).await;
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

/// The conninfo with its password replaced by `***`: `password=x`, any case, with
/// spaces around `=` or a quoted value, and the `user:password@` of a URI.
fn redact_password(conninfo: &str) -> String {
    if conninfo.contains("://") {
        return pgcutover_config::redact_url(conninfo);
    }
    let lower = conninfo.to_ascii_lowercase();
    let b = conninfo.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let key = from + found;
        from = key + "password".len();
        let mut i = from;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let value_start = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && b[i] != b' ' {
                i += 1;
            }
        }
        out.push_str(&conninfo[copied..value_start]);
        out.push_str("***");
        copied = i;
        from = i;
    }
    out.push_str(&conninfo[copied..]);
    out
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
        assert_eq!(
            redact_password("host=a PASSWORD = s3cret user=b"),
            "host=a PASSWORD = *** user=b"
        );
        assert_eq!(redact_password("password=a password=b"), "password=*** password=***");
        assert_eq!(redact_password("postgres://u:s3cret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_password("passwordless=1"), "passwordless=1");
    }
}
