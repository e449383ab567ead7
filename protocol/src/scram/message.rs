//! Parsing the exchange's messages, attribute by attribute, with their limits.

use super::*;

pub(super) struct ClientFirst<'a> {
    pub(super) gs2_header: &'static [u8],
    pub(super) bare: &'a [u8],
    pub(super) client_nonce: &'a [u8],
}

// Mirrors read_client_first_message() in PostgreSQL's auth-scram.c.
pub(super) fn parse_client_first(message: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    check_message(message)?;
    let (flag, rest) = message.split_first().ok_or(ScramError::Malformed("empty message"))?;
    let gs2_header: &'static [u8] = match flag {
        b'n' => b"n,,",
        // The client could do channel binding but believes we cannot; since we never advertise
        // SCRAM-SHA-256-PLUS that belief is correct, so there is no downgrade to detect.
        b'y' => b"y,,",
        b'p' => return Err(ScramError::ChannelBindingUnsupported),
        _ => return Err(ScramError::Malformed("channel-binding flag in gs2 header")),
    };
    let rest = rest.strip_prefix(b",").ok_or(ScramError::Malformed("gs2 header"))?;
    if rest.first() == Some(&b'a') {
        return Err(ScramError::Malformed("authorization identity (a=) is not supported"));
    }
    let bare = rest.strip_prefix(b",").ok_or(ScramError::Malformed("gs2 header"))?;

    let mut attrs = AttrReader::new(bare);
    if attrs.peek() == Some(b'm') {
        return Err(ScramError::Malformed("mandatory extensions (m=) are not supported"));
    }
    // PostgreSQL ignores this name (the startup packet's user is authoritative), so do we.
    attrs.expect_attr(b'n', "user name (n=)")?;
    let client_nonce = attrs.expect_attr(b'r', "client nonce (r=)")?;
    if client_nonce.is_empty() || !is_printable(client_nonce) {
        return Err(ScramError::Malformed("client nonce (r=)"));
    }
    // Optional extensions are ignored, but must still be well-formed attributes.
    while !attrs.at_end() {
        attrs.next_attr("extension attribute")?;
    }
    Ok(ClientFirst {
        gs2_header,
        bare,
        client_nonce,
    })
}

pub(super) struct ClientFinal<'a> {
    pub(super) channel_binding: &'a [u8],
    pub(super) nonce: &'a [u8],
    pub(super) without_proof: &'a [u8],
    pub(super) proof: [u8; KEY_LEN],
}

// Mirrors read_client_final_message() in PostgreSQL's auth-scram.c.
pub(super) fn parse_client_final(message: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    check_message(message)?;
    let mut attrs = AttrReader::new(message);
    let channel_binding = attrs.expect_attr(b'c', "channel binding (c=)")?;
    let nonce = attrs.expect_attr(b'r', "nonce (r=)")?;
    // Extensions may sit between the nonce and the proof; the proof must come last because
    // everything before it is signed.
    let (proof, proof_start) = loop {
        let proof_start = message.len().saturating_sub(attrs.remaining().len());
        if let (b'p', proof) = attrs.next_attr("proof (p=)")? {
            break (proof, proof_start);
        }
    };
    if !attrs.at_end() {
        return Err(ScramError::Malformed("trailing data after proof (p=)"));
    }
    let proof = decode_key(proof).ok_or(ScramError::Malformed("proof (p=)"))?;
    // Drop the comma that separates the proof from the signed part.
    let without_proof = proof_start
        .checked_sub(1)
        .and_then(|end| message.get(..end))
        .ok_or(ScramError::Malformed("proof (p=)"))?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

pub(super) struct ServerFirst<'a> {
    pub(super) nonce: &'a [u8],
    pub(super) salt: Vec<u8>,
    pub(super) iterations: u32,
}

// Mirrors read_server_first_message() in libpq's fe-auth-scram.c.
pub(super) fn parse_server_first(message: &[u8]) -> Result<ServerFirst<'_>, ScramError> {
    check_message(message)?;
    let mut attrs = AttrReader::new(message);
    let nonce = attrs.expect_attr(b'r', "nonce (r=)")?;
    if !is_printable(nonce) {
        return Err(ScramError::Malformed("nonce (r=)"));
    }
    let salt = BASE64
        .decode(attrs.expect_attr(b's', "salt (s=)")?)
        .map_err(|_| ScramError::Malformed("salt (s=)"))?;
    let iterations = parse_decimal_u32(attrs.expect_attr(b'i', "iteration count (i=)")?)
        .ok_or(ScramError::Malformed("iteration count (i=)"))?;
    if !attrs.at_end() {
        return Err(ScramError::Malformed("trailing data after iteration count (i=)"));
    }
    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

/// Walks a comma-separated `x=value` list the way PostgreSQL's read_attr_value/read_any_attr do.
pub(super) struct AttrReader<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> AttrReader<'a> {
    pub(super) fn new(message: &'a [u8]) -> Self {
        Self { rest: message }
    }

    pub(super) fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    pub(super) fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    /// Reads one attribute; `what` names the part of the message in the error.
    pub(super) fn next_attr(&mut self, what: &'static str) -> Result<(u8, &'a [u8]), ScramError> {
        let (&attr, after) = self.rest.split_first().ok_or(ScramError::Malformed(what))?;
        if !attr.is_ascii_alphabetic() {
            return Err(ScramError::Malformed(what));
        }
        let value_and_rest = after.strip_prefix(b"=").ok_or(ScramError::Malformed(what))?;
        let mut parts = value_and_rest.splitn(2, |&b| b == b',');
        let value = parts.next().unwrap_or_default();
        self.rest = parts.next().unwrap_or_default();
        Ok((attr, value))
    }

    pub(super) fn expect_attr(&mut self, attr: u8, what: &'static str) -> Result<&'a [u8], ScramError> {
        match self.next_attr(what)? {
            (found, value) if found == attr => Ok(value),
            _ => Err(ScramError::Malformed(what)),
        }
    }
}

// PostgreSQL rejects empty SASL data and embedded NULs (it handles them as C strings).
pub(super) fn check_message(message: &[u8]) -> Result<(), ScramError> {
    if message.is_empty() {
        return Err(ScramError::Malformed("empty message"));
    }
    if message.contains(&0) {
        return Err(ScramError::Malformed("message contains a NUL byte"));
    }
    Ok(())
}

/// RFC 5802 `printable`: ASCII 0x21..=0x7E except ','.
pub(super) fn is_printable(value: &[u8]) -> bool {
    value.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Plain decimal digits only: `str::parse` would also accept a leading '+'.
pub(super) fn parse_decimal_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
