//! A session's state: read from its old server at a flip, or taken from its own
//! log after the old server is gone.

use super::StepError;
use crate::server::round_trip;
use crate::state_log::{SessionState, SettingReplay, StateLog};
use crate::wire::Conn;
use bytes::{BufMut, BytesMut};
use pgcutover_protocol::backend::{self, ErrorFields};
use pgcutover_protocol::build;
use pgcutover_protocol::sql::{self, Effect};

/// A session's state, read from its old server or taken from its own log.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// Settings, SQL PREPAREs, LISTEN channels.
    pub(super) state: SessionState,
    /// Extended-protocol statements, by name.
    pub(super) protocol_statements: Vec<String>,
    /// What keeps the session from moving, if anything.
    pub(super) pinned: Vec<&'static str>,
    /// Taken from the log: a logged Parse may have failed on the old server, so one
    /// that fails again on replay is dropped instead of failing the move.
    pub(super) from_log: bool,
}

impl Snapshot {
    /// The state as the session's own log knows it (the log must not be opaque).
    pub(super) fn from_log(log: &StateLog) -> Snapshot {
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

/// Runs the snapshot query on the old server. Asynchronous messages that arrive
/// meanwhile (notifications, notices, parameter changes) are kept for the client.
pub(super) async fn snapshot(conn: &mut Conn, to_client: &mut BytesMut) -> Result<Snapshot, StepError> {
    build::query(&mut conn.wbuf, SNAPSHOT_SQL);
    let mut snap = Snapshot::default();
    let mut refused = None;
    let read = round_trip(conn, 1, |_, f| {
        match f.tag {
            backend::DATA_ROW => add_row(&mut snap, &f.body)?,
            backend::ERROR_RESPONSE => {
                refused = Some(ErrorFields::new(&f.body).message().unwrap_or("error").to_owned());
            }
            backend::NOTIFICATION_RESPONSE | backend::NOTICE_RESPONSE | backend::PARAMETER_STATUS => {
                build::frame(to_client, f.tag, |b| b.put_slice(&f.body));
            }
            _ => {}
        }
        Ok::<_, StepError>(())
    });
    read.await??;
    match refused {
        Some(message) => Err(StepError::Refused(vec![message])),
        None => Ok(snap),
    }
}

/// Adds one row of [`SNAPSHOT_SQL`]'s result.
fn add_row(snap: &mut Snapshot, body: &[u8]) -> Result<(), StepError> {
    let row = backend::parse_data_row(body).map_err(|e| StepError::Invalid(e.to_string()))?;
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
        ("q", name) => match prepare_statement(&name, &text(2)) {
            Some(statement) => state.sql_prepares.push((name, statement)),
            // Replaying the whole text would run the client's other statements
            // (its DML) a second time: the session cannot move.
            None => snap
                .pinned
                .push("a prepared statement whose PREPARE cannot be told apart from the rest of its query"),
        },
        ("l", channel) => state.channels.push(channel),
        ("x", kind) => snap.pinned.push(match kind.as_str() {
            "t" => "temporary tables",
            "a" => "session advisory locks",
            _ => "WITH HOLD cursors",
        }),
        _ => {}
    }
    Ok(())
}

/// The PREPARE statement for `name` out of the query text the server kept, which
/// is the client's whole Query (it may hold other statements); `None` when the
/// lexer cannot find it there (a name spelled in a way it does not decode).
fn prepare_statement(name: &str, query: &str) -> Option<String> {
    sql::effects(query.as_bytes()).find_map(|e| match e {
        Effect::Prepare { name: n, statement } if n.normalized() == name => {
            Some(String::from_utf8_lossy(statement).into_owned())
        }
        _ => None,
    })
}
