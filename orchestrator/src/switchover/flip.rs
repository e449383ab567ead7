//! Flip, the commit point: green's reverse slot, the destination writable, every
//! proxy routed to it. After the resume, the forward subscription is retired
//! (disabled, then dropped with its slot) and the reverse one started, outside the
//! hold.

use super::catch_up::{poll_until, slot_confirmed};
use super::conn::Conn;
use super::error::{within, SwitchoverError};
use super::fence::{lift_for_session, lift_read_only, unguard_tables};
use super::machine::Run;
use super::undo::Undo;
use crate::quote::quote_ident;
use crate::targets::Side;
use crate::{reverse, suppress_ddl_capture};
use futures_util::future::join_all;
use pgcutover_api::UnmovedSession;
use std::time::{Duration, Instant};

/// How long the source's slot gets to confirm the cut after the resume: it follows
/// the subscriber's flush reports (up to ~1 s with asynchronous apply).
const CONFIRM_BUDGET: Duration = Duration::from_secs(5);

/// How long all the work after the resume may take.
const FINISH_BUDGET: Duration = Duration::from_secs(30);

impl Run<'_> {
    /// Flip: past the route calls the destination serves, whatever fails.
    pub(super) async fn flip(&mut self) -> Result<(), SwitchoverError> {
        let (source, dest) = (self.source(), self.dest());
        // Green's reverse slot now, before green takes any write, so it holds every
        // one of them; blue subscribes to it after the resume (see finish_flip).
        if self.wants_reverse() {
            for d in &self.dbs {
                self.undo.push(Undo::DropReverseSlot {
                    database: d.name.clone(),
                });
                reverse::create_slot(&d.dest.client, &d.name).await?;
            }
        }
        let first = &self.dbs.first().ok_or(SwitchoverError::NoDatabase)?.dest;
        // The read-only default is server-wide: lifted once; the guards per database.
        lift_read_only(first).await?;
        for d in &self.dbs {
            if self.dest_fenced {
                // A destination fenced by an earlier run stays fenced if this one rolls back.
                self.undo.push(Undo::Refence {
                    side: dest,
                    database: d.name.clone(),
                });
            }
            unguard_tables(&d.dest).await?;
        }
        // Nothing but pgcutover's sentinel committed on the source since the fence.
        self.check_proof().await?;
        // What every proxy that starts later reads: its route, before any proxy has it.
        self.record_route().await?;
        // The commit point: once any proxy may route, going back is `pgcutover rollback`.
        self.undo.commit();
        let budget = self.opts.timeout;
        let routes = self.proxies.iter().map(|p| p.route(&self.run_id, dest, budget));
        let mut problems = Vec::new();
        for (p, r) in self.proxies.iter().zip(join_all(routes).await) {
            match r {
                Ok(routed) => {
                    self.report.sessions_moved += routed.moved;
                    self.report.pinned_sessions += routed.not_moved;
                    let proxy = p.name();
                    self.report
                        .unmoved_sessions
                        .extend(routed.unmoved.into_iter().map(|u| UnmovedSession {
                            proxy: proxy.clone(),
                            ..u
                        }));
                }
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SwitchoverError::NotRouted {
                from: source,
                to: dest,
                problems,
            })
        }
    }

    /// After the resume (clients run on the destination): once the source's slot
    /// confirmed the cut, retire the subscription (its slot on the source would keep
    /// WAL there for ever), then subscribe the source to the reverse slot. The
    /// subscription stays enabled meanwhile; the fenced source sends nothing new.
    pub(super) async fn finish_flip(&mut self) -> Result<(), SwitchoverError> {
        let step = async {
            let mut unconfirmed = Vec::new();
            for (d, cut) in self.dbs.iter().zip(&self.cuts) {
                let slot = self.subscription(&d.name);
                let deadline = Instant::now() + CONFIRM_BUDGET;
                let confirmed = poll_until(Some(deadline), Duration::from_millis(10), || async {
                    Ok(slot_confirmed(&d.source, &slot, &cut.lsn).await?.then_some(()))
                })
                .await?;
                if confirmed.is_none() {
                    unconfirmed.push(format!("{slot} below {}", cut.lsn));
                }
                retire_subscription(&d.dest, &slot).await?;
            }
            if self.wants_reverse() {
                for d in &self.dbs {
                    let conninfo = self.targets.conninfo(Side::Green, &d.name);
                    reverse::create_subscription(&d.source.client, &d.name, &conninfo).await?;
                }
            }
            if unconfirmed.is_empty() {
                Ok(())
            } else {
                // The data is there (the sentinel proved it); only the slot's record lags.
                Err(SwitchoverError::CutUnconfirmed {
                    slots: unconfirmed,
                    within: CONFIRM_BUDGET,
                })
            }
        };
        within(FINISH_BUDGET, "finishing the flip", step).await?;
        self.report.reverse_replication = self.wants_reverse();
        Ok(())
    }
}

/// Disables `subscription` and drops it with its slot on the publisher (the source,
/// which still answers: the fence refuses writes, not replication commands); on a
/// fenced server too. Idempotent: a recovery may find it retired already.
pub(super) async fn retire_subscription(c: &Conn, subscription: &str) -> Result<(), SwitchoverError> {
    let exists = c
        .client
        .query_opt(
            "select from pg_catalog.pg_subscription where subname = $1",
            &[&subscription],
        )
        .await
        .map_err(c.failed("looking for the subscription"))?
        .is_some();
    if !exists {
        return Ok(());
    }
    suppress_ddl_capture(&c.client)
        .await
        .map_err(c.failed("marking pgcutover's session"))?;
    lift_for_session(c).await?;
    let name = quote_ident(subscription);
    // Two statements: DROP SUBSCRIPTION with a slot cannot run in a transaction block.
    c.client
        .batch_execute(&format!("ALTER SUBSCRIPTION {name} DISABLE"))
        .await
        .map_err(c.failed(format!("ALTER SUBSCRIPTION {subscription} DISABLE")))?;
    c.client
        .batch_execute(&format!("DROP SUBSCRIPTION {name}"))
        .await
        .map_err(c.failed(format!("DROP SUBSCRIPTION {subscription}")))
}
