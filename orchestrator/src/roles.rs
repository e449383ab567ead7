//! Copies blue's roles to green with their password hashes, attributes, memberships
//! and settings, so SCRAM pass-through in the proxy keeps working on green.

use crate::error::{OrchestratorError, SqlContext};
use crate::quote::{quote_ident, quote_literal};
use crate::targets::Side;
use tokio_postgres::Client;

/// What the role copy did.
#[derive(Debug, Default)]
pub(crate) struct RolesCopied {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub skipped: Vec<String>,
}

/// Copies every role of blue (except predefined `pg_*` roles, RDS's own `rds_*`,
/// `rdsadmin`, `rdstopmgr` and `rdsrepladmin`, green's admin
/// login and green's bootstrap superuser) to green in one transaction.
pub(crate) async fn copy_roles(
    blue: &Client,
    green: &Client,
    green_admin: &str,
    db: &str,
) -> Result<RolesCopied, OrchestratorError> {
    let mut sql = String::from("BEGIN;\n");
    let (done, copied) = role_statements(blue, green, green_admin, db, &mut sql).await?;
    membership_statements(blue, db, &copied, &mut sql).await?;
    setting_statements(blue, db, &copied, &mut sql).await?;
    sql.push_str("COMMIT;");
    green.batch_execute(&sql).await.ctx(Side::Green, db, "copying roles")?;
    Ok(done)
}

/// `CREATE ROLE` / `ALTER ROLE ... WITH` for each role to copy: what was done, and
/// the names copied (memberships and settings follow only those).
async fn role_statements(
    blue: &Client,
    green: &Client,
    green_admin: &str,
    db: &str,
    sql: &mut String,
) -> Result<(RolesCopied, Vec<String>), OrchestratorError> {
    let rows = blue
        .query(
            "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
                    rolbypassrls, rolconnlimit, rolpassword, rolvaliduntil::text
               FROM pg_authid WHERE rolname !~ '^(pg_|rds_)' AND rolname NOT IN ('rdsadmin', 'rdstopmgr', 'rdsrepladmin')
              ORDER BY rolname",
            &[],
        )
        .await
        .ctx(Side::Blue, db, "reading roles from pg_authid (needs superuser)")?;
    let green_roles: Vec<(String, bool)> = green
        .query("SELECT rolname, oid = 10 FROM pg_roles", &[])
        .await
        .ctx(Side::Green, db, "reading green's roles")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut done = RolesCopied::default();
    let mut copied: Vec<String> = Vec::new();
    for r in &rows {
        let name: String = r.get(0);
        let existing = green_roles.iter().find(|(n, _)| *n == name);
        if name == green_admin || existing.is_some_and(|(_, bootstrap)| *bootstrap) {
            done.skipped.push(name);
            continue;
        }
        let flag = |i: usize, yes: &'static str, no: &'static str| if r.get::<_, bool>(i) { yes } else { no };
        let password: Option<String> = r.get(9);
        let valid: Option<String> = r.get(10);
        let ident = quote_ident(&name);
        if existing.is_none() {
            sql.push_str(&format!("CREATE ROLE {ident};\n"));
            done.created.push(name.clone());
        } else {
            done.updated.push(name.clone());
        }
        sql.push_str(&format!(
            "ALTER ROLE {ident} WITH {} {} {} {} {} {} {} CONNECTION LIMIT {} PASSWORD {} VALID UNTIL {};\n",
            flag(1, "SUPERUSER", "NOSUPERUSER"),
            flag(2, "INHERIT", "NOINHERIT"),
            flag(3, "CREATEROLE", "NOCREATEROLE"),
            flag(4, "CREATEDB", "NOCREATEDB"),
            flag(5, "LOGIN", "NOLOGIN"),
            flag(6, "REPLICATION", "NOREPLICATION"),
            flag(7, "BYPASSRLS", "NOBYPASSRLS"),
            r.get::<_, i32>(8),
            password.as_deref().map(quote_literal).unwrap_or("NULL".into()),
            quote_literal(valid.as_deref().unwrap_or("infinity")),
        ));
        copied.push(name);
    }
    Ok((done, copied))
}

/// `GRANT role TO member` for every membership of a copied role.
async fn membership_statements(
    blue: &Client,
    db: &str,
    copied: &[String],
    sql: &mut String,
) -> Result<(), OrchestratorError> {
    let members = blue
        .query(
            "SELECT r.rolname, m.rolname, am.admin_option FROM pg_auth_members am
               JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member",
            &[],
        )
        .await
        .ctx(Side::Blue, db, "reading role memberships")?;
    for m in &members {
        let (role, member): (String, String) = (m.get(0), m.get(1));
        if !copied.contains(&member) {
            continue;
        }
        let admin = if m.get::<_, bool>(2) { " WITH ADMIN OPTION" } else { "" };
        sql.push_str(&format!(
            "GRANT {} TO {}{admin};\n",
            quote_ident(&role),
            quote_ident(&member)
        ));
    }
    Ok(())
}

/// `ALTER ROLE ... SET` for the server-wide settings of every copied role.
async fn setting_statements(
    blue: &Client,
    db: &str,
    copied: &[String],
    sql: &mut String,
) -> Result<(), OrchestratorError> {
    let settings = blue
        .query(
            "SELECT r.rolname, split_part(c, '=', 1), substr(c, strpos(c, '=') + 1)
               FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole, unnest(s.setconfig) c
              WHERE s.setdatabase = 0",
            &[],
        )
        .await
        .ctx(Side::Blue, db, "reading role settings")?;
    for s in &settings {
        let (role, key, value): (String, String, String) = (s.get(0), s.get(1), s.get(2));
        if !copied.contains(&role) {
            continue;
        }
        // List settings (search_path, ...) are stored already quoted: pass them as
        // written, but only when they hold nothing but names, commas and double
        // quotes (an extension's list setting may be stored raw, and this batch runs
        // as green's superuser).
        let value = if key.ends_with("search_path") || key.ends_with("_preload_libraries") {
            if !is_plain_list(&value) {
                tracing::warn!(role = %role, setting = %key, "not copying a role setting whose value is not a plain list of names: {value:?}");
                continue;
            }
            value
        } else {
            quote_literal(&value)
        };
        sql.push_str(&format!(
            "ALTER ROLE {} SET {} = {value};\n",
            quote_ident(&role),
            quote_ident(&key)
        ));
    }
    Ok(())
}

/// A stored list setting made of names only: identifiers, double-quoted names
/// without quotes or semicolons inside, commas and spaces.
fn is_plain_list(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '"' | ',' | ' ' | '.' | '-'))
        && value.matches('"').count() % 2 == 0
}

#[cfg(test)]
mod list_tests {
    use super::is_plain_list;

    #[test]
    fn only_plain_lists_of_names_are_pasted() {
        for ok in [
            "\"$user\", public",
            "app, extensions",
            "pg_stat_statements,auto_explain",
            "",
        ] {
            assert!(is_plain_list(ok), "{ok}");
        }
        for bad in ["public'; DROP ROLE x; --", "a;b", "\"unbalanced", "x\ny", "a\\b"] {
            assert!(!is_plain_list(bad), "{bad}");
        }
    }
}
