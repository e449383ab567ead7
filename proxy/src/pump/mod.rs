//! The steady-state data path: bytes flow both ways through one reused buffer per
//! direction, read once from one socket and written once to the other. Frame
//! headers are walked in place to follow the protocol (where messages start, which
//! ones end a pipeline, what ReadyForQuery says) without decoding bodies; only
//! ReadyForQuery is read whole. Both directions are driven from one `poll` so a
//! blocked write on one side never stops the other side from draining, and all
//! state lives in [`Pump`], which makes [`Pump::run`] cancel-safe: a session can
//! `select!` on it and call it again.

use crate::metrics::Metrics;
use crate::registry::{SessionHandle, TxPhase};
use crate::state_log::StateLog;
use crate::stream::Stream;
use bytes::BytesMut;
use pgcutover_protocol::backend::{self, TransactionStatus};
use pgcutover_protocol::frame::{parse_header, FrameError};
use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

mod direction;
mod inspect;

pub use inspect::PidRewrite;

use direction::{Direction, Inspector, ScanError};
use inspect::{ClientSide, ServerSide};

/// Why the pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The client sent Terminate (held back: the session says goodbye to the
    /// server, or resets the connection for the next client).
    ClientTerminated,
    /// The client closed its socket.
    ClientClosed,
    /// The server closed its socket (anything it sent before was forwarded).
    ServerClosed,
    /// The caller asked to stop at a transaction boundary, and the session is at one.
    AtBoundary,
}

/// A failure on one side.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// Client socket error.
    #[error("client connection: {0}")]
    ClientIo(io::Error),
    /// Server socket error.
    #[error("server connection: {0}")]
    ServerIo(io::Error),
    /// The client sent a frame that cannot be valid.
    #[error("invalid message from client: {0}")]
    ClientProtocol(FrameError),
    /// The server sent something that cannot be valid.
    #[error("invalid message from server: {0}")]
    ServerProtocol(String),
}

/// Where the session stands in the protocol, from the frames seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxState {
    /// Status from the last ReadyForQuery.
    pub status: TransactionStatus,
    /// Query/Sync/FunctionCall messages forwarded and not yet answered by ReadyForQuery.
    pub awaiting_ready: u32,
    /// Extended-protocol messages forwarded since the last Sync (a pipeline still open).
    pub open_pipeline: bool,
    /// The client sent Terminate.
    pub(super) terminated: bool,
    /// The server said FATAL while the session was idle: it is going away. The
    /// error is held back (the session may reconnect instead) and nothing new is
    /// sent to it.
    pub server_leaving: bool,
}

impl TxState {
    /// No transaction open and nothing in flight: the session could move or close
    /// here without anyone noticing.
    pub fn idle(&self) -> bool {
        self.status == TransactionStatus::Idle && !self.in_flight()
    }

    /// Whether the server has work from this session that it has not finished:
    /// the only time a CancelRequest may be forwarded.
    pub fn in_flight(&self) -> bool {
        self.awaiting_ready > 0 || self.open_pipeline
    }

    /// The same, as the registry publishes it.
    pub fn phase(&self) -> TxPhase {
        if self.in_flight() {
            TxPhase::Busy
        } else if self.idle() {
            TxPhase::Idle
        } else {
            TxPhase::Open
        }
    }
}

/// What the session wants from one [`Pump::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunMode {
    /// Start no new transaction: a client message that would start one stays
    /// queued (in the buffer, then the socket) until a later run without hold.
    pub hold: bool,
    /// Return [`PumpEnd::AtBoundary`] as soon as the session is at a boundary.
    pub stop_at_boundary: bool,
}

/// Forwards one session's traffic between its client and its server.
pub struct Pump {
    c2s: Direction,
    s2c: Direction,
    tx: TxState,
    log: StateLog,
    pid_rewrite: Option<PidRewrite>,
    max_message_len: usize,
    handle: Arc<SessionHandle>,
    metrics: Arc<Metrics>,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.flush_counters();
    }
}

impl Pump {
    /// Starts pumping with whatever the login left in each side's read buffer.
    pub fn new(
        client_rbuf: BytesMut,
        server_rbuf: BytesMut,
        max_message_len: usize,
        handle: Arc<SessionHandle>,
        metrics: Arc<Metrics>,
    ) -> Pump {
        Pump {
            c2s: Direction::new(client_rbuf),
            s2c: Direction::new(server_rbuf),
            tx: TxState {
                status: TransactionStatus::Idle,
                awaiting_ready: 0,
                open_pipeline: false,
                terminated: false,
                server_leaving: false,
            },
            log: StateLog::default(),
            pid_rewrite: None,
            max_message_len,
            handle,
            metrics,
        }
    }

    /// Where the session stands in the protocol.
    pub fn tx(&self) -> TxState {
        self.tx
    }

    /// The session's state as followed from its messages, for replay elsewhere.
    pub fn state_log(&self) -> &StateLog {
        &self.log
    }

    /// See [`state_log`](Self::state_log).
    pub fn state_log_mut(&mut self) -> &mut StateLog {
        &mut self.log
    }

    /// The FATAL a server sent while the session was idle, held back from the
    /// client (see [`TxState::server_leaving`]).
    pub fn server_farewell(&self) -> Option<&[u8]> {
        if !self.tx.server_leaving {
            return None;
        }
        let h = parse_header(&self.s2c.buf, self.max_message_len).ok().flatten()?;
        self.s2c.buf.get(..h.frame_len())
    }

    /// Whether the session is idle and every byte it had was delivered both ways, so
    /// nothing is lost by stopping here. Client bytes not yet forwarded (a queued
    /// query) may remain: they will go to whichever server the session has next.
    pub fn at_boundary(&self) -> bool {
        self.tx.idle() && self.c2s.ready == 0 && self.c2s.frame_left == 0 && self.client_at_message_boundary()
    }

    /// Whether the server connection is where a fresh login leaves one: no
    /// transaction, nothing it still owes, no message half sent to it or half read
    /// from it, and it was not told to go. Then it can be reset for another client.
    pub fn server_reusable(&self) -> bool {
        self.tx.idle()
            && !self.tx.server_leaving
            && self.c2s.ready == 0
            && self.c2s.frame_left == 0
            && self.s2c.frame_left == 0
            && self.s2c.buf.len() == self.s2c.ready
    }

    /// Whether the proxy may write a message of its own to the client now without
    /// cutting one of the server's messages in half.
    pub fn client_at_message_boundary(&self) -> bool {
        self.s2c.ready == 0 && self.s2c.frame_left == 0 && !self.s2c.unflushed
    }

    /// Hands over the server-side read buffer (bytes the old server sent that were not
    /// scanned yet), for reading the server directly. Only at a boundary.
    pub fn take_server_buffer(&mut self) -> BytesMut {
        debug_assert!(self.client_at_message_boundary());
        std::mem::take(&mut self.s2c.buf)
    }

    /// Continues with a (new) server's read buffer.
    pub fn set_server_buffer(&mut self, buf: BytesMut) {
        self.flush_counters();
        self.s2c = Direction::new(buf);
        self.tx.server_leaving = false;
    }

    /// Adds what this session forwarded since the last call to the shared counters.
    pub fn flush_counters(&mut self) {
        let m = &self.metrics;
        m.bytes_to_server.inc_by(std::mem::take(&mut self.c2s.bytes));
        m.messages_to_server.inc_by(std::mem::take(&mut self.c2s.messages));
        m.bytes_to_client.inc_by(std::mem::take(&mut self.s2c.bytes));
        m.messages_to_client.inc_by(std::mem::take(&mut self.s2c.messages));
    }

    /// Sets how notifications from the session's own backend are rewritten.
    pub fn set_pid_rewrite(&mut self, rewrite: Option<PidRewrite>) {
        self.pid_rewrite = rewrite;
    }

    /// Whether the last message the server sent was an ErrorResponse: after it
    /// closes, that error (e.g. 57P01 from pg_terminate_backend) is the whole story.
    pub fn server_said_error_last(&self) -> bool {
        self.s2c.last_tag == backend::ERROR_RESPONSE
    }

    /// Forwards until one side ends, or, with `stop_at_boundary`, until the session
    /// is [at a boundary](Self::at_boundary).
    pub async fn run(&mut self, client: &mut Stream, server: &mut Stream, mode: RunMode) -> Result<PumpEnd, PumpError> {
        poll_fn(|cx| self.poll_run(cx, client, server, mode)).await
    }

    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        server: &mut Stream,
        mode: RunMode,
    ) -> Poll<Result<PumpEnd, PumpError>> {
        if let Poll::Ready(r) = self.poll_client_to_server(cx, client, server, mode.hold) {
            return Poll::Ready(r);
        }
        if let Poll::Ready(r) = self.poll_server_to_client(cx, server, client) {
            return Poll::Ready(r);
        }
        if mode.stop_at_boundary && self.at_boundary() {
            return Poll::Ready(Ok(PumpEnd::AtBoundary));
        }
        Poll::Pending
    }

    fn poll_client_to_server(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        server: &mut Stream,
        hold: bool,
    ) -> Poll<Result<PumpEnd, PumpError>> {
        loop {
            ready!(self.c2s.poll_drain(cx, server)).map_err(PumpError::ServerIo)?;
            if self.tx.terminated {
                return Poll::Ready(Ok(PumpEnd::ClientTerminated));
            }
            let was = self.tx;
            let mut side = ClientSide {
                tx: &mut self.tx,
                log: &mut self.log,
                hold,
            };
            self.c2s.scan(self.max_message_len, &mut side).map_err(|e| match e {
                ScanError::Frame(f) => PumpError::ClientProtocol(f),
                ScanError::Message(m) => PumpError::ServerProtocol(m),
            })?;
            let gated = !side.may_start();
            self.publish(was);
            if self.c2s.ready > 0 || self.tx.terminated {
                continue;
            }
            if gated && !self.c2s.buf.is_empty() {
                // A queued message waits for the hold to end; reading on would only
                // buffer more. The session wakes this pump again when the gate opens.
                return Poll::Pending;
            }
            let n = ready!(self.c2s.poll_fill(cx, client)).map_err(PumpError::ClientIo)?;
            if n == 0 {
                return Poll::Ready(Ok(PumpEnd::ClientClosed));
            }
        }
    }

    fn poll_server_to_client(
        &mut self,
        cx: &mut Context<'_>,
        server: &mut Stream,
        client: &mut Stream,
    ) -> Poll<Result<PumpEnd, PumpError>> {
        loop {
            ready!(self.s2c.poll_drain(cx, client)).map_err(PumpError::ClientIo)?;
            let was = self.tx;
            let mut side = ServerSide {
                tx: &mut self.tx,
                log: &mut self.log,
                pid_rewrite: self.pid_rewrite,
            };
            self.s2c.scan(self.max_message_len, &mut side).map_err(|e| match e {
                ScanError::Frame(f) => PumpError::ServerProtocol(f.to_string()),
                ScanError::Message(m) => PumpError::ServerProtocol(m),
            })?;
            self.publish(was);
            if self.s2c.ready > 0 {
                continue;
            }
            let n = ready!(self.s2c.poll_fill(cx, server)).map_err(PumpError::ServerIo)?;
            if n == 0 {
                return Poll::Ready(Ok(PumpEnd::ServerClosed));
            }
        }
    }

    /// Tells the registry when the session's state changed (cancel routing, drain),
    /// and flushes the traffic counters then: about once per transaction.
    fn publish(&mut self, was: TxState) {
        if was.in_flight() != self.tx.in_flight() || was.idle() != self.tx.idle() {
            self.handle.set_tx(self.tx.phase());
            self.flush_counters();
        }
    }
}
