//! CatchUp: wait until the destination applied every sentinel (logical replication
//! applies in commit order, so every transaction acknowledged on the source is there
//! too). Also the slot check after the resume, and the polling both use.

use super::conn::Conn;
use super::error::SwitchoverError;
use super::machine::Run;
use super::phase::Phase;
use crate::SENTINEL_TABLE;
use std::future::Future;
use std::time::{Duration, Instant};
use tracing::debug;

/// How often the destination is asked for the sentinel: each wait adds to every
/// held client's latency, and a query costs well under a millisecond.
const SENTINEL_POLL: Duration = Duration::from_millis(2);

impl Run<'_> {
    /// Every database's sentinel arrived on the destination. Unbounded here: the
    /// switchover timeout bounds it.
    pub(super) async fn catch_up(&mut self) -> Result<Phase, SwitchoverError> {
        for (d, cut) in self.dbs.iter().zip(&self.cuts) {
            poll_until(None, SENTINEL_POLL, || async {
                Ok(sentinel_arrived(&d.dest, cut.token).await?.then_some(()))
            })
            .await?;
        }
        debug!(ms = self.elapsed_ms(), "sentinel arrived");
        Ok(Phase::SyncSequences)
    }
}

/// Runs `check` until it yields `Some`, waiting `every` between tries; `None` once
/// `deadline` passed (never, without one). `check` runs at least once.
pub(super) async fn poll_until<T, F, Fut>(
    deadline: Option<Instant>,
    every: Duration,
    mut check: F,
) -> Result<Option<T>, SwitchoverError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, SwitchoverError>>,
{
    loop {
        if let Some(done) = check().await? {
            return Ok(Some(done));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        tokio::time::sleep(every).await;
    }
}

/// Whether the destination applied the sentinel with `token`.
async fn sentinel_arrived(dest: &Conn, token: i64) -> Result<bool, SwitchoverError> {
    let row = dest
        .client
        .query_opt(
            &format!("select token from {SENTINEL_TABLE} where database = $1"),
            &[&dest.at.database],
        )
        .await
        .map_err(dest.failed("reading the sentinel"))?;
    Ok(row.is_some_and(|r| r.get::<_, i64>(0) >= token))
}

/// Whether the source's slot `slot` confirmed everything up to `lsn`.
pub(super) async fn slot_confirmed(source: &Conn, slot: &str, lsn: &str) -> Result<bool, SwitchoverError> {
    let row = source
        .client
        .query_opt(
            "select confirmed_flush_lsn >= $2::text::pg_lsn from pg_catalog.pg_replication_slots where slot_name = $1",
            &[&slot, &lsn],
        )
        .await
        .map_err(source.failed("reading the slot"))?;
    Ok(row.and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn polling_stops_at_the_first_yes() {
        let mut tries = 0;
        let got = poll_until(None, Duration::from_millis(1), || {
            tries += 1;
            let n = tries;
            async move { Ok((n == 3).then_some(n)) }
        })
        .await
        .unwrap();
        assert_eq!(got, Some(3));
    }

    #[tokio::test]
    async fn polling_gives_up_at_the_deadline_after_one_try() {
        let mut tries = 0;
        let past = Instant::now();
        let got = poll_until(Some(past), Duration::from_secs(60), || {
            tries += 1;
            async { Ok(None::<()>) }
        })
        .await
        .unwrap();
        assert_eq!((got, tries), (None, 1));
    }

    #[tokio::test]
    async fn a_failed_try_ends_the_polling() {
        let got = poll_until(None, Duration::from_millis(1), || async {
            Err::<Option<()>, _>(SwitchoverError::NoDatabase)
        })
        .await;
        assert!(matches!(got, Err(SwitchoverError::NoDatabase)));
    }
}
