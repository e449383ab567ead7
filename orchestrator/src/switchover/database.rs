//! The switchover's work on the databases: fence, sentinel, catch-up, sequences
//! and subscriptions (reverse replication is in `crate::reverse`). Every step is one
//! or a few round trips; cleanup steps are idempotent so a rollback can run after any
//! partial step.

use crate::error::pg_message;
use crate::quote::quote_ident;
use crate::{suppress_ddl_capture, SENTINEL_TABLE};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// A failed database step: what was being done, and the server's message.
pub(crate) fn failed(doing: &str, e: tokio_postgres::Error) -> String {
    format!("{doing}: {}", pg_message(&e))
}

/// Lets this session write on a fenced server: the session-level default goes off
/// (its own statement: a transaction started under the fence stays read-only).
async fn lift_fence_for_session(client: &Client) -> Result<(), String> {
    client
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| failed("lifting the fence for this session", e))
}

/// Marks this session's DDL as pgcutover's own (not DDL drift).
async fn mark_own_ddl(client: &Client) -> Result<(), String> {
    suppress_ddl_capture(client)
        .await
        .map_err(|e| failed("marking pgcutover's session", e))
}

/// The pid of the orchestrator's own backend behind `client`.
pub(crate) async fn backend_pid(client: &Client) -> Result<i32, String> {
    let row = client
        .query_one("select pg_catalog.pg_backend_pid()", &[])
        .await
        .map_err(|e| failed("reading the backend pid", e))?;
    Ok(row.get(0))
}

/// Transactions on the server that hold a transaction id and started longer ago
/// than `older_than`: (pid, age in seconds, query).
pub(crate) async fn old_writers(client: &Client, older_than: Duration) -> Result<Vec<(i32, f64, String)>, String> {
    let rows = client
        .query(
            "select pid, extract(epoch from now() - xact_start)::float8, coalesce(left(query, 80), '')
               from pg_catalog.pg_stat_activity
              where backend_xid is not null and pid <> pg_catalog.pg_backend_pid()
                and xact_start < now() - make_interval(secs => $1)",
            &[&older_than.as_secs_f64()],
        )
        .await
        .map_err(|e| failed("looking for long transactions", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// Makes every new transaction on the server read-only, for every role
/// (`ALTER SYSTEM` + reload), then ends client backends that are not `spared`
/// (the proxies' held sessions and the orchestrator's own), and waits until no
/// client backend holds a transaction id.
pub(crate) async fn fence(client: &Client, spared: &[i32], settle: Duration) -> Result<usize, String> {
    client
        .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .map_err(|e| failed("ALTER SYSTEM SET default_transaction_read_only = on", e))?;
    client
        .batch_execute("SELECT pg_catalog.pg_reload_conf()")
        .await
        .map_err(|e| failed("reloading the configuration", e))?;
    let terminated = client
        .query(
            "select pg_catalog.pg_terminate_backend(pid) from pg_catalog.pg_stat_activity
              where backend_type = 'client backend' and pid <> pg_catalog.pg_backend_pid()
                and pid <> all($1::int4[])",
            &[&spared],
        )
        .await
        .map_err(|e| failed("ending sessions that bypass the proxy", e))?
        .len();
    // Terminated backends take a moment to abort their transactions.
    let deadline = Instant::now() + settle;
    loop {
        let row = client
            .query_one(
                "select count(*)::int8, coalesce(string_agg(pid::text, ', '), '') from pg_catalog.pg_stat_activity
                  where backend_xid is not null and backend_type = 'client backend'
                    and pid <> pg_catalog.pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| failed("checking for write transactions", e))?;
        if row.get::<_, i64>(0) == 0 {
            return Ok(terminated);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "backends {} still hold a transaction id {settle:?} after the fence",
                row.get::<_, String>(1)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Lifts the fence (idempotent).
pub(crate) async fn unfence(client: &Client) -> Result<(), String> {
    client
        .batch_execute("ALTER SYSTEM RESET default_transaction_read_only")
        .await
        .map_err(|e| failed("ALTER SYSTEM RESET default_transaction_read_only", e))?;
    client
        .batch_execute("SELECT pg_catalog.pg_reload_conf()")
        .await
        .map_err(|e| failed("reloading the configuration", e))
}

/// Writes the sentinel for `database` on the fenced source (a read-write
/// transaction passes the fence); returns its token and an LSN at or past its
/// commit: the cut.
pub(crate) async fn write_sentinel(client: &mut Client, database: &str) -> Result<(i64, String), String> {
    let tx = client
        .build_transaction()
        .read_only(false)
        .start()
        .await
        .map_err(|e| failed("starting the sentinel transaction", e))?;
    // Flushed at commit, whatever the server's default: the walsender sends only
    // flushed WAL, and with asynchronous commit the WAL writer's delay (200 ms by
    // default) would be added to every client's wait.
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .await
        .map_err(|e| failed("making the sentinel commit synchronous", e))?;
    let row = tx
        .query_one(
            &format!(
                "insert into {SENTINEL_TABLE} as s (database, token, written_at) values ($1, 1, now())
                 on conflict (database) do update set token = s.token + 1, written_at = now() returning token"
            ),
            &[&database],
        )
        .await
        .map_err(|e| failed("writing the sentinel", e))?;
    let token: i64 = row.get(0);
    tx.commit().await.map_err(|e| failed("committing the sentinel", e))?;
    let lsn: String = client
        .query_one("select pg_catalog.pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| failed("reading the cut LSN", e))?
        .get(0);
    Ok((token, lsn))
}

/// Whether the destination applied the sentinel with `token` (logical replication
/// applies in commit order, so everything committed before it is there too).
pub(crate) async fn sentinel_arrived(client: &Client, database: &str, token: i64) -> Result<bool, String> {
    let row = client
        .query_opt(
            &format!("select token from {SENTINEL_TABLE} where database = $1"),
            &[&database],
        )
        .await
        .map_err(|e| failed("reading the sentinel", e))?;
    Ok(row.is_some_and(|r| r.get::<_, i64>(0) >= token))
}

/// Whether the source's slot `slot` confirmed everything up to `lsn`.
pub(crate) async fn slot_confirmed(client: &Client, slot: &str, lsn: &str) -> Result<bool, String> {
    let row = client
        .query_opt(
            "select confirmed_flush_lsn >= $2::text::pg_lsn from pg_catalog.pg_replication_slots where slot_name = $1",
            &[&slot, &lsn],
        )
        .await
        .map_err(|e| failed("reading the slot", e))?;
    Ok(row.and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false))
}

/// Reads every used sequence on the source and sets it on the destination in one
/// statement; returns how many.
pub(crate) async fn sync_sequences(source: &Client, dest: &Client) -> Result<usize, String> {
    let rows = source
        .query(
            "select format('%I.%I', schemaname, sequencename), last_value from pg_catalog.pg_sequences
              where last_value is not null",
            &[],
        )
        .await
        .map_err(|e| failed("reading the sequences", e))?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let values: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    // The destination may be fenced still (a rollback to blue); this session writes.
    // One synchronously committed transaction flushes the destination's WAL through
    // everything its apply worker committed (asynchronously, by default) up to the
    // sentinel: a crash of the destination right after the flip loses none of it.
    lift_fence_for_session(dest).await?;
    dest.batch_execute("SET synchronous_commit = on")
        .await
        .map_err(|e| failed("setting synchronous_commit", e))?;
    dest.batch_execute("SELECT pg_catalog.txid_current()")
        .await
        .map_err(|e| failed("flushing the destination's WAL", e))?;
    if names.is_empty() {
        return Ok(0);
    }
    dest.query_one(
        "select count(pg_catalog.setval(n::regclass, v, true)) from unnest($1::text[], $2::int8[]) as t(n, v)",
        &[&names, &values],
    )
    .await
    .map_err(|e| failed("setting the sequences", e))?;
    Ok(names.len())
}

/// Enables or disables a subscription (on a fenced server too).
pub(crate) async fn set_subscription(client: &Client, subscription: &str, enabled: bool) -> Result<(), String> {
    let verb = if enabled { "ENABLE" } else { "DISABLE" };
    mark_own_ddl(client).await?;
    lift_fence_for_session(client).await?;
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION {} {verb}", quote_ident(subscription)))
        .await
        .map_err(|e| failed(&format!("ALTER SUBSCRIPTION {subscription} {verb}"), e))
}

/// Whether `subscription` exists, is enabled and has a running worker.
pub(crate) async fn subscription_running(client: &Client, subscription: &str) -> Result<Option<String>, String> {
    let row = client
        .query_opt(
            "select s.subenabled, exists (select from pg_catalog.pg_stat_subscription w
                                           where w.subid = s.oid and w.pid is not null and w.relid is null)
               from pg_catalog.pg_subscription s
              where s.subname = $1 and s.subdbid = (select oid from pg_catalog.pg_database where datname = current_database())",
            &[&subscription],
        )
        .await
        .map_err(|e| failed("reading the subscription", e))?;
    Ok(match row {
        None => Some(format!("subscription {subscription} does not exist")),
        Some(r) if !r.get::<_, bool>(0) => Some(format!("subscription {subscription} is disabled")),
        Some(r) if !r.get::<_, bool>(1) => Some(format!("subscription {subscription} has no running apply worker")),
        Some(_) => None,
    })
}
