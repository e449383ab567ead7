//! Startup-phase packets: untagged, a 4-byte length then a 4-byte code.

use crate::view::Cursor;
use bytes::{BufMut, BytesMut};

/// Protocol 3.0, what pgcutover speaks to servers.
pub const PROTOCOL_3_0: i32 = 3 << 16;
/// The newest minor version of protocol 3 pgcutover speaks to clients: 3.2, whose
/// only change is cancel secrets longer than 4 bytes.
pub const NEWEST_MINOR: u16 = 2;
/// Code of an SSLRequest.
pub const SSL_REQUEST_CODE: i32 = 1234 << 16 | 5679;
/// Code of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: i32 = 1234 << 16 | 5680;
/// Code of a CancelRequest.
pub const CANCEL_REQUEST_CODE: i32 = 1234 << 16 | 5678;
/// PostgreSQL's own cap on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;
/// PostgreSQL 18's cap on a cancel secret (MAX_CANCEL_KEY_LENGTH): a CancelRequest
/// with a longer one is malformed, a shorter one is just a key to look up.
pub const MAX_CANCEL_SECRET_WIRE_LEN: usize = 256;

/// The secret half of a cancel key: 4 bytes under protocol 3.0, up to 256 under
/// 3.2. Held inline (no allocation): secrets longer than [`CancelSecret::MAX`]
/// bytes are never issued by pgcutover or by PostgreSQL 18 (which issues 32), so
/// they are kept as a 32-byte prefix plus their length, and can match nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelSecret {
    /// The length on the wire.
    len: u16,
    /// The first `min(len, MAX)` bytes; the rest are zero, so that equality and
    /// hashing over the whole array mean equality of secrets.
    bytes: [u8; CancelSecret::MAX],
}

impl CancelSecret {
    /// The longest secret held whole: what PostgreSQL 18 issues under 3.2.
    pub const MAX: usize = 32;
    /// The protocol 3.0 length.
    pub const SHORT: usize = 4;

    /// A protocol 3.0 secret.
    pub fn short(secret: i32) -> CancelSecret {
        let mut bytes = [0; CancelSecret::MAX];
        bytes[..4].copy_from_slice(&secret.to_be_bytes());
        CancelSecret { len: 4, bytes }
    }

    /// A secret as it appears on the wire; `None` unless 4 to 256 bytes.
    pub fn from_wire(wire: &[u8]) -> Option<CancelSecret> {
        if !(CancelSecret::SHORT..=MAX_CANCEL_SECRET_WIRE_LEN).contains(&wire.len()) {
            return None;
        }
        let mut bytes = [0; CancelSecret::MAX];
        let held = wire.len().min(CancelSecret::MAX);
        bytes[..held].copy_from_slice(&wire[..held]);
        Some(CancelSecret {
            len: wire.len() as u16,
            bytes,
        })
    }

    /// A secret of `len` (4 to 32) bytes filled by `fill`.
    pub fn generate(len: usize, fill: impl FnOnce(&mut [u8])) -> CancelSecret {
        let len = len.clamp(CancelSecret::SHORT, CancelSecret::MAX);
        let mut bytes = [0; CancelSecret::MAX];
        fill(&mut bytes[..len]);
        CancelSecret { len: len as u16, bytes }
    }

    /// Its length on the wire.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Never true: a secret has at least 4 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its bytes; for a secret longer than [`CancelSecret::MAX`], only those held.
    pub fn held(&self) -> &[u8] {
        &self.bytes[..self.len().min(CancelSecret::MAX)]
    }

    /// Whether it can be sent on as it came (every secret pgcutover issues or a
    /// server gives it is).
    pub fn is_whole(&self) -> bool {
        self.len() <= CancelSecret::MAX
    }
}

impl std::fmt::Debug for CancelSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret is a credential for cancelling: never in a log.
        write!(f, "CancelSecret({} bytes)", self.len)
    }
}

/// A backend's identity for cancellation: what BackendKeyData carries and what a
/// CancelRequest quotes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// The backend process id.
    pub pid: i32,
    /// The secret key.
    pub secret: CancelSecret,
}

impl CancelKey {
    /// A protocol 3.0 key.
    pub fn short(pid: i32, secret: i32) -> CancelKey {
        CancelKey {
            pid,
            secret: CancelSecret::short(secret),
        }
    }
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
    /// A CancelRequest whose secret is not 4 to 256 bytes (PostgreSQL closes it unanswered).
    #[error("invalid length of query cancel packet: secret of {0} bytes (must be 4 to {MAX_CANCEL_SECRET_WIRE_LEN})")]
    InvalidCancelLength(usize),
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
            let pid = c.i32().map_err(|_| StartupError::InvalidCancelLength(0))?;
            let rest = c.remaining();
            let secret = CancelSecret::from_wire(rest).ok_or(StartupError::InvalidCancelLength(rest.len()))?;
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

/// Appends a CancelRequest for `key`: exact for every secret pgcutover issues or a
/// server gives it ([`CancelSecret::is_whole`]).
pub fn encode_cancel_request(key: CancelKey, out: &mut BytesMut) {
    out.put_i32(12 + key.secret.held().len() as i32);
    out.put_i32(CANCEL_REQUEST_CODE);
    out.put_i32(key.pid);
    out.put_slice(key.secret.held());
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
        encode_cancel_request(CancelKey::short(42, -7), &mut buf);
        assert_eq!(&buf[..], b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x2a\xff\xff\xff\xf9");
        assert_eq!(
            decode_startup(&mut buf).unwrap(),
            Some(StartupPacket::CancelRequest(CancelKey::short(42, -7)))
        );
    }

    #[test]
    fn cancel_secrets_of_protocol_3_2() {
        let long = CancelKey {
            pid: 9,
            secret: CancelSecret::generate(32, |b| b.fill(0xab)),
        };
        let mut buf = BytesMut::new();
        encode_cancel_request(long, &mut buf);
        assert_eq!(buf.len(), 12 + 32);
        assert_eq!(
            decode_startup(&mut buf).unwrap(),
            Some(StartupPacket::CancelRequest(long))
        );
        // A 32-byte secret that starts like a 4-byte one is another key.
        assert_ne!(CancelSecret::from_wire(&[0xab; 4]), Some(long.secret));
        assert_ne!(CancelSecret::from_wire(&[0xab; 33]), Some(long.secret));
        assert!(!CancelSecret::from_wire(&[0xab; 256]).unwrap().is_whole());
        for bad in [0usize, 3, 257] {
            let mut packet = BytesMut::new();
            packet.put_i32(12 + bad as i32);
            packet.put_i32(CANCEL_REQUEST_CODE);
            packet.put_i32(9);
            packet.put_slice(&vec![1; bad]);
            assert_eq!(decode_startup(&mut packet), Err(StartupError::InvalidCancelLength(bad)));
        }
        let mut no_pid = BytesMut::from(&b"\0\0\0\x0a\x04\xd2\x16\x2e\0\0"[..]);
        assert!(matches!(
            decode_startup(&mut no_pid),
            Err(StartupError::InvalidCancelLength(_))
        ));
        assert_eq!(
            format!("{:?}", long),
            "CancelKey { pid: 9, secret: CancelSecret(32 bytes) }"
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
