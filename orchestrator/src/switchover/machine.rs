//! One run of the protocol: its state, checked transitions (each reported to every
//! proxy and timed in the report), and the loop from Hold to Flip in which each phase
//! does its step and names the phase that follows.

use super::conn::Pair;
use super::error::SwitchoverError;
use super::fence::Cut;
use super::phase::{self, IllegalTransition, Phase};
use super::proxies::PhaseReporter;
use super::undo::UndoLog;
use super::SwitchoverOptions;
use crate::progress::Progress;
use crate::targets::{Side, Targets};
use crate::{reverse_subscription_name, subscription_name};
use pgcutover_api::{Direction, PhaseTime, PhaseUpdate, ProxyControl, Report};
use pgcutover_config::Config;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

/// One run: what it works on, where it is, and what it changed.
pub(super) struct Run<'a> {
    /// Blue, green and the databases.
    pub targets: &'a Targets,
    /// The whole configuration (`[switchover]` mostly).
    pub config: &'a Config,
    /// Every proxy instance.
    pub proxies: &'a [Arc<dyn ProxyControl>],
    /// This run's options.
    pub opts: &'a SwitchoverOptions,
    /// Where progress lines go.
    pub progress: &'a Progress,
    reporter: PhaseReporter,
    /// `None` until Preflight starts.
    phase: Option<Phase>,
    phase_started: Instant,
    /// When the hold was sent, for the report's longest hold.
    pub held_at: Option<Instant>,
    /// Where each database's sentinel committed (Fence on).
    pub cuts: Vec<Cut>,
    /// What to undo if the run fails before the commit point.
    pub undo: UndoLog,
    /// What the run reports.
    pub report: Report,
    /// The run's connections, opened in Preflight.
    pub dbs: Vec<Pair>,
    /// Whether the destination was fenced at Preflight (a rollback re-fences it).
    pub dest_fenced: bool,
    /// The backends of those connections, spared by the fence.
    pub own_pids: Vec<i32>,
    /// The run's journal row as last written; `None` until the run holds the lock.
    pub lease: Option<crate::journal::Entry>,
    /// Set (by a signal handler) when the operator wants the run stopped.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// This run's id: in the journal, and on every mutating proxy call (the
    /// proxies' lease). A recovery takes the dead run's.
    pub run_id: String,
}

impl<'a> Run<'a> {
    /// A run that has not started (idle: no phase yet).
    pub fn new(
        targets: &'a Targets,
        config: &'a Config,
        proxies: &'a [Arc<dyn ProxyControl>],
        opts: &'a SwitchoverOptions,
        progress: &'a Progress,
    ) -> Self {
        Run {
            targets,
            config,
            proxies,
            opts,
            progress,
            reporter: PhaseReporter::new(proxies),
            phase: None,
            phase_started: Instant::now(),
            held_at: None,
            cuts: Vec::new(),
            undo: UndoLog::default(),
            report: Report::new(opts.direction),
            dbs: Vec::new(),
            dest_fenced: false,
            own_pids: Vec::new(),
            lease: None,
            interrupt: None,
            run_id: super::lease::run_id(),
        }
    }

    /// The current phase (`None` before the first).
    pub fn phase(&self) -> Option<Phase> {
        self.phase
    }

    /// Where clients run before the flip.
    pub fn source(&self) -> Side {
        match self.opts.direction {
            Direction::Forward => Side::Blue,
            Direction::Rollback => Side::Green,
        }
    }

    /// Where they run after it.
    pub fn dest(&self) -> Side {
        match self.source() {
            Side::Blue => Side::Green,
            Side::Green => Side::Blue,
        }
    }

    /// The subscription on the destination that replicates from the source.
    pub fn subscription(&self, database: &str) -> String {
        match self.opts.direction {
            Direction::Forward => subscription_name(database),
            Direction::Rollback => reverse_subscription_name(database),
        }
    }

    /// Whether this run sets up reverse replication green → blue.
    pub fn wants_reverse(&self) -> bool {
        self.opts.direction == Direction::Forward && self.config.switchover.reverse_replication
    }

    /// Moves to `to` if the protocol allows it: the phase that ends is timed, and the
    /// change is reported to every proxy in the background.
    pub fn go(&mut self, to: Phase) -> Result<(), SwitchoverError> {
        // An interrupt stops the run at its next step towards the flip; past the
        // commit point (and on the way back) it is too late to stop, so it finishes.
        if self.interrupted() && !self.undo.committed() && to.is_before_flip() {
            return Err(SwitchoverError::Interrupted { phase: self.phase });
        }
        let to = phase::go(self.phase, to)?;
        let ended = self.finish_phase();
        self.phase = Some(to);
        self.phase_started = Instant::now();
        self.reporter.report(PhaseUpdate {
            phase: Some(to),
            ended,
            outcome: None,
        });
        Ok(())
    }

    /// Adopts `phase` without a transition: recovery takes over a dead run where
    /// the journal says it stopped.
    pub fn enter(&mut self, phase: Phase) {
        self.phase = Some(phase);
        self.phase_started = Instant::now();
    }

    /// Whether the operator asked the run to stop.
    pub fn interrupted(&self) -> bool {
        self.interrupt.as_ref().is_some_and(|i| i.load(Ordering::Relaxed))
    }

    /// Records how long the current phase took (nothing before the first).
    pub fn finish_phase(&mut self) -> Option<PhaseTime> {
        let phase = self.phase?;
        let ended = PhaseTime {
            phase,
            ms: self.elapsed_ms(),
        };
        self.report.phases.push(ended.clone());
        info!(phase = phase.name(), ms = ended.ms, "switchover phase done");
        self.progress
            .line(format!("switchover {}: {:.1} ms", phase.name(), ended.ms));
        Some(ended)
    }

    /// Milliseconds since the current phase began.
    pub fn elapsed_ms(&self) -> f64 {
        self.phase_started.elapsed().as_secs_f64() * 1000.0
    }

    /// Hold → Drain → Fence → CatchUp → SyncSequences → Flip: each phase's step names
    /// its successor, and [`Run::go`] checks it. Returns once every proxy is routed.
    pub async fn hold_to_flip(&mut self) -> Result<(), SwitchoverError> {
        // Before anyone waits: a reader of the journal learns a run is under way.
        self.record(Phase::Hold).await?;
        self.prepare().await;
        let mut next = Phase::Hold;
        loop {
            self.go(next)?;
            pause_for_tests(next).await;
            next = match self.phase {
                Some(Phase::Hold) => self.hold().await?,
                Some(Phase::Drain) => self.drain().await?,
                Some(Phase::Fence) => self.fence().await?,
                Some(Phase::CatchUp) => self.catch_up().await?,
                Some(Phase::SyncSequences) => self.sync_sequences().await?,
                Some(Phase::Flip) => return self.flip().await,
                // Only a step naming a phase outside the hold leads here: as much a
                // bug as any illegal transition, and undone like one.
                other => {
                    return Err(IllegalTransition {
                        from: other,
                        to: Phase::Flip,
                    }
                    .into())
                }
            };
        }
    }

    /// Ends the run: the last phase is timed, the outcome reported to every proxy,
    /// and the summary line printed.
    pub async fn end(mut self) -> Report {
        let ended = match self.phase {
            Some(Phase::Done | Phase::RolledBack) => self.finish_phase(),
            _ => None,
        };
        self.record_end().await;
        self.reporter.report(PhaseUpdate {
            phase: None,
            ended,
            outcome: Some(self.report.outcome),
        });
        self.reporter.flush().await;
        let r = &self.report;
        match &r.reason {
            Some(reason) => self.progress.line(format!("switchover {}: {reason}", r.outcome.name())),
            None => self.progress.line(format!(
                "switchover {} (clients held at most {:.0} ms)",
                r.outcome.name(),
                r.max_hold_ms
            )),
        }
        self.report
    }
}

/// A fault point for tests: with `PGCUTOVER_TEST_PAUSE_AT=<phase>[:<seconds>]` in
/// its environment, a run stops on entering that phase (60 s by default; Preflight
/// once its lease is taken), so that a test can kill the process there or act
/// behind its back. Unset (always, outside
/// tests), it costs one lookup.
pub(super) async fn pause_for_tests(phase: Phase) {
    static AT: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let v = std::env::var("PGCUTOVER_TEST_PAUSE_AT").ok()?;
        let (name, secs) = v.split_once(':').unwrap_or((&v, "60"));
        Some((name.to_owned(), secs.parse().unwrap_or(60)))
    });
    if let Some((_, secs)) = at.as_ref().filter(|(name, _)| name == phase.name()) {
        tracing::warn!("PGCUTOVER_TEST_PAUSE_AT: pausing in phase {phase} for {secs} s");
        tokio::time::sleep(std::time::Duration::from_secs(*secs)).await;
    }
}
