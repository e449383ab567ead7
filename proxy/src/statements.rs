//! The session-state log for prepared statements created with the extended
//! protocol: the client's own Parse messages, byte for byte, by statement name, so a
//! session that moves to another server can recreate exactly what it prepared.

use bytes::Bytes;
use pgcutover_protocol::frame::HEADER_LEN;
use pgcutover_protocol::frontend::{parse_parse, parse_target, Target};
use std::collections::HashMap;

/// Named statements the client prepared and has not closed.
#[derive(Debug, Default)]
pub struct StatementLog {
    parses: HashMap<String, Bytes>,
}

impl StatementLog {
    /// Records a whole Parse frame (header included). The unnamed statement is not
    /// kept: it lives only until the next Parse and never crosses a transaction
    /// boundary in practice. A later Parse of the same name wins, as a client that
    /// retries after a failed Parse expects.
    pub(crate) fn record_parse(&mut self, frame: &[u8]) {
        let Some(body) = frame.get(HEADER_LEN..) else { return };
        if let Ok(p) = parse_parse(body) {
            if !p.name.is_empty() {
                self.parses.insert(p.name.to_owned(), Bytes::copy_from_slice(frame));
            }
        }
    }

    /// Forgets a statement the client closed (whole Close frame, header included).
    pub(crate) fn record_close(&mut self, frame: &[u8]) {
        let Some(body) = frame.get(HEADER_LEN..) else { return };
        if let Ok(Target::Statement(name)) = parse_target(body) {
            self.parses.remove(name);
        }
    }

    /// Forgets `name` (DEALLOCATE).
    pub(crate) fn forget(&mut self, name: &str) {
        self.parses.remove(name);
    }

    /// Forgets everything (DEALLOCATE ALL, DISCARD ALL).
    pub(crate) fn clear(&mut self) {
        self.parses.clear();
    }

    /// Keeps only the statements `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.parses.retain(|name, _| keep(name));
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

    #[test]
    fn keeps_named_statements_until_closed() {
        let mut log = StatementLog::default();
        log.record_parse(&parse("s1", "select 1"));
        log.record_parse(&parse("", "select 2"));
        log.record_parse(&parse("s2", "select 3"));
        log.record_parse(&parse("s2", "select 4"));
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
        log.record_parse(b"P\0");
        log.record_close(b"");
        assert_eq!(log.len(), 1);
    }
}
