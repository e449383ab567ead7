//! The proxy's configuration: TOML sections as serde structs, every default next to
//! its field, `PGCUTOVER_<SECTION>_<KEY>` environment overrides applied before
//! deserialising, so every bad value is reported the same way: key, value, expected
//! form.

use serde::{de, Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "PGCUTOVER_";
const SECTIONS: &[&str] = &["proxy", "auth", "blue", "green", "replication", "switchover"];

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
}

/// `[replication]`: what `pgcutover replicate` sets up from blue to green.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Databases to replicate; each gets its own publication, slot and subscription.
    /// Default: the database of `[blue] url` (or `postgres` when it names none).
    pub databases: Vec<String>,
    /// How green gets blue's existing data. Default `copy`.
    pub method: ReplicationMethod,
    /// libpq conninfo (`host=... port=... user=... password=...`) green's subscription
    /// uses to reach blue; `dbname=<database>` is appended per database. Default: built
    /// from `[blue] url`, password included.
    pub source_conninfo: Option<String>,
    /// Directory holding `pg_dump`, `pg_restore` and `psql` (at least blue's major
    /// version) for the copy method. Default: `PATH`, then `/usr/lib/postgresql/<N>/bin`.
    pub bindir: Option<PathBuf>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            databases: Vec::new(),
            method: ReplicationMethod::Copy,
            source_conninfo: None,
            bindir: None,
        }
    }
}

/// How green gets blue's existing data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMethod {
    /// Copy roles and schema with pg_dump, then the data through the subscription
    /// (`copy_data = true`). For self-managed servers and any version pair.
    Copy,
    /// Green is a snapshot/clone of blue made after `replicate --prepare-clone`; the
    /// subscription starts at the clone's start LSN (`copy_data = false`).
    Clone,
}

/// `[switchover]`: the proxy's part of a switchover.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwitchoverConfig {
    /// Longest a hold may last; the proxy resumes by itself after it. Default `30s`.
    pub timeout: HumanDuration,
    /// How long `POST /hold` waits for in-flight transactions to finish. Default `10s`.
    pub drain_timeout: HumanDuration,
    /// What a drain that times out does. Default `abort`.
    pub drain_policy: DrainPolicy,
    /// With `drain_policy = "cancel"`: how long cancelled stragglers get to end their
    /// transactions before they are closed. Default `2s`.
    pub drain_cancel_grace: HumanDuration,
    /// What happens to a session whose state cannot move (temporary tables, session
    /// advisory locks, WITH HOLD cursors). Default `close`.
    pub pinned_policy: PinnedPolicy,
    /// The switchover starts only while every slot's lag is at most this many bytes.
    /// Default 16777216 (16 MiB).
    pub max_lag_bytes: u64,
    /// Set up replication green → blue at the flip, so `rollback` loses nothing.
    /// Default `true`.
    pub reverse_replication: bool,
}

impl Default for SwitchoverConfig {
    fn default() -> Self {
        SwitchoverConfig {
            timeout: HumanDuration(Duration::from_secs(30)),
            drain_timeout: HumanDuration(Duration::from_secs(10)),
            drain_policy: DrainPolicy::Abort,
            drain_cancel_grace: HumanDuration(Duration::from_secs(2)),
            pinned_policy: PinnedPolicy::Close,
            max_lag_bytes: 16 * 1024 * 1024,
            reverse_replication: true,
        }
    }
}

/// What a drain that times out does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainPolicy {
    /// Report failure and stay held; the caller resumes (or retries).
    Abort,
    /// Cancel the stragglers' running queries; after `drain_cancel_grace`, close the
    /// sessions still in a transaction with FATAL 57P01 naming the switchover.
    Cancel,
}

/// What happens to a session whose state cannot move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinnedPolicy {
    /// Close it with a FATAL naming the state that pinned it.
    Close,
    /// Leave it on the old target; the flip reports it.
    Wait,
}

/// `[proxy]`: listener, TLS, limits, timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to. Default `127.0.0.1:6432`.
    pub listen: SocketAddr,
    /// PEM certificate chain for client TLS; absent = no TLS to clients.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Client TLS policy. Default `allow`.
    pub tls_mode: TlsMode,
    /// TLS policy towards PostgreSQL servers. Default `prefer`.
    pub server_tls_mode: ServerTlsMode,
    /// PEM CA bundle that signs the servers' certificates; needed by `verify-full`.
    pub server_tls_ca_file: Option<PathBuf>,
    /// Most client connections at once; more get FATAL 53300. Default 1000.
    pub max_client_conn: usize,
    /// Time a client has to finish TLS, startup and authentication. Default `15s`.
    pub client_login_timeout: HumanDuration,
    /// Time to connect and log into a server. Default `10s`.
    pub server_connect_timeout: HumanDuration,
    /// On SIGTERM/SIGINT, time sessions get to finish their transactions before
    /// they are closed with FATAL 57P01. Default `30s`.
    pub shutdown_timeout: HumanDuration,
    /// Largest single protocol message accepted, in bytes. Default 1 GiB (PostgreSQL's own cap).
    pub max_message_bytes: usize,
    /// Admin HTTP API address (status, hold, resume, route). Default `127.0.0.1:9187`.
    pub admin_listen: SocketAddr,
    /// File holding the bearer token that mutating admin calls must present; without
    /// it they are refused.
    pub admin_token_file: Option<PathBuf>,
    /// Users allowed into the SQL admin console (database `pgcutover` on `listen`).
    pub admin_users: Vec<String>,
    /// Admin API base URLs of the other proxy instances serving the same
    /// application (`["http://10.0.0.2:9187"]`); a switchover holds, flips and
    /// resumes them with this one. They must accept this instance's admin token.
    pub peers: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            tls_cert_file: None,
            tls_key_file: None,
            tls_mode: TlsMode::Allow,
            server_tls_mode: ServerTlsMode::Prefer,
            server_tls_ca_file: None,
            max_client_conn: 1000,
            client_login_timeout: HumanDuration(Duration::from_secs(15)),
            server_connect_timeout: HumanDuration(Duration::from_secs(10)),
            shutdown_timeout: HumanDuration(Duration::from_secs(30)),
            max_message_bytes: pgcutover_protocol::frame::DEFAULT_MAX_MESSAGE_LEN,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            admin_token_file: None,
            admin_users: Vec::new(),
            peers: Vec::new(),
        }
    }
}

/// Client-side TLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Answer SSLRequest with 'N'.
    Disable,
    /// TLS when the client asks and a certificate is configured.
    Allow,
    /// Plaintext sessions are refused with FATAL 28000.
    Require,
}

/// Server-side TLS policy, as libpq's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, certificate not verified.
    Prefer,
    /// TLS or fail, certificate not verified.
    Require,
    /// TLS or fail, certificate chain and host name verified against `server_tls_ca_file`.
    VerifyFull,
}

/// `[auth]`: client authentication and the secrets it uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How clients prove who they are. Default `scram-sha-256`.
    pub auth_type: AuthType,
    /// PgBouncer-format userlist: `"user" "secret"` per line.
    pub auth_file: Option<PathBuf>,
    /// Role that runs `auth_query` on the active database (its secret comes from `auth_file`).
    pub auth_user: Option<String>,
    /// Query returning (user name, secret) for `$1`.
    pub auth_query: String,
    /// Database `auth_query` runs in; default: the client's database.
    pub auth_dbname: Option<String>,
    /// How long a secret fetched by `auth_query` is reused. Default `60s`.
    pub auth_cache_ttl: HumanDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            auth_type: AuthType::ScramSha256,
            auth_file: None,
            auth_user: None,
            auth_query: "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into(),
            auth_dbname: None,
            auth_cache_ttl: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// Client authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthType {
    /// SCRAM-SHA-256 (a user whose secret is an md5 hash cannot log in).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5; users with a SCRAM verifier are asked for SCRAM instead, as PostgreSQL does.
    #[serde(rename = "md5")]
    Md5,
    /// No client password.
    #[serde(rename = "trust")]
    Trust,
}

/// `[blue]` / `[green]`: a database server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `postgres://user[:password]@host[:port]/database`: the host and port clients
    /// are routed to (each with its own user and database); the user and password
    /// are the orchestrator's admin login.
    #[serde(deserialize_with = "de_url")]
    pub url: PgUrl,
}

/// A parsed `postgres://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// Host name or address.
    pub host: String,
    /// Port (default 5432).
    pub port: u16,
    /// User, if given.
    pub user: Option<String>,
    /// Password, if given.
    pub password: Option<String>,
    /// Database, if given.
    pub database: Option<String>,
}

impl PgUrl {
    /// Parses `postgres://` or `postgresql://` URLs; query parameters are ignored.
    pub fn parse(s: &str) -> Result<PgUrl, String> {
        let rest = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
            .ok_or("must start with postgres:// or postgresql://")?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, database) = match rest.split_once('/') {
            Some((a, d)) => (a, (!d.is_empty()).then(|| percent_decode(d)).transpose()?),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(percent_decode(u)?), Some(percent_decode(p)?)),
                None => (Some(percent_decode(u)?), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in IPv6 host")?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| format!("port {p:?} is not a number from 1 to 65535"))?,
            None => 5432,
        };
        Ok(PgUrl {
            host,
            port,
            user,
            password,
            database,
        })
    }

    /// `host:port`, bracketed for IPv6, for messages and connecting.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "%-escapes are not UTF-8".into())
}

fn de_url<'de, D: Deserializer<'de>>(d: D) -> Result<PgUrl, D::Error> {
    let s = String::deserialize(d)?;
    PgUrl::parse(&s).map_err(|e| {
        de::Error::custom(format!(
            "invalid url {s:?}: {e}; expected postgres://user[:password]@host[:port]/database"
        ))
    })
}

/// A duration written as a human string: `"30s"`, `"250ms"`, `"2m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `<number><unit>` with unit ms, s, m or h.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected a number with a unit, like \"30s\" or \"250ms\""))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unit must be ms, s, m or h, like \"30s\" or \"250ms\""
                ))
            }
        };
        Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}: out of range"))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<HumanDuration, String> {
        HumanDuration::parse(s).map(HumanDuration)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map(HumanDuration).map_err(de::Error::custom)
    }
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
            match apply_env_override(&mut table, &name, &value) {
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

/// `PGCUTOVER_PROXY_LISTEN=…` sets `[proxy] listen`. The value is read as a TOML
/// value when it parses as one (numbers, booleans, arrays), else as a string.
/// Returns the key's path (`proxy.listen`) when the variable was an override.
fn apply_env_override(table: &mut toml::Table, name: &str, value: &str) -> Result<Option<String>, String> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(None);
    };
    let rest = rest.to_ascii_lowercase();
    let Some((section, key)) = SECTIONS
        .iter()
        .find_map(|s| rest.strip_prefix(s).and_then(|k| k.strip_prefix('_')).map(|k| (*s, k)))
    else {
        // Other PGCUTOVER_* variables (PGCUTOVER_CONFIG, PGCUTOVER_LOG_FORMAT, ...) belong to the CLI.
        return Ok(None);
    };
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = entry else {
        return Err(format!("[{section}] is not a table in the config file"));
    };
    section_table.insert(key.to_owned(), parsed);
    Ok(Some(format!("{section}.{key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn example_userlist_in_deploy_is_valid() {
        let text = include_str!("../../deploy/userlist.example.txt");
        let u = crate::auth::Userlist::parse(text).unwrap();
        assert_eq!(u.len(), 3);
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
