//! `[auth]`: how clients authenticate and where their secrets come from.

use crate::HumanDuration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Database `auth_query` runs in, always the same one (so a database owner
    /// cannot answer for users of other databases); default: the first of
    /// `[replication] databases`, which exists on blue and green alike.
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
            auth_query: "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1".into(),
            auth_dbname: None,
            auth_cache_ttl: HumanDuration(Duration::from_secs(60)),
        }
    }
}

impl AuthConfig {
    /// The database `auth_query` runs in.
    pub fn auth_dbname(&self, replication: &crate::ReplicationConfig) -> String {
        self.auth_dbname
            .clone()
            .or_else(|| replication.databases.first().cloned())
            .unwrap_or_else(|| "postgres".to_owned())
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
