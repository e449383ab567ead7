//! Hold, drain, flip and resume: the cutover core's controls. This is the one owner
//! of the route and the hold gate; sessions only watch them, and report back through
//! the session registry.

use crate::metrics::Metrics;
use crate::registry::{SessionHandle, SessionRegistry};
use crate::route::Route;
use pgcutover_api::Side;
use pgcutover_api::{
    HoldReply, PerSide, Phase, PhaseReply, PhaseUpdate, PrepareReply, ProxyPhase, ResumeReply, RouteReply, StatusReply,
};
use pgcutover_config::{DrainPolicy, SwitchoverConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// Whether new transactions may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// New transactions wait.
    pub held: bool,
    /// Which hold this is; a timer only releases the hold it was started for.
    pub generation: u64,
}

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
}

/// The proxy's cutover controls, shared by sessions (as watchers) and the admin API.
pub struct Control {
    route: watch::Sender<Route>,
    gate: watch::Sender<Gate>,
    standby: watch::Sender<Option<Side>>,
    /// Bumped to make sessions look at their termination requests.
    kick: watch::Sender<u64>,
    sessions: Arc<SessionRegistry>,
    generations: AtomicU64,
    held_since: Mutex<Option<Instant>>,
    /// The phase of the switchover driving this proxy, as it last reported.
    phase: Mutex<Option<Phase>>,
    /// Hold limit (`timeout`) and drain settings.
    settings: SwitchoverConfig,
    has_green: bool,
    metrics: Arc<Metrics>,
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
            route: watch::Sender::new(Route {
                target: Side::Blue,
                epoch: 0,
            }),
            gate: watch::Sender::new(Gate {
                held: false,
                generation: 0,
            }),
            standby: watch::Sender::new(None),
            kick: watch::Sender::new(0),
            sessions,
            generations: AtomicU64::new(0),
            held_since: Mutex::new(None),
            phase: Mutex::new(None),
            settings,
            has_green,
            metrics,
        })
    }

    /// Watches the route.
    pub fn watch_route(&self) -> watch::Receiver<Route> {
        self.route.subscribe()
    }

    /// Watches the hold gate.
    pub fn watch_gate(&self) -> watch::Receiver<Gate> {
        self.gate.subscribe()
    }

    /// Watches for termination requests (drain_policy = cancel).
    pub fn watch_kick(&self) -> watch::Receiver<u64> {
        self.kick.subscribe()
    }

    /// Watches which target sessions should hold a standby connection to.
    pub fn watch_standby(&self) -> watch::Receiver<Option<Side>> {
        self.standby.subscribe()
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
        self.standby.send_replace(Some(target));
        info!(target = target.name(), "prepare: sessions open standby connections");
        let control = self.clone();
        let max = self.settings.timeout.0;
        tokio::spawn(async move {
            tokio::time::sleep(max).await;
            if *control.standby.borrow() == Some(target) && !control.is_held() && control.route().target != target {
                info!(
                    "standby connections to {} dropped: no flip within {max:?}",
                    target.name()
                );
                control.standby.send_replace(None);
            }
        });
        Ok(self
            .wait_for_sessions(timeout, |handles| {
                let needing: Vec<_> = handles.iter().filter(|h| h.target() != target).collect();
                let ready = needing.iter().filter(|h| h.standby_ready()).count();
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
        *self.route.borrow()
    }

    /// Whether new transactions are held.
    pub fn is_held(&self) -> bool {
        self.gate.borrow().held
    }

    /// How long the current hold has lasted.
    pub fn held_for(&self) -> Option<Duration> {
        self.held_since.lock().expect("hold lock").map(|t| t.elapsed())
    }

    /// The proxy's state now.
    pub fn status(&self) -> Status {
        let handles = self.sessions.handles();
        let in_flight = handles.iter().filter(|h| h.in_transaction()).count();
        let held = self.is_held();
        let on = |t: Side| handles.iter().filter(|h| h.target() == t).count();
        Status {
            route: self.route(),
            held,
            held_ms: self.held_for().map(|d| d.as_secs_f64() * 1000.0),
            clients: handles.len(),
            in_flight,
            held_clients: if held { handles.len() - in_flight } else { 0 },
            blue_servers: on(Side::Blue),
            green_servers: on(Side::Green),
        }
    }

    /// The state as `GET /status` and `SHOW STATUS` show it: the one status view.
    pub fn status_reply(&self) -> StatusReply {
        let s = self.status();
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
            server_pids: Some(PerSide::from_fn(|side| self.server_pids(side))),
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

    /// Backend pids of the sessions' server connections on `target`: the
    /// orchestrator's fence spares these (they are held, and move at the flip).
    pub fn server_pids(&self, target: Side) -> Vec<i32> {
        let handles = self.sessions.handles();
        handles
            .iter()
            .filter(|h| h.target() == target)
            .map(|h| h.server_pid())
            .collect()
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
    /// clients forever.
    pub fn hold(self: &Arc<Self>) {
        if self.is_held() {
            return;
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.held_since.lock().expect("hold lock") = Some(Instant::now());
        self.gate.send_replace(Gate { held: true, generation });
        info!(generation, "hold: new transactions wait");
        let control = self.clone();
        let max_hold = self.settings.timeout.0;
        tokio::spawn(async move {
            tokio::time::sleep(max_hold).await;
            if control.gate.borrow().generation == generation && control.is_held() {
                warn!(
                    "hold released after {max_hold:?} (switchover timeout) without a resume: clients go on on {}",
                    control.route().target.name()
                );
                control.resume();
            }
        });
    }

    /// Lets held transactions start, wherever the route points now.
    /// Returns how long the hold lasted, if there was one.
    pub fn resume(&self) -> Option<Duration> {
        let held_for = self.held_since.lock().expect("hold lock").take().map(|t| t.elapsed());
        self.gate.send_modify(|g| g.held = false);
        // Standbys have served their flip, or the switchover was called off.
        self.standby.send_if_modified(|s| s.take().is_some());
        if let Some(d) = held_for {
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
        held_for
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
        for h in &stragglers {
            if let Err(e) = h.send_cancel().await {
                warn!("could not cancel a straggler's query: {e}");
            }
        }
        let after_cancel = self.wait_drained(grace).await;
        if !after_cancel.drained {
            for h in stragglers.iter().filter(|h| h.in_transaction()) {
                h.request_termination();
            }
            self.kick.send_modify(|k| *k += 1);
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
    async fn wait_for_sessions<R>(
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

    /// Routes every session to `target` (only while held) and waits, up to
    /// `timeout`, until the sessions at a boundary have moved.
    pub async fn flip(&self, target: Side, timeout: Duration) -> Result<FlipReport, ControlError> {
        if !self.is_held() {
            return Err(ControlError::NotHeld);
        }
        if target == Side::Green && !self.has_green {
            return Err(ControlError::NoGreen);
        }
        let started = Instant::now();
        let mut epoch = 0;
        self.route.send_modify(|r| {
            r.target = target;
            r.epoch += 1;
            epoch = r.epoch;
        });
        self.metrics.route_flipped(target);
        info!(target = target.name(), epoch, "flip");
        let report = self
            .wait_for_sessions(timeout, |handles| {
                let moved = handles.iter().filter(|h| h.epoch() == epoch).count();
                // Sessions inside a transaction move at their next boundary, after the flip returns.
                let waiting = handles
                    .iter()
                    .filter(|h| h.epoch() != epoch && h.declined() != epoch && !h.in_transaction())
                    .count();
                let report = FlipReport {
                    target,
                    epoch,
                    moved,
                    not_moved: handles.len() - moved,
                    waited: started.elapsed(),
                };
                (waiting == 0, report)
            })
            .await;
        info!(
            moved = report.moved,
            not_moved = report.not_moved,
            ms = report.waited.as_millis() as u64,
            "flip done"
        );
        Ok(report)
    }
}
