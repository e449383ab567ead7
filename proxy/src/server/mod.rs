//! Connections to PostgreSQL servers: TCP, optional TLS, startup and login with the
//! credential the client's authentication produced.

mod login;
mod query;

pub use login::{connect, Backend, LoginError, LoginOptions, ServerConn};
pub(crate) use query::{postmaster_uptime, round_trip};
