//! What the pump knows about the protocol, one inspector per direction: where
//! transactions end, which statements the client prepares, and the hold gate.

use super::direction::{Inspector, Step};
use super::TxState;
use crate::state_log::{StateLog, MAX_INSPECTED_QUERY};
use pgcutover_protocol::backend;
use pgcutover_protocol::frame::HEADER_LEN;
use pgcutover_protocol::frontend;

/// Largest Close body read: a type byte, a name (PostgreSQL truncates names to
/// 63 bytes, but a client may send more) and its terminator.
const MAX_INSPECTED_CLOSE: usize = 1024;

/// Largest NotificationResponse read to rewrite its pid: PostgreSQL's payload cap
/// (8000 bytes) plus a channel name, with room to spare. A larger one cannot come
/// from PostgreSQL and passes unread.
const MAX_INSPECTED_NOTIFICATION: usize = 16 * 1024;
/// Largest unsolicited ErrorResponse read to see whether it is a FATAL. A longer one
/// passes unread: the close that follows it ends the session all the same.
const MAX_INSPECTED_ERROR: usize = 64 * 1024;

/// Client to server: counts what will be answered, logs named statements, and
/// holds new transactions back while the gate is closed.
pub(super) struct ClientSide<'a> {
    pub(super) tx: &'a mut TxState,
    pub(super) log: &'a mut StateLog,
    pub(super) hold: bool,
}

impl Inspector for ClientSide<'_> {
    fn may_start(&self) -> bool {
        // Held sessions finish what they started (the drain) but start nothing new;
        // a server that is going away gets nothing new either.
        !(self.tx.server_leaving || self.hold && self.tx.idle())
    }

    fn may_scan(&self, tag: u8) -> bool {
        // A client leaving during a hold starts nothing: it must not be kept waiting
        // (its backend may be what the next client, arriving held, logs in on).
        tag == frontend::TERMINATE || self.may_start()
    }

    fn wants_body(&self, tag: u8, body_len: usize) -> bool {
        match tag {
            // Bounded like Query: a larger one passes unread, and the log goes opaque.
            frontend::PARSE | frontend::QUERY => body_len <= MAX_INSPECTED_QUERY,
            // A statement or portal name; a longer one cannot name anything the log holds.
            frontend::CLOSE => body_len <= MAX_INSPECTED_CLOSE,
            frontend::TERMINATE => body_len <= MAX_INSPECTED_CLOSE,
            _ => false,
        }
    }

    fn on_frame(&mut self, tag: u8, frame: &mut [u8]) -> Result<Step, String> {
        let tx = &mut *self.tx;
        match tag {
            frontend::TERMINATE => {
                tx.terminated = true;
                if frame.is_empty() {
                    // A Terminate with a body too long to hold passes on like any
                    // other: the server is leaving, and its connection cannot be pooled.
                    tx.server_leaving = true;
                    return Ok(Step::Stop);
                }
                // Kept back: the session decides whether the server hears it or the
                // connection is reset for the next client.
                return Ok(Step::HoldBack);
            }
            t if frontend::ends_with_ready_for_query(t) => {
                match t {
                    frontend::QUERY => self.log.on_query(frame),
                    frontend::FUNCTION_CALL => {
                        self.log.on_function_call();
                        self.log.on_sync();
                    }
                    _ => self.log.on_sync(),
                }
                tx.awaiting_ready += 1;
                tx.open_pipeline = false;
            }
            frontend::PARSE => {
                tx.open_pipeline = true;
                self.log.on_parse(frame);
            }
            frontend::CLOSE => {
                tx.open_pipeline = true;
                self.log.on_close(frame);
            }
            frontend::BIND | frontend::DESCRIBE | frontend::EXECUTE | frontend::FLUSH => tx.open_pipeline = true,
            // COPY data and anything else belongs to a message already counted.
            _ => {}
        }
        Ok(Step::Forward)
    }
}

/// Server to client: follows ReadyForQuery, and makes notifications sent by the
/// session's own (replacement) backend carry the pid the client was given.
pub(super) struct ServerSide<'a> {
    pub(super) tx: &'a mut TxState,
    pub(super) log: &'a mut StateLog,
    pub(super) pid_rewrite: Option<PidRewrite>,
}

impl Inspector for ServerSide<'_> {
    fn may_start(&self) -> bool {
        !self.tx.server_leaving
    }

    fn wants_body(&self, tag: u8, body_len: usize) -> bool {
        // Each bounded: a server that declares a huge message of one of these kinds
        // must not make the proxy buffer it whole (up to max_message_bytes per session).
        match tag {
            // Any other length is malformed; unread, it fails to parse and ends the session.
            backend::READY_FOR_QUERY => body_len == 1,
            backend::NOTIFICATION_RESPONSE => self.pid_rewrite.is_some() && body_len <= MAX_INSPECTED_NOTIFICATION,
            // Unsolicited: the server is about to close the connection.
            backend::ERROR_RESPONSE => self.tx.idle() && body_len <= MAX_INSPECTED_ERROR,
            _ => false,
        }
    }

    fn on_frame(&mut self, tag: u8, frame: &mut [u8]) -> Result<Step, String> {
        match tag {
            backend::READY_FOR_QUERY => {
                let body = frame.get(HEADER_LEN..).unwrap_or_default();
                self.tx.status = backend::parse_ready_for_query(body).map_err(|e| e.to_string())?;
                self.tx.awaiting_ready = self.tx.awaiting_ready.saturating_sub(1);
                self.log.on_ready(self.tx.status);
            }
            backend::ERROR_RESPONSE => {
                self.log.on_error();
                let fields = backend::ErrorFields::new(frame.get(HEADER_LEN..).unwrap_or_default());
                if !frame.is_empty() && matches!(fields.severity(), Some("FATAL" | "PANIC")) {
                    self.tx.server_leaving = true;
                    return Ok(Step::HoldBack);
                }
            }
            backend::PARSE_COMPLETE => self.log.on_parse_complete(),
            backend::NOTIFICATION_RESPONSE => {
                if let (Some(rw), Some(pid)) = (self.pid_rewrite, frame.get_mut(HEADER_LEN..HEADER_LEN + 4)) {
                    if i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]) == rw.server_pid {
                        pid.copy_from_slice(&rw.client_pid.to_be_bytes());
                    }
                }
            }
            _ => {}
        }
        Ok(Step::Forward)
    }
}

/// The session's backend changed pid when it moved; the client still knows the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRewrite {
    /// The current backend's pid.
    pub server_pid: i32,
    /// The pid the client was given at login.
    pub client_pid: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcutover_protocol::backend::TransactionStatus;

    fn tx() -> TxState {
        TxState {
            status: TransactionStatus::Idle,
            awaiting_ready: 0,
            open_pipeline: false,
            terminated: false,
            server_leaving: false,
        }
    }

    #[test]
    fn parse_bodies_are_capped_like_queries() {
        let (mut tx, mut log) = (tx(), StateLog::default());
        let side = ClientSide {
            tx: &mut tx,
            log: &mut log,
            hold: false,
        };
        for tag in [frontend::PARSE, frontend::QUERY] {
            assert!(side.wants_body(tag, MAX_INSPECTED_QUERY));
            assert!(!side.wants_body(tag, MAX_INSPECTED_QUERY + 1), "{}", char::from(tag));
        }
        assert!(side.wants_body(frontend::CLOSE, 64));
        assert!(!side.wants_body(frontend::CLOSE, 1 << 20));
    }

    #[test]
    fn a_parse_too_large_to_read_makes_the_log_opaque() {
        let (mut tx, mut log) = (tx(), StateLog::default());
        let mut side = ClientSide {
            tx: &mut tx,
            log: &mut log,
            hold: false,
        };
        assert!(side.on_frame(frontend::PARSE, &mut []).is_ok());
        assert!(tx.open_pipeline);
        assert!(
            log.opaque().is_some(),
            "replay cannot recreate a statement it never read"
        );
        assert!(log.statements().is_empty());
    }

    #[test]
    fn server_messages_are_read_whole_only_when_small() {
        let (mut tx, mut log) = (tx(), StateLog::default());
        let mut side = ServerSide {
            tx: &mut tx,
            log: &mut log,
            pid_rewrite: Some(PidRewrite {
                server_pid: 2,
                client_pid: 1,
            }),
        };
        assert!(side.wants_body(backend::READY_FOR_QUERY, 1));
        assert!(!side.wants_body(backend::READY_FOR_QUERY, 100 << 20));
        assert!(side.wants_body(backend::NOTIFICATION_RESPONSE, 8000 + 64));
        assert!(!side.wants_body(backend::NOTIFICATION_RESPONSE, 100 << 20));
        assert!(side.wants_body(backend::ERROR_RESPONSE, 4096));
        assert!(!side.wants_body(backend::ERROR_RESPONSE, 100 << 20));
        // A ReadyForQuery of the wrong size, passed unread, still ends the session.
        assert!(side.on_frame(backend::READY_FOR_QUERY, &mut []).is_err());
    }

    #[test]
    fn parse_complete_confirms_the_pending_parse() {
        let (mut tx, mut log) = (tx(), StateLog::default());
        let mut frame = bytes::BytesMut::new();
        pgcutover_protocol::build::frame(&mut frame, frontend::PARSE, |b| {
            b.extend_from_slice(b"s1\0select 1\0\0\0")
        });
        let mut client = ClientSide {
            tx: &mut tx,
            log: &mut log,
            hold: false,
        };
        client.on_frame(frontend::PARSE, &mut frame).unwrap();
        assert!(client.log.statements().is_empty(), "not before the server answers");
        let mut server = ServerSide {
            tx: &mut tx,
            log: &mut log,
            pid_rewrite: None,
        };
        server.on_frame(backend::PARSE_COMPLETE, &mut []).unwrap();
        assert!(log.statements().parse_frame("s1").is_some());
    }
}
