//! Which servers and databases the orchestrator works on, and how it logs in: the
//! admin logins of `[blue] url` / `[green] url`, with the url's database replaced by
//! each replicated database.

use crate::error::{pg_message, OrchestratorError};
use crate::quote::conninfo_value;
use pgcutover_config::ServerTls;
use pgcutover_config::{Config, PgUrl, ReplicationMethod, ServerTlsMode};
use std::fmt;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::Client;

pub use pgcutover_api::Side;

/// Where an admin connection goes when the url's database does not exist (yet).
const MAINTENANCE_DATABASES: [&str; 2] = ["postgres", "template1"];

/// Blue, green, the replicated databases and how to reach each.
#[derive(Clone)]
pub struct Targets {
    /// `[blue] url`.
    pub blue: PgUrl,
    /// `[green] url`.
    pub green: PgUrl,
    /// `[replication] databases`.
    pub databases: Vec<String>,
    /// `[replication] method`.
    pub method: ReplicationMethod,
    /// `[replication] source_conninfo`.
    pub source_conninfo: Option<String>,
    /// `[replication] bindir`.
    pub bindir: Option<std::path::PathBuf>,
    green_configured: bool,
    tls_mode: ServerTlsMode,
    tls: Option<rustls::ClientConfig>,
    connect_timeout: Duration,
}

impl fmt::Debug for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Targets")
            .field("blue", &self.blue.host_port())
            .field("green", &self.green.host_port())
            .field("databases", &self.databases)
            .finish()
    }
}

impl Targets {
    /// From the config. Without `[green]`, only blue-side work is possible
    /// (`replicate --prepare-clone`); connecting to green then fails naming the fix.
    pub fn from_config(config: &Config) -> Result<Targets, OrchestratorError> {
        let tls = ServerTls::new(&config.proxy)
            .map_err(|e| OrchestratorError::Config(format!("[proxy] server TLS settings: {e}")))?;
        Ok(Targets {
            blue: config.blue.url.clone(),
            green: config.green.as_ref().unwrap_or(&config.blue).url.clone(),
            green_configured: config.green.is_some(),
            databases: config.replication.databases.clone(),
            method: config.replication.method,
            source_conninfo: config.replication.source_conninfo.clone(),
            bindir: config.replication.bindir.clone(),
            tls_mode: config.proxy.server_tls_mode,
            tls: tls.connector().map(|c| (**c.config()).clone()),
            connect_timeout: config.proxy.server_connect_timeout.0,
        })
    }

    /// The admin URL of one side.
    pub fn url(&self, side: Side) -> &PgUrl {
        match side {
            Side::Blue => &self.blue,
            Side::Green => &self.green,
        }
    }

    /// The admin login's user name on one side (`postgres` when the url names none).
    pub fn user(&self, side: Side) -> String {
        self.url(side).user.clone().unwrap_or_else(|| "postgres".into())
    }

    /// An admin connection to `side` for server-wide work (roles, creating databases,
    /// server checks), and the database it is in: the url's database, or, when that
    /// does not exist yet (a fresh green whose url names the application database, as
    /// the example config does), a maintenance database (`postgres`, then `template1`).
    pub async fn connect_admin(&self, side: Side) -> Result<(String, Client), OrchestratorError> {
        let named = self.url(side).database.clone();
        let mut first_error = None;
        let candidates = named.iter().map(String::as_str).chain(MAINTENANCE_DATABASES);
        for db in candidates {
            match self.connect(side, db).await {
                Ok(client) => return Ok((db.to_owned(), client)),
                Err(e) if e.is_missing_database() => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(first_error.unwrap_or(e)),
            }
        }
        Err(first_error.expect("the maintenance databases were tried"))
    }

    /// Connects to `database` on `side` as the admin, naming the fix when that fails.
    pub async fn connect(&self, side: Side, database: &str) -> Result<Client, OrchestratorError> {
        if side == Side::Green && !self.green_configured {
            return Err(OrchestratorError::Config(
                "there is no [green] section: add [green] url = \"postgres://admin@green-host:5432/app\" \
                 (or set PGCUTOVER_GREEN_URL)"
                    .into(),
            ));
        }
        let url = self.url(side);
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&url.host)
            .port(url.port)
            .user(self.user(side))
            .dbname(database)
            .application_name("pgcutover")
            .connect_timeout(self.connect_timeout);
        if let Some(p) = &url.password {
            cfg.password(p);
        }
        let result = match &self.tls {
            Some(tls) => {
                cfg.ssl_mode(match self.tls_mode {
                    ServerTlsMode::Prefer => SslMode::Prefer,
                    _ => SslMode::Require,
                });
                let make = tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone());
                cfg.connect(make).await.map(|(client, conn)| {
                    tokio::spawn(conn);
                    client
                })
            }
            None => {
                cfg.ssl_mode(SslMode::Disable);
                cfg.connect(tokio_postgres::NoTls).await.map(|(client, conn)| {
                    tokio::spawn(conn);
                    client
                })
            }
        };
        result.map_err(|e| connect_error(side, url, &self.user(side), database, &e))
    }

    /// A libpq conninfo for `database` on `side` with the admin login (for
    /// pg_dump/psql, which get the password from the environment instead).
    pub(crate) fn libpq_env(&self, side: Side, database: &str) -> Vec<(&'static str, String)> {
        let url = self.url(side);
        let mut env = vec![
            ("PGHOST", url.host.clone()),
            ("PGPORT", url.port.to_string()),
            ("PGUSER", self.user(side)),
            ("PGDATABASE", database.to_owned()),
            ("PGAPPNAME", "pgcutover".to_owned()),
            ("PGCONNECT_TIMEOUT", self.connect_timeout.as_secs().max(1).to_string()),
            (
                "PGSSLMODE",
                match self.tls_mode {
                    ServerTlsMode::Disable => "disable",
                    ServerTlsMode::Prefer => "prefer",
                    ServerTlsMode::Require => "require",
                    ServerTlsMode::VerifyFull => "verify-full",
                }
                .to_owned(),
            ),
        ];
        if let Some(p) = &url.password {
            env.push(("PGPASSWORD", p.clone()));
        }
        env
    }

    /// The conninfo green's subscription for `database` uses to reach blue:
    /// `[replication] source_conninfo`, else built from `[blue] url`; `dbname` appended.
    pub fn subscription_conninfo(&self, database: &str) -> String {
        match &self.source_conninfo {
            Some(c) => format!("{} dbname={}", c.trim(), conninfo_value(database)),
            None => self.conninfo(Side::Blue, database),
        }
    }

    /// A libpq conninfo for `database` on `side` from its admin url (what a
    /// subscription on the other side connects with).
    pub fn conninfo(&self, side: Side, database: &str) -> String {
        let url = self.url(side);
        let mut s = format!(
            "host={} port={} user={}",
            conninfo_value(&url.host),
            url.port,
            conninfo_value(&self.user(side))
        );
        if let Some(p) = &url.password {
            s.push_str(&format!(" password={}", conninfo_value(p)));
        }
        format!("{s} dbname={}", conninfo_value(database))
    }
}

/// Connects to a libpq-style conninfo (`host=... dbname=...` or a `postgres://` URL)
/// without TLS, driving the connection in the background.
pub async fn connect(conninfo: &str) -> Result<Client, OrchestratorError> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|e| OrchestratorError::Refused {
            problem: format!("cannot connect with the given conninfo: {}", pg_message(&e)),
            fix: "check host, port, user, password and database".into(),
        })?;
    tokio::spawn(conn);
    Ok(client)
}

fn connect_error(side: Side, url: &PgUrl, user: &str, database: &str, e: &tokio_postgres::Error) -> OrchestratorError {
    let key = format!("[{side}] url (or PGCUTOVER_{}_URL)", side.to_string().to_uppercase());
    let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
    let reason = pg_message(e);
    let fix = match code.as_str() {
        "28P01" | "28000" if reason.contains("password") || code == "28P01" => {
            format!("check the user {user:?} and its password in {key}")
        }
        "28000" => format!(
            "allow user {user:?} from this host to database {database:?} in {side}'s pg_hba.conf, or fix {key}"
        ),
        "3D000" => format!(
            "create database {database:?} on {side}, or fix [replication] databases (default: the database of [blue] url)"
        ),
        "53300" => format!("{side} has no free connection slots: raise max_connections or close idle sessions"),
        _ if e.as_db_error().is_none() => format!(
            "check that {side} is running and accepts TCP connections at {}, and the host and port in {key}",
            url.host_port()
        ),
        _ => format!("check {key}"),
    };
    OrchestratorError::Connect {
        side,
        addr: url.host_port(),
        database: database.to_owned(),
        reason,
        fix,
        code: e.code().cloned(),
    }
}
