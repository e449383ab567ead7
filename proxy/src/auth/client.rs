//! The proxy's side of a client's password exchange.

use super::secret::{Secret, ServerCredential};
use crate::wire::{Conn, WireError};
use pgcutover_config::AuthType;
use pgcutover_protocol::build;
use pgcutover_protocol::frontend::{self, parse_password, parse_sasl_initial_response};
use pgcutover_protocol::md5::verify_md5_response;
use pgcutover_protocol::scram::{ScramError, ScramSecret, ScramServer, SCRAM_SHA_256};

/// Why a client was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// Wrong password (or wrong SCRAM proof).
    #[error("password authentication failed for user {0:?}")]
    WrongPassword(String),
    /// The stored secret is an md5 hash and the client must prove a SCRAM password:
    /// the client saw an ordinary failed exchange (as PostgreSQL does it), the log
    /// says why.
    #[error("user {0:?} has an md5 secret, which cannot verify SCRAM-SHA-256: store the user's SCRAM-SHA-256 verifier or plain password in auth_file, or set auth_type = \"md5\"")]
    Md5SecretForScram(String),
    /// The stored secret cannot serve the configured method.
    #[error("{message}")]
    Unusable {
        /// What is wrong.
        message: String,
        /// What to do.
        hint: String,
    },
    /// The client broke the exchange.
    #[error("authentication protocol violation: {0}")]
    Protocol(String),
    /// The connection failed mid-exchange.
    #[error("{0}")]
    Wire(#[from] WireError),
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b
}

/// Runs the exchange `auth_type` calls for against `secret`; on success returns what
/// the proxy can log into the server with. AuthenticationOk is not sent here: the
/// session sends it once the server login has succeeded too.
pub async fn authenticate_client(
    conn: &mut Conn,
    user: &str,
    auth_type: AuthType,
    secret: &Secret,
) -> Result<ServerCredential, AuthFailure> {
    match (auth_type, secret) {
        (AuthType::Trust, s) => Ok(s.server_credential()),
        (_, Secret::Scram(verifier)) => {
            let keys = scram_exchange(conn, user, verifier.clone()).await?;
            Ok(ServerCredential::ScramKeys(keys))
        }
        (AuthType::ScramSha256, Secret::Plain(password)) => {
            // A verifier made up for the password: the client proves it knows the
            // password, and the proxy logs into the server with the password itself.
            let verifier = plain_verifier(user, password).await?;
            scram_exchange(conn, user, verifier).await?;
            Ok(ServerCredential::Password(password.clone()))
        }
        (AuthType::ScramSha256, Secret::Md5(_)) => {
            // Telling the client would tell anyone which kind of secret a user has.
            let _ = scram_exchange(conn, user, Secret::mock_verifier(user)).await;
            Err(AuthFailure::Md5SecretForScram(user.to_owned()))
        }
        (AuthType::Md5, Secret::Plain(password)) => {
            let stored = pgcutover_protocol::md5::md5_secret(user, password);
            md5_exchange(conn, user, &stored).await?;
            Ok(ServerCredential::Password(password.clone()))
        }
        (AuthType::Md5, Secret::Md5(stored)) => {
            md5_exchange(conn, user, stored).await?;
            Ok(ServerCredential::Md5(stored.clone()))
        }
    }
}

/// Most verifiers of plain passwords kept; past it the table starts over.
const MAX_PLAIN_VERIFIERS: usize = 10_000;

/// The SCRAM verifier of a plain password, derived once per user and password for
/// the life of the process, as PostgreSQL stores one: the 4096 PBKDF2 rounds then
/// cost one login, not every attempt (a flood of attempts would otherwise keep the
/// runtime's threads busy), and run off the runtime.
async fn plain_verifier(user: &str, password: &str) -> Result<ScramSecret, AuthFailure> {
    type Verifiers = std::collections::HashMap<String, (String, ScramSecret)>;
    static VERIFIERS: std::sync::Mutex<Option<Verifiers>> = std::sync::Mutex::new(None);
    let known = |v: &Verifiers| v.get(user).filter(|(p, _)| p == password).map(|(_, s)| s.clone());
    {
        let table = VERIFIERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(verifier) = table.as_ref().and_then(known) {
            return Ok(verifier);
        }
    }
    let owned = password.to_owned();
    let verifier = tokio::task::spawn_blocking(move || ScramSecret::from_password(&owned, &random::<16>(), 4096))
        .await
        .map_err(|e| AuthFailure::Protocol(format!("deriving the SCRAM verifier: {e}")))?;
    let mut table = VERIFIERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let table = table.get_or_insert_with(Verifiers::new);
    if table.len() >= MAX_PLAIN_VERIFIERS {
        table.clear();
    }
    let entry = table
        .entry(user.to_owned())
        .or_insert_with(|| (password.to_owned(), verifier.clone()));
    // Another login may have derived it meanwhile: theirs stays, so the salt is stable.
    if entry.0 != password {
        *entry = (password.to_owned(), verifier);
    }
    Ok(entry.1.clone())
}

async fn md5_exchange(conn: &mut Conn, user: &str, stored: &str) -> Result<(), AuthFailure> {
    let salt = random::<4>();
    build::authentication_md5(&mut conn.wbuf, salt);
    conn.flush().await.map_err(WireError::from)?;
    let f = expect_password_message(conn).await?;
    let response = parse_password(&f).map_err(|e| AuthFailure::Protocol(e.to_string()))?;
    if verify_md5_response(stored, salt, response) {
        Ok(())
    } else {
        Err(AuthFailure::WrongPassword(user.to_owned()))
    }
}

async fn scram_exchange(
    conn: &mut Conn,
    user: &str,
    verifier: ScramSecret,
) -> Result<pgcutover_protocol::scram::ScramKeys, AuthFailure> {
    let scram_err = |e: ScramError| match e {
        ScramError::InvalidProof => AuthFailure::WrongPassword(user.to_owned()),
        ScramError::ChannelBindingUnsupported => AuthFailure::Unusable {
            message: "SCRAM channel binding is not supported by pgcutover".into(),
            hint: "connect with channel_binding=prefer or disable".into(),
        },
        other => AuthFailure::Protocol(other.to_string()),
    };
    let mut server = ScramServer::new(verifier, &random::<18>());
    build::authentication_sasl(&mut conn.wbuf, &[SCRAM_SHA_256]);
    conn.flush().await.map_err(WireError::from)?;

    let f = expect_password_message(conn).await?;
    let (mechanism, data) = parse_sasl_initial_response(&f).map_err(|e| AuthFailure::Protocol(e.to_string()))?;
    if mechanism != SCRAM_SHA_256 {
        return Err(AuthFailure::Protocol(format!(
            "client chose SASL mechanism {mechanism:?}, only {SCRAM_SHA_256} was offered"
        )));
    }
    let server_first = server.handle_client_first(data).map_err(scram_err)?;
    build::authentication_sasl_continue(&mut conn.wbuf, &server_first);
    conn.flush().await.map_err(WireError::from)?;

    let f = expect_password_message(conn).await?;
    let (server_final, keys) = server.handle_client_final(&f).map_err(scram_err)?;
    build::authentication_sasl_final(&mut conn.wbuf, &server_final);
    Ok(keys)
}

async fn expect_password_message(conn: &mut Conn) -> Result<bytes::Bytes, AuthFailure> {
    let f = conn.read_frame().await?;
    if f.tag != frontend::PASSWORD {
        return Err(AuthFailure::Protocol(format!(
            "expected a password message, got message type {:?}",
            char::from(f.tag)
        )));
    }
    Ok(f.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_plain_password_is_derived_once_and_again_when_it_changes() {
        let first = plain_verifier("derived_once", "secret").await.unwrap();
        let again = plain_verifier("derived_once", "secret").await.unwrap();
        assert_eq!(first, again, "the same salt and keys: no second derivation");
        let changed = plain_verifier("derived_once", "another").await.unwrap();
        assert_ne!(changed.stored_key, first.stored_key);
        assert_eq!(changed, ScramSecret::from_password("another", &changed.salt, 4096));
    }
}
