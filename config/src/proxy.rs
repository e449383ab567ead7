//! `[proxy]`: listener, TLS policies, limits, timeouts, the admin API and peers.

use crate::HumanDuration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Whether a server that asks for a password in clear text (pg_hba `password`)
    /// gets it. Default `false`: anything between the proxy and the server could
    /// ask for it.
    pub server_cleartext_password: bool,
    /// Most client connections at once; more get FATAL 53300. Default 1000.
    pub max_client_conn: usize,
    /// Time a client has to finish TLS, startup and authentication. Default `15s`.
    pub client_login_timeout: HumanDuration,
    /// Time to connect and log into a server. Default `10s`.
    pub server_connect_timeout: HumanDuration,
    /// TCP keepalive on server connections: idle time before the first probe;
    /// probes follow every third of it, and after three unanswered ones (or data
    /// unacknowledged for twice this long) the connection is given up, so a server
    /// that vanished (a blackholed network, a host gone) ends its sessions within
    /// about twice this. Default `30s`.
    pub server_tcp_keepalive: HumanDuration,
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
    /// PEM certificate chain the admin API serves HTTPS with; absent = plain HTTP,
    /// which is allowed on loopback addresses only while a token is set (the token
    /// must not cross a network in clear).
    pub admin_tls_cert_file: Option<PathBuf>,
    /// PEM private key for `admin_tls_cert_file`.
    pub admin_tls_key_file: Option<PathBuf>,
    /// PEM CA bundle that signs the admin certificates of `https://` peers (and of
    /// this instance, for the CLI).
    pub admin_tls_ca_file: Option<PathBuf>,
    /// Users allowed into the SQL admin console (database `pgcutover` on `listen`).
    pub admin_users: Vec<String>,
    /// Admin API base URLs of the other proxy instances serving the same
    /// application (`["https://10.0.0.2:9187"]`; `http://` only on loopback); a
    /// switchover holds, flips and resumes them with this one. They must accept
    /// this instance's admin token.
    pub peers: Vec<String>,
    /// What happens to a server connection when its client leaves. Default
    /// `session`: at a transaction boundary it is reset with `server_reset_query`
    /// and kept for the next client with the same user, database and startup
    /// parameters; `off` closes it (every client logs into the server anew).
    pub pool_mode: PoolMode,
    /// What resets a server connection before it serves another client. Default
    /// `DISCARD ALL` (closes cursors, drops prepared statements and temporary tables,
    /// unlistens, releases advisory locks, resets every setting).
    pub server_reset_query: String,
    /// A pooled connection idle for longer is closed. Default `10m`.
    pub server_idle_timeout: HumanDuration,
    /// A server connection older than this is closed instead of pooled. Default `1h`.
    pub server_lifetime: HumanDuration,
    /// Most idle server connections kept per user, database and startup
    /// parameters; a client leaving a full pool closes its connection. Not a cap on
    /// server connections in use (every client still has its own). Default 20.
    pub max_idle_server_conn: usize,
    /// Idle server connections kept ready per user, database and startup parameters
    /// once a client has used them: fewer are topped up ahead of the next client,
    /// and right after a flip they open on the new side. Default 0 (none ahead).
    pub min_pool_size: usize,
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
            server_cleartext_password: false,
            max_client_conn: 1000,
            client_login_timeout: HumanDuration(Duration::from_secs(15)),
            server_connect_timeout: HumanDuration(Duration::from_secs(10)),
            server_tcp_keepalive: HumanDuration(Duration::from_secs(30)),
            shutdown_timeout: HumanDuration(Duration::from_secs(30)),
            max_message_bytes: pgcutover_protocol::frame::DEFAULT_MAX_MESSAGE_LEN,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            admin_token_file: None,
            admin_tls_cert_file: None,
            admin_tls_key_file: None,
            admin_tls_ca_file: None,
            admin_users: Vec::new(),
            peers: Vec::new(),
            pool_mode: PoolMode::Session,
            server_reset_query: "DISCARD ALL".into(),
            server_idle_timeout: HumanDuration(Duration::from_secs(600)),
            server_lifetime: HumanDuration(Duration::from_secs(3600)),
            max_idle_server_conn: 20,
            min_pool_size: 0,
        }
    }
}

/// `[proxy] pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    /// A client's server connection is closed when the client leaves.
    Off,
    /// Server connections are reset and reused by later clients (one client at a time).
    Session,
    /// Server connections shared between transactions: not available yet (refused
    /// at load, so a config written for it does not silently run in another mode).
    Transaction,
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

impl ProxyConfig {
    /// The scheme and address the admin API is reached at: `https://` once it has a
    /// certificate.
    pub fn admin_url(&self) -> String {
        let scheme = if self.admin_tls_cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.admin_listen)
    }
}
