//! The startup phase before authentication: SSLRequest and GSSENCRequest
//! negotiation, then a StartupMessage or a CancelRequest.

use super::error::SessionError;
use crate::stream::Stream;
use crate::wire::{Conn, WireError};
use crate::Shared;
use pgcutover_config::TlsMode;
use pgcutover_protocol::build;
use pgcutover_protocol::startup::{CancelSecret, StartupError, NEWEST_MINOR};
use pgcutover_protocol::{CancelKey, StartupMessage, StartupPacket};

/// What the client opened the connection for.
pub(super) enum Opening {
    /// A session.
    Startup(StartupMessage),
    /// Cancelling another session's query.
    Cancel(CancelKey),
}

/// Reads startup packets until a StartupMessage or CancelRequest, upgrading the
/// connection to TLS on the way when asked and allowed.
pub(super) async fn open(shared: &Shared, client: &mut Conn) -> Result<Opening, SessionError> {
    // As PostgreSQL: a length out of range, of a packet or of a cancel secret,
    // gets no answer (its COMMERROR), an
    // unknown protocol version FATAL 0A000, a malformed body FATAL 08P01.
    let bad = |e: WireError| match e {
        WireError::Startup(e @ (StartupError::InvalidLength(_) | StartupError::InvalidCancelLength(_))) => {
            SessionError::Unanswered(e.to_string())
        }
        WireError::Startup(e @ StartupError::UnsupportedProtocol { .. }) => {
            SessionError::UnsupportedProtocol(e.to_string())
        }
        WireError::Startup(e) => SessionError::ClientProtocol(e.to_string()),
        other => SessionError::ClientGone(other.to_string()),
    };
    loop {
        match client.read_startup().await.map_err(bad)? {
            StartupPacket::SslRequest => {
                if client.stream.is_tls() {
                    return Err(SessionError::ClientProtocol(
                        "SSLRequest on an encrypted connection".into(),
                    ));
                }
                let acceptor = match (&shared.tls_acceptor, shared.config.proxy.tls_mode) {
                    (Some(a), TlsMode::Allow | TlsMode::Require) => a.clone(),
                    _ => {
                        client.send_raw(b"N").await.map_err(|e| bad(e.into()))?;
                        continue;
                    }
                };
                if !client.rbuf.is_empty() {
                    // Bytes sent before the handshake would be trusted as if encrypted
                    // (CVE-2021-23214 in PostgreSQL itself).
                    return Err(SessionError::ClientProtocol("unencrypted data after SSLRequest".into()));
                }
                client.send_raw(b"S").await.map_err(|e| bad(e.into()))?;
                let Stream::Plain(tcp) = std::mem::replace(&mut client.stream, Stream::Detached) else {
                    return Err(SessionError::ClientProtocol(
                        "SSLRequest on an encrypted connection".into(),
                    ));
                };
                let tls = acceptor
                    .accept(tcp)
                    .await
                    .map_err(|e| SessionError::ClientGone(format!("TLS handshake failed: {e}")))?;
                client.stream = Stream::ClientTls(Box::new(tls));
            }
            StartupPacket::GssEncRequest => client.send_raw(b"N").await.map_err(|e| bad(e.into()))?,
            StartupPacket::CancelRequest(key) => return Ok(Opening::Cancel(key)),
            StartupPacket::Startup(m) => return Ok(Opening::Startup(m)),
        }
    }
}

/// The minor version of protocol 3 a client is served: what it asked for, up to
/// 3.2. As PostgreSQL 18 does, 3.1 (never released) is served like 3.0.
pub(super) fn negotiated_minor(startup: &StartupMessage) -> u16 {
    startup.minor.min(NEWEST_MINOR)
}

/// The length of the cancel secret a client is given: 32 bytes under 3.2, as
/// PostgreSQL 18 issues, else 4.
pub(super) fn cancel_secret_len(startup: &StartupMessage) -> usize {
    match negotiated_minor(startup) {
        0 | 1 => CancelSecret::SHORT,
        _ => CancelSecret::MAX,
    }
}

/// A version newer than 3.2, or `_pq_.` options (none is known), is answered with
/// NegotiateProtocolVersion, exactly as PostgreSQL 18 answers them.
pub(super) fn negotiate_protocol_version(client: &mut Conn, startup: &StartupMessage) {
    let unrecognized: Vec<&str> = startup
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if startup.minor > NEWEST_MINOR || !unrecognized.is_empty() {
        build::negotiate_protocol_version(&mut client.wbuf, negotiated_minor(startup), &unrecognized);
    }
}
