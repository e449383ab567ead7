//! Cancel routing. Clients get BackendKeyData with the real pid of their first
//! server connection and a secret the proxy issues; the registry maps that key to
//! whichever server connection the session has now, so a CancelRequest reaches the
//! right backend even after the session's server side has been replaced.

use bytes::BytesMut;
use pgcutover_protocol::startup::encode_cancel_request;
use pgcutover_protocol::CancelKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The part of a session a cancel needs: where its server is, and whether a query
/// is running there at all.
#[derive(Debug)]
pub struct CancelTarget {
    server: Mutex<(SocketAddr, CancelKey)>,
    busy: AtomicBool,
}

impl CancelTarget {
    /// Points cancels at a (new) server connection.
    pub fn set_server(&self, addr: SocketAddr, key: CancelKey) {
        *self.server.lock().expect("cancel target lock") = (addr, key);
    }

    /// Records whether the session has work in flight on its server.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }
}

/// Every live session's cancel key.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<CancelKey, Arc<CancelTarget>>>,
}

/// Removes a session's key from the registry when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    /// The key the client was given.
    pub client_key: CancelKey,
    /// The session's entry, to update on reconnects.
    pub target: Arc<CancelTarget>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .expect("cancel registry lock")
            .remove(&self.client_key);
    }
}

/// What became of a CancelRequest.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Sent to the server.
    Forwarded,
    /// The session was idle: nothing to cancel, and a late cancel could hit its next query.
    DroppedIdle,
    /// No session has this key.
    UnknownKey,
}

impl CancelRegistry {
    /// Registers a session whose first server connection is `server_key` at `addr`;
    /// the client is given that pid and a fresh random secret.
    pub fn register(self: &Arc<Self>, addr: SocketAddr, server_key: CancelKey) -> Registration {
        let target = Arc::new(CancelTarget {
            server: Mutex::new((addr, server_key)),
            busy: AtomicBool::new(false),
        });
        let mut sessions = self.sessions.lock().expect("cancel registry lock");
        let client_key = loop {
            let mut secret = [0u8; 4];
            getrandom::fill(&mut secret).expect("the OS random source is available");
            let key = CancelKey {
                pid: server_key.pid,
                secret: i32::from_ne_bytes(secret),
            };
            if !sessions.contains_key(&key) {
                break key;
            }
        };
        sessions.insert(client_key, target.clone());
        Registration {
            registry: self.clone(),
            client_key,
            target,
        }
    }

    /// Forwards a client's CancelRequest to the session's current server.
    pub async fn cancel(&self, key: CancelKey) -> std::io::Result<CancelOutcome> {
        let Some(target) = self.sessions.lock().expect("cancel registry lock").get(&key).cloned() else {
            return Ok(CancelOutcome::UnknownKey);
        };
        if !target.busy.load(Ordering::Relaxed) {
            return Ok(CancelOutcome::DroppedIdle);
        }
        let (addr, server_key) = *target.server.lock().expect("cancel target lock");
        // Servers accept cancels in plaintext whatever the session used, so no TLS here.
        let mut tcp = TcpStream::connect(addr).await?;
        let mut packet = BytesMut::with_capacity(16);
        encode_cancel_request(server_key, &mut packet);
        tcp.write_all(&packet).await?;
        tcp.shutdown().await?;
        Ok(CancelOutcome::Forwarded)
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.sessions.lock().expect("cancel registry lock").len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
