//! The clone method: green is a snapshot/clone of blue. `--prepare-clone` creates the
//! publication and the slot on blue *before* the clone is taken; afterwards green's
//! subscription starts at the clone's start LSN, so every transaction the clone lacks
//! is replayed and none it already has.
//!
//! Why the start LSN is right: logical decoding sends a transaction when its commit
//! record starts at or after the position the subscriber asks for (its replication
//! origin), and never before the slot's consistent point. The slot exists before the
//! clone, so every commit before the clone point is either before the slot (in the
//! clone) or between the slot and the clone point (in the clone, and skipped because
//! the origin is advanced past it); every later commit is sent.

use super::subscription::{create_subscription, subscription_exists};
use super::ReplicateOptions;
use crate::error::{OrchestratorError, SqlContext};
use crate::lsn::Lsn;
use crate::progress::Progress;
use crate::quote::quote_ident;
use crate::setup::{drop_carried_over, record, setup_blue, step_done};
use crate::subscription_name;
use crate::targets::{Side, Targets};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Where the clone's start LSN came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneStart {
    /// The position replication starts at (the origin is advanced to it).
    pub lsn: Lsn,
    /// How it was found, for the progress display.
    pub source: String,
}

/// Finds the start LSN in a clone's first start-up log: "invalid record length at X"
/// is the end of the WAL the clone replayed (X itself); "redo done at X" names the
/// start of the last record replayed, so the clone holds everything up to X and the
/// next record starts after it (X + 1). The first start-up's lines count.
pub fn parse_clone_log(text: &str) -> Option<CloneStart> {
    let find = |pattern: &str| {
        text.lines().find_map(|line| {
            let rest = &line[line.find(pattern)? + pattern.len()..];
            let token = rest.split([':', ' ', ',']).next()?;
            token.parse::<Lsn>().ok().map(|lsn| (lsn, line.trim().to_owned()))
        })
    };
    if let Some((lsn, line)) = find("invalid record length at ") {
        return Some(CloneStart {
            lsn,
            source: format!("clone log: {line}"),
        });
    }
    find("redo done at ").map(|(lsn, line)| CloneStart {
        lsn: Lsn(lsn.0 + 1),
        source: format!("clone log: {line} (+1: past that record)"),
    })
}

/// `replicate --prepare-clone`: publication and slot on blue, then what to do next.
pub(super) async fn prepare(targets: &Targets, progress: &Progress) -> Result<(), OrchestratorError> {
    for db in &targets.databases {
        let t = Instant::now();
        let blue = targets.connect(Side::Blue, db).await?;
        setup_blue(&blue, db).await?;
        let name = subscription_name(db);
        let existing = blue
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
            .ctx(Side::Blue, db, "looking for the slot")?;
        let lsn: String = match existing {
            Some(r) => {
                let lsn: Option<String> = r.get(0);
                progress.line(format!("{db}: slot {name} exists already"));
                lsn.unwrap_or_default()
            }
            None => {
                let r = blue
                    .query_one(
                        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[&name],
                    )
                    .await
                    .ctx(Side::Blue, db, "creating the logical replication slot")?;
                r.get(0)
            }
        };
        record(
            &blue,
            Side::Blue,
            db,
            "slot",
            &format!("created for a clone, consistent at {lsn}"),
        )
        .await?;
        progress.done(
            t,
            format!("{db}: publication and slot {name} on blue (consistent point {lsn})"),
        );
    }
    progress.line("next steps:");
    progress.line("  1. take the clone or snapshot of blue now (after the slot: it holds blue's WAL from here on;");
    progress.line("     watch its size with pgcutover status) and start it; upgrade it if needed;");
    progress.line("  2. keep the clone's FIRST start-up log (it names the start LSN: \"redo done at X/Y\");");
    progress.line("  3. set [green] url to the clone and run: pgcutover replicate --clone-log <that log>");
    progress.line("     (Aurora clones: no flag needed; otherwise --start-lsn X/Y if you know it).");
    Ok(())
}

/// `replicate` with method = clone: green is the clone; start replication at its start LSN.
pub(super) async fn attach(
    targets: &Targets,
    opts: &ReplicateOptions,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    // Every database of one clone shares its start LSN: find it once.
    let mut start: Option<CloneStart> = None;
    for db in &targets.databases {
        let blue = targets.connect(Side::Blue, db).await?;
        let green = targets.connect(Side::Green, db).await?;
        let name = subscription_name(db);
        if resume(&green, db, &name, progress).await? {
            continue;
        }
        require_clone(&green, db).await?;
        let slot = prepared_slot(&blue, db, &name).await?;
        let st = match &start {
            Some(st) => st.clone(),
            None => start.insert(find_start(&green, db, opts).await?).clone(),
        };
        slot.check_start(&name, &st)?;
        drop_what_the_clone_carried(&blue, &green, db, progress).await?;
        subscribe_from(targets, &green, db, &name, &st, progress).await?;
        enable(&green, db, &name, progress).await?;
    }
    Ok(())
}

/// Picks up a subscription an earlier run created; true when the database needs
/// nothing more.
async fn resume(green: &Client, db: &str, name: &str, progress: &Progress) -> Result<bool, OrchestratorError> {
    if !subscription_exists(green, db, name).await? {
        return Ok(false);
    }
    let enabled: bool = green
        .query_one("SELECT subenabled FROM pg_subscription WHERE subname = $1", &[&name])
        .await
        .ctx(Side::Green, db, "reading the subscription")?
        .get(0);
    if enabled {
        progress.line(format!(
            "{db}: subscription {name} exists and is enabled; nothing to do"
        ));
        return Ok(true);
    }
    if step_done(green, Side::Green, db, "origin").await? {
        enable(green, db, name, progress).await?;
        return Ok(true);
    }
    // Created but never advanced: start over from a clean subscription.
    drop_subscription_keep_slot(green, db, name).await?;
    Ok(false)
}

/// A clone taken after `--prepare-clone` has the sentinel table `setup_blue` made.
async fn require_clone(green: &Client, db: &str) -> Result<(), OrchestratorError> {
    let is_clone: bool = green
        .query_one("SELECT to_regclass('pgcutover.sentinel') IS NOT NULL", &[])
        .await
        .ctx(Side::Green, db, "looking for pgcutover.sentinel")?
        .get(0);
    if !is_clone {
        return Err(OrchestratorError::refused(
            format!("green database {db} has no pgcutover.sentinel table, so it is not a clone of blue taken after `replicate --prepare-clone`"),
            "run pgcutover replicate --prepare-clone, then take the clone, or use [replication] method = \"copy\"",
        ));
    }
    Ok(())
}

/// The slot `--prepare-clone` made on blue, which bounds where the clone may start.
struct PreparedSlot {
    /// Its consistent point: nothing before it can be decoded.
    confirmed: Lsn,
    /// Blue's WAL position now: nothing after it exists yet.
    current: Lsn,
}

/// The prepared slot, refused when it is missing or another subscriber holds it.
async fn prepared_slot(blue: &Client, db: &str, name: &str) -> Result<PreparedSlot, OrchestratorError> {
    let slot = blue
        .query_opt(
            "SELECT confirmed_flush_lsn::text, active, pg_current_wal_lsn()::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .ctx(Side::Blue, db, "looking for the slot")?
        .ok_or_else(|| {
            OrchestratorError::refused(
                format!("blue has no slot {name}: the clone was not prepared"),
                "run pgcutover replicate --prepare-clone on blue, take a NEW clone after it, then run replicate again",
            )
        })?;
    let (confirmed, active, current): (Option<String>, bool, String) = (slot.get(0), slot.get(1), slot.get(2));
    if active {
        return Err(OrchestratorError::refused(
            format!("slot {name} on blue is in use by another subscriber"),
            "find it in pg_stat_replication on blue and stop it; the slot belongs to this clone",
        ));
    }
    let parse = |s: &str| {
        s.parse::<Lsn>()
            .map_err(|e| OrchestratorError::refused(e, "report this"))
    };
    Ok(PreparedSlot {
        confirmed: parse(&confirmed.unwrap_or_default())?,
        current: parse(&current)?,
    })
}

impl PreparedSlot {
    /// The clone's start must lie between the slot's consistent point and blue's
    /// current position, or rows are lost or the start is not from this blue.
    fn check_start(&self, name: &str, st: &CloneStart) -> Result<(), OrchestratorError> {
        let (confirmed, current) = (self.confirmed, self.current);
        if st.lsn < confirmed {
            return Err(OrchestratorError::refused(
                format!(
                    "the clone's start LSN {} is before slot {name}'s consistent point {confirmed}: the clone was taken before the slot existed, and rows written in between would be lost",
                    st.lsn
                ),
                "take a new clone now that the slot exists, and run replicate against it",
            ));
        }
        if st.lsn > Lsn(current.0 + 1) {
            return Err(OrchestratorError::refused(
                format!(
                    "the start LSN {} is ahead of blue's current WAL position {current}",
                    st.lsn
                ),
                "check --start-lsn / --clone-log: they must come from a clone of this blue",
            ));
        }
        Ok(())
    }
}

/// Drops what green inherited from blue that would act on green's behalf.
async fn drop_what_the_clone_carried(
    blue: &Client,
    green: &Client,
    db: &str,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    let t = Instant::now();
    let mut dropped = drop_carried_over(green, db).await?;
    dropped.extend(drop_carried_slots(blue, green, db).await?);
    dropped.extend(drop_carried_subscriptions(blue, green, db).await?);
    if !dropped.is_empty() {
        progress.done(
            t,
            format!("{db}: dropped what the clone carried over: {}", dropped.join(", ")),
        );
    }
    Ok(())
}

/// Creates the subscription disabled and advances its origin to the clone's start,
/// so enabling it replays exactly the transactions the clone lacks.
async fn subscribe_from(
    targets: &Targets,
    green: &Client,
    db: &str,
    name: &str,
    st: &CloneStart,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    let t = Instant::now();
    let options = format!(
        "copy_data = false, create_slot = false, enabled = false, slot_name = {}",
        crate::quote::quote_literal(name)
    );
    create_subscription(targets, green, db, name, &options).await?;
    green
        .execute(
            "SELECT pg_replication_origin_advance('pg_' || oid::text, $2::text::pg_lsn) FROM pg_subscription WHERE subname = $1",
            &[&name, &st.lsn.to_string()],
        )
        .await
        .ctx(Side::Green, db, "advancing the subscription's replication origin")?;
    record(
        green,
        Side::Green,
        db,
        "origin",
        &format!("{} from {}", st.lsn, st.source),
    )
    .await?;
    progress.done(
        t,
        format!(
            "{db}: subscription {name} created, origin advanced to {} ({})",
            st.lsn, st.source
        ),
    );
    Ok(())
}

async fn enable(green: &Client, db: &str, name: &str, progress: &Progress) -> Result<(), OrchestratorError> {
    let t = Instant::now();
    green
        .batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", quote_ident(name)))
        .await
        .ctx(Side::Green, db, "enabling the subscription")?;
    record(
        green,
        Side::Green,
        db,
        "subscription",
        "clone: copy_data = false, origin advanced",
    )
    .await?;
    // The apply worker starts within a few seconds; report it when it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pid: Option<i32> = green
            .query_opt(
                "SELECT pid FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL",
                &[&name],
            )
            .await
            .ctx(Side::Green, db, "reading the subscription worker")?
            .and_then(|r| r.get(0));
        if let Some(pid) = pid {
            progress.done(
                t,
                format!("{db}: subscription enabled, apply worker running (pid {pid})"),
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            progress.line(format!(
                "{db}: subscription enabled but no apply worker after 30s: check green's server log and pgcutover status"
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Aurora's `aurora_volume_logical_start_lsn()` on green (its admin database): the
/// storage point of a fast clone, which AWS's guide reads before upgrading it.
pub async fn aurora_start_lsn(targets: &Targets) -> Result<Lsn, OrchestratorError> {
    let (db, green) = targets.connect_admin(Side::Green).await?;
    let lsn: String = green
        .query_one("SELECT aurora_volume_logical_start_lsn()::text", &[])
        .await
        .ctx(
            Side::Green,
            &db,
            "reading aurora_volume_logical_start_lsn() (is green an Aurora clone?)",
        )?
        .get(0);
    lsn.parse()
        .map_err(|e: String| OrchestratorError::refused(e, "report this"))
}

/// The clone's start LSN: what the operator gave (`--start-lsn`, then `--clone-log`)
/// before what green says (Aurora's function, which a clone upgraded since may no
/// longer answer for the storage point it was cloned at).
async fn find_start(green: &Client, db: &str, opts: &ReplicateOptions) -> Result<CloneStart, OrchestratorError> {
    if let Some(lsn) = opts.start_lsn {
        return Ok(CloneStart {
            lsn,
            source: "--start-lsn".into(),
        });
    }
    if let Some(path) = &opts.clone_log {
        let text = std::fs::read(path).map_err(|e| {
            OrchestratorError::refused(
                format!("cannot read --clone-log {}: {e}", path.display()),
                "pass the clone's first start-up log file",
            )
        })?;
        return parse_clone_log(&String::from_utf8_lossy(&text)).ok_or_else(|| {
            OrchestratorError::refused(
                format!(
                    "{} has no \"redo done at X/Y\" or \"invalid record length at X/Y\" line",
                    path.display()
                ),
                "pass the log of the clone's FIRST start-up (later start-ups do not name the clone point), or give --start-lsn",
            )
        });
    }
    let aurora: bool = green
        .query_one("SELECT to_regproc('aurora_volume_logical_start_lsn') IS NOT NULL", &[])
        .await
        .ctx(Side::Green, db, "looking for aurora_volume_logical_start_lsn()")?
        .get(0);
    if aurora {
        let lsn: String = green
            .query_one("SELECT aurora_volume_logical_start_lsn()::text", &[])
            .await
            .ctx(Side::Green, db, "reading aurora_volume_logical_start_lsn()")?
            .get(0);
        return Ok(CloneStart {
            lsn: lsn
                .parse()
                .map_err(|e: String| OrchestratorError::refused(e, "report this"))?,
            source: "aurora_volume_logical_start_lsn()".into(),
        });
    }
    Err(OrchestratorError::refused(
        "the clone's start LSN is unknown (green has no aurora_volume_logical_start_lsn())",
        "pass --clone-log <the clone's first start-up log> (it has \"redo done at X/Y\"), or --start-lsn X/Y",
    ))
}

/// Slots on green that blue has too: copies made by the clone, useless on green and
/// holding its WAL forever.
async fn drop_carried_slots(blue: &Client, green: &Client, db: &str) -> Result<Vec<String>, OrchestratorError> {
    let blue_slots: Vec<String> = blue
        .query("SELECT slot_name::text FROM pg_replication_slots", &[])
        .await
        .ctx(Side::Blue, db, "listing blue's slots")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let green_slots: Vec<(String, bool)> = green
        .query("SELECT slot_name::text, active FROM pg_replication_slots", &[])
        .await
        .ctx(Side::Green, db, "listing green's slots")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut dropped = Vec::new();
    for (slot, active) in green_slots {
        if active || !blue_slots.contains(&slot) {
            continue;
        }
        green
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .ctx(Side::Green, db, "dropping a slot carried over from blue")?;
        dropped.push(format!("slot {slot}"));
    }
    Ok(dropped)
}

/// Subscriptions on green that blue has too: detached from their slot first, so
/// dropping them does not drop the real subscriber's slot upstream.
async fn drop_carried_subscriptions(blue: &Client, green: &Client, db: &str) -> Result<Vec<String>, OrchestratorError> {
    let q = "SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let blue_subs: Vec<String> = blue
        .query(q, &[])
        .await
        .ctx(Side::Blue, db, "listing blue's subscriptions")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut dropped = Vec::new();
    for sub in blue_subs {
        if !subscription_exists(green, db, &sub).await? {
            continue;
        }
        drop_subscription_keep_slot(green, db, &sub).await?;
        dropped.push(format!("subscription {sub}"));
    }
    Ok(dropped)
}

async fn drop_subscription_keep_slot(green: &Client, db: &str, name: &str) -> Result<(), OrchestratorError> {
    let q = quote_ident(name);
    green
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {q} DISABLE; ALTER SUBSCRIPTION {q} SET (slot_name = NONE); DROP SUBSCRIPTION {q}"
        ))
        .await
        .ctx(
            Side::Green,
            db,
            &format!("dropping subscription {name} (its slot is kept)"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_start_lsn_in_clone_logs() {
        let pg15 = "2026-05-02 10:00:00 UTC [1] LOG:  redo starts at 0/2000028\n\
                    2026-05-02 10:00:00 UTC [1] LOG:  redo done at 0/3000F40 system usage: CPU: user: 0.00 s\n\
                    2026-05-02 10:00:01 UTC [1] LOG:  redo done at 0/9000000 system usage: later start\n";
        let s = parse_clone_log(pg15).unwrap();
        assert_eq!(s.lsn, "0/3000F41".parse().unwrap());
        let rds = "LOG: redo starts at 0/100000A0\n\
                   LOG: invalid record length at 0/1000FB78: expected at least 24, got 0\n\
                   LOG: redo done at 0/1000FB40\n";
        assert_eq!(parse_clone_log(rds).unwrap().lsn, "0/1000FB78".parse().unwrap());
        assert!(parse_clone_log("LOG: database system is ready\n").is_none());
    }
}
