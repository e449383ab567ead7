//! The server side: authenticates a client against a stored verifier.

use super::*;

pub(super) enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// Replayed in `c=`, which must be the base64 of exactly what the client sent.
        gs2_header: &'static [u8],
        client_first_bare: Vec<u8>,
        server_first: Vec<u8>,
        combined_nonce: Vec<u8>,
    },
    /// Success or failure: either way the exchange cannot be continued.
    Done,
}

/// Server side of one exchange (the proxy authenticating a client).
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    state: ServerState,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::AwaitingClientFirst => "AwaitingClientFirst",
            ServerState::AwaitingClientFinal { .. } => "AwaitingClientFinal",
            ServerState::Done => "Done",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts an exchange against `secret`; `server_nonce` is fresh random bytes (18+, like PostgreSQL) from the caller.
    pub fn new(secret: ScramSecret, server_nonce: &[u8]) -> Self {
        Self::with_printable_nonce(secret, BASE64.encode(server_nonce))
    }

    // Separate from `new` so tests can replay published vectors whose nonces are not base64.
    pub(super) fn with_printable_nonce(secret: ScramSecret, server_nonce: String) -> Self {
        Self {
            secret,
            server_nonce,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Handles SASLInitialResponse data (client-first-message); returns server-first-message bytes.
    pub fn handle_client_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        // Any failure, an out-of-order message included, ends the exchange as in PostgreSQL;
        // the state only advances on success.
        let state = std::mem::replace(&mut self.state, ServerState::Done);
        if !matches!(state, ServerState::AwaitingClientFirst) {
            return Err(ScramError::UnexpectedState);
        }

        let parsed = parse_client_first(client_first)?;
        let mut combined_nonce = parsed.client_nonce.to_vec();
        combined_nonce.extend_from_slice(self.server_nonce.as_bytes());

        let mut server_first = Vec::with_capacity(combined_nonce.len().saturating_add(64));
        server_first.extend_from_slice(b"r=");
        server_first.extend_from_slice(&combined_nonce);
        server_first.extend_from_slice(b",s=");
        server_first.extend_from_slice(BASE64.encode(&self.secret.salt).as_bytes());
        server_first.extend_from_slice(b",i=");
        server_first.extend_from_slice(self.secret.iterations.to_string().as_bytes());

        self.state = ServerState::AwaitingClientFinal {
            gs2_header: parsed.gs2_header,
            client_first_bare: parsed.bare.to_vec(),
            server_first: server_first.clone(),
            combined_nonce,
        };
        Ok(server_first)
    }

    /// Handles SASLResponse data (client-final-message); on a valid proof returns (server-final-message bytes "v=...", recovered ScramKeys with the secret's server_key). On a bad proof returns ScramError::InvalidProof.
    pub fn handle_client_final(&mut self, client_final: &[u8]) -> Result<(Vec<u8>, ScramKeys), ScramError> {
        let ServerState::AwaitingClientFinal {
            gs2_header,
            client_first_bare,
            server_first,
            combined_nonce,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::UnexpectedState);
        };

        let parsed = parse_client_final(client_final)?;
        if parsed.channel_binding != BASE64.encode(gs2_header).as_bytes() {
            return Err(ScramError::Malformed(
                "channel binding (c=) does not match the gs2 header",
            ));
        }
        if parsed.nonce != combined_nonce.as_slice() {
            return Err(ScramError::NonceMismatch);
        }

        let auth_message = [
            client_first_bare.as_slice(),
            b",",
            server_first.as_slice(),
            b",",
            parsed.without_proof,
        ];
        let client_signature = hmac(&self.secret.stored_key, &auth_message);
        let client_key = xor(&parsed.proof, &client_signature);
        if !constant_time_eq(&sha256(&client_key), &self.secret.stored_key) {
            return Err(ScramError::InvalidProof);
        }

        let server_signature = hmac(&self.secret.server_key, &auth_message);
        let mut server_final = b"v=".to_vec();
        server_final.extend_from_slice(BASE64.encode(server_signature).as_bytes());
        let keys = ScramKeys {
            client_key,
            server_key: self.secret.server_key,
        };
        Ok((server_final, keys))
    }
}
