//! The invariants the demo proves, checked on data: green is asked for every id a
//! client saw committed, sequences must continue above blue's, and blue must refuse a
//! write after the switchover.

use crate::report::ClientsSeen;
use crate::servers::{Servers, ACCOUNTS};
use crate::workload::{thousands, Ack};
use crate::DATABASE;
use pgcutover_orchestrator::pg_message;
use pgcutover_orchestrator::switchover::{Outcome, Report};
use std::collections::HashSet;

/// One invariant and whether it held.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What is claimed.
    pub name: String,
    /// Whether it holds.
    pub ok: bool,
    /// The figures behind it.
    pub detail: String,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        ok,
        detail: detail.into(),
    }
}

/// Every check; those that need a completed switchover fail (naming why) without one.
pub(crate) async fn run(servers: &Servers, report: &Report, seen: &ClientsSeen) -> Vec<Check> {
    let mut checks = Vec::new();
    let completed = report.outcome == Outcome::Completed;
    checks.push(check(
        "switchover completed",
        completed,
        match (&report.reason, completed) {
            (_, true) => format!("clients held at most {:.0} ms", report.max_hold_ms),
            (Some(r), false) => r.clone(),
            (None, false) => "no reason given".into(),
        },
    ));
    checks.push(check(
        "no client saw an error",
        seen.errors == 0 && seen.transactions > 0,
        format!(
            "{} errors in {} transactions from {} clients",
            seen.errors,
            thousands(seen.transactions),
            seen.clients
        ),
    ));
    if !completed {
        return checks;
    }
    match on_green(servers, seen).await {
        Ok(mut c) => checks.append(&mut c),
        Err(e) => checks.push(check("green readable", false, e)),
    }
    checks.push(sequences_continue(seen));
    let on_17 = seen
        .final_versions
        .iter()
        .filter(|v| v.as_deref().is_some_and(|v| v.starts_with("17")))
        .count();
    checks.push(check(
        "clients now talk to PostgreSQL 17",
        on_17 == seen.clients && seen.clients > 0,
        format!(
            "{on_17} of {} client connections report server_version 17 ({}), on the connection they opened to blue",
            seen.clients, servers.green_version
        ),
    ));
    checks.push(blue_fenced(servers).await);
    checks
}

/// Every acknowledged order and event is on green, and the balances add up.
async fn on_green(servers: &Servers, seen: &ClientsSeen) -> Result<Vec<Check>, String> {
    let green = servers
        .admin_client("green", DATABASE)
        .await
        .map_err(|e| e.to_string())?;
    let mut checks = Vec::new();
    for (table, acks) in [("orders", &seen.orders), ("events", &seen.events)] {
        let ids: Vec<i64> = acks.iter().map(|a| a.id).collect();
        let sql = format!("SELECT count(*) FROM {table} WHERE id = ANY($1::bigint[])");
        let found: i64 = green
            .query_one(&sql, &[&ids])
            .await
            .map_err(|e| format!("green: counting acknowledged {table}: {}", pg_message(&e)))?
            .get(0);
        let distinct = ids.iter().collect::<HashSet<_>>().len();
        checks.push(check(
            &format!("every acknowledged {table} row is on green"),
            found as usize == ids.len() && distinct == ids.len() && !ids.is_empty(),
            format!(
                "{} of {} acknowledged ids found{}",
                thousands(found as u64),
                thousands(ids.len() as u64),
                if distinct == ids.len() {
                    String::new()
                } else {
                    format!("; {} ids acknowledged twice", ids.len() - distinct)
                }
            ),
        ));
    }
    let row = green
        .query_one("SELECT sum(balance_cents)::bigint, count(*) FROM accounts", &[])
        .await
        .map_err(|e| format!("green: summing balances: {}", pg_message(&e)))?;
    let (sum, accounts): (i64, i64) = (row.get(0), row.get(1));
    let expected = ACCOUNTS * crate::servers::INITIAL_BALANCE_CENTS + seen.amount_cents;
    checks.push(check(
        "every acknowledged balance update is on green",
        sum == expected && accounts == ACCOUNTS,
        format!("sum of {accounts} balances {sum} = initial + acknowledged updates {expected}"),
    ));
    Ok(checks)
}

/// Ids generated on green (identity and serial) are all above every id generated on
/// blue: green's sequences were set from blue's at the switchover.
fn sequences_continue(seen: &ClientsSeen) -> Check {
    let mut parts = Vec::new();
    let mut ok = true;
    for (name, acks) in [
        ("orders.id (identity)", &seen.orders),
        ("events.id (serial)", &seen.events),
    ] {
        let max_blue = acks.iter().filter(|a| !a.on_green).map(|a: &Ack| a.id).max();
        let min_green = acks.iter().filter(|a| a.on_green).map(|a| a.id).min();
        match (max_blue, min_green) {
            (Some(blue_max), Some(green_min)) => {
                ok &= green_min > blue_max;
                parts.push(format!("{name}: last on blue {blue_max}, first on green {green_min}"));
            }
            _ => {
                ok = false;
                parts.push(format!("{name}: no writes on both sides to compare"));
            }
        }
    }
    check("sequences continue on green", ok, parts.join("; "))
}

/// A client that bypasses the proxy cannot write to blue any more.
async fn blue_fenced(servers: &Servers) -> Check {
    let name = "blue refuses writes (fenced)";
    let client = match servers.app_client_direct("blue").await {
        Ok(c) => c,
        Err(e) => {
            return check(
                name,
                true,
                format!("the app role cannot even log in: {}", pg_message(&e)),
            )
        }
    };
    match client
        .execute("INSERT INTO events (account_id, kind) VALUES (1, 'bypass')", &[])
        .await
    {
        Ok(_) => check(name, false, "an INSERT straight into blue as the app role succeeded"),
        Err(e) => check(
            name,
            true,
            format!("an INSERT straight into blue fails: {}", pg_message(&e)),
        ),
    }
}
