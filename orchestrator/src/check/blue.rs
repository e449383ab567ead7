//! Per-database checks on blue: what logical replication cannot carry (tables
//! without a replica identity, large objects, unlogged and foreign tables,
//! materialized views) and the publications and subscriptions already there.

use super::{plural, Check, CheckResult, CheckStatus};
use crate::PUBLICATION;
use tokio_postgres::{Client, Row};

/// Tables of blue in the user's schemas: (name, relkind, persistence, replica identity, has primary key, has identity index).
const USER_TABLES: &str = "
SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text, c.relpersistence::text, c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'f', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover')
   AND n.nspname !~ '^pg_(toast|temp)'
   AND c.relpersistence <> 't'
 ORDER BY 1";

/// Blue's user tables, sorted by what replication does with them.
#[derive(Default)]
struct UserTables {
    /// Plain logged tables.
    plain: usize,
    /// Plain tables UPDATE and DELETE cannot be published for.
    keyless: Vec<String>,
    unlogged: Vec<String>,
    foreign: Vec<String>,
    matviews: Vec<String>,
}

impl UserTables {
    async fn read(blue: &Client) -> Result<UserTables, tokio_postgres::Error> {
        let mut t = UserTables::default();
        for r in &blue.query(USER_TABLES, &[]).await? {
            let (name, kind, persistence, ident): (String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let (pk, ident_index): (bool, bool) = (r.get(4), r.get(5));
            match kind.as_str() {
                "f" => t.foreign.push(name),
                "m" => t.matviews.push(name),
                "r" if persistence == "u" => t.unlogged.push(name),
                "r" => {
                    t.plain += 1;
                    let ok = match ident.as_str() {
                        "f" => true,
                        "i" => ident_index,
                        "d" => pk,
                        _ => false,
                    };
                    if !ok {
                        t.keyless.push(name);
                    }
                }
                _ => {}
            }
        }
        Ok(t)
    }
}

/// Everything checked in one database of blue.
pub(super) async fn blue_database_checks(db: &str, blue: &Client, out: &mut Vec<CheckResult>) {
    let scope = format!("blue/{db}");
    let tables = match UserTables::read(blue).await {
        Ok(t) => t,
        Err(e) => {
            out.push(CheckResult::query_failed(Check::Tables, scope, &e));
            return;
        }
    };
    out.push(replica_identity(&scope, &tables));
    out.push(large_objects(&scope, blue).await);
    out.push(unlogged_tables(&scope, &tables));
    out.push(foreign_tables(&scope, &tables));
    out.push(materialized_views(&scope, &tables));
    out.extend(publications(&scope, blue).await);
    out.extend(blue_subscriptions(&scope, blue).await);
}

fn replica_identity(scope: &str, tables: &UserTables) -> CheckResult {
    let keyless = &tables.keyless;
    if keyless.is_empty() {
        return CheckResult::ok(
            Check::ReplicaIdentity,
            scope,
            format!("all {} tables have a primary key or replica identity", tables.plain),
        );
    }
    let fix = keyless
        .iter()
        .map(|t| format!("ALTER TABLE {t} REPLICA IDENTITY FULL"))
        .collect::<Vec<_>>()
        .join("; ");
    CheckResult::problem(
        Check::ReplicaIdentity,
        scope,
        CheckStatus::Fail,
        format!(
            "{} without a primary key or replica identity: once published, UPDATE and DELETE on them fail on blue",
            plural(keyless.len(), "table")
        ),
        keyless.clone(),
        format!("add a primary key to each, or run: {fix}"),
    )
}

async fn large_objects(scope: &str, blue: &Client) -> CheckResult {
    match blue.query_one("SELECT count(*) FROM pg_largeobject_metadata", &[]).await {
        Ok(r) if r.get::<_, i64>(0) > 0 => CheckResult::problem(
            Check::LargeObjects,
            scope,
            CheckStatus::Fail,
            format!("{} large objects: logical replication does not copy them", r.get::<_, i64>(0)),
            vec!["pg_largeobject".into()],
            "move them into bytea columns (lo_get) and lo_unlink them, or copy them to green by hand after the switchover",
        ),
        Ok(_) => CheckResult::ok(Check::LargeObjects, scope, "none"),
        Err(e) => CheckResult::query_failed(Check::LargeObjects, scope, &e),
    }
}

fn unlogged_tables(scope: &str, tables: &UserTables) -> CheckResult {
    not_replicated(
        Check::UnloggedTables,
        scope,
        &tables.unlogged,
        "not replicated: green gets them empty",
        |first| format!("ALTER TABLE {first} SET LOGGED (each) to replicate them, or accept them empty on green"),
    )
}

fn foreign_tables(scope: &str, tables: &UserTables) -> CheckResult {
    not_replicated(
        Check::ForeignTables,
        scope,
        &tables.foreign,
        "not replicated (the data lives on the remote server)",
        |_| "check green can reach the foreign servers with the same user mappings".into(),
    )
}

fn materialized_views(scope: &str, tables: &UserTables) -> CheckResult {
    not_replicated(
        Check::MaterializedViews,
        scope,
        &tables.matviews,
        "not replicated: green has them as of the schema copy",
        |first| format!("run REFRESH MATERIALIZED VIEW {first} (each) on green before the switchover"),
    )
}

/// A warning listing `objects`, whose fix names the first of them as the example.
fn not_replicated(
    check: Check,
    scope: &str,
    objects: &[String],
    message: &str,
    fix: impl Fn(&str) -> String,
) -> CheckResult {
    match objects.first() {
        None => CheckResult::ok(check, scope, "none"),
        Some(first) => CheckResult::problem(check, scope, CheckStatus::Warn, message, objects.to_vec(), fix(first)),
    }
}

/// pgcutover's publication (and, when it exists, what it leaves out) and anyone else's.
async fn publications(scope: &str, blue: &Client) -> Vec<CheckResult> {
    let rows = match blue
        .query("SELECT pubname::text, puballtables FROM pg_publication ORDER BY 1", &[])
        .await
    {
        Ok(rows) => rows,
        Err(e) => return vec![CheckResult::query_failed(Check::Publication, scope, &e)],
    };
    let mut out = vec![publication(scope, &rows)];
    // One that is not FOR ALL TABLES already fails: it is to be dropped, not inspected.
    let ours_for_all_tables = rows
        .iter()
        .any(|r| r.get::<_, String>(0) == PUBLICATION && r.get::<_, bool>(1));
    if ours_for_all_tables {
        out.push(tables_outside_publication(blue, scope).await);
    }
    out.extend(other_publications(scope, &rows));
    out
}

fn publication(scope: &str, rows: &[Row]) -> CheckResult {
    match rows.iter().find(|r| r.get::<_, String>(0) == PUBLICATION) {
        Some(r) if !r.get::<_, bool>(1) => CheckResult::problem(
            Check::Publication,
            scope,
            CheckStatus::Fail,
            format!("publication {PUBLICATION} exists but is not FOR ALL TABLES"),
            vec![PUBLICATION.into()],
            format!("DROP PUBLICATION {PUBLICATION} on blue; replicate recreates it"),
        ),
        Some(_) => CheckResult::ok(
            Check::Publication,
            scope,
            format!("{PUBLICATION} exists (replicate resumes)"),
        ),
        None => CheckResult::ok(Check::Publication, scope, "none yet (replicate creates it)"),
    }
}

async fn tables_outside_publication(blue: &Client, scope: &str) -> CheckResult {
    let q = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
                AND NOT EXISTS (SELECT 1 FROM pg_publication_tables p
                                 WHERE p.pubname = $1 AND p.schemaname = n.nspname AND p.tablename = c.relname)
              ORDER BY 1";
    match blue.query(q, &[&PUBLICATION]).await {
        Ok(rows) if rows.is_empty() => CheckResult::ok(Check::TablesOutsidePublication, scope, "none"),
        Ok(rows) => CheckResult::problem(
            Check::TablesOutsidePublication,
            scope,
            CheckStatus::Warn,
            "tables not replicated by the publication",
            rows.iter().map(|r| r.get(0)).collect(),
            format!("DROP PUBLICATION {PUBLICATION} on blue and run replicate again"),
        ),
        Err(e) => CheckResult::query_failed(Check::TablesOutsidePublication, scope, &e),
    }
}

fn other_publications(scope: &str, rows: &[Row]) -> Option<CheckResult> {
    let others: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|n| n != PUBLICATION)
        .collect();
    (!others.is_empty()).then(|| {
        CheckResult::problem(
            Check::OtherPublications,
            scope,
            CheckStatus::Warn,
            "blue publishes to other subscribers too; they are not moved to green",
            others,
            "re-point those subscribers at green after the switchover",
        )
    })
}

/// Only a warning, so a failed query is passed over.
async fn blue_subscriptions(scope: &str, blue: &Client) -> Option<CheckResult> {
    let rows = blue
        .query(
            "SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .ok()?;
    let subs: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    (!subs.is_empty()).then(|| {
        CheckResult::problem(
            Check::BlueSubscriptions,
            scope,
            CheckStatus::Warn,
            "blue is itself a subscriber: green does not inherit those subscriptions",
            subs,
            "create the same subscriptions on green before the switchover",
        )
    })
}
