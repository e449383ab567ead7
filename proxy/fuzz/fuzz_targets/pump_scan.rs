//! The pump's frame walker (`Direction::scan`) with the real inspectors, both
//! directions sharing one protocol state and session-state log, over arbitrary bytes
//! arriving in reads whose sizes the input chooses.
//!
//! Input layout: 1 config byte, then records of 1 control byte and the bytes of one read.
//! - config bits 0-1: `max_message_len`: 0 = `DEFAULT_MAX_MESSAGE_LEN` (1 GiB, the
//!   proxy's default), 1 = 8192, 2 = 64, 3 = 5; bit 2: rewrite the pid of
//!   notifications (`PidRewrite { server_pid: 4242, client_pid: 7 }`); bit 3: the
//!   client side starts held.
//! - control bit 7: the read is on server→client (else client→server); bit 6: toggle
//!   the hold from this read on; bits 0-5 `n`: the read's length, `n` for
//!   `n < 48`, else `64 << (n - 48)` (64 B to 2 MiB), cut to what the input holds.
//!
//! Each direction's input is its reads concatenated. Checked after every scan: no
//! panic; never more bytes ready than buffered (`ready <= buffered`), and forwarded
//! + buffered == read, so nothing is lost or invented; the ready bytes are the next
//! bytes of the input (with pid rewriting on: of the input with the rewrite applied
//! to each whole NotificationResponse of the server's pid, frames walked here
//! independently), and the bytes not ready are the input's untouched; the scan makes
//! progress: unless it failed, the client terminated, or the inspector may not start a
//! message (hold gate, server leaving), it stops only inside a pass-through body with
//! every byte taken, before an incomplete header, or before an incomplete wanted frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcutover_protocol::backend::NOTIFICATION_RESPONSE;
use pgcutover_protocol::frame::{DEFAULT_MAX_MESSAGE_LEN, HEADER_LEN};
use pgcutover_proxy::fuzzing::{pump, PidRewrite, Read, Way};

const SERVER_PID: i32 = 4242;
const CLIENT_PID: i32 = 7;

fuzz_target!(|data: &[u8]| {
    let Some((&config, mut rest)) = data.split_first() else {
        return;
    };
    let max_message_len = match config & 3 {
        0 => DEFAULT_MAX_MESSAGE_LEN,
        1 => 8192,
        2 => 64,
        _ => 5,
    };
    let rewrite = config & 4 != 0;
    let mut hold = config & 8 != 0;

    let mut reads = Vec::new();
    let mut input = [Vec::new(), Vec::new()];
    while let Some((&control, after)) = rest.split_first() {
        let n = usize::from(control & 0x3f);
        let len = if n < 48 { n } else { 64 << (n - 48) };
        let (bytes, after) = after.split_at(len.min(after.len()));
        rest = after;
        let way = if control & 0x80 != 0 {
            Way::ServerToClient
        } else {
            Way::ClientToServer
        };
        if control & 0x40 != 0 {
            hold = !hold;
        }
        reads.push(Read { way, bytes, hold });
        input[way as usize].extend_from_slice(bytes);
    }
    // What the server side may forward: its input, notifications rewritten.
    let mut expected_s2c = input[1].clone();
    if rewrite {
        apply_rewrite(&mut expected_s2c, max_message_len);
    }

    let pid_rewrite = rewrite.then_some(PidRewrite {
        server_pid: SERVER_PID,
        client_pid: CLIENT_PID,
    });
    let end = pump(reads, max_message_len, pid_rewrite, |s| {
        let (original, expected) = match s.way {
            Way::ClientToServer => (&input[0], &input[0]),
            Way::ServerToClient => (&input[1], &expected_s2c),
        };
        assert!(
            s.ready <= s.buffered.len(),
            "{} ready of {} buffered",
            s.ready,
            s.buffered.len()
        );
        assert_eq!(s.forwarded + s.buffered.len(), s.fed, "bytes lost or invented");
        assert!(s.fed <= original.len());
        let (ready, waiting) = s.buffered.split_at(s.ready);
        assert_eq!(
            ready,
            &expected[s.forwarded..s.forwarded + s.ready],
            "the ready bytes are not the input's next"
        );
        assert_eq!(
            waiting,
            &original[s.forwarded + s.ready..s.fed],
            "bytes not ready were changed"
        );
        if let Some(e) = &s.error {
            assert!(!e.is_empty());
            return;
        }
        if s.terminated || !s.may_start {
            return;
        }
        if s.frame_left > 0 {
            assert!(waiting.is_empty(), "stopped inside a pass-through body with bytes left");
        } else if waiting.len() >= HEADER_LEN {
            let len = u32::from_be_bytes(waiting[1..5].try_into().unwrap()) as usize;
            assert!(len >= 4 && len - 4 <= max_message_len, "an invalid header passed");
            assert!(
                waiting.len() < 1 + len,
                "stopped before a complete frame (tag {:?}, {} of {} bytes)",
                char::from(waiting[0]),
                waiting.len(),
                1 + len
            );
        }
    });
    if end.terminated {
        assert!(end.error.is_none());
    }
    std::hint::black_box((end.log.opaque(), end.log.state().is_empty(), end.log.statements().len()));
});

/// Rewrites, in a server's byte stream, the pid of every whole NotificationResponse
/// the server's pid sent, walking frames as the wire format defines them; stops at
/// the first header the pump would refuse.
fn apply_rewrite(stream: &mut [u8], max_message_len: usize) {
    let mut at = 0;
    while stream.len() - at >= HEADER_LEN {
        let tag = stream[at];
        let len = u32::from_be_bytes(stream[at + 1..at + 5].try_into().unwrap()) as usize;
        if len < 4 || len - 4 > max_message_len {
            return;
        }
        let end = at + 1 + len;
        if end > stream.len() {
            return;
        }
        // Larger notifications pass unread (MAX_INSPECTED_NOTIFICATION in pump/inspect.rs).
        if tag == NOTIFICATION_RESPONSE && len >= 8 && len - 4 <= 16 * 1024 {
            let pid = &mut stream[at + HEADER_LEN..at + HEADER_LEN + 4];
            if i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]) == SERVER_PID {
                pid.copy_from_slice(&CLIENT_PID.to_be_bytes());
            }
        }
        at = end;
    }
}
