//! `pgcutover replicate`: sets up blue → green logical replication, idempotently.
//! Re-running continues where a previous run stopped: every step either checks the
//! catalogs for what exists or is recorded in `pgcutover.progress` in the same
//! transaction as its effect.

use crate::check::{preflight, Scope};
use crate::clone;
use crate::error::{OrchestratorError, SqlContext};
use crate::lsn::Lsn;
use crate::progress::{human_duration, Progress};
use crate::quote::{quote_ident, quote_literal};
use crate::roles::copy_roles;
use crate::setup::{create_subscription_sql, create_tables, record, setup_blue, step_done};
use crate::subscription_name;
use crate::targets::{Side, Targets};
use crate::tools::PgTools;
use pgcutover_config::ReplicationMethod;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// What `replicate` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ReplicateOptions {
    /// Clone method, first half: create the publication and slot on blue and stop.
    pub prepare_clone: bool,
    /// Clone method: the clone's first start-up log, to find the start LSN in.
    pub clone_log: Option<PathBuf>,
    /// Clone method: the start LSN when neither Aurora nor the log gives it.
    pub start_lsn: Option<Lsn>,
    /// Return once the subscription exists instead of waiting for the initial copy.
    pub no_wait: bool,
}

/// Runs `replicate` for every configured database.
pub async fn replicate(
    targets: &Targets,
    opts: &ReplicateOptions,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    let t = Instant::now();
    if opts.prepare_clone {
        preflight(targets, Scope::PrepareClone).await?;
        progress.done(t, "preflight checks passed");
        return clone::prepare(targets, progress).await;
    }
    preflight(targets, Scope::Replicate).await?;
    progress.done(t, "preflight checks passed");
    match targets.method {
        ReplicationMethod::Copy => copy(targets, opts, progress).await,
        ReplicationMethod::Clone => clone::attach(targets, opts, progress).await,
    }
}

async fn copy(targets: &Targets, opts: &ReplicateOptions, progress: &Progress) -> Result<(), OrchestratorError> {
    let first = &targets.databases[0];
    let blue0 = targets.connect(Side::Blue, first).await?;
    let blue_major = server_major(&blue0, Side::Blue, first).await?;
    let tools = PgTools::locate(targets.bindir.as_deref(), blue_major)?;

    // Roles are cluster-wide: copy them once, through the green admin database.
    let t = Instant::now();
    let green_admin_db = targets.green.database.clone().unwrap_or_else(|| "postgres".into());
    let green_admin = targets.connect(Side::Green, &green_admin_db).await?;
    let roles = copy_roles(&blue0, &green_admin, &targets.user(Side::Green), first).await?;
    progress.done(
        t,
        format!(
            "roles: {} created, {} updated with blue's password hashes, {} left as they are ({})",
            roles.created.len(),
            roles.updated.len(),
            roles.skipped.len(),
            roles.skipped.join(", ")
        ),
    );

    for db in &targets.databases {
        let t = Instant::now();
        let blue = targets.connect(Side::Blue, db).await?;
        if setup_blue(&blue, db).await? {
            progress.done(
                t,
                format!("{db}: blue has schema pgcutover, the sentinel row, publication and DDL capture"),
            );
        }
        ensure_green_database(targets, &blue, &green_admin, db, progress).await?;
        let green = targets.connect(Side::Green, db).await?;
        create_tables(&green, Side::Green, db).await?;
        copy_schema(targets, &tools, &green, db, progress).await?;
        let name = subscription_name(db);
        if subscription_exists(&green, db, &name).await? {
            progress.line(format!("{db}: subscription {name} exists; continuing"));
        } else {
            create_copy_subscription(targets, &blue, &green, db, &name, progress).await?;
        }
        if opts.no_wait {
            progress.line(format!("{db}: not waiting for the initial copy (see pgcutover status)"));
            continue;
        }
        wait_ready(&green, db, &name, progress).await?;
        record(&green, Side::Green, db, "ready", "every table replicated").await?;
    }
    progress.line("replication is running: watch it with pgcutover status; compare data with pgcutover verify");
    Ok(())
}

pub(crate) async fn server_major(c: &Client, side: Side, db: &str) -> Result<u32, OrchestratorError> {
    let v: String = c
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .ctx(side, db, "reading the server version")?
        .get(0);
    Ok(v.parse::<u32>().unwrap_or(0) / 10000)
}

/// Creates the database on green (copy method) with blue's encoding and locale.
async fn ensure_green_database(
    targets: &Targets,
    blue: &Client,
    green_admin: &Client,
    db: &str,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    let exists: bool = green_admin
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&db])
        .await
        .ctx(Side::Green, db, "looking for the database")?
        .get(0);
    if exists {
        return Ok(());
    }
    let t = Instant::now();
    let r = blue
        .query_one(
            "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text, pg_get_userbyid(datdba)::text
               FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .ctx(Side::Blue, db, "reading the database's encoding and owner")?;
    let (enc, collate, ctype, owner): (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
    let owner_exists: bool = green_admin
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&owner])
        .await
        .ctx(Side::Green, db, "looking for the database owner")?
        .get(0);
    let owner_clause = if owner_exists {
        format!(" OWNER {}", quote_ident(&owner))
    } else {
        String::new()
    };
    green_admin
        .batch_execute(&format!(
            "CREATE DATABASE {}{owner_clause} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(db),
            quote_literal(&enc),
            quote_literal(&collate),
            quote_literal(&ctype)
        ))
        .await
        .ctx(
            Side::Green,
            db,
            "creating the database (with blue's encoding and locale)",
        )?;
    let _ = targets;
    progress.done(t, format!("{db}: created on green ({enc}, {collate})"));
    Ok(())
}

/// pg_dump of blue's schema (without pgcutover's own objects) applied to green in one
/// transaction that also records the step, so it happens exactly once.
async fn copy_schema(
    targets: &Targets,
    tools: &PgTools,
    green: &Client,
    db: &str,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    if step_done(green, Side::Green, db, "schema").await? {
        return Ok(());
    }
    let t = Instant::now();
    let existing: Vec<String> = green
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover')
                AND n.nspname !~ '^pg_(toast|temp)' ORDER BY 1 LIMIT 5",
            &[],
        )
        .await
        .ctx(Side::Green, db, "looking for existing tables")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !existing.is_empty() {
        return Err(OrchestratorError::refused(
            format!(
                "green database {db} already has tables pgcutover did not create ({}), so blue's schema cannot be copied into it",
                existing.join(", ")
            ),
            format!(
                "drop green's database {db} (replicate recreates it), or use [replication] method = \"clone\" if green is a clone of blue"
            ),
        ));
    }
    let dir = std::env::temp_dir().join(format!(
        "pgcutover-schema-{}-{}",
        std::process::id(),
        subscription_name(db)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| OrchestratorError::Tool {
        tool: "pg_dump".into(),
        message: format!("cannot create {}: {e}", dir.display()),
    })?;
    let result = dump_and_apply(targets, tools, db, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let statements = result?;
    progress.done(
        t,
        format!(
            "{db}: blue's schema copied to green (pg_dump {}, {statements} TOC entries)",
            tools.major
        ),
    );
    Ok(())
}

async fn dump_and_apply(
    targets: &Targets,
    tools: &PgTools,
    db: &str,
    dir: &std::path::Path,
) -> Result<usize, OrchestratorError> {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let blue_env = targets.libpq_env(Side::Blue, db);
    tools
        .run(
            "pg_dump",
            vec![
                "--schema-only".into(),
                "--format=custom".into(),
                "--no-subscriptions".into(),
                "--exclude-schema=pgcutover".into(),
                format!("--file={}", p("schema.dump")),
            ],
            blue_env,
            format!("dumping blue's schema of database {db}"),
        )
        .await?;
    let list = tools
        .run(
            "pg_restore",
            vec!["--list".into(), p("schema.dump")],
            vec![],
            "listing the schema dump".into(),
        )
        .await?;
    // pgcutover's own publication and event triggers stay on blue.
    let list = String::from_utf8_lossy(&list);
    let kept: Vec<&str> = list
        .lines()
        .filter(|l| !l.contains(" PUBLICATION - pgcutover ") && !l.contains(" EVENT TRIGGER - pgcutover_"))
        .collect();
    let entries = kept.iter().filter(|l| !l.starts_with(';')).count();
    std::fs::write(dir.join("schema.list"), kept.join("\n")).map_err(|e| OrchestratorError::Tool {
        tool: "pg_restore".into(),
        message: format!("cannot write the TOC list: {e}"),
    })?;
    tools
        .run(
            "pg_restore",
            vec![
                format!("--use-list={}", p("schema.list")),
                format!("--file={}", p("schema.sql")),
                p("schema.dump"),
            ],
            vec![],
            "writing the schema script".into(),
        )
        .await?;
    let marker = format!(
        "INSERT INTO pgcutover.progress (side, step, detail) VALUES ('green', 'schema', {})
         ON CONFLICT (side, step) DO UPDATE SET done_at = now(), detail = EXCLUDED.detail;\n",
        quote_literal(&format!("pg_dump {} of blue, {entries} TOC entries", tools.major))
    );
    std::fs::write(dir.join("marker.sql"), marker).map_err(|e| OrchestratorError::Tool {
        tool: "psql".into(),
        message: format!("cannot write the marker script: {e}"),
    })?;
    tools
        .run(
            "psql",
            vec![
                "-X".into(),
                "-q".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "--single-transaction".into(),
                "-f".into(),
                p("schema.sql"),
                "-f".into(),
                p("marker.sql"),
            ],
            targets.libpq_env(Side::Green, db),
            format!("applying blue's schema to green database {db} (in one transaction: nothing was applied)"),
        )
        .await?;
    Ok(entries)
}

pub(crate) async fn subscription_exists(green: &Client, db: &str, name: &str) -> Result<bool, OrchestratorError> {
    Ok(green
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&name],
        )
        .await
        .ctx(Side::Green, db, "looking for the subscription")?
        .get(0))
}

/// The published tables of blue's database that already have rows on green (the
/// initial copy would duplicate them).
async fn nonempty_green_tables(blue: &Client, green: &Client, db: &str) -> Result<Vec<String>, OrchestratorError> {
    let tables: Vec<(String, String)> = blue
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1
              AND NOT (schemaname = 'pgcutover' AND tablename = 'progress') ORDER BY 1, 2",
            &[&crate::PUBLICATION],
        )
        .await
        .ctx(Side::Blue, db, "listing the published tables")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut nonempty = Vec::new();
    for (schema, table) in tables {
        let name = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
        let has: bool = green
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {name})"), &[])
            .await
            .ctx(Side::Green, db, &format!("looking into {name}"))?
            .get(0);
        if has {
            nonempty.push(format!("{schema}.{table}"));
        }
    }
    Ok(nonempty)
}

async fn create_copy_subscription(
    targets: &Targets,
    blue: &Client,
    green: &Client,
    db: &str,
    name: &str,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    let t = Instant::now();
    let nonempty = nonempty_green_tables(blue, green, db).await?;
    if !nonempty.is_empty() {
        return Err(OrchestratorError::refused(
            format!(
                "green database {db} has rows in {} already; the initial copy would duplicate them",
                nonempty.join(", ")
            ),
            "TRUNCATE those tables on green (or drop green's database) and run replicate again",
        ));
    }
    // A slot left by an earlier attempt that never got its subscription: the copy needs a new one.
    let stale = blue
        .query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&name])
        .await
        .ctx(Side::Blue, db, "looking for a leftover slot")?;
    if let Some(r) = stale {
        if r.get::<_, bool>(0) {
            return Err(OrchestratorError::refused(
                format!("slot {name} on blue is in use by another subscriber, not by green's database {db}"),
                format!("find that subscriber (pg_stat_replication on blue) and drop its subscription, or drop the slot: SELECT pg_drop_replication_slot('{name}')"),
            ));
        }
        blue.execute("SELECT pg_drop_replication_slot($1)", &[&name])
            .await
            .ctx(Side::Blue, db, "dropping the leftover slot")?;
        progress.line(format!("{db}: dropped leftover inactive slot {name} on blue"));
    }
    ensure_reverse_publication(green, db).await?;
    let conninfo = targets.subscription_conninfo(db);
    let sql = create_subscription_sql(
        name,
        &conninfo,
        &format!(
            "copy_data = true, create_slot = true, enabled = true, slot_name = {}",
            quote_literal(name)
        ),
    );
    green.batch_execute(&sql).await.ctx(
        Side::Green,
        db,
        "creating the subscription (green connects to blue with [replication] source_conninfo)",
    )?;
    record(green, Side::Green, db, "subscription", "copy_data = true").await?;
    progress.done(
        t,
        format!("{db}: subscription {name} created; slot {name} on blue; initial copy started"),
    );
    Ok(())
}

/// Waits until every table of the subscription is ready ('r'), showing per-table progress.
pub(crate) async fn wait_ready(
    green: &Client,
    db: &str,
    name: &str,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    let start = Instant::now();
    let green_major = server_major(green, Side::Green, db).await?;
    let copy_progress = if green_major >= 14 {
        "(SELECT p.tuples_processed FROM pg_stat_progress_copy p WHERE p.relid = sr.srrelid LIMIT 1)"
    } else {
        "NULL::bigint"
    };
    let q = format!(
        "SELECT (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = sr.srrelid), sr.srsubstate::text, {copy_progress}
           FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid
          WHERE s.subname = $1 ORDER BY 1"
    );
    let errors_q = if green_major >= 15 {
        "SELECT coalesce(sync_error_count + apply_error_count, 0) FROM pg_stat_subscription_stats WHERE subname = $1"
    } else {
        "SELECT 0::bigint"
    };
    let errors_at_start = error_count(green, db, errors_q, name).await?;
    let mut ready_seen: Vec<String> = Vec::new();
    let mut last_summary = Instant::now();
    let mut reported_errors = errors_at_start;
    loop {
        let rows = green
            .query(&q, &[&name])
            .await
            .ctx(Side::Green, db, "reading table sync states")?;
        let total = rows.len();
        let mut copying = Vec::new();
        for r in &rows {
            let (table, state): (String, String) = (r.get(0), r.get(1));
            if state == "r" {
                if !ready_seen.contains(&table) {
                    ready_seen.push(table.clone());
                    progress.line(format!("{db}: {table} ready ({}/{total})", ready_seen.len()));
                }
            } else {
                let rows_copied: Option<i64> = r.get(2);
                copying.push(match rows_copied {
                    Some(n) => format!("{table} {} ({n} rows)", state_name(&state)),
                    None => format!("{table} {}", state_name(&state)),
                });
            }
        }
        if copying.is_empty() {
            progress.line(format!(
                "{db}: all {total} tables replicated; initial copy took {}",
                human_duration(start.elapsed())
            ));
            return Ok(());
        }
        let errors = error_count(green, db, errors_q, name).await?;
        if errors > reported_errors {
            progress.line(format!(
                "{db}: {} table sync/apply error(s) on green so far: the workers retry; green's server log has the cause",
                errors - errors_at_start
            ));
            reported_errors = errors;
        }
        if last_summary.elapsed() >= Duration::from_secs(5) {
            progress.line(format!(
                "{db}: {}/{total} tables ready; {}",
                ready_seen.len(),
                copying.join(", ")
            ));
            last_summary = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn error_count(green: &Client, db: &str, q: &str, name: &str) -> Result<i64, OrchestratorError> {
    let rows = if q.contains("$1") {
        green.query(q, &[&name]).await
    } else {
        green.query(q, &[]).await
    }
    .ctx(Side::Green, db, "reading subscription error counts")?;
    Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0))
}

/// pg_subscription_rel.srsubstate in words.
pub(crate) fn state_name(s: &str) -> &'static str {
    match s {
        "i" => "waiting to copy",
        "d" => "copying",
        "f" => "copied",
        "s" => "catching up",
        "r" => "ready",
        _ => "unknown",
    }
}

/// Green's reverse publication (for `pgcutover rollback` after a switchover), made
/// while green takes no writes yet: under apply load, `CREATE PUBLICATION ... FOR
/// ALL TABLES` on green waited for seconds.
pub(crate) async fn ensure_reverse_publication(
    green: &tokio_postgres::Client,
    db: &str,
) -> Result<(), OrchestratorError> {
    crate::reverse::create_publication(green, db).await.map(|_| ())
}
