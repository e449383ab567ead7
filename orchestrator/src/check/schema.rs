//! `schema_match`: blue's and green's tables, columns, keys and sequences compared
//! as sets of one-line facts.

use super::{Check, CheckResult, CheckStatus};
use crate::targets::Targets;
use pgcutover_config::ReplicationMethod;
use std::collections::BTreeSet;
use tokio_postgres::Client;

/// What must match: tables, columns and types, primary keys and unique constraints, sequences.
const SCHEMA_FACTS: &str = "
SELECT 'table ' || c.oid::regclass::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover') AND n.nspname !~ '^pg_(toast|temp)'
UNION ALL
SELECT 'column ' || c.oid::regclass::text || '.' || quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover') AND n.nspname !~ '^pg_(toast|temp)'
UNION ALL
SELECT 'constraint ' || con.conrelid::regclass::text || ' ' || pg_get_constraintdef(con.oid)
  FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
 WHERE con.contype IN ('p', 'u') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover')
   AND n.nspname !~ '^pg_(toast|temp)'
UNION ALL
SELECT 'sequence ' || c.oid::regclass::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover')
   AND n.nspname !~ '^pg_(toast|temp)'";

async fn schema_facts(c: &Client) -> Result<BTreeSet<String>, tokio_postgres::Error> {
    // regclass prints schema-qualified names only outside the search_path.
    c.batch_execute("SET search_path = pg_catalog").await?;
    let facts = c.query(SCHEMA_FACTS, &[]).await?.iter().map(|r| r.get(0)).collect();
    c.batch_execute("RESET search_path").await?;
    Ok(facts)
}

/// Blue's and green's schema agree, or green is empty and the copy method fills it.
pub(super) async fn schema_match(targets: &Targets, where_: &str, blue: &Client, green: &Client) -> CheckResult {
    let (b, g) = match (schema_facts(blue).await, schema_facts(green).await) {
        (Ok(b), Ok(g)) => (b, g),
        (Err(e), _) | (_, Err(e)) => return CheckResult::query_failed(Check::SchemaMatch, where_, &e),
    };
    let green_tables = g.iter().filter(|f| f.starts_with("table ")).count();
    if green_tables == 0 && targets.method == ReplicationMethod::Copy {
        return CheckResult::ok(
            Check::SchemaMatch,
            where_,
            "green has no tables yet: replicate copies blue's schema",
        );
    }
    let mut diffs: Vec<String> = b.difference(&g).map(|f| format!("missing on green: {f}")).collect();
    diffs.extend(g.difference(&b).map(|f| format!("only on green: {f}")));
    if diffs.is_empty() {
        return CheckResult::ok(
            Check::SchemaMatch,
            where_,
            format!("tables, columns, keys and sequences match ({} items)", b.len()),
        );
    }
    let n = diffs.len();
    diffs.truncate(50);
    CheckResult::problem(
        Check::SchemaMatch,
        where_,
        CheckStatus::Fail,
        format!("{n} difference(s) between blue's and green's schema"),
        diffs,
        "apply the missing DDL to green (or drop green's database and let replicate copy the schema)",
    )
}
