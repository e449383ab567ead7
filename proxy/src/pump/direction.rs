//! One direction of the pump: its buffer, reading into it, writing it out, and
//! walking frame headers in place to find what may be forwarded.

use crate::buffers::{self, BUF_SIZE};
use crate::stream::Stream;
use bytes::{Buf, BytesMut};
use pgcutover_protocol::frame::{parse_header, FrameError, HEADER_LEN};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

/// One direction's buffer and its position in the frame stream.
pub(super) struct Direction {
    pub(super) buf: BytesMut,
    /// Bytes at the front of `buf` that are scanned and may be written out.
    pub(super) ready: usize,
    /// Bytes of the current frame's body not yet scanned (pass-through frames are
    /// forwarded in pieces, so a 50 MB row never needs a 50 MB buffer).
    pub(super) frame_left: usize,
    /// Written since the last flush (TLS buffers inside the stream).
    pub(super) unflushed: bool,
    /// Type of the last message whose header was scanned.
    pub(super) last_tag: u8,
    /// Bytes written and message headers scanned since the last flush to the metrics.
    pub(super) bytes: u64,
    pub(super) messages: u64,
}

impl Direction {
    pub(super) fn new(mut buf: BytesMut) -> Self {
        if buf.is_empty() {
            buffers::give_back(std::mem::take(&mut buf));
        } else if buf.capacity() < BUF_SIZE {
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
    pub(super) fn poll_drain(&mut self, cx: &mut Context<'_>, w: &mut Stream) -> Poll<io::Result<()>> {
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

    /// Reads more bytes; 0 means end of stream. With nothing left in the buffer, a
    /// plain socket is waited on without one (see [`buffers`]); TLS may hold
    /// decrypted bytes the socket's readiness does not show, so it keeps its buffer.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>, r: &mut Stream) -> Poll<io::Result<usize>> {
        if let (true, Stream::Plain(tcp)) = (self.buf.is_empty(), &*r) {
            buffers::give_back(std::mem::take(&mut self.buf));
            loop {
                ready!(tcp.poll_read_ready(cx))?;
                let mut buf = buffers::lend();
                match tcp.try_read_buf(&mut buf) {
                    Ok(n) => {
                        self.buf = buf;
                        return Poll::Ready(Ok(n));
                    }
                    Err(e) => {
                        buffers::give_back(buf);
                        // WouldBlock: the readiness was stale; try_read_buf cleared
                        // it, so the next poll_read_ready registers this task's waker.
                        if e.kind() != io::ErrorKind::WouldBlock {
                            return Poll::Ready(Err(e));
                        }
                    }
                }
            }
        }
        if self.buf.is_empty() {
            buffers::renew(&mut self.buf);
        } else if self.buf.capacity() - self.buf.len() < BUF_SIZE / 4 {
            // Once the buffer has been drained this reclaims the same allocation.
            self.buf.reserve(BUF_SIZE);
        }
        // Safe code: poll_read_buf advances the buffer by exactly what the read filled.
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(r), cx, &mut self.buf))?;
        Poll::Ready(Ok(n))
    }

    /// Walks frame headers from `ready` on, marking bytes ready to forward. Frames
    /// the inspector wants whole are passed only once complete, body included (and
    /// mutable, for in-place rewrites); other frames go through in pieces, the
    /// inspector seeing only their tag. The scan stops before a frame the inspector
    /// may not start (the hold gate), or after one it says ends the scan.
    pub(super) fn scan(&mut self, max_message_len: usize, inspector: &mut impl Inspector) -> Result<(), ScanError> {
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
            if unscanned == 0 || !inspector.may_scan(self.buf[self.ready]) {
                return Ok(());
            }
            let Some(h) = parse_header(&self.buf[self.ready..], max_message_len).map_err(ScanError::Frame)? else {
                return Ok(());
            };
            let step = if inspector.wants_body(h.tag, h.body_len) {
                if unscanned < h.frame_len() {
                    // Inspected messages are capped by the inspector (wants_body), so
                    // this reserves little; the length was checked above too.
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
pub(super) trait Inspector {
    /// Whether a new message may start being forwarded now.
    fn may_start(&self) -> bool;
    /// Whether the next message, of type `tag`, may be scanned now: what
    /// [`may_start`](Self::may_start) says, unless the type starts nothing.
    fn may_scan(&self, tag: u8) -> bool {
        let _ = tag;
        self.may_start()
    }
    /// Whether a message of this type and size must be seen whole before it is forwarded.
    fn wants_body(&self, tag: u8, body_len: usize) -> bool;
    /// Sees one message: the whole frame (header included) when wanted, else an
    /// empty slice.
    fn on_frame(&mut self, tag: u8, frame: &mut [u8]) -> Result<Step, String>;
}

/// What the scan does after an inspector saw a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Forward it and go on.
    Forward,
    /// Forward it and stop scanning.
    Stop,
    /// Keep it where it is, unforwarded, and stop (only for wanted bodies).
    HoldBack,
}

/// Why a scan stopped short.
pub(super) enum ScanError {
    Frame(FrameError),
    Message(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn an_empty_direction_waits_for_bytes_without_holding_a_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut stream = Stream::Plain(listener.accept().await.unwrap().0);
        let mut d = Direction::new(BytesMut::new());
        assert_eq!(
            d.buf.capacity(),
            0,
            "a session starting with nothing to forward holds no buffer"
        );

        for message in [&b"hello"[..], b"again"] {
            peer.write_all(message).await.unwrap();
            let n = poll_fn(|cx| d.poll_fill(cx, &mut stream)).await.unwrap();
            assert_eq!(&d.buf[..n], message);
            d.buf.advance(n);
            let waiting = poll_fn(|cx| Poll::Ready(d.poll_fill(cx, &mut stream).is_pending())).await;
            assert!(waiting, "nothing more was sent");
            assert_eq!(
                d.buf.capacity(),
                0,
                "the emptied buffer went back while the socket is quiet"
            );
        }
        drop(peer);
        assert_eq!(
            poll_fn(|cx| d.poll_fill(cx, &mut stream)).await.unwrap(),
            0,
            "end of stream still reads as 0"
        );
    }
}
