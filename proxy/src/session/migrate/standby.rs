//! A server connection logged in ahead of a flip, with the session's protocol
//! statements already prepared on it, so the flip itself replays only what changed
//! since, and the new backend's catalog caches are warm.

use super::{within, StepError};
use crate::auth::ServerCredential;
use crate::server::{self, round_trip, Backend, LoginOptions, ServerConn};
use bytes::Bytes;
use pgcutover_protocol::{backend, build, frontend};

/// A logged-in standby connection.
pub(crate) struct Warm {
    /// The connection, logged in as the session's user.
    pub server: ServerConn,
    /// (name, Parse frame) of each statement prepared on `server`.
    pub statements: Vec<(String, Bytes)>,
}

/// Logs into `backend` and prepares `statements` there: a standby for a flip.
pub(crate) async fn warm_standby(
    backend: Backend,
    opts: LoginOptions,
    params: Vec<(String, String)>,
    credential: ServerCredential,
    statements: Vec<(String, Bytes)>,
) -> Result<Warm, StepError> {
    let mut server = server::connect(&backend, &opts, &params, &credential).await?;
    if statements.is_empty() {
        return Ok(Warm { server, statements });
    }
    for (_, frame) in &statements {
        server.conn.wbuf.extend_from_slice(frame);
        build::frame(&mut server.conn.wbuf, frontend::SYNC, |_| {});
    }
    let mut failed = vec![false; statements.len()];
    let read = round_trip(&mut server.conn, statements.len(), |i, f| {
        if f.tag == backend::ERROR_RESPONSE {
            failed[i] = true;
        }
        Ok::<_, StepError>(())
    });
    within(read).await?;
    let prepared = statements
        .into_iter()
        .zip(failed)
        .filter_map(|(s, failed)| (!failed).then_some(s))
        .collect();
    Ok(Warm {
        server,
        statements: prepared,
    })
}
