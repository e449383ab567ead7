//! The switchover's vocabulary and its report: what `POST /switchover` answers,
//! `pgcutover switchover --json` prints and the demo reads.

use serde::{Deserialize, Serialize};

/// Which way the application moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Blue → green over the forward subscription.
    Forward,
    /// Green → blue over the reverse subscription (`pgcutover rollback`).
    Rollback,
}

impl Direction {
    /// The same word serde writes.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Rollback => "rollback",
        }
    }
}

/// A step of the switchover protocol, as reports, metrics and `/status` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Guardrails; nothing is changed.
    Preflight,
    /// Every proxy holds new transactions.
    Hold,
    /// In-flight transactions finish.
    Drain,
    /// The source refuses writes.
    Fence,
    /// The destination applies everything up to the sentinel.
    CatchUp,
    /// Sequences on the destination move past the source's.
    SyncSequences,
    /// Every proxy routes to the destination: the commit point.
    Flip,
    /// Held transactions go on, on the destination.
    Resume,
    /// Completed.
    Done,
    /// Undoing what was changed before the flip.
    RollingBack,
    /// Back as it was.
    RolledBack,
}

impl Phase {
    /// Every phase, in protocol order (the forward path, then the rollback's).
    pub const ALL: [Phase; 11] = [
        Phase::Preflight,
        Phase::Hold,
        Phase::Drain,
        Phase::Fence,
        Phase::CatchUp,
        Phase::SyncSequences,
        Phase::Flip,
        Phase::Resume,
        Phase::Done,
        Phase::RollingBack,
        Phase::RolledBack,
    ];

    /// The metric label: the same word serde writes.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Hold => "hold",
            Phase::Drain => "drain",
            Phase::Fence => "fence",
            Phase::CatchUp => "catch_up",
            Phase::SyncSequences => "sync_sequences",
            Phase::Flip => "flip",
            Phase::Resume => "resume",
            Phase::Done => "done",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// Whether the switchover is over once this phase is reached.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Done | Phase::RolledBack)
    }

    /// Whether the phase leads to the flip (Hold to Flip): the steps an interrupt
    /// can still stop.
    pub fn is_before_flip(self) -> bool {
        matches!(
            self,
            Phase::Hold | Phase::Drain | Phase::Fence | Phase::CatchUp | Phase::SyncSequences | Phase::Flip
        )
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a switchover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The application runs on the new side.
    Completed,
    /// Something failed before the flip: everything is back as it was.
    RolledBack,
    /// The preflight said no; nothing was changed.
    Refused,
    /// `--dry-run`: the preflight passed; nothing was changed.
    DryRun,
    /// Past the commit point, but not every proxy or session is on the new side:
    /// the reason names them.
    Incomplete,
}

impl Outcome {
    /// The metric label: the same word serde writes.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Refused => "refused",
            Outcome::DryRun => "dry_run",
            Outcome::Incomplete => "incomplete",
        }
    }
}

/// One phase and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    /// The phase.
    pub phase: Phase,
    /// Milliseconds.
    pub ms: f64,
}

/// What a switchover did, for the CLI, `POST /switchover` and the demo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was refused or rolled back, or what went wrong after the flip.
    pub reason: Option<String>,
    /// Which way.
    pub direction: Direction,
    /// Per-phase durations, in order.
    pub phases: Vec<PhaseTime>,
    /// From the first hold to the last resume: the longest any client could have waited.
    pub max_hold_ms: f64,
    /// Sessions held at the boundary, over all proxies.
    pub sessions_held: usize,
    /// Sessions that were inside a transaction when the hold began and finished it.
    pub transactions_drained: usize,
    /// Commit LSN of the sentinel transaction per database (`database: lsn`).
    pub cut_lsn: Vec<(String, String)>,
    /// Sequences set on the new side.
    pub sequences_synced: usize,
    /// Sessions that could not move (pinned state), over all proxies.
    pub pinned_sessions: usize,
    /// Sessions moved to the new side, over all proxies.
    pub sessions_moved: usize,
    /// Reverse replication set up at the flip (forward only).
    pub reverse_replication: bool,
    /// Dry run: predicted hold in milliseconds (drain + catch-up estimate).
    pub predicted_hold_ms: Option<f64>,
    /// The proof that nothing but pgcutover committed on the source after the
    /// fence: one line per database, as checked before the commit point.
    #[serde(default)]
    pub cut_proof: Vec<String>,
    /// Every session the flip did not move, on every proxy.
    #[serde(default)]
    pub unmoved_sessions: Vec<crate::UnmovedSession>,
}

impl Report {
    /// An empty report for a run that has not started.
    pub fn new(direction: Direction) -> Report {
        Report {
            outcome: Outcome::Refused,
            reason: None,
            direction,
            phases: Vec::new(),
            max_hold_ms: 0.0,
            sessions_held: 0,
            transactions_drained: 0,
            cut_lsn: Vec::new(),
            sequences_synced: 0,
            pinned_sessions: 0,
            sessions_moved: 0,
            reverse_replication: false,
            predicted_hold_ms: None,
            unmoved_sessions: Vec::new(),
            cut_proof: Vec::new(),
        }
    }

    /// Whether the command succeeded (completed, or a dry run that found nothing blocking).
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Completed | Outcome::DryRun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_the_serde_names() {
        for p in Phase::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::json!(p.name()));
        }
        for o in [
            Outcome::Completed,
            Outcome::RolledBack,
            Outcome::Refused,
            Outcome::DryRun,
            Outcome::Incomplete,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), serde_json::json!(o.name()));
        }
    }
}
