//! The logins every other check needs: one per database on blue, and on green an
//! admin connection plus each replicated database that exists there already.

use super::{Check, CheckResult, CheckStatus};
use crate::error::OrchestratorError;
use crate::targets::{Side, Targets};
use pgcutover_config::ReplicationMethod;
use tokio_postgres::Client;

/// A failed login as a `connection` check, with the fix `connect_error` chose.
pub(super) fn failed(side: Side, db: &str, e: &OrchestratorError) -> CheckResult {
    let (message, fix) = match e {
        OrchestratorError::Connect { reason, fix, addr, .. } => (
            format!("cannot connect to {side} at {addr} (database {db}): {reason}"),
            fix.clone(),
        ),
        other => (other.to_string(), String::new()),
    };
    CheckResult::problem(
        Check::Connection,
        format!("{side}/{db}"),
        CheckStatus::Fail,
        message,
        vec![db.into()],
        fix,
    )
}

pub(super) struct GreenClients {
    /// The database `admin` is connected to.
    pub(super) admin_db: String,
    /// For server-wide checks; also stands in for a database green does not have yet.
    pub(super) admin: Client,
    /// The replicated databases green has.
    pub(super) dbs: Vec<(String, Client)>,
}

/// Green: an admin connection plus each replicated database that exists there.
pub(super) async fn green_clients(targets: &Targets, out: &mut Vec<CheckResult>) -> Option<GreenClients> {
    let mut dbs = Vec::new();
    let mut failed_any = false;
    for db in &targets.databases {
        match targets.connect(Side::Green, db).await {
            Ok(c) => dbs.push((db.clone(), c)),
            Err(e) if e.is_missing_database() => out.push(green_database_missing(targets, db)),
            Err(e) => {
                failed_any = true;
                out.push(failed(Side::Green, db, &e));
            }
        }
    }
    match targets.connect_admin(Side::Green).await {
        Ok((admin_db, admin)) => Some(GreenClients { admin_db, admin, dbs }),
        Err(e) => {
            let admin_db = targets.green.database.clone().unwrap_or_else(|| "postgres".into());
            // No admin database on green: any replicated database serves for server-wide checks.
            if let Some((d, _)) = dbs.first() {
                if let Ok(admin) = targets.connect(Side::Green, d).await {
                    return Some(GreenClients {
                        admin_db: d.clone(),
                        admin,
                        dbs,
                    });
                }
            }
            if !failed_any {
                out.push(failed(Side::Green, &admin_db, &e));
            }
            None
        }
    }
}

/// The copy method creates green's databases; a clone must have them already.
fn green_database_missing(targets: &Targets, db: &str) -> CheckResult {
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
    CheckResult::problem(
        Check::GreenDatabase,
        format!("green/{db}"),
        status,
        message,
        vec![],
        fix,
    )
}
