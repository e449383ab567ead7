//! PostgreSQL's legacy MD5 password authentication (AuthenticationMD5Password).
//!
//! The stored secret is `"md5" + hex(md5(password || user))`; on the wire the client answers
//! a 4-byte salt with `"md5" + hex(md5(hex_part_of_secret || salt))`. Because the wire
//! response only needs the stored secret, a proxy holding the secret can both verify clients
//! and log into servers without ever knowing the password.

use ::md5::{Digest, Md5};

const PREFIX: &str = "md5";

/// Length of a hex-encoded MD5 digest.
const HEX_LEN: usize = 32;

/// The pg_authid form of an MD5 password: "md5" + hex(md5(password || user)).
pub fn md5_secret(user: &str, password: &str) -> String {
    prefixed_hex_md5(&[password.as_bytes(), user.as_bytes()])
}

/// Whether a stored secret is an MD5 hash ("md5" + 32 lowercase hex chars).
pub fn is_md5_secret(s: &str) -> bool {
    // Same test as PostgreSQL's get_password_type(): uppercase hex is not an MD5 secret there.
    s.strip_prefix(PREFIX)
        .is_some_and(|hex| hex.len() == HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The PasswordMessage a client sends for AuthenticationMD5Password(salt), given the stored md5 secret: "md5" + hex(md5(hex_part_of_secret || salt)); None if `secret` is not an md5 secret.
pub fn md5_response(secret: &str, salt: [u8; 4]) -> Option<String> {
    if !is_md5_secret(secret) {
        return None;
    }
    let hex = secret.strip_prefix(PREFIX)?;
    Some(prefixed_hex_md5(&[hex.as_bytes(), &salt]))
}

/// Constant-time check of a client's md5 response (PasswordMessage contents, a trailing NUL is ignored) against the stored secret; false if `secret` is not an md5 secret.
pub fn verify_md5_response(secret: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let Some(expected) = md5_response(secret, salt) else {
        return false;
    };
    // PasswordMessage carries a C string; tolerate callers that pass the terminator along.
    let response = response.strip_suffix(&[0]).unwrap_or(response);
    // The length is public (always 35 for a genuine response), so only the contents need a
    // comparison without an early exit.
    expected.len() == response.len() && expected.bytes().zip(response).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn prefixed_hex_md5(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(PREFIX.len().saturating_add(HEX_LEN));
    out.push_str(PREFIX);
    for byte in digest {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0x0f));
    }
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values below were computed independently with Python's hashlib:
    //   s = "md5" + hashlib.md5(b"password" + b"postgres").hexdigest()
    //   "md5" + hashlib.md5(s[3:].encode() + bytes([1, 2, 3, 4])).hexdigest()
    // and the secrets were cross-checked against PostgreSQL 15.18 (SET password_encryption =
    // 'md5'; ALTER ROLE ... PASSWORD ...; then pg_authid.rolpassword).
    const POSTGRES_SECRET: &str = "md532e12f215ba27cb750c9e093ce4b5127";

    #[test]
    fn secret_matches_postgres() {
        assert_eq!(md5_secret("postgres", "password"), POSTGRES_SECRET);
        assert_eq!(md5_secret("m1", "password"), "md548d20229a18ffbc09dea0af87bcd65a6");
    }

    #[test]
    fn response_matches_independent_computation() {
        assert_eq!(
            md5_response(POSTGRES_SECRET, [1, 2, 3, 4]).as_deref(),
            Some("md598511ceaec347a656f032c7f2a16ef17")
        );
        assert_eq!(
            md5_response(POSTGRES_SECRET, [0x93, 0x1d, 0xe4, 0x7f]).as_deref(),
            Some("md5e265db93d98f3006cbbd7596f6f51b51")
        );
    }

    #[test]
    fn recognises_md5_secrets() {
        assert!(is_md5_secret(POSTGRES_SECRET));
        assert!(!is_md5_secret("md532E12F215BA27CB750C9E093CE4B5127"));
        assert!(!is_md5_secret("md532e12f215ba27cb750c9e093ce4b512"));
        assert!(!is_md5_secret("md532e12f215ba27cb750c9e093ce4b51277"));
        assert!(!is_md5_secret("md532e12f215ba27cb750c9e093ce4b512g"));
        assert!(!is_md5_secret("32e12f215ba27cb750c9e093ce4b5127"));
        assert!(!is_md5_secret("md5"));
        assert!(!is_md5_secret(""));
        assert!(!is_md5_secret("SCRAM-SHA-256$4096:c2FsdA==$a:b"));
        // Multi-byte characters must not trip a byte-length check into slicing mid-char.
        assert!(!is_md5_secret("md5ééééééééééééééé\u{e9}é"));
    }

    #[test]
    fn response_needs_an_md5_secret() {
        assert_eq!(md5_response("password", [1, 2, 3, 4]), None);
        assert_eq!(md5_response("", [0; 4]), None);
        assert!(!verify_md5_response(
            "password",
            [1, 2, 3, 4],
            b"md598511ceaec347a656f032c7f2a16ef17"
        ));
    }

    #[test]
    fn verify_accepts_only_the_right_response() {
        let salt = [1, 2, 3, 4];
        let good = b"md598511ceaec347a656f032c7f2a16ef17";
        assert!(verify_md5_response(POSTGRES_SECRET, salt, good));
        assert!(verify_md5_response(
            POSTGRES_SECRET,
            salt,
            b"md598511ceaec347a656f032c7f2a16ef17\0"
        ));
        assert!(!verify_md5_response(POSTGRES_SECRET, [4, 3, 2, 1], good));
        assert!(!verify_md5_response(
            POSTGRES_SECRET,
            salt,
            b"md598511ceaec347a656f032c7f2a16ef18"
        ));
        assert!(!verify_md5_response(
            POSTGRES_SECRET,
            salt,
            b"MD598511CEAEC347A656F032C7F2A16EF17"
        ));
        assert!(!verify_md5_response(POSTGRES_SECRET, salt, b""));
        assert!(!verify_md5_response(POSTGRES_SECRET, salt, b"\0"));
        assert!(!verify_md5_response(POSTGRES_SECRET, salt, &good[..34]));
        // The plaintext password must not be accepted in place of the hash.
        assert!(!verify_md5_response(POSTGRES_SECRET, salt, b"password"));
        // Neither must the stored secret itself (that would make it a replayable password).
        assert!(!verify_md5_response(POSTGRES_SECRET, salt, POSTGRES_SECRET.as_bytes()));
    }

    #[test]
    fn round_trip_through_secret() {
        let secret = md5_secret("alice", "correct horse");
        assert!(is_md5_secret(&secret));
        let salt = [0xde, 0xad, 0xbe, 0xef];
        let response = md5_response(&secret, salt).unwrap();
        assert!(verify_md5_response(&secret, salt, response.as_bytes()));
    }
}
