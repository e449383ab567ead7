//! The switchover: moves a live application from one database to the other as a
//! state machine with guardrails, a hard deadline and automatic rollback:
//!
//! `Preflight → Hold → Drain → Fence → CatchUp → SyncSequences → Flip → Resume → Done`,
//! and `RollingBack → RolledBack` from every state before `Flip`.
//!
//! Forward goes blue → green; [`Direction::Rollback`] is the same protocol green →
//! blue over the reverse replication set up at the forward flip.

use pgcutover_proxy::control::Control;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Which way the application moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Blue → green over the forward subscription.
    Forward,
    /// Green → blue over the reverse subscription (`pgcutover rollback`).
    Rollback,
}

/// A proxy instance the switchover drives.
#[derive(Clone)]
pub enum ProxyEndpoint {
    /// The proxy in this process.
    Local(Arc<Control>),
    /// Another instance, through its admin API.
    Remote {
        /// Base URL, e.g. `http://10.0.0.2:9187`.
        url: String,
        /// Bearer token for its mutating calls.
        token: Option<String>,
    },
}

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

/// How a switchover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// One phase and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTime {
    /// `preflight`, `hold`, `drain`, `fence`, `catch_up`, `sync_sequences`, `flip`,
    /// `resume`, `rolling_back`.
    pub phase: &'static str,
    /// Milliseconds.
    pub ms: f64,
}

/// What a switchover did, for the CLI, `POST /switchover` and the demo.
#[derive(Debug, Clone, Serialize)]
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
}
