//! Every live session's public face, by the cancel key its client was given.
//!
//! The session task owns its state; what others need (cancel routing, drain
//! accounting, status) it publishes here through atomics. Clients get BackendKeyData
//! with the real pid of their first server connection and a secret the proxy issues;
//! the registry maps that key to whichever server connection the session has now, so
//! a CancelRequest reaches the right backend after the session moved.

use bytes::BytesMut;
use pgcutover_api::Side;
use pgcutover_protocol::startup::encode_cancel_request;
use pgcutover_protocol::CancelKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Who a session is, for the admin console.
#[derive(Debug, Clone)]
pub struct SessionIdentity {
    /// The client's user.
    pub user: String,
    /// The client's database.
    pub database: String,
    /// The client's address.
    pub peer: SocketAddr,
}

/// What the rest of the proxy may know about one session.
#[derive(Debug)]
pub struct SessionHandle {
    /// Who the session is.
    pub identity: SessionIdentity,
    server: Mutex<(SocketAddr, CancelKey)>,
    /// Work sent to the server and not yet answered: only then may a cancel go through.
    busy: AtomicBool,
    /// Not at a transaction boundary: the drain waits for this to clear.
    in_transaction: AtomicBool,
    target: AtomicU8,
    epoch: AtomicU64,
    /// A route epoch the session will not move to (pinned state under `wait`).
    declined: AtomicU64,
    /// The session holds a logged-in standby connection to the prepared target.
    standby_ready: AtomicBool,
    /// The drain gave up on this session's transaction (drain_policy = cancel).
    terminate: AtomicBool,
    changed: Arc<Changes>,
}

/// Wakes drain and flip waiters when a session's state changes; free when nobody waits,
/// which is always outside a switchover.
#[derive(Debug, Default)]
struct Changes {
    notify: Notify,
    waiters: AtomicUsize,
}

impl Changes {
    fn notify(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// A registered interest in session state changes; see [`SessionRegistry::watch`].
pub struct ChangeWatch<'a> {
    changes: &'a Changes,
}

impl ChangeWatch<'_> {
    /// Resolves at the next change. Create the future before checking the condition
    /// it waits for, so no change is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changes.notify.notified()
    }
}

impl Drop for ChangeWatch<'_> {
    fn drop(&mut self) {
        self.changes.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SessionHandle {
    /// Points cancels at a (new) server connection on `target` as of route `epoch`.
    pub fn set_server(&self, addr: SocketAddr, key: CancelKey, target: Side, epoch: u64) {
        *self.server.lock().expect("session handle lock") = (addr, key);
        self.target.store(target as u8, Ordering::Relaxed);
        self.epoch.store(epoch, Ordering::Release);
        self.changed.notify();
    }

    /// Publishes the session's protocol state; wakes drain and flip waiters when it changes.
    pub fn set_state(&self, busy: bool, in_transaction: bool) {
        self.busy.store(busy, Ordering::Relaxed);
        if self.in_transaction.swap(in_transaction, Ordering::AcqRel) != in_transaction {
            self.changed.notify();
        }
    }

    /// Whether the session is inside a transaction or has work in flight.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Acquire)
    }

    /// The backend pid of the session's current server connection.
    pub fn server_pid(&self) -> i32 {
        self.server.lock().expect("session handle lock").1.pid
    }

    /// The target of the session's current server.
    pub fn target(&self) -> Side {
        match self.target.load(Ordering::Relaxed) {
            0 => Side::Blue,
            _ => Side::Green,
        }
    }

    /// The route epoch the session's current server belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records that the session stays where it is for route `epoch`.
    pub fn decline(&self, epoch: u64) {
        self.declined.store(epoch, Ordering::Release);
        self.changed.notify();
    }

    /// The current server's address and backend pid.
    pub fn server(&self) -> (SocketAddr, i32) {
        let (addr, key) = *self.server.lock().expect("session handle lock");
        (addr, key.pid)
    }

    /// Cancels the query running on the session's current server, if one is.
    pub async fn send_cancel(&self) -> std::io::Result<CancelOutcome> {
        if !self.busy.load(Ordering::Relaxed) {
            return Ok(CancelOutcome::DroppedIdle);
        }
        let (addr, server_key) = *self.server.lock().expect("session handle lock");
        // Servers accept cancels in plaintext whatever the session used, so no TLS here.
        let mut tcp = TcpStream::connect(addr).await?;
        let mut packet = BytesMut::with_capacity(16);
        encode_cancel_request(server_key, &mut packet);
        tcp.write_all(&packet).await?;
        tcp.shutdown().await?;
        Ok(CancelOutcome::Forwarded)
    }

    /// Asks the session to end its open transaction by closing (drain_policy = cancel).
    pub fn request_termination(&self) {
        self.terminate.store(true, Ordering::Release);
    }

    /// Whether the session was asked to end its open transaction.
    pub fn termination_requested(&self) -> bool {
        self.terminate.load(Ordering::Acquire)
    }

    /// Records whether the session holds a ready standby connection.
    pub fn set_standby_ready(&self, ready: bool) {
        if self.standby_ready.swap(ready, Ordering::AcqRel) != ready {
            self.changed.notify();
        }
    }

    /// Whether the session holds a ready standby connection.
    pub fn standby_ready(&self) -> bool {
        self.standby_ready.load(Ordering::Acquire)
    }

    /// The route epoch the session declined to move to, if any (0: none).
    pub fn declined(&self) -> u64 {
        self.declined.load(Ordering::Acquire)
    }
}

/// Every live session, by client cancel key.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<CancelKey, Arc<SessionHandle>>>,
    changed: Arc<Changes>,
}

/// Removes a session from the registry when the session ends.
pub struct Registration {
    registry: Arc<SessionRegistry>,
    /// The key the client was given.
    pub client_key: CancelKey,
    /// The session's entry, to update on reconnects.
    pub handle: Arc<SessionHandle>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .expect("session registry lock")
            .remove(&self.client_key);
        self.registry.changed.notify();
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

impl SessionRegistry {
    /// Registers a session whose first server connection is `server_key` at `addr`
    /// on `target`; the client is given that pid and a fresh random secret.
    pub fn register(
        self: &Arc<Self>,
        addr: SocketAddr,
        server_key: CancelKey,
        target: Side,
        epoch: u64,
        identity: SessionIdentity,
    ) -> Registration {
        let handle = Arc::new(SessionHandle {
            identity,
            server: Mutex::new((addr, server_key)),
            busy: AtomicBool::new(false),
            in_transaction: AtomicBool::new(false),
            target: AtomicU8::new(target as u8),
            epoch: AtomicU64::new(epoch),
            declined: AtomicU64::new(0),
            standby_ready: AtomicBool::new(false),
            terminate: AtomicBool::new(false),
            changed: self.changed.clone(),
        });
        let mut sessions = self.sessions.lock().expect("session registry lock");
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
        sessions.insert(client_key, handle.clone());
        Registration {
            registry: self.clone(),
            client_key,
            handle,
        }
    }

    /// Forwards a client's CancelRequest to the session's current server.
    pub async fn cancel(&self, key: CancelKey) -> std::io::Result<CancelOutcome> {
        let Some(handle) = self.sessions.lock().expect("session registry lock").get(&key).cloned() else {
            return Ok(CancelOutcome::UnknownKey);
        };
        handle.send_cancel().await
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.sessions.lock().expect("session registry lock").len()
    }

    /// A snapshot of every session's handle.
    pub fn handles(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions
            .lock()
            .expect("session registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// Starts watching for session state changes (and sessions ending); until the
    /// watch is dropped, sessions pay for waking it.
    pub fn watch(&self) -> ChangeWatch<'_> {
        self.changed.waiters.fetch_add(1, Ordering::AcqRel);
        ChangeWatch { changes: &self.changed }
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
