//! The switchover: moves a live application from one database to the other as a
//! state machine ([`Phase`]) with guardrails, a hard deadline and automatic rollback:
//!
//! `Preflight → Hold → Drain → Fence → CatchUp → SyncSequences → Flip → Resume → Done`,
//! and `RollingBack → RolledBack` from every state before the flip's routing.
//!
//! Each phase has its file; `machine.rs` runs them in order and checks every
//! transition. Changes made before the commit point go into an undo log, which a
//! rollback undoes newest first. Forward goes blue → green; [`Direction::Rollback`]
//! is the same protocol green → blue over the reverse replication set up at the
//! forward flip.

pub use crate::{reverse_subscription_name, REVERSE_PUBLICATION};
pub use error::{Guardrail, SwitchoverError};
pub use peers::{check_peers, resolve_peers, PeerSpec};
pub use pgcutover_api::{BoxFuture, ProxyControl, ProxyError};
pub use pgcutover_api::{Direction, Outcome, PhaseTime, Report};
pub use phase::{IllegalTransition, Phase};
pub use proxies::RemoteProxy;
pub use recover::recover;
pub use report::render;
pub use unfence::{unfence, Unfenced};

mod catch_up;
mod conn;
mod error;
mod fence;
mod flip;
mod hold;
mod lease;
mod machine;
mod peers;
mod phase;
mod preflight;
mod proof;
mod proxies;
mod recover;
mod report;
mod resume;
mod rollback;
mod sequences;
#[cfg(test)]
mod tests;
mod undo;
mod unfence;

use crate::progress::Progress;
use crate::targets::Targets;
use machine::Run;
use pgcutover_config::Config;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// How to run one switchover.
#[derive(Debug, Clone)]
pub struct SwitchoverOptions {
    /// Which way.
    pub direction: Direction,
    /// Hard deadline from Hold to Flip; on expiry everything rolls back.
    pub timeout: Duration,
    /// Run the preflight and predict the hold; change nothing.
    pub dry_run: bool,
}

/// Runs one switchover (or its dry run) and reports what happened. It never
/// panics and never leaves the proxies held: every path ends with them resumed.
pub async fn run(
    targets: &Targets,
    config: &Config,
    proxies: &[Arc<dyn ProxyControl>],
    opts: &SwitchoverOptions,
    progress: &Progress,
) -> Report {
    run_interruptible(targets, config, proxies, opts, progress, None).await
}

/// [`run`], stopped when `interrupt` becomes true: refused if still in Preflight,
/// rolled back at the next phase before the commit point, and finished after it
/// (stopping there would leave clients split between the sides).
pub async fn run_interruptible(
    targets: &Targets,
    config: &Config,
    proxies: &[Arc<dyn ProxyControl>],
    opts: &SwitchoverOptions,
    progress: &Progress,
    interrupt: Option<Arc<AtomicBool>>,
) -> Report {
    let mut run = Run::new(targets, config, proxies, opts, progress);
    run.interrupt = interrupt;
    let preflight = async {
        run.go(Phase::Preflight)?;
        run.preflight().await
    };
    let preflight = preflight.await.and_then(|()| match run.interrupted() {
        true => Err(SwitchoverError::Interrupted {
            phase: Some(Phase::Preflight),
        }),
        false => Ok(()),
    });
    if let Err(refusal) = preflight {
        return stop_before_hold(run, Outcome::Refused, Some(refusal)).await;
    }
    if opts.dry_run {
        return stop_before_hold(run, Outcome::DryRun, None).await;
    }
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let failure = match tokio::time::timeout_at(deadline, run.hold_to_flip()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(SwitchoverError::Timeout {
            phase: run.phase(),
            timeout: opts.timeout,
        }),
    };
    match failure {
        Some(e) if !run.undo.committed() => run.rollback(e).await,
        after_commit => roll_forward(&mut run, after_commit).await,
    }
    run.end().await
}

/// A refusal or a dry run: nothing but the reverse publication can be in the undo
/// log, and nobody was held.
async fn stop_before_hold(mut run: Run<'_>, outcome: Outcome, refusal: Option<SwitchoverError>) -> Report {
    run.finish_phase();
    run.report.outcome = outcome;
    run.report.reason = refusal.map(|e| e.to_string());
    for (what, e) in run.undo_all().await {
        warn!("{what}: {e}");
    }
    run.end().await
}

/// Past the commit point the destination serves: resume, finish the flip, and
/// report whatever went wrong instead of undoing anything.
async fn roll_forward(run: &mut Run<'_>, failure: Option<SwitchoverError>) {
    let every_proxy_routed = !matches!(failure, Some(SwitchoverError::NotRouted { .. }));
    if let Some(e) = failure {
        warn!("after the flip: {e}");
        report::add_reason(&mut run.report, &e);
    }
    // An illegal transition is reported, but the proxies are resumed regardless.
    if let Err(e) = run.go(Phase::Resume) {
        report::add_reason(&mut run.report, &e);
    }
    machine::pause_for_tests(Phase::Resume).await;
    run.resume_all().await;
    if let Err(e) = run.finish_flip().await {
        warn!("after the resume: {e}");
        report::add_reason(&mut run.report, &e);
    }
    if let Err(e) = run.go(Phase::Done) {
        report::add_reason(&mut run.report, &e);
    }
    run.report.outcome = report::outcome_past_commit(&run.report, every_proxy_routed);
}
