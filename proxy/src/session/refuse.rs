//! A connection that arrives while the proxy serves `max_client_conn` clients:
//! refused with FATAL 53300 before any of a session's resources are spent on it
//! (no buffers, no TLS, no authentication), but, as PostgreSQL does even when
//! full, a CancelRequest is still honoured: an overloaded proxy is exactly when
//! clients cancel.

use super::error::SessionError;
use crate::{ClientSlot, Shared};
use bytes::BytesMut;
use pgcutover_protocol::startup::{decode_startup, StartupPacket, CANCEL_REQUEST_CODE, MAX_CANCEL_SECRET_WIRE_LEN};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

/// How long a refused connection may take to send its first packet, and to go.
const LINGER: Duration = Duration::from_secs(1);

/// The longest CancelRequest: length, code, pid and a 256-byte protocol 3.2 secret.
const MAX_CANCEL_LEN: usize = 12 + MAX_CANCEL_SECRET_WIRE_LEN;

/// Refuses `tcp`, or forwards its cancel.
pub(crate) async fn over_limit(shared: &Shared, mut tcp: TcpStream, peer: std::net::SocketAddr, slot: ClientSlot) {
    // Only a CancelRequest is read whole; anything else gets the refusal as soon as
    // its first 8 bytes (length and code) show it is not one.
    let mut head = [0u8; MAX_CANCEL_LEN];
    let mut got = 0;
    let is_cancel = |head: &[u8]| i32::from_be_bytes([head[4], head[5], head[6], head[7]]) == CANCEL_REQUEST_CODE;
    let read = async {
        loop {
            let want = match got {
                0..8 => 8,
                _ if !is_cancel(&head) => return,
                _ => match u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize {
                    len if len > MAX_CANCEL_LEN || got >= len => return,
                    len => len,
                },
            };
            match tcp.read(&mut head[got..want]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, read).await;
    if got >= 8 && is_cancel(&head) {
        // As PostgreSQL: a cancel is never answered, whether it was well formed or not.
        drop(slot);
        if let Ok(Some(StartupPacket::CancelRequest(key))) = decode_startup(&mut BytesMut::from(&head[..got])) {
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
