//! Server-wide checks, once on blue and once on green: wal_level, privileges,
//! capacity (slots, walsenders, workers), other replication slots, and the two
//! servers' major versions.

use super::{Check, CheckResult, CheckStatus};
use crate::quote::quote_ident;
use crate::subscription_name;
use crate::targets::{Side, Targets};
use pgcutover_config::ReplicationMethod;
use std::collections::HashMap;
use tokio_postgres::Client;

/// The pg_settings rows the checks read.
struct Settings(HashMap<String, String>);

impl Settings {
    async fn read(c: &Client) -> Result<Settings, tokio_postgres::Error> {
        Ok(Settings(
            c.query(
                "SELECT name, setting FROM pg_settings WHERE name IN ('server_version_num', 'wal_level',
           'max_replication_slots', 'max_wal_senders', 'max_logical_replication_workers',
           'max_worker_processes', 'max_sync_workers_per_subscription', 'server_version')",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
        ))
    }

    fn num(&self, k: &str) -> i64 {
        self.0.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0)
    }

    fn major(&self) -> u32 {
        (self.num("server_version_num") / 10000) as u32
    }
}

/// Version, wal_level, privileges, capacity and existing slots of one server; returns
/// its major version.
pub(super) async fn server_checks(
    targets: &Targets,
    side: Side,
    c: &Client,
    out: &mut Vec<CheckResult>,
) -> Option<u32> {
    let scope = side.to_string();
    let settings = match Settings::read(c).await {
        Ok(s) => s,
        Err(e) => {
            out.push(CheckResult::query_failed(Check::Settings, scope, &e));
            return None;
        }
    };
    out.push(wal_level(side, &settings));
    out.push(privileges(side, targets.method, c).await);
    // Capacity counts the other slots, so both need the slot list.
    match other_slots(targets, c).await {
        Ok(others) => {
            out.push(capacity(targets, side, &settings, others.len() as i64));
            out.push(replication_slots(targets, side, others));
        }
        Err(e) => out.push(CheckResult::query_failed(Check::ReplicationSlots, scope, &e)),
    }
    Some(settings.major())
}

fn wal_level(side: Side, settings: &Settings) -> CheckResult {
    let wal = settings.0.get("wal_level").cloned().unwrap_or_default();
    if wal == "logical" {
        return CheckResult::ok(Check::WalLevel, side.to_string(), "logical");
    }
    let (status, why) = match side {
        Side::Blue => (CheckStatus::Fail, "logical replication from blue needs it"),
        Side::Green => (
            CheckStatus::Warn,
            "reverse replication (rollback after the switchover) needs it",
        ),
    };
    CheckResult::problem(
        Check::WalLevel,
        side.to_string(),
        status,
        format!("wal_level = {wal}; {why}"),
        vec!["wal_level".into()],
        format!(
            "ALTER SYSTEM SET wal_level = logical; then restart {side} (RDS/Aurora: set rds.logical_replication = 1 in the parameter group and reboot)"
        ),
    )
}

async fn privileges(side: Side, method: ReplicationMethod, c: &Client) -> CheckResult {
    let scope = side.to_string();
    let r = match c
        .query_one(
            "SELECT rolsuper, CASE WHEN to_regrole('rds_superuser') IS NULL THEN false
                    ELSE pg_has_role(current_user, 'rds_superuser', 'member') END, current_user::text
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return CheckResult::query_failed(Check::Privileges, scope, &e),
    };
    let (sup, rds, user): (bool, bool, String) = (r.get(0), r.get(1), r.get(2));
    if !sup && rds && side == Side::Blue && method == ReplicationMethod::Copy {
        // RDS and Aurora have no superuser to give: the copy method cannot work there.
        return CheckResult::problem(
            Check::Privileges,
            scope,
            CheckStatus::Fail,
            format!(
                "{user} is rds_superuser, not superuser: the copy method copies roles with their password hashes from \
                 pg_authid, which RDS and Aurora let no login read, and green needs those hashes for the proxy's SCRAM logins"
            ),
            vec![user.clone()],
            "set [replication] method = \"clone\" and make green from blue's clone or snapshot, which carries the roles \
             with their hashes (pgcutover aws prepare-green on Aurora); or use a superuser in [blue] url where there is one"
                .to_owned(),
        );
    }
    if sup || rds {
        return CheckResult::ok(
            Check::Privileges,
            scope,
            format!("{user} is {}", if sup { "superuser" } else { "rds_superuser" }),
        );
    }
    CheckResult::problem(
        Check::Privileges,
        scope,
        CheckStatus::Fail,
        format!("{user} is not a superuser: publications FOR ALL TABLES, event triggers, subscriptions and reading password hashes need one"),
        vec![user.clone()],
        format!("ALTER ROLE {} SUPERUSER (RDS/Aurora: GRANT rds_superuser TO {0}), or put a superuser in [{side}] url", quote_ident(&user)),
    )
}

/// The server's replication slots other than pgcutover's, described for the report.
async fn other_slots(targets: &Targets, c: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let slots = c
        .query(
            "SELECT slot_name::text, slot_type, active, coalesce(database::text, ''),
                    coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                             ELSE pg_current_wal_lsn() END, restart_lsn), 0)::bigint
               FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await?;
    let ours: Vec<String> = targets.databases.iter().map(|d| subscription_name(d)).collect();
    Ok(slots
        .iter()
        .filter(|r| !ours.contains(&r.get::<_, String>(0)))
        .map(|r| {
            format!(
                "{} ({} {}, database {}, retains {})",
                r.get::<_, String>(0),
                if r.get::<_, bool>(2) { "active" } else { "inactive" },
                r.get::<_, String>(1),
                r.get::<_, String>(3),
                crate::progress::human_bytes(r.get(4))
            )
        })
        .collect())
}

/// Enough slots and walsenders on blue, apply workers on green, for every database.
fn capacity(targets: &Targets, side: Side, settings: &Settings, other_slots: i64) -> CheckResult {
    let n = targets.databases.len() as i64;
    let restart = format!("then restart {side}");
    let (problems, ok) = match side {
        Side::Blue => blue_capacity(settings, n, other_slots, &restart),
        Side::Green => green_capacity(settings, n, &restart),
    };
    if problems.is_empty() {
        return CheckResult::ok(Check::Capacity, side.to_string(), ok);
    }
    // Each problem reads "what: fix"; the check shows the whats and the fixes apart.
    let (message, fix): (Vec<_>, Vec<_>) = problems
        .iter()
        .map(|p| p.split_once(": ").unwrap_or((p, "")))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unzip();
    CheckResult::problem(
        Check::Capacity,
        side.to_string(),
        CheckStatus::Fail,
        message.join("; "),
        vec![],
        fix.join("; "),
    )
}

fn blue_capacity(settings: &Settings, n: i64, used: i64, restart: &str) -> (Vec<String>, String) {
    let max_slots = settings.num("max_replication_slots");
    let max_senders = settings.num("max_wal_senders");
    let mut problems = Vec::new();
    if max_slots < used + n {
        problems.push(format!(
            "max_replication_slots = {max_slots} but {used} other slot(s) exist and {n} are needed: ALTER SYSTEM SET max_replication_slots = {}; {restart}",
            used + n + 2
        ));
    }
    if max_senders < used + n {
        problems.push(format!(
            "max_wal_senders = {max_senders} is below the {} walsenders needed: ALTER SYSTEM SET max_wal_senders = {}; {restart}",
            used + n,
            used + n + 2
        ));
    }
    let ok = format!("max_replication_slots = {max_slots}, max_wal_senders = {max_senders}");
    (problems, ok)
}

fn green_capacity(settings: &Settings, n: i64, restart: &str) -> (Vec<String>, String) {
    let workers = settings.num("max_logical_replication_workers");
    let procs = settings.num("max_worker_processes");
    let slots_max = settings.num("max_replication_slots");
    let sync = settings.num("max_sync_workers_per_subscription");
    let mut problems = Vec::new();
    if workers < n {
        problems.push(format!(
            "max_logical_replication_workers = {workers} is below the {n} apply workers needed: ALTER SYSTEM SET max_logical_replication_workers = {}; {restart}",
            n * (1 + sync.max(1))
        ));
    }
    if procs < n + 1 {
        problems.push(format!(
            "max_worker_processes = {procs} is below the {} needed (apply workers + launcher): ALTER SYSTEM SET max_worker_processes = {}; {restart}",
            n + 1,
            n * (1 + sync.max(1)) + 8
        ));
    }
    if slots_max < n {
        problems.push(format!(
            "max_replication_slots = {slots_max} also bounds replication origins on a subscriber and is below {n}: ALTER SYSTEM SET max_replication_slots = {}; {restart}",
            n + 2
        ));
    }
    let ok = format!("max_logical_replication_workers = {workers}, max_worker_processes = {procs}");
    (problems, ok)
}

fn replication_slots(targets: &Targets, side: Side, others: Vec<String>) -> CheckResult {
    if others.is_empty() {
        return CheckResult::ok(Check::ReplicationSlots, side.to_string(), "no other replication slots");
    }
    let (status, message, fix) = match (side, targets.method) {
        (Side::Green, ReplicationMethod::Clone) => (
            CheckStatus::Ok,
            "slots carried over from blue by the clone: replicate drops the ones blue also has",
            String::new(),
        ),
        _ => (
            CheckStatus::Warn,
            "other replication slots exist; inactive ones retain WAL without bound",
            "drop the slots nothing uses: SELECT pg_drop_replication_slot('<name>')".to_owned(),
        ),
    };
    CheckResult::problem(Check::ReplicationSlots, side.to_string(), status, message, others, fix)
}

/// Green must not be older than blue; a clone may be newer only after an in-place upgrade.
pub(super) fn server_version(targets: &Targets, blue: u32, green: u32) -> CheckResult {
    if green < blue {
        CheckResult::problem(
            Check::ServerVersion,
            "blue/green",
            CheckStatus::Fail,
            format!("green runs PostgreSQL {green}, older than blue's {blue}"),
            vec![],
            "point [green] url at a server of the same or a newer major version",
        )
    } else if targets.method == ReplicationMethod::Clone && green != blue {
        CheckResult::ok(
            Check::ServerVersion,
            "blue/green",
            format!("blue {blue}, green {green} (a clone upgraded in place)"),
        )
    } else {
        CheckResult::ok(
            Check::ServerVersion,
            "blue/green",
            format!("blue {blue}, green {green}"),
        )
    }
}
