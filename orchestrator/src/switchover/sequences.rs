//! SyncSequences: logical replication does not carry sequences, so every used one is
//! read on the source and set on the destination, in one statement per database.

use super::conn::Pair;
use super::error::SwitchoverError;
use super::fence::lift_for_session;
use super::machine::Run;
use super::phase::Phase;

impl Run<'_> {
    /// Sequences on the destination ≥ the source, for every database.
    pub(super) async fn sync_sequences(&mut self) -> Result<Phase, SwitchoverError> {
        for d in &self.dbs {
            self.report.sequences_synced += sync(d).await?;
        }
        Ok(Phase::Flip)
    }
}

/// Sets every used sequence of the source on the destination; returns how many.
async fn sync(d: &Pair) -> Result<usize, SwitchoverError> {
    let (source, dest) = (&d.source, &d.dest);
    let rows = source
        .client
        .query(
            "select format('%I.%I', schemaname, sequencename), last_value from pg_catalog.pg_sequences
              where last_value is not null",
            &[],
        )
        .await
        .map_err(source.failed("reading the sequences"))?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let values: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    // The destination may be fenced still (a rollback to blue); this session writes.
    // One synchronously committed transaction flushes the destination's WAL through
    // everything its apply worker committed (asynchronously, by default) up to the
    // sentinel: a crash of the destination right after the flip loses none of it.
    lift_for_session(dest).await?;
    dest.client
        .batch_execute("SET synchronous_commit = on")
        .await
        .map_err(dest.failed("setting synchronous_commit"))?;
    dest.client
        .batch_execute("SELECT pg_catalog.txid_current()")
        .await
        .map_err(dest.failed("flushing the destination's WAL"))?;
    if names.is_empty() {
        return Ok(0);
    }
    dest.client
        .query_one(
            // Never backwards: a destination already ahead (a retried run, writes
            // made there) keeps its value.
            "select count(pg_catalog.setval(n::regclass,
                                             greatest(v, coalesce(pg_catalog.pg_sequence_last_value(n::regclass), v)), true))
               from unnest($1::text[], $2::int8[]) as t(n, v)",
            &[&names, &values],
        )
        .await
        .map_err(dest.failed("setting the sequences"))?;
    Ok(names.len())
}
