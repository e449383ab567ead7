//! Per-database checks on green: blue's extensions are installable, the schemas
//! match ([`super::schema`]) and green reaches blue ([`super::reach`]).

use super::{reach, schema, Check, CheckResult, CheckStatus, Scope};
use crate::targets::Targets;
use tokio_postgres::Client;

/// Everything checked for one database on green; `green` is `None` while the copy
/// method has not created it yet, and the admin connection stands in.
pub(super) async fn green_database_checks(
    targets: &Targets,
    db: &str,
    blue: &Client,
    green: Option<&Client>,
    green_admin: &Client,
    out: &mut Vec<CheckResult>,
    scope: Scope,
) {
    let where_ = format!("green/{db}");
    out.push(extensions(&where_, blue, green_admin).await);
    if scope == Scope::All {
        if let Some(green) = green {
            out.push(schema::schema_match(targets, &where_, blue, green).await);
        }
    }
    out.push(reach::green_reaches_blue(targets, db, green.unwrap_or(green_admin)).await);
}

/// Extensions blue uses must be installable on green.
async fn extensions(where_: &str, blue: &Client, green_admin: &Client) -> CheckResult {
    let blue_ext = blue
        .query("SELECT extname::text, extversion FROM pg_extension ORDER BY 1", &[])
        .await;
    let green_avail = green_admin
        .query("SELECT name::text, default_version FROM pg_available_extensions", &[])
        .await;
    let (b, g) = match (blue_ext, green_avail) {
        (Ok(b), Ok(g)) => (b, g),
        (Err(e), _) | (_, Err(e)) => return CheckResult::query_failed(Check::Extensions, where_, &e),
    };
    let mut missing = Vec::new();
    let mut versions = Vec::new();
    for r in &b {
        let (name, version): (String, String) = (r.get(0), r.get(1));
        match g.iter().find(|x| x.get::<_, String>(0) == name) {
            None => missing.push(name),
            Some(x) => versions.push(format!(
                "{name} {version} (green: {})",
                x.get::<_, Option<String>>(1).unwrap_or_default()
            )),
        }
    }
    if missing.is_empty() {
        return CheckResult {
            objects: versions,
            ..CheckResult::ok(
                Check::Extensions,
                where_,
                "every extension of blue is available on green",
            )
        };
    }
    CheckResult::problem(
        Check::Extensions,
        where_,
        CheckStatus::Fail,
        "extensions used on blue are not installed on green's server",
        missing,
        "install the packages providing them on green (same or newer versions)",
    )
}
