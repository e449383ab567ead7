//! One run at a time, and a journal of it on both sides: the run lock on blue, taken
//! first in Preflight; the run's row, written when it starts, when it holds, at the
//! commit point (the new route, on the destination first) and when it ends.

use super::conn::Conn;
use super::error::{within, Guardrail, SwitchoverError};
use super::machine::Run;
use super::phase::Phase;
use super::undo::Undo;
use crate::journal::{self, At, Entry};
use crate::targets::Side;
use pgcutover_api::Direction;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::warn;

/// A journal write after the run (its connections may be stuck) gets this long.
const LATE_WRITE: Duration = Duration::from_secs(10);

impl<'a> Run<'a> {
    /// Takes the run lock and writes the run's first row, or refuses naming the run
    /// that holds the lock. A run that died (its row unfinished, the lock free) is
    /// named in the progress.
    pub(super) async fn take_lease(&mut self) -> Result<(), SwitchoverError> {
        let got = self.lock().await?;
        let last = self.read_journal().await?;
        if !got {
            let problem = match &last {
                Some(e) if !e.ended() => format!(
                    "another switchover is running: run {} by {}, in phase {} (since {})",
                    e.run_id, e.holder, e.phase, e.updated_at
                ),
                _ => "another switchover is running (it holds the switchover lock on blue)".to_owned(),
            };
            return Err(SwitchoverError::refused(
                Guardrail::OneAtATime,
                problem,
                "wait for it to end: `pgcutover status` shows where it is",
            ));
        }
        if let Some(dead) = last.as_ref().filter(|e| !e.ended()) {
            return Err(SwitchoverError::refused(
                Guardrail::OneAtATime,
                format!(
                    "run {} by {} died in phase {} (last written {})",
                    dead.run_id, dead.holder, dead.phase, dead.updated_at
                ),
                "run `pgcutover recover` (a proxy with [green] configured recovers it within 10 s by itself)",
            ));
        }
        let (route, epoch, version) = last.map_or((Side::Blue, 0, 0), |e| (e.route, e.epoch, e.version));
        if route != self.source() {
            return Err(SwitchoverError::refused(
                Guardrail::JournalOnSource,
                format!(
                    "the journal says clients belong on {route} (epoch {epoch}), not {}",
                    self.source()
                ),
                match self.opts.direction {
                    Direction::Forward => "nothing to switch; `pgcutover rollback` goes back",
                    Direction::Rollback => "nothing to roll back",
                },
            ));
        }
        self.lease = Some(Entry {
            version,
            run_id: self.run_id.clone(),
            holder: journal::holder(),
            direction: self.opts.direction.name().to_owned(),
            phase: Phase::Preflight.name().to_owned(),
            route,
            epoch,
            outcome: None,
            reason: None,
            updated_at: String::new(),
            undo: Vec::new(),
        });
        self.record(Phase::Preflight).await
    }

    /// Makes sure both sides have the journal, then takes the run lock on blue
    /// without waiting; `false` if another session holds it.
    pub(super) async fn lock(&self) -> Result<bool, SwitchoverError> {
        let (blue, green) = self.home()?;
        // Green first: see journal::ensure.
        journal::ensure(&green.client, at(green)).await?;
        journal::ensure(&blue.client, at(blue)).await?;
        // The lock lasts as long as this session: if the run's machine vanishes,
        // blue notices within ~11 s (keepalives) rather than hours.
        blue.client
            .batch_execute("SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3")
            .await
            .map_err(blue.failed("setting keepalives on the lock's session"))?;
        Ok(journal::try_lock(&blue.client, at(blue)).await?)
    }

    /// The newest journal entry on either side, through the run's connections.
    pub(super) async fn read_journal(&self) -> Result<Option<Entry>, SwitchoverError> {
        let (blue, green) = self.home()?;
        let on_blue = journal::read(&blue.client, at(blue)).await?;
        let on_green = journal::read(&green.client, at(green)).await?;
        Ok(journal::latest(on_blue.into_iter().chain(on_green)))
    }

    /// Records the run's phase on both sides, with every change it will have made
    /// before the next record (nothing if the run holds no lease).
    pub(super) async fn record(&mut self, phase: Phase) -> Result<(), SwitchoverError> {
        let undo: Vec<String> = self.intent(phase).iter().map(Undo::encode).collect();
        let Some(entry) = self.lease.as_mut() else {
            return Ok(());
        };
        entry.version += 1;
        entry.phase = phase.name().to_owned();
        entry.undo = undo;
        let entry = entry.clone();
        let (blue, green) = self.home()?;
        journal::write(&blue.client, at(blue), &entry).await?;
        journal::write(&green.client, at(green), &entry).await?;
        Ok(())
    }

    /// The commit point's record: clients belong on the destination from now on,
    /// on both sides. Undone by a newer row naming the source.
    pub(super) async fn record_route(&mut self) -> Result<(), SwitchoverError> {
        let dest = self.dest();
        let Some(entry) = self.lease.as_mut() else {
            return Ok(());
        };
        entry.version += 1;
        entry.epoch += 1;
        entry.route = dest;
        entry.phase = Phase::Flip.name().to_owned();
        // Past the commit point nothing is undone.
        entry.undo.clear();
        let entry = entry.clone();
        self.undo.push(Undo::RestoreRoute);
        let pair = self.dbs.first().ok_or(SwitchoverError::NoDatabase)?;
        // Both at once (this is inside the hold): a reader takes the newest of
        // either, and a failure of either rolls back, which writes the source again.
        let (dest, source) = tokio::join!(
            journal::write(&pair.dest.client, at(&pair.dest), &entry),
            journal::write(&pair.source.client, at(&pair.source), &entry),
        );
        dest?;
        source?;
        Ok(())
    }

    /// The undo of [`Run::record_route`]: a newer row naming the source, through
    /// fresh connections (the run's may be stuck in what timed out).
    pub(super) async fn restore_route(&mut self) -> Result<(), SwitchoverError> {
        let source = self.source();
        if let Some(entry) = self.lease.as_mut() {
            entry.version += 1;
            entry.epoch += 1;
            entry.route = source;
        }
        self.write_late().await
    }

    /// The run's last row: its outcome and reason, through fresh connections.
    pub(super) async fn record_end(&mut self) {
        let (outcome, reason) = (self.report.outcome, self.report.reason.clone());
        let phase = self.phase();
        let Some(entry) = self.lease.as_mut() else {
            return;
        };
        entry.version += 1;
        entry.phase = phase.map_or("preflight", Phase::name).to_owned();
        entry.outcome = Some(outcome.name().to_owned());
        entry.reason = reason;
        entry.undo.clear();
        if let Err(e) = self.write_late().await {
            warn!("journal: recording the outcome: {e}");
            let note = format!("the journal does not record this outcome: {e}");
            self.report.reason = Some(match self.report.reason.take() {
                Some(r) => format!("{r}; {note}"),
                None => note,
            });
        }
    }

    /// Writes the lease's row on both sides through new connections, the side
    /// clients belong on first.
    async fn write_late(&self) -> Result<(), SwitchoverError> {
        let Some(entry) = &self.lease else {
            return Ok(());
        };
        let home = self.dbs.first().ok_or(SwitchoverError::NoDatabase)?.name.clone();
        let other = match entry.route {
            Side::Blue => Side::Green,
            Side::Green => Side::Blue,
        };
        for side in [entry.route, other] {
            let write = async {
                let client = self.targets.connect(side, &home).await?;
                let at = At { side, database: &home };
                // The side may be fenced: ensure lets this session write.
                journal::ensure(&client, at).await?;
                journal::write(&client, at, entry).await?;
                Ok(())
            };
            within(LATE_WRITE, format!("writing the journal on {side}"), write).await?;
        }
        Ok(())
    }

    /// The undo log as it will stand once the run, recording `phase`, has made
    /// every change up to its next record: what it made so far, then what Preflight
    /// (from its own record) and Hold to Flip (from either) may make, in the order
    /// they make it. Written ahead, so a run killed between two records leaves
    /// nothing its recovery does not know of; each undo is idempotent, so one
    /// that was never made costs nothing.
    fn intent(&self, phase: Phase) -> Vec<Undo> {
        let reverse = self.wants_reverse();
        let (source, dest) = (self.source(), self.dest());
        let mut intent = self.undo.entries().to_vec();
        let each = |make: &dyn Fn(String) -> Undo| self.dbs.iter().map(|d| make(d.name.clone())).collect::<Vec<_>>();
        if phase == Phase::Preflight && reverse {
            intent.extend(each(&|database| Undo::DropReversePublication { database }));
        }
        intent.push(Undo::Resume);
        intent.extend(each(&|database| Undo::Unfence { side: source, database }));
        if reverse {
            intent.extend(each(&|database| Undo::DropReverseSlot { database }));
        }
        if self.dest_fenced {
            intent.extend(each(&|database| Undo::Refence { side: dest, database }));
        }
        intent
    }

    /// The run's connections to the first database: (blue, green).
    fn home(&self) -> Result<(&Conn, &Conn), SwitchoverError> {
        let pair = self.dbs.first().ok_or(SwitchoverError::NoDatabase)?;
        Ok(match pair.source.at.side {
            Side::Blue => (&pair.source, &pair.dest),
            Side::Green => (&pair.dest, &pair.source),
        })
    }
}

fn at(c: &Conn) -> At<'_> {
    At {
        side: c.at.side,
        database: &c.at.database,
    }
}

/// A run id unique enough to tell runs apart in the journal: the start time in
/// milliseconds and the process id, in hex.
pub(super) fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms:x}-{:x}", std::process::id())
}
