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
use crate::state_log::{StateLog, MAX_INSPECTED_QUERY};
use crate::stream::Stream;
use crate::wire::BUF_SIZE;
use bytes::{Buf, BufMut, BytesMut};
use pgcutover_protocol::backend::{self, TransactionStatus};
use pgcutover_protocol::frame::{parse_header, FrameError, HEADER_LEN};
use pgcutover_protocol::frontend;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why the pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The client sent Terminate (already forwarded to the server).
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
    terminated: bool,
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

/// One direction's buffer and its position in the frame stream.
struct Direction {
    buf: BytesMut,
    /// Bytes at the front of `buf` that are scanned and may be written out.
    ready: usize,
    /// Bytes of the current frame's body not yet scanned (pass-through frames are
    /// forwarded in pieces, so a 50 MB row never needs a 50 MB buffer).
    frame_left: usize,
    /// Written since the last flush (TLS buffers inside the stream).
    unflushed: bool,
    /// Type of the last message whose header was scanned.
    last_tag: u8,
    /// Bytes written and message headers scanned since the last flush to the metrics.
    bytes: u64,
    messages: u64,
}

impl Direction {
    fn new(mut buf: BytesMut) -> Self {
        if buf.capacity() < BUF_SIZE {
            buf.reserve(BUF_SIZE - buf.len());
        }
        Direction {
            buf,
            ready: 0,
            frame_left: 0,
            unflushed: false,
            last_tag: 0,
            bytes: 0,
            messages: 0,
        }
    }

    /// Writes out every ready byte, then flushes.
    fn poll_drain(&mut self, cx: &mut Context<'_>, w: &mut Stream) -> Poll<io::Result<()>> {
        while self.ready > 0 {
            let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[..self.ready]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.advance(n);
            self.ready -= n;
            self.bytes += n as u64;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(w).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more bytes; 0 means end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, r: &mut Stream) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < BUF_SIZE / 4 {
            // Once the buffer has been drained this reclaims the same allocation.
            self.buf.reserve(BUF_SIZE);
        }
        let dst = self.buf.chunk_mut();
        // SAFETY: `ReadBuf` only ever writes initialised bytes into the slice and never
        // de-initialises it; we advance `buf` by exactly the count it reports filled.
        let dst = unsafe { dst.as_uninit_slice_mut() };
        let mut rb = ReadBuf::uninit(dst);
        ready!(Pin::new(r).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        // SAFETY: the first `n` bytes of the spare capacity were just initialised by the read.
        unsafe { self.buf.advance_mut(n) };
        Poll::Ready(Ok(n))
    }

    /// Walks frame headers from `ready` on, marking bytes ready to forward. Frames
    /// the inspector wants whole are passed only once complete, body included (and
    /// mutable, for in-place rewrites); other frames go through in pieces, the
    /// inspector seeing only their tag. The scan stops before a frame the inspector
    /// may not start (the hold gate), or after one it says ends the scan.
    fn scan(&mut self, max_message_len: usize, inspector: &mut impl Inspector) -> Result<(), ScanError> {
        loop {
            let unscanned = self.buf.len() - self.ready;
            if self.frame_left > 0 {
                let n = unscanned.min(self.frame_left);
                self.ready += n;
                self.frame_left -= n;
                if self.frame_left > 0 {
                    return Ok(());
                }
                continue;
            }
            if unscanned == 0 || !inspector.may_start() {
                return Ok(());
            }
            let Some(h) = parse_header(&self.buf[self.ready..], max_message_len).map_err(ScanError::Frame)? else {
                return Ok(());
            };
            let step = if inspector.wants_body(h.tag, h.body_len) {
                if unscanned < h.frame_len() {
                    // Inspected messages are small (or capped by the inspector); the
                    // length was checked above.
                    self.buf.reserve(h.frame_len() - unscanned);
                    return Ok(());
                }
                let frame = &mut self.buf[self.ready..self.ready + h.frame_len()];
                let step = inspector.on_frame(h.tag, frame).map_err(ScanError::Message)?;
                if step != Step::HoldBack {
                    self.ready += h.frame_len();
                }
                step
            } else {
                let step = inspector.on_frame(h.tag, &mut []).map_err(ScanError::Message)?;
                self.ready += HEADER_LEN;
                self.frame_left = h.body_len;
                step
            };
            if step == Step::HoldBack {
                return Ok(());
            }
            self.last_tag = h.tag;
            self.messages += 1;
            if step == Step::Stop {
                return Ok(());
            }
        }
    }
}

/// Protocol knowledge for one direction's [`Direction::scan`].
trait Inspector {
    /// Whether a new message may start being forwarded now.
    fn may_start(&self) -> bool;
    /// Whether a message of this type and size must be seen whole before it is forwarded.
    fn wants_body(&self, tag: u8, body_len: usize) -> bool;
    /// Sees one message: the whole frame (header included) when wanted, else an
    /// empty slice.
    fn on_frame(&mut self, tag: u8, frame: &mut [u8]) -> Result<Step, String>;
}

/// What the scan does after an inspector saw a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Forward it and go on.
    Forward,
    /// Forward it and stop scanning.
    Stop,
    /// Keep it where it is, unforwarded, and stop (only for wanted bodies).
    HoldBack,
}

/// Client to server: counts what will be answered, logs named statements, and
/// holds new transactions back while the gate is closed.
struct ClientSide<'a> {
    tx: &'a mut TxState,
    log: &'a mut StateLog,
    hold: bool,
}

impl Inspector for ClientSide<'_> {
    fn may_start(&self) -> bool {
        // Held sessions finish what they started (the drain) but start nothing new;
        // a server that is going away gets nothing new either.
        !(self.tx.server_leaving || self.hold && self.tx.idle())
    }

    fn wants_body(&self, tag: u8, body_len: usize) -> bool {
        match tag {
            frontend::PARSE | frontend::CLOSE => true,
            frontend::QUERY => body_len <= MAX_INSPECTED_QUERY,
            _ => false,
        }
    }

    fn on_frame(&mut self, tag: u8, frame: &mut [u8]) -> Result<Step, String> {
        let tx = &mut *self.tx;
        match tag {
            frontend::TERMINATE => {
                tx.terminated = true;
                return Ok(Step::Stop);
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
struct ServerSide<'a> {
    tx: &'a mut TxState,
    log: &'a mut StateLog,
    pid_rewrite: Option<PidRewrite>,
}

impl Inspector for ServerSide<'_> {
    fn may_start(&self) -> bool {
        !self.tx.server_leaving
    }

    fn wants_body(&self, tag: u8, _body_len: usize) -> bool {
        match tag {
            backend::READY_FOR_QUERY => true,
            backend::NOTIFICATION_RESPONSE => self.pid_rewrite.is_some(),
            // Unsolicited: the server is about to close the connection.
            backend::ERROR_RESPONSE => self.tx.idle(),
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

enum ScanError {
    Frame(FrameError),
    Message(String),
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
