//! Moving a session's server side to another server at a transaction boundary: at
//! a flip, read the session's state from the old server, refuse if it cannot move,
//! log into the new target as the same user with the same startup parameters (or
//! take the standby logged in ahead), replay the state there, and swap; after the
//! server connection was lost while the session was idle, the same from the
//! session's own state log. The client sees a delay, at most a ParameterStatus or two.

mod replay;
mod snapshot;
mod standby;

pub(crate) use standby::{warm_standby, Warm};

use super::Live;
use crate::pump::PidRewrite;
use crate::route::Route;
use crate::server::{self, LoginError, ServerConn};
use crate::wire::{Conn, WireError};
use bytes::BytesMut;
use pgcutover_api::Side;
use pgcutover_protocol::build;
use snapshot::{snapshot, Snapshot};
use std::future::Future;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long the old server gets to answer the state snapshot, and the new one the replay.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest an old server connection is kept open after its session moved.
const RETIRE_WAIT: Duration = Duration::from_secs(30);

/// Old server connections are closed over this long after the hold ends.
const RETIRE_SPREAD: Duration = Duration::from_secs(5);

/// What the metrics call a session pinned by statements the log could not keep.
const UNLOGGED_STATEMENTS: &str = "prepared statements too large to log";

/// Why a session did not move.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MoveError {
    /// State that cannot be recreated elsewhere (temp tables, session advisory locks,
    /// WITH HOLD cursors).
    #[error("session holds {0}, which cannot move to another server")]
    Pinned(String),
    /// The old server did not answer the snapshot.
    #[error("could not read the session's state from the {target} server: {reason}")]
    Snapshot {
        /// Where the session is.
        target: Side,
        /// Why.
        reason: StepError,
    },
    /// The new server refused the login.
    #[error("could not log into the {target} server: {reason}")]
    Login {
        /// Where the session was going.
        target: Side,
        /// Why.
        reason: LoginError,
    },
    /// Part of the state could not be recreated.
    #[error("could not recreate the session's state on the {target} server: {reason}")]
    Replay {
        /// Where the session was going.
        target: Side,
        /// What failed.
        reason: StepError,
    },
    /// The server ended this one backend (`pg_terminate_backend`) and runs on: the
    /// session ends as it would on a direct connection.
    #[error(
        "the {target} server terminated the session's backend and is still up (its postmaster has run for {uptime:?})"
    )]
    Terminated {
        /// Where the session is.
        target: Side,
        /// How long the server had been up.
        uptime: Duration,
    },
}

/// Why one exchange of a move (standby, snapshot, replay) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// The connection failed.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The server did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The login failed.
    #[error("{0}")]
    Login(#[from] LoginError),
    /// The server refused: what it said, per statement.
    #[error("{}", .0.join("; "))]
    Refused(Vec<String>),
    /// The server's answer could not be read.
    #[error("invalid answer: {0}")]
    Invalid(String),
    /// The task opening a standby connection ended abnormally.
    #[error("the standby login was stopped: {0}")]
    Stopped(String),
}

/// Runs one exchange within [`STEP_TIMEOUT`].
async fn within<T>(exchange: impl Future<Output = Result<Result<T, StepError>, WireError>>) -> Result<T, StepError> {
    match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
        Ok(done) => done?,
        Err(_) => Err(StepError::Timeout(STEP_TIMEOUT)),
    }
}

/// Moves the session to `route`'s target at a flip: reads its state from the old
/// server (refusing if something pins it there), then [`switch`]es. On success the
/// log is whole again (it adopts what the server reported).
pub(crate) async fn move_to(live: &mut Live<'_>, route: Route, warm: Option<Warm>) -> Result<(), MoveError> {
    let (shared, ctx) = (live.shared, live.ctx);
    let started = Instant::now();
    let old_target = ctx.registration.handle.target();
    // Whatever the old server sent that was not scanned yet (a notification arriving
    // right now) is read here, and reaches the client either way.
    live.server.conn.rbuf = live.pump.take_server_buffer();
    let mut to_client = BytesMut::new();
    let read = tokio::time::timeout(STEP_TIMEOUT, snapshot(&mut live.server.conn, &mut to_client)).await;
    let snapshot = match read.unwrap_or(Err(StepError::Timeout(STEP_TIMEOUT))) {
        Ok(s) => s,
        Err(reason) => {
            stay(live, &to_client).await;
            return Err(MoveError::Snapshot {
                target: old_target,
                reason,
            });
        }
    };
    let mut pinned = snapshot.pinned.clone();
    let log = live.pump.state_log().statements();
    if snapshot
        .protocol_statements
        .iter()
        .any(|n| log.parse_frame(n).is_none())
    {
        // A Parse over the inspection cap passed unread: it cannot be recreated.
        pinned.push(UNLOGGED_STATEMENTS);
    }
    if !pinned.is_empty() {
        for reason in &pinned {
            shared.metrics.pinned(reason);
        }
        stay(live, &to_client).await;
        return Err(MoveError::Pinned(pinned.join(", ")));
    }
    let snapshot_time = started.elapsed();
    switch(live, route, warm, &snapshot, to_client).await?;
    live.pump
        .state_log_mut()
        .adopt(snapshot.state.clone(), &snapshot.protocol_statements);
    info!(
        from = old_target.name(),
        to = route.target.name(),
        server_pid = live.server.key.pid,
        settings = snapshot.state.settings.len(),
        statements = snapshot.protocol_statements.len() + snapshot.state.sql_prepares.len(),
        channels = snapshot.state.channels.len(),
        ms = started.elapsed().as_millis() as u64,
        snapshot_ms = snapshot_time.as_millis() as u64,
        "session moved"
    );
    Ok(())
}

/// The session does not move: the pump goes on with the old server's unread bytes,
/// and the client gets what arrived during the snapshot.
async fn stay(live: &mut Live<'_>, to_client: &[u8]) {
    live.pump.set_server_buffer(std::mem::take(&mut live.server.conn.rbuf));
    forward(live.client, to_client).await;
}

/// Recreates the session on the active target after its server connection was
/// lost while the session was idle, from the session's own log (the old server
/// cannot be asked). The client notices nothing but a delay. Retries the login
/// until `server_connect_timeout` has passed.
pub(crate) async fn reconnect(live: &mut Live<'_>, administrator_command: bool) -> Result<(), MoveError> {
    let shared = live.shared;
    let started = Instant::now();
    let snapshot = Snapshot::from_log(live.pump.state_log());
    let deadline = started + shared.config.proxy.server_connect_timeout.0;
    let mut pause = Duration::from_millis(50);
    let mut warm = match administrator_command {
        true => terminated_or_restarted(live).await?,
        false => None,
    };
    loop {
        // The route may change while this waits: always the active target.
        let route = shared.control.route();
        let warm = warm.take().filter(|(side, _)| *side == route.target).map(|(_, w)| w);
        let switched = switch(live, route, warm, &snapshot, BytesMut::new()).await;
        match switched {
            Ok(()) => {
                info!(
                    target = route.target.name(),
                    server_pid = live.server.key.pid,
                    settings = snapshot.state.settings.len(),
                    statements = snapshot.protocol_statements.len() + snapshot.state.sql_prepares.len(),
                    channels = snapshot.state.channels.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "server connection lost while idle: reconnected and replayed the session"
                );
                return Ok(());
            }
            // A refused replay will be refused again; a login may work once the
            // server is back (a restart).
            Err(e @ (MoveError::Replay { .. } | MoveError::Terminated { .. })) => return Err(e),
            Err(e) if Instant::now() + pause >= deadline => return Err(e),
            Err(e) => {
                debug!("reconnect failed, retrying in {pause:?}: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The lost server said "terminating connection due to administrator command":
/// PostgreSQL says that both to a backend `pg_terminate_backend` ends and to every
/// backend when it shuts down. A server that accepts a login at once and whose
/// postmaster has run longer than the lost connection lived did not restart: it
/// ended this one backend, and the session ends too ([`MoveError::Terminated`]).
/// Otherwise (no login: it is going down or coming up; a younger postmaster: it
/// restarted or failed over) the reconnect goes ahead, starting from the probe's
/// connection if there is one.
async fn terminated_or_restarted(live: &mut Live<'_>) -> Result<Option<(Side, Warm)>, MoveError> {
    let (shared, ctx) = (live.shared, live.ctx);
    let target = ctx.registration.handle.target();
    let lived = live.server.connected_at.elapsed();
    let backend = shared.backend(target);
    let Ok(mut probe) = server::connect(backend, &shared.login, &ctx.params, &ctx.credential).await else {
        return Ok(None);
    };
    match tokio::time::timeout(STEP_TIMEOUT, server::postmaster_uptime(&mut probe.conn)).await {
        Ok(Ok(Some(uptime))) if uptime > lived => {
            build::terminate(&mut probe.conn.wbuf);
            let _ = tokio::time::timeout(Duration::from_secs(1), probe.conn.flush()).await;
            Err(MoveError::Terminated { target, uptime })
        }
        Ok(Ok(_)) => Ok(Some((
            target,
            Warm {
                server: probe,
                statements: Vec::new(),
            },
        ))),
        _ => Ok(None),
    }
}

/// Logs in to `route`'s target (or takes the warm standby), replays `snapshot`
/// there, tells the client about parameters that differ, and swaps: the old server
/// is sent Terminate, the registry and the pump follow the new one. On error
/// nothing has changed for the session.
async fn switch(
    live: &mut Live<'_>,
    route: Route,
    warm: Option<Warm>,
    snapshot: &Snapshot,
    mut to_client: BytesMut,
) -> Result<(), MoveError> {
    let (shared, ctx) = (live.shared, live.ctx);
    let (client, server, pump) = (&mut *live.client, &mut *live.server, &mut live.pump);
    let backend = shared.backend(route.target);
    let login = || async {
        server::connect(backend, &shared.login, &ctx.params, &ctx.credential)
            .await
            .map_err(|reason| MoveError::Login {
                target: backend.side,
                reason,
            })
    };
    let fresh = warm.is_none();
    let (mut new, mut prepared) = match warm {
        Some(w) => (w.server, w.statements),
        None => (login().await?, Vec::new()),
    };
    let mut replayed = replay::replay(&mut new.conn, snapshot, pump.state_log().statements(), &prepared).await;
    if replayed.is_err() && !fresh {
        // The standby may have died while it waited (idle timeout, restart): log in afresh once.
        (new, prepared) = (login().await?, Vec::new());
        replayed = replay::replay(&mut new.conn, snapshot, pump.state_log().statements(), &prepared).await;
    }
    let dropped = match replayed {
        Ok(dropped) => dropped,
        Err(reason) => {
            build::terminate(&mut new.conn.wbuf);
            let _ = tokio::time::timeout(Duration::from_secs(1), new.conn.flush()).await;
            return Err(MoveError::Replay {
                target: backend.side,
                reason,
            });
        }
    };
    for name in &dropped {
        warn!(statement = %name, "a logged prepared statement could not be prepared again (its Parse fails); the client gets the server's error if it uses it");
        pump.state_log_mut().forget_statement(name);
    }
    // Parameters that differ on the new server (server_version, ...) are reported the
    // way a server reports a change: an asynchronous ParameterStatus.
    for (name, value) in new.params() {
        if server.params().all(|p| p != (name, value)) {
            build::parameter_status(&mut to_client, name, value);
        }
    }
    forward(client, &to_client).await;

    ctx.registration
        .handle
        .set_server(new.addr, new.key, route.target, route.epoch);
    pump.set_server_buffer(std::mem::take(&mut new.conn.rbuf));
    pump.set_pid_rewrite((new.key.pid != ctx.client_pid).then_some(PidRewrite {
        server_pid: new.key.pid,
        client_pid: ctx.client_pid,
    }));
    let m = &shared.metrics;
    m.replayed("setting", snapshot.state.settings.len());
    m.replayed("prepared_statement", snapshot.protocol_statements.len());
    m.replayed("sql_prepare", snapshot.state.sql_prepares.len());
    m.replayed("listen", snapshot.state.channels.len());
    retire(std::mem::replace(server, new), shared.control.watch());
    Ok(())
}

/// Closes a server connection the session no longer uses (Terminate), once the
/// hold is over and spread over [`RETIRE_SPREAD`]: every old backend exiting at
/// once would compete for the CPU with the moves still running, or with the
/// released clients right after the resume.
fn retire(mut old: ServerConn, mut cutover: tokio::sync::watch::Receiver<crate::control::Cutover>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(RETIRE_WAIT, cutover.wait_for(|c| !c.gate.is_held())).await;
        // Backend pids are as good a spread as any.
        let spread = RETIRE_SPREAD.as_millis() as u64;
        tokio::time::sleep(Duration::from_millis((old.key.pid as u64).wrapping_mul(7919) % spread)).await;
        build::terminate(&mut old.conn.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(1), old.conn.flush()).await;
    });
}

async fn forward(client: &mut Conn, bytes: &[u8]) {
    if !bytes.is_empty() {
        client.wbuf.extend_from_slice(bytes);
        // A client that is not reading gets its messages when it does; a failed write
        // shows up as a client error in the pump right after.
        let _ = client.flush().await;
    }
}
