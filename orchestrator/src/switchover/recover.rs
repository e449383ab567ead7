//! Recovery of a run that died (`kill -9`, a lost machine): the journal shows it,
//! an entry with no outcome while nobody holds the run lock. Before its commit point
//! (the journal's route is still the source) it is undone exactly as a rollback
//! would: the changes its journal row lists, newest first, each undo idempotent. After
//! it, it is finished: every proxy routed to the destination and resumed, the
//! replication it retired disabled. A recovery that dies is recovered in turn.

use super::error::SwitchoverError;
use super::flip::retire_subscription;
use super::machine::Run;
use super::phase::Phase;
use super::undo::Undo;
use super::SwitchoverOptions;
use crate::journal::{self, Entry};
use crate::progress::Progress;
use crate::reverse;
use crate::targets::{Side, Targets};
use futures_util::future::join_all;
use pgcutover_api::{Direction, Outcome, ProxyControl, Report};
use pgcutover_config::Config;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// How long the journal of each side gets to answer.
const READ: Duration = Duration::from_secs(5);

/// Finds a dead run in the journal and finishes or undoes it. `None` when there is
/// none (or another process holds the run lock: it is running, or recovering).
pub async fn recover(
    targets: &Targets,
    config: &Config,
    proxies: &[Arc<dyn ProxyControl>],
    progress: &Progress,
) -> Result<Option<Report>, SwitchoverError> {
    let Some(dead) = journal::current(targets, READ).await?.dead_run().cloned() else {
        return Ok(None);
    };
    let direction = match dead.direction.as_str() {
        "rollback" => Direction::Rollback,
        _ => Direction::Forward,
    };
    let opts = SwitchoverOptions {
        direction,
        timeout: config.switchover.timeout.0,
        dry_run: false,
    };
    let mut run = Run::new(targets, config, proxies, &opts, progress);
    run.connect().await?;
    if !run.adopt(&dead).await? {
        return Ok(None);
    }
    progress.line(format!(
        "recover: run {} by {} died in phase {}; clients belong on {} (epoch {})",
        dead.run_id, dead.holder, dead.phase, dead.route, dead.epoch
    ));
    let phase = Phase::ALL.into_iter().find(|p| p.name() == dead.phase);
    run.enter(phase.unwrap_or(Phase::Preflight));
    let failure = SwitchoverError::DeadRun {
        run_id: dead.run_id.clone(),
        phase: dead.phase.clone(),
    };
    if dead.route == run.source() {
        run.log_the_dead_runs_changes(&dead);
        run.rollback(failure).await;
    } else {
        run.finish_dead_flip(failure).await;
    }
    Ok(Some(run.end().await))
}

impl Run<'_> {
    /// Takes the run lock and checks, under it, that `dead` is still the newest
    /// entry; then the run writes as `dead`'s recoverer. `false`: someone else is at it.
    async fn adopt(&mut self, dead: &Entry) -> Result<bool, SwitchoverError> {
        if !self.lock().await? {
            return Ok(false);
        }
        let now = self.read_journal().await?;
        if now.as_ref() != Some(dead) {
            return Ok(false);
        }
        // The dead run's id: the proxies it holds admit its recoverer.
        self.run_id = dead.run_id.clone();
        self.lease = Some(Entry {
            holder: format!("{} (recovering)", journal::holder()),
            ..dead.clone()
        });
        Ok(true)
    }

    /// The changes the dead run's journal row lists (written before it made
    /// them), so that the rollback undoes them newest first.
    fn log_the_dead_runs_changes(&mut self, dead: &Entry) {
        let listed: Vec<Undo> = dead.undo.iter().filter_map(|u| Undo::decode(u)).collect();
        if listed.len() != dead.undo.len() || listed.is_empty() {
            warn!(undo = ?dead.undo, "recover: the journal's undo log is not this version's; undoing every change a run can make");
            return self.log_every_change_before_the_flip();
        }
        for undo in listed {
            self.undo.push(undo);
        }
    }

    /// Everything a run may have changed before its commit point, in the order it
    /// makes the changes: for a row written before the journal had an undo log.
    fn log_every_change_before_the_flip(&mut self) {
        let (source, dest) = (self.source(), self.dest());
        let reverse = self.wants_reverse();
        let names: Vec<String> = self.dbs.iter().map(|d| d.name.clone()).collect();
        if reverse {
            for database in &names {
                self.undo.push(Undo::DropReversePublication {
                    database: database.clone(),
                });
            }
        }
        self.undo.push(Undo::Resume);
        for database in &names {
            self.undo.push(Undo::Unfence {
                side: source,
                database: database.clone(),
            });
        }
        for database in &names {
            if reverse {
                self.undo.push(Undo::DropReverseSlot {
                    database: database.clone(),
                });
            }
            // A rollback run starts from a fenced blue, and lifts it at its flip.
            if self.opts.direction == Direction::Rollback {
                self.undo.push(Undo::Refence {
                    side: dest,
                    database: database.clone(),
                });
            }
        }
    }

    /// Past the commit point: every proxy on the destination and resumed, then the
    /// subscription from the source disabled and, if configured, the reverse one
    /// started. Failures are reported; nothing is undone.
    async fn finish_dead_flip(&mut self, failure: SwitchoverError) {
        self.undo.commit();
        let dest = self.dest();
        let budget = self.opts.timeout;
        let run = self.run_id.as_str();
        let routes = self.proxies.iter().map(|p| async move {
            let status = p.status().await?;
            if status.route == dest {
                return Ok(());
            }
            p.hold(run).await?;
            p.drain(run, budget).await?;
            p.route(run, dest, budget).await.map(|_| ())
        });
        let mut problems = Vec::new();
        for (p, r) in self.proxies.iter().zip(join_all(routes).await) {
            if let Err(e) = r {
                problems.push(format!("{}: {e}", p.name()));
            }
        }
        self.resume_all().await;
        if let Err(e) = self.retire_source_replication().await {
            problems.push(e.to_string());
        }
        self.enter(Phase::Resume);
        self.report.outcome = if problems.is_empty() {
            Outcome::Completed
        } else {
            Outcome::Incomplete
        };
        let mut reason = format!("{failure}: finished past its commit point");
        if !problems.is_empty() {
            reason.push_str(&format!("; {}", problems.join("; ")));
        }
        self.report.reason = Some(reason);
        if let Err(e) = self.go(Phase::Done) {
            warn!("recover: {e}");
        }
    }

    /// Retires the destination's subscription from the source (the source is
    /// fenced: nothing new would come), slot included, and starts the reverse one if
    /// configured.
    async fn retire_source_replication(&mut self) -> Result<(), SwitchoverError> {
        for d in &self.dbs {
            retire_subscription(&d.dest, &self.subscription(&d.name)).await?;
        }
        if self.wants_reverse() {
            for d in &self.dbs {
                if !reverse::subscription_exists(&d.source.client, &d.name).await? {
                    let conninfo = self.targets.conninfo(Side::Green, &d.name);
                    reverse::create_subscription(&d.source.client, &d.name, &conninfo).await?;
                }
            }
            self.report.reverse_replication = true;
        }
        Ok(())
    }
}
