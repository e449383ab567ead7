//! The SQL admin console: the virtual database `pgcutover` on the proxy's own port,
//! for the users in `admin_users`, as PgBouncer users expect:
//! `psql -h proxy -p 6432 -U admin pgcutover -c 'SHOW STATUS'`. Commands: SHOW STATUS,
//! SHOW CLIENTS, SHOW SERVERS, HOLD (hold and drain), RESUME, SHOW HELP.

use super::error::SessionError;
use super::{authenticate, goodbye};
use crate::control::{Call, Caller, Control};
use crate::wire::Conn;
use crate::Shared;
use bytes::BytesMut;
use pgcutover_config::AuthType;
use pgcutover_protocol::backend::TransactionStatus;
use pgcutover_protocol::build::{self, ProxyError, Severity};
use pgcutover_protocol::frontend;
use pgcutover_protocol::{CancelKey, CancelSecret, StartupMessage};
use std::net::SocketAddr;
use std::time::Duration;

/// The console's database name.
pub(super) const DATABASE: &str = "pgcutover";

const HELP: &str = "SHOW STATUS | SHOW CLIENTS | SHOW SERVERS | HOLD | RESUME | SHOW HELP";

/// Authenticates an admin user and answers console commands until they leave.
pub(super) async fn serve(
    shared: &Shared,
    client: &mut Conn,
    startup: &StartupMessage,
    login_timeout: Duration,
    peer: SocketAddr,
) {
    // The console holds and resumes every client: under auth_type = trust it still
    // takes a password, checked against the user's secret (md5 also accepts SCRAM
    // verifiers, asking for SCRAM then, as PostgreSQL does).
    let auth_type = match shared.config.auth.auth_type {
        AuthType::Trust => AuthType::Md5,
        other => other,
    };
    let login = authenticate(shared, client, startup, peer, auth_type);
    let user = match tokio::time::timeout(login_timeout, login).await {
        Err(_) => return goodbye(client, SessionError::LoginTimeout(login_timeout)).await,
        Ok(Err(e)) => return goodbye(client, e).await,
        Ok(Ok((user, _, _))) => user,
    };
    if !shared.config.proxy.admin_users.contains(&user) {
        return goodbye(client, SessionError::NotAdmin(user)).await;
    }
    build::authentication_ok(&mut client.wbuf);
    let version = format!("pgcutover {}", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        build::parameter_status(&mut client.wbuf, name, value);
    }
    // Nothing here can be cancelled.
    let nothing = CancelSecret::generate(super::opening::cancel_secret_len(startup), |_| ());
    build::backend_key_data(
        &mut client.wbuf,
        CancelKey {
            pid: 0,
            secret: nothing,
        },
    );
    build::ready_for_query(&mut client.wbuf, TransactionStatus::Idle);
    if client.flush().await.is_err() {
        return;
    }
    tracing::info!(%user, "admin console session");
    // After an extended-protocol message, everything up to Sync is skipped, as a server does after an error.
    let mut skipping = false;
    loop {
        let Ok(f) = client.read_frame().await else { return };
        match f.tag {
            frontend::QUERY => {
                let sql = frontend::parse_query(&f.body).unwrap_or_default();
                for command in sql.split(';').map(str::trim).filter(|c| !c.is_empty()) {
                    if !run(shared, command, &mut client.wbuf).await {
                        break;
                    }
                }
                if sql.trim().trim_matches(';').trim().is_empty() {
                    build::frame(&mut client.wbuf, b'I', |_| {}); // EmptyQueryResponse
                }
                build::ready_for_query(&mut client.wbuf, TransactionStatus::Idle);
            }
            frontend::TERMINATE => return,
            frontend::SYNC => {
                skipping = false;
                build::ready_for_query(&mut client.wbuf, TransactionStatus::Idle);
            }
            _ if !skipping => {
                skipping = true;
                error(
                    &mut client.wbuf,
                    "0A000",
                    "the pgcutover admin console speaks the simple query protocol only",
                    "use psql, or a driver's simple-query call",
                );
            }
            _ => {}
        }
        if client.flush().await.is_err() {
            return;
        }
    }
}

/// A console command, parsed from its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    ShowStatus,
    ShowClients,
    ShowServers,
    Hold,
    Resume,
    Help,
}

impl Command {
    fn parse(command: &str) -> Option<Command> {
        let upper = command.to_ascii_uppercase();
        let words: Vec<&str> = upper.split_whitespace().collect();
        Some(match words.as_slice() {
            ["SHOW", "STATUS"] => Command::ShowStatus,
            ["SHOW", "CLIENTS"] => Command::ShowClients,
            ["SHOW", "SERVERS"] => Command::ShowServers,
            ["HOLD"] => Command::Hold,
            ["RESUME"] => Command::Resume,
            ["SHOW", "HELP"] | ["HELP"] => Command::Help,
            _ => return None,
        })
    }
}

/// Runs one command; false when it failed (the rest of the query string is skipped).
async fn run(shared: &Shared, command: &str, out: &mut BytesMut) -> bool {
    let control = &shared.control;
    let command_parsed = Command::parse(command);
    let call = match command_parsed {
        Some(Command::Hold) => Some(Call::Hold),
        Some(Command::Resume) => Some(Call::Resume),
        _ => None,
    };
    if let Some(Err(e)) = call.map(|c| control.admit(Caller::Operator, c)) {
        // 55006 object_in_use: the proxy is in use by a switchover.
        error(
            out,
            "55006",
            &e.to_string(),
            "wait for the switchover to end; `pgcutover status` shows it",
        );
        return false;
    }
    match command_parsed {
        Some(Command::ShowStatus) => show_status(control, out),
        Some(Command::ShowClients) => show_clients(control, out),
        Some(Command::ShowServers) => show_servers(control, out),
        Some(Command::Hold) => {
            let r = control.hold_and_drain().await;
            rows(
                out,
                &["held", "drained", "in_flight", "sessions", "drain_ms"],
                &[vec![
                    Some("true".to_owned()),
                    Some(r.drained.to_string()),
                    Some(r.in_flight.to_string()),
                    Some(r.sessions.to_string()),
                    Some(format!("{:.1}", r.waited.as_secs_f64() * 1000.0)),
                ]],
            );
        }
        Some(Command::Resume) => {
            let held_ms = control.resume().map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0));
            let route = Some(control.route().target.name().to_owned());
            rows(
                out,
                &["held", "route", "held_ms"],
                &[vec![Some("false".to_owned()), route, held_ms]],
            );
        }
        Some(Command::Help) => rows(out, &["command"], &[vec![Some(HELP.to_owned())]]),
        None => {
            error(
                out,
                "42601",
                &format!("unknown pgcutover admin command \"{command}\""),
                &format!("the console knows {HELP}"),
            );
            return false;
        }
    }
    true
}

/// `SHOW STATUS`: the same view as `GET /status`, so the two cannot disagree.
fn show_status(control: &Control, out: &mut BytesMut) {
    let s = control.status_reply();
    let phase = serde_json::to_value(s.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    let columns = [
        "route",
        "epoch",
        "phase",
        "held_ms",
        "clients",
        "in_flight",
        "held_clients",
        "blue_servers",
        "green_servers",
    ];
    let row = vec![
        Some(s.route.name().to_owned()),
        Some(s.epoch.to_string()),
        phase,
        s.held_ms.map(|ms| format!("{ms:.1}")),
        Some(s.clients.to_string()),
        Some(s.in_flight.to_string()),
        Some(s.held_clients.to_string()),
        Some(s.server_connections.blue.to_string()),
        Some(s.server_connections.green.to_string()),
    ];
    rows(out, &columns, &[row]);
}

/// `SHOW CLIENTS`: one row per session.
fn show_clients(control: &Control, out: &mut BytesMut) {
    let list: Vec<Vec<Option<String>>> = control
        .sessions()
        .handles()
        .iter()
        .map(|h| {
            let status = h.status();
            let state = if status.in_transaction() {
                "in_transaction"
            } else {
                "idle"
            };
            vec![
                Some(h.identity.user.clone()),
                Some(h.identity.database.clone()),
                Some(h.identity.peer.to_string()),
                Some(state.to_owned()),
                Some(status.side.name().to_owned()),
            ]
        })
        .collect();
    rows(out, &["user", "database", "address", "state", "target"], &list);
}

/// `SHOW SERVERS`: one row per session's server connection.
fn show_servers(control: &Control, out: &mut BytesMut) {
    let list: Vec<Vec<Option<String>>> = control
        .sessions()
        .handles()
        .iter()
        .map(|h| {
            // One read per row: target, address, pid and epoch belong together.
            let status = h.status();
            let (addr, key) = status.server;
            vec![
                Some(status.side.name().to_owned()),
                Some(addr.to_string()),
                Some(key.pid.to_string()),
                Some(h.identity.user.clone()),
                Some(h.identity.database.clone()),
                Some(status.epoch.to_string()),
            ]
        })
        .collect();
    let columns = ["target", "address", "pid", "user", "database", "route_epoch"];
    rows(out, &columns, &list);
}

fn rows(out: &mut BytesMut, columns: &[&str], rows: &[Vec<Option<String>>]) {
    build::row_description(out, columns);
    for row in rows {
        let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
        build::data_row(out, &values);
    }
    build::command_complete(out, "SHOW");
}

fn error(out: &mut BytesMut, code: &str, message: &str, hint: &str) {
    build::error_response(
        out,
        &ProxyError {
            severity: Severity::Error,
            code,
            message,
            detail: None,
            hint: Some(hint),
        },
    );
}
