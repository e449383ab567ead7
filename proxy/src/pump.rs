//! The steady-state data path: bytes flow both ways through one reused buffer per
//! direction, read once from one socket and written once to the other. Frame
//! headers are walked in place to follow the protocol (where messages start, which
//! ones end a pipeline, what ReadyForQuery says) without decoding bodies; only
//! ReadyForQuery is read whole. Both directions are driven from one `poll` so a
//! blocked write on one side never stops the other side from draining, and all
//! state lives in [`Pump`], which makes [`Pump::run`] cancel-safe: a session can
//! `select!` on it and call it again.

use crate::cancel::CancelTarget;
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
    /// for which `wants_body` is true are only passed once whole, to `on_frame` with
    /// their body; other frames go through in pieces, `on_frame` seeing only their
    /// tag. `on_frame` returns false to stop scanning after that frame.
    fn scan(
        &mut self,
        max_message_len: usize,
        wants_body: impl Fn(u8) -> bool,
        mut on_frame: impl FnMut(u8, &[u8]) -> Result<bool, String>,
    ) -> Result<(), ScanError> {
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
            let Some(h) = parse_header(&self.buf[self.ready..], max_message_len).map_err(ScanError::Frame)? else {
                return Ok(());
            };
            self.last_tag = h.tag;
            let go_on = if wants_body(h.tag) {
                if unscanned < h.frame_len() {
                    // Inspected messages are small; the length was checked above.
                    self.buf.reserve(h.frame_len() - unscanned);
                    return Ok(());
                }
                let body = &self.buf[self.ready + HEADER_LEN..self.ready + h.frame_len()];
                let go_on = on_frame(h.tag, body).map_err(ScanError::Message)?;
                self.ready += h.frame_len();
                go_on
            } else {
                let go_on = on_frame(h.tag, &[]).map_err(ScanError::Message)?;
                self.ready += HEADER_LEN;
                self.frame_left = h.body_len;
                go_on
            };
            if !go_on {
                return Ok(());
            }
        }
    }
}

enum ScanError {
    Frame(FrameError),
    Message(String),
}

/// Forwards one session's traffic between its client and its server.
pub struct Pump {
    c2s: Direction,
    s2c: Direction,
    tx: TxState,
    max_message_len: usize,
    cancel: Arc<CancelTarget>,
}

impl Pump {
    /// Starts pumping with whatever the login left in each side's read buffer.
    pub fn new(
        client_rbuf: BytesMut,
        server_rbuf: BytesMut,
        max_message_len: usize,
        cancel: Arc<CancelTarget>,
    ) -> Pump {
        Pump {
            c2s: Direction::new(client_rbuf),
            s2c: Direction::new(server_rbuf),
            tx: TxState {
                status: TransactionStatus::Idle,
                awaiting_ready: 0,
                open_pipeline: false,
                terminated: false,
            },
            max_message_len,
            cancel,
        }
    }

    /// Whether the session is idle and every byte it had was delivered both ways, so
    /// nothing is lost by stopping here.
    pub fn at_boundary(&self) -> bool {
        self.tx.idle()
            && self.c2s.buf.is_empty()
            && self.s2c.ready == 0
            && self.s2c.frame_left == 0
            && !self.s2c.unflushed
    }

    /// Whether the proxy may write a message of its own to the client now without
    /// cutting one of the server's messages in half.
    pub fn client_at_message_boundary(&self) -> bool {
        self.s2c.ready == 0 && self.s2c.frame_left == 0
    }

    /// Whether the last message the server sent was an ErrorResponse: after it
    /// closes, that error (e.g. 57P01 from pg_terminate_backend) is the whole story.
    pub fn server_said_error_last(&self) -> bool {
        self.s2c.last_tag == backend::ERROR_RESPONSE
    }

    /// Forwards until one side ends, or, when `stop_at_boundary`, until the session
    /// is [at a boundary](Self::at_boundary).
    pub async fn run(
        &mut self,
        client: &mut Stream,
        server: &mut Stream,
        stop_at_boundary: bool,
    ) -> Result<PumpEnd, PumpError> {
        poll_fn(|cx| self.poll_run(cx, client, server, stop_at_boundary)).await
    }

    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        server: &mut Stream,
        stop_at_boundary: bool,
    ) -> Poll<Result<PumpEnd, PumpError>> {
        if let Poll::Ready(r) = self.poll_client_to_server(cx, client, server) {
            return Poll::Ready(r);
        }
        if let Poll::Ready(r) = self.poll_server_to_client(cx, server, client) {
            return Poll::Ready(r);
        }
        if stop_at_boundary && self.at_boundary() {
            return Poll::Ready(Ok(PumpEnd::AtBoundary));
        }
        Poll::Pending
    }

    fn poll_client_to_server(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        server: &mut Stream,
    ) -> Poll<Result<PumpEnd, PumpError>> {
        loop {
            ready!(self.c2s.poll_drain(cx, server)).map_err(PumpError::ServerIo)?;
            if self.tx.terminated {
                return Poll::Ready(Ok(PumpEnd::ClientTerminated));
            }
            let was_busy = self.tx.in_flight();
            let tx = &mut self.tx;
            self.c2s
                .scan(
                    self.max_message_len,
                    |_| false,
                    |tag, _| {
                        match tag {
                            frontend::TERMINATE => {
                                tx.terminated = true;
                                return Ok(false);
                            }
                            t if frontend::ends_with_ready_for_query(t) => {
                                tx.awaiting_ready += 1;
                                tx.open_pipeline = false;
                            }
                            frontend::PARSE
                            | frontend::BIND
                            | frontend::DESCRIBE
                            | frontend::EXECUTE
                            | frontend::CLOSE
                            | frontend::FLUSH => tx.open_pipeline = true,
                            // COPY data and anything else belongs to a message already counted.
                            _ => {}
                        }
                        Ok(true)
                    },
                )
                .map_err(|e| match e {
                    ScanError::Frame(f) => PumpError::ClientProtocol(f),
                    ScanError::Message(m) => PumpError::ServerProtocol(m),
                })?;
            self.note_busy(was_busy);
            if self.c2s.ready > 0 || self.tx.terminated {
                continue;
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
            let was_busy = self.tx.in_flight();
            let tx = &mut self.tx;
            self.s2c
                .scan(
                    self.max_message_len,
                    |tag| tag == backend::READY_FOR_QUERY,
                    |tag, body| {
                        if tag == backend::READY_FOR_QUERY {
                            tx.status = backend::parse_ready_for_query(body).map_err(|e| e.to_string())?;
                            tx.awaiting_ready = tx.awaiting_ready.saturating_sub(1);
                        }
                        Ok(true)
                    },
                )
                .map_err(|e| match e {
                    ScanError::Frame(f) => PumpError::ServerProtocol(f.to_string()),
                    ScanError::Message(m) => PumpError::ServerProtocol(m),
                })?;
            self.note_busy(was_busy);
            if self.s2c.ready > 0 {
                continue;
            }
            let n = ready!(self.s2c.poll_fill(cx, server)).map_err(PumpError::ServerIo)?;
            if n == 0 {
                return Poll::Ready(Ok(PumpEnd::ServerClosed));
            }
        }
    }

    fn note_busy(&self, was_busy: bool) {
        let busy = self.tx.in_flight();
        if busy != was_busy {
            self.cancel.set_busy(busy);
        }
    }
}
