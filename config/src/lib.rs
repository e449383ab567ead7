//! pgcutover's configuration, for every part of the product: TOML sections as serde
//! structs (one file per section), every default next to its field,
//! `PGCUTOVER_<SECTION>_<KEY>` environment overrides applied before deserialising,
//! so every bad value is reported the same way: key, value, expected form. Also what
//! both the proxy and the orchestrator build from it: the TLS connector towards
//! servers and the admin token.

#![warn(missing_docs)]

mod admin_token;
mod auth;
mod aws;
mod duration;
mod env;
mod proxy;
mod replication;
mod server_tls;
mod switchover;
mod targets;

pub use admin_token::{AdminToken, AdminTokenError, MIN_ADMIN_TOKEN_LEN};
pub use auth::{AuthConfig, AuthType};
pub use aws::AwsConfig;
pub use duration::HumanDuration;
pub use env::ENV_PREFIX;
pub use proxy::{PoolMode, ProxyConfig, ServerTlsMode, TlsMode};
pub use replication::{ReplicationConfig, ReplicationMethod};
pub use server_tls::{load_certs, provider, ServerTls, TlsError};
pub use switchover::{DrainPolicy, PinnedPolicy, SwitchoverConfig, UnreplicatedPolicy};
pub use targets::{redact_url, PgUrl, TargetConfig};

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How clients reach the proxy.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// How clients authenticate and which secrets log the proxy into servers.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The database clients use now.
    pub blue: TargetConfig,
    /// The database clients move to (used by the switchover).
    pub green: Option<TargetConfig>,
    /// What the orchestrator replicates from blue to green, and how.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// Bounds of hold, drain and flip.
    #[serde(default)]
    pub switchover: SwitchoverConfig,
    /// Where blue lives on AWS, for `pgcutover aws ...`.
    #[serde(default)]
    pub aws: AwsConfig,
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key has a bad value, or the TOML is broken.
    #[error("config {origin}: {message}")]
    Invalid {
        /// The file, or "environment".
        origin: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl Config {
    /// Reads a config file and applies `PGCUTOVER_*` overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, &path.display().to_string(), base, std::env::vars())
    }

    /// Builds a config from TOML text plus overrides from `env` (pairs of
    /// `PGCUTOVER_<SECTION>_<KEY>`, value); relative paths resolve against `base_dir`.
    pub fn from_toml(
        text: &str,
        origin: &str,
        base_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        let mut from_env = Vec::new();
        for (name, value) in env {
            match env::apply_env_override(&mut table, &name, &value) {
                Ok(Some(path)) => from_env.push((path, name)),
                Ok(None) => {}
                Err(message) => {
                    return Err(ConfigError::Invalid {
                        origin: format!("environment variable {name}"),
                        message,
                    })
                }
            }
        }
        // The path names the key in every error, also for values that came from the environment.
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().to_owned();
            match from_env.iter().find(|(p, _)| *p == path) {
                Some((_, var)) => ConfigError::Invalid {
                    origin: format!("environment variable {var}"),
                    message: format!("{path}: {message}"),
                },
                None if path == "." => invalid(message),
                None => invalid(format!("{path}: {message}")),
            }
        })?;
        config.resolve_paths(base_dir);
        if config.replication.databases.is_empty() {
            let db = config.blue.url.database.clone().unwrap_or_else(|| "postgres".into());
            config.replication.databases.push(db);
        }
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.proxy.tls_cert_file,
            &mut self.proxy.tls_key_file,
            &mut self.proxy.server_tls_ca_file,
            &mut self.proxy.admin_token_file,
            &mut self.proxy.admin_tls_cert_file,
            &mut self.proxy.admin_tls_key_file,
            &mut self.proxy.admin_tls_ca_file,
            &mut self.auth.auth_file,
            &mut self.replication.bindir,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        let p = &self.proxy;
        if p.tls_cert_file.is_some() != p.tls_key_file.is_some() {
            return Err("[proxy] tls_cert_file and tls_key_file must be set together".into());
        }
        if p.admin_tls_cert_file.is_some() != p.admin_tls_key_file.is_some() {
            return Err("[proxy] admin_tls_cert_file and admin_tls_key_file must be set together".into());
        }
        if p.tls_mode == TlsMode::Require && p.tls_cert_file.is_none() {
            return Err("[proxy] tls_mode = \"require\" needs tls_cert_file and tls_key_file".into());
        }
        if p.server_tls_mode == ServerTlsMode::VerifyFull && p.server_tls_ca_file.is_none() {
            return Err(
                "[proxy] server_tls_mode = \"verify-full\" needs server_tls_ca_file (the PEM bundle of the CA that signed the servers' certificates)"
                    .into(),
            );
        }
        if p.max_client_conn == 0 {
            return Err("[proxy] max_client_conn = 0 would refuse every client; use a positive number".into());
        }
        if p.pool_mode == PoolMode::Transaction {
            return Err("[proxy] pool_mode = \"transaction\" is not available in this version: use \"session\" (server connections reused between clients) or \"off\"".into());
        }
        if p.pool_mode == PoolMode::Session && p.server_reset_query.trim().is_empty() {
            return Err("[proxy] server_reset_query is empty: a pooled connection would carry one client's settings, prepared statements and temporary tables to the next; use \"DISCARD ALL\" or pool_mode = \"off\"".into());
        }
        if p.min_pool_size > p.max_idle_server_conn {
            return Err(format!(
                "[proxy] min_pool_size = {} is above max_idle_server_conn = {}: the extra connections would be opened and closed again; lower it or raise max_idle_server_conn",
                p.min_pool_size, p.max_idle_server_conn
            ));
        }
        let a = &self.auth;
        if a.auth_file.is_none() && a.auth_user.is_none() && a.auth_type != AuthType::Trust {
            return Err(format!(
                "[auth] auth_type = \"{}\" needs auth_file (a userlist) or auth_user + auth_query",
                match a.auth_type {
                    AuthType::Md5 => "md5",
                    _ => "scram-sha-256",
                }
            ));
        }
        let r = &self.replication;
        if let Some(db) = r.databases.iter().find(|d| d.is_empty() || d.contains('\0')) {
            return Err(format!("[replication] databases: {db:?} is not a database name"));
        }
        if let Some(d) = r
            .databases
            .iter()
            .enumerate()
            .find_map(|(i, d)| r.databases[..i].contains(d).then_some(d))
        {
            return Err(format!("[replication] databases lists {d:?} twice"));
        }
        if a.auth_user.is_some() && a.auth_file.is_none() {
            return Err("[auth] auth_user needs auth_file holding that user's secret".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MINIMAL: &str = "[auth]\nauth_file = \"userlist.txt\"\n[blue]\nurl = \"postgres://admin@db1:5433/app\"\n";

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            "test.toml",
            Path::new("/etc/pgcutover"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_fill_everything_but_blue() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.proxy.listen, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(c.proxy.tls_mode, TlsMode::Allow);
        assert_eq!(c.proxy.server_tls_mode, ServerTlsMode::Prefer);
        assert_eq!(c.auth.auth_type, AuthType::ScramSha256);
        assert_eq!(
            c.auth.auth_file.as_deref(),
            Some(Path::new("/etc/pgcutover/userlist.txt"))
        );
        assert_eq!(c.blue.url.host_port(), "db1:5433");
        assert_eq!(c.blue.url.database.as_deref(), Some("app"));
        assert!(c.green.is_none());
        assert_eq!(c.replication.databases, ["app"]);
        assert_eq!(c.replication.method, ReplicationMethod::Copy);
        assert_eq!(c.switchover.max_lag_bytes, 16777216);
        assert!(c.switchover.reverse_replication);
    }

    #[test]
    fn replication_section_and_env() {
        let c = load(
            &format!("{MINIMAL}[replication]\ndatabases = [\"a\", \"b\"]\nmethod = \"clone\"\nbindir = \"bin\"\n"),
            &[("PGCUTOVER_REPLICATION_SOURCE_CONNINFO", "host=blue port=5432")],
        )
        .unwrap();
        assert_eq!(c.replication.databases, ["a", "b"]);
        assert_eq!(c.replication.method, ReplicationMethod::Clone);
        assert_eq!(c.replication.source_conninfo.as_deref(), Some("host=blue port=5432"));
        assert_eq!(c.replication.bindir.as_deref(), Some(Path::new("/etc/pgcutover/bin")));
        let e = load(&format!("{MINIMAL}[replication]\ndatabases = [\"a\", \"a\"]\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn env_overrides_file_values() {
        let c = load(
            MINIMAL,
            &[
                ("PGCUTOVER_PROXY_LISTEN", "0.0.0.0:7000"),
                ("PGCUTOVER_PROXY_MAX_CLIENT_CONN", "5"),
                ("PGCUTOVER_PROXY_SHUTDOWN_TIMEOUT", "250ms"),
                ("PGCUTOVER_CONFIG", "ignored.toml"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(c.proxy.listen.port(), 7000);
        assert_eq!(c.proxy.max_client_conn, 5);
        assert_eq!(c.proxy.shutdown_timeout.0, Duration::from_millis(250));
    }

    #[test]
    fn pooling_defaults_and_what_is_refused() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.proxy.pool_mode, PoolMode::Session);
        assert_eq!(c.proxy.server_reset_query, "DISCARD ALL");
        assert_eq!(c.proxy.server_idle_timeout.0, Duration::from_secs(600));
        assert_eq!(c.proxy.server_lifetime.0, Duration::from_secs(3600));
        assert_eq!(c.proxy.max_idle_server_conn, 20);
        let off = load(MINIMAL, &[("PGCUTOVER_PROXY_POOL_MODE", "off")]).unwrap();
        assert_eq!(off.proxy.pool_mode, PoolMode::Off);
        let e = load(MINIMAL, &[("PGCUTOVER_PROXY_POOL_MODE", "transaction")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not available") && e.contains("\"session\""), "{e}");
        let e = load(MINIMAL, &[("PGCUTOVER_PROXY_SERVER_RESET_QUERY", " ")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("server_reset_query") && e.contains("DISCARD ALL"), "{e}");
        let e = load(MINIMAL, &[("PGCUTOVER_PROXY_MIN_POOL_SIZE", "30")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("min_pool_size = 30") && e.contains("max_idle_server_conn = 20"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_key_value_and_form() {
        let e = load(&format!("{MINIMAL}[replication]\nmethod = \"rsync\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("replication.method") && e.contains("clone"), "{e}");
        let e = load(&format!("{MINIMAL}[replication]\nmethd = \"copy\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("methd"), "{e}");
        let e = load(&format!("{MINIMAL}[switchover]\npinned_policy = \"maybe\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("switchover.pinned_policy") && e.contains("wait"), "{e}");
        let e = load(MINIMAL, &[("PGCUTOVER_PROXY_SHUTDOWN_TIMEOUT", "soon")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"soon\"") && e.contains("30s"), "{e}");
        assert!(
            e.contains("PGCUTOVER_PROXY_SHUTDOWN_TIMEOUT") && e.contains("proxy.shutdown_timeout"),
            "{e}"
        );
        let e = load(MINIMAL, &[("PGCUTOVER_PROXY_TLS_MODE", "sometimes")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes") && e.contains("require"), "{e}");
        let e = load(MINIMAL, &[("PGCUTOVER_BLUE_URL", "mysql://x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("postgres://"), "{e}");
        let e = load(MINIMAL, &[("PGCUTOVER_PROXY_LISTN", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listn"), "{e}");
        let e = load("[blue]\nurl = \"postgres://h/db\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth_file"), "{e}");
    }

    #[test]
    fn example_config_in_deploy_is_valid() {
        let text = include_str!("../../deploy/pgcutover.example.toml");
        let c = Config::from_toml(text, "example", Path::new("/etc/pgcutover"), std::iter::empty()).unwrap();
        let d = ProxyConfig::default();
        // The example documents the defaults; it must not drift from them.
        assert_eq!(c.proxy.listen, d.listen);
        assert_eq!(c.proxy.max_client_conn, d.max_client_conn);
        assert_eq!(c.proxy.shutdown_timeout, d.shutdown_timeout);
        assert_eq!(c.proxy.client_login_timeout, d.client_login_timeout);
        assert_eq!(c.proxy.server_connect_timeout, d.server_connect_timeout);
        assert_eq!(c.proxy.max_message_bytes, d.max_message_bytes);
        assert_eq!(c.auth.auth_type, AuthType::ScramSha256);
        assert_eq!(c.proxy.admin_listen, d.admin_listen);
        let sw = SwitchoverConfig::default();
        assert_eq!(c.switchover.timeout, sw.timeout);
        assert_eq!(c.switchover.drain_timeout, sw.drain_timeout);
        assert_eq!(c.switchover.pinned_policy, sw.pinned_policy);
        assert_eq!(c.switchover.drain_policy, sw.drain_policy);
        assert_eq!(c.switchover.drain_cancel_grace, sw.drain_cancel_grace);
        assert_eq!(c.switchover.max_lag_bytes, sw.max_lag_bytes);
        assert_eq!(c.switchover.reverse_replication, sw.reverse_replication);
        assert_eq!(c.replication.method, ReplicationConfig::default().method);
        assert_eq!(c.replication.databases, ["app"]);
        assert!(c.replication.source_conninfo.is_none() && c.replication.bindir.is_none());
    }

    #[test]
    fn parses_urls() {
        let u = PgUrl::parse("postgresql://us%40er:p%3Ass@[::1]:6000/my%20db?sslmode=require").unwrap();
        assert_eq!(u.user.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        assert_eq!((u.host.as_str(), u.port), ("::1", 6000));
        assert_eq!(u.host_port(), "[::1]:6000");
        assert_eq!(u.database.as_deref(), Some("my db"));
        assert_eq!(PgUrl::parse("postgres://h").unwrap().port, 5432);
        assert!(PgUrl::parse("postgres://h:99999/x").is_err());
        assert!(PgUrl::parse("postgres:///x").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(HumanDuration::parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(HumanDuration::parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(HumanDuration::parse("2m").unwrap(), Duration::from_secs(120));
        assert!(HumanDuration::parse("30").is_err());
        assert!(HumanDuration::parse("-1s").is_err());
    }
}
