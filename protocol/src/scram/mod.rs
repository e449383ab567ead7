//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, for both ends of a proxy.
//!
//! The server side lets the proxy authenticate clients against a stored verifier; the client
//! side lets it log into PostgreSQL with either a password or the keys recovered from a
//! client's exchange (PgBouncer-style pass-through). Everything here is pure: callers supply
//! the random nonce bytes and move the messages over the wire.
//!
//! Channel binding (SCRAM-SHA-256-PLUS) is not supported: the server side accepts only the
//! gs2 headers `n,,` and `y,,`, and the client side always sends `n,,`.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// SASL mechanism name PostgreSQL advertises in AuthenticationSASL.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Iteration count PostgreSQL uses by default (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length of every SCRAM-SHA-256 key, signature and proof.
const KEY_LEN: usize = 32;

/// Upper bound on the iteration count we accept from a server: anything above it would let a
/// hostile or misconfigured server pin a CPU for minutes per login attempt.
const MAX_CLIENT_ITERATIONS: u32 = 10_000_000;

const SECRET_PREFIX: &str = "SCRAM-SHA-256$";

/// The only gs2 header this implementation sends.
const GS2_HEADER_NO_CB: &[u8] = b"n,,";

/// Why a SCRAM exchange or a stored secret was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The stored verifier is not of the form `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    #[error("malformed SCRAM-SHA-256 secret")]
    MalformedSecret,
    /// A message from the peer is malformed; the text names the offending part.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (SCRAM-SHA-256-PLUS / `p=` gs2 flag).
    #[error("SCRAM channel binding was requested, but it is not supported")]
    ChannelBindingUnsupported,
    /// The nonce in the message does not continue the one agreed earlier in the exchange.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof does not match the stored verifier (wrong password).
    #[error("SCRAM authentication failed: invalid client proof")]
    InvalidProof,
    /// The server's signature does not match (server does not know the verifier).
    #[error("SCRAM authentication failed: invalid server signature")]
    InvalidServerSignature,
    /// The server ended the exchange with `e=<reason>`.
    #[error("SCRAM server reported an error: {0}")]
    ServerError(String),
    /// A message arrived when the exchange was not expecting one (wrong order, or already over).
    #[error("unexpected SCRAM message for the current state of the exchange")]
    UnexpectedState,
}

mod client;
mod crypto;
mod message;
mod secret;
mod server;
#[cfg(test)]
mod tests;

pub use client::ScramClient;
pub use secret::{ScramCredential, ScramKeys, ScramSecret};
pub use server::ScramServer;

use crypto::*;
use message::*;
