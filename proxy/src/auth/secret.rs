//! A stored secret in any of the forms PostgreSQL and PgBouncer use.

use pgcutover_protocol::md5::is_md5_secret;
use pgcutover_protocol::scram::{ScramKeys, ScramSecret};

/// A user's secret as stored in `auth_file` or `pg_authid.rolpassword`.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// `md5` + hex(md5(password || user)).
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramSecret),
}

impl Secret {
    /// Classifies a stored string; a malformed SCRAM verifier is an error rather
    /// than being mistaken for a plain password.
    pub fn parse(s: &str) -> Result<Secret, String> {
        if ScramSecret::is_scram_secret(s) {
            ScramSecret::parse(s)
                .map(Secret::Scram)
                .map_err(|e| format!("malformed SCRAM-SHA-256 verifier: {e}"))
        } else if is_md5_secret(s) {
            Ok(Secret::Md5(s.to_owned()))
        } else {
            Ok(Secret::Plain(s.to_owned()))
        }
    }

    /// What an unknown user is challenged with: a SCRAM verifier no password
    /// matches, with a salt fixed per name for this process, so that the exchange,
    /// its timing and the failure look like a known user's wrong password.
    pub fn mock(user: &str) -> Secret {
        Secret::Scram(Secret::mock_verifier(user))
    }

    /// The verifier of [`Secret::mock`].
    pub fn mock_verifier(user: &str) -> ScramSecret {
        static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).expect("the OS random source is available");
            key
        });
        ScramSecret::mock(user, key)
    }

    /// What the proxy can log into a server with when the client did not run an
    /// exchange that yields more (trust).
    pub fn server_credential(&self) -> ServerCredential {
        match self {
            Secret::Plain(p) => ServerCredential::Password(p.clone()),
            Secret::Md5(h) => ServerCredential::Md5(h.clone()),
            Secret::Scram(_) => ServerCredential::None,
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(..)",
            Secret::Md5(_) => "Secret::Md5(..)",
            Secret::Scram(_) => "Secret::Scram(..)",
        })
    }
}

/// What the proxy presents when the server asks for a password.
#[derive(Clone)]
pub enum ServerCredential {
    /// Nothing: works only when the server trusts the connection.
    None,
    /// The plain password: answers cleartext, md5 and SCRAM.
    Password(String),
    /// The md5 hash: answers md5 only.
    Md5(String),
    /// SCRAM keys recovered from the client's exchange: answers SCRAM only, and only
    /// where the server holds the same verifier.
    ScramKeys(ScramKeys),
}
