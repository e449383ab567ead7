//! Recreating a session's state on its new server.

use super::snapshot::Snapshot;
use super::{within, StepError};
use crate::server::round_trip;
use crate::state_log::SettingReplay;
use crate::statements::StatementLog;
use crate::wire::Conn;
use bytes::{BufMut, Bytes, BytesMut};
use pgcutover_protocol::backend::{self, ErrorFields};
use pgcutover_protocol::quote::{quote_ident, quote_literal};
use pgcutover_protocol::{build, frontend};
use tracing::warn;

/// One replay step, and what happens if the server refuses it.
enum Step {
    /// Must succeed: its description.
    Required(String),
    /// A protocol statement from the log that may have failed on the old server
    /// too: dropped (by name) if it fails.
    Optional(String),
}

/// Recreates the snapshot on the new server in one round trip, bounded by the
/// step timeout: one Query per setting, PREPARE and LISTEN (each its own implicit
/// transaction, so a failure names itself), then the client's own Parse message
/// for every statement the new server does not hold yet (`prepared` ones are there
/// already), each followed by Sync; standby statements the session no longer has
/// are closed. Returns the optional statements that failed.
pub(super) async fn replay(
    conn: &mut Conn,
    snap: &Snapshot,
    log: &StatementLog,
    prepared: &[(String, Bytes)],
) -> Result<Vec<String>, StepError> {
    let mut steps = queue_state(&mut conn.wbuf, snap);
    steps.extend(queue_statements(&mut conn.wbuf, snap, log, prepared));
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    let (mut failures, mut dropped) = (Vec::new(), Vec::new());
    let read = round_trip(conn, steps.len(), |step, f| {
        if f.tag == backend::ERROR_RESPONSE {
            match &steps[step] {
                Step::Required(what) => {
                    let fields = ErrorFields::new(&f.body);
                    failures.push(format!("{what}: {}", fields.message().unwrap_or("error")));
                }
                Step::Optional(name) => dropped.push(name.clone()),
            }
        }
        Ok::<_, StepError>(())
    });
    within(read).await?;
    if failures.is_empty() {
        Ok(dropped)
    } else {
        Err(StepError::Refused(failures))
    }
}

/// Queues the settings, SQL PREPAREs and LISTENs.
fn queue_state(wbuf: &mut BytesMut, snap: &Snapshot) -> Vec<Step> {
    let mut steps = Vec::new();
    for (name, setting) in &snap.state.settings {
        match setting {
            SettingReplay::Statement(statement) => build::query(wbuf, statement),
            SettingReplay::Value(value) => build::query(
                wbuf,
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
        build::query(wbuf, statement);
        steps.push(Step::Required(format!("SQL prepared statement {name} ({statement})")));
    }
    for channel in &snap.state.channels {
        build::query(wbuf, &format!("LISTEN {}", quote_ident(channel)));
        steps.push(Step::Required(format!("LISTEN {channel}")));
    }
    steps
}

/// Queues the protocol statements: closes standby statements that are stale, and
/// prepares those the new server lacks.
fn queue_statements(
    wbuf: &mut BytesMut,
    snap: &Snapshot,
    log: &StatementLog,
    prepared: &[(String, Bytes)],
) -> Vec<Step> {
    let mut steps = Vec::new();
    for (name, frame) in prepared {
        let still_same = snap.protocol_statements.contains(name) && log.parse_frame(name) == Some(frame);
        if !still_same {
            build::frame(wbuf, frontend::CLOSE, |b| {
                b.put_u8(b'S');
                b.put_slice(name.as_bytes());
                b.put_u8(0);
            });
            build::frame(wbuf, frontend::SYNC, |_| {});
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
        wbuf.extend_from_slice(frame);
        build::frame(wbuf, frontend::SYNC, |_| {});
        steps.push(if snap.from_log {
            Step::Optional(name.clone())
        } else {
            Step::Required(format!("prepared statement {name}"))
        });
    }
    steps
}
