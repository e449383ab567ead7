//! Reverse replication green → blue, so `pgcutover rollback` can go back without
//! losing writes: green's publication (made by `replicate`), green's slot (made at the
//! flip) and blue's subscription (made after the resume). Every step is idempotent,
//! so a rollback can undo any partial one.

use crate::error::{OrchestratorError, SqlContext};
use crate::quote::{quote_ident, quote_literal};
use crate::targets::Side;
use crate::{reverse_subscription_name, suppress_ddl_capture, REVERSE_PUBLICATION};
use tokio_postgres::Client;

/// Creates [`REVERSE_PUBLICATION`] on green in `database` unless it exists; returns
/// whether this call created it.
pub(crate) async fn create_publication(green: &Client, database: &str) -> Result<bool, OrchestratorError> {
    let exists = green
        .query_opt(
            "select 1 from pg_catalog.pg_publication where pubname = $1",
            &[&REVERSE_PUBLICATION],
        )
        .await
        .ctx(Side::Green, database, "looking for the reverse publication")?
        .is_some();
    if exists {
        return Ok(false);
    }
    green
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR ALL TABLES",
            quote_ident(REVERSE_PUBLICATION)
        ))
        .await
        .ctx(Side::Green, database, "creating the reverse publication")?;
    Ok(true)
}

/// Creates green's reverse slot for `database` at the flip: after catch-up and with
/// the forward subscription disabled, so it holds green's own writes only (blue 15
/// cannot filter changes by origin, so a slot created earlier would send blue's own
/// changes back to it).
pub(crate) async fn create_slot(green: &Client, database: &str) -> Result<(), OrchestratorError> {
    let slot = reverse_subscription_name(database);
    drop_slot(green, database, &slot).await?;
    green
        .query_one(
            "select pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .ctx(Side::Green, database, "creating the reverse replication slot")?;
    Ok(())
}

/// Subscribes blue (fenced) to green's reverse publication through the slot made at
/// the flip: no copy, starting at the slot.
pub(crate) async fn create_subscription(
    blue: &Client,
    database: &str,
    conninfo: &str,
) -> Result<(), OrchestratorError> {
    let subscription = reverse_subscription_name(database);
    own_writable_session(blue, database).await?;
    crate::setup::quiet_statement_log(blue).await;
    blue.batch_execute(&format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false, create_slot = false, slot_name = {}, enabled = true)",
        quote_ident(&subscription),
        quote_literal(conninfo),
        quote_ident(REVERSE_PUBLICATION),
        quote_literal(&subscription),
    ))
    .await
    .ctx(Side::Blue, database, "creating the reverse subscription on blue")
}

/// Drops blue's reverse subscription (detached first, so it need not reach green)
/// and green's reverse slot for `database`, whichever exist.
pub(crate) async fn drop_subscription_and_slot(
    blue: &Client,
    green: &Client,
    database: &str,
) -> Result<(), OrchestratorError> {
    let subscription = reverse_subscription_name(database);
    suppress_ddl_capture(blue)
        .await
        .ctx(Side::Blue, database, "marking pgcutover's session")?;
    let exists = blue
        .query_opt(
            "select 1 from pg_catalog.pg_subscription where subname = $1",
            &[&subscription],
        )
        .await
        .ctx(Side::Blue, database, "looking for the reverse subscription")?
        .is_some();
    if exists {
        let sub = quote_ident(&subscription);
        lift_fence(blue, database).await?;
        blue.batch_execute(&format!(
            "ALTER SUBSCRIPTION {sub} DISABLE; ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"
        ))
        .await
        .ctx(Side::Blue, database, "detaching the reverse subscription")?;
        blue.batch_execute(&format!("DROP SUBSCRIPTION {sub}")).await.ctx(
            Side::Blue,
            database,
            "dropping the reverse subscription",
        )?;
    }
    drop_slot(green, database, &subscription).await
}

/// Drops [`REVERSE_PUBLICATION`] on green in `database` (idempotent).
pub(crate) async fn drop_publication(green: &Client, database: &str) -> Result<(), OrchestratorError> {
    green
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(REVERSE_PUBLICATION)
        ))
        .await
        .ctx(Side::Green, database, "dropping the reverse publication")
}

async fn drop_slot(green: &Client, database: &str, slot: &str) -> Result<(), OrchestratorError> {
    green
        .query(
            "select pg_catalog.pg_drop_replication_slot(slot_name) from pg_catalog.pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(Side::Green, database, "dropping the reverse slot")?;
    Ok(())
}

/// Blue is fenced when these run: its DDL is pgcutover's own (not drift) and this
/// session may write.
/// Whether blue has the reverse subscription for `database`.
pub(crate) async fn subscription_exists(blue: &Client, database: &str) -> Result<bool, OrchestratorError> {
    Ok(blue
        .query_opt(
            "select 1 from pg_catalog.pg_subscription where subname = $1",
            &[&reverse_subscription_name(database)],
        )
        .await
        .ctx(Side::Blue, database, "looking for the reverse subscription")?
        .is_some())
}

async fn own_writable_session(blue: &Client, database: &str) -> Result<(), OrchestratorError> {
    suppress_ddl_capture(blue)
        .await
        .ctx(Side::Blue, database, "marking pgcutover's session")?;
    lift_fence(blue, database).await
}

/// Its own statement: a transaction started under the fence stays read-only.
async fn lift_fence(blue: &Client, database: &str) -> Result<(), OrchestratorError> {
    blue.batch_execute("SET default_transaction_read_only = off").await.ctx(
        Side::Blue,
        database,
        "lifting the fence for this session",
    )
}
