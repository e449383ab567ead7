//! `pgcutover status`: per database, what exists on each side, slot lag (bytes and
//! time), WAL retention, the subscription worker, table sync states, DDL drift since
//! replication began, and a one-line verdict. Never fails as a whole: an unreachable
//! side is reported in its database's entry.

use crate::error::pg_message;
use crate::progress::human_bytes;
use crate::replicate::state_name;
use crate::targets::{Side, Targets};
use crate::{subscription_name, PUBLICATION};
use serde::Serialize;
use tokio_postgres::Client;

/// Replication status of every configured database.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// One entry per `[replication] databases`.
    pub databases: Vec<DatabaseStatus>,
    /// Every database is in sync with no drift and lag under `max_lag_bytes`.
    pub ready: bool,
    /// One line for all databases.
    pub verdict: String,
    /// What the switchover journal says (filled by `pgcutover status`, see
    /// [`crate::journal::current`]; `None` elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switchover: Option<crate::journal::Journal>,
    /// Why the journal could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_error: Option<String>,
}

/// One database's replication status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseStatus {
    /// The database.
    pub database: String,
    /// Why blue could not be read, if it could not.
    pub blue_error: Option<String>,
    /// Why green could not be read, if it could not.
    pub green_error: Option<String>,
    /// Blue has the pgcutover schema.
    pub blue_schema: bool,
    /// Blue has the publication.
    pub publication: bool,
    /// Blue has the DDL event triggers (enabled).
    pub ddl_capture: bool,
    /// The slot on blue.
    pub slot: Option<SlotStatus>,
    /// The subscription on green.
    pub subscription: Option<SubscriptionStatus>,
    /// Tables by sync state (`ready`, `copying`, ...), with the names of those not ready.
    pub tables_total: usize,
    /// Tables in state ready.
    pub tables_ready: usize,
    /// Tables not ready yet, as `name: state`.
    pub tables_syncing: Vec<String>,
    /// DDL run on blue since replication began, one entry per statement.
    pub ddl: Vec<DdlStatement>,
    /// Number of DDL statements since replication began (the drift gauge).
    pub drift: usize,
    /// In sync, no drift, lag under the limit.
    pub ready: bool,
    /// One line: what state this database is in and what to do.
    pub verdict: String,
}

/// The replication slot on blue.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// Slot name.
    pub name: String,
    /// A walsender uses it.
    pub active: bool,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn` on blue.
    pub lag_bytes: i64,
    /// The walsender's replay lag, in seconds (0 when caught up, none when inactive).
    pub lag_seconds: Option<f64>,
    /// WAL blue keeps for the slot (`pg_current_wal_lsn() - restart_lsn`).
    pub retained_bytes: i64,
    /// `wal_status`: reserved | extended | unreserved | lost.
    pub wal_status: Option<String>,
    /// `safe_wal_size`: bytes of WAL that can still be written before the slot is lost
    /// (none without max_slot_wal_keep_size).
    pub safe_wal_size: Option<i64>,
    /// `confirmed_flush_lsn`.
    pub confirmed_flush_lsn: Option<String>,
}

/// The subscription on green.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    /// Subscription name.
    pub name: String,
    /// `subenabled`.
    pub enabled: bool,
    /// The apply worker's pid, when running.
    pub worker_pid: Option<i32>,
    /// When the worker last heard from blue.
    pub last_msg_receipt_time: Option<String>,
    /// Last WAL position reported back to blue.
    pub latest_end_lsn: Option<String>,
    /// Apply plus table sync errors since the stats were reset (PostgreSQL 15+).
    pub error_count: Option<i64>,
}

/// One DDL statement captured on blue.
#[derive(Debug, Clone, Serialize)]
pub struct DdlStatement {
    /// When (transaction start on blue).
    pub at: String,
    /// e.g. `ALTER TABLE`.
    pub command_tag: String,
    /// The objects it touched.
    pub objects: String,
    /// The statement text.
    pub command: String,
}

/// Reads the status of every configured database; `max_lag_bytes` decides "ready".
pub async fn replication_status(targets: &Targets, max_lag_bytes: u64) -> Status {
    let mut databases = Vec::new();
    for db in &targets.databases {
        databases.push(database_status(targets, db, max_lag_bytes).await);
    }
    let ready = databases.iter().all(|d| d.ready);
    let verdict = if databases.len() == 1 {
        databases[0].verdict.clone()
    } else {
        databases
            .iter()
            .map(|d| format!("{}: {}", d.database, d.verdict))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    Status {
        databases,
        ready,
        verdict,
        switchover: None,
        journal_error: None,
    }
}

async fn database_status(targets: &Targets, db: &str, max_lag_bytes: u64) -> DatabaseStatus {
    let mut st = DatabaseStatus {
        database: db.to_owned(),
        ..Default::default()
    };
    let name = subscription_name(db);
    match targets.connect(Side::Blue, db).await {
        Ok(blue) => {
            if let Err(e) = read_blue(&blue, &name, &mut st).await {
                st.blue_error = Some(pg_message(&e));
            }
        }
        Err(e) => st.blue_error = Some(e.to_string()),
    }
    match targets.connect(Side::Green, db).await {
        Ok(green) => {
            if let Err(e) = read_green(&green, &name, &mut st).await {
                st.green_error = Some(pg_message(&e));
            }
        }
        // Before the copy method's first run green has no such database: nothing exists there.
        Err(e) if e.is_missing_database() => {}
        Err(e) => st.green_error = Some(e.to_string()),
    }
    let (ready, verdict) = verdict(&st, max_lag_bytes);
    st.ready = ready;
    st.verdict = verdict;
    st
}

async fn read_blue(blue: &Client, name: &str, st: &mut DatabaseStatus) -> Result<(), tokio_postgres::Error> {
    let r = blue
        .query_one(
            "SELECT to_regclass('pgcutover.ddl_log') IS NOT NULL,
                    EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
                    (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgcutover\\_%' AND evtenabled <> 'D') = 3",
            &[&PUBLICATION],
        )
        .await?;
    st.blue_schema = r.get(0);
    st.publication = r.get(1);
    st.ddl_capture = r.get(2);
    let major: i32 = blue
        .query_one("SELECT current_setting('server_version_num')::int / 10000", &[])
        .await?
        .get(0);
    let wal_cols = if major >= 13 {
        "wal_status::text, safe_wal_size"
    } else {
        "NULL::text, NULL::bigint"
    };
    let slot = blue
        .query_opt(
            &format!(
                "SELECT s.active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn), 0)::bigint,
                        coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn), 0)::bigint, {wal_cols},
                        s.confirmed_flush_lsn::text,
                        (SELECT extract(epoch FROM coalesce(r.replay_lag, r.flush_lag))::float8
                           FROM pg_stat_replication r WHERE r.pid = s.active_pid)
                   FROM pg_replication_slots s WHERE s.slot_name = $1"
            ),
            &[&name],
        )
        .await?;
    st.slot = slot.map(|r| {
        let active: bool = r.get(0);
        let lag_bytes: i64 = r.get(1);
        let lag: Option<f64> = r.get(6);
        SlotStatus {
            name: name.to_owned(),
            active,
            lag_bytes,
            lag_seconds: if active { Some(lag.unwrap_or(0.0)) } else { None },
            retained_bytes: r.get(2),
            wal_status: r.get(3),
            safe_wal_size: r.get(4),
            confirmed_flush_lsn: r.get(5),
        }
    });
    if st.blue_schema {
        let rows = blue
            .query(
                "SELECT to_char(min(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
                        string_agg(DISTINCT command_tag, '/'), coalesce(string_agg(DISTINCT object_identity, ', '), ''),
                        coalesce(command, '')
                   FROM pgcutover.ddl_log GROUP BY at, command ORDER BY min(id)",
                &[],
            )
            .await?;
        st.ddl = rows
            .iter()
            .map(|r| DdlStatement {
                at: r.get(0),
                command_tag: r.get::<_, Option<String>>(1).unwrap_or_default(),
                objects: r.get(2),
                command: r.get::<_, String>(3).trim().to_owned(),
            })
            .collect();
        st.drift = st.ddl.len();
    }
    Ok(())
}

async fn read_green(green: &Client, name: &str, st: &mut DatabaseStatus) -> Result<(), tokio_postgres::Error> {
    let major: i32 = green
        .query_one("SELECT current_setting('server_version_num')::int / 10000", &[])
        .await?
        .get(0);
    let errors = if major >= 15 {
        "(SELECT sync_error_count + apply_error_count FROM pg_stat_subscription_stats x WHERE x.subid = s.oid)"
    } else {
        "NULL::bigint"
    };
    let sub = green
        .query_opt(
            &format!(
                "SELECT s.subenabled, w.pid, to_char(w.last_msg_receipt_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
                        w.latest_end_lsn::text, {errors}
                   FROM pg_subscription s
                   LEFT JOIN pg_stat_subscription w ON w.subid = s.oid AND w.relid IS NULL
                  WHERE s.subname = $1"
            ),
            &[&name],
        )
        .await?;
    st.subscription = sub.map(|r| SubscriptionStatus {
        name: name.to_owned(),
        enabled: r.get(0),
        worker_pid: r.get(1),
        last_msg_receipt_time: r.get(2),
        latest_end_lsn: r.get(3),
        error_count: r.get(4),
    });
    if st.subscription.is_some() {
        let rows = green
            .query(
                "SELECT (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = sr.srrelid), sr.srsubstate::text FROM pg_subscription_rel sr
                   JOIN pg_subscription s ON s.oid = sr.srsubid WHERE s.subname = $1 ORDER BY 1",
                &[&name],
            )
            .await?;
        st.tables_total = rows.len();
        for r in &rows {
            let (t, s): (String, String) = (r.get(0), r.get(1));
            if s == "r" {
                st.tables_ready += 1;
            } else {
                st.tables_syncing.push(format!("{t}: {}", state_name(&s)));
            }
        }
    }
    Ok(())
}

/// Why a database without a subscription on green is not ready, and what to run.
fn not_subscribed(st: &DatabaseStatus, blue_has: &[&str]) -> String {
    if let Some(e) = &st.green_error {
        if blue_has.is_empty() {
            return format!("not set up (blue has nothing of pgcutover's); green: {e}");
        }
        return format!("half set up: blue has {}; green: {e}", blue_has.join(", "));
    }
    if blue_has.is_empty() {
        return "not set up: run pgcutover replicate".into();
    }
    let next = if st.slot.is_some() && !st.slot.as_ref().is_some_and(|s| s.active) {
        "finish with pgcutover replicate (after taking the clone, for the clone method)"
    } else {
        "run pgcutover replicate to finish"
    };
    format!(
        "half set up: blue has {}, green has no subscription: {next}",
        blue_has.join(", ")
    )
}

fn verdict(st: &DatabaseStatus, max_lag_bytes: u64) -> (bool, String) {
    if let Some(e) = &st.blue_error {
        return (false, format!("blue unreachable: {e}"));
    }
    let blue_has: Vec<&str> = [
        (st.blue_schema, "schema pgcutover"),
        (st.publication, "publication"),
        (st.slot.is_some(), "slot"),
    ]
    .iter()
    .filter(|(b, _)| *b)
    .map(|(_, n)| *n)
    .collect();
    let Some(sub) = &st.subscription else {
        return (false, not_subscribed(st, &blue_has));
    };
    if !sub.enabled {
        return (
            false,
            format!("subscription {} is disabled: run pgcutover replicate", sub.name),
        );
    }
    if sub.worker_pid.is_none() {
        return (
            false,
            format!("subscription {} has no running worker: green's server log says why (often: cannot reach blue, or an apply conflict)", sub.name),
        );
    }
    if st.tables_ready < st.tables_total {
        return (
            false,
            format!("initial copy: {}/{} tables ready", st.tables_ready, st.tables_total),
        );
    }
    if let Some(first) = st.ddl.first() {
        let more = if st.drift > 1 {
            format!(" (+{} more)", st.drift - 1)
        } else {
            String::new()
        };
        return (
            false,
            format!(
                "drift: {}{more} ran on blue after replication began — apply it to green too (or recreate green)",
                shorten(&first.command, 80)
            ),
        );
    }
    let lag = st.slot.as_ref().map(|s| s.lag_bytes).unwrap_or(0);
    if st.slot.is_none() {
        return (
            false,
            "blue has no slot for the subscription: run pgcutover replicate".into(),
        );
    }
    if lag as u64 > max_lag_bytes {
        return (
            false,
            format!(
                "lagging {} (limit [switchover] max_lag_bytes = {})",
                human_bytes(lag),
                human_bytes(max_lag_bytes as i64)
            ),
        );
    }
    (true, format!("in sync, lag {}, ready to switch over", human_bytes(lag)))
}

fn shorten(s: &str, n: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= n {
        one
    } else {
        format!("{}…", one.chars().take(n).collect::<String>())
    }
}

/// Reads the replication status every `every`, for ever, and hands each readable
/// database's slot lag in bytes (-1 without a slot) and DDL drift to `sink`: what a
/// running proxy exports as `pgcutover_replication_lag_bytes` and
/// `pgcutover_ddl_drift`. A side that cannot be read is logged once per new problem.
pub async fn monitor(targets: Targets, max_lag_bytes: u64, every: std::time::Duration, sink: impl Fn(&str, i64, i64)) {
    let mut last_problem = String::new();
    loop {
        let status = replication_status(&targets, max_lag_bytes).await;
        let mut problems = Vec::new();
        for d in &status.databases {
            if let Some(e) = d.blue_error.as_ref().or(d.green_error.as_ref()) {
                problems.push(format!("{}: {e}", d.database));
                continue;
            }
            let lag = d.slot.as_ref().map(|s| s.lag_bytes).unwrap_or(-1);
            sink(&d.database, lag, d.drift as i64);
        }
        let problem = problems.join("; ");
        if problem != last_problem && !problem.is_empty() {
            tracing::warn!("replication status not readable: {problem}");
        }
        last_problem = problem;
        tokio::time::sleep(every).await;
    }
}

/// The status as human-readable text, one block per database and the verdict last.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    if let Some(j) = &status.switchover {
        out.push_str(&format!("switchover: {}\n", j.summary()));
    }
    if let Some(e) = &status.journal_error {
        out.push_str(&format!("switchover: the journal is unreadable: {e}\n"));
    }
    for d in &status.databases {
        out.push_str(&format!("{}\n", d.database));
        match &d.blue_error {
            Some(e) => out.push_str(&format!("  blue:    cannot read: {e}\n")),
            None => {
                let mut parts = Vec::new();
                parts.push(format!(
                    "schema pgcutover {}",
                    if d.blue_schema { "present" } else { "absent" }
                ));
                parts.push(format!(
                    "publication {}",
                    if d.publication { PUBLICATION } else { "absent" }
                ));
                parts.push(format!("DDL capture {}", if d.ddl_capture { "on" } else { "off" }));
                out.push_str(&format!("  blue:    {}\n", parts.join(", ")));
                match &d.slot {
                    Some(s) => out.push_str(&format!(
                        "  slot:    {} {}, lag {}{}, keeps {} of WAL, wal_status {}, safe_wal_size {}\n",
                        s.name,
                        if s.active { "active" } else { "INACTIVE" },
                        human_bytes(s.lag_bytes),
                        s.lag_seconds.map(|t| format!(" ({t:.1}s)")).unwrap_or_default(),
                        human_bytes(s.retained_bytes),
                        s.wal_status.as_deref().unwrap_or("-"),
                        s.safe_wal_size.map(human_bytes).unwrap_or("unlimited".into())
                    )),
                    None => out.push_str("  slot:    none\n"),
                }
            }
        }
        match (&d.green_error, &d.subscription) {
            (Some(e), _) => out.push_str(&format!("  green:   cannot read: {e}\n")),
            (None, None) => out.push_str("  green:   no subscription\n"),
            (None, Some(s)) => {
                out.push_str(&format!(
                    "  green:   subscription {} {}, worker {}, last message from blue {}, errors {}\n",
                    s.name,
                    if s.enabled { "enabled" } else { "DISABLED" },
                    s.worker_pid.map(|p| format!("pid {p}")).unwrap_or("NOT RUNNING".into()),
                    s.last_msg_receipt_time.as_deref().unwrap_or("-"),
                    s.error_count.map(|n| n.to_string()).unwrap_or("-".into())
                ));
                out.push_str(&format!("  tables:  {}/{} ready\n", d.tables_ready, d.tables_total));
                for t in &d.tables_syncing {
                    out.push_str(&format!("           {t}\n"));
                }
            }
        }
        if d.ddl.is_empty() {
            out.push_str("  drift:   none\n");
        } else {
            out.push_str(&format!(
                "  drift:   {} DDL statement(s) on blue since replication began:\n",
                d.drift
            ));
            for s in &d.ddl {
                out.push_str(&format!(
                    "           {}  {}  {}\n",
                    s.at,
                    s.command_tag,
                    shorten(&s.command, 200)
                ));
            }
        }
        out.push_str(&format!("  verdict: {}\n", d.verdict));
    }
    out.push_str(&format!("verdict: {}\n", status.verdict));
    out
}
