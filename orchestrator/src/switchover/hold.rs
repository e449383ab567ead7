//! Hold and Drain: every proxy stops starting transactions (answered at once), then
//! every proxy waits until its sessions are at a transaction boundary.

use super::error::SwitchoverError;
use super::machine::Run;
use super::phase::Phase;
use super::undo::Undo;
use futures_util::future::join_all;
use std::time::{Duration, Instant};
use tracing::warn;

/// Standbys are only a faster move: they get this long at most.
const PREPARE_BUDGET: Duration = Duration::from_secs(5);

impl Run<'_> {
    /// Standby connections to the destination before anyone waits: the flip then
    /// only replays state. Best effort: a failed standby logs in at the flip.
    pub(super) async fn prepare(&mut self) {
        let budget = self.opts.timeout.min(PREPARE_BUDGET);
        let dest = self.dest();
        let prepares = self.proxies.iter().map(|p| p.prepare(&self.run_id, dest, budget));
        for (p, r) in self.proxies.iter().zip(join_all(prepares).await) {
            if let Err(e) = r {
                warn!("{}: standby connections: {e}", p.name());
            }
        }
    }

    /// Hold: new transactions wait on every proxy.
    pub(super) async fn hold(&mut self) -> Result<Phase, SwitchoverError> {
        self.held_at = Some(Instant::now());
        // Recorded before the calls: a proxy that held but whose answer was lost is resumed too.
        self.undo.push(Undo::Resume);
        let holds = self.proxies.iter().map(|p| p.hold(&self.run_id));
        for r in join_all(holds).await {
            self.report.transactions_drained += r?.in_flight;
        }
        Ok(Phase::Drain)
    }

    /// Drain: every session at a transaction boundary, within drain_timeout.
    pub(super) async fn drain(&mut self) -> Result<Phase, SwitchoverError> {
        let budget = self.opts.timeout;
        let drains = self.proxies.iter().map(|p| p.drain(&self.run_id, budget));
        for (p, r) in self.proxies.iter().zip(join_all(drains).await) {
            let drained = r?;
            self.report.sessions_held += drained.sessions;
            if !drained.drained {
                return Err(SwitchoverError::NotDrained {
                    proxy: p.name(),
                    in_flight: drained.in_flight,
                });
            }
        }
        Ok(Phase::Fence)
    }
}
