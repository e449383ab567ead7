//! Green's subscription to blue, as both methods create and inspect it.

use crate::error::{OrchestratorError, SqlContext};
use crate::setup::{create_subscription_sql, quiet_statement_log};
use crate::targets::{Side, Targets};
use tokio_postgres::Client;

/// Whether green has a subscription called `name`.
pub(super) async fn subscription_exists(green: &Client, db: &str, name: &str) -> Result<bool, OrchestratorError> {
    Ok(green
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&name],
        )
        .await
        .ctx(Side::Green, db, "looking for the subscription")?
        .get(0))
}

/// Creates subscription `name` on green to blue's publication, with `options` (the
/// method's copy_data, create_slot, enabled and slot_name), and green's reverse
/// publication before it.
pub(super) async fn create_subscription(
    targets: &Targets,
    green: &Client,
    db: &str,
    name: &str,
    options: &str,
) -> Result<(), OrchestratorError> {
    ensure_reverse_publication(green, db).await?;
    let sql = create_subscription_sql(name, &targets.subscription_conninfo(db), options);
    quiet_statement_log(green).await;
    green.batch_execute(&sql).await.ctx(
        Side::Green,
        db,
        "creating the subscription (green connects to blue with [replication] source_conninfo)",
    )
}

/// Green's reverse publication (for `pgcutover rollback` after a switchover), made
/// while green takes no writes yet: under apply load, `CREATE PUBLICATION ... FOR
/// ALL TABLES` on green waited for seconds.
async fn ensure_reverse_publication(green: &Client, db: &str) -> Result<(), OrchestratorError> {
    crate::reverse::create_publication(green, db).await.map(|_| ())
}

/// pg_subscription_rel.srsubstate in words.
pub(crate) fn state_name(s: &str) -> &'static str {
    match s {
        "i" => "waiting to copy",
        "d" => "copying",
        "f" => "copied",
        "s" => "catching up",
        "r" => "ready",
        _ => "unknown",
    }
}
