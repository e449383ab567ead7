//! Waiting for sessions: until none is inside a transaction (the drain), or
//! until any condition over every session's status holds (flip, prepare).

use super::Control;
use crate::registry::{Order, SessionHandle};
use pgcutover_config::DrainPolicy;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tracing::warn;

/// What a drain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Every session reached a transaction boundary in time.
    pub drained: bool,
    /// Sessions still inside a transaction when the drain ended.
    pub in_flight: usize,
    /// Sessions in all.
    pub sessions: usize,
    /// How long the drain took.
    pub waited: Duration,
}

impl Control {
    /// Waits until no session is inside a transaction, up to `timeout`. With
    /// [`DrainPolicy::Cancel`], stragglers are then cancelled and, after `grace`,
    /// closed, and the drain waits for them to be gone.
    pub async fn drain(&self, timeout: Duration, policy: DrainPolicy, grace: Duration) -> DrainReport {
        let report = self.wait_drained(timeout).await;
        if report.drained || policy == DrainPolicy::Abort {
            return report;
        }
        let stragglers: Vec<_> = self
            .sessions
            .handles()
            .into_iter()
            .filter(|h| h.in_transaction())
            .collect();
        warn!(
            sessions = stragglers.len(),
            "drain_timeout passed: cancelling the stragglers' queries (drain_policy = cancel)"
        );
        cancel_all(&stragglers).await;
        let after_cancel = self.wait_drained(grace).await;
        if !after_cancel.drained {
            for h in stragglers.iter().filter(|h| h.in_transaction()) {
                h.order(Order::EndTransaction);
            }
        }
        let mut last = self.wait_drained(grace).await;
        last.waited = report.waited + after_cancel.waited + last.waited;
        last
    }

    async fn wait_drained(&self, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        let report = self
            .wait_for_sessions(timeout, |handles| {
                let in_flight = handles.iter().filter(|h| h.in_transaction()).count();
                let report = DrainReport {
                    drained: in_flight == 0,
                    in_flight,
                    sessions: handles.len(),
                    waited: started.elapsed(),
                };
                (report.drained, report)
            })
            .await;
        self.metrics.drain_seconds.observe(report.waited.as_secs_f64());
        report
    }

    /// Re-evaluates `check` over every session's handle each time one changes, until
    /// it says done or `timeout` passes; returns its last report.
    pub(super) async fn wait_for_sessions<R>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&[Arc<SessionHandle>]) -> (bool, R),
    ) -> R {
        let deadline = tokio::time::Instant::now() + timeout;
        let watch = self.sessions.watch();
        loop {
            // Registered before the check, so a change between the two is not missed.
            let changed = watch.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (done, report) = check(&self.sessions.handles());
            if done || tokio::time::Instant::now() >= deadline {
                return report;
            }
            let _ = tokio::time::timeout_at(deadline, changed).await;
        }
    }
}

/// Cancels every straggler's query at once: one unreachable server must not
/// delay the others' cancels (each is bounded on its own).
async fn cancel_all(stragglers: &[Arc<SessionHandle>]) {
    let mut cancels = JoinSet::new();
    for h in stragglers {
        let h = h.clone();
        cancels.spawn(async move { h.send_cancel().await });
    }
    while let Some(done) = cancels.join_next().await {
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("could not cancel a straggler's query: {e}"),
            Err(e) => warn!("could not cancel a straggler's query: {e}"),
        }
    }
}
