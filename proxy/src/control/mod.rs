//! Hold, drain, flip and resume: the cutover core's controls. This is the one owner
//! of the [`Cutover`] state (route, hold gate, standby wish); sessions only watch
//! it, and report back through the session registry.

mod cutover;
mod drain;
pub mod lease;

pub use cutover::{Cutover, Gate};
pub use drain::DrainReport;

use crate::metrics::Metrics;
use crate::registry::{SessionRegistry, SessionStatus};
use crate::route::Route;
pub use lease::{Call, Caller};
use lease::{LeaseState, Leased};
use pgcutover_api::{
    HoldReply, PerSide, Phase, PhaseReply, PhaseUpdate, PrepareReply, ProxyPhase, ResumeReply, RouteReply, StatusReply,
};
use pgcutover_api::{Side, UnmovedSession};
use pgcutover_config::{SwitchoverConfig, UnreplicatedPolicy};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// What a flip did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlipReport {
    /// Where sessions go now.
    pub target: Side,
    /// The new route epoch.
    pub epoch: u64,
    /// Sessions on the new target when the flip returned.
    pub moved: usize,
    /// Sessions still on the old one (in a transaction, pinned, or failed to move).
    pub not_moved: usize,
    /// How long moving the sessions took.
    pub waited: Duration,
    /// The sessions that did not move and said why.
    pub unmoved: Vec<UnmovedSession>,
}

/// What a prepare did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareReport {
    /// The target sessions connected to.
    pub target: Side,
    /// Sessions holding a ready standby connection when the call returned.
    pub ready: usize,
    /// Sessions that need one (those not already on the target).
    pub sessions: usize,
    /// How long it took.
    pub waited: Duration,
}

/// The proxy's state at one moment, for the admin API and console.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The route.
    pub route: Route,
    /// Whether new transactions are held.
    pub held: bool,
    /// How long the current hold has lasted, in milliseconds.
    pub held_ms: Option<f64>,
    /// Sessions in all.
    pub clients: usize,
    /// Sessions inside a transaction or with work in flight.
    pub in_flight: usize,
    /// Sessions waiting at a boundary while held.
    pub held_clients: usize,
    /// Server connections on blue.
    pub blue_servers: usize,
    /// Server connections on green.
    pub green_servers: usize,
}

impl From<DrainReport> for HoldReply {
    fn from(r: DrainReport) -> HoldReply {
        HoldReply {
            held: true,
            drained: r.drained,
            in_flight: r.in_flight,
            sessions: r.sessions,
            drain_ms: millis(r.waited),
            error: None,
        }
    }
}

impl From<FlipReport> for RouteReply {
    fn from(r: FlipReport) -> RouteReply {
        RouteReply {
            route: r.target,
            epoch: r.epoch,
            moved: r.moved,
            not_moved: r.not_moved,
            flip_ms: millis(r.waited),
            unmoved: r.unmoved,
        }
    }
}

impl From<PrepareReport> for PrepareReply {
    fn from(r: PrepareReport) -> PrepareReply {
        PrepareReply {
            target: r.target,
            ready: r.ready,
            sessions: r.sessions,
            prepare_ms: millis(r.waited),
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A control call that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Flips happen only while held, so no transaction is split between servers.
    #[error("the proxy is not held: POST /hold first, so that no transaction is split between servers")]
    NotHeld,
    /// Green is not configured.
    #[error("no [green] url is configured, so there is nothing to route to")]
    NoGreen,
    /// Someone else's hold is in progress: the switchover that holds routes.
    #[error("the proxy is held already: the switchover holding it decides the route")]
    Held,
    /// A switchover run holds the proxy's lease.
    #[error("switchover run {0} is driving this proxy: HOLD, RESUME, /prepare, /drain and /route from anyone else wait until it resumes the proxy (at most [switchover] timeout)")]
    Leased(String),
}

/// The proxy's cutover controls, shared by sessions (as watchers) and the admin API.
pub struct Control {
    /// Route, gate and standby wish: changed only by one closure at a time.
    state: watch::Sender<Cutover>,
    sessions: Arc<SessionRegistry>,
    /// The phase of the switchover driving this proxy, as it last reported.
    phase: Mutex<Option<Phase>>,
    /// Sessions that did not move at the latest flip, by its epoch (each noted by
    /// the session itself, before it closes or stays).
    unmoved: Mutex<Vec<(u64, UnmovedSession)>>,
    /// The switchover run driving the proxy, if any.
    lease: Mutex<LeaseState>,
    /// Hold limit (`timeout`) and drain settings.
    settings: SwitchoverConfig,
    has_green: bool,
    metrics: Arc<Metrics>,
    /// Idle pooled server connections: their backends are this proxy's too (the
    /// fence spares them), though no session is on them.
    pool: std::sync::OnceLock<Arc<crate::pool::Pool>>,
}

impl Control {
    /// Controls starting on blue, released, bounded by `settings` (a hold lasts at
    /// most its `timeout`; drains follow its drain settings).
    pub fn new(
        sessions: Arc<SessionRegistry>,
        settings: SwitchoverConfig,
        has_green: bool,
        metrics: Arc<Metrics>,
    ) -> Arc<Control> {
        Arc::new(Control {
            state: watch::Sender::new(Cutover::new()),
            sessions,
            phase: Mutex::new(None),
            unmoved: Mutex::new(Vec::new()),
            lease: Mutex::new(LeaseState::default()),
            settings,
            has_green,
            metrics,
            pool: std::sync::OnceLock::new(),
        })
    }

    /// Counts the pool's idle backends among the proxy's own in `/status`.
    pub(crate) fn set_pool(&self, pool: Arc<crate::pool::Pool>) {
        let _ = self.pool.set(pool);
    }

    /// Watches the route, the gate and the standby wish: all a session follows.
    pub fn watch(&self) -> watch::Receiver<Cutover> {
        self.state.subscribe()
    }

    /// The cutover state now.
    pub fn cutover(&self) -> Cutover {
        *self.state.borrow()
    }

    /// Waits until the gate is open, at most as long as a hold can last (the
    /// hold's own timer opens it by then).
    pub async fn wait_open(&self) {
        let mut rx = self.watch();
        let _ = tokio::time::timeout(self.settings.timeout.0, rx.wait_for(|c| !c.gate.is_held())).await;
    }

    /// Has every session open a logged-in standby connection to `target` now, so
    /// that a later flip only has to move state, not log in (the login is most of a
    /// move's time). Waits up to `timeout` for them; standbys are dropped at the next
    /// resume, or after the switchover timeout if no flip uses them.
    pub async fn prepare(self: &Arc<Self>, target: Side, timeout: Duration) -> Result<PrepareReport, ControlError> {
        if target == Side::Green && !self.has_green {
            return Err(ControlError::NoGreen);
        }
        let started = Instant::now();
        self.state.send_modify(|c| c.standby = Some(target));
        info!(target = target.name(), "prepare: sessions open standby connections");
        let control = self.clone();
        let max = self.settings.timeout.0;
        let deadline = tokio::time::Instant::now() + max;
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if control.state.send_if_modified(|c| c.drop_unused_standby(target)) {
                info!(
                    "standby connections to {} dropped: no flip within {max:?}",
                    target.name()
                );
            }
        });
        Ok(self
            .wait_for_sessions(timeout, |handles| {
                let needing: Vec<_> = handles
                    .iter()
                    .map(|h| h.status())
                    .filter(|s| s.side != target)
                    .collect();
                let ready = needing.iter().filter(|s| s.standby).count();
                let report = PrepareReport {
                    target,
                    ready,
                    sessions: needing.len(),
                    waited: started.elapsed(),
                };
                (ready == needing.len(), report)
            })
            .await)
    }

    /// The current route.
    pub fn route(&self) -> Route {
        self.state.borrow().route
    }

    /// Whether new transactions are held.
    pub fn is_held(&self) -> bool {
        self.state.borrow().gate.is_held()
    }

    /// How long the current hold has lasted.
    pub fn held_for(&self) -> Option<Duration> {
        match self.state.borrow().gate {
            Gate::Held { since, .. } => Some(since.elapsed()),
            Gate::Open => None,
        }
    }

    /// The proxy's state now.
    pub fn status(&self) -> Status {
        self.status_of(&self.statuses())
    }

    /// Every session's status, each read once.
    fn statuses(&self) -> Vec<SessionStatus> {
        self.sessions.handles().iter().map(|h| h.status()).collect()
    }

    fn status_of(&self, statuses: &[SessionStatus]) -> Status {
        let in_flight = statuses.iter().filter(|s| s.in_transaction()).count();
        let cutover = self.cutover();
        let held = cutover.gate.is_held();
        let on = |t: Side| statuses.iter().filter(|s| s.side == t).count();
        let held_ms = match cutover.gate {
            Gate::Held { since, .. } => Some(millis(since.elapsed())),
            Gate::Open => None,
        };
        Status {
            route: cutover.route,
            held,
            held_ms,
            clients: statuses.len(),
            in_flight,
            held_clients: if held { statuses.len() - in_flight } else { 0 },
            blue_servers: on(Side::Blue),
            green_servers: on(Side::Green),
        }
    }

    /// The state as `GET /status` and `SHOW STATUS` show it: the one status view.
    pub fn status_reply(&self) -> StatusReply {
        // One snapshot for the counts, the pids and the databases, so they describe
        // the same moment.
        let handles = self.sessions.handles();
        let statuses: Vec<SessionStatus> = handles.iter().map(|h| h.status()).collect();
        let s = self.status_of(&statuses);
        let mut databases = std::collections::BTreeMap::new();
        for h in &handles {
            *databases.entry(h.identity.database.clone()).or_default() += 1;
        }
        let pids = |side: Side| {
            let mut pids: Vec<i32> = statuses
                .iter()
                .filter(|st| st.side == side)
                .map(|st| st.server.1.pid)
                .collect();
            if let Some(pool) = self.pool.get() {
                pids.extend(pool.idle_pids(side));
            }
            pids
        };
        StatusReply {
            route: s.route.target,
            epoch: s.route.epoch,
            phase: self.proxy_phase(),
            held_ms: s.held_ms,
            held_clients: s.held_clients,
            in_flight: s.in_flight,
            clients: s.clients,
            server_connections: PerSide {
                blue: s.blue_servers,
                green: s.green_servers,
            },
            server_pids: Some(PerSide::from_fn(pids)),
            hold_limit_ms: self.settings.timeout.0.as_millis() as u64,
            databases,
            closes_unreplicated: self.settings.unreplicated_sessions == UnreplicatedPolicy::Close,
        }
    }

    /// Right after a hold without drain: held, with the sessions in a transaction now.
    pub fn hold_reply(&self) -> HoldReply {
        let s = self.status();
        HoldReply {
            held: s.held,
            drained: s.in_flight == 0,
            in_flight: s.in_flight,
            sessions: s.clients,
            drain_ms: 0.0,
            error: None,
        }
    }

    /// Resumes, as `POST /resume` reports it.
    pub fn resume_reply(&self) -> ResumeReply {
        let held_ms = self.resume().map(millis);
        ResumeReply {
            held: false,
            route: self.route().target,
            held_ms,
        }
    }

    /// Records a switchover's progress report (`POST /phase`, or the in-process
    /// driver): the phase `/status` shows, the phase-duration metrics and, at the
    /// end, the outcome counter.
    pub fn record_phase(&self, update: &PhaseUpdate) -> PhaseReply {
        if let Some(ended) = &update.ended {
            let next = update.phase.filter(|p| !p.is_final()).map(Phase::name);
            let took = Duration::from_secs_f64(ended.ms.max(0.0) / 1000.0);
            self.metrics.switchover_phase(ended.phase.name(), next, took);
        }
        if let Some(outcome) = update.outcome {
            self.metrics.switchover_done(outcome.name());
        }
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = update.phase.filter(|p| !p.is_final());
        PhaseReply {
            phase: self.proxy_phase(),
        }
    }

    /// What `/status` calls the phase: the switchover's, else held or serving.
    pub fn proxy_phase(&self) -> ProxyPhase {
        match *self.phase.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(p) => ProxyPhase::Switchover(p),
            None if self.is_held() => ProxyPhase::Held,
            None => ProxyPhase::Serving,
        }
    }

    /// The proxy's metrics (the orchestrator records switchover phases there).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The registry of live sessions.
    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }

    /// Stops new transactions from starting. The hold ends by itself after
    /// the switchover timeout, so a lost orchestrator cannot stall
    /// clients forever. Holding while held changes nothing (and keeps the first
    /// hold's timer). Returns whether this call started a hold.
    pub fn hold(self: &Arc<Self>) -> bool {
        let mut started = None;
        self.state.send_if_modified(|c| {
            started = c.hold(tokio::time::Instant::now());
            started.is_some()
        });
        let Some(generation) = started else { return false };
        info!(generation, "hold: new transactions wait");
        let control = self.clone();
        let max_hold = self.settings.timeout.0;
        // From now, not from whenever the timer task first runs.
        let deadline = tokio::time::Instant::now() + max_hold;
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let mut held_for = None;
            control.state.send_if_modified(|c| {
                held_for = c.expire(generation, tokio::time::Instant::now());
                held_for.is_some()
            });
            if let Some(d) = held_for {
                warn!(
                    "hold released after {max_hold:?} (switchover timeout) without a resume: clients go on on {}",
                    control.route().target.name()
                );
                control.resumed(d);
            }
        });
        true
    }

    /// Lets held transactions start, wherever the route points now.
    /// Returns how long the hold lasted, if there was one.
    pub fn resume(&self) -> Option<Duration> {
        let mut held_for = None;
        // Standbys have served their flip, or the switchover was called off.
        self.state.send_if_modified(|c| {
            let (held, changed) = c.resume(tokio::time::Instant::now());
            held_for = held;
            changed
        });
        if let Some(d) = held_for {
            self.resumed(d);
        }
        held_for
    }

    /// Accounts for a hold that just ended after `d`.
    fn resumed(&self, d: Duration) {
        // Every session present waited (at most) this long for its next transaction.
        for _ in 0..self.sessions.len() {
            self.metrics.hold_seconds.observe(d.as_secs_f64());
        }
        info!(
            held_ms = d.as_millis() as u64,
            target = self.route().target.name(),
            "resume"
        );
    }

    /// Routes to `target` as a switchover's flip would, without one: hold, drain,
    /// flip, resume. For a proxy that starts, or missed a run, and finds in the
    /// switchover journal that clients belong on `target` (the data is there
    /// already). `None` when the route is `target` already; refused while someone
    /// else holds, so a running switchover is never resumed from here.
    pub async fn follow(self: &Arc<Self>, target: Side) -> Result<Option<FlipReport>, ControlError> {
        if self.route().target == target {
            return Ok(None);
        }
        if target == Side::Green && !self.has_green {
            return Err(ControlError::NoGreen);
        }
        self.admit(Caller::Operator, Call::Hold)?;
        if !self.hold() {
            return Err(ControlError::Held);
        }
        warn!(
            "the switchover journal says clients belong on {}: moving every session there",
            target.name()
        );
        // Flipped whether or not every session drained: those still in a transaction
        // move at its end, like after any flip; their side is fenced already.
        self.drain_configured().await;
        let flipped = self.flip(target, self.settings.timeout.0).await;
        self.resume();
        flipped.map(Some)
    }

    /// Holds, then drains with the configured `drain_timeout`, `drain_policy` and
    /// `drain_cancel_grace`: what every front end (HTTP, SQL console) means by HOLD.
    pub async fn hold_and_drain(self: &Arc<Self>) -> DrainReport {
        self.hold();
        self.drain_configured().await
    }

    /// Drains with the configured `drain_timeout`, `drain_policy` and
    /// `drain_cancel_grace` (after a [`hold`](Self::hold)).
    pub async fn drain_configured(&self) -> DrainReport {
        let s = &self.settings;
        self.drain(s.drain_timeout.0, s.drain_policy, s.drain_cancel_grace.0)
            .await
    }

    /// Routes every session to `target` (only while held) and waits, up to
    /// `timeout`, until the sessions at a boundary have moved.
    pub async fn flip(&self, target: Side, timeout: Duration) -> Result<FlipReport, ControlError> {
        if target == Side::Green && !self.has_green {
            return Err(ControlError::NoGreen);
        }
        let started = Instant::now();
        let mut flipped = Err(cutover::NotHeld);
        // The check and the flip are one step: a resume cannot slip in between.
        self.state.send_if_modified(|c| {
            flipped = c.flip(target);
            flipped.is_ok()
        });
        let epoch = flipped.map_err(|_| ControlError::NotHeld)?;
        self.unmoved_lock().retain(|(e, _)| *e >= epoch);
        self.metrics.route_flipped(target);
        info!(target = target.name(), epoch, "flip");
        let mut report = self
            .wait_for_sessions(timeout, |handles| {
                let statuses: Vec<_> = handles.iter().map(|h| h.status()).collect();
                let moved = statuses.iter().filter(|s| s.epoch == epoch).count();
                // Sessions inside a transaction move at their next boundary, after the flip returns.
                let waiting = statuses
                    .iter()
                    .filter(|s| s.epoch != epoch && s.declined != Some(epoch) && !s.in_transaction())
                    .count();
                let report = FlipReport {
                    target,
                    epoch,
                    moved,
                    not_moved: handles.len() - moved,
                    unmoved: Vec::new(),
                    waited: started.elapsed(),
                };
                (waiting == 0, report)
            })
            .await;
        report.unmoved = self
            .unmoved_lock()
            .iter()
            .filter(|(e, _)| *e == epoch)
            .map(|(_, u)| u.clone())
            .collect();
        info!(
            moved = report.moved,
            not_moved = report.not_moved,
            closed_or_stayed = report.unmoved.len(),
            ms = report.waited.as_millis() as u64,
            "flip done"
        );
        Ok(report)
    }

    /// Whether `caller` may make `call` now: while a run holds the lease only it
    /// may (see [`lease`]). The admin API, the console and the in-process proxy
    /// ask before every mutating call.
    pub fn admit(&self, caller: Caller<'_>, call: Call) -> Result<(), ControlError> {
        let now = tokio::time::Instant::now();
        let mut lease = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        lease
            .admit(caller, call, now, self.settings.timeout.0)
            .map_err(|Leased(run)| ControlError::Leased(run))
    }

    /// The run holding the lease now, if any.
    pub fn lease_holder(&self) -> Option<String> {
        let lease = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        lease.holder(tokio::time::Instant::now()).map(str::to_owned)
    }

    /// A session that did not move at the flip to `epoch` says so (before it
    /// closes, or as it stays), for the flip's report.
    pub(crate) fn note_unmoved(&self, epoch: u64, session: UnmovedSession) {
        self.unmoved_lock().push((epoch, session));
    }

    fn unmoved_lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, UnmovedSession)>> {
        self.unmoved.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
