//! Preflight: the guardrails, one function each. A guardrail that fails refuses the
//! switchover with the problem and the fix; nothing was changed but the reverse
//! publication, which the refusal drops again (see the undo log).

use super::conn::{Conn, Pair};
use super::error::{Guardrail, SwitchoverError};
use super::fence::is_fenced;
use super::machine::Run;
use super::undo::Undo;
use crate::progress::human_duration;
use crate::{check, replication_status, reverse, CheckStatus};
use pgcutover_api::Direction;
use std::time::Duration;
use tracing::debug;

impl Run<'_> {
    /// Every guardrail, cheapest first; then the reverse publication and, for a dry
    /// run, the predicted hold.
    pub(super) async fn preflight(&mut self) -> Result<(), SwitchoverError> {
        self.proxies_on_source().await?;
        self.connect().await?;
        // Before anything but reading: from here the run is the only one.
        self.take_lease().await?;
        // The fault point's "preflight" is here: the lease taken, nothing else changed.
        super::machine::pause_for_tests(super::phase::Phase::Preflight).await;
        self.no_proxy_held().await?;
        self.sequences_usable().await?;
        debug!(ms = self.elapsed_ms(), "preflight: proxies, connections and lease");
        // Lag, drift and `pgcutover check` concern blue → green; the reverse
        // subscription is checked below.
        if self.opts.direction == Direction::Forward {
            self.replication_ready().await?;
            debug!(ms = self.elapsed_ms(), "preflight: replication status");
            self.checks_pass().await?;
        }
        self.subscriptions_running().await?;
        debug!(ms = self.elapsed_ms(), "preflight: checks and subscriptions");
        self.no_long_transaction().await?;
        self.no_prepared_transaction().await?;
        if self.wants_reverse() {
            for d in &self.dbs {
                if reverse::create_publication(&d.dest.client, &d.name).await? {
                    self.undo.push(Undo::DropReversePublication {
                        database: d.name.clone(),
                    });
                }
            }
        }
        if self.opts.dry_run {
            self.report.predicted_hold_ms = Some(self.predict_hold().await?);
        }
        Ok(())
    }

    /// Every proxy answers, and routes to the source still.
    async fn proxies_on_source(&self) -> Result<(), SwitchoverError> {
        let source = self.source();
        for p in self.proxies {
            let state = p.status().await.map_err(|e| {
                SwitchoverError::refused(
                    Guardrail::ProxyReachable,
                    format!("{} is not reachable: {e}", p.name()),
                    "start it, or remove it from [proxy] peers",
                )
            })?;
            if state.route != source {
                return Err(SwitchoverError::refused(
                    Guardrail::ProxyOnSource,
                    format!("{} routes to {} already, not {source}", p.name(), state.route.name()),
                    "nothing to switch",
                ));
            }
            // Its hold would end by itself before the run's deadline: clients would go
            // on on the fenced source in the middle of the run.
            let limit = Duration::from_millis(state.hold_limit_ms);
            if state.hold_limit_ms > 0 && limit < self.opts.timeout {
                return Err(SwitchoverError::refused(
                    Guardrail::HoldOutlastsRun,
                    format!(
                        "{} resumes a hold by itself after {} ([switchover] timeout there), sooner than this run's timeout of {}",
                        p.name(),
                        human_duration(limit),
                        human_duration(self.opts.timeout)
                    ),
                    "give the run a timeout no longer than every proxy's (--timeout), or raise [switchover] timeout on that proxy",
                ));
            }
            // A session on a database that is not replicated would move to the
            // destination's database of that name: other data, or none.
            let unreplicated: Vec<String> = state
                .databases
                .iter()
                .filter(|(db, _)| !self.targets.databases.contains(db))
                .map(|(db, n)| format!("{n} on database {db}"))
                .collect();
            if unreplicated.is_empty() {
                continue;
            }
            let sessions = format!(
                "{} has client sessions on databases that are not replicated: {}",
                p.name(),
                unreplicated.join(", ")
            );
            if !state.closes_unreplicated {
                return Err(SwitchoverError::refused(
                    Guardrail::OnlyReplicatedDatabases,
                    sessions,
                    "add the database to [replication] databases (and replicate it), end those sessions, or set [switchover] unreplicated_sessions = \"close\" on that proxy to have the flip close them",
                ));
            }
            self.progress.line(format!(
                "{sessions}; the flip closes them (unreplicated_sessions = close)"
            ));
        }
        Ok(())
    }

    /// No proxy is held already (an operator's HOLD, a dead run's hold): its timer
    /// would resume clients in the middle of this run, and the run's hold would
    /// change nothing.
    async fn no_proxy_held(&self) -> Result<(), SwitchoverError> {
        for p in self.proxies {
            let state = p.status().await?;
            if let Some(ms) = state.held_ms {
                return Err(SwitchoverError::refused(
                    Guardrail::ProxyNotHeld,
                    format!("{} has been held for {ms:.0} ms by someone else", p.name()),
                    "POST /resume it (or RESUME on its console) first",
                ));
            }
        }
        Ok(())
    }

    /// The run's connections to both sides of every database, their pids, and
    /// whether the destination is fenced (so a rollback leaves it so).
    pub(super) async fn connect(&mut self) -> Result<(), SwitchoverError> {
        let (source, dest) = (self.source(), self.dest());
        for database in &self.targets.databases {
            let s = Conn::new(source, database, self.targets.connect(source, database).await?);
            let d = Conn::new(dest, database, self.targets.connect(dest, database).await?);
            for c in [&s, &d] {
                let row = c
                    .client
                    .query_one("select pg_catalog.pg_backend_pid()", &[])
                    .await
                    .map_err(c.failed("reading the backend pid"))?;
                self.own_pids.push(row.get(0));
            }
            if self.dbs.is_empty() {
                self.dest_fenced = is_fenced(&d).await?;
            }
            self.dbs.push(Pair {
                name: database.clone(),
                source: s,
                dest: d,
            });
        }
        Ok(())
    }

    /// Replication runs, is caught up and saw no DDL drift (the status verdict).
    async fn replication_ready(&self) -> Result<(), SwitchoverError> {
        let status = replication_status(self.targets, self.config.switchover.max_lag_bytes).await;
        match status.databases.iter().find(|d| !d.ready) {
            Some(d) => Err(SwitchoverError::refused(
                Guardrail::ReplicationReady,
                format!("database {}: {}", d.database, d.verdict),
                "wait until `pgcutover status` says ready",
            )),
            None => Ok(()),
        }
    }

    /// `pgcutover check` has no failing check.
    async fn checks_pass(&self) -> Result<(), SwitchoverError> {
        let failing: Vec<_> = check::run_checks(self.targets)
            .await
            .into_iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .collect();
        if failing.is_empty() {
            return Ok(());
        }
        let problems: Vec<String> = failing.iter().map(|c| format!("{}: {}", c.name, c.message)).collect();
        let fixes: Vec<&str> = failing
            .iter()
            .map(|c| c.fix.as_str())
            .filter(|f| !f.is_empty())
            .collect();
        Err(SwitchoverError::refused(
            Guardrail::Checks,
            format!("pgcutover check fails: {}", problems.join("; ")),
            if fixes.is_empty() {
                "see `pgcutover check`".to_owned()
            } else {
                fixes.join("; ")
            },
        ))
    }

    /// The destination's subscription from the source is enabled and applying.
    async fn subscriptions_running(&self) -> Result<(), SwitchoverError> {
        for d in &self.dbs {
            if let Some(problem) = subscription_problem(&d.dest, &self.subscription(&d.name)).await? {
                let fix = match self.opts.direction {
                    Direction::Forward => "see `pgcutover status`",
                    Direction::Rollback => "rollback needs the reverse replication set up by a completed switchover with reverse_replication = true",
                };
                return Err(SwitchoverError::refused(
                    Guardrail::SubscriptionRunning,
                    format!("database {}: {problem}", d.name),
                    fix,
                ));
            }
        }
        Ok(())
    }

    /// No write transaction on the source is older than the drain budget: it would
    /// not drain in time.
    async fn no_long_transaction(&self) -> Result<(), SwitchoverError> {
        let Some(d) = self.dbs.first() else {
            return Ok(());
        };
        let drain_timeout = self.config.switchover.drain_timeout.0;
        let old = d
            .source
            .client
            .query_opt(
                "select pid, extract(epoch from now() - xact_start)::float8, coalesce(left(query, 80), '')
                   from pg_catalog.pg_stat_activity
                  where backend_xid is not null and pid <> pg_catalog.pg_backend_pid()
                    and xact_start < now() - make_interval(secs => $1)
                  limit 1",
                &[&drain_timeout.as_secs_f64()],
            )
            .await
            .map_err(d.source.failed("looking for long transactions"))?;
        match old {
            Some(r) => {
                let (pid, age, query): (i32, f64, String) = (r.get(0), r.get(1), r.get(2));
                Err(SwitchoverError::refused(
                    Guardrail::NoLongTransaction,
                    format!(
                        "a transaction on {} (pid {pid}, open {age:.0} s, {query:?}) is older than drain_timeout ({}): it would not drain",
                        self.source(),
                        human_duration(drain_timeout)
                    ),
                    "end it or wait",
                ))
            }
            None => Ok(()),
        }
    }

    /// No prepared transaction waits in any database of the source: `COMMIT PREPARED`
    /// would commit it past the fence (its writes were made before it), and its
    /// locks would stop the fence's triggers from being created.
    async fn no_prepared_transaction(&self) -> Result<(), SwitchoverError> {
        let Some(d) = self.dbs.first() else {
            return Ok(());
        };
        let row = d
            .source
            .client
            .query_one(
                "select count(*)::int8, coalesce(string_agg(format('%L (database %s, owner %s, prepared %s)', gid, database, owner, prepared), ', '), '')
                   from pg_catalog.pg_prepared_xacts",
                &[],
            )
            .await
            .map_err(d.source.failed("looking for prepared transactions"))?;
        let (n, list): (i64, String) = (row.get(0), row.get(1));
        if n == 0 {
            return Ok(());
        }
        Err(SwitchoverError::refused(
            Guardrail::NoPreparedTransaction,
            format!("{n} prepared transaction(s) wait on {}: {list}", self.source()),
            "resolve each with COMMIT PREPARED or ROLLBACK PREPARED (its transaction manager decides which), then retry",
        ))
    }

    /// The run can read every sequence on the source and set every one on the
    /// destination: `pg_sequences` shows an unreadable sequence as never used, and
    /// skipping it would leave the destination's value behind, to hand out ids
    /// the source already gave.
    async fn sequences_usable(&self) -> Result<(), SwitchoverError> {
        const MISSING: &str = "select coalesce(string_agg(format('%I.%I', schemaname, sequencename), ', ' order by 1), '')
                                 from pg_catalog.pg_sequences
                                where not pg_catalog.has_sequence_privilege(format('%I.%I', schemaname, sequencename), $1)";
        for d in &self.dbs {
            for (c, privilege, fix) in [
                (
                    &d.source,
                    "SELECT, USAGE",
                    "GRANT SELECT ON ALL SEQUENCES IN SCHEMA <schema> TO",
                ),
                (&d.dest, "UPDATE", "GRANT UPDATE ON ALL SEQUENCES IN SCHEMA <schema> TO"),
            ] {
                let missing: String = c
                    .client
                    .query_one(MISSING, &[&privilege.replace(' ', "")])
                    .await
                    .map_err(c.failed("checking the sequence privileges"))?
                    .get(0);
                if !missing.is_empty() {
                    return Err(SwitchoverError::refused(
                        Guardrail::SequencesUsable,
                        format!(
                            "{} database {}: the switchover's role lacks {privilege} on sequences {missing}",
                            c.at.side, d.name
                        ),
                        format!("{fix} the role in [{}] url (or connect as their owner)", c.at.side),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The dry run's estimate: the longest transaction open now (the drain), plus
    /// fence, sentinel, catch-up, sequences and flip as measured here: tens of ms.
    async fn predict_hold(&self) -> Result<f64, SwitchoverError> {
        let mut predicted = 0.0f64;
        if let Some(d) = self.dbs.first() {
            let row = d
                .source
                .client
                .query_one(
                    "select coalesce(max(extract(epoch from now() - xact_start)), 0)::float8
                       from pg_catalog.pg_stat_activity where backend_xid is not null",
                    &[],
                )
                .await
                .map_err(d.source.failed("reading open transactions"))?;
            let drain_timeout = self.config.switchover.drain_timeout.0;
            predicted += row.get::<_, f64>(0).min(drain_timeout.as_secs_f64()) * 1000.0;
        }
        Ok(predicted + 100.0)
    }
}

/// What keeps `subscription` from applying: missing, disabled, or no apply worker.
async fn subscription_problem(dest: &Conn, subscription: &str) -> Result<Option<String>, SwitchoverError> {
    let row = dest
        .client
        .query_opt(
            "select s.subenabled, exists (select from pg_catalog.pg_stat_subscription w
                                           where w.subid = s.oid and w.pid is not null and w.relid is null)
               from pg_catalog.pg_subscription s
              where s.subname = $1 and s.subdbid = (select oid from pg_catalog.pg_database where datname = current_database())",
            &[&subscription],
        )
        .await
        .map_err(dest.failed("reading the subscription"))?;
    Ok(match row {
        None => Some(format!("subscription {subscription} does not exist")),
        Some(r) if !r.get::<_, bool>(0) => Some(format!("subscription {subscription} is disabled")),
        Some(r) if !r.get::<_, bool>(1) => Some(format!("subscription {subscription} has no running apply worker")),
        Some(_) => None,
    })
}
