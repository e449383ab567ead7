//! Rollback before the commit point: the undo log, newest change first, so clients
//! end on the source exactly as before the run. Fresh connections, each step
//! bounded: the run's own connections may be stuck in the statement the timeout
//! interrupted, and a server may be down.

use super::conn::Conn;
use super::error::{within, SwitchoverError};
use super::fence::{refence, unfence};
use super::machine::Run;
use super::phase::Phase;
use super::report::reason_with;
use super::undo::Undo;
use crate::reverse;
use crate::targets::Side;
use pgcutover_api::Outcome;
use std::future::Future;
use std::time::Duration;
use tracing::warn;

/// A cleanup step gets this long; past it the report names what was not undone.
const CLEANUP_STEP: Duration = Duration::from_secs(10);

/// An undo that failed, and why.
pub(super) type Problem = (String, SwitchoverError);

impl Run<'_> {
    /// RollingBack → RolledBack: undoes everything in the log; the report's reason is
    /// `failure`, plus whatever the rollback itself hit.
    pub(super) async fn rollback(&mut self, failure: SwitchoverError) {
        warn!("switchover rolls back: {failure}");
        let mut problems = Vec::new();
        // An illegal transition here is a bug, but the undo must run all the same.
        if let Err(e) = self.go(Phase::RollingBack) {
            problems.push(("entering rolling_back".to_owned(), e));
        }
        problems.extend(self.undo_all().await);
        if let Err(e) = self.go(Phase::RolledBack) {
            problems.push(("entering rolled_back".to_owned(), e));
        }
        self.report.outcome = Outcome::RolledBack;
        self.report.reason = Some(reason_with(&failure, &problems));
    }

    /// Undoes every logged change, newest first; returns the ones that failed.
    pub(super) async fn undo_all(&mut self) -> Vec<Problem> {
        let log: Vec<Undo> = self.undo.unwind().collect();
        let mut problems = Vec::new();
        for undo in log {
            if let Err(e) = self.undo_one(&undo).await {
                problems.push((undo.to_string(), e));
            }
        }
        problems
    }

    async fn undo_one(&mut self, undo: &Undo) -> Result<(), SwitchoverError> {
        match undo {
            Undo::Resume => {
                self.resume_all().await;
                Ok(())
            }
            Undo::Unfence { side, database } => {
                let c = self.fresh(*side, database).await?;
                bounded("lifting the fence", unfence(&c)).await
            }
            Undo::Refence { side, database } => {
                let c = self.fresh(*side, database).await?;
                bounded("fencing again", refence(&c)).await
            }
            Undo::DropReverseSlot { database } => {
                let blue = self.fresh(Side::Blue, database).await?;
                let green = self.fresh(Side::Green, database).await?;
                let drop = reverse::drop_subscription_and_slot(&blue.client, &green.client, database);
                bounded("dropping the reverse slot", async { Ok(drop.await?) }).await
            }
            Undo::RestoreRoute => self.restore_route().await,
            Undo::DropReversePublication { database } => {
                let green = self.fresh(Side::Green, database).await?;
                let drop = reverse::drop_publication(&green.client, database);
                bounded("dropping the reverse publication", async { Ok(drop.await?) }).await
            }
        }
    }

    /// A new admin connection for cleanup.
    async fn fresh(&self, side: Side, database: &str) -> Result<Conn, SwitchoverError> {
        let connect = async { Ok(self.targets.connect(side, database).await?) };
        let client = bounded(format!("connecting to {side} database {database}"), connect).await?;
        Ok(Conn::new(side, database, client))
    }
}

/// One cleanup step, bounded by [`CLEANUP_STEP`].
async fn bounded<T>(
    doing: impl Into<String>,
    step: impl Future<Output = Result<T, SwitchoverError>>,
) -> Result<T, SwitchoverError> {
    within(CLEANUP_STEP, doing, step).await
}
