//! Whole-message I/O for the login phases (client startup and authentication,
//! server login), where convenience beats the pump's zero-copy walk.

use crate::buffers;
use crate::stream::Stream;
use bytes::BytesMut;
use pgcutover_protocol::frame::{decode_frame, Frame, FrameError};
use pgcutover_protocol::startup::{decode_startup, StartupError, StartupPacket};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Eof,
    /// Bad frame header.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// Bad startup packet.
    #[error("{0}")]
    Startup(#[from] StartupError),
}

/// A connection with its read buffer and a write buffer for batched replies.
pub struct Conn {
    /// The socket.
    pub stream: Stream,
    /// Bytes read but not yet consumed; handed to the pump after login.
    pub rbuf: BytesMut,
    /// Messages built but not yet sent.
    pub wbuf: BytesMut,
    max_message_len: usize,
}

impl Conn {
    /// Wraps a stream.
    pub fn new(stream: Stream, max_message_len: usize) -> Conn {
        Conn {
            stream,
            rbuf: buffers::lend(),
            wbuf: BytesMut::with_capacity(1024),
            max_message_len,
        }
    }

    async fn fill(&mut self) -> Result<(), WireError> {
        if self.rbuf.is_empty() {
            buffers::renew(&mut self.rbuf);
        } else {
            self.rbuf.reserve(buffers::BUF_SIZE.min(self.max_message_len.max(1024)));
        }
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err(WireError::Eof);
        }
        Ok(())
    }

    /// Reads one whole tagged message.
    pub async fn read_frame(&mut self) -> Result<Frame, WireError> {
        loop {
            if let Some(f) = decode_frame(&mut self.rbuf, self.max_message_len)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Reads one untagged startup-phase packet.
    pub async fn read_startup(&mut self) -> Result<StartupPacket, WireError> {
        loop {
            if let Some(p) = decode_startup(&mut self.rbuf)? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// Sends everything in the write buffer.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.flush().await
    }

    /// Drops the buffers while nothing is in them, for a connection about to sit
    /// idle or be read by the pump (which borrows its own); the next read or
    /// message built takes new ones.
    pub fn release_buffers(&mut self) {
        if self.rbuf.is_empty() {
            buffers::give_back(std::mem::take(&mut self.rbuf));
        }
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
    }

    /// Sends raw bytes (e.g. the one-byte SSLRequest answer) after anything queued.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wbuf.extend_from_slice(bytes);
        self.flush().await
    }
}
