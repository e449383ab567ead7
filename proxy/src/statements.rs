//! The session-state log for prepared statements created with the extended
//! protocol: the client's own Parse messages, byte for byte, by statement name, so a
//! session that moves to another server can recreate exactly what it prepared.
//!
//! A Parse counts once the server answered it with ParseComplete. The server
//! answers in order, and after an error skips everything up to the next Sync, so
//! each Parse gets either its ParseComplete or, when its pipeline ends first, nothing:
//! then it failed (or was skipped) and is dropped.

use bytes::Bytes;
use pgcutover_protocol::frame::HEADER_LEN;
use pgcutover_protocol::frontend::{parse_parse, parse_target, Target};
use std::collections::{HashMap, VecDeque};

/// Most bytes of Parse frames kept per session. A client may prepare as much as its
/// server holds, but the proxy holds every client's: past this the log keeps no
/// more, and the session can neither move nor be reconnected (it is pinned, and
/// the flip names why).
pub const MAX_LOGGED_BYTES: usize = 16 << 20;

/// Named statements the client prepared and has not closed.
#[derive(Debug, Default)]
pub struct StatementLog {
    parses: HashMap<String, Bytes>,
    /// The bytes of `parses`' frames.
    bytes: usize,
    /// Parses sent and not answered yet, oldest first.
    pending: VecDeque<PendingParse>,
    /// Messages sent that the server answers with ReadyForQuery (each ends a pipeline)...
    pipelines_sent: u64,
    /// ...and the ReadyForQuery answers received.
    pipelines_done: u64,
}

/// A Parse waiting for its ParseComplete.
#[derive(Debug)]
struct PendingParse {
    /// The pipeline it belongs to: it has no answer coming once that one is done.
    pipeline: u64,
    /// What to keep once it succeeds; `None` for what is not kept (the unnamed
    /// statement, one too large to log, one closed again before its answer).
    statement: Option<(String, Bytes)>,
}

impl StatementLog {
    /// Records a whole Parse frame (header included), kept once the server
    /// confirms it; an empty frame stands for one too large to keep. The unnamed
    /// statement is not kept: it lives only until the next Parse and never crosses
    /// a transaction boundary in practice. A later Parse of the same name wins, as
    /// a client that retries after a failed Parse expects.
    pub(crate) fn record_parse(&mut self, frame: &[u8]) {
        let parsed = frame.get(HEADER_LEN..).and_then(|body| parse_parse(body).ok());
        let statement = parsed
            .filter(|p| !p.name.is_empty())
            .map(|p| (p.name.to_owned(), Bytes::copy_from_slice(frame)));
        self.pending.push_back(PendingParse {
            pipeline: self.pipelines_sent,
            statement,
        });
    }

    /// The server's ParseComplete: the oldest pending Parse succeeded. `false`
    /// when the statement is not kept because the log is full.
    pub(crate) fn parse_complete(&mut self) -> bool {
        let Some(PendingParse {
            statement: Some((name, frame)),
            ..
        }) = self.pending.pop_front()
        else {
            return true;
        };
        let replaced = self.parses.get(&name).map_or(0, Bytes::len);
        if self.bytes - replaced + frame.len() > MAX_LOGGED_BYTES {
            self.forget(&name);
            return false;
        }
        self.bytes = self.bytes - replaced + frame.len();
        self.parses.insert(name, frame);
        true
    }

    /// The client sent a message the server answers with ReadyForQuery.
    pub(crate) fn pipeline_sent(&mut self) {
        self.pipelines_sent += 1;
    }

    /// The server sent ReadyForQuery: Parses of that pipeline without an answer failed.
    pub(crate) fn pipeline_done(&mut self) {
        self.pipelines_done += 1;
        while self.pending.front().is_some_and(|p| p.pipeline < self.pipelines_done) {
            self.pending.pop_front();
        }
    }

    /// Forgets a statement the client closed (whole Close frame, header included).
    pub(crate) fn record_close(&mut self, frame: &[u8]) {
        let Some(body) = frame.get(HEADER_LEN..) else { return };
        if let Ok(Target::Statement(name)) = parse_target(body) {
            self.forget(name);
            // Closed before it was confirmed: its ParseComplete must not bring it back.
            for p in &mut self.pending {
                if p.statement.as_ref().is_some_and(|(n, _)| n == name) {
                    p.statement = None;
                }
            }
        }
    }

    /// Forgets `name` (DEALLOCATE).
    pub(crate) fn forget(&mut self, name: &str) {
        if let Some(frame) = self.parses.remove(name) {
            self.bytes -= frame.len();
        }
    }

    /// Forgets everything (DEALLOCATE ALL, DISCARD ALL).
    pub(crate) fn clear(&mut self) {
        self.parses.clear();
        self.bytes = 0;
    }

    /// Keeps only the statements `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let bytes = &mut self.bytes;
        self.parses.retain(|name, frame| {
            let kept = keep(name);
            if !kept {
                *bytes -= frame.len();
            }
            kept
        });
    }

    /// Every statement, by name and Parse frame.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.parses.iter().map(|(n, f)| (n.as_str(), f))
    }

    /// The Parse frame that created `name`.
    pub fn parse_frame(&self, name: &str) -> Option<&Bytes> {
        self.parses.get(name)
    }

    /// Number of statements logged.
    pub fn len(&self) -> usize {
        self.parses.len()
    }

    /// Whether nothing is logged.
    pub fn is_empty(&self) -> bool {
        self.parses.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use pgcutover_protocol::build;

    fn parse(name: &str, sql: &str) -> BytesMut {
        let mut b = BytesMut::new();
        build::frame(&mut b, b'P', |b| {
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(b"\0");
            b.extend_from_slice(sql.as_bytes());
            b.extend_from_slice(b"\0\0\0");
        });
        b
    }

    /// Parses one pipeline (ending in Sync) that the server answers with
    /// ParseComplete for the first `ok` of them, then an error.
    fn pipeline(log: &mut StatementLog, parses: &[BytesMut], ok: usize) {
        for p in parses {
            log.record_parse(p);
        }
        log.pipeline_sent();
        for _ in 0..ok {
            log.parse_complete();
        }
        log.pipeline_done();
    }

    #[test]
    fn keeps_named_statements_until_closed() {
        let mut log = StatementLog::default();
        let parses = [parse("s1", "select 1"), parse("", "select 2"), parse("s2", "select 3")];
        pipeline(&mut log, &parses, 3);
        pipeline(&mut log, &[parse("s2", "select 4")], 1);
        assert_eq!(log.len(), 2);
        assert_eq!(log.parse_frame("s2").unwrap()[..], parse("s2", "select 4")[..]);
        let mut close = BytesMut::new();
        build::frame(&mut close, b'C', |b| b.extend_from_slice(b"Ss1\0"));
        log.record_close(&close);
        let mut close_portal = BytesMut::new();
        build::frame(&mut close_portal, b'C', |b| b.extend_from_slice(b"Ps2\0"));
        log.record_close(&close_portal);
        assert!(log.parse_frame("s1").is_none());
        assert!(log.parse_frame("s2").is_some());
        // Malformed frames are ignored, never a panic.
        pipeline(&mut log, &[BytesMut::from(&b"P\0"[..])], 1);
        log.record_close(b"");
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn the_log_keeps_at_most_its_budget_and_counts_what_it_frees() {
        let mut log = StatementLog::default();
        let body = "x".repeat(60_000);
        let mut n = 0;
        loop {
            let frame = parse(&format!("s{n}"), &body);
            log.record_parse(&frame);
            if !log.parse_complete() {
                break;
            }
            n += 1;
            assert!(n < 1000, "the budget never ran out");
        }
        assert_eq!(log.len(), n, "the statement over the budget is not kept");
        assert!(log.bytes <= MAX_LOGGED_BYTES);
        // What is closed or deallocated makes room again.
        log.forget("s0");
        log.clear();
        assert_eq!((log.len(), log.bytes), (0, 0));
        log.record_parse(&parse("again", &body));
        assert!(log.parse_complete());
    }

    #[test]
    fn a_parse_the_server_refused_is_not_kept() {
        let mut log = StatementLog::default();
        // s1 succeeds; s2 fails, and the server skips s3 up to the Sync.
        let parses = [parse("s1", "select 1"), parse("s2", "selec 2"), parse("s3", "select 3")];
        pipeline(&mut log, &parses, 1);
        assert!(log.parse_frame("s1").is_some());
        assert!(log.parse_frame("s2").is_none());
        assert!(log.parse_frame("s3").is_none());
        // The next pipeline's answers go to its own Parses, not to the skipped ones.
        pipeline(&mut log, &[parse("s4", "select 4")], 1);
        assert_eq!(log.parse_frame("s4").unwrap()[..], parse("s4", "select 4")[..]);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn a_parse_waits_for_its_answer_across_pipelined_syncs() {
        let mut log = StatementLog::default();
        log.record_parse(&parse("a", "select 1"));
        log.pipeline_sent();
        log.record_parse(&parse("b", "select 2"));
        log.pipeline_sent();
        assert!(log.is_empty(), "nothing counts before the server answers");
        log.parse_complete();
        log.pipeline_done();
        log.parse_complete();
        log.pipeline_done();
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn a_statement_closed_before_its_answer_stays_closed() {
        let mut log = StatementLog::default();
        let mut close = BytesMut::new();
        build::frame(&mut close, b'C', |b| b.extend_from_slice(b"Ss1\0"));
        log.record_parse(&parse("s1", "select 1"));
        log.record_close(&close);
        log.pipeline_sent();
        log.parse_complete();
        log.pipeline_done();
        assert!(log.is_empty());
    }

    #[test]
    fn a_parse_too_large_to_keep_still_takes_its_answer() {
        let mut log = StatementLog::default();
        log.record_parse(&[]);
        log.record_parse(&parse("s1", "select 1"));
        log.pipeline_sent();
        log.parse_complete();
        log.parse_complete();
        log.pipeline_done();
        assert_eq!(log.len(), 1);
        assert!(log.parse_frame("s1").is_some());
    }
}
