//! Fence: the source refuses writes from everyone, not only through the proxies;
//! then the sentinel, the one transaction that passes the fence, marks the cut.

use super::catch_up::poll_until;
use super::conn::Conn;
use super::error::SwitchoverError;
use super::machine::Run;
use super::phase::Phase;
use super::undo::Undo;
use crate::SENTINEL_TABLE;
use futures_util::future::join_all;
use pgcutover_api::{Direction, ProxyError};
use std::time::{Duration, Instant};

/// How long terminated backends get to abort their transactions.
const SETTLE: Duration = Duration::from_secs(2);

/// Where the sentinel committed, per database.
#[derive(Debug)]
pub(super) struct Cut {
    /// The sentinel's token for this run.
    pub token: i64,
    /// An LSN at or past its commit.
    pub lsn: String,
}

impl Run<'_> {
    /// Fence the source (its read-only default server-wide, through the first
    /// database), end the sessions that bypass the proxies, guard every replicated
    /// database's tables, then write the sentinels.
    pub(super) async fn fence(&mut self) -> Result<Phase, SwitchoverError> {
        let source = self.source();
        let mut spared = self.own_pids.clone();
        // Asked of every proxy at once: this runs inside the hold.
        let statuses = join_all(self.proxies.iter().map(|p| p.status())).await;
        for (p, status) in self.proxies.iter().zip(statuses) {
            let status = status?;
            let pids = status.server_pids.ok_or_else(|| ProxyError::BadReply {
                proxy: p.name(),
                call: "GET /status",
                reason: "no backend pids, which /status shows only with the admin token: give every proxy the same admin_token_file".into(),
            })?;
            spared.extend(pids.get(source));
        }
        let first = &self.dbs.first().ok_or(SwitchoverError::NoDatabase)?.source;
        for d in &self.dbs {
            self.undo.push(Undo::Unfence {
                side: source,
                database: d.name.clone(),
            });
        }
        // Without the read-only default a terminated client that reconnects could
        // write again and keep the settle waiting: then the guards come first.
        // Either way they are up before the sentinel: what commits after it must be
        // nothing but pgcutover's.
        let read_only = read_only(first).await?;
        if !read_only {
            self.guard_every_database().await?;
        }
        let ended = end_bypassers(first, &spared).await?;
        if ended > 0 {
            self.progress.line(format!(
                "fence: ended {ended} session(s) connected to {source} past the proxies"
            ));
        }
        if read_only {
            self.guard_every_database().await?;
        }
        // DDL since the preflight would reach green as data it cannot apply.
        if self.opts.direction == Direction::Forward {
            for d in &self.dbs {
                no_drift(&d.source).await?;
            }
        }
        // From here every commit is decoded, and checked before the flip.
        self.open_proof().await?;
        self.cuts.clear();
        for d in &mut self.dbs {
            let cut = write_sentinel(&mut d.source).await?;
            self.report.cut_lsn.push((d.name.clone(), cut.lsn.clone()));
            self.cuts.push(cut);
        }
        Ok(Phase::CatchUp)
    }

    /// [`guard_tables`] in every database of the source.
    async fn guard_every_database(&self) -> Result<(), SwitchoverError> {
        for d in &self.dbs {
            guard_tables(&d.source).await?;
        }
        Ok(())
    }
}

/// Ends client backends that are not `spared`
/// (the proxies' held sessions and the orchestrator's own), waits until no client
/// backend holds a transaction id, and checks that no transaction was prepared
/// since the preflight. Returns how many it ended.
async fn end_bypassers(c: &Conn, spared: &[i32]) -> Result<usize, SwitchoverError> {
    let terminated = c
        .client
        .query(
            "select pg_catalog.pg_terminate_backend(pid) from pg_catalog.pg_stat_activity
              where backend_type = 'client backend' and pid <> pg_catalog.pg_backend_pid()
                and pid <> all($1::int4[])",
            &[&spared],
        )
        .await
        .map_err(c.failed("ending sessions that bypass the proxy"))?
        .len();
    let deadline = Instant::now() + SETTLE;
    let settled = poll_until(Some(deadline), Duration::from_millis(5), || async {
        Ok(writers(c).await?.is_empty().then_some(()))
    })
    .await?;
    if settled.is_none() {
        return Err(SwitchoverError::StillWriting {
            pids: writers(c).await?,
            settle: SETTLE,
        });
    }
    // Preflight refused prepared transactions; one prepared since then survives the
    // terminations above and could be committed past the cut.
    let prepared: String = c
        .client
        .query_one(
            "select coalesce(string_agg(format('%L', gid), ', '), '') from pg_catalog.pg_prepared_xacts",
            &[],
        )
        .await
        .map_err(c.failed("looking for prepared transactions"))?
        .get(0);
    if !prepared.is_empty() {
        return Err(SwitchoverError::PreparedAtFence { gids: prepared });
    }
    Ok(terminated)
}

/// No DDL logged on blue since replication began (the preflight checked the same;
/// this closes the window up to the fence, after which DDL is refused).
pub(super) async fn no_drift(c: &Conn) -> Result<(), SwitchoverError> {
    let row = c
        .client
        .query_one(
            "select count(*), coalesce((select left(command, 120) from pgcutover.ddl_log order by id desc limit 1), '')
               from pgcutover.ddl_log",
            &[],
        )
        .await
        .map_err(c.failed("re-checking DDL drift"))?;
    let (n, last): (i64, String) = (row.get(0), row.get(1));
    if n == 0 {
        return Ok(());
    }
    Err(SwitchoverError::DriftAtFence {
        database: c.at.database.clone(),
        statements: n,
        last,
    })
}

/// Client backends (other than this one) holding a transaction id: their pids.
async fn writers(c: &Conn) -> Result<String, SwitchoverError> {
    let row = c
        .client
        .query_one(
            "select coalesce(string_agg(pid::text, ', '), '') from pg_catalog.pg_stat_activity
              where backend_xid is not null and backend_type = 'client backend'
                and pid <> pg_catalog.pg_backend_pid()",
            &[],
        )
        .await
        .map_err(c.failed("checking for write transactions"))?;
    Ok(row.get(0))
}

/// Makes every new transaction on the server read-only, for every role
/// (`ALTER SYSTEM` + reload; idempotent). Where `ALTER SYSTEM` is not available
/// (RDS and Aurora, `allow_alter_system = off`) this is skipped: the table triggers
/// refuse the writes and the proof slot checks them; the default only makes the
/// refusal the familiar "read-only transaction" one. Returns whether it was set.
pub(super) async fn read_only(c: &Conn) -> Result<bool, SwitchoverError> {
    let on = "ALTER SYSTEM SET default_transaction_read_only = on";
    match c.client.batch_execute(on).await {
        Ok(()) => reload(c).await.map(|()| true),
        Err(e) if alter_system_unavailable(&e) => {
            tracing::warn!(
                "fence: {on} is not available here ({}): the triggers fence alone",
                crate::pg_message(&e)
            );
            Ok(false)
        }
        Err(e) => Err(c.failed(on)(e)),
    }
}

/// `ALTER SYSTEM` refused for good: not a superuser (RDS's `rds_superuser`,
/// 42501), or PostgreSQL 17's `allow_alter_system = off` (0A000).
fn alter_system_unavailable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        [
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::FEATURE_NOT_SUPPORTED,
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        ]
        .contains(c)
    })
}

/// Whether the server is fenced: read-only by its configuration (not by a role's
/// or a session's setting), or, where `ALTER SYSTEM` is not available, guarded by
/// the fence's triggers in `c`'s database.
pub(super) async fn is_fenced(c: &Conn) -> Result<bool, SwitchoverError> {
    let row = c
        .client
        .query_one(
            "select (select setting = 'on' and source = 'configuration file' from pg_catalog.pg_settings
                      where name = 'default_transaction_read_only')
                    or exists (select from pg_catalog.pg_trigger where tgname = 'pgcutover_fence')",
            &[],
        )
        .await
        .map_err(c.failed("reading whether the server is fenced"))?;
    Ok(row.get(0))
}

/// Lifts the fence in `c`'s database (idempotent): the server-wide default and the
/// database's table guards.
pub(super) async fn unfence(c: &Conn) -> Result<(), SwitchoverError> {
    lift_read_only(c).await?;
    unguard_tables(c).await
}

/// Lifts the server-wide read-only default (idempotent; nothing to lift where
/// `ALTER SYSTEM` is not available).
pub(super) async fn lift_read_only(c: &Conn) -> Result<(), SwitchoverError> {
    let reset = "ALTER SYSTEM RESET default_transaction_read_only";
    match c.client.batch_execute(reset).await {
        Ok(()) => reload(c).await,
        Err(e) if alter_system_unavailable(&e) => Ok(()),
        Err(e) => Err(c.failed(reset)(e)),
    }
}

/// Drops the fence's table guards in `c`'s database (idempotent).
pub(super) async fn unguard_tables(c: &Conn) -> Result<(), SwitchoverError> {
    own_ddl(c).await?;
    c.client
        .batch_execute(UNGUARD_TABLES)
        .await
        .map_err(c.failed("dropping the fence's table guards"))
}

/// Fences `c`'s database again after a rollback (the server-wide default and the
/// table guards), as an earlier run left it.
pub(super) async fn refence(c: &Conn) -> Result<(), SwitchoverError> {
    read_only(c).await?;
    guard_tables(c).await
}

/// `default_transaction_read_only` is only a default: `BEGIN READ WRITE`, `SET`, a
/// startup option or a role's setting override it. A statement trigger on every
/// table refuses writes whatever the session set; the apply worker of a subscription
/// (`session_replication_role = replica`) does not fire it, so reverse replication
/// keeps applying. Each `CREATE TRIGGER` waits for writers still holding a lock on
/// its table (the fence ended the bypassing sessions already); a prepared
/// transaction holds its locks until it is resolved, hence the lock timeout.
async fn guard_tables(c: &Conn) -> Result<(), SwitchoverError> {
    own_ddl(c).await?;
    c.client
        .batch_execute(GUARD_TABLES)
        .await
        .map_err(c.failed("guarding every table against writes (a prepared transaction in pg_prepared_xacts, or a lock held past the fence, makes this time out)"))
}

/// Marks this session's DDL as pgcutover's own (not drift) and lets it write.
async fn own_ddl(c: &Conn) -> Result<(), SwitchoverError> {
    crate::suppress_ddl_capture(&c.client)
        .await
        .map_err(c.failed("marking pgcutover's session"))?;
    lift_for_session(c).await
}

const GUARD_TABLES: &str = "
SET lock_timeout = '2s';
CREATE OR REPLACE FUNCTION pgcutover.refuse_write() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    RAISE EXCEPTION 'pgcutover: table %.% is fenced: this database is being switched over, or was', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = '25006', HINT = 'connect through the pgcutover proxy, which routes to the database in use';
END $f$;
DO $d$
DECLARE t regclass;
BEGIN
    FOR t IN SELECT c.oid::regclass FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('information_schema', 'pgcutover') AND n.nspname !~ '^pg_'
    LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER pgcutover_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pgcutover.refuse_write()', t);
    END LOOP;
END $d$;
RESET lock_timeout;";

const UNGUARD_TABLES: &str = "
DO $d$
DECLARE t regclass;
BEGIN
    FOR t IN SELECT tgrelid::regclass FROM pg_catalog.pg_trigger WHERE tgname = 'pgcutover_fence' LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS pgcutover_fence ON %s', t);
    END LOOP;
END $d$;";

async fn reload(c: &Conn) -> Result<(), SwitchoverError> {
    c.client
        .batch_execute("SELECT pg_catalog.pg_reload_conf()")
        .await
        .map_err(c.failed("reloading the configuration"))
}

/// Lets this session write on a fenced server: the session-level default goes off
/// (its own statement: a transaction started under the fence stays read-only).
pub(super) async fn lift_for_session(c: &Conn) -> Result<(), SwitchoverError> {
    c.client
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(c.failed("lifting the fence for this session"))
}

/// Writes the sentinel on the fenced source (a read-write transaction passes the
/// fence); returns its token and an LSN at or past its commit: the cut.
async fn write_sentinel(c: &mut Conn) -> Result<Cut, SwitchoverError> {
    let at = &c.at;
    let tx = c
        .client
        .build_transaction()
        .read_only(false)
        .start()
        .await
        .map_err(at.failed("starting the sentinel transaction"))?;
    // Flushed at commit, whatever the server's default: the walsender sends only
    // flushed WAL, and with asynchronous commit the WAL writer's delay (200 ms by
    // default) would be added to every client's wait.
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .await
        .map_err(at.failed("making the sentinel commit synchronous"))?;
    let row = tx
        .query_one(
            &format!(
                "insert into {SENTINEL_TABLE} as s (database, token, written_at) values ($1, 1, now())
                 on conflict (database) do update set token = s.token + 1, written_at = now() returning token"
            ),
            &[&at.database],
        )
        .await
        .map_err(at.failed("writing the sentinel"))?;
    let token: i64 = row.get(0);
    tx.commit().await.map_err(at.failed("committing the sentinel"))?;
    let lsn: String = c
        .client
        .query_one("select pg_catalog.pg_current_wal_lsn()::text", &[])
        .await
        .map_err(c.failed("reading the cut LSN"))?
        .get(0);
    Ok(Cut { token, lsn })
}
