//! The switchover journal: `pgcutover.journal` in the first replicated database of
//! both sides, so whoever can reach either side finds the truth there: where clients
//! belong (the route and its epoch) and the last run (its id, holder, phase and
//! outcome). No coordination service: the databases are the state.
//!
//! Each side writes only its own row (keyed by the side written on), so the rows a
//! subscription copies across never collide with the receiving side's own; a reader
//! takes the row with the greatest `version`, which every write increases.
//!
//! One run at a time: a run holds [`LOCK_KEY`] as a session advisory lock on blue
//! for its whole length, so the lock ends with the run's connection however the run
//! ends, `kill -9` included, and a journal row whose phase is not final while nobody
//! holds the lock is a run that died.

use crate::error::pg_message;
use crate::targets::{Side, Targets};
use serde::Serialize;
use std::time::Duration;
use tokio_postgres::Client;

/// `pgcutover.journal`, one row per side it was written on.
pub const JOURNAL_TABLE: &str = "pgcutover.journal";

/// The session advisory lock a run holds on blue: "pgcutovr" in ASCII.
pub const LOCK_KEY: i64 = 0x7067_6375_746f_7672;

/// The table (both sides; [`crate::setup`] creates it with the others).
pub(crate) const JOURNAL_DDL: &str = "
CREATE TABLE IF NOT EXISTS pgcutover.journal (
    side text PRIMARY KEY CHECK (side IN ('blue', 'green')),
    version bigint NOT NULL,
    run_id text NOT NULL,
    holder text NOT NULL,
    direction text NOT NULL,
    phase text NOT NULL,
    route text NOT NULL CHECK (route IN ('blue', 'green')),
    epoch bigint NOT NULL,
    outcome text,
    reason text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    undo text[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE pgcutover.journal IS 'pgcutover: where clients belong (route, epoch) and the last switchover run; read by every proxy at start';
";

/// One journal row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Increases with every write, whichever side: the greatest is the truth.
    pub version: i64,
    /// The run that wrote it.
    pub run_id: String,
    /// Who ran it: host and process.
    pub holder: String,
    /// `forward` or `rollback`.
    pub direction: String,
    /// The run's phase when written (a [`pgcutover_api::Phase`] name).
    pub phase: String,
    /// Where clients belong.
    pub route: Side,
    /// How many times the route has changed.
    pub epoch: i64,
    /// How the run ended; `None` while it runs (or if it died).
    pub outcome: Option<String>,
    /// The report's reason, if any.
    pub reason: Option<String>,
    /// When it was written (the server's clock, as text).
    pub updated_at: String,
    /// Every change the run has made or is about to make before its commit point,
    /// oldest first, written before the first of them: what a recovery undoes.
    /// Empty past the commit point.
    pub undo: Vec<String>,
}

impl Entry {
    /// Whether the run that wrote it had ended.
    pub fn ended(&self) -> bool {
        self.outcome.is_some()
    }
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A statement failed.
    #[error("{side} database {database}: {doing}: {message}")]
    Sql {
        /// Blue or green.
        side: Side,
        /// The database.
        database: String,
        /// What was being done.
        doing: &'static str,
        /// The server's message.
        message: String,
    },
    /// `replicate` never ran there.
    #[error("{side} database {database} has no pgcutover schema: set up replication with `pgcutover replicate` first")]
    NotSetUp {
        /// Blue or green.
        side: Side,
        /// The database.
        database: String,
    },
    /// Neither side could be read.
    #[error("the journal is unreadable on both sides: {blue}; {green}")]
    Unreachable {
        /// Why blue failed.
        blue: String,
        /// Why green failed.
        green: String,
    },
}

/// Where a connection of the journal points, for its errors.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// Which side.
    pub side: Side,
    /// Which database.
    pub database: &'a str,
}

impl<'a> At<'a> {
    fn failed(self, doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> JournalError + 'a {
        move |e| JournalError::Sql {
            side: self.side,
            database: self.database.to_owned(),
            doing,
            message: pg_message(&e),
        }
    }
}

/// Every row on one side (none when the table does not exist yet: nothing was
/// ever switched there).
pub async fn read(client: &Client, at: At<'_>) -> Result<Vec<Entry>, JournalError> {
    let exists: bool = client
        .query_one("select pg_catalog.to_regclass('pgcutover.journal') is not null", &[])
        .await
        .map_err(at.failed("looking for the journal"))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "select version, run_id, holder, direction, phase, route, epoch, outcome, reason, updated_at::text, undo
               from pgcutover.journal",
            &[],
        )
        .await
        .map_err(at.failed("reading the journal"))?;
    Ok(rows
        .iter()
        .map(|r| Entry {
            version: r.get(0),
            run_id: r.get(1),
            holder: r.get(2),
            direction: r.get(3),
            phase: r.get(4),
            route: if r.get::<_, &str>(5) == "green" {
                Side::Green
            } else {
                Side::Blue
            },
            epoch: r.get(6),
            outcome: r.get(7),
            reason: r.get(8),
            updated_at: r.get(9),
            undo: r.get(10),
        })
        .collect())
}

/// The newest of `entries`.
pub fn latest(entries: impl IntoIterator<Item = Entry>) -> Option<Entry> {
    entries.into_iter().max_by_key(|e| e.version)
}

/// Writes `entry` as `side`'s own row on a connection to `side` (which may be
/// fenced: this session's writes pass, and the fence's triggers spare the
/// `pgcutover` schema).
pub(crate) async fn write(client: &Client, at: At<'_>, entry: &Entry) -> Result<(), JournalError> {
    client
        .execute(
            "insert into pgcutover.journal as j
                    (side, version, run_id, holder, direction, phase, route, epoch, outcome, reason, updated_at, undo)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), $11)
             on conflict (side) do update set
                    version = excluded.version, run_id = excluded.run_id, holder = excluded.holder,
                    direction = excluded.direction, phase = excluded.phase, route = excluded.route,
                    epoch = excluded.epoch, outcome = excluded.outcome, reason = excluded.reason,
                    updated_at = excluded.updated_at, undo = excluded.undo",
            &[
                &at.side.name(),
                &entry.version,
                &entry.run_id,
                &entry.holder,
                &entry.direction,
                &entry.phase,
                &entry.route.name(),
                &entry.epoch,
                &entry.outcome,
                &entry.reason,
                &entry.undo,
            ],
        )
        .await
        .map_err(at.failed("writing the journal"))?;
    Ok(())
}

/// Creates the table if an older `replicate` did not (green first: a table that
/// exists on blue only would stop green's apply worker at its first change), and
/// lets this session write on a fenced side. The DDL is marked as pgcutover's own.
pub(crate) async fn ensure(client: &Client, at: At<'_>) -> Result<(), JournalError> {
    client
        .batch_execute("SET default_transaction_read_only = off; SET pgcutover.internal = on")
        .await
        .map_err(at.failed("preparing the journal session"))?;
    let row = client
        .query_one(
            "select pg_catalog.to_regnamespace('pgcutover') is not null,
                    pg_catalog.to_regclass('pgcutover.journal') is not null,
                    exists (select from pg_catalog.pg_attribute
                             where attrelid = pg_catalog.to_regclass('pgcutover.journal') and attname = 'undo')",
            &[],
        )
        .await
        .map_err(at.failed("looking for the journal"))?;
    if !row.get::<_, bool>(0) {
        return Err(JournalError::NotSetUp {
            side: at.side,
            database: at.database.to_owned(),
        });
    }
    if !row.get::<_, bool>(1) {
        client
            .batch_execute(JOURNAL_DDL)
            .await
            .map_err(at.failed("creating the journal"))?;
    } else if !row.get::<_, bool>(2) {
        // A journal from before the undo column (green first, as for the table).
        client
            .batch_execute("ALTER TABLE pgcutover.journal ADD COLUMN IF NOT EXISTS undo text[] NOT NULL DEFAULT '{}'")
            .await
            .map_err(at.failed("adding the journal's undo column"))?;
    }
    Ok(())
}

/// Takes the run lock on blue without waiting; `false` if another session holds it.
pub(crate) async fn try_lock(client: &Client, at: At<'_>) -> Result<bool, JournalError> {
    Ok(client
        .query_one("select pg_catalog.pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(at.failed("taking the switchover lock"))?
        .get(0))
}

/// Whether some session holds the run lock on blue (a run is alive).
async fn locked(client: &Client, at: At<'_>) -> Result<bool, JournalError> {
    Ok(client
        .query_one(
            "select exists (select from pg_catalog.pg_locks where locktype = 'advisory' and granted
                              and database = (select oid from pg_catalog.pg_database where datname = current_database())
                              and ((classid::int8 << 32) | objid::int8) = $1 and objsubid = 1)",
            &[&LOCK_KEY],
        )
        .await
        .map_err(at.failed("looking for a running switchover"))?
        .get(0))
}

/// What the journal says now, for `status` and for a proxy that starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Journal {
    /// The newest row on either side (`None`: no switchover ever ran).
    pub last: Option<Entry>,
    /// Whether a run holds the lock now (read on blue; `false` if blue is unreadable).
    pub running: bool,
}

impl Journal {
    /// Where clients belong, and the route's epoch (blue, 0 before any switchover).
    pub fn route(&self) -> (Side, i64) {
        self.last.as_ref().map_or((Side::Blue, 0), |e| (e.route, e.epoch))
    }

    /// A run that ended without recording an outcome and no longer holds the lock.
    pub fn dead_run(&self) -> Option<&Entry> {
        self.last.as_ref().filter(|e| !e.ended() && !self.running)
    }

    /// One line for `pgcutover status`.
    pub fn summary(&self) -> String {
        let (route, epoch) = self.route();
        let run = match &self.last {
            None => return format!("clients belong on {route}: no switchover has run"),
            Some(e) if self.running => format!(
                "run {} by {} is in phase {} (since {})",
                e.run_id, e.holder, e.phase, e.updated_at
            ),
            Some(e) if !e.ended() => format!(
                "run {} by {} died in phase {} (last written {}): `pgcutover recover` finishes or undoes it",
                e.run_id, e.holder, e.phase, e.updated_at
            ),
            Some(e) => format!(
                "last run {} {} {} at {}{}",
                e.run_id,
                e.direction,
                e.outcome.as_deref().unwrap_or("?"),
                e.updated_at,
                e.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            ),
        };
        format!("clients belong on {route} (epoch {epoch}); {run}")
    }
}

/// What both sides' journals say now: the newest entry on either, and whether a
/// run holds the lock. Reads both at once, each within `within`; one side is enough
/// (each run writes both, the destination first).
pub async fn current(targets: &Targets, within: Duration) -> Result<Journal, JournalError> {
    let home = targets.databases.first().map(String::as_str).unwrap_or("postgres");
    let side = |side: Side| async move {
        let read = async {
            let client = targets.connect(side, home).await.map_err(|e| e.to_string())?;
            let at = At { side, database: home };
            let entries = read(&client, at).await.map_err(|e| e.to_string())?;
            let running = side == Side::Blue && locked(&client, at).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((entries, running))
        };
        match tokio::time::timeout(within, read).await {
            Ok(r) => r,
            Err(_) => Err(format!("{side}: no answer within {within:?}")),
        }
    };
    let (blue, green) = tokio::join!(side(Side::Blue), side(Side::Green));
    match (blue, green) {
        (Err(blue), Err(green)) => Err(JournalError::Unreachable { blue, green }),
        (blue, green) => {
            let running = blue.as_ref().is_ok_and(|(_, r)| *r);
            let entries = [blue, green].into_iter().flatten().flat_map(|(e, _)| e);
            Ok(Journal {
                last: latest(entries),
                running,
            })
        }
    }
}

/// Who this process is, for the journal's `holder`.
pub fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("pgcutover on {host}, pid {}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: i64, route: Side) -> Entry {
        Entry {
            version,
            run_id: format!("run-{version}"),
            holder: "test".into(),
            direction: "forward".into(),
            phase: "done".into(),
            route,
            epoch: version,
            outcome: Some("completed".into()),
            reason: None,
            updated_at: String::new(),
            undo: Vec::new(),
        }
    }

    #[test]
    fn the_newest_write_wins_whichever_side_holds_it() {
        let found = [entry(2, Side::Green), entry(1, Side::Blue), entry(3, Side::Blue)];
        assert_eq!(latest(found).map(|e| (e.version, e.route)), Some((3, Side::Blue)));
        assert_eq!(latest(Vec::new()), None);
    }

    #[test]
    fn the_lock_key_spells_its_owner() {
        assert_eq!(&LOCK_KEY.to_be_bytes(), b"pgcutovr");
    }
}
