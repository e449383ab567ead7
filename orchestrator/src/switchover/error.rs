//! Why a switchover stopped, refused or rolled back. Each variant renders to the one
//! line that goes into the report's `reason`, naming the object and the fix.

use super::phase::{self, IllegalTransition, Phase};
use crate::progress::human_duration;
use crate::targets::Side;
use crate::OrchestratorError;
use pgcutover_api::ProxyError;
use std::time::Duration;

/// The preflight guardrails (DESIGN.md, step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guardrail {
    /// Every proxy instance answers.
    ProxyReachable,
    /// Every proxy routes to the source still.
    ProxyOnSource,
    /// Replication is running, caught up, without DDL drift.
    ReplicationReady,
    /// `pgcutover check` passes.
    Checks,
    /// The subscription is enabled and its worker runs.
    SubscriptionRunning,
    /// No transaction on the source is older than the drain budget.
    NoLongTransaction,
    /// No other switchover holds the run lock.
    OneAtATime,
    /// No proxy is held already.
    ProxyNotHeld,
    /// Every proxy holds at least as long as the run may take.
    HoldOutlastsRun,
    /// No proxy has sessions on a database that is not replicated.
    OnlyReplicatedDatabases,
    /// The journal says clients belong on the source.
    JournalOnSource,
    /// No prepared (two-phase) transaction waits on the source: it would commit
    /// past the fence, and its locks stop the fence's triggers.
    NoPreparedTransaction,
    /// The run may read every sequence on the source and set it on the destination.
    SequencesUsable,
}

/// Something that stopped a switchover.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// A guardrail refused before anything changed.
    #[error("{problem}; {fix}")]
    Refused {
        /// Which guardrail.
        guardrail: Guardrail,
        /// What is wrong, naming the objects.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// An admin call on a proxy failed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A statement failed.
    #[error("{side} database {database}: {doing}: {message}")]
    Database {
        /// Blue or green.
        side: Side,
        /// The database.
        database: String,
        /// What the switchover was doing.
        doing: String,
        /// The server's message (with detail and hint).
        message: String,
    },
    /// A connection or another orchestrator step failed (boxed: it is large and rare).
    #[error(transparent)]
    Orchestrator(Box<OrchestratorError>),
    /// Sessions were still inside a transaction when the drain budget ran out.
    #[error("{proxy}: {in_flight} session(s) still inside a transaction after drain_timeout")]
    NotDrained {
        /// The proxy.
        proxy: String,
        /// How many.
        in_flight: usize,
    },
    /// Backends kept a transaction id after the fence.
    #[error("backends {pids} still hold a transaction id {settle:?} after the fence")]
    StillWriting {
        /// Their pids, comma-separated.
        pids: String,
        /// How long they were given.
        settle: Duration,
    },
    /// DDL ran on blue between the preflight and the fence.
    #[error("database {database}: {statements} DDL statement(s) ran on blue since replication began (last: {last:?}), some after the preflight: apply them to green too, then retry")]
    DriftAtFence {
        /// The database.
        database: String,
        /// How many.
        statements: i64,
        /// The newest, cut short.
        last: String,
    },
    /// A transaction was prepared on the source between Preflight and the fence.
    #[error("prepared transaction(s) {gids} appeared on the source after the preflight: COMMIT PREPARED would write past the fence; resolve them and retry")]
    PreparedAtFence {
        /// Their gids, quoted, comma-separated.
        gids: String,
    },
    /// Some proxies did not take the new route (after the commit point).
    #[error(
        "not every proxy moved to {to} (the fence keeps them from writing to {from}): {}",
        join(problems)
    )]
    NotRouted {
        /// The fenced side.
        from: Side,
        /// The side that serves now.
        to: Side,
        /// Each proxy's failure.
        problems: Vec<ProxyError>,
    },
    /// The hard deadline from Hold to Flip expired.
    #[error("the switchover timeout ({}) expired in phase {}", human_duration(*timeout), phase::name(*phase))]
    Timeout {
        /// Where the run was.
        phase: Option<Phase>,
        /// The deadline.
        timeout: Duration,
    },
    /// The source's slot did not confirm the cut (after the resume; data is safe).
    #[error(
        "the source's slot did not confirm the cut within {} ({}); the data is on the destination (the sentinel proved it), and the subscription is retired",
        human_duration(*within),
        slots.join(", ")
    )]
    CutUnconfirmed {
        /// `slot below lsn`, per database.
        slots: Vec<String>,
        /// How long it was given.
        within: Duration,
    },
    /// A step outside the hold got no answer in time.
    #[error("{doing}: no answer within {}", human_duration(*limit))]
    NoAnswer {
        /// What was being done.
        doing: String,
        /// Its budget.
        limit: Duration,
    },
    /// The configuration names no database.
    #[error("no database to switch: list them in [replication] databases")]
    NoDatabase,
    /// The operator interrupted the run (SIGINT or SIGTERM) before its commit point.
    #[error("interrupted in phase {} (SIGINT or SIGTERM), before the commit point", phase::name(*phase))]
    Interrupted {
        /// Where the run was.
        phase: Option<Phase>,
    },
    /// A run died (its journal entry has no outcome and nobody holds the lock).
    #[error("run {run_id} died in phase {phase} (recovered)")]
    DeadRun {
        /// Its id.
        run_id: String,
        /// Its last recorded phase.
        phase: String,
    },
    /// Something other than pgcutover committed on the source after the fence (a
    /// superuser past the triggers): its writes would be lost.
    #[error("{transactions} transaction(s) committed on {side} database {database} after the fence, past its triggers, changing {tables}: their writes would not reach the destination; find who wrote (a superuser with session_replication_role = replica?) and retry")]
    WrittenPastCut {
        /// The source.
        side: Side,
        /// The database.
        database: String,
        /// How many.
        transactions: usize,
        /// The tables they changed.
        tables: String,
    },
    /// The journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The run tried a transition the protocol forbids (a bug).
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

impl SwitchoverError {
    /// A guardrail's refusal.
    pub(super) fn refused(guardrail: Guardrail, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        SwitchoverError::Refused {
            guardrail,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The crate's SQL errors become [`SwitchoverError::Database`]; the rest stay whole.
impl From<OrchestratorError> for SwitchoverError {
    fn from(e: OrchestratorError) -> Self {
        match e {
            OrchestratorError::Sql {
                side,
                database,
                doing,
                message,
            } => SwitchoverError::Database {
                side,
                database,
                doing,
                message,
            },
            other => SwitchoverError::Orchestrator(Box::new(other)),
        }
    }
}

/// `step`, or [`SwitchoverError::NoAnswer`] naming `doing` if it takes over `limit`.
pub(super) async fn within<T>(
    limit: Duration,
    doing: impl Into<String>,
    step: impl std::future::Future<Output = Result<T, SwitchoverError>>,
) -> Result<T, SwitchoverError> {
    tokio::time::timeout(limit, step).await.unwrap_or_else(|_| {
        Err(SwitchoverError::NoAnswer {
            doing: doing.into(),
            limit,
        })
    })
}

fn join(problems: &[ProxyError]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_to_one_line_naming_object_and_fix() {
        let e = SwitchoverError::refused(
            Guardrail::NoLongTransaction,
            "a transaction on blue (pid 7) is older than drain_timeout (1s)",
            "end it or wait",
        );
        assert_eq!(
            e.to_string(),
            "a transaction on blue (pid 7) is older than drain_timeout (1s); end it or wait"
        );
        let e = SwitchoverError::Timeout {
            phase: Some(Phase::CatchUp),
            timeout: Duration::from_secs(3),
        };
        assert!(
            e.to_string().contains("timeout") && e.to_string().contains("catch_up"),
            "{e}"
        );
        let e: SwitchoverError = OrchestratorError::Sql {
            side: Side::Green,
            database: "app".into(),
            doing: "dropping the reverse slot".into(),
            message: "boom".into(),
        }
        .into();
        assert_eq!(e.to_string(), "green database app: dropping the reverse slot: boom");
    }

    #[tokio::test]
    async fn a_step_that_hangs_is_named_not_waited_for() {
        let hang = std::future::pending::<Result<(), SwitchoverError>>();
        let e = within(Duration::from_millis(5), "lifting the fence", hang)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "lifting the fence: no answer within 5ms");
    }
}
