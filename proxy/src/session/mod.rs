//! One client connection from accept to close: the startup phase, authentication,
//! the server login, then the pump, then a clean goodbye on both sides.

mod console;
mod error;
mod migrate;
mod opening;
pub(crate) mod refuse;
mod standby;

use crate::auth::{authenticate_client, AuthFailure, Secret, ServerCredential};
use crate::pool::PoolKey;
use crate::pump::{Pump, PumpEnd, PumpError, RunMode};
use crate::registry::{Order, Registration};
use crate::route::Route;
use crate::server::{self, ServerConn};
use crate::wire::Conn;
use crate::{ClientSlot, Shared, ShutdownPhase};
use error::SessionError;
use opening::Opening;
use pgcutover_api::{Side, UnmovedSession};
use pgcutover_config::{AuthType, PinnedPolicy, TlsMode, UnreplicatedPolicy};
use pgcutover_protocol::backend::{ErrorFields, TransactionStatus};
use pgcutover_protocol::build;
use pgcutover_protocol::StartupMessage;
use standby::Standby;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

/// How long a client arriving during a hold waits for a backend on its way back
/// into the pool (its reset is a round trip) before it waits for the hold instead.
const HELD_LOGIN_WAIT: Duration = Duration::from_secs(1);

/// How long the proxy tries to deliver its own last words to a client that may not be reading.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest message accepted from a client before it has authenticated (PostgreSQL's
/// own cap on authentication messages): an anonymous peer must not make the proxy
/// reserve `max_message_bytes` with a 5-byte header.
const LOGIN_MAX_MESSAGE_LEN: usize = 65_536;

/// Serves one accepted connection until it closes.
pub(crate) async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<ShutdownPhase>,
    slot: ClientSlot,
) {
    let span = tracing::info_span!("session", %peer, user = tracing::field::Empty, db = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let mut client = Conn::new(
            crate::stream::Stream::Plain(tcp),
            LOGIN_MAX_MESSAGE_LEN.min(shared.config.proxy.max_message_bytes),
        );
        // A session's task is as large as the largest state it can wait in. Idle
        // sessions wait in serve, so the login before it and the goodbye after it,
        // several KiB of state between them, live in boxes that exist only while
        // they run.
        let Some((mut server, ctx)) = Box::pin(start(&shared, &mut client, peer)).await else {
            return;
        };
        info!(server_pid = server.key.pid, server_version = %server.server_version(), tls = client.stream.is_tls(), target = ctx.registration.handle.target().name(), "session started");
        let (end, reusable) = serve(&shared, &mut client, &mut server, &ctx, shutdown).await;
        let status = ctx.registration.handle.status();
        let pooled = reusable.then(|| {
            let route = Route {
                target: ctx.registration.handle.target(),
                epoch: status.epoch,
            };
            shared.pool.returning(PoolKey::new(route, &ctx.params))
        });
        Box::pin(finish(&shared, &mut client, &mut server, &ctx, end, pooled.is_none())).await;
        if let Some(returning) = pooled {
            // The client is gone: its place in the max_client_conn count (held from
            // accept, else until the end of this block) and its session go now.
            drop((ctx, slot, client));
            Box::pin(shared.pool.give_back(returning, server)).await;
        }
    }
    .instrument(span)
    .await
}

/// Everything before the data phase: the startup packet (or a cancel request, or
/// the admin console), the client's authentication and the server login. Returns
/// the session's server connection and context, or nothing when the connection
/// ended here (the client was told why).
async fn start(shared: &Arc<Shared>, client: &mut Conn, peer: SocketAddr) -> Option<(ServerConn, SessionCtx)> {
    match admit(shared, client, peer).await {
        Ok(session) => session,
        Err(e) => {
            goodbye(client, e).await;
            None
        }
    }
}

/// [`start`]'s steps; `Ok(None)` for a connection served without a session
/// (a cancel request, the console).
async fn admit(
    shared: &Arc<Shared>,
    client: &mut Conn,
    peer: SocketAddr,
) -> Result<Option<(ServerConn, SessionCtx)>, SessionError> {
    let login_timeout = shared.config.proxy.client_login_timeout.0;
    // One deadline for the client's whole login: startup packet and authentication.
    let login_deadline = tokio::time::Instant::now() + login_timeout;
    let opened = tokio::time::timeout_at(login_deadline, opening::open(shared, client))
        .await
        // No complete startup packet in time: PostgreSQL closes such a connection
        // without a reply (its startup-packet timeout exits silently).
        .map_err(|_| SessionError::Unanswered(format!("no startup packet within {login_timeout:?}")))??;
    let startup = match opened {
        Opening::Cancel(key) => {
            match shared.registry.cancel(key, peer.ip()).await {
                Ok(outcome) => debug!(?outcome, pid = key.pid, "cancel request"),
                Err(e) => warn!(pid = key.pid, "could not forward cancel request: {e}"),
            }
            return Ok(None);
        }
        Opening::Startup(m) => m,
    };
    let user = startup.param("user").unwrap_or_default().to_owned();
    tracing::Span::current().record("user", user.as_str());
    tracing::Span::current().record("db", startup.param("database").unwrap_or(&user));

    if startup.param("database") == Some(console::DATABASE) {
        console::serve(shared, client, &startup, login_timeout, peer).await;
        return Ok(None);
    }
    // Only the client's own part is bounded by its login timeout: the wait for a
    // held gate is bounded by the hold, and the server login by server_connect_timeout.
    let who = tokio::time::timeout_at(
        login_deadline,
        authenticate(shared, client, &startup, peer, shared.config.auth.auth_type),
    )
    .await
    .map_err(|_| SessionError::LoginTimeout(login_timeout))??;
    login(shared, client, &startup, who, peer).await.map(Some)
}

/// The checks every client passes, then its password exchange with the proxy:
/// returns its user, its database and what the proxy may log into servers with.
async fn authenticate(
    shared: &Shared,
    client: &mut Conn,
    startup: &StartupMessage,
    peer: SocketAddr,
    auth_type: AuthType,
) -> Result<(String, String, ServerCredential), SessionError> {
    let cfg = &shared.config;
    if cfg.proxy.tls_mode == TlsMode::Require && !client.stream.is_tls() {
        return Err(SessionError::TlsRequired);
    }
    let user = startup
        .param("user")
        .filter(|u| !u.is_empty())
        .ok_or(SessionError::NoUser)?;
    if let Some(mode) = startup.param("replication").filter(|m| !is_off(m)) {
        // A WAL stream never reaches a transaction boundary: it would stall every
        // drain, and it cannot move between servers.
        return Err(SessionError::Replication(mode.to_owned()));
    }
    let database = startup.param("database").filter(|d| !d.is_empty()).unwrap_or(user);
    opening::negotiate_protocol_version(client, startup);

    let secret = lookup_secret(shared, user, peer).await?;
    let credential = match (&secret, auth_type) {
        (Some(secret), auth_type) => match authenticate_client(client, user, auth_type, secret).await {
            Ok(c) => c,
            Err(e) => {
                if matches!(e, AuthFailure::WrongPassword(_)) {
                    if let Some(q) = &shared.auth_query {
                        q.invalidate(user);
                    }
                }
                return Err(SessionError::Auth(e));
            }
        },
        (None, AuthType::Trust) => ServerCredential::None,
        // As PostgreSQL does: an unknown user goes through a real-looking exchange
        // and fails like a wrong password, so names cannot be probed.
        (None, auth_type) => {
            let _ = authenticate_client(client, user, auth_type, &Secret::mock(user)).await;
            return Err(SessionError::UnknownUser(user.to_owned()));
        }
    };
    Ok((user.to_owned(), database.to_owned(), credential))
}

/// What a session needs to log in again elsewhere, and its place in the registry.
pub(crate) struct SessionCtx {
    /// The client's startup parameters (database filled in).
    params: Vec<(String, String)>,
    /// What the client's authentication lets the proxy log in with.
    credential: ServerCredential,
    /// The session's entry in the registry.
    registration: Registration,
    /// The backend pid the client was given.
    client_pid: i32,
}

/// What the data phase works on: the session's two connections and its pump.
pub(crate) struct Live<'a> {
    shared: &'a Shared,
    ctx: &'a SessionCtx,
    client: &'a mut Conn,
    server: &'a mut ServerConn,
    pump: Pump,
}

/// For an authenticated client, waits out a hold, logs into the routed server,
/// and sends the client the rest of its startup: AuthenticationOk, the server's
/// parameters, our BackendKeyData and ReadyForQuery.
async fn login(
    shared: &Shared,
    client: &mut Conn,
    startup: &StartupMessage,
    (user, database, credential): (String, String, ServerCredential),
    peer: SocketAddr,
) -> Result<(ServerConn, SessionCtx), SessionError> {
    let (user, database) = (user.as_str(), database.as_str());
    let mut params: Vec<(String, String)> = startup.params.clone();
    if startup.param("database").is_none() {
        params.push(("database".into(), database.to_owned()));
    }
    // A client arriving during a hold gets in at once on an idle pooled backend: its
    // login starts no transaction (the pump holds its first), and a client that
    // connects synchronously may hold another transaction open that the drain waits
    // for (pgbench -C does, one thread per several clients). Without one it waits
    // here, before its server login, so it logs in where the route points once the
    // hold ends; a flip moves it like any idle session.
    let cutover = shared.control.cutover();
    let held_login = match cutover.gate.is_held() {
        true => {
            let key = PoolKey::new(cutover.route, &params);
            let pooled = shared.pool.take_or_await(&key, HELD_LOGIN_WAIT).await;
            pooled.map(|server| (key, server))
        }
        false => None,
    };
    let (key, pooled) = match held_login {
        Some((key, server)) => (key, Some(server)),
        None => {
            shared.control.wait_open().await;
            let key = PoolKey::new(shared.control.route(), &params);
            let pooled = shared.pool.take(&key);
            (key, pooled)
        }
    };
    let route = key.route();
    let server = match pooled {
        Some(pooled) => pooled,
        None => {
            let backend = shared.backend(route.target);
            let opened = server::connect(backend, &shared.login, &params, &credential)
                .await
                .map_err(SessionError::Server)?;
            shared.metrics.pool_login("opened");
            opened
        }
    };
    // The login worked: min_pool_size may open more like it.
    shared.pool.remember(&key, &credential);
    let identity = crate::registry::SessionIdentity {
        user: user.to_owned(),
        database: database.to_owned(),
        peer,
    };
    let secret_len = opening::cancel_secret_len(startup);
    let registration = shared.registry.register(
        (server.addr, server.key),
        route.target,
        route.epoch,
        identity,
        secret_len,
    );
    build::authentication_ok(&mut client.wbuf);
    client.wbuf.extend_from_slice(&server.login_messages);
    build::backend_key_data(&mut client.wbuf, registration.client_key);
    build::ready_for_query(&mut client.wbuf, TransactionStatus::Idle);
    client
        .flush()
        .await
        .map_err(|e| SessionError::ClientGone(e.to_string()))?;
    let ctx = SessionCtx {
        params,
        credential,
        client_pid: server.key.pid,
        registration,
    };
    Ok((server, ctx))
}

/// The user's secret: auth_file first, then auth_query on the active server.
async fn lookup_secret(shared: &Shared, user: &str, peer: SocketAddr) -> Result<Option<Secret>, SessionError> {
    if let Some(s) = shared.userlist.as_ref().and_then(|u| u.get(user)) {
        return Ok(Some(s.clone()));
    }
    match &shared.auth_query {
        Some(q) => q
            .lookup(
                shared.backend(shared.control.route().target),
                &shared.login,
                user,
                peer.ip(),
            )
            .await
            .map_err(SessionError::AuthQuery),
        None => Ok(None),
    }
}

/// How the session's data phase ended.
enum DataEnd {
    Pump(Result<PumpEnd, PumpError>),
    /// The server closed after sending its own ErrorResponse, already forwarded.
    ServerClosedWithError,
    /// The session holds state that cannot move, and pinned_policy is close.
    Pinned(String),
    /// Its transaction outlived the drain under drain_policy = cancel.
    DrainCancelled,
    /// Its move to this target failed: it must not stay on the old, fenced server.
    MoveFailed(Side, String),
    /// Its database is not replicated, and unreplicated_sessions is close.
    Unreplicated(String),
    ShutdownForced,
}

/// The data phase: pump, and at transaction boundaries obey the hold gate, move to
/// the routed target when the route changed, and close on shutdown. Also says
/// whether the server connection may serve another client (its client left while
/// it stood where a fresh login leaves one); its read buffer is then back in it.
async fn serve(
    shared: &Arc<Shared>,
    client: &mut Conn,
    server: &mut ServerConn,
    ctx: &SessionCtx,
    mut shutdown: watch::Receiver<ShutdownPhase>,
) -> (DataEnd, bool) {
    let pump = Pump::new(
        std::mem::take(&mut client.rbuf),
        std::mem::take(&mut server.conn.rbuf),
        shared.config.proxy.max_message_bytes,
        ctx.registration.handle.clone(),
        shared.metrics.clone(),
    );
    // The login's write buffers sit unused from here on: an idle session keeps none.
    client.release_buffers();
    server.conn.release_buffers();
    let mut live = Live {
        shared,
        ctx,
        client,
        server,
        pump,
    };
    let mut cutover_rx = shared.control.watch();
    let handle = &ctx.registration.handle;
    let mut orders = handle.orders();
    let mut standby = Standby::None;
    // Set when the server connection ended: the session may live on elsewhere.
    let mut lost: Option<Result<PumpEnd, PumpError>> = None;
    let end = loop {
        if let Some(r) = lost.take() {
            // Boxed, as every rare state here: see run.
            match Box::pin(server_lost(&mut live)).await {
                Ok(()) => continue,
                Err(()) => break DataEnd::Pump(r),
            }
        }
        let cutover = *cutover_rx.borrow_and_update();
        standby.sync(
            shared,
            ctx,
            &live.pump,
            cutover.standby.filter(|t| *t != handle.target()),
        );
        let phase = *shutdown.borrow_and_update();
        if phase == ShutdownPhase::Forced {
            break DataEnd::ShutdownForced;
        }
        let (route, held) = (cutover.route, cutover.gate.is_held());
        let must_move = {
            // Scoped: what lives across the select below is in every idle session's task.
            let status = handle.status();
            route.epoch != status.epoch && Some(route.epoch) != status.declined
        };
        if must_move && live.pump.at_boundary() && phase == ShutdownPhase::Running {
            let prepared = standby.take_for(route.target, handle);
            match Box::pin(move_session(&mut live, route, prepared)).await {
                Some(end) => break end,
                None => continue,
            }
        }
        let mode = RunMode {
            hold: held || must_move,
            stop_at_boundary: must_move || phase == ShutdownPhase::Draining,
        };
        tokio::select! {
            r = live.pump.run(&mut live.client.stream, &mut live.server.conn.stream, mode) => match r {
                Ok(PumpEnd::AtBoundary) if phase == ShutdownPhase::Draining => break DataEnd::Pump(r),
                // At a boundary with a move pending: the loop moves the session.
                Ok(PumpEnd::AtBoundary) => continue,
                lost_server @ (Ok(PumpEnd::ServerClosed) | Err(PumpError::ServerIo(_))) => lost = Some(lost_server),
                other => break DataEnd::Pump(other),
            },
            _ = cutover_rx.changed() => {}
            Ok(()) = orders.changed() => {
                if *orders.borrow_and_update() == Order::EndTransaction && !live.pump.tx().idle() {
                    break DataEnd::DrainCancelled;
                }
            }
            login = standby.login() => standby.settle(login, handle),
            changed = shutdown.changed() => {
                if changed.is_err() {
                    // The listener is gone without saying why: treat as a forced shutdown.
                    break DataEnd::ShutdownForced;
                }
            }
        }
    };
    let end = last_words(live.client, &live.pump, end);
    let client_left = matches!(
        end,
        DataEnd::Pump(Ok(PumpEnd::ClientTerminated | PumpEnd::ClientClosed))
            | DataEnd::Pump(Err(PumpError::ClientIo(_)))
    );
    let reusable = client_left && shared.pool.enabled() && live.pump.server_reusable();
    if reusable {
        live.server.conn.rbuf = live.pump.take_server_buffer();
        live.server.conn.rbuf.clear();
    }
    (end, reusable)
}

/// Moves the session at a flip; returns how it ends if it must close instead. A
/// session whose state cannot move closes or stays as `pinned_policy` says; one
/// whose move failed (green refused its login, its state did not replay) closes
/// with a FATAL naming why: staying would leave it on the old, fenced server. Either
/// way the flip's report names it.
async fn move_session(live: &mut Live<'_>, route: Route, prepared: Option<migrate::Warm>) -> Option<DataEnd> {
    let (shared, handle) = (live.shared, &live.ctx.registration.handle);
    let database = &handle.identity.database;
    let unreplicated = shared.config.switchover.unreplicated_sessions == UnreplicatedPolicy::Close
        && !shared.config.replication.databases.contains(database);
    let (end, by_policy) = if unreplicated {
        (Some(DataEnd::Unreplicated(database.clone())), true)
    } else {
        match migrate::move_to(live, route, prepared).await {
            Ok(()) => return None,
            Err(migrate::MoveError::Pinned(reason)) => match shared.config.switchover.pinned_policy {
                PinnedPolicy::Close => (Some(DataEnd::Pinned(reason)), true),
                PinnedPolicy::Wait => (None, true),
            },
            // The old server went away under the hold (AWS's switchover ends every
            // connection on blue): the session's own log recreates it instead.
            Err(migrate::MoveError::Snapshot {
                reason: migrate::StepError::Wire(lost),
                ..
            }) => {
                info!("server connection lost at the flip ({lost}); recreating the session from its log");
                match server_lost(live).await {
                    Ok(()) => return None,
                    Err(()) => (
                        Some(DataEnd::MoveFailed(
                            route.target,
                            format!(
                                "the old server connection was lost ({lost}) and the session could not be recreated"
                            ),
                        )),
                        false,
                    ),
                }
            }
            Err(other) => (Some(DataEnd::MoveFailed(route.target, other.to_string())), false),
        }
    };
    let from = handle.target();
    let reason = match &end {
        Some(DataEnd::Pinned(r)) => format!("holds {r}, which cannot move (pinned_policy = close)"),
        Some(DataEnd::MoveFailed(_, m)) => m.clone(),
        Some(DataEnd::Unreplicated(db)) => {
            format!("database {db} is not replicated; closed (unreplicated_sessions = close)")
        }
        _ => "holds state that cannot move (pinned_policy = wait): it stays until it ends".to_owned(),
    };
    warn!(
        target = route.target.name(),
        "session does not move from {}: {reason}",
        from.name()
    );
    let identity = &handle.identity;
    shared.control.note_unmoved(
        route.epoch,
        UnmovedSession {
            proxy: String::new(),
            user: identity.user.clone(),
            database: identity.database.clone(),
            client: identity.peer.to_string(),
            server_pid: handle.status().server.1.pid,
            reason,
            stayed: end.is_none(),
            by_policy,
        },
    );
    if end.is_none() {
        handle.decline(route.epoch);
    }
    end
}

/// Refines how the data phase ended by what the client may still be told.
fn last_words(client: &mut Conn, pump: &Pump, end: DataEnd) -> DataEnd {
    if let Some(farewell) = pump.server_farewell() {
        // The FATAL the server sent before it went away, held back for a reconnect
        // that did not happen: the client gets it as it would directly.
        client.wbuf.extend_from_slice(farewell);
        return DataEnd::ServerClosedWithError;
    }
    if matches!(end, DataEnd::Pump(Ok(PumpEnd::ServerClosed))) && pump.server_said_error_last() {
        return DataEnd::ServerClosedWithError;
    }
    if matches!(end, DataEnd::ShutdownForced | DataEnd::DrainCancelled) && !pump.client_at_message_boundary() {
        // Mid-message: an error of ours would corrupt the stream; just close.
        client.wbuf.clear();
        return DataEnd::Pump(Err(PumpError::ClientIo(std::io::ErrorKind::Interrupted.into())));
    }
    end
}

/// The server connection ended. If the session was idle and its state log knows
/// everything it set up, it is recreated on the active target and the client
/// notices nothing; otherwise (inside a transaction, or state the log could not
/// follow) the client gets the error, as with a direct connection.
async fn server_lost(live: &mut Live<'_>) -> Result<(), ()> {
    let (shared, pump) = (live.shared, &live.pump);
    if !pump.at_boundary() {
        return Err(());
    }
    if let Some(why) = pump.state_log().opaque() {
        info!("server connection lost while idle; not reconnecting: the session's state is not fully known ({why})");
        shared.metrics.server_reconnect("not_attempted");
        return Err(());
    }
    // A FATAL the server sent on its way out decides: "administrator command"
    // (57P01) may be a restart or this backend alone being terminated; a crash
    // (57P02) or no farewell at all (a reset) is the server's, so reconnect; any
    // other (an idle-session timeout, a dropped database) ends the session, as it
    // would directly.
    let farewell = pump
        .server_farewell()
        .map(|f| ErrorFields::new(f.get(5..).unwrap_or_default()));
    // Under a hold, a switchover may be what ended the connection (AWS's managed
    // switchover ends every connection on blue), and the route may be about to
    // change: the session waits for the route to move or the hold to end, and a
    // termination then is never taken for one aimed at this backend.
    let held = wait_out_hold(shared, live.ctx.registration.handle.status().epoch).await;
    let administrator_command = match farewell.as_ref().and_then(|f| f.code()) {
        None | Some("57P02") => false,
        Some("57P01") => !held,
        Some(code) => {
            info!(
                sqlstate = code,
                "server connection lost while idle; not reconnecting: the server ended the session"
            );
            shared.metrics.server_reconnect("not_attempted");
            return Err(());
        }
    };
    match migrate::reconnect(live, administrator_command).await {
        Ok(()) => {
            shared.metrics.server_reconnect("reconnected");
            Ok(())
        }
        Err(e @ migrate::MoveError::Terminated { .. }) => {
            info!("server connection lost while idle; not reconnecting: {e}");
            shared.metrics.server_reconnect("terminated");
            Err(())
        }
        Err(e) => {
            warn!("server connection lost while idle; reconnecting failed: {e}");
            shared.metrics.server_reconnect("failed");
            Err(())
        }
    }
}

/// While the proxy is held, waits until the route moves past `epoch` (the
/// session's server's) or the hold ends, at most the hold limit. Whether it was held.
async fn wait_out_hold(shared: &Shared, epoch: u64) -> bool {
    let mut cutover = shared.control.watch();
    if !cutover.borrow().gate.is_held() {
        return false;
    }
    let limit = shared.config.switchover.timeout.0;
    let moved_or_released = cutover.wait_for(|c| !c.gate.is_held() || c.route.epoch != epoch);
    let _ = tokio::time::timeout(limit, moved_or_released).await;
    true
}

/// Ends the session: the client's last words, and the server's Terminate unless
/// its connection is to be pooled (`tell_server` false).
async fn finish(
    shared: &Shared,
    client: &mut Conn,
    server: &mut ServerConn,
    ctx: &SessionCtx,
    end: DataEnd,
    tell_server: bool,
) {
    let target = shared.backend(ctx.registration.handle.target()).side.name();
    let (client_error, server_there) = match &end {
        // The client's Terminate was held back: the server hears it from here.
        DataEnd::Pump(Ok(PumpEnd::ClientTerminated)) => (None, true),
        DataEnd::ServerClosedWithError => (None, false),
        DataEnd::Pump(Ok(PumpEnd::ClientClosed)) => (None, true),
        DataEnd::Pump(Ok(PumpEnd::ServerClosed)) => (Some(SessionError::ServerClosed(target)), false),
        DataEnd::Pinned(reason) => (Some(SessionError::Pinned(reason.clone())), true),
        DataEnd::DrainCancelled => (Some(SessionError::DrainCancelled), true),
        DataEnd::MoveFailed(to, reason) => (Some(SessionError::MoveFailed(to.name(), reason.clone())), true),
        DataEnd::Unreplicated(database) => (Some(SessionError::Unreplicated(database.clone())), true),
        DataEnd::Pump(Ok(PumpEnd::AtBoundary)) | DataEnd::ShutdownForced => (Some(SessionError::Shutdown), true),
        DataEnd::Pump(Err(PumpError::ClientProtocol(e))) => (Some(SessionError::ClientProtocol(e.to_string())), true),
        DataEnd::Pump(Err(PumpError::ClientIo(_))) => (None, true),
        DataEnd::Pump(Err(e @ (PumpError::ServerIo(_) | PumpError::ServerProtocol(_)))) => {
            (Some(SessionError::ServerFailed(target, e.to_string())), false)
        }
    };
    match &end {
        DataEnd::Pump(Ok(e)) => info!(end = ?e, "session ended"),
        DataEnd::Pump(Err(e)) => info!("session ended: {e}"),
        DataEnd::ServerClosedWithError => info!("session ended: the server closed it with an error"),
        DataEnd::Pinned(reason) => info!("session closed for the switchover: it holds {reason}"),
        DataEnd::MoveFailed(to, reason) => warn!("session closed: it could not move to {}: {reason}", to.name()),
        DataEnd::Unreplicated(database) => {
            info!("session closed for the switchover: database {database:?} is not replicated")
        }
        DataEnd::DrainCancelled => {
            warn!("session closed: its transaction was still open after the drain (drain_policy = cancel)")
        }
        DataEnd::ShutdownForced => info!("session closed by shutdown"),
    }
    if tell_server && server_there {
        build::terminate(&mut server.conn.wbuf);
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, server.conn.flush()).await;
    }
    match client_error {
        Some(e) => goodbye(client, e).await,
        // The server's own FATAL, held back for a reconnect that did not happen.
        None if !client.wbuf.is_empty() => {
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, client.flush()).await;
        }
        None => {}
    }
}

/// Sends a FATAL (or the server's own ErrorResponse) and lets the connection close.
async fn goodbye(client: &mut Conn, error: SessionError) {
    error.log();
    error.write_to(&mut client.wbuf);
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, client.flush()).await;
}

/// A boolean startup value PostgreSQL reads as off (`replication=false` is an
/// ordinary session).
fn is_off(value: &str) -> bool {
    ["false", "off", "no", "0"]
        .iter()
        .any(|v| value.eq_ignore_ascii_case(v))
}
