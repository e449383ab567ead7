//! Every live session's public face, by the cancel key its client was given.
//!
//! The session task owns its state; what others need (cancel routing, drain
//! accounting, status) it publishes here as one [`SessionStatus`], written as a
//! whole about once per transaction. Clients get BackendKeyData
//! with the real pid of their first server connection and a secret the proxy issues;
//! the registry maps that key to whichever server connection the session has now, so
//! a CancelRequest reaches the right backend after the session moved.

use crate::guesses::Guesses;
use bytes::BytesMut;
use pgcutover_api::Side;
use pgcutover_protocol::startup::encode_cancel_request;
use pgcutover_protocol::{CancelKey, CancelSecret};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

/// How long forwarding one CancelRequest may take, connect included: a server
/// that does not answer must not hold a client slot or stall a drain.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Where a session stands in its protocol exchange, as the drain and cancels need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPhase {
    /// At a transaction boundary with nothing in flight.
    Idle,
    /// Inside a transaction, nothing sent and unanswered.
    Open,
    /// Work sent to the server and not yet answered: only then may a cancel go through.
    Busy,
}

/// One session's published state, written and read as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStatus {
    /// The target of the session's current server.
    pub side: Side,
    /// The route epoch that server belongs to.
    pub epoch: u64,
    /// Where cancels for the session go: the server's address and its own cancel key.
    pub server: (SocketAddr, CancelKey),
    /// Where the session stands; the drain waits for [`TxPhase::Idle`].
    pub tx: TxPhase,
    /// The session holds a logged-in standby connection to the prepared target.
    pub standby: bool,
    /// A route epoch the session will not move to (pinned state under `wait`).
    pub declined: Option<u64>,
}

impl SessionStatus {
    /// Whether the session is inside a transaction or has work in flight.
    pub fn in_transaction(&self) -> bool {
        self.tx != TxPhase::Idle
    }
}

/// What the control asks of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Nothing.
    None,
    /// End the open transaction by closing (the drain gave up on it, drain_policy = cancel).
    EndTransaction,
}

/// What the rest of the proxy may know about one session.
#[derive(Debug)]
pub struct SessionHandle {
    /// Who the session is.
    pub identity: SessionIdentity,
    status: Mutex<SessionStatus>,
    orders: watch::Sender<Order>,
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
    fn lock(&self) -> MutexGuard<'_, SessionStatus> {
        // The status is plain data, whole after every write: a panic elsewhere cannot tear it.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the status in one step and wakes drain and flip waiters if `wakes`
    /// says the change matters to them.
    fn update(
        &self,
        change: impl FnOnce(&mut SessionStatus),
        wakes: impl FnOnce(&SessionStatus, &SessionStatus) -> bool,
    ) {
        let mut status = self.lock();
        let was = *status;
        change(&mut status);
        let wake = wakes(&was, &status);
        drop(status);
        if wake {
            self.changed.notify();
        }
    }

    /// The session's status at one moment.
    pub fn status(&self) -> SessionStatus {
        *self.lock()
    }

    /// Points cancels at a (new) server connection on `side` as of route `epoch`.
    pub fn set_server(&self, addr: SocketAddr, key: CancelKey, side: Side, epoch: u64) {
        let change = |s: &mut SessionStatus| {
            s.server = (addr, key);
            s.side = side;
            s.epoch = epoch;
        };
        self.update(change, |_, _| true);
    }

    /// Publishes where the session stands; wakes drain and flip waiters when it
    /// enters or leaves a transaction.
    pub fn set_tx(&self, tx: TxPhase) {
        self.update(|s| s.tx = tx, |was, now| was.in_transaction() != now.in_transaction());
    }

    /// Whether the session is inside a transaction or has work in flight.
    pub fn in_transaction(&self) -> bool {
        self.lock().in_transaction()
    }

    /// The target of the session's current server.
    pub fn target(&self) -> Side {
        self.lock().side
    }

    /// Records that the session stays where it is for route `epoch`.
    pub fn decline(&self, epoch: u64) {
        self.update(|s| s.declined = Some(epoch), |_, _| true);
    }

    /// Cancels the query running on the session's current server, if one is.
    pub async fn send_cancel(&self) -> std::io::Result<CancelOutcome> {
        let status = self.status();
        if status.tx != TxPhase::Busy {
            return Ok(CancelOutcome::DroppedIdle);
        }
        let (addr, server_key) = status.server;
        // Bounded: the caller holds a client slot, and the drain waits for every cancel.
        match tokio::time::timeout(CANCEL_TIMEOUT, forward_cancel(addr, server_key)).await {
            Ok(sent) => sent.map(|()| CancelOutcome::Forwarded),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the server at {addr} did not take the cancel request within {CANCEL_TIMEOUT:?}"),
            )),
        }
    }

    /// Asks the session to end its open transaction by closing (drain_policy = cancel).
    pub fn order(&self, order: Order) {
        self.orders.send_replace(order);
    }

    /// Where the session receives its orders.
    pub fn orders(&self) -> watch::Receiver<Order> {
        self.orders.subscribe()
    }

    /// Records whether the session holds a ready standby connection.
    pub fn set_standby_ready(&self, ready: bool) {
        self.update(|s| s.standby = ready, |was, now| was.standby != now.standby);
    }
}

/// Sends a CancelRequest for `key` to the server at `addr`.
async fn forward_cancel(addr: SocketAddr, key: CancelKey) -> std::io::Result<()> {
    // Servers accept cancels in plaintext whatever the session used, so no TLS here.
    let mut tcp = TcpStream::connect(addr).await?;
    let mut packet = BytesMut::with_capacity(16);
    encode_cancel_request(key, &mut packet);
    tcp.write_all(&packet).await?;
    tcp.shutdown().await
}

/// Every live session, by client cancel key.
#[derive(Debug)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<CancelKey, Arc<SessionHandle>>>,
    changed: Arc<Changes>,
    /// Cancel requests with a key no session has, per client address: someone
    /// guessing keys.
    unknown_cancels: Guesses,
}

/// Unknown-key cancel requests an address may send per [`CANCEL_GUESS_WINDOW`];
/// beyond them its cancel requests are dropped unread until the window ends.
const CANCEL_GUESSES: u32 = 10;
/// See [`CANCEL_GUESSES`].
const CANCEL_GUESS_WINDOW: Duration = Duration::from_secs(10);

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
        // Never a panic here: this runs while a session unwinds, too.
        self.registry.lock().remove(&self.client_key);
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
    /// Its address sent too many unknown keys lately: not even looked up.
    Limited,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        SessionRegistry {
            sessions: Mutex::default(),
            changed: Arc::default(),
            unknown_cancels: Guesses::new(CANCEL_GUESSES, CANCEL_GUESS_WINDOW),
        }
    }
}

impl SessionRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<CancelKey, Arc<SessionHandle>>> {
        // A map insert or remove cannot leave it half-written: a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a session whose first server connection is `server_key` at `addr`
    /// on `target`; the client is given that pid and a fresh random secret of
    /// `secret_len` bytes (4, or 32 under protocol 3.2).
    pub fn register(
        self: &Arc<Self>,
        (addr, server_key): (SocketAddr, CancelKey),
        target: Side,
        epoch: u64,
        identity: SessionIdentity,
        secret_len: usize,
    ) -> Registration {
        let handle = Arc::new(SessionHandle {
            identity,
            status: Mutex::new(SessionStatus {
                side: target,
                epoch,
                server: (addr, server_key),
                tx: TxPhase::Idle,
                standby: false,
                declined: None,
            }),
            orders: watch::Sender::new(Order::None),
            changed: self.changed.clone(),
        });
        let mut sessions = self.lock();
        let client_key = loop {
            let secret = CancelSecret::generate(secret_len, |bytes| {
                getrandom::fill(bytes).expect("the OS random source is available")
            });
            let key = CancelKey {
                pid: server_key.pid,
                secret,
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
    pub async fn cancel(&self, key: CancelKey, peer: IpAddr) -> std::io::Result<CancelOutcome> {
        if self.unknown_cancels.over(peer) {
            return Ok(CancelOutcome::Limited);
        }
        let Some(handle) = self.lock().get(&key).cloned() else {
            // The first unknown key of a window is logged; guessing is, once.
            match self.unknown_cancels.failed(peer) {
                true => {
                    warn!(%peer, "cancel requests with unknown keys: {CANCEL_GUESSES} in {CANCEL_GUESS_WINDOW:?}; dropping this address's cancels for the rest of that time")
                }
                false => info!(%peer, pid = key.pid, "cancel request with a key no session has"),
            }
            return Ok(CancelOutcome::UnknownKey);
        };
        handle.send_cancel().await
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// A snapshot of every session's handle.
    pub fn handles(&self) -> Vec<Arc<SessionHandle>> {
        self.lock().values().cloned().collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn register_with(registry: &Arc<SessionRegistry>, secret_len: usize) -> Registration {
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let identity = SessionIdentity {
            user: "u".into(),
            database: "d".into(),
            peer: addr,
        };
        registry.register((addr, CancelKey::short(7, 1)), Side::Blue, 0, identity, secret_len)
    }

    fn register(registry: &Arc<SessionRegistry>) -> Registration {
        register_with(registry, CancelSecret::SHORT)
    }

    /// Its secret with one bit of byte `i` flipped.
    fn flipped(key: CancelKey, i: usize) -> CancelKey {
        let mut wire = key.secret.held().to_vec();
        let byte = (i / 8) % wire.len();
        wire[byte] ^= 1 << (i % 8);
        CancelKey {
            secret: CancelSecret::from_wire(&wire).unwrap(),
            ..key
        }
    }

    #[tokio::test]
    async fn protocol_3_2_sessions_get_32_byte_secrets_and_only_the_whole_one_matches() {
        let registry = Arc::new(SessionRegistry::default());
        let long = register_with(&registry, CancelSecret::MAX);
        let short = register(&registry);
        assert_eq!(long.client_key.secret.len(), 32);
        assert_eq!(short.client_key.secret.len(), 4);
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        // A 4-byte prefix of the long secret, or the long one with a bit flipped
        // anywhere in it, is another key.
        let prefix = CancelKey {
            secret: CancelSecret::from_wire(&long.client_key.secret.held()[..4]).unwrap(),
            ..long.client_key
        };
        assert_eq!(registry.cancel(prefix, peer).await.unwrap(), CancelOutcome::UnknownKey);
        assert_eq!(
            registry.cancel(flipped(long.client_key, 31), peer).await.unwrap(),
            CancelOutcome::UnknownKey
        );
        assert_eq!(
            registry.cancel(long.client_key, peer).await.unwrap(),
            CancelOutcome::DroppedIdle
        );
    }

    #[tokio::test]
    async fn an_address_guessing_cancel_keys_is_cut_off_and_no_other() {
        let registry = Arc::new(SessionRegistry::default());
        let session = register(&registry);
        let guesser: IpAddr = "10.0.0.9".parse().unwrap();
        for guess in 0..CANCEL_GUESSES {
            let key = flipped(session.client_key, guess as usize);
            let outcome = registry.cancel(key, guesser).await.unwrap();
            assert!(matches!(outcome, CancelOutcome::UnknownKey), "{outcome:?}");
        }
        // Even the right key is no longer looked up for that address...
        let outcome = registry.cancel(session.client_key, guesser).await.unwrap();
        assert!(matches!(outcome, CancelOutcome::Limited), "{outcome:?}");
        // ...while everyone else's cancels go on as before.
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        let outcome = registry.cancel(session.client_key, other).await.unwrap();
        assert!(matches!(outcome, CancelOutcome::DroppedIdle), "{outcome:?}");
    }

    #[test]
    fn a_move_is_seen_whole() {
        let registry = Arc::new(SessionRegistry::default());
        let r = register(&registry);
        let green: SocketAddr = "127.0.0.2:5433".parse().unwrap();
        r.handle.set_server(green, CancelKey::short(9, 3), Side::Green, 4);
        let s = r.handle.status();
        assert_eq!(
            (s.side, s.epoch, s.server.0, s.server.1.pid),
            (Side::Green, 4, green, 9)
        );
        assert_eq!(s.declined, None);
        r.handle.decline(5);
        assert_eq!(r.handle.status().declined, Some(5));
    }

    #[tokio::test]
    async fn an_idle_session_is_not_cancelled_and_orders_reach_it() {
        let registry = Arc::new(SessionRegistry::default());
        let r = register(&registry);
        assert_eq!(r.handle.send_cancel().await.unwrap(), CancelOutcome::DroppedIdle);
        let mut orders = r.handle.orders();
        r.handle.order(Order::EndTransaction);
        orders.changed().await.unwrap();
        assert_eq!(*orders.borrow_and_update(), Order::EndTransaction);
    }

    #[test]
    fn a_poisoned_registry_still_registers_and_removes() {
        let registry = Arc::new(SessionRegistry::default());
        let poisoner = registry.clone();
        let _ = std::thread::spawn(move || {
            let _held = poisoner.sessions.lock().unwrap();
            panic!("poison the registry lock");
        })
        .join();
        assert!(registry.sessions.is_poisoned());
        let r = register(&registry);
        assert_eq!(registry.len(), 1);
        drop(r);
        assert!(registry.is_empty(), "Drop must remove the session, not panic");
    }
}
