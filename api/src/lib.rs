//! The admin API as types, shared by the proxy that serves it and the orchestrator
//! that calls it: a field renamed on one side is a compile error on the other. Also
//! the vocabulary both sides speak: [`Side`], [`Phase`], [`Outcome`] and the
//! switchover [`Report`].
//!
//! | endpoint | request | reply |
//! |---|---|---|
//! | `GET /status` | | [`StatusReply`] |
//! | `GET /ready` | | [`ReadyReply`] (200 or 503) |
//! | `POST /prepare` | [`PrepareRequest`] | [`PrepareReply`] |
//! | `POST /hold` | [`HoldRequest`] (optional) | [`HoldReply`] |
//! | `POST /drain` | | [`HoldReply`] |
//! | `POST /route` | [`RouteRequest`] | [`RouteReply`] |
//! | `POST /resume` | | [`ResumeReply`] |
//! | `POST /phase` | [`PhaseUpdate`] | [`PhaseReply`] |
//! | `POST /switchover` | [`SwitchoverRequest`] | [`Report`] |
//!
//! Every refusal is an [`ErrorReply`] (with the endpoint's reply fields, for `/hold`).

#![warn(missing_docs)]

mod control;
mod report;
mod side;

pub use control::{BoxFuture, ProxyControl, ProxyError, RUN_HEADER};
pub use report::{Direction, Outcome, Phase, PhaseTime, Report};
pub use side::{PerSide, Side};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A request body as the admin endpoint reads it: a JSON object, parsed whole as
/// JSON first, then read into `T`. Read straight into `T`, serde would also take
/// an array (a struct's fields by position) and skip over the value of a field `T`
/// ignores checking only its syntax (a lone `\u` surrogate, a number out of range).
pub fn parse_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    T::deserialize(serde_json::Value::Object(object))
}

/// `GET /ready`: whether the proxy should be given new clients: HTTP 200 when it
/// should, 503 while it shuts down or cannot reach the server its route points at
/// (a switchover's hold does not count: held clients wait at the proxy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyReply {
    /// Whether it is ready.
    pub ready: bool,
    /// Where new sessions go.
    pub route: Side,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /status`: where a proxy routes and what its sessions are doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Where new work goes.
    pub route: Side,
    /// Increases with every flip.
    pub epoch: u64,
    /// What the proxy is doing: serving, held, or the phase of a switchover driving it.
    pub phase: ProxyPhase,
    /// How long the current hold has lasted, if held.
    pub held_ms: Option<f64>,
    /// Sessions waiting at a transaction boundary while held.
    pub held_clients: usize,
    /// Sessions inside a transaction.
    pub in_flight: usize,
    /// Client sessions in all.
    pub clients: usize,
    /// Server connections per side.
    pub server_connections: PerSide<usize>,
    /// Backend pids of the proxy's server connections per side, the sessions' and
    /// the idle pooled ones: a fence spares these. Only for a caller presenting the admin token (a pid is what
    /// `pg_terminate_backend` and the fence's list of sessions to spare take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_pids: Option<PerSide<Vec<i32>>>,
    /// The longest a hold lasts on this proxy before it resumes by itself
    /// (`[switchover] timeout`), in milliseconds; 0 from a proxy that does not say.
    #[serde(default)]
    pub hold_limit_ms: u64,
    /// Client sessions per database they connected to (a switchover refuses while
    /// any is on a database it does not replicate).
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, usize>,
    /// Whether its flip closes sessions on databases that are not replicated
    /// (`[switchover] unreplicated_sessions = "close"`) rather than refusing them.
    #[serde(default)]
    pub closes_unreplicated: bool,
}

/// `/status`'s `phase`: a proxy's own state, or the switchover phase it was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyPhase {
    /// Routing normally, nothing held.
    Serving,
    /// Held with no switchover phase reported (a manual `POST /hold`).
    Held,
    /// A switchover driving this proxy is in this phase.
    #[serde(untagged)]
    Switchover(Phase),
}

/// `POST /prepare`: open standby connections to `target` ahead of a flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    /// The side sessions will move to.
    pub target: Side,
}

/// What `POST /prepare` achieved (409 when not every session got a standby).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareReply {
    /// The side the standbys connect to.
    pub target: Side,
    /// Sessions holding a ready standby connection.
    pub ready: usize,
    /// Sessions that need one (those not already on the target).
    pub sessions: usize,
    /// How long it took.
    pub prepare_ms: f64,
}

/// `POST /hold`: hold new transactions, and by default wait for the drain too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// Also wait for in-flight transactions (as `POST /drain`) before answering.
    /// Default true; a switchover holds every proxy first and drains them after.
    #[serde(default = "yes")]
    pub drain: bool,
}

impl Default for HoldRequest {
    fn default() -> Self {
        HoldRequest { drain: true }
    }
}

fn yes() -> bool {
    true
}

/// What `POST /hold` or `POST /drain` found: held, and whether every session drained
/// (409 when not). A hold without drain reports the sessions in a transaction now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldReply {
    /// Always true: the proxy stays held even when the drain fails.
    pub held: bool,
    /// Every session reached a transaction boundary within drain_timeout.
    pub drained: bool,
    /// Sessions still inside a transaction.
    pub in_flight: usize,
    /// Sessions in all.
    pub sessions: usize,
    /// How long the drain took.
    pub drain_ms: f64,
    /// Why the drain failed and what to do, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /route`: move every session to `target` (only while held).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    /// Where sessions go.
    pub target: Side,
    /// An operator's raw route (no run header) skips the fence, the catch-up and
    /// the sequence sync; it is refused unless this is true.
    #[serde(default)]
    pub force: bool,
}

/// What `POST /route` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteReply {
    /// Where sessions go now.
    pub route: Side,
    /// The new route epoch.
    pub epoch: u64,
    /// Sessions on the new side when the flip returned.
    pub moved: usize,
    /// Sessions still on the old one (in a transaction, pinned, or failed to move).
    pub not_moved: usize,
    /// How long moving the sessions took.
    pub flip_ms: f64,
    /// Each session that did not move, and what became of it.
    #[serde(default)]
    pub unmoved: Vec<UnmovedSession>,
}

/// A session a flip did not move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmovedSession {
    /// The proxy it is on (filled in by the switchover; empty in a proxy's reply).
    #[serde(default)]
    pub proxy: String,
    /// The client's user.
    pub user: String,
    /// The client's database.
    pub database: String,
    /// The client's address.
    pub client: String,
    /// The backend pid on the old server.
    pub server_pid: i32,
    /// Why it did not move.
    pub reason: String,
    /// Whether it is still on the old server (else it was closed with a FATAL).
    pub stayed: bool,
    /// Whether `[switchover] pinned_policy` chose its fate (state that cannot move),
    /// rather than a failure (green refused its login, its state did not replay).
    pub by_policy: bool,
}

impl UnmovedSession {
    /// Whether the session spoils a `completed` outcome: it stayed on the old,
    /// fenced server, or it was closed because its move failed.
    pub fn spoils_completion(&self) -> bool {
        self.stayed || !self.by_policy
    }
}

/// What `POST /resume` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeReply {
    /// Always false: new transactions start again.
    pub held: bool,
    /// Where they start.
    pub route: Side,
    /// How long the hold lasted, if there was one.
    pub held_ms: Option<f64>,
}

/// `POST /phase`: the switchover driving a proxy reports its progress, so every
/// proxy shows the phase in `/status` and records the switchover metrics, whoever
/// runs it (the CLI, another proxy's `POST /switchover`, or this one's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseUpdate {
    /// The phase now running; `None` once the switchover is over.
    pub phase: Option<Phase>,
    /// The phase that just ended, and how long it took.
    #[serde(default)]
    pub ended: Option<PhaseTime>,
    /// How the switchover ended, sent once with `phase: None`.
    #[serde(default)]
    pub outcome: Option<Outcome>,
}

/// What `POST /phase` recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseReply {
    /// The phase `/status` shows now.
    pub phase: ProxyPhase,
}

/// `POST /switchover`: run the whole switchover from this proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    /// Run the preflight and predict the hold; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Overrides `[switchover] timeout`, as a human duration (`"30s"`).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A refused or failed call: what went wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The problem and the fix, in one line.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proxy_phase_is_one_flat_string_both_ways() {
        for (phase, text) in [
            (ProxyPhase::Serving, "serving"),
            (ProxyPhase::Held, "held"),
            (ProxyPhase::Switchover(Phase::CatchUp), "catch_up"),
            (ProxyPhase::Switchover(Phase::RollingBack), "rolling_back"),
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), json!(text));
            assert_eq!(serde_json::from_value::<ProxyPhase>(json!(text)).unwrap(), phase);
        }
    }

    #[test]
    fn requests_refuse_unknown_fields_and_bad_sides() {
        assert!(serde_json::from_value::<RouteRequest>(json!({"target": "green"})).is_ok());
        assert!(serde_json::from_value::<RouteRequest>(json!({"target": "purple"})).is_err());
        assert!(serde_json::from_value::<RouteRequest>(json!({"target": "green", "x": 1})).is_err());
        assert!(serde_json::from_value::<SwitchoverRequest>(json!({"dry_run": true})).is_ok());
    }

    #[test]
    fn request_bodies_are_json_objects() {
        assert_eq!(
            parse_request::<RouteRequest>(br#"{"target": "green"}"#).unwrap().target,
            Side::Green
        );
        // serde alone reads an array into a struct, field by field.
        assert!(serde_json::from_slice::<RouteRequest>(br#"["green"]"#).is_ok());
        let e = parse_request::<RouteRequest>(br#"["green"]"#).unwrap_err();
        assert!(e.to_string().contains("expected a map"), "{e}");
        for not_an_object in [&b"null"[..], b"\"green\"", b"1", b""] {
            assert!(parse_request::<SwitchoverRequest>(not_an_object).is_err());
        }
        // A value PhaseTime ignores is still checked as JSON: the three bodies
        // serde_json alone accepted (protocol/fuzz/regressions/admin_request/).
        for not_json in [
            &b"{\"ended\":{\"phase\":\"catch_up\",\"\":\"\x98\",\"ms\":5}}"[..],
            br#"{"ended":{"phase":"catch_up","":"\ud800","ms":2}}"#,
            br#"{"ended":{"phase":"catch_up","":3e833,"ms":2}}"#,
        ] {
            assert!(serde_json::from_slice::<PhaseUpdate>(not_json).is_ok());
            assert!(parse_request::<PhaseUpdate>(not_json).is_err());
        }
    }
}
