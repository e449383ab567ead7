//! `startup::decode_startup` on arbitrary bytes, whole and split in two chunks.
//!
//! The input is the raw bytes a client sends first (no control prefix).
//!
//! Checked: no panic; `Ok(None)` and `InvalidLength` leave the buffer unchanged;
//! any other outcome consumes exactly the declared packet length; decoding the
//! input split in two (at the middle and at a point derived from the input) gives
//! the same result and the same leftover as decoding it whole; a decoded
//! StartupMessage re-encodes (`encode_startup`) to the same bytes when its minor
//! version is 0 and decodes again to the same parameters; SSLRequest and
//! CancelRequest (with a secret of at most 32 bytes) re-encode to the same bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgcutover_protocol::startup::{
    self, decode_startup, StartupError, StartupPacket, MAX_STARTUP_PACKET_LEN, PROTOCOL_3_0,
};
use std::hint::black_box;

fuzz_target!(|data: &[u8]| {
    let mut whole = BytesMut::from(data);
    let result = decode_startup(&mut whole);

    // What was consumed.
    let consumed = data.len() - whole.len();
    assert_eq!(&whole[..], &data[consumed..]);
    match &result {
        Ok(None) => {
            assert_eq!(consumed, 0);
            if data.len() >= 4 {
                let len = declared_len(data);
                assert!((8..=MAX_STARTUP_PACKET_LEN).contains(&len));
                assert!(data.len() < len);
            }
        }
        Err(StartupError::InvalidLength(len)) => {
            assert_eq!(consumed, 0);
            assert_eq!(*len as usize, declared_len(data));
        }
        Ok(Some(_)) | Err(_) => {
            assert!(consumed >= 8);
            assert!(consumed <= MAX_STARTUP_PACKET_LEN);
            assert_eq!(consumed, declared_len(data));
        }
    }
    if let Err(e) = &result {
        black_box(e.to_string());
    }

    // Split in two chunks: the result and the leftover must not depend on it.
    let hashed = data
        .iter()
        .fold(data.len(), |h, &b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
    for split in [data.len() / 2, hashed % (data.len() + 1)] {
        let mut buf = BytesMut::from(&data[..split]);
        let mut r = decode_startup(&mut buf);
        if let Ok(None) = r {
            assert_eq!(&buf[..], &data[..split], "Ok(None) changed the buffer");
            buf.extend_from_slice(&data[split..]);
            r = decode_startup(&mut buf);
        } else {
            buf.extend_from_slice(&data[split..]);
        }
        assert_eq!(r, result, "split at {split} changed the result");
        assert_eq!(&buf[..], &whole[..], "split at {split} changed the leftover");
    }

    // Re-encoding.
    let packet = &data[..consumed];
    match &result {
        Ok(Some(StartupPacket::Startup(m))) => {
            assert_eq!(m.major, 3);
            let mut out = BytesMut::new();
            startup::encode_startup(m.params.iter().map(|(k, v)| (k.as_str(), v.as_str())), &mut out);
            assert_eq!(&out[4..8], &PROTOCOL_3_0.to_be_bytes());
            if m.minor == 0 {
                assert_eq!(&out[..], packet, "re-encoding changed the bytes");
            } else {
                assert_eq!(&out[..4], &packet[..4]);
                assert_eq!(&out[8..], &packet[8..]);
            }
            match decode_startup(&mut out) {
                Ok(Some(StartupPacket::Startup(again))) => {
                    assert_eq!((again.major, again.minor), (3, 0));
                    assert_eq!(again.params, m.params);
                }
                other => panic!("re-encoded startup message decoded as {other:?}"),
            }
            assert!(out.is_empty());
            for (k, _) in &m.params {
                assert!(m.param(k).is_some());
            }
        }
        Ok(Some(StartupPacket::SslRequest)) => {
            let mut out = BytesMut::new();
            startup::encode_ssl_request(&mut out);
            assert_eq!(&out[..], packet);
        }
        Ok(Some(StartupPacket::CancelRequest(key))) => {
            // A secret of 4 to 256 bytes; up to 32 are held, and such a key
            // re-encodes to the same bytes. A longer one (no server issues one) is
            // its length and first 32 bytes (regressions/startup/cancel_secret_longer_than_held).
            let secret = &packet[12..];
            assert_eq!(key.secret.len(), secret.len());
            assert_eq!(key.secret.held(), &secret[..secret.len().min(32)]);
            if key.secret.is_whole() {
                let mut out = BytesMut::new();
                startup::encode_cancel_request(*key, &mut out);
                assert_eq!(&out[..], packet);
            }
        }
        _ => {}
    }
});

fn declared_len(data: &[u8]) -> usize {
    u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize
}
