//! Who may connect, and with which secret the proxy then logs into the server.
//!
//! Secrets come from a PgBouncer-format `auth_file` or from `auth_query` on the
//! active database. A client's own exchange with the proxy decides what the proxy
//! can present to the server: the plain password, the md5 hash, or the SCRAM keys
//! recovered from the client's proof (pass-through).

mod client;
mod query;
mod secret;
mod userlist;

pub use client::{authenticate_client, AuthFailure};
pub use query::{AuthQuery, LookupError};
pub use secret::{Secret, ServerCredential};
pub use userlist::{Userlist, UserlistError};
