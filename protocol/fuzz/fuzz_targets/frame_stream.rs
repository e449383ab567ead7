//! Feeds a byte stream to `frame::decode_frame` in arbitrary chunks, as a socket
//! would, and runs every decoded body through every lazy message view.
//!
//! Input layout: 3 control bytes, then the stream.
//! - byte 0: chunking. 0 = the whole stream at once; n > 0 = chunks of
//!   pseudo-random sizes in 1..=n (so 1 = byte by byte).
//! - bytes 1-2 (big-endian u16 `m`): the max_len passed to the decoder.
//!   m >> 14 == 0: m & 0x3fff (0..=16383); 1: 64 KiB; 2: 16 MiB;
//!   3: `DEFAULT_MAX_MESSAGE_LEN` (1 GiB).
//!
//! Checked: no panic; every frame's body length <= max_len; bytes consumed ==
//! sum of (5 + body length); `Ok(None)` leaves the buffer's content unchanged and
//! happens only while the frame is incomplete; `Err` leaves the buffer unchanged;
//! `parse_header` agrees with `decode_frame`; each frame is exactly the bytes on
//! the wire; and the chunked decode yields the same frames and the same final
//! error (or leftover) as decoding the whole stream in one buffer.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgcutover_protocol::backend::{self, Authentication, ErrorFields};
use pgcutover_protocol::frame::{self, Frame, FrameError, DEFAULT_MAX_MESSAGE_LEN, HEADER_LEN};
use pgcutover_protocol::frontend;
use std::hint::black_box;

const CONTROL_LEN: usize = 3;

fuzz_target!(|data: &[u8]| {
    if data.len() < CONTROL_LEN {
        return;
    }
    let (control, stream) = data.split_at(CONTROL_LEN);
    let max_len = pick_max_len(u16::from_be_bytes([control[1], control[2]]));

    // Reference: the whole stream in one buffer.
    let mut whole = BytesMut::from(stream);
    let reference = drain(&mut whole, max_len, stream);

    // The same stream, arriving in chunks.
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut error = None;
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut chunks = Chunks::new(control[0], stream);
    'feed: while let Some(chunk) = chunks.next() {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            match step(&mut buf, max_len) {
                Step::Frame(f) => {
                    // The frame is exactly what came in on the wire at this offset.
                    let at = consumed;
                    assert_eq!(f.tag, stream[at]);
                    let declared = u32::from_be_bytes(stream[at + 1..at + 5].try_into().unwrap());
                    assert_eq!(declared as usize, f.body.len() + 4);
                    assert_eq!(&f.body[..], &stream[at + HEADER_LEN..at + HEADER_LEN + f.body.len()]);
                    consumed += HEADER_LEN + f.body.len();
                    assert_eq!(&buf[..], &stream[consumed..fed], "buffer holds the unconsumed tail");
                    frames.push(f);
                }
                Step::Incomplete => break,
                Step::Error(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    if error.is_none() {
        assert_eq!(fed, stream.len());
    }
    assert_eq!(
        consumed,
        frames.iter().map(|f| HEADER_LEN + f.body.len()).sum::<usize>()
    );
    assert_eq!(frames, reference.frames, "chunking changed the frames");
    assert_eq!(error, reference.error, "chunking changed the error");
    if error.is_none() {
        assert_eq!(&buf[..], &whole[..], "chunking changed the leftover");
    }

    for f in &frames {
        exercise_views(f.tag, &f.body);
    }
});

fn pick_max_len(m: u16) -> usize {
    match m >> 14 {
        0 => usize::from(m & 0x3fff),
        1 => 1 << 16,
        2 => 1 << 24,
        _ => DEFAULT_MAX_MESSAGE_LEN,
    }
}

enum Step {
    Frame(Frame),
    Incomplete,
    Error(FrameError),
}

/// One `decode_frame` call, with the invariants of a single step checked.
fn step(buf: &mut BytesMut, max_len: usize) -> Step {
    let before = buf.to_vec();
    let header = frame::parse_header(buf, max_len);
    match frame::decode_frame(buf, max_len) {
        Ok(Some(f)) => {
            let h = header.expect("parse_header failed where decode_frame succeeded");
            let h = h.expect("parse_header saw no header where decode_frame found a frame");
            assert!(f.body.len() <= max_len, "body {} > max_len {max_len}", f.body.len());
            assert_eq!((f.tag, f.body.len()), (h.tag, h.body_len));
            assert_eq!(h.frame_len(), HEADER_LEN + f.body.len());
            assert!(before.len() >= h.frame_len());
            assert_eq!(buf.len(), before.len() - h.frame_len());
            assert_eq!(&buf[..], &before[h.frame_len()..]);
            Step::Frame(f)
        }
        Ok(None) => {
            assert_eq!(&buf[..], &before[..], "Ok(None) changed the buffer");
            match header {
                Ok(None) => assert!(before.len() < HEADER_LEN),
                Ok(Some(h)) => {
                    assert!(h.body_len <= max_len);
                    assert!(before.len() < h.frame_len(), "complete frame not returned");
                }
                Err(e) => panic!("parse_header failed ({e:?}) where decode_frame returned Ok(None)"),
            }
            Step::Incomplete
        }
        Err(e) => {
            assert_eq!(header, Err(e), "parse_header and decode_frame disagree");
            assert_eq!(&buf[..], &before[..], "Err changed the buffer");
            // The message must format without panicking.
            black_box(e.to_string());
            Step::Error(e)
        }
    }
}

struct Drained {
    frames: Vec<Frame>,
    error: Option<FrameError>,
}

/// Decodes everything in `buf` (which holds all of `stream`).
fn drain(buf: &mut BytesMut, max_len: usize, stream: &[u8]) -> Drained {
    let mut frames = Vec::new();
    let mut consumed = 0usize;
    loop {
        match step(buf, max_len) {
            Step::Frame(f) => {
                consumed += HEADER_LEN + f.body.len();
                frames.push(f);
            }
            Step::Incomplete => {
                assert_eq!(&buf[..], &stream[consumed..]);
                return Drained { frames, error: None };
            }
            Step::Error(e) => return Drained { frames, error: Some(e) },
        }
    }
}

/// Splits `stream` into chunks whose sizes come from a xorshift generator seeded
/// by the control byte and the stream length.
struct Chunks<'a> {
    rest: &'a [u8],
    max_chunk: usize,
    state: u32,
}

impl<'a> Chunks<'a> {
    fn new(sel: u8, stream: &'a [u8]) -> Self {
        Chunks {
            rest: stream,
            max_chunk: if sel == 0 { usize::MAX } else { usize::from(sel) },
            state: 0x9e37_79b9 ^ u32::from(sel) ^ (stream.len() as u32).rotate_left(8),
        }
    }

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let n = if self.max_chunk == usize::MAX {
            self.rest.len()
        } else {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 17;
            self.state ^= self.state << 5;
            1 + self.state as usize % self.max_chunk
        };
        let (chunk, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        Some(chunk)
    }
}

/// Every view on every body, whatever its tag: none may panic. Results are mostly
/// ignored; a few facts that follow from the wire format are checked.
fn exercise_views(tag: u8, body: &[u8]) {
    black_box(frontend::ends_with_ready_for_query(tag));

    // Backend views.
    match backend::parse_authentication(body) {
        Ok(Authentication::Sasl(mechs)) => {
            black_box(mechs.iter().count());
            black_box(mechs.contains("SCRAM-SHA-256"));
        }
        Ok(Authentication::Md5Password { salt }) => assert_eq!(&body[4..8], &salt),
        other => {
            black_box(other.ok());
        }
    }
    black_box(backend::parse_parameter_status(body).ok());
    if let Ok(key) = backend::parse_backend_key_data(body) {
        // A pid and a 4- to 32-byte secret (protocol 3.2 keys), quoted back whole.
        assert!((8..=36).contains(&body.len()), "{} bytes", body.len());
        assert_eq!(key.secret.held(), &body[4..]);
        black_box(key);
    }
    if let Ok(status) = backend::parse_ready_for_query(body) {
        assert_eq!(body, [status.as_byte()]);
    }
    let fields = ErrorFields::new(body);
    for (code, value) in fields.iter() {
        assert_ne!(code, 0);
        black_box(value);
    }
    black_box((fields.code(), fields.message(), fields.severity()));
    if let Ok(cols) = backend::parse_data_row(body) {
        let data: usize = cols.iter().flatten().map(|c| c.len()).sum();
        assert!(2 + 4 * cols.len() + data <= body.len());
    }

    // Frontend views.
    black_box(frontend::parse_query(body).ok());
    if let Ok(p) = frontend::parse_parse(body) {
        assert!(p.param_types >= 0);
        black_box(p);
    }
    black_box(frontend::parse_target(body).ok());
    if let Ok(pw) = frontend::parse_password(body) {
        assert!(!pw.contains(&0));
    }
    if let Ok((mech, data)) = frontend::parse_sasl_initial_response(body) {
        assert!(mech.len() + data.len() < body.len());
    }
}
