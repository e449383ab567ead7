//! The calls a switchover makes on a proxy, as one trait: the orchestrator drives
//! proxies through it, whether a proxy is in this process (the proxy crate implements
//! it for its `Control`) or behind its admin API (the orchestrator's `RemoteProxy`).

use crate::{HoldReply, PhaseUpdate, PrepareReply, ResumeReply, RouteReply, Side, StatusReply};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future borrowing its proxy, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The header a switchover's admin calls carry: its run id. While a run holds a
/// proxy (from its first prepare or hold until its resume, at most the proxy's
/// `[switchover] timeout`), the proxy refuses mutating calls without it.
pub const RUN_HEADER: &str = "pgcutover-run";

/// One proxy instance, as the switchover sees it: each method is one admin call.
/// The mutating calls carry the run's id (`run`), the proxy's lease holder.
pub trait ProxyControl: Send + Sync {
    /// For messages: "proxy http://10.0.0.2:9187", or "this proxy".
    fn name(&self) -> String;
    /// `GET /status`.
    fn status(&self) -> BoxFuture<'_, Result<StatusReply, ProxyError>>;
    /// `POST /prepare`: standby connections to `target`, waiting up to `budget`.
    fn prepare<'a>(
        &'a self,
        run: &'a str,
        target: Side,
        budget: Duration,
    ) -> BoxFuture<'a, Result<PrepareReply, ProxyError>>;
    /// `POST /hold {"drain": false}`: new transactions wait; answers at once.
    fn hold<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<HoldReply, ProxyError>>;
    /// `POST /drain`: waits for in-flight transactions with the proxy's own drain
    /// settings. A drain that times out is a reply with `drained: false`, not an error.
    fn drain<'a>(&'a self, run: &'a str, budget: Duration) -> BoxFuture<'a, Result<HoldReply, ProxyError>>;
    /// `POST /route`: move every session to `target` (while held).
    fn route<'a>(
        &'a self,
        run: &'a str,
        target: Side,
        budget: Duration,
    ) -> BoxFuture<'a, Result<RouteReply, ProxyError>>;
    /// `POST /resume`; ends the run's lease on the proxy.
    fn resume<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<ResumeReply, ProxyError>>;
    /// `POST /phase`: the proxy shows the phase and records the switchover metrics.
    fn report_phase(&self, update: PhaseUpdate) -> BoxFuture<'_, Result<(), ProxyError>>;
}

/// An admin call that did not give the switchover what it needed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection, or it broke.
    #[error("{proxy}: {call}: {reason}")]
    Unreachable {
        /// The proxy.
        proxy: String,
        /// `POST /hold`, ...
        call: &'static str,
        /// The I/O or HTTP error.
        reason: String,
    },
    /// No answer in time.
    #[error("{proxy}: {call}: no answer within {timeout:?}")]
    Timeout {
        /// The proxy.
        proxy: String,
        /// `POST /hold`, ...
        call: &'static str,
        /// The budget that ran out.
        timeout: Duration,
    },
    /// The proxy answered with a refusal.
    #[error("{proxy}: {call} answered {status}: {message}")]
    Refused {
        /// The proxy.
        proxy: String,
        /// `POST /hold`, ...
        call: &'static str,
        /// The HTTP status.
        status: u16,
        /// The proxy's `error`, naming the problem and the fix.
        message: String,
    },
    /// The reply is not what `pgcutover_api` says (a proxy of another version?).
    #[error("{proxy}: {call}: unexpected reply ({reason}); are all proxies the same pgcutover version?")]
    BadReply {
        /// The proxy.
        proxy: String,
        /// `POST /hold`, ...
        call: &'static str,
        /// What did not parse.
        reason: String,
    },
}
