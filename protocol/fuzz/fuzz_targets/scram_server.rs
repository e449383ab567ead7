//! The server side of SCRAM-SHA-256 on client input: `ScramServer::handle_client_first`
//! (client-first-message, from SASLInitialResponse) and `handle_client_final`
//! (client-final-message, from SASLResponse), which run `parse_client_first` and
//! `parse_client_final` on what a client sent.
//!
//! Input layout: 1 flag byte, then the client-first-message, then (unless flag
//! bit 2) a NUL byte and the client-final-message. Flags help the fuzzer past what
//! it cannot guess:
//! - bit 0: the client-final-message starts with the correct
//!   `c=<base64 gs2 header>,r=<client nonce + server nonce>`, the input's bytes
//!   following it (`,x=...` extensions, or anything);
//! - bit 1: `,p=<the correct proof>` is appended, computed by the harness (which
//!   knows the password) over the message before it, as a real client would;
//! - bit 2: no client-final-message; all the rest is the client-first-message
//!   (NUL bytes included).
//!
//! Checked: no panic; errors format; a refused message ends the exchange (every
//! later call is `UnexpectedState`); an accepted client-first-message has a `n,,`
//! or `y,,` header and a `r=` attribute, and the server-first-message is
//! `r=<that nonce><server nonce>,s=<salt>,i=<iterations>`; an accepted
//! client-final-message ends with a proof that is correct, and the keys recovered
//! and the server signature are exactly the ones the password gives; with a correct
//! proof the answer is never `InvalidProof`, and with bits 0 and 1 and nothing in
//! between the exchange succeeds.
#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use pgcutover_protocol::scram::{ScramError, ScramSecret, ScramServer};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::sync::OnceLock;

const PASSWORD: &str = "pencil";
const SALT: &[u8] = b"pgcutover-fuzz-salt";
const ITERATIONS: u32 = 4096;
/// Random bytes in real use; `ScramServer::new` sends their base64.
const SERVER_NONCE: &[u8; 18] = b"fuzz-server-nonce!";

struct Material {
    secret: ScramSecret,
    client_key: [u8; 32],
    server_nonce: String,
}

/// PBKDF2 once per process.
fn material() -> &'static Material {
    static M: OnceLock<Material> = OnceLock::new();
    M.get_or_init(|| {
        let secret = ScramSecret::from_password(PASSWORD, SALT, ITERATIONS);
        // SaltedPassword = Hi(password, salt, i); ClientKey = HMAC(SaltedPassword, "Client Key").
        let salted = hi(PASSWORD.as_bytes(), SALT, ITERATIONS);
        let client_key = hmac(&salted, &[b"Client Key"]);
        assert_eq!(
            sha256(&client_key),
            secret.stored_key,
            "harness and crate disagree on the keys"
        );
        Material {
            secret,
            client_key,
            server_nonce: BASE64.encode(SERVER_NONCE),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let m = material();
    let (first, final_part) = if flags & 4 != 0 {
        (rest, None)
    } else {
        match rest.iter().position(|&b| b == 0) {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        }
    };

    let mut server = ScramServer::new(m.secret.clone(), SERVER_NONCE);
    black_box(format!("{server:?}"));
    let server_first = match server.handle_client_first(first) {
        Ok(sf) => sf,
        Err(e) => {
            black_box(e.to_string());
            assert_ne!(e, ScramError::UnexpectedState);
            assert_eq!(server.handle_client_first(first), Err(ScramError::UnexpectedState));
            assert!(matches!(
                server.handle_client_final(b"c=biws"),
                Err(ScramError::UnexpectedState)
            ));
            return;
        }
    };

    // The client-first-message that was accepted, and the server's answer to it.
    let gs2: &[u8] = &first[..3];
    assert!(gs2 == b"n,," || gs2 == b"y,,", "accepted gs2 header {gs2:?}");
    let bare = &first[3..];
    let sf = server_first.as_slice();
    let tail = format!(",s={},i={ITERATIONS}", BASE64.encode(SALT));
    assert!(sf.starts_with(b"r="), "server-first {sf:?}");
    assert!(sf.ends_with(tail.as_bytes()), "server-first {sf:?}");
    let combined = &sf[2..sf.len() - tail.len()];
    assert!(combined.ends_with(m.server_nonce.as_bytes()));
    let client_nonce = &combined[..combined.len() - m.server_nonce.len()];
    assert!(!client_nonce.is_empty());
    assert!(client_nonce.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b','));
    let attr = [b",r=", client_nonce].concat();
    let at = find(bare, &attr).expect("client nonce not in the client-first-message");
    let after = at + attr.len();
    assert!(after == bare.len() || bare[after] == b',', "nonce cut short");

    let Some(final_part) = final_part else { return };

    // The client-final-message.
    let mut message = Vec::new();
    if flags & 1 != 0 {
        message.extend_from_slice(b"c=");
        message.extend_from_slice(BASE64.encode(gs2).as_bytes());
        message.extend_from_slice(b",r=");
        message.extend_from_slice(combined);
    }
    message.extend_from_slice(final_part);
    let auth_message = |without_proof: &[u8]| [bare, b",", sf, b",", without_proof].concat();
    if flags & 2 != 0 {
        let stored_key = sha256(&m.client_key);
        let signature = hmac(&stored_key, &[&auth_message(&message)]);
        let proof: Vec<u8> = m.client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        message.extend_from_slice(b",p=");
        message.extend_from_slice(BASE64.encode(proof).as_bytes());
    }

    match server.handle_client_final(&message) {
        Ok((server_final, keys)) => {
            // Only a correct proof gets here: it is the last attribute, and everything
            // before its comma is what the proof signed. One trailing comma after it
            // is accepted, as PostgreSQL's read_attr_value consumes it too
            // (regressions/scram_server/trailing_comma_after_the_proof).
            let signed = message.strip_suffix(b",").unwrap_or(&message);
            let comma = signed.iter().rposition(|&b| b == b',').expect("a proof attribute");
            assert!(signed[comma + 1..].starts_with(b"p="));
            assert_eq!(signed.len() - comma - 3, 44, "proof length");
            assert_eq!(keys.client_key, m.client_key, "recovered a wrong client key");
            assert_eq!(keys.server_key, m.secret.server_key);
            let signature = hmac(&m.secret.server_key, &[&auth_message(&message[..comma])]);
            assert_eq!(
                server_final,
                [b"v=".as_slice(), BASE64.encode(signature).as_bytes()].concat()
            );
            black_box(format!("{keys:?}"));
        }
        Err(e) => {
            black_box(e.to_string());
            assert_ne!(e, ScramError::UnexpectedState);
            if flags & 2 != 0 {
                assert_ne!(e, ScramError::InvalidProof, "a correct proof was refused: {message:?}");
            }
            if flags & 3 == 3 {
                assert!(!final_part.is_empty(), "a well-formed exchange failed: {e}");
            }
        }
    }
    assert!(matches!(
        server.handle_client_final(&message),
        Err(ScramError::UnexpectedState)
    ));
    assert_eq!(server.handle_client_first(first), Err(ScramError::UnexpectedState));
});

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// PBKDF2-HMAC-SHA-256, one block (RFC 5802's Hi), written out independently of the crate.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}
