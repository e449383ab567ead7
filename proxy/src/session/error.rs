//! What can end a session early, and the ErrorResponse each one becomes.

use crate::auth::AuthFailure;
use crate::auth::LookupError;
use crate::server::LoginError;
use crate::wire::WireError;
use bytes::BytesMut;
use pgcutover_protocol::build::{self, ProxyError, Severity};
use std::time::Duration;
use tracing::{info, warn};

/// What a client is sent when its connection is closed.
#[derive(Debug, PartialEq, Eq)]
enum Reply<'a> {
    /// Nothing: the client is gone, or PostgreSQL would not answer either.
    Nothing,
    /// The server's own ErrorResponse body, passed through.
    Raw(&'a [u8]),
    /// A FATAL of pgcutover's.
    Fatal {
        code: &'static str,
        message: String,
        hint: Option<&'a str>,
    },
}

fn fatal<'a>(code: &'static str, message: impl Into<String>, hint: Option<&'a str>) -> Reply<'a> {
    Reply::Fatal {
        code,
        message: message.into(),
        hint,
    }
}

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
    #[error("replication connection (replication={0:?}) refused")]
    Replication(String),
    #[error("session could not move to {0}: {1}")]
    MoveFailed(&'static str, String),
    #[error("max_client_conn ({0}) reached")]
    TooManyClients(usize),
    #[error("user {0:?} is unknown to pgcutover (not in auth_file, nor found by auth_query)")]
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
    #[error("database {0:?} is not replicated to the new server")]
    Unreplicated(String),
    #[error("user {0:?} is not an admin console user")]
    NotAdmin(String),
}

impl SessionError {
    /// Logs at the level the cause deserves: client mistakes are info, ours warn.
    pub(crate) fn log(&self) {
        match self {
            SessionError::AuthQuery(LookupError::RateLimited(_)) => info!("closing client: {self}"),
            SessionError::Server(_) | SessionError::AuthQuery(_) | SessionError::ServerFailed(..) => {
                warn!("closing client: {self}")
            }
            _ => info!("closing client: {self}"),
        }
    }

    /// Appends the ErrorResponse this error becomes (nothing, for a client that is gone
    /// or a startup PostgreSQL itself would not answer).
    pub(crate) fn write_to(&self, out: &mut BytesMut) {
        match self.reply() {
            Reply::Nothing => {}
            Reply::Raw(body) => build::frame(out, pgcutover_protocol::backend::ERROR_RESPONSE, |b| {
                b.extend_from_slice(body)
            }),
            Reply::Fatal { code, message, hint } => build::error_response(
                out,
                &ProxyError {
                    severity: Severity::Fatal,
                    code,
                    message: &message,
                    detail: None,
                    hint,
                },
            ),
        }
    }

    fn reply(&self) -> Reply<'_> {
        self.login_reply().unwrap_or_else(|| self.ended_reply())
    }

    /// The answer to a failed startup, authentication or server login.
    fn login_reply(&self) -> Option<Reply<'_>> {
        Some(match self {
            SessionError::LoginTimeout(d) => fatal(
                "08006",
                format!("pgcutover: login did not complete within {:.0?}", d),
                Some("the client must finish TLS, startup and authentication within client_login_timeout"),
            ),
            SessionError::ClientProtocol(m) => fatal("08P01", format!("pgcutover: {m}"), None),
            SessionError::TlsRequired => fatal(
                "28000",
                "pgcutover requires TLS for every connection (tls_mode = require)",
                Some("connect with sslmode=require (or verify-full)"),
            ),
            SessionError::NoUser => fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
                Some("set the user in the connection string"),
            ),
            SessionError::TooManyClients(max) => fatal(
                "53300",
                format!("sorry, too many clients already: pgcutover serves at most {max} client connections"),
                Some("close idle connections, or raise [proxy] max_client_conn"),
            ),
            // The client learns no more than of a wrong password; the log says more.
            SessionError::UnknownUser(user) => fatal(
                "28P01",
                format!("password authentication failed for user \"{user}\""),
                None,
            ),
            SessionError::Auth(AuthFailure::WrongPassword(user)) => fatal(
                "28P01",
                format!("password authentication failed for user \"{user}\""),
                None,
            ),
            SessionError::Auth(AuthFailure::Md5SecretForScram(user)) => fatal(
                "28P01",
                format!("password authentication failed for user \"{user}\""),
                None,
            ),
            SessionError::Auth(AuthFailure::Unusable { message, hint }) => fatal("28000", message, Some(hint)),
            SessionError::Auth(AuthFailure::Protocol(m)) => fatal("08P01", format!("pgcutover: {m}"), None),
            SessionError::Auth(AuthFailure::Wire(WireError::Frame(e))) => {
                fatal("08P01", format!("pgcutover: {e}"), None)
            }
            SessionError::Auth(AuthFailure::Wire(_)) | SessionError::ClientGone(_) | SessionError::Unanswered(_) => {
                Reply::Nothing
            }
            SessionError::UnsupportedProtocol(m) => fatal("0A000", format!("pgcutover: {m}"), None),
            SessionError::Replication(_) => fatal(
                "0A000",
                "pgcutover does not proxy replication connections",
                Some("connect pg_basebackup, pg_receivewal or a subscription to the database server itself"),
            ),
            SessionError::AuthQuery(LookupError::RateLimited(_)) => fatal(
                "53300",
                "pgcutover: too many logins of users it does not know from this address; try again in a few seconds",
                None,
            ),
            SessionError::AuthQuery(e) => fatal(
                "28000",
                format!("pgcutover could not look up the user's password: {e}"),
                Some("check auth_user's entry in auth_file and that auth_query runs on the database"),
            ),
            // The server's own words and SQLSTATE (unknown database, bad password, ...).
            SessionError::Server(LoginError::Rejected(body)) => Reply::Raw(body),
            SessionError::Server(e @ LoginError::Credential { hint, .. }) => {
                fatal("28000", format!("pgcutover: {e}"), Some(hint))
            }
            SessionError::Server(e) => fatal(
                "08006",
                format!("pgcutover: {e}"),
                Some("check that the server is running and reachable at the address in the config's url"),
            ),
            _ => return None,
        })
    }

    /// The answer when an established session is ended.
    fn ended_reply(&self) -> Reply<'_> {
        match self {
            SessionError::ServerClosed(target) => fatal(
                "08006",
                format!("pgcutover: the {target} server closed the connection unexpectedly"),
                None,
            ),
            SessionError::ServerFailed(target, m) => fatal(
                "08006",
                format!("pgcutover: connection to the {target} server failed: {m}"),
                None,
            ),
            SessionError::Pinned(reason) => fatal(
                "57P01",
                format!("terminating connection for a database switchover: the session holds {reason}, which cannot move to the new server"),
                Some("reconnect; to keep such sessions on the old server until they end, set [switchover] pinned_policy = \"wait\""),
            ),
            SessionError::MoveFailed(target, reason) => fatal(
                "57P01",
                format!("terminating connection for a database switchover: this session could not move to the {target} server: {reason}"),
                Some("reconnect: a new connection logs into the new server, and its error, if any, names the problem"),
            ),
            SessionError::NotAdmin(user) => fatal(
                "28000",
                format!("user \"{user}\" may not use the pgcutover admin console"),
                Some("add the user to [proxy] admin_users"),
            ),
            SessionError::Unreplicated(database) => fatal(
                "57P01",
                format!("terminating connection for a database switchover: database \"{database}\" is not replicated to the new server"),
                Some("reconnect to a replicated database; [switchover] unreplicated_sessions = \"close\" closes such sessions at the flip"),
            ),
            SessionError::DrainCancelled => fatal(
                "57P01",
                "terminating connection for a database switchover: its transaction was still open when the drain timed out, and was rolled back",
                Some("reconnect and retry the transaction; [switchover] drain_timeout bounds how long a switchover waits for open transactions"),
            ),
            SessionError::Shutdown => fatal(
                "57P01",
                "terminating connection because pgcutover is shutting down",
                Some("reconnect: another pgcutover instance, or this one after its restart, will serve you"),
            ),
            // The login variants are answered by login_reply, which runs first.
            _ => Reply::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: SessionError) -> Option<&'static str> {
        match e.reply() {
            Reply::Fatal { code, .. } => Some(code),
            _ => None,
        }
    }

    #[test]
    fn every_way_a_session_ends_has_the_sqlstate_drivers_expect() {
        use SessionError::*;
        for (e, expected) in [
            (LoginTimeout(Duration::from_secs(15)), Some("08006")),
            (ClientProtocol("malformed".into()), Some("08P01")),
            (Unanswered("invalid length".into()), None),
            (UnsupportedProtocol("4.0".into()), Some("0A000")),
            (TlsRequired, Some("28000")),
            (NoUser, Some("28000")),
            (Replication("database".into()), Some("0A000")),
            (MoveFailed("green", "login refused".into()), Some("57P01")),
            (TooManyClients(10), Some("53300")),
            (UnknownUser("u".into()), Some("28P01")),
            (Auth(AuthFailure::WrongPassword("u".into())), Some("28P01")),
            (ClientGone("reset".into()), None),
            (ServerClosed("blue"), Some("08006")),
            (ServerFailed("green", "refused".into()), Some("08006")),
            (Shutdown, Some("57P01")),
            (Pinned("temporary tables".into()), Some("57P01")),
            (DrainCancelled, Some("57P01")),
            (Unreplicated("other".into()), Some("57P01")),
            (NotAdmin("u".into()), Some("28000")),
        ] {
            let shown = format!("{e:?}");
            assert_eq!(code(e), expected, "{shown}");
        }
        let body = bytes::Bytes::from_static(b"SFATAL\0C3D000\0Mno such database\0\0");
        let rejected = Server(LoginError::Rejected(body.clone()));
        assert_eq!(
            rejected.reply(),
            Reply::Raw(&body),
            "the server's own error, as it sent it"
        );
    }
}
