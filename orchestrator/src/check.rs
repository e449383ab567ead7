//! Preflight checks (`pgcutover check`): every check has a name, where it ran, a
//! status, the objects involved and the exact fix. `replicate` runs the subset that
//! guards it and refuses when one fails.

use crate::error::{pg_message, OrchestratorError};
use crate::quote::quote_ident;
use crate::setup::create_subscription_sql;
use crate::targets::{Side, Targets};
use crate::{subscription_name, PUBLICATION, SUBSCRIPTION_PREFIX};
use pgcutover_config::ReplicationMethod;
use serde::Serialize;
use std::collections::BTreeSet;
use tokio_postgres::Client;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Works, but read the message.
    Warn,
    /// Blocks replication or the switchover until fixed.
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// What was checked, e.g. `wal_level`, `replica_identity`.
    pub name: String,
    /// Where: `blue`, `green`, `blue/app`, `green/app`.
    pub scope: String,
    /// ok | warn | fail.
    pub status: CheckStatus,
    /// What was found.
    pub message: String,
    /// The objects involved (tables, roles, settings, ...).
    pub objects: Vec<String>,
    /// What to do; empty when ok.
    pub fix: String,
}

impl CheckResult {
    fn new(name: &str, scope: impl Into<String>, status: CheckStatus, message: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.into(),
            scope: scope.into(),
            status,
            message: message.into(),
            objects: Vec::new(),
            fix: String::new(),
        }
    }

    fn ok(name: &str, scope: impl Into<String>, message: impl Into<String>) -> CheckResult {
        CheckResult::new(name, scope, CheckStatus::Ok, message)
    }

    fn problem(
        name: &str,
        scope: impl Into<String>,
        status: CheckStatus,
        message: impl Into<String>,
        objects: Vec<String>,
        fix: impl Into<String>,
    ) -> CheckResult {
        CheckResult {
            objects,
            fix: fix.into(),
            ..CheckResult::new(name, scope, status, message)
        }
    }

    fn query_failed(name: &str, scope: impl Into<String>, e: &tokio_postgres::Error) -> CheckResult {
        CheckResult::problem(
            name,
            scope,
            CheckStatus::Fail,
            format!("could not check: {}", pg_message(e)),
            vec![],
            "give the admin login of [blue]/[green] url superuser (or rds_superuser) rights",
        )
    }
}

/// Which checks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Everything (`pgcutover check`).
    All,
    /// What must hold before `replicate` changes anything.
    Replicate,
    /// `replicate --prepare-clone`: blue only (green does not exist yet).
    PrepareClone,
}

/// Runs every check against blue and green.
pub async fn run_checks(targets: &Targets) -> Vec<CheckResult> {
    checks(targets, Scope::All).await
}

/// The failed checks of `scope` as one refusal naming each problem and fix.
pub(crate) async fn preflight(targets: &Targets, scope: Scope) -> Result<Vec<CheckResult>, OrchestratorError> {
    let results = checks(targets, scope).await;
    let failed: Vec<&CheckResult> = results.iter().filter(|r| r.status == CheckStatus::Fail).collect();
    if let Some(first) = failed.first() {
        // A connection failure is the one error the user has to fix first: report it as such.
        if first.name == "connection" {
            return Err(OrchestratorError::Refused {
                problem: first.message.clone(),
                fix: first.fix.clone(),
            });
        }
        let problem = failed
            .iter()
            .map(|r| {
                let objects = if r.objects.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.objects.join(", "))
                };
                format!("{} on {}: {}{objects}", r.name, r.scope, r.message)
            })
            .collect::<Vec<_>>()
            .join("; ");
        let fix = failed
            .iter()
            .map(|r| r.fix.as_str())
            .filter(|f| !f.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(OrchestratorError::refused(
            format!("preflight failed, nothing was changed: {problem}"),
            fix,
        ));
    }
    Ok(results)
}

async fn checks(targets: &Targets, scope: Scope) -> Vec<CheckResult> {
    let mut out = Vec::new();
    // One connection per database; a failure names the fix and skips the rest.
    let mut blue = Vec::new();
    for db in &targets.databases {
        match targets.connect(Side::Blue, db).await {
            Ok(c) => blue.push((db.clone(), c)),
            Err(e) => out.push(connection_failed(Side::Blue, db, &e)),
        }
    }
    let green = if scope == Scope::PrepareClone {
        None
    } else {
        green_clients(targets, &mut out).await
    };
    if out.iter().any(|r| r.status == CheckStatus::Fail) {
        return out;
    }
    out.push(CheckResult::ok(
        "connection",
        "blue",
        format!("{} at {}", plural(blue.len(), "database"), targets.blue.host_port()),
    ));
    let blue_major = server_checks(targets, Side::Blue, &blue[0].1, &mut out).await;
    if let Some(g) = &green {
        out.push(CheckResult::ok(
            "connection",
            "green",
            format!("{} at {}", targets.green.host_port(), g.admin_db),
        ));
        let green_major = server_checks(targets, Side::Green, &g.admin, &mut out).await;
        if let (Some(b), Some(gm)) = (blue_major, green_major) {
            out.push(version_check(targets, b, gm));
        }
    }
    for (db, b) in &blue {
        let green_db = green
            .as_ref()
            .and_then(|g| g.dbs.iter().find(|(d, _)| d == db))
            .map(|(_, c)| c);
        blue_database_checks(targets, db, b, &mut out).await;
        if let Some(g) = &green {
            green_database_checks(targets, db, b, green_db, &g.admin, &mut out, scope).await;
        }
    }
    out
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn connection_failed(side: Side, db: &str, e: &OrchestratorError) -> CheckResult {
    let (message, fix) = match e {
        OrchestratorError::Connect { reason, fix, addr, .. } => (
            format!("cannot connect to {side} at {addr} (database {db}): {reason}"),
            fix.clone(),
        ),
        other => (other.to_string(), String::new()),
    };
    CheckResult::problem(
        "connection",
        format!("{side}/{db}"),
        CheckStatus::Fail,
        message,
        vec![db.into()],
        fix,
    )
}

struct GreenClients {
    admin_db: String,
    admin: Client,
    dbs: Vec<(String, Client)>,
}

/// Green: an admin connection plus each replicated database that exists there.
async fn green_clients(targets: &Targets, out: &mut Vec<CheckResult>) -> Option<GreenClients> {
    let mut dbs = Vec::new();
    let mut failed = false;
    for db in &targets.databases {
        match targets.connect(Side::Green, db).await {
            Ok(c) => dbs.push((db.clone(), c)),
            Err(OrchestratorError::Connect { reason, .. }) if reason.contains("does not exist") => {
                let (status, message, fix) = if targets.method == ReplicationMethod::Clone {
                    (
                        CheckStatus::Fail,
                        format!("database {db} does not exist on green, so green is not a clone of blue"),
                        "set [green] url to the clone of blue, or use [replication] method = \"copy\"".to_owned(),
                    )
                } else {
                    (
                        CheckStatus::Ok,
                        format!("database {db} does not exist on green yet: replicate creates it"),
                        String::new(),
                    )
                };
                out.push(CheckResult::problem(
                    "green_database",
                    format!("green/{db}"),
                    status,
                    message,
                    vec![],
                    fix,
                ));
            }
            Err(e) => {
                failed = true;
                out.push(connection_failed(Side::Green, db, &e));
            }
        }
    }
    let admin_db = targets.green.database.clone().unwrap_or_else(|| "postgres".into());
    match targets.connect(Side::Green, &admin_db).await {
        Ok(admin) => Some(GreenClients { admin_db, admin, dbs }),
        Err(e) => {
            if let Some((d, _)) = dbs.first() {
                if let Ok(admin) = targets.connect(Side::Green, d).await {
                    return Some(GreenClients {
                        admin_db: d.clone(),
                        admin,
                        dbs,
                    });
                }
            }
            if !failed {
                out.push(connection_failed(Side::Green, &admin_db, &e));
            }
            None
        }
    }
}

async fn settings(c: &Client) -> Result<std::collections::HashMap<String, String>, tokio_postgres::Error> {
    Ok(c.query(
        "SELECT name, setting FROM pg_settings WHERE name IN ('server_version_num', 'wal_level',
           'max_replication_slots', 'max_wal_senders', 'max_logical_replication_workers',
           'max_worker_processes', 'max_sync_workers_per_subscription', 'server_version')",
        &[],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Version, wal_level, privileges, capacity and existing slots of one server; returns
/// its major version.
async fn server_checks(targets: &Targets, side: Side, c: &Client, out: &mut Vec<CheckResult>) -> Option<u32> {
    let scope = side.to_string();
    let s = match settings(c).await {
        Ok(s) => s,
        Err(e) => {
            out.push(CheckResult::query_failed("settings", scope, &e));
            return None;
        }
    };
    let num = |k: &str| s.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let major = (num("server_version_num") / 10000) as u32;
    let n = targets.databases.len() as i64;
    let restart = format!("then restart {side}");

    // wal_level
    let wal = s.get("wal_level").cloned().unwrap_or_default();
    if wal == "logical" {
        out.push(CheckResult::ok("wal_level", &*scope, "logical"));
    } else {
        let (status, why) = match side {
            Side::Blue => (CheckStatus::Fail, "logical replication from blue needs it"),
            Side::Green => (
                CheckStatus::Warn,
                "reverse replication (rollback after the switchover) needs it",
            ),
        };
        out.push(CheckResult::problem(
            "wal_level",
            &*scope,
            status,
            format!("wal_level = {wal}; {why}"),
            vec!["wal_level".into()],
            format!(
                "ALTER SYSTEM SET wal_level = logical; {restart} (RDS/Aurora: set rds.logical_replication = 1 in the parameter group and reboot)"
            ),
        ));
    }

    // privileges
    match c
        .query_one(
            "SELECT rolsuper, CASE WHEN to_regrole('rds_superuser') IS NULL THEN false
                    ELSE pg_has_role(current_user, 'rds_superuser', 'member') END, current_user::text
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
    {
        Ok(r) => {
            let (sup, rds, user): (bool, bool, String) = (r.get(0), r.get(1), r.get(2));
            if sup || rds {
                out.push(CheckResult::ok(
                    "privileges",
                    &*scope,
                    format!("{user} is {}", if sup { "superuser" } else { "rds_superuser" }),
                ));
            } else {
                out.push(CheckResult::problem(
                    "privileges",
                    &*scope,
                    CheckStatus::Fail,
                    format!("{user} is not a superuser: publications FOR ALL TABLES, event triggers, subscriptions and reading password hashes need one"),
                    vec![user.clone()],
                    format!("ALTER ROLE {} SUPERUSER (RDS/Aurora: GRANT rds_superuser TO {0}), or put a superuser in [{side}] url", quote_ident(&user)),
                ));
            }
        }
        Err(e) => out.push(CheckResult::query_failed("privileges", &*scope, &e)),
    }

    // capacity and existing slots
    let slots = match c
        .query(
            "SELECT slot_name::text, slot_type, active, coalesce(database::text, ''),
                    coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                             ELSE pg_current_wal_lsn() END, restart_lsn), 0)::bigint
               FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            out.push(CheckResult::query_failed("replication_slots", &*scope, &e));
            return Some(major);
        }
    };
    let ours: Vec<String> = targets.databases.iter().map(|d| subscription_name(d)).collect();
    let others: Vec<String> = slots
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
        .collect();
    match side {
        Side::Blue => {
            let max_slots = num("max_replication_slots");
            let max_senders = num("max_wal_senders");
            let used = others.len() as i64;
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
            push_capacity(
                out,
                &scope,
                problems,
                format!("max_replication_slots = {max_slots}, max_wal_senders = {max_senders}"),
            );
        }
        Side::Green => {
            let workers = num("max_logical_replication_workers");
            let procs = num("max_worker_processes");
            let slots_max = num("max_replication_slots");
            let sync = num("max_sync_workers_per_subscription");
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
            push_capacity(
                out,
                &scope,
                problems,
                format!("max_logical_replication_workers = {workers}, max_worker_processes = {procs}"),
            );
        }
    }
    if others.is_empty() {
        out.push(CheckResult::ok(
            "replication_slots",
            &*scope,
            "no other replication slots",
        ));
    } else {
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
        out.push(CheckResult::problem(
            "replication_slots",
            &*scope,
            status,
            message,
            others,
            fix,
        ));
    }
    Some(major)
}

fn push_capacity(out: &mut Vec<CheckResult>, scope: &str, problems: Vec<String>, ok: String) {
    if problems.is_empty() {
        out.push(CheckResult::ok("capacity", scope, ok));
    } else {
        let (message, fix): (Vec<_>, Vec<_>) = problems
            .iter()
            .map(|p| p.split_once(": ").unwrap_or((p, "")))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unzip();
        out.push(CheckResult::problem(
            "capacity",
            scope,
            CheckStatus::Fail,
            message.join("; "),
            vec![],
            fix.join("; "),
        ));
    }
}

fn version_check(targets: &Targets, blue: u32, green: u32) -> CheckResult {
    if green < blue {
        CheckResult::problem(
            "server_version",
            "blue/green",
            CheckStatus::Fail,
            format!("green runs PostgreSQL {green}, older than blue's {blue}"),
            vec![],
            "point [green] url at a server of the same or a newer major version",
        )
    } else if targets.method == ReplicationMethod::Clone && green != blue {
        CheckResult::ok(
            "server_version",
            "blue/green",
            format!("blue {blue}, green {green} (a clone upgraded in place)"),
        )
    } else {
        CheckResult::ok("server_version", "blue/green", format!("blue {blue}, green {green}"))
    }
}

/// Tables of blue in the user's schemas: (name, relkind, persistence, replica identity, has primary key, has identity index).
const USER_TABLES: &str = "
SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text, c.relpersistence::text, c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'f', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover')
   AND n.nspname !~ '^pg_(toast|temp)'
   AND c.relpersistence <> 't'
 ORDER BY 1";

async fn blue_database_checks(targets: &Targets, db: &str, blue: &Client, out: &mut Vec<CheckResult>) {
    let scope = format!("blue/{db}");
    let _ = targets;
    let rows = match blue.query(USER_TABLES, &[]).await {
        Ok(r) => r,
        Err(e) => {
            out.push(CheckResult::query_failed("tables", scope, &e));
            return;
        }
    };
    let mut keyless = Vec::new();
    let (mut unlogged, mut foreign, mut matviews) = (Vec::new(), Vec::new(), Vec::new());
    let mut plain = 0;
    for r in &rows {
        let (name, kind, persistence, ident): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let (pk, ident_index): (bool, bool) = (r.get(4), r.get(5));
        match kind.as_str() {
            "f" => foreign.push(name),
            "m" => matviews.push(name),
            "r" if persistence == "u" => unlogged.push(name),
            "r" => {
                plain += 1;
                let ok = match ident.as_str() {
                    "f" => true,
                    "i" => ident_index,
                    "d" => pk,
                    _ => false,
                };
                if !ok {
                    keyless.push(name);
                }
            }
            _ => {}
        }
    }
    if keyless.is_empty() {
        out.push(CheckResult::ok(
            "replica_identity",
            &*scope,
            format!("all {plain} tables have a primary key or replica identity"),
        ));
    } else {
        let fix = keyless
            .iter()
            .map(|t| format!("ALTER TABLE {t} REPLICA IDENTITY FULL"))
            .collect::<Vec<_>>()
            .join("; ");
        out.push(CheckResult::problem(
            "replica_identity",
            &*scope,
            CheckStatus::Fail,
            format!(
                "{} without a primary key or replica identity: once published, UPDATE and DELETE on them fail on blue",
                plural(keyless.len(), "table")
            ),
            keyless,
            format!("add a primary key to each, or run: {fix}"),
        ));
    }
    match blue.query_one("SELECT count(*) FROM pg_largeobject_metadata", &[]).await {
        Ok(r) if r.get::<_, i64>(0) > 0 => out.push(CheckResult::problem(
            "large_objects",
            &*scope,
            CheckStatus::Fail,
            format!("{} large objects: logical replication does not copy them", r.get::<_, i64>(0)),
            vec!["pg_largeobject".into()],
            "move them into bytea columns (lo_get) and lo_unlink them, or copy them to green by hand after the switchover",
        )),
        Ok(_) => out.push(CheckResult::ok("large_objects", &*scope, "none")),
        Err(e) => out.push(CheckResult::query_failed("large_objects", &*scope, &e)),
    }
    let warn = |name: &str, objects: Vec<String>, message: &str, fix: &str, out: &mut Vec<CheckResult>| {
        if objects.is_empty() {
            out.push(CheckResult::ok(name, &*scope, "none"));
        } else {
            out.push(CheckResult::problem(
                name,
                &*scope,
                CheckStatus::Warn,
                message,
                objects,
                fix,
            ));
        }
    };
    let first = |v: &[String]| v.first().cloned().unwrap_or_default();
    warn(
        "unlogged_tables",
        unlogged.clone(),
        "not replicated: green gets them empty",
        &format!(
            "ALTER TABLE {} SET LOGGED (each) to replicate them, or accept them empty on green",
            first(&unlogged)
        ),
        out,
    );
    warn(
        "foreign_tables",
        foreign,
        "not replicated (the data lives on the remote server)",
        "check green can reach the foreign servers with the same user mappings",
        out,
    );
    warn(
        "materialized_views",
        matviews.clone(),
        "not replicated: green has them as of the schema copy",
        &format!(
            "run REFRESH MATERIALIZED VIEW {} (each) on green before the switchover",
            first(&matviews)
        ),
        out,
    );

    // Publications and subscriptions already on blue.
    let pubs = blue
        .query("SELECT pubname::text, puballtables FROM pg_publication ORDER BY 1", &[])
        .await;
    match pubs {
        Ok(rows) => {
            let ours = rows.iter().find(|r| r.get::<_, String>(0) == PUBLICATION);
            let others: Vec<String> = rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .filter(|n| n != PUBLICATION)
                .collect();
            match ours {
                Some(r) if !r.get::<_, bool>(1) => out.push(CheckResult::problem(
                    "publication",
                    &*scope,
                    CheckStatus::Fail,
                    format!("publication {PUBLICATION} exists but is not FOR ALL TABLES"),
                    vec![PUBLICATION.into()],
                    format!("DROP PUBLICATION {PUBLICATION} on blue; replicate recreates it"),
                )),
                Some(_) => {
                    out.push(CheckResult::ok(
                        "publication",
                        &*scope,
                        format!("{PUBLICATION} exists (replicate resumes)"),
                    ));
                    outside_publication(blue, &scope, out).await;
                }
                None => out.push(CheckResult::ok(
                    "publication",
                    &*scope,
                    "none yet (replicate creates it)",
                )),
            }
            if !others.is_empty() {
                out.push(CheckResult::problem(
                    "other_publications",
                    &*scope,
                    CheckStatus::Warn,
                    "blue publishes to other subscribers too; they are not moved to green",
                    others,
                    "re-point those subscribers at green after the switchover",
                ));
            }
        }
        Err(e) => out.push(CheckResult::query_failed("publication", &*scope, &e)),
    }
    if let Ok(rows) = blue
        .query(
            "SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
    {
        let subs: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if !subs.is_empty() {
            out.push(CheckResult::problem(
                "blue_subscriptions",
                &*scope,
                CheckStatus::Warn,
                "blue is itself a subscriber: green does not inherit those subscriptions",
                subs,
                "create the same subscriptions on green before the switchover",
            ));
        }
    }
}

async fn outside_publication(blue: &Client, scope: &str, out: &mut Vec<CheckResult>) {
    let q = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
                AND NOT EXISTS (SELECT 1 FROM pg_publication_tables p
                                 WHERE p.pubname = $1 AND p.schemaname = n.nspname AND p.tablename = c.relname)
              ORDER BY 1";
    match blue.query(q, &[&PUBLICATION]).await {
        Ok(rows) if rows.is_empty() => out.push(CheckResult::ok("tables_outside_publication", scope, "none")),
        Ok(rows) => out.push(CheckResult::problem(
            "tables_outside_publication",
            scope,
            CheckStatus::Warn,
            "tables not replicated by the publication",
            rows.iter().map(|r| r.get(0)).collect(),
            format!("DROP PUBLICATION {PUBLICATION} on blue and run replicate again"),
        )),
        Err(e) => out.push(CheckResult::query_failed("tables_outside_publication", scope, &e)),
    }
}

async fn green_database_checks(
    targets: &Targets,
    db: &str,
    blue: &Client,
    green: Option<&Client>,
    green_admin: &Client,
    out: &mut Vec<CheckResult>,
    scope: Scope,
) {
    let where_ = format!("green/{db}");
    // Extensions blue uses must be installable on green.
    let blue_ext = blue
        .query("SELECT extname::text, extversion FROM pg_extension ORDER BY 1", &[])
        .await;
    let green_avail = green_admin
        .query("SELECT name::text, default_version FROM pg_available_extensions", &[])
        .await;
    match (blue_ext, green_avail) {
        (Ok(b), Ok(g)) => {
            let mut missing = Vec::new();
            let mut versions = Vec::new();
            for r in &b {
                let (name, version): (String, String) = (r.get(0), r.get(1));
                match g.iter().find(|x| x.get::<_, String>(0) == name) {
                    None => missing.push(name),
                    Some(x) => versions.push(format!(
                        "{name} {version} (green: {})",
                        x.get::<_, Option<String>>(1).unwrap_or_default()
                    )),
                }
            }
            if missing.is_empty() {
                out.push(CheckResult {
                    objects: versions,
                    ..CheckResult::ok("extensions", &*where_, "every extension of blue is available on green")
                });
            } else {
                out.push(CheckResult::problem(
                    "extensions",
                    &*where_,
                    CheckStatus::Fail,
                    "extensions used on blue are not installed on green's server",
                    missing,
                    "install the packages providing them on green (same or newer versions)",
                ));
            }
        }
        (Err(e), _) | (_, Err(e)) => out.push(CheckResult::query_failed("extensions", &*where_, &e)),
    }
    if scope == Scope::All {
        if let Some(green) = green {
            schema_match(targets, db, blue, green, out).await;
        }
    }
    reachability(targets, db, green.unwrap_or(green_admin), out).await;
}

/// What must match: tables, columns and types, primary keys and unique constraints, sequences.
const SCHEMA_FACTS: &str = "
SELECT 'table ' || c.oid::regclass::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover') AND n.nspname !~ '^pg_(toast|temp)'
UNION ALL
SELECT 'column ' || c.oid::regclass::text || '.' || quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover') AND n.nspname !~ '^pg_(toast|temp)'
UNION ALL
SELECT 'constraint ' || con.conrelid::regclass::text || ' ' || pg_get_constraintdef(con.oid)
  FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
 WHERE con.contype IN ('p', 'u') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover')
   AND n.nspname !~ '^pg_(toast|temp)'
UNION ALL
SELECT 'sequence ' || c.oid::regclass::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover')
   AND n.nspname !~ '^pg_(toast|temp)'";

async fn schema_facts(c: &Client) -> Result<BTreeSet<String>, tokio_postgres::Error> {
    c.batch_execute("SET search_path = pg_catalog").await?;
    let facts = c.query(SCHEMA_FACTS, &[]).await?.iter().map(|r| r.get(0)).collect();
    c.batch_execute("RESET search_path").await?;
    Ok(facts)
}

async fn schema_match(targets: &Targets, db: &str, blue: &Client, green: &Client, out: &mut Vec<CheckResult>) {
    let where_ = format!("green/{db}");
    let (b, g) = match (schema_facts(blue).await, schema_facts(green).await) {
        (Ok(b), Ok(g)) => (b, g),
        (Err(e), _) | (_, Err(e)) => {
            out.push(CheckResult::query_failed("schema_match", where_, &e));
            return;
        }
    };
    let green_tables = g.iter().filter(|f| f.starts_with("table ")).count();
    if green_tables == 0 && targets.method == ReplicationMethod::Copy {
        out.push(CheckResult::ok(
            "schema_match",
            where_,
            "green has no tables yet: replicate copies blue's schema",
        ));
        return;
    }
    let mut diffs: Vec<String> = b.difference(&g).map(|f| format!("missing on green: {f}")).collect();
    diffs.extend(g.difference(&b).map(|f| format!("only on green: {f}")));
    if diffs.is_empty() {
        out.push(CheckResult::ok(
            "schema_match",
            where_,
            format!("tables, columns, keys and sequences match ({} items)", b.len()),
        ));
    } else {
        let n = diffs.len();
        diffs.truncate(50);
        out.push(CheckResult::problem(
            "schema_match",
            where_,
            CheckStatus::Fail,
            format!("{n} difference(s) between blue's and green's schema"),
            diffs,
            "apply the missing DDL to green (or drop green's database and let replicate copy the schema)",
        ));
    }
}

/// Green connects to blue with the subscription's conninfo: a CREATE SUBSCRIPTION
/// that is rolled back (it connects to the publisher while being created).
async fn reachability(targets: &Targets, db: &str, green: &Client, out: &mut Vec<CheckResult>) {
    let where_ = format!("green/{db}");
    let conninfo = targets.subscription_conninfo(db);
    let name = format!("{SUBSCRIPTION_PREFIX}check_{}", std::process::id());
    let sql = create_subscription_sql(
        &name,
        &conninfo,
        "connect = true, enabled = false, create_slot = false, slot_name = NONE",
    )
    .replace(
        &format!("PUBLICATION \"{PUBLICATION}\""),
        "PUBLICATION pgcutover_reachability_check",
    );
    let result = async {
        green.batch_execute("BEGIN").await?;
        let r = green.batch_execute(&sql).await;
        green.batch_execute("ROLLBACK").await?;
        r
    }
    .await;
    let shown = redact_password(&conninfo);
    match result {
        Ok(()) => out.push(CheckResult::ok("green_reaches_blue", where_, format!("green connects to blue with {shown}"))),
        Err(e) => out.push(CheckResult::problem(
            "green_reaches_blue",
            where_,
            CheckStatus::Fail,
            format!("green cannot connect to blue with {shown}: {}", pg_message(&e)),
            vec![shown.clone()],
            "set [replication] source_conninfo to a conninfo that works from green's host (blue's address as green sees it, a user blue's pg_hba.conf allows from green, its password)",
        )),
    }
}

/// The conninfo with its password replaced by `***`.
pub(crate) fn redact_password(conninfo: &str) -> String {
    let mut out = Vec::new();
    let mut rest = conninfo;
    while let Some(i) = rest.find("password=") {
        out.push(rest[..i + 9].to_owned());
        let after = &rest[i + 9..];
        let end = if let Some(q) = after.strip_prefix('\'') {
            let mut j = 0;
            let b = q.as_bytes();
            while j < b.len() && b[j] != b'\'' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            (j + 2).min(after.len())
        } else {
            after.find(' ').unwrap_or(after.len())
        };
        out.push("***".into());
        rest = &after[end..];
    }
    out.push(rest.to_owned());
    out.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_password("host=a password=s3cret dbname=x"),
            "host=a password=*** dbname=x"
        );
        assert_eq!(redact_password("password='a b\\'c' dbname=x"), "password=*** dbname=x");
        assert_eq!(redact_password("host=a"), "host=a");
    }
}
