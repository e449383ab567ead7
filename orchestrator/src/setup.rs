//! pgcutover's own objects: the `pgcutover` schema with the sentinel, DDL log,
//! progress and journal tables (both sides), the publication and the DDL event triggers (blue).

use crate::error::{OrchestratorError, SqlContext};
use crate::journal::JOURNAL_DDL;
use crate::quote::{quote_ident, quote_literal};
use crate::targets::Side;
use crate::{EVENT_TRIGGER_PREFIX, INTERNAL_GUC, PUBLICATION};
use tokio_postgres::Client;

/// The tables, identical on both sides (the publication needs each on green).
const TABLES_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS pgcutover;
COMMENT ON SCHEMA pgcutover IS 'pgcutover: blue/green replication bookkeeping (sentinel, DDL log, progress)';
CREATE TABLE IF NOT EXISTS pgcutover.sentinel (
    database text PRIMARY KEY,
    token bigint NOT NULL DEFAULT 0,
    written_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgcutover.ddl_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    event text,
    command_tag text,
    object_identity text,
    command text
);
CREATE TABLE IF NOT EXISTS pgcutover.progress (
    side text NOT NULL,
    step text NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now(),
    detail text,
    PRIMARY KEY (side, step)
);
";

/// The event trigger function (blue only). SECURITY DEFINER so that an application
/// role's DDL can write the log; it skips pgcutover's own DDL (the session setting
/// `pgcutover.internal = on` from a member of the function's owner, pgcutover's admin:
/// any role can set a custom setting, so the setting alone would let an ordinary
/// role hide its DDL), temporary objects and the pgcutover schema.
const LOG_DDL_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION pgcutover.log_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    objs text;
    n_all int;
BEGIN
    IF current_setting('pgcutover.internal', true) = 'on'
       AND pg_has_role(session_user, (SELECT proowner FROM pg_proc WHERE oid = 'pgcutover.log_ddl'::regproc), 'MEMBER') THEN
        RETURN;
    END IF;
    IF TG_EVENT = 'ddl_command_end' THEN
        SELECT count(*), string_agg(object_identity, ', ') FILTER (
                   WHERE schema_name IS DISTINCT FROM 'pgcutover' AND coalesce(schema_name, '') NOT LIKE 'pg\_temp%')
          INTO n_all, objs
          FROM pg_event_trigger_ddl_commands();
        IF n_all > 0 AND NOT EXISTS (
            SELECT 1 FROM pg_event_trigger_ddl_commands()
             WHERE schema_name IS DISTINCT FROM 'pgcutover' AND coalesce(schema_name, '') NOT LIKE 'pg\_temp%') THEN
            RETURN;
        END IF;
    ELSIF TG_EVENT = 'sql_drop' THEN
        SELECT count(*), string_agg(object_identity, ', ') FILTER (
                   WHERE NOT is_temporary AND schema_name IS DISTINCT FROM 'pgcutover')
          INTO n_all, objs
          FROM pg_event_trigger_dropped_objects() WHERE original;
        IF n_all > 0 AND objs IS NULL THEN
            RETURN;
        END IF;
    ELSIF TG_EVENT = 'table_rewrite' THEN
        SELECT c.oid::regclass::text INTO objs FROM pg_class c
         WHERE c.oid = pg_event_trigger_table_rewrite_oid() AND c.relpersistence <> 't';
        IF objs IS NULL THEN
            RETURN;
        END IF;
    END IF;
    -- String literals are kept out: a statement may carry a password
    -- (CREATE USER MAPPING ... OPTIONS (password '...')), and the log is replicated
    -- and shown by `pgcutover status`.
    INSERT INTO pgcutover.ddl_log (event, command_tag, object_identity, command)
    VALUES (TG_EVENT, TG_TAG, objs, regexp_replace(current_query(), $re$'(''|[^'])*'$re$, '''***''', 'g'));
END
$fn$;
"#;

/// The DDL events captured on blue.
pub(crate) const DDL_EVENTS: [&str; 3] = ["ddl_command_end", "sql_drop", "table_rewrite"];

/// Marks this session's DDL as pgcutover's own, so blue's event triggers do not log it
/// as drift (`SET pgcutover.internal = on`). The switchover should call it before
/// any DDL on blue (e.g. reverse replication's subscription).
pub async fn suppress_ddl_capture(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&format!("SET {INTERNAL_GUC} = on")).await
}

/// Creates (idempotently) the pgcutover tables on one side.
pub(crate) async fn create_tables(client: &Client, side: Side, db: &str) -> Result<(), OrchestratorError> {
    suppress_ddl_capture(client)
        .await
        .ctx(side, db, "marking pgcutover's session")?;
    client
        .batch_execute(&format!("BEGIN; {TABLES_DDL} {JOURNAL_DDL} COMMIT;"))
        .await
        .ctx(side, db, "creating the pgcutover schema")
}

/// Blue's side of replication for one database, idempotent: tables, the sentinel row,
/// the publication, then the DDL event triggers (last, so none of this is logged).
/// Returns whether anything was created.
pub(crate) async fn setup_blue(blue: &Client, db: &str) -> Result<bool, OrchestratorError> {
    let s = Side::Blue;
    let had_schema: bool = blue
        .query_one("SELECT to_regclass('pgcutover.progress') IS NOT NULL", &[])
        .await
        .ctx(s, db, "looking for the pgcutover schema")?
        .get(0);
    create_tables(blue, s, db).await?;
    blue.execute(
        "INSERT INTO pgcutover.sentinel (database) VALUES ($1) ON CONFLICT (database) DO NOTHING",
        &[&db],
    )
    .await
    .ctx(s, db, "writing the sentinel row")?;
    let has_pub: bool = blue
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&PUBLICATION],
        )
        .await
        .ctx(s, db, "looking for the publication")?
        .get(0);
    if !has_pub {
        blue.batch_execute(&format!(
            "CREATE PUBLICATION {} FOR ALL TABLES",
            quote_ident(PUBLICATION)
        ))
        .await
        .ctx(s, db, "creating the publication")?;
    }
    let triggers: Vec<String> = blue
        .query(
            "SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'pgcutover\\_%'",
            &[],
        )
        .await
        .ctx(s, db, "looking for the DDL event triggers")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut created_triggers = false;
    for event in DDL_EVENTS {
        let name = format!("{EVENT_TRIGGER_PREFIX}{event}");
        if triggers.contains(&name) {
            continue;
        }
        if !created_triggers {
            blue.batch_execute(LOG_DDL_FUNCTION)
                .await
                .ctx(s, db, "creating the DDL capture function")?;
        }
        created_triggers = true;
        blue.batch_execute(&format!(
            "CREATE EVENT TRIGGER {} ON {event} EXECUTE PROCEDURE pgcutover.log_ddl()",
            quote_ident(&name)
        ))
        .await
        .ctx(s, db, "creating the DDL event triggers")?;
    }
    let created = !had_schema || !has_pub || created_triggers;
    if created {
        record(
            blue,
            s,
            db,
            "setup",
            "schema pgcutover, sentinel, publication, DDL capture",
        )
        .await?;
    }
    Ok(created)
}

/// Records a finished step in `pgcutover.progress` on that side.
pub(crate) async fn record(
    client: &Client,
    side: Side,
    db: &str,
    step: &str,
    detail: &str,
) -> Result<(), OrchestratorError> {
    client
        .execute(
            "INSERT INTO pgcutover.progress (side, step, detail) VALUES ($1, $2, $3)
             ON CONFLICT (side, step) DO UPDATE SET done_at = now(), detail = EXCLUDED.detail",
            &[&side.to_string(), &step, &detail],
        )
        .await
        .ctx(side, db, "recording progress")?;
    Ok(())
}

/// Whether `side`'s step is recorded in this database's `pgcutover.progress`
/// (false when the table does not exist).
pub(crate) async fn step_done(client: &Client, side: Side, db: &str, step: &str) -> Result<bool, OrchestratorError> {
    let row = client
        .query_one(
            "SELECT count(*) > 0 FROM pgcutover.progress WHERE side = $1 AND step = $2",
            &[&side.to_string(), &step],
        )
        .await;
    match row {
        Ok(r) => Ok(r.get(0)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(false),
        Err(e) => Err(e).ctx(side, db, "reading pgcutover.progress"),
    }
}

/// Drops the event triggers and publication a clone carried over from blue.
pub(crate) async fn drop_carried_over(green: &Client, db: &str) -> Result<Vec<String>, OrchestratorError> {
    let s = Side::Green;
    let mut dropped = Vec::new();
    let triggers: Vec<String> = green
        .query(
            "SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'pgcutover\\_%'",
            &[],
        )
        .await
        .ctx(s, db, "looking for carried-over event triggers")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in triggers {
        green
            .batch_execute(&format!("DROP EVENT TRIGGER IF EXISTS {}", quote_ident(&t)))
            .await
            .ctx(s, db, "dropping a carried-over event trigger")?;
        dropped.push(format!("event trigger {t}"));
    }
    let has_pub: bool = green
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&PUBLICATION],
        )
        .await
        .ctx(s, db, "looking for a carried-over publication")?
        .get(0);
    if has_pub {
        green
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(PUBLICATION)))
            .await
            .ctx(s, db, "dropping the carried-over publication")?;
        dropped.push(format!("publication {PUBLICATION}"));
    }
    Ok(dropped)
}

/// Keeps the statements this session runs out of the server's log, for a session
/// about to send a password in a statement (a subscription's conninfo): with the
/// default `log_min_error_statement = error` a failing CREATE SUBSCRIPTION would
/// write the admin password to the server log, and `log_statement = ddl` always
/// would. Needs superuser; without it the statements run as they are (and the
/// log may hold the conninfo).
pub(crate) async fn quiet_statement_log(client: &Client) {
    let quiet = "SET log_statement = none; SET log_min_error_statement = panic; SET log_min_duration_statement = -1";
    if let Err(e) = client.batch_execute(quiet).await {
        tracing::debug!(
            "statement logging stays on for this session: {}",
            crate::error::pg_message(&e)
        );
    }
}

/// `CREATE SUBSCRIPTION` for one database with the given options.
pub(crate) fn create_subscription_sql(name: &str, conninfo: &str, options: &str) -> String {
    format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH ({options})",
        quote_ident(name),
        quote_literal(conninfo),
        quote_ident(PUBLICATION)
    )
}
