//! Moving a session's server side to another server at a transaction boundary: at
//! a flip, read the session's state from the old server, refuse if it cannot move,
//! log into the new target as the same user with the same startup parameters (or
//! take the standby logged in ahead), replay the state there, and swap; after the
//! server connection was lost while the session was idle, the same from the
//! session's own state log. The client sees a delay, at most a ParameterStatus or two.

use super::SessionCtx;
use crate::auth::ServerCredential;
use crate::pump::{PidRewrite, Pump};
use crate::route::Route;
use crate::server::{self, Backend, LoginOptions, ServerConn};
use crate::state_log::{SessionState, SettingReplay, StateLog};
use crate::wire::{Conn, WireError};
use crate::Shared;
use bytes::{BufMut, Bytes, BytesMut};
use pgcutover_protocol::backend::{self, ErrorFields};
use pgcutover_protocol::build;
use pgcutover_protocol::quote::{quote_ident, quote_literal};
use pgcutover_protocol::sql::{self, Effect};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long the old server gets to answer the state snapshot, and the new one the replay.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest an old server connection is kept open after its session moved.
const RETIRE_WAIT: Duration = Duration::from_secs(30);

/// Old server connections are closed over this long after the hold ends.
const RETIRE_SPREAD: Duration = Duration::from_secs(5);

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
        /// blue / green.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// The new server refused the login.
    #[error("could not log into the {target} server: {reason}")]
    Login {
        /// blue / green.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// Part of the state could not be recreated.
    #[error("could not recreate the session's state on the {target} server: {reason}")]
    Replay {
        /// blue / green.
        target: &'static str,
        /// What failed.
        reason: String,
    },
}

/// A session's state, read from its old server or taken from its own log.
#[derive(Debug, Default)]
struct Snapshot {
    /// Settings, SQL PREPAREs, LISTEN channels.
    state: SessionState,
    /// Extended-protocol statements, by name.
    protocol_statements: Vec<String>,
    /// What keeps the session from moving, if anything.
    pinned: Vec<&'static str>,
    /// Taken from the log: a logged Parse may have failed on the old server, so one
    /// that fails again on replay is dropped instead of failing the move.
    from_log: bool,
}

impl Snapshot {
    /// The state as the session's own log knows it (the log must not be opaque).
    fn from_log(log: &StateLog) -> Snapshot {
        Snapshot {
            state: log.state().clone(),
            protocol_statements: log.statements().iter().map(|(n, _)| n.to_owned()).collect(),
            pinned: Vec::new(),
            from_log: true,
        }
    }
}

/// One statement, one result set: a row per setting ('s'), protocol statement ('p'),
/// SQL PREPARE ('q'), channel ('l') and kind of pinned state ('x').
const SNAPSHOT_SQL: &str = "select 's', name, setting from pg_catalog.pg_settings where source = 'session' \
union all select 'p', name, null from pg_catalog.pg_prepared_statements where not from_sql \
union all select 'q', name, statement from pg_catalog.pg_prepared_statements where from_sql \
union all select 'l', c, null from pg_catalog.pg_listening_channels() c \
union all select 'x', 't', null where exists (select from pg_catalog.pg_class where relnamespace = pg_catalog.pg_my_temp_schema()) \
union all select 'x', 'a', null where exists (select from pg_catalog.pg_locks where locktype = 'advisory' and pid = pg_catalog.pg_backend_pid()) \
union all select 'x', 'h', null where exists (select from pg_catalog.pg_cursors where is_holdable)";

/// A server connection logged in ahead of a flip, with the session's protocol
/// statements already prepared on it (so the flip itself replays only what changed
/// since, and the new backend's catalog caches are warm).
pub(crate) struct Warm {
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
) -> Result<Warm, String> {
    let mut server = server::connect(&backend, &opts, &params, &credential)
        .await
        .map_err(|e| e.to_string())?;
    for (_, frame) in &statements {
        server.conn.wbuf.extend_from_slice(frame);
        build::frame(&mut server.conn.wbuf, pgcutover_protocol::frontend::SYNC, |_| {});
    }
    let mut prepared = Vec::with_capacity(statements.len());
    if !statements.is_empty() {
        let read = async {
            server.conn.flush().await.map_err(|e| e.to_string())?;
            let mut failed = false;
            for (name, frame) in statements {
                loop {
                    let f = server.conn.read_frame().await.map_err(|e| e.to_string())?;
                    match f.tag {
                        backend::ERROR_RESPONSE => failed = true,
                        backend::READY_FOR_QUERY => break,
                        _ => {}
                    }
                }
                if !std::mem::take(&mut failed) {
                    prepared.push((name, frame));
                }
            }
            Ok::<_, String>(())
        };
        tokio::time::timeout(STEP_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {STEP_TIMEOUT:?}")))?;
    }
    Ok(Warm {
        server,
        statements: prepared,
    })
}

/// Moves the session to `route`'s target at a flip: reads its state from the old
/// server (refusing if something pins it there), then [`switch`]es. On success the
/// log is whole again (it adopts what the server reported).
pub(crate) async fn move_to(
    shared: &Shared,
    client: &mut Conn,
    server: &mut ServerConn,
    ctx: &SessionCtx,
    pump: &mut Pump,
    route: Route,
    warm: Option<Warm>,
) -> Result<(), MoveError> {
    let started = Instant::now();
    let old_target = ctx.registration.handle.target().name();
    // Whatever the old server sent that was not scanned yet (a notification arriving
    // right now) is read here, and reaches the client either way.
    server.conn.rbuf = pump.take_server_buffer();
    let mut to_client = BytesMut::new();
    let read = tokio::time::timeout(STEP_TIMEOUT, snapshot(&mut server.conn, &mut to_client)).await;
    let snapshot = match read {
        Ok(Ok(s)) => s,
        Ok(Err(reason)) => {
            stay(client, server, pump, &to_client).await;
            return Err(MoveError::Snapshot {
                target: old_target,
                reason,
            });
        }
        Err(_) => {
            stay(client, server, pump, &to_client).await;
            return Err(MoveError::Snapshot {
                target: old_target,
                reason: format!("no answer within {STEP_TIMEOUT:?}"),
            });
        }
    };
    if !snapshot.pinned.is_empty() {
        for reason in &snapshot.pinned {
            shared.metrics.pinned(reason);
        }
        stay(client, server, pump, &to_client).await;
        return Err(MoveError::Pinned(snapshot.pinned.join(", ")));
    }
    let snapshot_time = started.elapsed();
    switch(shared, client, server, ctx, pump, route, warm, &snapshot, to_client).await?;
    pump.state_log_mut()
        .adopt(snapshot.state.clone(), &snapshot.protocol_statements);
    info!(
        from = old_target,
        to = route.target.name(),
        server_pid = server.key.pid,
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
async fn stay(client: &mut Conn, server: &mut ServerConn, pump: &mut Pump, to_client: &[u8]) {
    pump.set_server_buffer(std::mem::take(&mut server.conn.rbuf));
    forward(client, to_client).await;
}

/// Recreates the session on the active target after its server connection was
/// lost while the session was idle, from the session's own log (the old server
/// cannot be asked). The client notices nothing but a delay. Retries the login
/// until `server_connect_timeout` has passed.
pub(crate) async fn reconnect(
    shared: &Shared,
    client: &mut Conn,
    server: &mut ServerConn,
    ctx: &SessionCtx,
    pump: &mut Pump,
) -> Result<(), MoveError> {
    let started = Instant::now();
    let snapshot = Snapshot::from_log(pump.state_log());
    let deadline = started + shared.config.proxy.server_connect_timeout.0;
    let mut pause = Duration::from_millis(50);
    loop {
        // The route may change while this waits: always the active target.
        let route = shared.control.route();
        let switched = switch(
            shared,
            client,
            server,
            ctx,
            pump,
            route,
            None,
            &snapshot,
            BytesMut::new(),
        )
        .await;
        match switched {
            Ok(()) => {
                info!(
                    target = route.target.name(),
                    server_pid = server.key.pid,
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
            Err(e @ MoveError::Replay { .. }) => return Err(e),
            Err(e) if Instant::now() + pause >= deadline => return Err(e),
            Err(e) => {
                debug!("reconnect failed, retrying in {pause:?}: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Logs in to `route`'s target (or takes the warm standby), replays `snapshot`
/// there, tells the client about parameters that differ, and swaps: the old server
/// is sent Terminate, the registry and the pump follow the new one. On error
/// nothing has changed for the session.
#[allow(clippy::too_many_arguments)]
async fn switch(
    shared: &Shared,
    client: &mut Conn,
    server: &mut ServerConn,
    ctx: &SessionCtx,
    pump: &mut Pump,
    route: Route,
    warm: Option<Warm>,
    snapshot: &Snapshot,
    mut to_client: BytesMut,
) -> Result<(), MoveError> {
    let backend = shared.backend(route.target);
    let login = || async {
        server::connect(backend, &shared.login, &ctx.params, &ctx.credential)
            .await
            .map_err(|e| MoveError::Login {
                target: backend.name,
                reason: e.to_string(),
            })
    };
    let fresh = warm.is_none();
    let (mut new, mut prepared) = match warm {
        Some(w) => (w.server, w.statements),
        None => (login().await?, Vec::new()),
    };
    let mut replayed = replay_within(&mut new.conn, snapshot, pump, &prepared).await;
    if replayed.is_err() && !fresh {
        // The standby may have died while it waited (idle timeout, restart): log in afresh once.
        (new, prepared) = (login().await?, Vec::new());
        replayed = replay_within(&mut new.conn, snapshot, pump, &prepared).await;
    }
    let dropped = match replayed {
        Ok(dropped) => dropped,
        Err(reason) => {
            build::terminate(&mut new.conn.wbuf);
            let _ = tokio::time::timeout(Duration::from_secs(1), new.conn.flush()).await;
            return Err(MoveError::Replay {
                target: backend.name,
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
    for (name, value) in &new.params {
        if server.params.iter().all(|(n, v)| n != name || v != value) {
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

/// Runs the snapshot query on the old server. Asynchronous messages that arrive
/// meanwhile (notifications, notices, parameter changes) are kept for the client.
async fn snapshot(conn: &mut Conn, to_client: &mut BytesMut) -> Result<Snapshot, String> {
    build::query(&mut conn.wbuf, SNAPSHOT_SQL);
    conn.flush().await.map_err(|e| e.to_string())?;
    let mut snap = Snapshot::default();
    loop {
        let f = conn.read_frame().await.map_err(|e: WireError| e.to_string())?;
        match f.tag {
            backend::DATA_ROW => {
                let row = backend::parse_data_row(&f.body).map_err(|e| e.to_string())?;
                let text = |i: usize| -> String {
                    row.get(i)
                        .copied()
                        .flatten()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let state = &mut snap.state;
                match (text(0).as_str(), text(1)) {
                    ("s", name) => state.settings.push((name, SettingReplay::Value(text(2)))),
                    ("p", name) => snap.protocol_statements.push(name),
                    ("q", name) => {
                        let statement = prepare_statement(&name, &text(2));
                        state.sql_prepares.push((name, statement));
                    }
                    ("l", channel) => state.channels.push(channel),
                    ("x", kind) => snap.pinned.push(match kind.as_str() {
                        "t" => "temporary tables",
                        "a" => "session advisory locks",
                        _ => "WITH HOLD cursors",
                    }),
                    _ => {}
                }
            }
            backend::ERROR_RESPONSE => {
                let fields = ErrorFields::new(&f.body);
                return Err(fields.message().unwrap_or("error").to_owned());
            }
            backend::READY_FOR_QUERY => return Ok(snap),
            backend::NOTIFICATION_RESPONSE | backend::NOTICE_RESPONSE | backend::PARAMETER_STATUS => {
                build::frame(to_client, f.tag, |b| b.put_slice(&f.body));
            }
            _ => {}
        }
    }
}

/// The PREPARE statement for `name` out of the query text the server kept, which
/// is the client's whole Query (it may hold other statements).
fn prepare_statement(name: &str, query: &str) -> String {
    sql::effects(query.as_bytes())
        .find_map(|e| match e {
            Effect::Prepare { name: n, statement } if n.normalized() == name => {
                Some(String::from_utf8_lossy(statement).into_owned())
            }
            _ => None,
        })
        .unwrap_or_else(|| query.to_owned())
}

/// [`replay`], bounded by [`STEP_TIMEOUT`].
async fn replay_within(
    conn: &mut Conn,
    snap: &Snapshot,
    pump: &Pump,
    prepared: &[(String, Bytes)],
) -> Result<Vec<String>, String> {
    tokio::time::timeout(STEP_TIMEOUT, replay(conn, snap, pump, prepared))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {STEP_TIMEOUT:?}")))
}

/// One replay step, and what happens if the server refuses it.
enum Step {
    /// Must succeed: its description.
    Required(String),
    /// A protocol statement from the log that may have failed on the old server
    /// too: dropped (by name) if it fails.
    Optional(String),
}

/// Recreates the snapshot on the new server in one round trip: one Query per
/// setting, PREPARE and LISTEN (each its own implicit transaction, so a failure
/// names itself), then the client's own Parse message for every statement the new
/// server does not hold yet (`prepared` ones are there already), each followed by
/// Sync; standby statements the session no longer has are closed. Returns the
/// optional statements that failed.
async fn replay(
    conn: &mut Conn,
    snap: &Snapshot,
    pump: &Pump,
    prepared: &[(String, Bytes)],
) -> Result<Vec<String>, String> {
    let mut steps: Vec<Step> = Vec::new();
    for (name, setting) in &snap.state.settings {
        match setting {
            SettingReplay::Statement(statement) => build::query(&mut conn.wbuf, statement),
            SettingReplay::Value(value) => build::query(
                &mut conn.wbuf,
                &format!(
                    "select pg_catalog.set_config({}, {}, false)",
                    quote_literal(name),
                    quote_literal(value)
                ),
            ),
        }
        steps.push(Step::Required(format!("setting {name}")));
    }
    for (name, statement) in &snap.state.sql_prepares {
        build::query(&mut conn.wbuf, statement);
        steps.push(Step::Required(format!("SQL prepared statement {name} ({statement})")));
    }
    for channel in &snap.state.channels {
        build::query(&mut conn.wbuf, &format!("LISTEN {}", quote_ident(channel)));
        steps.push(Step::Required(format!("LISTEN {channel}")));
    }
    let log = pump.state_log().statements();
    for (name, frame) in prepared {
        let still_same = snap.protocol_statements.contains(name) && log.parse_frame(name) == Some(frame);
        if !still_same {
            build::frame(&mut conn.wbuf, pgcutover_protocol::frontend::CLOSE, |b| {
                b.put_u8(b'S');
                b.put_slice(name.as_bytes());
                b.put_u8(0);
            });
            build::frame(&mut conn.wbuf, pgcutover_protocol::frontend::SYNC, |_| {});
            steps.push(Step::Required(format!("closing standby statement {name}")));
        }
    }
    for name in &snap.protocol_statements {
        let Some(frame) = log.parse_frame(name) else {
            warn!(statement = %name, "the server holds a prepared statement the proxy never saw prepared; not replayed");
            continue;
        };
        if prepared.iter().any(|(n, f)| n == name && f == frame) {
            continue;
        }
        conn.wbuf.extend_from_slice(frame);
        build::frame(&mut conn.wbuf, pgcutover_protocol::frontend::SYNC, |_| {});
        steps.push(if snap.from_log {
            Step::Optional(name.clone())
        } else {
            Step::Required(format!("prepared statement {name}"))
        });
    }
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    conn.flush().await.map_err(|e| e.to_string())?;
    let (mut failures, mut dropped) = (Vec::new(), Vec::new());
    let mut step = 0;
    while step < steps.len() {
        let f = conn.read_frame().await.map_err(|e| e.to_string())?;
        match f.tag {
            backend::ERROR_RESPONSE => match &steps[step] {
                Step::Required(what) => {
                    let fields = ErrorFields::new(&f.body);
                    failures.push(format!("{what}: {}", fields.message().unwrap_or("error")));
                }
                Step::Optional(name) => dropped.push(name.clone()),
            },
            backend::READY_FOR_QUERY => step += 1,
            _ => {}
        }
    }
    if failures.is_empty() {
        Ok(dropped)
    } else {
        Err(failures.join("; "))
    }
}
