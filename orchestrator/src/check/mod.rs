//! Preflight checks (`pgcutover check`): every check has a name, where it ran, a
//! status, the objects involved and the exact fix. `replicate` runs the subset that
//! guards it and refuses when one fails.
//!
//! One file per place a check runs: `connection` (logins), `server` (blue's and
//! green's settings), `blue` (each database on blue), `green` (each database on
//! green), with `schema` and `reach` for the two green checks that need their own
//! SQL.

mod blue;
mod connection;
mod green;
mod reach;
mod schema;
mod server;

use crate::error::{pg_message, OrchestratorError};
use crate::targets::{Side, Targets};
use serde::Serialize;

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

/// Every check there is; [`Check::name`] is what `CheckResult::name` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Connection,
    GreenDatabase,
    Settings,
    WalLevel,
    Privileges,
    Capacity,
    ReplicationSlots,
    ServerVersion,
    Tables,
    ReplicaIdentity,
    LargeObjects,
    UnloggedTables,
    ForeignTables,
    MaterializedViews,
    Publication,
    TablesOutsidePublication,
    OtherPublications,
    BlueSubscriptions,
    Extensions,
    SchemaMatch,
    GreenReachesBlue,
}

impl Check {
    /// The name in `pgcutover check`'s output and JSON; scripts match on it.
    fn name(self) -> &'static str {
        match self {
            Check::Connection => "connection",
            Check::GreenDatabase => "green_database",
            Check::Settings => "settings",
            Check::WalLevel => "wal_level",
            Check::Privileges => "privileges",
            Check::Capacity => "capacity",
            Check::ReplicationSlots => "replication_slots",
            Check::ServerVersion => "server_version",
            Check::Tables => "tables",
            Check::ReplicaIdentity => "replica_identity",
            Check::LargeObjects => "large_objects",
            Check::UnloggedTables => "unlogged_tables",
            Check::ForeignTables => "foreign_tables",
            Check::MaterializedViews => "materialized_views",
            Check::Publication => "publication",
            Check::TablesOutsidePublication => "tables_outside_publication",
            Check::OtherPublications => "other_publications",
            Check::BlueSubscriptions => "blue_subscriptions",
            Check::Extensions => "extensions",
            Check::SchemaMatch => "schema_match",
            Check::GreenReachesBlue => "green_reaches_blue",
        }
    }
}

impl CheckResult {
    fn new(check: Check, scope: impl Into<String>, status: CheckStatus, message: impl Into<String>) -> CheckResult {
        CheckResult {
            name: check.name().into(),
            scope: scope.into(),
            status,
            message: message.into(),
            objects: Vec::new(),
            fix: String::new(),
        }
    }

    fn ok(check: Check, scope: impl Into<String>, message: impl Into<String>) -> CheckResult {
        CheckResult::new(check, scope, CheckStatus::Ok, message)
    }

    fn problem(
        check: Check,
        scope: impl Into<String>,
        status: CheckStatus,
        message: impl Into<String>,
        objects: Vec<String>,
        fix: impl Into<String>,
    ) -> CheckResult {
        CheckResult {
            objects,
            fix: fix.into(),
            ..CheckResult::new(check, scope, status, message)
        }
    }

    fn query_failed(check: Check, scope: impl Into<String>, e: &tokio_postgres::Error) -> CheckResult {
        CheckResult::problem(
            check,
            scope,
            CheckStatus::Fail,
            format!("could not check: {}", pg_message(e)),
            vec![],
            "give the admin login of [blue]/[green] url superuser (or rds_superuser) rights",
        )
    }

    fn is(&self, check: Check) -> bool {
        self.name == check.name()
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
        if first.is(Check::Connection) {
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
            Err(e) => out.push(connection::failed(Side::Blue, db, &e)),
        }
    }
    let green = if scope == Scope::PrepareClone {
        None
    } else {
        connection::green_clients(targets, &mut out).await
    };
    if out.iter().any(|r| r.status == CheckStatus::Fail) {
        return out;
    }
    out.push(CheckResult::ok(
        Check::Connection,
        "blue",
        format!("{} at {}", plural(blue.len(), "database"), targets.blue.host_port()),
    ));
    let blue_major = server::server_checks(targets, Side::Blue, &blue[0].1, &mut out).await;
    if let Some(g) = &green {
        out.push(CheckResult::ok(
            Check::Connection,
            "green",
            format!("{} at {}", targets.green.host_port(), g.admin_db),
        ));
        let green_major = server::server_checks(targets, Side::Green, &g.admin, &mut out).await;
        if let (Some(b), Some(gm)) = (blue_major, green_major) {
            out.push(server::server_version(targets, b, gm));
        }
    }
    for (db, b) in &blue {
        blue::blue_database_checks(db, b, &mut out).await;
        if let Some(g) = &green {
            let green_db = g.dbs.iter().find(|(d, _)| d == db).map(|(_, c)| c);
            green::green_database_checks(targets, db, b, green_db, &g.admin, &mut out, scope).await;
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

/// The checks as `pgcutover check` prints them: one aligned line each, the objects
/// and the fix below a failing or warning one, then the totals.
pub fn render(results: &[CheckResult]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let scope_width = results.iter().map(|r| r.scope.len()).max().unwrap_or(0);
    let indent = " ".repeat(6 + width + 2 + scope_width + 2);
    for r in results {
        let status = match r.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        };
        let _ = writeln!(
            out,
            "{status}  {:width$}  {:scope_width$}  {}",
            r.name, r.scope, r.message
        );
        if r.status != CheckStatus::Ok && !r.objects.is_empty() {
            let _ = writeln!(out, "{indent}objects: {}", r.objects.join(", "));
        }
        if !r.fix.is_empty() {
            let _ = writeln!(out, "{indent}fix: {}", r.fix);
        }
    }
    let count = |s: CheckStatus| results.iter().filter(|r| r.status == s).count();
    let (failed, warned) = (count(CheckStatus::Fail), count(CheckStatus::Warn));
    let _ = writeln!(
        out,
        "{} checks: {} ok, {warned} warning(s), {failed} failed",
        results.len(),
        results.len() - failed - warned
    );
    out
}
