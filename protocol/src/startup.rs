//! Startup-phase packets: untagged, a 4-byte length then a 4-byte code.

use crate::view::Cursor;
use bytes::{BufMut, BytesMut};

/// Protocol 3.0, the only version pgcutover speaks on both sides.
pub const PROTOCOL_3_0: i32 = 3 << 16;
/// Code of an SSLRequest.
pub const SSL_REQUEST_CODE: i32 = 1234 << 16 | 5679;
/// Code of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: i32 = 1234 << 16 | 5680;
/// Code of a CancelRequest.
pub const CANCEL_REQUEST_CODE: i32 = 1234 << 16 | 5678;
/// PostgreSQL's own cap on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// A backend's identity for cancellation: what BackendKeyData carries and what a
/// CancelRequest quotes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// The backend process id.
    pub pid: i32,
    /// The secret key.
    pub secret: i32,
}

/// The StartupMessage proper: protocol version and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Major protocol version (3).
    pub major: u16,
    /// Minor protocol version requested by the client (0 for 3.0, 2 for 3.2, ...).
    pub minor: u16,
    /// Parameters in the order the client sent them (`user`, `database`, `options`, GUCs, `_pq_.` options).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a startup parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Any packet a client may open a connection with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Asks for TLS; answered with a single 'S' or 'N'.
    SslRequest,
    /// Asks for GSSAPI encryption; pgcutover answers 'N'.
    GssEncRequest,
    /// Asks to cancel the query running on the backend with this key.
    CancelRequest(CancelKey),
    /// Starts a session.
    Startup(StartupMessage),
}

/// A startup packet that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// Length word out of range.
    #[error("invalid startup packet length {0} (must be 8 to {MAX_STARTUP_PACKET_LEN})")]
    InvalidLength(u32),
    /// A protocol version other than 3.x.
    #[error("unsupported frontend protocol {major}.{minor}: pgcutover speaks protocol 3")]
    UnsupportedProtocol {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
    /// The body does not have the promised shape.
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// Splits the first startup packet off `buf`; `Ok(None)` until it is complete.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    if !(8..=MAX_STARTUP_PACKET_LEN as u32).contains(&len) {
        return Err(StartupError::InvalidLength(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let packet = buf.split_to(len);
    let packet = parse_startup_body(&packet[4..])?;
    Ok(Some(packet))
}

fn parse_startup_body(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let malformed = |e: crate::ViewError| StartupError::Malformed(e.problem);
    let mut c = Cursor::new(body, "startup");
    let code = c.i32().map_err(malformed)?;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !c.is_empty() => {
            Err(StartupError::Malformed("unexpected bytes after request code"))
        }
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let pid = c.i32().map_err(malformed)?;
            let secret = c.i32().map_err(malformed)?;
            if !c.is_empty() {
                // Protocol 3.2 allows longer keys; pgcutover always issues 4-byte ones.
                return Err(StartupError::Malformed("cancel key is not 4 bytes"));
            }
            Ok(StartupPacket::CancelRequest(CancelKey { pid, secret }))
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let name = c.cstr().map_err(malformed)?;
                if name.is_empty() {
                    break;
                }
                let value = c.cstr().map_err(malformed)?;
                params.push((name.to_owned(), value.to_owned()));
            }
            if !c.is_empty() {
                return Err(StartupError::Malformed("bytes after the parameter list"));
            }
            Ok(StartupPacket::Startup(StartupMessage { major, minor, params }))
        }
    }
}

/// Appends a protocol 3.0 StartupMessage with these parameters.
pub fn encode_startup<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>, out: &mut BytesMut) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    patch_len(out, start);
}

/// Appends an SSLRequest.
pub fn encode_ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(SSL_REQUEST_CODE);
}

/// Appends a CancelRequest for `key`.
pub fn encode_cancel_request(key: CancelKey, out: &mut BytesMut) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST_CODE);
    out.put_i32(key.pid);
    out.put_i32(key.secret);
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

fn patch_len(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_startup_message() {
        let mut buf = BytesMut::new();
        encode_startup(
            [("user", "alice"), ("database", "app"), ("application_name", "t")],
            &mut buf,
        );
        let whole = buf.clone();
        // Byte by byte: incomplete until the last byte arrives.
        let mut partial = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            partial.put_u8(*b);
            let r = decode_startup(&mut partial).unwrap();
            assert_eq!(r.is_some(), i + 1 == whole.len());
            if let Some(StartupPacket::Startup(m)) = r {
                assert_eq!((m.major, m.minor), (3, 0));
                assert_eq!(m.param("user"), Some("alice"));
                assert_eq!(m.param("database"), Some("app"));
                assert_eq!(m.param("nope"), None);
            }
        }
    }

    #[test]
    fn recognises_request_codes() {
        let mut buf = BytesMut::from(&b"\0\0\0\x08\x04\xd2\x16\x2f"[..]);
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(StartupPacket::SslRequest));
        let mut buf = BytesMut::from(&b"\0\0\0\x08\x04\xd2\x16\x30"[..]);
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(StartupPacket::GssEncRequest));
        let mut buf = BytesMut::new();
        encode_cancel_request(CancelKey { pid: 42, secret: -7 }, &mut buf);
        assert_eq!(
            decode_startup(&mut buf).unwrap(),
            Some(StartupPacket::CancelRequest(CancelKey { pid: 42, secret: -7 }))
        );
    }

    #[test]
    fn rejects_bad_lengths_and_versions() {
        let mut buf = BytesMut::from(&b"\0\0\0\x04"[..]);
        assert_eq!(decode_startup(&mut buf), Err(StartupError::InvalidLength(4)));
        let mut buf = BytesMut::from(&b"\x7f\0\0\0"[..]);
        assert!(matches!(decode_startup(&mut buf), Err(StartupError::InvalidLength(_))));
        let mut buf = BytesMut::from(&b"\0\0\0\x09\0\x02\0\0\0"[..]);
        assert_eq!(
            decode_startup(&mut buf),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
    }

    #[test]
    fn rejects_unterminated_parameters() {
        let mut buf = BytesMut::from(&b"\0\0\0\x0d\0\x03\0\0user\0"[..]);
        assert!(matches!(decode_startup(&mut buf), Err(StartupError::Malformed(_))));
    }
}
