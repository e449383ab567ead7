//! Entry points for the fuzz targets in `proxy/fuzz/`; built only with the
//! `fuzzing` feature, and no part of the proxy's API.
//!
//! [`pump`] runs the pump's frame walker (`Direction::scan` in `pump/direction.rs`)
//! with the real inspectors (`pump/inspect.rs`) over bytes that arrive in reads of
//! any size, both directions sharing one [`TxState`] and one [`StateLog`] as in
//! [`crate::pump::Pump`].
//!
//! Those modules are private to `pump`, so this module compiles the same two source
//! files once more as its own children (`#[path]`), next to the `TxState` they
//! expect as `super::TxState`: the code under test is exactly the pump's, without
//! widening its visibility for the fuzzer.
#![doc(hidden)]

use crate::pump::TxState;
use crate::state_log::StateLog;
use pgcutover_protocol::backend::TransactionStatus;

#[allow(dead_code)] // poll_drain and poll_fill: sockets are not fuzzed
#[path = "pump/direction.rs"]
mod direction;
#[allow(dead_code)]
#[path = "pump/inspect.rs"]
mod inspect;

use bytes::Buf;
use direction::{Direction, Inspector, ScanError};
use inspect::{ClientSide, ServerSide};

pub use crate::pump::PidRewrite;

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the client to the server (the `ClientSide` inspector).
    ClientToServer,
    /// From the server to the client (the `ServerSide` inspector).
    ServerToClient,
}

/// One read from a socket.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    /// The direction the bytes arrived on.
    pub way: Way,
    /// What the read returned (may be empty: a scan with nothing new).
    pub bytes: &'a [u8],
    /// The run's hold (`RunMode::hold`) for the client side's scans after this read.
    pub hold: bool,
}

/// What one scan left, shown to [`pump`]'s callback after every scan.
#[derive(Debug)]
pub struct Scanned<'a> {
    /// The direction scanned.
    pub way: Way,
    /// Bytes read on this direction so far.
    pub fed: usize,
    /// Bytes of this direction forwarded (written out) before this scan.
    pub forwarded: usize,
    /// Bytes the scan marked ready: the front `ready` bytes of `buffered` are
    /// written out next.
    pub ready: usize,
    /// The direction's whole buffer after the scan.
    pub buffered: &'a [u8],
    /// Body bytes of a pass-through frame not yet seen.
    pub frame_left: usize,
    /// Whether the inspector would start a new message now (false while the hold
    /// gate is closed or the server is leaving).
    pub may_start: bool,
    /// The session's protocol state after the scan.
    pub tx: TxState,
    /// The client sent Terminate.
    pub terminated: bool,
    /// The scan failed (the session would end with this error).
    pub error: Option<String>,
}

/// How [`pump`] ended.
#[derive(Debug)]
pub struct Pumped {
    /// The session's protocol state at the end.
    pub tx: TxState,
    /// The client sent Terminate (and the pump stopped there).
    pub terminated: bool,
    /// The scan error that stopped the pump, if one did.
    pub error: Option<String>,
    /// The session-state log the inspectors kept.
    pub log: StateLog,
}

/// Feeds `reads` to the two directions of a pump as [`crate::pump::Pump`] does:
/// each read is appended to its direction's buffer, then that direction is
/// scanned, and what the scan marked ready is written out (here: dropped from the
/// front of the buffer), again and again until a scan marks nothing. Stops at the
/// first scan error, and at a Terminate, as the pump does.
/// `on_scan` sees the state after every scan.
pub fn pump<'a>(
    reads: impl IntoIterator<Item = Read<'a>>,
    max_message_len: usize,
    pid_rewrite: Option<PidRewrite>,
    mut on_scan: impl FnMut(&Scanned<'_>),
) -> Pumped {
    let mut tx = TxState {
        status: TransactionStatus::Idle,
        awaiting_ready: 0,
        open_pipeline: false,
        terminated: false,
        server_leaving: false,
    };
    let mut log = StateLog::default();
    let rewrite = pid_rewrite.map(|r| inspect::PidRewrite {
        server_pid: r.server_pid,
        client_pid: r.client_pid,
    });
    let mut c2s = Side::new();
    let mut s2c = Side::new();
    let mut error = None;
    'reads: for read in reads {
        let side = match read.way {
            Way::ClientToServer => &mut c2s,
            Way::ServerToClient => &mut s2c,
        };
        side.dir.buf.extend_from_slice(read.bytes);
        side.fed += read.bytes.len();
        loop {
            let (result, may_start) = match read.way {
                Way::ClientToServer => {
                    let mut inspector = ClientSide {
                        tx: &mut tx,
                        log: &mut log,
                        hold: read.hold,
                    };
                    let r = side.dir.scan(max_message_len, &mut inspector);
                    (r, inspector.may_start())
                }
                Way::ServerToClient => {
                    let mut inspector = ServerSide {
                        tx: &mut tx,
                        log: &mut log,
                        pid_rewrite: rewrite,
                    };
                    let r = side.dir.scan(max_message_len, &mut inspector);
                    (r, inspector.may_start())
                }
            };
            let scan_error = result.err().map(|e| match e {
                ScanError::Frame(f) => f.to_string(),
                ScanError::Message(m) => m,
            });
            on_scan(&Scanned {
                way: read.way,
                fed: side.fed,
                forwarded: side.forwarded,
                ready: side.dir.ready,
                buffered: &side.dir.buf,
                frame_left: side.dir.frame_left,
                may_start,
                tx,
                terminated: tx.terminated,
                error: scan_error.clone(),
            });
            if scan_error.is_some() {
                error = scan_error;
                break 'reads;
            }
            if side.dir.ready == 0 {
                if tx.terminated {
                    break 'reads;
                }
                break;
            }
            // Written out in full (poll_drain).
            let n = side.dir.ready;
            side.dir.buf.advance(n);
            side.dir.ready = 0;
            side.forwarded += n;
            if tx.terminated {
                break 'reads;
            }
        }
    }
    Pumped {
        tx,
        terminated: tx.terminated,
        error,
        log,
    }
}

/// One direction and what went through it.
struct Side {
    dir: Direction,
    fed: usize,
    forwarded: usize,
}

impl Side {
    fn new() -> Side {
        Side {
            dir: Direction::new(bytes::BytesMut::new()),
            fed: 0,
            forwarded: 0,
        }
    }
}
