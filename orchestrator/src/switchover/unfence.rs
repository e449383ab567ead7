//! `pgcutover unfence`: lifts pgcutover's fence from one side, exactly what the
//! fence set: the server-wide read-only default and the `pgcutover_fence` trigger on
//! every table of every replicated database. Refused while a run holds the lock,
//! and, unless forced, on the side clients do not belong on (the journal's route):
//! writes there would be lost to the application, which runs on the other side.

use super::conn::Conn;
use super::error::{Guardrail, SwitchoverError};
use super::fence::{lift_read_only, unguard_tables};
use crate::journal;
use crate::progress::Progress;
use crate::targets::{Side, Targets};
use std::time::Duration;

/// What an unfence did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unfenced {
    /// The side lifted.
    pub side: Side,
    /// Per database, how many tables lost their fence trigger.
    pub tables: Vec<(String, i64)>,
}

/// Lifts the fence from `side`; `force` allows it on the side the journal says
/// clients do not belong on.
pub async fn unfence(
    targets: &Targets,
    side: Side,
    force: bool,
    progress: &Progress,
) -> Result<Unfenced, SwitchoverError> {
    let journal = journal::current(targets, Duration::from_secs(5)).await?;
    if journal.running {
        return Err(SwitchoverError::refused(
            Guardrail::OneAtATime,
            format!("a switchover is running: {}", journal.summary()),
            "wait for it to end; a rollback lifts its fence by itself",
        ));
    }
    let (route, epoch) = journal.route();
    if route != side && !force {
        return Err(SwitchoverError::refused(
            Guardrail::JournalOnSource,
            format!(
                "the journal says clients belong on {route} (epoch {epoch}): a write to {side} would not reach them"
            ),
            format!("to write to {side} anyway (decommissioning it, or giving up the switchover), add --force"),
        ));
    }
    let mut tables = Vec::new();
    for (i, database) in targets.databases.iter().enumerate() {
        let c = Conn::new(side, database, targets.connect(side, database).await?);
        if i == 0 {
            // Server-wide: once.
            lift_read_only(&c).await?;
        }
        let guarded: i64 = c
            .client
            .query_one(
                "select count(*) from pg_catalog.pg_trigger where tgname = 'pgcutover_fence'",
                &[],
            )
            .await
            .map_err(c.failed("counting the fence's triggers"))?
            .get(0);
        unguard_tables(&c).await?;
        progress.line(format!(
            "unfence: {side} database {database}: fence triggers dropped from {guarded} table(s)"
        ));
        tables.push((database.clone(), guarded));
    }
    progress.line(format!("unfence: {side} takes writes again"));
    Ok(Unfenced { side, tables })
}
