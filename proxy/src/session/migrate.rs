//! Moving a session's server side to another database at a transaction boundary:
//! read the session's state from the old server, refuse if it cannot move, log into
//! the new target as the same user with the same startup parameters, replay the
//! state there, and swap. The client sees a delay, at most a ParameterStatus or two.

use super::SessionCtx;
use crate::pump::{PidRewrite, Pump};
use crate::route::Route;
use crate::server::{self, ServerConn};
use crate::wire::{Conn, WireError};
use crate::Shared;
use bytes::{BufMut, BytesMut};
use pgcutover_protocol::backend::{self, ErrorFields};
use pgcutover_protocol::build;
use std::time::Duration;
use tracing::{info, warn};

/// How long the old server gets to answer the state snapshot, and the new one the replay.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The state of one session as the old server reports it.
#[derive(Debug, Default)]
struct Snapshot {
    /// `SET` and `set_config(.., false)` values: (name, setting).
    settings: Vec<(String, String)>,
    /// Extended-protocol statements the server holds, by name.
    protocol_statements: Vec<String>,
    /// `PREPARE` statements' text.
    sql_prepares: Vec<String>,
    /// LISTEN channels.
    channels: Vec<String>,
    /// What keeps the session from moving, if anything.
    pinned: Vec<&'static str>,
}

const SNAPSHOT_SQL: &str = "select name, setting from pg_catalog.pg_settings where source = 'session';\
select name from pg_catalog.pg_prepared_statements where not from_sql;\
select statement from pg_catalog.pg_prepared_statements where from_sql;\
select pg_catalog.pg_listening_channels();\
select (select count(*) from pg_catalog.pg_class where relnamespace = pg_catalog.pg_my_temp_schema()),\
 (select count(*) from pg_catalog.pg_locks where locktype = 'advisory' and pid = pg_catalog.pg_backend_pid()),\
 (select count(*) from pg_catalog.pg_cursors where is_holdable)";

/// Moves the session to `route`'s target. On success the new server replaces `server`
/// (the old one is sent Terminate). On any error the session is still whole on the
/// old server, and the caller decides whether it stays there.
pub(crate) async fn move_to(
    shared: &Shared,
    client: &mut Conn,
    server: &mut ServerConn,
    ctx: &SessionCtx,
    pump: &mut Pump,
    route: Route,
    prepared: Option<ServerConn>,
) -> Result<(), MoveError> {
    let started = std::time::Instant::now();
    let old_target = ctx.registration.handle.target().name();
    // Whatever the old server sent that was not scanned yet (a notification arriving
    // right now) is read here, and reaches the client below either way.
    server.conn.rbuf = pump.take_server_buffer();
    let mut to_client = BytesMut::new();
    let moved = login_and_replay(shared, server, pump, ctx, route, prepared, &mut to_client).await;
    let (mut new, snapshot, timings) = match moved {
        Ok(m) => m,
        Err(e) => {
            pump.set_server_buffer(std::mem::take(&mut server.conn.rbuf));
            forward(client, &to_client).await;
            return Err(e);
        }
    };
    // Parameters that differ on the new server (server_version, ...) are reported the
    // way a server reports a change: an asynchronous ParameterStatus.
    for (name, value) in &new.params {
        if server.params.iter().all(|(n, v)| n != name || v != value) {
            build::parameter_status(&mut to_client, name, value);
        }
    }
    forward(client, &to_client).await;

    build::terminate(&mut server.conn.wbuf);
    let _ = tokio::time::timeout(Duration::from_secs(1), server.conn.flush()).await;
    ctx.registration
        .handle
        .set_server(new.addr, new.key, route.target, route.epoch);
    pump.set_server_buffer(std::mem::take(&mut new.conn.rbuf));
    pump.set_pid_rewrite((new.key.pid != ctx.client_pid).then_some(PidRewrite {
        server_pid: new.key.pid,
        client_pid: ctx.client_pid,
    }));
    let m = &shared.metrics;
    m.replayed("setting", snapshot.settings.len());
    m.replayed("prepared_statement", snapshot.protocol_statements.len());
    m.replayed("sql_prepare", snapshot.sql_prepares.len());
    m.replayed("listen", snapshot.channels.len());
    info!(
        from = old_target,
        to = route.target.name(),
        server_pid = new.key.pid,
        settings = snapshot.settings.len(),
        statements = snapshot.protocol_statements.len() + snapshot.sql_prepares.len(),
        channels = snapshot.channels.len(),
        ms = started.elapsed().as_millis() as u64,
        snapshot_ms = timings.snapshot.as_millis() as u64,
        login_ms = timings.login.as_millis() as u64,
        replay_ms = timings.replay.as_millis() as u64,
        "session moved"
    );
    *server = new;
    Ok(())
}

/// Where a move's time went.
struct Timings {
    snapshot: Duration,
    login: Duration,
    replay: Duration,
}

/// Snapshot on the old server, refusal if pinned, login and replay on the new one.
async fn login_and_replay(
    shared: &Shared,
    server: &mut ServerConn,
    pump: &Pump,
    ctx: &SessionCtx,
    route: Route,
    prepared: Option<ServerConn>,
    to_client: &mut BytesMut,
) -> Result<(ServerConn, Snapshot, Timings), MoveError> {
    let old_target = ctx.registration.handle.target().name();
    let t0 = std::time::Instant::now();
    let backend = shared.backend(route.target);
    let snapshot = match tokio::time::timeout(STEP_TIMEOUT, snapshot(&mut server.conn, to_client)).await {
        Ok(Ok(s)) => s,
        Ok(Err(reason)) => {
            return Err(MoveError::Snapshot {
                target: old_target,
                reason,
            })
        }
        Err(_) => {
            return Err(MoveError::Snapshot {
                target: old_target,
                reason: format!("no answer within {STEP_TIMEOUT:?}"),
            })
        }
    };
    if !snapshot.pinned.is_empty() {
        for reason in &snapshot.pinned {
            shared.metrics.pinned(reason);
        }
        return Err(MoveError::Pinned(snapshot.pinned.join(", ")));
    }
    let t1 = std::time::Instant::now();
    let login = || async {
        server::connect(backend, &shared.login, &ctx.params, &ctx.credential)
            .await
            .map_err(|e| MoveError::Login {
                target: backend.name,
                reason: e.to_string(),
            })
    };
    let used_standby = prepared.is_some();
    let mut new = match prepared {
        Some(standby) => standby,
        None => login().await?,
    };
    let t2 = std::time::Instant::now();
    let mut replayed = replay_within(&mut new.conn, &snapshot, pump).await;
    if replayed.is_err() && used_standby {
        // The standby may have died while it waited (idle timeout, restart): log in afresh once.
        new = login().await?;
        replayed = replay_within(&mut new.conn, &snapshot, pump).await;
    }
    if let Err(reason) = replayed {
        build::terminate(&mut new.conn.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(1), new.conn.flush()).await;
        return Err(MoveError::Replay {
            target: backend.name,
            reason,
        });
    }
    let timings = Timings {
        snapshot: t1 - t0,
        login: t2 - t1,
        replay: t2.elapsed(),
    };
    Ok((new, snapshot, timings))
}

async fn forward(client: &mut Conn, bytes: &[u8]) {
    if !bytes.is_empty() {
        client.wbuf.extend_from_slice(bytes);
        // A client that is not reading gets its messages when it does; a failed write
        // shows up as a client error in the pump right after.
        let _ = client.flush().await;
    }
}

/// Runs the snapshot queries on the old server. Asynchronous messages that arrive
/// meanwhile (notifications, notices, parameter changes) are kept for the client.
async fn snapshot(conn: &mut Conn, to_client: &mut BytesMut) -> Result<Snapshot, String> {
    build::query(&mut conn.wbuf, SNAPSHOT_SQL);
    conn.flush().await.map_err(|e| e.to_string())?;
    let mut snap = Snapshot::default();
    let mut result_set = 0;
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
                match result_set {
                    0 => snap.settings.push((text(0), text(1))),
                    1 => snap.protocol_statements.push(text(0)),
                    2 => snap.sql_prepares.push(text(0)),
                    3 => snap.channels.push(text(0)),
                    _ => {
                        for (i, what) in ["temporary tables", "session advisory locks", "WITH HOLD cursors"]
                            .into_iter()
                            .enumerate()
                        {
                            if text(i) != "0" {
                                snap.pinned.push(what);
                            }
                        }
                    }
                }
            }
            backend::COMMAND_COMPLETE => result_set += 1,
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

/// [`replay`], bounded by [`STEP_TIMEOUT`].
async fn replay_within(conn: &mut Conn, snap: &Snapshot, pump: &Pump) -> Result<(), String> {
    tokio::time::timeout(STEP_TIMEOUT, replay(conn, snap, pump))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {STEP_TIMEOUT:?}")))
}

/// Recreates the snapshot on the new server in one round trip: one Query per setting,
/// PREPARE and LISTEN (each its own implicit transaction, so a failure names itself),
/// then the client's own Parse message for every statement the old server held,
/// each followed by Sync.
async fn replay(conn: &mut Conn, snap: &Snapshot, pump: &Pump) -> Result<(), String> {
    let mut steps: Vec<String> = Vec::new();
    for (name, setting) in &snap.settings {
        build::query(
            &mut conn.wbuf,
            &format!(
                "select pg_catalog.set_config({}, {}, false)",
                quote_literal(name),
                quote_literal(setting)
            ),
        );
        steps.push(format!("setting {name}"));
    }
    for statement in &snap.sql_prepares {
        build::query(&mut conn.wbuf, statement);
        steps.push(format!("SQL prepared statement ({statement})"));
    }
    for channel in &snap.channels {
        build::query(&mut conn.wbuf, &format!("LISTEN {}", quote_ident(channel)));
        steps.push(format!("LISTEN {channel}"));
    }
    for name in &snap.protocol_statements {
        let Some(frame) = pump.statements().parse_frame(name) else {
            warn!(statement = %name, "the server holds a prepared statement the proxy never saw prepared; not replayed");
            continue;
        };
        conn.wbuf.extend_from_slice(frame);
        build::frame(&mut conn.wbuf, pgcutover_protocol::frontend::SYNC, |_| {});
        steps.push(format!("prepared statement {name}"));
    }
    if steps.is_empty() {
        return Ok(());
    }
    conn.flush().await.map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    let mut step = 0;
    while step < steps.len() {
        let f = conn.read_frame().await.map_err(|e| e.to_string())?;
        match f.tag {
            backend::ERROR_RESPONSE => {
                let fields = ErrorFields::new(&f.body);
                failures.push(format!("{}: {}", steps[step], fields.message().unwrap_or("error")));
            }
            backend::READY_FOR_QUERY => step += 1,
            _ => {}
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// An escape-string literal: correct whatever `standard_conforming_strings` the session set.
fn quote_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_backslashes() {
        assert_eq!(quote_literal(r"a'b\c"), r"E'a''b\\c'");
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
    }
}
