//! `[switchover]`: the bounds of hold, drain and flip, and what happens to stragglers.

use crate::HumanDuration;
use serde::Deserialize;
use std::time::Duration;

/// `[switchover]`: the proxy's part of a switchover.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwitchoverConfig {
    /// Longest a hold may last; the proxy resumes by itself after it. Default `30s`.
    pub timeout: HumanDuration,
    /// How long `POST /hold` waits for in-flight transactions to finish. Default `10s`.
    pub drain_timeout: HumanDuration,
    /// What a drain that times out does. Default `abort`.
    pub drain_policy: DrainPolicy,
    /// With `drain_policy = "cancel"`: how long cancelled stragglers get to end their
    /// transactions before they are closed. Default `2s`.
    pub drain_cancel_grace: HumanDuration,
    /// What happens to a session whose state cannot move (temporary tables, session
    /// advisory locks, WITH HOLD cursors). Default `close`.
    pub pinned_policy: PinnedPolicy,
    /// The switchover starts only while every slot's lag is at most this many bytes.
    /// Default 16777216 (16 MiB).
    pub max_lag_bytes: u64,
    /// Set up replication green → blue at the flip, so `rollback` loses nothing.
    /// Default `true`.
    pub reverse_replication: bool,
    /// What the flip does with a session on a database outside `[replication]
    /// databases`, which would otherwise land on the destination's database of that
    /// name. Default `refuse`: the switchover does not start while there is one.
    pub unreplicated_sessions: UnreplicatedPolicy,
}

impl Default for SwitchoverConfig {
    fn default() -> Self {
        SwitchoverConfig {
            timeout: HumanDuration(Duration::from_secs(30)),
            drain_timeout: HumanDuration(Duration::from_secs(10)),
            drain_policy: DrainPolicy::Abort,
            drain_cancel_grace: HumanDuration(Duration::from_secs(2)),
            pinned_policy: PinnedPolicy::Close,
            max_lag_bytes: 16 * 1024 * 1024,
            reverse_replication: true,
            unreplicated_sessions: UnreplicatedPolicy::Refuse,
        }
    }
}

/// What a drain that times out does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainPolicy {
    /// Report failure and stay held; the caller resumes (or retries).
    Abort,
    /// Cancel the stragglers' running queries; after `drain_cancel_grace`, close the
    /// sessions still in a transaction with FATAL 57P01 naming the switchover.
    Cancel,
}

/// What happens to a session whose state cannot move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinnedPolicy {
    /// Close it with a FATAL naming the state that pinned it.
    Close,
    /// Leave it on the old target; the flip reports it.
    Wait,
}

/// What happens to a session on a database that is not replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnreplicatedPolicy {
    /// The switchover's preflight refuses while such a session exists, naming it.
    Refuse,
    /// The flip closes it with FATAL 57P01 naming the database; the report lists it.
    Close,
}

impl UnreplicatedPolicy {
    /// The name in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            UnreplicatedPolicy::Refuse => "refuse",
            UnreplicatedPolicy::Close => "close",
        }
    }
}
