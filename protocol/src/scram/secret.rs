//! The stored verifier and the keys a SCRAM exchange recovers.

use super::*;

/// A stored SCRAM verifier, as in pg_authid.rolpassword: `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count used to derive the keys (at least 1).
    pub iterations: u32,
    /// Salt used to derive the keys.
    pub salt: Vec<u8>,
    /// SHA-256(ClientKey): verifies client proofs.
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key"): signs the server-final-message.
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses a pg_authid-style SCRAM-SHA-256 verifier.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s.strip_prefix(SECRET_PREFIX).ok_or(ScramError::MalformedSecret)?;
        let (iterations_salt, keys) = rest.split_once('$').ok_or(ScramError::MalformedSecret)?;
        let (iterations, salt) = iterations_salt.split_once(':').ok_or(ScramError::MalformedSecret)?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(ScramError::MalformedSecret)?;

        let iterations = parse_decimal_u32(iterations.as_bytes())
            .filter(|&i| i > 0)
            .ok_or(ScramError::MalformedSecret)?;
        let salt = BASE64.decode(salt).map_err(|_| ScramError::MalformedSecret)?;
        let stored_key = decode_key(stored_key.as_bytes()).ok_or(ScramError::MalformedSecret)?;
        let server_key = decode_key(server_key.as_bytes()).ok_or(ScramError::MalformedSecret)?;
        Ok(Self {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Cheap check whether a stored password looks like a SCRAM-SHA-256 verifier (prefix only).
    pub fn is_scram_secret(s: &str) -> bool {
        s.starts_with(SECRET_PREFIX)
    }

    /// Derives a verifier from a password exactly as PostgreSQL's CREATE/ALTER ROLE does (0 iterations is treated as 1).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations = iterations.max(1);
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// The verifier an unknown user is challenged with, as PostgreSQL's mock
    /// authentication does: derived from `key` (a secret of the process) and the
    /// name, so the same name always gets the same salt, and no password matches.
    pub fn mock(user: &str, key: &[u8]) -> Self {
        let salt = hmac(key, &[b"mock salt", user.as_bytes()]);
        Self {
            iterations: DEFAULT_ITERATIONS,
            salt: salt[..16].to_vec(),
            stored_key: hmac(key, &[b"mock stored key", user.as_bytes()]),
            server_key: hmac(key, &[b"mock server key", user.as_bytes()]),
        }
    }

    /// Renders the verifier in pg_authid form; the inverse of [`ScramSecret::parse`].
    pub fn to_verifier(&self) -> String {
        format!(
            "{SECRET_PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key),
        )
    }
}

/// Keys recovered from / used in an exchange; ClientKey = ClientProof XOR ClientSignature.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// HMAC(SaltedPassword, "Client Key"): enough to log in as the user wherever the same verifier is stored.
    pub client_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key"): lets the client check the server's signature.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramKeys {
    // The client key is a password equivalent for this verifier, so it must never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("client_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// What a client side authenticates with: a password, or keys recovered from a client's exchange (pass-through, like PgBouncer).
#[derive(Clone, PartialEq, Eq)]
pub enum ScramCredential {
    /// A plaintext password, SASLprepped and salted with whatever the server announces.
    Password(String),
    /// Keys recovered by [`ScramServer`]; only valid against a server storing the same verifier (same salt and iterations).
    Keys(ScramKeys),
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Password(<redacted>)"),
            Self::Keys(keys) => f.debug_tuple("Keys").field(keys).finish(),
        }
    }
}
