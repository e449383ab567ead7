//! The session-state log: what a session set up on its server, followed from the
//! client's messages as they pass (settings, SQL PREPAREs, LISTEN channels, and the
//! protocol-level statements of [`StatementLog`]), so the session can be recreated
//! on a new server without asking the old one — which is the only way when the old
//! one is gone (a server connection lost while its client was idle).
//!
//! A change counts once its server confirmed it: it is pending from the client's
//! Query until the ReadyForQuery that answers it (clients pipeline, so every message
//! that will be answered by one is queued in order), and dropped if an
//! ErrorResponse came in between. Whatever the lexer cannot follow (see [`pgcutover_protocol::sql`]),
//! or a change made inside a transaction block, makes the log *opaque*: it no longer
//! claims to know the whole state. A flip reads the state from the old server and
//! [adopts](StateLog::adopt) it, which makes the log whole again.

use crate::statements::StatementLog;
use pgcutover_protocol::backend::TransactionStatus;
use pgcutover_protocol::frame::HEADER_LEN;
use pgcutover_protocol::sql::{self, Effect};
use std::collections::VecDeque;

/// Queries longer than this are forwarded without being read: the log becomes
/// opaque instead of holding a large message back until it is complete.
pub(crate) const MAX_INSPECTED_QUERY: usize = 64 * 1024;

/// How to recreate one session variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingReplay {
    /// The client's own statement (`SET search_path TO a, b`).
    Statement(String),
    /// The value as the server reported it, for `set_config(name, value, false)`.
    Value(String),
}

/// A session's recreatable state, apart from its protocol-level statements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// By variable name, in the order they were last set (replayed in that order, so
    /// overlapping forms such as `SET SESSION CHARACTERISTICS` end up as they were).
    pub settings: Vec<(String, SettingReplay)>,
    /// SQL `PREPARE`s: (name, the PREPARE statement).
    pub sql_prepares: Vec<(String, String)>,
    /// LISTEN channels.
    pub channels: Vec<String>,
}

impl SessionState {
    /// Whether there is nothing to replay.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty() && self.sql_prepares.is_empty() && self.channels.is_empty()
    }
}

/// One confirmed-or-not change, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Set(String, String),
    Reset(String),
    ResetAll,
    Prepare(String, String),
    Deallocate(Option<String>),
    Listen(String),
    Unlisten(Option<String>),
    DiscardAll,
}

impl Change {
    fn from_effect(e: Effect<'_>) -> Option<Change> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Some(match e {
            Effect::Set { name, statement } => Change::Set(name.normalized(), text(statement)),
            Effect::Reset { name } => Change::Reset(name.normalized()),
            Effect::ResetAll => Change::ResetAll,
            Effect::Prepare { name, statement } => Change::Prepare(name.normalized(), text(statement)),
            Effect::Deallocate { name } => Change::Deallocate(name.map(|n| n.normalized())),
            Effect::Listen { channel } => Change::Listen(channel.normalized()),
            Effect::Unlisten { channel } => Change::Unlisten(channel.map(|c| c.normalized())),
            Effect::DiscardAll => Change::DiscardAll,
            Effect::None | Effect::Opaque(_) | Effect::Transaction => return None,
        })
    }
}

/// One message the server will answer with ReadyForQuery, with the changes it
/// makes if it succeeds outside a transaction block.
#[derive(Debug, Default)]
struct Pending {
    changes: Option<Vec<Change>>,
    failed: bool,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct StateLog {
    statements: StatementLog,
    state: SessionState,
    opaque: Option<&'static str>,
    /// In the order the server answers them.
    pending: VecDeque<Pending>,
}

impl StateLog {
    /// Protocol-level prepared statements.
    pub fn statements(&self) -> &StatementLog {
        &self.statements
    }

    /// Settings, SQL PREPAREs and channels as far as the log knows them.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Why the log does not know the whole state, if it does not.
    pub fn opaque(&self) -> Option<&'static str> {
        self.opaque
    }

    fn make_opaque(&mut self, why: &'static str) {
        if self.opaque.is_none() {
            self.opaque = Some(why);
        }
    }

    /// A Query frame (header included). An empty frame means it was too large to
    /// be read.
    pub(crate) fn on_query(&mut self, frame: &[u8]) {
        let changes = self.query_changes(frame);
        self.pending.push_back(Pending { changes, failed: false });
        self.statements.pipeline_sent();
    }

    fn query_changes(&mut self, frame: &[u8]) -> Option<Vec<Change>> {
        // Once opaque, nothing is followed until a flip adopts the server's state.
        if self.opaque.is_some() {
            return None;
        }
        let Some(text) = frame.get(HEADER_LEN..).and_then(|b| b.split_last()).map(|(_, t)| t) else {
            self.make_opaque("a query too large to follow");
            return None;
        };
        let mut changes: Option<Vec<Change>> = None;
        let mut transaction_control = false;
        for effect in sql::effects(text) {
            match effect {
                Effect::None => {}
                Effect::Opaque(why) => {
                    self.make_opaque(why);
                    return None;
                }
                Effect::Transaction => transaction_control = true,
                tracked => changes
                    .get_or_insert_with(Vec::new)
                    .extend(Change::from_effect(tracked)),
            }
        }
        // The statements of one Query succeed or fail together, unless BEGIN or
        // COMMIT among them split it: then the outcome of each is not visible.
        if changes.is_some() && transaction_control {
            self.make_opaque("SET, PREPARE or LISTEN inside a transaction block");
            return None;
        }
        changes
    }

    /// A Sync or FunctionCall: another message answered by ReadyForQuery.
    pub(crate) fn on_sync(&mut self) {
        self.pending.push_back(Pending::default());
        self.statements.pipeline_sent();
    }

    /// A Parse frame (header included). An empty frame means it was too large to
    /// be read.
    pub(crate) fn on_parse(&mut self, frame: &[u8]) {
        self.statements.record_parse(frame);
        if self.opaque.is_some() {
            return;
        }
        let Some(body) = frame.get(HEADER_LEN..) else {
            return self.make_opaque("a prepared statement too large to follow");
        };
        let Ok(parse) = pgcutover_protocol::frontend::parse_parse(body) else {
            return;
        };
        for effect in sql::effects(parse.query.as_bytes()) {
            match effect {
                Effect::None | Effect::Transaction => {}
                Effect::Opaque(why) => return self.make_opaque(why),
                _ => return self.make_opaque("SET, PREPARE or LISTEN through the extended protocol"),
            }
        }
    }

    /// The server's ParseComplete.
    pub(crate) fn on_parse_complete(&mut self) {
        if !self.statements.parse_complete() {
            self.make_opaque("prepared statements over the 16 MiB the proxy keeps per session");
        }
    }

    /// A Close frame (header included).
    pub(crate) fn on_close(&mut self, frame: &[u8]) {
        if frame.is_empty() {
            // Too large to read: the log cannot tell what the client closed.
            self.make_opaque("a Close too large to follow");
        }
        self.statements.record_close(frame);
    }

    /// A FunctionCall message: a fast-path call can do anything.
    pub(crate) fn on_function_call(&mut self) {
        self.make_opaque("a fast-path function call");
    }

    /// The server sent an ErrorResponse: it belongs to the oldest unanswered message.
    pub(crate) fn on_error(&mut self) {
        if let Some(p) = self.pending.front_mut() {
            p.failed = true;
        }
    }

    /// The server sent ReadyForQuery: the oldest unanswered message is done.
    pub(crate) fn on_ready(&mut self, status: TransactionStatus) {
        self.statements.pipeline_done();
        let Some(Pending {
            changes: Some(changes),
            failed: false,
        }) = self.pending.pop_front()
        else {
            return;
        };
        // Inside a transaction block the change may still be rolled back.
        if status != TransactionStatus::Idle {
            return self.make_opaque("SET, PREPARE or LISTEN inside a transaction block");
        }
        for change in changes {
            self.apply(change);
        }
    }

    fn apply(&mut self, change: Change) {
        let s = &mut self.state;
        match change {
            Change::Set(name, statement) => {
                s.settings.retain(|(n, _)| *n != name);
                s.settings.push((name, SettingReplay::Statement(statement)));
            }
            Change::Reset(name) => s.settings.retain(|(n, _)| *n != name),
            // RESET ALL leaves the role alone (PostgreSQL's GUC_NO_RESET_ALL).
            Change::ResetAll => s.settings.retain(|(n, _)| n == "role" || n == "session_authorization"),
            Change::Prepare(name, statement) => {
                s.sql_prepares.retain(|(n, _)| *n != name);
                s.sql_prepares.push((name, statement));
            }
            // Protocol-level and SQL statements share one namespace on the server.
            Change::Deallocate(Some(name)) => {
                s.sql_prepares.retain(|(n, _)| *n != name);
                self.statements.forget(&name);
            }
            Change::Deallocate(None) => {
                s.sql_prepares.clear();
                self.statements.clear();
            }
            Change::Listen(channel) => {
                if !s.channels.contains(&channel) {
                    s.channels.push(channel);
                }
            }
            Change::Unlisten(Some(channel)) => s.channels.retain(|c| *c != channel),
            Change::Unlisten(None) => s.channels.clear(),
            Change::DiscardAll => {
                *s = SessionState::default();
                self.statements.clear();
            }
        }
    }

    /// Forgets a protocol statement that could not be recreated.
    pub(crate) fn forget_statement(&mut self, name: &str) {
        self.statements.forget(name);
    }

    /// Replaces what the log knows with the state read from the server (a complete
    /// snapshot, nothing pinned): the log is whole again. Protocol statements the
    /// server did not hold (their Parse failed) are forgotten.
    pub(crate) fn adopt(&mut self, state: SessionState, server_statements: &[String]) {
        self.state = state;
        self.statements
            .retain(|name| server_statements.iter().any(|s| s == name));
        self.opaque = None;
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use pgcutover_protocol::build;

    fn query(sql: &str) -> BytesMut {
        let mut b = BytesMut::new();
        build::query(&mut b, sql);
        b
    }

    fn run(log: &mut StateLog, sql: &str, ok: bool) {
        log.on_query(&query(sql));
        if !ok {
            log.on_error();
        }
        log.on_ready(TransactionStatus::Idle);
    }

    fn settings(log: &StateLog) -> Vec<(&str, &str)> {
        log.state()
            .settings
            .iter()
            .map(|(n, r)| match r {
                SettingReplay::Statement(s) | SettingReplay::Value(s) => (n.as_str(), s.as_str()),
            })
            .collect()
    }

    #[test]
    fn confirmed_changes_are_kept_failed_ones_dropped() {
        let mut log = StateLog::default();
        run(&mut log, "SET search_path TO a", true);
        run(&mut log, "SET statement_timeout = 'nonsense'", false);
        run(&mut log, "set application_name = 'x'; set search_path = b", true);
        assert_eq!(
            settings(&log),
            [
                ("application_name", "set application_name = 'x'"),
                ("search_path", "set search_path = b")
            ]
        );
        run(&mut log, "RESET application_name", true);
        run(&mut log, "PREPARE q AS SELECT 1", true);
        run(&mut log, "LISTEN c1; LISTEN c2; LISTEN c1", true);
        run(&mut log, "UNLISTEN c2", true);
        assert_eq!(settings(&log), [("search_path", "set search_path = b")]);
        assert_eq!(
            log.state().sql_prepares,
            [("q".to_owned(), "PREPARE q AS SELECT 1".to_owned())]
        );
        assert_eq!(log.state().channels, ["c1"]);
        assert_eq!(log.opaque(), None);
        run(&mut log, "DISCARD ALL", true);
        assert!(log.state().is_empty());
    }

    #[test]
    fn pipelined_messages_are_answered_in_order() {
        let mut log = StateLog::default();
        log.on_query(&query("SET a.x = 1"));
        log.on_sync();
        log.on_query(&query("SET a.y = 2"));
        log.on_query(&query("SET a.z = 3"));
        log.on_error(); // for SET a.x
        log.on_ready(TransactionStatus::Idle);
        log.on_ready(TransactionStatus::Idle);
        log.on_ready(TransactionStatus::Idle);
        log.on_error(); // for SET a.z
        log.on_ready(TransactionStatus::Idle);
        assert_eq!(settings(&log), [("a.y", "SET a.y = 2")]);
        assert_eq!(log.opaque(), None);
    }

    #[test]
    fn what_cannot_be_followed_makes_the_log_opaque_until_adopted() {
        let mut log = StateLog::default();
        log.on_query(&query("SET search_path = a"));
        log.on_ready(TransactionStatus::InTransaction);
        assert!(log.opaque().is_some(), "a SET inside a transaction block");
        log.adopt(SessionState::default(), &[]);
        assert_eq!(log.opaque(), None);
        run(&mut log, "BEGIN; SET search_path = a; COMMIT", true);
        assert!(log.opaque().is_some());
        log.adopt(SessionState::default(), &[]);
        run(&mut log, "CREATE TEMP TABLE t (a int)", true);
        assert_eq!(log.opaque(), Some("temporary tables"));
        let mut log = StateLog::default();
        log.on_query(b"");
        assert!(log.opaque().is_some(), "a query too large to read");
        let mut log = StateLog::default();
        run(&mut log, "select 1", true);
        run(&mut log, "update t set a = 1", true);
        assert_eq!(log.opaque(), None);
        assert!(log.state().is_empty());
    }
}
