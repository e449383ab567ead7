//! A connection that arrives while the proxy serves `max_client_conn` clients:
//! refused with FATAL 53300 before any of a session's resources are spent on it
//! (no buffers, no TLS, no authentication), but, as PostgreSQL does even when
//! full, a CancelRequest is still honoured: an overloaded proxy is exactly when
//! clients cancel.

use super::error::SessionError;
use crate::{ClientSlot, Shared};
use bytes::BytesMut;
use pgcutover_protocol::startup::{decode_startup, StartupPacket, CANCEL_REQUEST_CODE};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

/// How long a refused connection may take to send its first packet, and to go.
const LINGER: Duration = Duration::from_secs(1);

/// What a refused connection's first bytes may be: a CancelRequest (16 bytes) is
/// read whole; anything else gets the refusal as soon as its length word shows it
/// is not one.
const CANCEL_LEN: usize = 16;

/// Refuses `tcp`, or forwards its cancel.
pub(crate) async fn over_limit(shared: &Shared, mut tcp: TcpStream, peer: std::net::SocketAddr, slot: ClientSlot) {
    let mut head = [0u8; CANCEL_LEN];
    let mut got = 0;
    let read = async {
        while got < CANCEL_LEN {
            match tcp.read(&mut head[got..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
            let length = (got >= 4).then(|| u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize);
            if length.is_some_and(|l| l != CANCEL_LEN) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, read).await;
    let is_cancel =
        got == CANCEL_LEN && i32::from_be_bytes([head[4], head[5], head[6], head[7]]) == CANCEL_REQUEST_CODE;
    if is_cancel {
        if let Ok(Some(StartupPacket::CancelRequest(key))) = decode_startup(&mut BytesMut::from(&head[..])) {
            drop(slot);
            if let Err(e) = shared.registry.cancel(key, peer.ip()).await {
                debug!(pid = key.pid, "could not forward cancel request: {e}");
            }
        }
        return;
    }
    let mut out = BytesMut::new();
    SessionError::TooManyClients(shared.config.proxy.max_client_conn).write_to(&mut out);
    let _ = tokio::time::timeout(LINGER, async {
        tcp.write_all(&out).await?;
        tcp.shutdown().await?;
        // Read what the client still sends (its startup packet), so that closing
        // does not reset the connection before it has read the refusal.
        let mut sink = [0u8; 512];
        let mut left = 8192usize;
        while left > 0 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    drop(slot);
}
