//! What can end a session early, and the ErrorResponse each one becomes.

use crate::auth::AuthFailure;
use crate::server::LoginError;
use crate::wire::WireError;
use bytes::BytesMut;
use pgcutover_protocol::build::{self, ProxyError, Severity};
use std::time::Duration;
use tracing::{info, warn};

/// A reason to close a client connection, with the FATAL the client gets.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("client did not finish logging in within {0:?}")]
    LoginTimeout(Duration),
    #[error("invalid startup: {0}")]
    ClientProtocol(String),
    /// What PostgreSQL answers with silence: logged, and the connection closed
    /// without a byte (e.g. `invalid length of startup packet`).
    #[error("invalid startup, closed without a reply as PostgreSQL does: {0}")]
    Unanswered(String),
    /// A protocol version PostgreSQL refuses with FATAL 0A000.
    #[error("{0}")]
    UnsupportedProtocol(String),
    #[error("client sent a plaintext startup while tls_mode = require")]
    TlsRequired,
    #[error("no user name in the startup packet")]
    NoUser,
    #[error("max_client_conn ({0}) reached")]
    TooManyClients(usize),
    #[error("user \"{0}\" is unknown to pgcutover")]
    UnknownUser(String),
    #[error("{0}")]
    Auth(AuthFailure),
    #[error("{0}")]
    AuthQuery(crate::auth::LookupError),
    #[error("{0}")]
    Server(LoginError),
    #[error("client went away during login: {0}")]
    ClientGone(String),
    #[error("{0} server closed the connection")]
    ServerClosed(&'static str),
    #[error("{0} server connection failed: {1}")]
    ServerFailed(&'static str, String),
    #[error("proxy shutting down")]
    Shutdown,
    #[error("session holds {0}, which cannot move to another server")]
    Pinned(String),
    #[error("transaction still open after the switchover's drain")]
    DrainCancelled,
    #[error("user \"{0}\" is not an admin console user")]
    NotAdmin(String),
}

impl SessionError {
    /// Logs at the level the cause deserves: client mistakes are info, ours warn.
    pub(crate) fn log(&self) {
        match self {
            SessionError::Server(_) | SessionError::AuthQuery(_) | SessionError::ServerFailed(..) => {
                warn!("closing client: {self}")
            }
            _ => info!("closing client: {self}"),
        }
    }

    /// Appends the ErrorResponse this error becomes.
    pub(crate) fn write_to(&self, out: &mut BytesMut) {
        let fatal = |out: &mut BytesMut, code: &str, message: &str, hint: Option<&str>| {
            build::error_response(
                out,
                &ProxyError {
                    severity: Severity::Fatal,
                    code,
                    message,
                    detail: None,
                    hint,
                },
            )
        };
        match self {
            SessionError::LoginTimeout(d) => fatal(
                out,
                "08006",
                &format!("pgcutover: login did not complete within {:.0?}", d),
                Some("the client must finish TLS, startup and authentication within client_login_timeout"),
            ),
            SessionError::ClientProtocol(m) => fatal(out, "08P01", &format!("pgcutover: {m}"), None),
            SessionError::TlsRequired => fatal(
                out,
                "28000",
                "pgcutover requires TLS for every connection (tls_mode = require)",
                Some("connect with sslmode=require (or verify-full)"),
            ),
            SessionError::NoUser => fatal(
                out,
                "28000",
                "no PostgreSQL user name specified in startup packet",
                Some("set the user in the connection string"),
            ),
            SessionError::TooManyClients(max) => fatal(
                out,
                "53300",
                &format!("sorry, too many clients already: pgcutover serves at most {max} client connections"),
                Some("close idle connections, or raise [proxy] max_client_conn"),
            ),
            SessionError::UnknownUser(user) => fatal(
                out,
                "28000",
                &format!("user \"{user}\" is not known to pgcutover"),
                Some("add the user to auth_file, or configure auth_user and auth_query to look it up"),
            ),
            SessionError::Auth(AuthFailure::WrongPassword(user)) => fatal(
                out,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
                None,
            ),
            SessionError::Auth(AuthFailure::Unusable { message, hint }) => fatal(out, "28000", message, Some(hint)),
            SessionError::Auth(AuthFailure::Protocol(m)) => fatal(out, "08P01", &format!("pgcutover: {m}"), None),
            SessionError::Auth(AuthFailure::Wire(WireError::Frame(e))) => {
                fatal(out, "08P01", &format!("pgcutover: {e}"), None)
            }
            SessionError::Auth(AuthFailure::Wire(_)) | SessionError::ClientGone(_) | SessionError::Unanswered(_) => {}
            SessionError::UnsupportedProtocol(m) => fatal(out, "0A000", &format!("pgcutover: {m}"), None),
            SessionError::AuthQuery(e) => fatal(
                out,
                "28000",
                &format!("pgcutover could not look up the user's password: {e}"),
                Some("check auth_user's entry in auth_file and that auth_query runs on the database"),
            ),
            SessionError::Server(LoginError::Rejected(body)) => {
                // The server's own words and SQLSTATE (unknown database, bad password, ...).
                build::frame(out, pgcutover_protocol::backend::ERROR_RESPONSE, |b| {
                    b.extend_from_slice(body)
                });
            }
            SessionError::Server(e @ LoginError::Credential { hint, .. }) => {
                fatal(out, "28000", &format!("pgcutover: {e}"), Some(hint))
            }
            SessionError::Server(e) => fatal(
                out,
                "08006",
                &format!("pgcutover: {e}"),
                Some("check that the server is running and reachable at the address in the config's url"),
            ),
            SessionError::ServerClosed(target) => fatal(
                out,
                "08006",
                &format!("pgcutover: the {target} server closed the connection unexpectedly"),
                None,
            ),
            SessionError::ServerFailed(target, m) => fatal(
                out,
                "08006",
                &format!("pgcutover: connection to the {target} server failed: {m}"),
                None,
            ),
            SessionError::Pinned(reason) => fatal(
                out,
                "57P01",
                &format!("terminating connection for a database switchover: the session holds {reason}, which cannot move to the new server"),
                Some("reconnect; to keep such sessions on the old server until they end, set [switchover] pinned_policy = \"wait\""),
            ),
            SessionError::NotAdmin(user) => fatal(
                out,
                "28000",
                &format!("user \"{user}\" may not use the pgcutover admin console"),
                Some("add the user to [proxy] admin_users"),
            ),
            SessionError::DrainCancelled => fatal(
                out,
                "57P01",
                "terminating connection for a database switchover: its transaction was still open when the drain timed out, and was rolled back",
                Some("reconnect and retry the transaction; [switchover] drain_timeout bounds how long a switchover waits for open transactions"),
            ),
            SessionError::Shutdown => fatal(
                out,
                "57P01",
                "terminating connection because pgcutover is shutting down",
                Some("reconnect: another pgcutover instance, or this one after its restart, will serve you"),
            ),
        }
    }
}
