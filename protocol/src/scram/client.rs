//! The client side: logs into PostgreSQL with a password or pass-through keys.

use super::*;

pub(super) enum ClientState {
    AwaitingServerFirst,
    AwaitingServerFinal {
        server_signature: [u8; KEY_LEN],
    },
    /// Success or failure: either way the exchange cannot be continued.
    Done,
}

/// Client side of one exchange (the proxy logging into a PostgreSQL server).
pub struct ScramClient {
    credential: ScramCredential,
    /// Sent verbatim in `n=`; always empty outside tests, like libpq, because PostgreSQL takes the user from the startup packet.
    username: String,
    client_nonce: String,
    state: ClientState,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::AwaitingServerFirst => "AwaitingServerFirst",
            ClientState::AwaitingServerFinal { .. } => "AwaitingServerFinal",
            ClientState::Done => "Done",
        };
        f.debug_struct("ScramClient")
            .field("credential", &self.credential)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts an exchange; `client_nonce` is fresh random bytes (18+, like libpq) from the caller.
    pub fn new(credential: ScramCredential, client_nonce: &[u8]) -> Self {
        Self::with_user_and_nonce(credential, String::new(), BASE64.encode(client_nonce))
    }

    // Separate from `new` so tests can replay published vectors, which carry a user name and a
    // nonce that is not base64 of anything.
    pub(super) fn with_user_and_nonce(credential: ScramCredential, username: String, client_nonce: String) -> Self {
        Self {
            credential,
            username,
            client_nonce,
            state: ClientState::AwaitingServerFirst,
        }
    }

    fn client_first_bare(&self) -> Vec<u8> {
        format!("n={},r={}", self.username, self.client_nonce).into_bytes()
    }

    /// The client-first-message (`n,,n=,r=<nonce>`) to send in SASLInitialResponse.
    pub fn client_first(&self) -> Vec<u8> {
        let mut message = GS2_HEADER_NO_CB.to_vec();
        message.extend_from_slice(&self.client_first_bare());
        message
    }

    /// Handles AuthenticationSASLContinue data (server-first-message); returns the client-final-message for SASLResponse.
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        // As on the server side, any failure ends the exchange.
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        if !matches!(state, ClientState::AwaitingServerFirst) {
            return Err(ScramError::UnexpectedState);
        }

        let parsed = parse_server_first(server_first)?;
        if !parsed.nonce.starts_with(self.client_nonce.as_bytes()) {
            return Err(ScramError::NonceMismatch);
        }
        if !(1..=MAX_CLIENT_ITERATIONS).contains(&parsed.iterations) {
            return Err(ScramError::Malformed("iteration count (i=) out of range"));
        }

        let (client_key, server_key) = match &self.credential {
            ScramCredential::Password(password) => {
                let salted = salted_password(password, &parsed.salt, parsed.iterations);
                (hmac(&salted, &[b"Client Key"]), hmac(&salted, &[b"Server Key"]))
            }
            ScramCredential::Keys(keys) => (keys.client_key, keys.server_key),
        };

        let mut without_proof = b"c=".to_vec();
        without_proof.extend_from_slice(BASE64.encode(GS2_HEADER_NO_CB).as_bytes());
        without_proof.extend_from_slice(b",r=");
        without_proof.extend_from_slice(parsed.nonce);

        let client_first_bare = self.client_first_bare();
        let auth_message = [
            client_first_bare.as_slice(),
            b",",
            server_first,
            b",",
            without_proof.as_slice(),
        ];
        let client_signature = hmac(&sha256(&client_key), &auth_message);
        let proof = xor(&client_key, &client_signature);

        self.state = ClientState::AwaitingServerFinal {
            server_signature: hmac(&server_key, &auth_message),
        };

        let mut client_final = without_proof;
        client_final.extend_from_slice(b",p=");
        client_final.extend_from_slice(BASE64.encode(proof).as_bytes());
        Ok(client_final)
    }

    /// Handles AuthenticationSASLFinal data (server-final-message): verifies `v=`, or reports `e=` as ServerError.
    pub fn handle_server_final(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let ClientState::AwaitingServerFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::UnexpectedState);
        };

        check_message(server_final)?;
        let mut attrs = AttrReader::new(server_final);
        match attrs.next_attr("server-final-message (expected v= or e=)")? {
            (b'e', reason) => Err(ScramError::ServerError(String::from_utf8_lossy(reason).into_owned())),
            (b'v', signature) => {
                if !attrs.at_end() {
                    return Err(ScramError::Malformed("trailing data after server signature (v=)"));
                }
                let signature = decode_key(signature).ok_or(ScramError::Malformed("server signature (v=)"))?;
                if constant_time_eq(&signature, &server_signature) {
                    Ok(())
                } else {
                    Err(ScramError::InvalidServerSignature)
                }
            }
            _ => Err(ScramError::Malformed("server-final-message (expected v= or e=)")),
        }
    }
}
