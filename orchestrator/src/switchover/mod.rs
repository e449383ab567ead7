//! The switchover: moves a live application from one database to the other as a
//! state machine with guardrails, a hard deadline and automatic rollback:
//!
//! `Preflight → Hold → Drain → Fence → CatchUp → SyncSequences → Flip → Resume → Done`,
//! and `RollingBack → RolledBack` from every state before `Flip`.
//!
//! Forward goes blue → green; [`Direction::Rollback`] is the same protocol green →
//! blue over the reverse replication set up at the forward flip.

pub use crate::{reverse_subscription_name, REVERSE_PUBLICATION};
pub use pgcutover_api::{BoxFuture, ProxyControl, ProxyError};
pub use pgcutover_api::{Direction, Outcome, PhaseTime, Report};
pub use proxies::RemoteProxy;
use std::sync::Arc;
use std::time::Duration;

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

pub(crate) mod database;
mod proxies;

use proxies::PhaseReporter;

use crate::progress::{human_duration, Progress};
use crate::targets::{Side, Targets};
use crate::{check, replication_status, reverse, subscription_name, CheckStatus};
use database as db;
use futures_util::future::join_all;
use pgcutover_config::Config;
use std::time::Instant;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

/// The switchover's states. Transitions are explicit ([`Phase::may_go_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Preflight,
    Hold,
    Drain,
    Fence,
    CatchUp,
    SyncSequences,
    Flip,
    Resume,
    Done,
    RollingBack,
    RolledBack,
}

impl Phase {
    /// The name reports, metrics and `/status` use (none before the first phase).
    fn api(self) -> Option<pgcutover_api::Phase> {
        use pgcutover_api::Phase as P;
        Some(match self {
            Phase::Idle => return None,
            Phase::Preflight => P::Preflight,
            Phase::Hold => P::Hold,
            Phase::Drain => P::Drain,
            Phase::Fence => P::Fence,
            Phase::CatchUp => P::CatchUp,
            Phase::SyncSequences => P::SyncSequences,
            Phase::Flip => P::Flip,
            Phase::Resume => P::Resume,
            Phase::Done => P::Done,
            Phase::RollingBack => P::RollingBack,
            Phase::RolledBack => P::RolledBack,
        })
    }

    /// The metric / report name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
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

    /// Whether the protocol allows `self → to`: forward one step at a time, and
    /// rollback from any state before the flip (the commit point).
    pub fn may_go_to(self, to: Phase) -> bool {
        use Phase::*;
        matches!(
            (self, to),
            (Idle, Preflight)
                | (Preflight, Hold)
                | (Hold, Drain)
                | (Drain, Fence)
                | (Fence, CatchUp)
                | (CatchUp, SyncSequences)
                | (SyncSequences, Flip)
                | (Flip, Resume)
                | (Resume, Done)
                | (Hold | Drain | Fence | CatchUp | SyncSequences | Flip, RollingBack)
                | (RollingBack, RolledBack)
        )
    }
}

/// What was changed so far, so a rollback undoes exactly that.
#[derive(Debug, Default)]
struct Changed {
    held: bool,
    fenced: bool,
    /// Databases with reverse replication objects (publication at preflight, slot
    /// and subscription at the flip).
    reverse: Vec<String>,
    /// The reverse publication was created by this run (forward only).
    reverse_publication: bool,
    /// Proxies routed to the new side: past this, no rollback.
    routed: bool,
}

/// Per database: the orchestrator's connections to both sides.
struct DbConns {
    name: String,
    source: Client,
    dest: Client,
}

/// One run of the protocol.
struct Run<'a> {
    targets: &'a Targets,
    config: &'a Config,
    proxies: &'a [Arc<dyn ProxyControl>],
    reporter: PhaseReporter,
    opts: &'a SwitchoverOptions,
    progress: &'a Progress,
    phase: Phase,
    phase_started: Instant,
    hold_started: Option<Instant>,
    changed: Changed,
    report: Report,
    dbs: Vec<DbConns>,
    own_pids: Vec<i32>,
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
    let mut run = Run {
        targets,
        config,
        proxies,
        reporter: PhaseReporter::new(proxies),
        opts,
        progress,
        phase: Phase::Idle,
        phase_started: Instant::now(),
        hold_started: None,
        changed: Changed::default(),
        report: Report::new(opts.direction),
        dbs: Vec::new(),
        own_pids: Vec::new(),
    };
    run.go(Phase::Preflight);
    if let Err(reason) = run.preflight().await {
        run.finish_phase();
        run.report.outcome = Outcome::Refused;
        run.report.reason = Some(reason);
        run.cleanup_refused().await;
        return run.end().await;
    }
    if opts.dry_run {
        run.finish_phase();
        run.report.outcome = Outcome::DryRun;
        run.cleanup_refused().await;
        return run.end().await;
    }
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let to_flip = tokio::time::timeout_at(deadline, run.hold_to_flip()).await;
    let failure = match to_flip {
        Ok(Ok(())) => None,
        Ok(Err(reason)) => Some(reason),
        Err(_) => Some(format!(
            "the switchover timeout ({}) expired in phase {}",
            human_duration(opts.timeout),
            run.phase.name()
        )),
    };
    match failure {
        Some(reason) if !run.changed.routed => {
            run.rollback(reason).await;
        }
        other => {
            if let Some(reason) = other {
                // Past the commit point: green serves; report what went wrong.
                warn!("after the flip: {reason}");
                run.report.reason = Some(reason);
            }
            run.go(Phase::Resume);
            run.resume_all().await;
            if run.changed.routed {
                if let Err(e) = run.finish_flip().await {
                    warn!("after the resume: {e}");
                    let before = run.report.reason.take();
                    run.report.reason = Some(before.map_or(e.clone(), |b| format!("{b}; {e}")));
                }
            }
            run.go(Phase::Done);
            run.report.outcome = Outcome::Completed;
        }
    }
    run.end().await
}

impl Run<'_> {
    fn source(&self) -> Side {
        match self.opts.direction {
            Direction::Forward => Side::Blue,
            Direction::Rollback => Side::Green,
        }
    }

    fn dest(&self) -> Side {
        match self.source() {
            Side::Blue => Side::Green,
            Side::Green => Side::Blue,
        }
    }

    /// The subscription on the destination that replicates from the source.
    fn subscription(&self, database: &str) -> String {
        match self.opts.direction {
            Direction::Forward => subscription_name(database),
            Direction::Rollback => reverse_subscription_name(database),
        }
    }

    fn wants_reverse(&self) -> bool {
        self.opts.direction == Direction::Forward && self.config.switchover.reverse_replication
    }

    /// Records the end of the current phase and moves to `to`.
    fn go(&mut self, to: Phase) {
        debug_assert!(self.phase.may_go_to(to), "{:?} -> {:?}", self.phase, to);
        let ended = (self.phase != Phase::Idle).then(|| self.finish_phase());
        self.phase = to;
        self.phase_started = Instant::now();
        self.reporter.report(pgcutover_api::PhaseUpdate {
            phase: to.api(),
            ended,
            outcome: None,
        });
    }

    fn finish_phase(&mut self) -> PhaseTime {
        let took = self.phase_started.elapsed();
        let ended = PhaseTime {
            phase: self
                .phase
                .api()
                .expect("Idle never ends: the run starts with Preflight"),
            ms: took.as_secs_f64() * 1000.0,
        };
        self.report.phases.push(ended.clone());
        info!(phase = self.phase.name(), ms = ended.ms, "switchover phase done");
        self.progress
            .line(format!("switchover {}: {:.1} ms", self.phase.name(), ended.ms));
        ended
    }

    async fn end(mut self) -> Report {
        let ended = matches!(self.phase, Phase::Done | Phase::RolledBack).then(|| self.finish_phase());
        self.reporter.report(pgcutover_api::PhaseUpdate {
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

    /// Guardrails: refuse with reasons, nothing changed (except the reverse
    /// publication, which is dropped again on refusal).
    async fn preflight(&mut self) -> Result<(), String> {
        let (source, dest) = (self.source(), self.dest());
        // Every proxy reachable, and on the source side.
        for p in self.proxies {
            let state = p
                .status()
                .await
                .map_err(|e| format!("{} is not reachable: {e}", p.name()))?;
            if state.route != source {
                return Err(format!(
                    "{} routes to {} already, not {source}: nothing to switch",
                    p.name(),
                    state.route.name()
                ));
            }
        }
        for database in &self.targets.databases {
            let s = self
                .targets
                .connect(source, database)
                .await
                .map_err(|e| e.to_string())?;
            let d = self.targets.connect(dest, database).await.map_err(|e| e.to_string())?;
            for c in [&s, &d] {
                self.own_pids.push(db::backend_pid(c).await?);
            }
            self.dbs.push(DbConns {
                name: database.clone(),
                source: s,
                dest: d,
            });
        }
        debug!(
            ms = self.phase_started.elapsed().as_secs_f64() * 1000.0,
            "preflight: proxies and connections"
        );
        // Lag, drift and `pgcutover check` concern blue → green; the reverse
        // subscription is checked below.
        if self.opts.direction == Direction::Forward {
            let status = replication_status(self.targets, self.config.switchover.max_lag_bytes).await;
            if let Some(d) = status.databases.iter().find(|d| !d.ready) {
                return Err(format!("database {}: {}", d.database, d.verdict));
            }
            debug!(
                ms = self.phase_started.elapsed().as_secs_f64() * 1000.0,
                "preflight: replication status"
            );
            let failing: Vec<String> = check::run_checks(self.targets)
                .await
                .into_iter()
                .filter(|c| c.status == CheckStatus::Fail)
                .map(|c| format!("{}: {}", c.name, c.message))
                .collect();
            if !failing.is_empty() {
                return Err(format!("pgcutover check fails: {}", failing.join("; ")));
            }
        }
        // Subscriptions live and applying (forward: also checked by the status verdict).
        for d in &self.dbs {
            if let Some(problem) = db::subscription_running(&d.dest, &self.subscription(&d.name)).await? {
                let hint = match self.opts.direction {
                    Direction::Forward => "",
                    Direction::Rollback => "; rollback needs the reverse replication set up by a completed switchover with reverse_replication = true",
                };
                return Err(format!("database {}: {problem}{hint}", d.name));
            }
        }
        debug!(
            ms = self.phase_started.elapsed().as_secs_f64() * 1000.0,
            "preflight: checks and subscriptions"
        );
        let drain_timeout = self.config.switchover.drain_timeout.0;
        if let Some(d) = self.dbs.first() {
            let old = db::old_writers(&d.source, drain_timeout).await?;
            if let Some((pid, age, query)) = old.first() {
                return Err(format!(
                    "a transaction on {source} (pid {pid}, open {age:.0} s, {query:?}) is older than drain_timeout ({}): it would not drain; end it or wait",
                    human_duration(drain_timeout)
                ));
            }
        }
        if self.wants_reverse() {
            for d in &self.dbs {
                if reverse::create_publication(&d.dest, &d.name)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    self.changed.reverse_publication = true;
                }
            }
        }
        if self.opts.dry_run {
            // Drain: the longest transaction open now; catch-up: the current lag.
            let mut predicted = 0.0f64;
            if let Some(d) = self.dbs.first() {
                let row = d
                    .source
                    .query_one(
                        "select coalesce(max(extract(epoch from now() - xact_start)), 0)::float8
                           from pg_catalog.pg_stat_activity where backend_xid is not null",
                        &[],
                    )
                    .await
                    .map_err(|e| db::failed("reading open transactions", e))?;
                predicted += row.get::<_, f64>(0).min(drain_timeout.as_secs_f64()) * 1000.0;
            }
            // Fence, sentinel, catch-up, sequences and flip as measured here: tens of ms.
            self.report.predicted_hold_ms = Some(predicted + 100.0);
        }
        Ok(())
    }

    /// Hold → Drain → Fence → CatchUp → SyncSequences → Flip (until routed).
    async fn hold_to_flip(&mut self) -> Result<(), String> {
        let (source, dest) = (self.source(), self.dest());
        let budget = self.opts.timeout;
        // Standby connections to the destination before anyone waits: the flip
        // then only replays state (best effort: a failed standby logs in at the flip).
        // Bounded: a standby that cannot log in (or is slow) is only a slower move.
        let prepare_budget = budget.min(Duration::from_secs(5));
        let prepares = self.proxies.iter().map(|p| p.prepare(dest, prepare_budget));
        for (p, r) in self.proxies.iter().zip(join_all(prepares).await) {
            if let Err(e) = r {
                warn!("{}: standby connections: {e}", p.name());
            }
        }

        self.go(Phase::Hold);
        self.hold_started = Some(Instant::now());
        // Marked before the calls: a proxy that held but whose answer was lost is resumed too.
        self.changed.held = true;
        let holds = self.proxies.iter().map(|p| p.hold());
        for (p, r) in self.proxies.iter().zip(join_all(holds).await) {
            let held = r.map_err(|e| format!("{}: hold: {e}", p.name()))?;
            self.report.transactions_drained += held.in_flight;
        }

        self.go(Phase::Drain);
        let drains = self.proxies.iter().map(|p| p.drain(budget));
        for (p, r) in self.proxies.iter().zip(join_all(drains).await) {
            let drained = r.map_err(|e| format!("{}: drain: {e}", p.name()))?;
            self.report.sessions_held += drained.sessions;
            if !drained.drained {
                return Err(format!(
                    "{}: {} session(s) still inside a transaction after drain_timeout",
                    p.name(),
                    drained.in_flight
                ));
            }
        }

        self.go(Phase::Fence);
        let mut spared = self.own_pids.clone();
        for p in self.proxies {
            let s = p.status().await.map_err(|e| e.to_string())?;
            spared.extend(s.server_pids.get(source));
        }
        let first = self.dbs.first().ok_or("no database to switch")?;
        self.changed.fenced = true;
        let ended = db::fence(&first.source, &spared, Duration::from_secs(2)).await?;
        if ended > 0 {
            self.progress.line(format!(
                "fence: ended {ended} session(s) connected to {source} past the proxies"
            ));
        }
        let mut tokens = Vec::new();
        for i in 0..self.dbs.len() {
            let name = self.dbs[i].name.clone();
            let (token, lsn) = db::write_sentinel(&mut self.dbs[i].source, &name).await?;
            self.report.cut_lsn.push((name, lsn));
            tokens.push(token);
        }

        self.go(Phase::CatchUp);
        for (d, token) in self.dbs.iter().zip(&tokens) {
            while !db::sentinel_arrived(&d.dest, &d.name, *token).await? {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        debug!(
            ms = self.phase_started.elapsed().as_secs_f64() * 1000.0,
            "sentinel arrived"
        );

        self.go(Phase::SyncSequences);
        for d in &self.dbs {
            self.report.sequences_synced += db::sync_sequences(&d.source, &d.dest).await?;
        }

        self.go(Phase::Flip);
        // Green's reverse slot now, before green takes any write, so it holds every
        // one of them; blue subscribes to it after the resume (see finish_flip).
        if self.wants_reverse() {
            for d in &self.dbs {
                self.changed.reverse.push(d.name.clone());
                reverse::create_slot(&d.dest, &d.name)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let dest_conn = &self.dbs[0].dest;
        db::unfence(dest_conn).await?;
        // The commit point: from here on, the destination serves.
        self.changed.routed = true;
        let routes = self.proxies.iter().map(|p| p.route(dest, budget));
        let results = join_all(routes).await;
        let mut problems = Vec::new();
        for (p, r) in self.proxies.iter().zip(results) {
            match r {
                Ok(routed) => {
                    self.report.sessions_moved += routed.moved;
                    self.report.pinned_sessions += routed.not_moved;
                }
                Err(e) => problems.push(format!("{}: {e}", p.name())),
            }
        }
        if !problems.is_empty() {
            return Err(format!(
                "not every proxy moved to {dest} (the fence keeps them from writing to {source}): {}",
                problems.join("; ")
            ));
        }
        Ok(())
    }

    /// After the resume (clients run on the destination): once the source's slot
    /// confirmed the cut, disable the subscription, then subscribe the source to the
    /// reverse slot. Kept out of the hold: the slot's confirmed position follows the
    /// subscriber's flush reports (up to ~1 s with asynchronous apply). The
    /// subscription stays enabled meanwhile; the fenced source sends nothing new.
    async fn finish_flip(&mut self) -> Result<(), String> {
        let step = async {
            let mut unconfirmed = Vec::new();
            for (d, (_, lsn)) in self.dbs.iter().zip(&self.report.cut_lsn) {
                let slot = self.subscription(&d.name);
                let until = Instant::now() + Duration::from_secs(5);
                let mut confirmed = db::slot_confirmed(&d.source, &slot, lsn).await?;
                while !confirmed && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    confirmed = db::slot_confirmed(&d.source, &slot, lsn).await?;
                }
                if !confirmed {
                    unconfirmed.push(format!("{slot} below {lsn}"));
                }
                db::set_subscription(&d.dest, &slot, false).await?;
            }
            if self.wants_reverse() {
                for d in &self.dbs {
                    let conninfo = self.targets.conninfo(Side::Green, &d.name);
                    reverse::create_subscription(&d.source, &d.name, &conninfo)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            if unconfirmed.is_empty() {
                Ok(())
            } else {
                // The data is there (the sentinel proved it); only the slot's record lags.
                Err(format!(
                    "the source's slot did not confirm the cut within 5 s ({}); the subscription is disabled, do not re-enable it",
                    unconfirmed.join(", ")
                ))
            }
        };
        tokio::time::timeout(Duration::from_secs(30), step)
            .await
            .unwrap_or_else(|_| Err("finishing the flip took over 30 s".into()))?;
        self.report.reverse_replication = self.wants_reverse();
        Ok(())
    }

    async fn resume_all(&mut self) {
        let resumes = self.proxies.iter().map(|p| p.resume());
        for (p, r) in self.proxies.iter().zip(join_all(resumes).await) {
            if let Err(e) = r {
                warn!(
                    "{}: resume: {e} (its hold ends by itself after the switchover timeout)",
                    p.name()
                );
            }
        }
        if let Some(t) = self.hold_started {
            self.report.max_hold_ms = t.elapsed().as_secs_f64() * 1000.0;
        }
    }

    /// Undoes what was changed before the flip and resumes everyone on the source.
    /// Uses fresh connections, each step bounded: the run's own connections may be
    /// stuck in the statement the timeout interrupted, and a server may be down.
    async fn rollback(&mut self, reason: String) {
        warn!("switchover rolls back: {reason}");
        self.go(Phase::RollingBack);
        let mut problems = Vec::new();
        let names: Vec<String> = self.dbs.iter().map(|d| d.name.clone()).collect();
        for (i, name) in names.iter().enumerate() {
            let source = self.fresh(self.source(), name).await;
            let dest = self.fresh(self.dest(), name).await;
            let step = async {
                if self.changed.reverse.contains(name) || self.changed.reverse_publication {
                    drop_reverse(source.as_ref()?, dest.as_ref()?, name, self.changed.reverse_publication).await?;
                }
                Ok::<(), String>(())
            };
            if let Err(e) = bounded(step).await {
                problems.push(format!("{name}: {e}"));
            }
            if i == 0 && self.changed.fenced {
                let unfence = async { db::unfence(source.as_ref()?).await };
                if let Err(e) = bounded(unfence).await {
                    problems.push(format!("lifting the fence on {}: {e}", self.source()));
                }
            }
        }
        if self.changed.held {
            self.resume_all().await;
        }
        self.go(Phase::RolledBack);
        self.report.outcome = Outcome::RolledBack;
        self.report.reason = Some(if problems.is_empty() {
            reason
        } else {
            format!("{reason}; the rollback itself hit: {}", problems.join("; "))
        });
    }

    /// A new admin connection for cleanup.
    async fn fresh(&self, side: Side, database: &str) -> Result<Client, String> {
        bounded(async { self.targets.connect(side, database).await.map_err(|e| e.to_string()) }).await
    }

    /// A refused or dry run drops the reverse publication it created.
    async fn cleanup_refused(&mut self) {
        if self.changed.reverse_publication {
            for d in &self.dbs {
                if let Err(e) = drop_reverse(&d.source, &d.dest, &d.name, true).await {
                    warn!("dropping the reverse publication again: {e}");
                }
            }
        }
    }
}

/// Drops what reverse replication created for `database` (idempotent).
async fn drop_reverse(blue: &Client, green: &Client, database: &str, publication: bool) -> Result<(), String> {
    reverse::drop_subscription_and_slot(blue, green, database)
        .await
        .map_err(|e| e.to_string())?;
    if publication {
        reverse::drop_publication(green, database)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A cleanup step gets this long; past it the report names what was not undone.
const CLEANUP_STEP: Duration = Duration::from_secs(10);

async fn bounded<T>(step: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(CLEANUP_STEP, step)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}", human_duration(CLEANUP_STEP))))
}

/// The report as the CLI prints it.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "switchover ({}) {}{}\n",
        match r.direction {
            Direction::Forward => "blue -> green",
            Direction::Rollback => "green -> blue",
        },
        r.outcome.name(),
        r.reason.as_deref().map(|x| format!(": {x}")).unwrap_or_default()
    );
    for p in &r.phases {
        out.push_str(&format!("  {:<16} {:>9.1} ms\n", p.phase.name(), p.ms));
    }
    out.push_str(&format!(
        "  clients held at most {:.1} ms; sessions held {}, in a transaction at the hold {}, moved {}, not moved {}\n",
        r.max_hold_ms, r.sessions_held, r.transactions_drained, r.sessions_moved, r.pinned_sessions
    ));
    for (db, lsn) in &r.cut_lsn {
        out.push_str(&format!("  cut (sentinel commit) in {db}: {lsn}\n"));
    }
    out.push_str(&format!("  sequences synced: {}\n", r.sequences_synced));
    if r.reverse_replication {
        out.push_str(
            "  reverse replication green -> blue is running: `pgcutover rollback` goes back without losing writes\n",
        );
    }
    if let Some(ms) = r.predicted_hold_ms {
        out.push_str(&format!(
            "  predicted hold: about {ms:.0} ms (drain + fence, catch-up, sequences, flip)\n"
        ));
    }
    out
}
