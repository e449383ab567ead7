use std::sync::OnceLock;

use super::*;

// RFC 7677 section 3.
const RFC_USER: &str = "user";
const RFC_PASSWORD: &str = "pencil";
const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_FIRST: &[u8] =
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &[u8] =
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

// Produced by PostgreSQL 15.18 (`SET password_encryption = 'scram-sha-256'; CREATE ROLE
// ... PASSWORD '<password>'`, then reading pg_authid.rolpassword). Besides "secret" these
// cover each branch of pg_saslprep(): mapping, NFKC, empty-after-mapping, prohibited
// (before NFKC), bidi, private use and the ASCII fast path.
const PG_VERIFIERS: &[(&str, &str)] = &[
    ("secret", "SCRAM-SHA-256$4096:Do4LNUnQTf80no8s+w/sxg==$8zc8EdZwbIZBb1bEaWNlE/h98Qsn9wfBPO1jT02auI4=:dKbdKRJNcz9dCqHtzct1+yXbWNUSSQLPDFzBrdHpLDU="),
    ("IX", "SCRAM-SHA-256$4096:AjA4WRpXa4CUkiq+7OB7Nw==$MdsiQfHbAP5n2sNmAdCDL2r/8RPNFcF1ufhnPFBC4nQ=:2qaGo8sZAXUEGrDprm0lucEwmECrBDW2Wl8H+FQ3qQI="),
    ("I\u{ad}X", "SCRAM-SHA-256$4096:Ty3Sd8wXlINMdmDEz5SHQQ==$lQiwNv6mR/6QY8ylMXXW6/Tv1qWDGMT+IXW4Sp6FWSg=:1AokgBTFhZ9pK7oYpnh14/PHQCprQ32jdUJ4GENpkqY="),
    ("\u{2168}", "SCRAM-SHA-256$4096:cdfUtx2xJlz0T45TXrNhnA==$cIq8q/8MOosLyCMFyLsHC6k51d7SpCJ2bD6dx3RWlho=:bqMM/i21eKuJsxkWMNWssfRmG3LyoegNaLNl+fyBsvE="),
    ("\u{ad}", "SCRAM-SHA-256$4096:orGT1AvIIkgYXOUKnDCpOg==$246/8FyhFuFvpybhgVMuE8OXfkDT5oODaqrrZtDDJkY=:K0opek5X4LqGGK/lBOq1C+2i2nslMqTChturG7emn0Y="),
    ("a\u{340}", "SCRAM-SHA-256$4096:Sw+Uiw/F8B4ATYsRYzVZng==$6dk04ajDVw7TplUfGP0lkbppHzwHz9pzOOszPj4uhsg=:6n3J6eYBC7BP9xZkyFpqvNzrDmoeXSiATVaN9MjBQwc="),
    ("\u{627}\u{31}", "SCRAM-SHA-256$4096:lMw/i58XzqPAXJiiujuuyg==$v0capx0XPxePVvf8txO4xQ3iwrrvP5obcMGO2WL8TvA=:q9oc+svgvYfoDKFWZUI9gGIIQG22qzRLUpfimnr420E="),
    ("a\u{7}b", "SCRAM-SHA-256$4096:KwDDMTp7kBEPqrjmoe/1FA==$KCN+RAjI1O3fxt3GRQH/Alt0A4U7bQ7XS8k8Miri6hc=:2adUa5rzKRdJIp+xmZ9Jr/kCfS2UomcOEX+0yN2idT4="),
    ("pa\u{308}ss", "SCRAM-SHA-256$4096:GXNHCs6eaWpvIjfgIGcsCA==$nM1AqSY+wP+vGt8wlQq3mzEHvxPga82sPxO0Lt7pslw=:iaAQqdlrGg1ri1jEsUI/it/W9uC6PpmGbfn0FWMzdnw="),
    ("\u{e000}x", "SCRAM-SHA-256$4096:j08NilDlzyDgNXtMueGrCA==$662folSymDNhbtaDZ0vIL1JQV69YenJYtF0PPE5O6UY=:rNR/vcmSl+0BY8kG3nqgf9QnYUkwMMFOhF6I2IKLovE="),
    ("\u{a0}pw", "SCRAM-SHA-256$4096:UHSSDIT/1/DL4TPGM5Upaw==$H6bTFjYrSyNhraYl+Nr/lwB4IkACw/iaBVHkICEhGqg=:MSKlr4+scluRS74b71EMuS2909vdRAVW25HQyoZf3QU="),
];

fn pg_secret(password: &str) -> ScramSecret {
    let (_, verifier) = PG_VERIFIERS
        .iter()
        .find(|(p, _)| *p == password)
        .expect("test verifier exists");
    ScramSecret::parse(verifier).expect("PostgreSQL verifier parses")
}

fn rfc_salt() -> Vec<u8> {
    BASE64.decode(RFC_SALT_B64).expect("valid base64")
}

// PBKDF2 is slow in unoptimised test builds, so derive the RFC material once.
fn rfc_secret() -> ScramSecret {
    static SECRET: OnceLock<ScramSecret> = OnceLock::new();
    SECRET
        .get_or_init(|| ScramSecret::from_password(RFC_PASSWORD, &rfc_salt(), 4096))
        .clone()
}

fn rfc_keys() -> ScramKeys {
    static KEYS: OnceLock<ScramKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let salted = salted_password(RFC_PASSWORD, &rfc_salt(), 4096);
        ScramKeys {
            client_key: hmac(&salted, &[b"Client Key"]),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    })
    .clone()
}

/// Same exchange as [`rfc_client`] without the PBKDF2 cost, for tests that run many exchanges.
fn rfc_keys_client() -> ScramClient {
    ScramClient::with_user_and_nonce(
        ScramCredential::Keys(rfc_keys()),
        RFC_USER.to_string(),
        RFC_CLIENT_NONCE.to_string(),
    )
}

fn rfc_server() -> ScramServer {
    ScramServer::with_printable_nonce(rfc_secret(), RFC_SERVER_NONCE.to_string())
}

fn rfc_client() -> ScramClient {
    ScramClient::with_user_and_nonce(
        ScramCredential::Password(RFC_PASSWORD.to_string()),
        RFC_USER.to_string(),
        RFC_CLIENT_NONCE.to_string(),
    )
}

/// Runs a full exchange; returns the server's recovered keys or the first error.
fn exchange(client: &mut ScramClient, server: &mut ScramServer) -> Result<ScramKeys, ScramError> {
    let server_first = server.handle_client_first(&client.client_first())?;
    let client_final = client.handle_server_first(&server_first)?;
    let (server_final, keys) = server.handle_client_final(&client_final)?;
    client.handle_server_final(&server_final)?;
    Ok(keys)
}

/// Deterministic xorshift so the mutation tests are reproducible without a rand dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    for _ in 0..=rng.below(3) {
        let interesting = [b',', b'=', 0, 0xff, b'a', b'p', b'r', b'c', b'v', b'e'];
        match rng.below(4) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.remove(i);
            }
            1 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, interesting[rng.below(interesting.len())]);
            }
            2 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            _ => {
                let i = rng.below(out.len() + 1);
                out.truncate(i);
            }
        }
    }
    out
}

#[test]
fn rfc7677_vector_client_side() {
    let mut client = rfc_client();
    assert_eq!(client.client_first(), RFC_CLIENT_FIRST);
    let client_final = client.handle_server_first(RFC_SERVER_FIRST).unwrap();
    assert_eq!(
        String::from_utf8(client_final).unwrap(),
        String::from_utf8(RFC_CLIENT_FINAL.to_vec()).unwrap()
    );
    client.handle_server_final(RFC_SERVER_FINAL).unwrap();
}

#[test]
fn rfc7677_vector_server_side() {
    let mut server = rfc_server();
    let server_first = server.handle_client_first(RFC_CLIENT_FIRST).unwrap();
    assert_eq!(server_first, RFC_SERVER_FIRST);
    let (server_final, keys) = server.handle_client_final(RFC_CLIENT_FINAL).unwrap();
    assert_eq!(server_final, RFC_SERVER_FINAL);
    let secret = rfc_secret();
    assert_eq!(keys.server_key, secret.server_key);
    assert_eq!(sha256(&keys.client_key), secret.stored_key);
}

#[test]
fn rfc7677_vector_both_sides_together() {
    let keys = exchange(&mut rfc_client(), &mut rfc_server()).unwrap();
    assert_eq!(keys.server_key, rfc_secret().server_key);
}

#[test]
fn hi_matches_pbkdf2_reference() {
    // RFC 7914 section 11 PBKDF2-HMAC-SHA256 vector ("passwd", "salt", c=1), first block.
    let expected = [
        0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f, 0xec, 0x16, 0x91, 0xc2, 0x25, 0x44, 0xb6, 0x05, 0xf9, 0x41,
        0x85, 0x21, 0x6d, 0xde, 0x04, 0x65, 0xe6, 0x8b, 0x9d, 0x57, 0xc2, 0x0d, 0xac, 0xbc,
    ];
    assert_eq!(hi(b"passwd", b"salt", 1), expected);
}

#[test]
fn real_postgres_verifiers_round_trip_and_rederive() {
    for (password, verifier) in PG_VERIFIERS {
        let secret = ScramSecret::parse(verifier).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.salt.len(), 16);
        assert_eq!(&secret.to_verifier(), verifier);
        assert_eq!(ScramSecret::parse(&secret.to_verifier()).unwrap(), secret);
        assert_eq!(
            ScramSecret::from_password(password, &secret.salt, secret.iterations),
            secret,
            "SASLprep of {password:?} differs from PostgreSQL"
        );
    }
}

#[test]
fn saslprep_follows_postgres_not_the_rfc_where_they_differ() {
    // The reason saslprep_like_postgres exists: plain RFC 4013 accepts this and composes
    // it to "\u{e0}", whereas PostgreSQL refuses it before NFKC and hashes the raw bytes.
    assert_eq!(stringprep::saslprep("a\u{340}").unwrap(), "\u{e0}");
    assert_eq!(saslprep_like_postgres("a\u{340}"), "a\u{340}");
    assert_eq!(saslprep_like_postgres("\u{ad}"), "\u{ad}");
    assert_eq!(saslprep_like_postgres("I\u{ad}X"), "IX");
    assert_eq!(saslprep_like_postgres("\u{2168}"), "IX");
    assert_eq!(saslprep_like_postgres("a\u{7}b"), "a\u{7}b");
    assert_eq!(saslprep_like_postgres(""), "");
}

#[test]
fn password_client_authenticates_against_postgres_verifier() {
    let mut server = ScramServer::new(pg_secret("secret"), &[7; 18]);
    let mut client = ScramClient::new(ScramCredential::Password("secret".into()), &[9; 18]);
    let keys = exchange(&mut client, &mut server).unwrap();
    assert_eq!(keys.server_key, pg_secret("secret").server_key);

    // A password that PostgreSQL SASLpreps to the same string also works.
    let mut server = ScramServer::new(pg_secret("IX"), &[1; 18]);
    let mut client = ScramClient::new(ScramCredential::Password("I\u{ad}X".into()), &[2; 18]);
    exchange(&mut client, &mut server).unwrap();
}

#[test]
fn client_first_matches_libpq_shape() {
    let client = ScramClient::new(ScramCredential::Password("x".into()), &[0xab; 18]);
    assert_eq!(client.client_first(), b"n,,n=,r=q6urq6urq6urq6urq6urq6ur");
}

#[test]
fn server_nonce_is_base64_of_caller_bytes() {
    let mut server = ScramServer::new(pg_secret("secret"), &[0xff; 18]);
    let server_first = server.handle_client_first(b"n,,n=,r=abc").unwrap();
    assert_eq!(
        server_first,
        b"r=abc////////////////////////,s=Do4LNUnQTf80no8s+w/sxg==,i=4096"
    );
}

#[test]
fn pass_through_keys_log_into_second_server() {
    let secret = pg_secret("secret");
    let mut front = ScramServer::new(secret.clone(), b"front-server-nonce");
    let mut client = ScramClient::new(ScramCredential::Password("secret".into()), b"client-nonce-1234");
    let keys = exchange(&mut client, &mut front).unwrap();

    let mut backend = ScramServer::new(secret.clone(), b"backend-server-nonce");
    let mut proxy = ScramClient::new(ScramCredential::Keys(keys), b"proxy-nonce-abcdefgh");
    let backend_keys = exchange(&mut proxy, &mut backend).unwrap();
    assert_eq!(sha256(&backend_keys.client_key), secret.stored_key);

    // Keys recovered for another password (even with the same salt) must not work.
    let other = ScramSecret::from_password("not-secret", &secret.salt, secret.iterations);
    let mut front = ScramServer::new(other, b"front-server-nonce");
    let mut client = ScramClient::new(ScramCredential::Password("not-secret".into()), b"client-nonce");
    let wrong_keys = exchange(&mut client, &mut front).unwrap();
    let mut backend = ScramServer::new(secret, b"backend-server-nonce-2");
    let mut proxy = ScramClient::new(ScramCredential::Keys(wrong_keys), b"proxy-nonce-2");
    assert_eq!(exchange(&mut proxy, &mut backend), Err(ScramError::InvalidProof));
}

#[test]
fn wrong_password_is_invalid_proof() {
    let mut server = ScramServer::new(pg_secret("secret"), &[3; 18]);
    let mut client = ScramClient::new(ScramCredential::Password("Secret".into()), &[4; 18]);
    assert_eq!(exchange(&mut client, &mut server), Err(ScramError::InvalidProof));
    // The exchange is over once it failed.
    assert_eq!(
        server.handle_client_final(RFC_CLIENT_FINAL),
        Err(ScramError::UnexpectedState)
    );
}

#[test]
fn server_detects_tampered_nonce() {
    let mut server = rfc_server();
    server.handle_client_first(RFC_CLIENT_FIRST).unwrap();
    let tampered = String::from_utf8(RFC_CLIENT_FINAL.to_vec())
        .unwrap()
        .replace("hNlF$k0", "hNlF$k1");
    assert_eq!(
        server.handle_client_final(tampered.as_bytes()),
        Err(ScramError::NonceMismatch)
    );

    // Dropping the server's part of the nonce is a mismatch too.
    let mut server = rfc_server();
    server.handle_client_first(RFC_CLIENT_FIRST).unwrap();
    let truncated = String::from_utf8(RFC_CLIENT_FINAL.to_vec())
        .unwrap()
        .replace(RFC_SERVER_NONCE, "");
    assert_eq!(
        server.handle_client_final(truncated.as_bytes()),
        Err(ScramError::NonceMismatch)
    );
}

#[test]
fn client_detects_tampered_nonce() {
    let mut client = rfc_client();
    let tampered = String::from_utf8(RFC_SERVER_FIRST.to_vec())
        .unwrap()
        .replacen("rOprNG", "rOprNH", 1);
    assert_eq!(
        client.handle_server_first(tampered.as_bytes()),
        Err(ScramError::NonceMismatch)
    );
}

#[test]
fn channel_binding_requests_are_refused() {
    for message in [
        &b"p=tls-server-end-point,,n=,r=abcdef"[..],
        b"p=tls-unique,,n=user,r=abcdef",
        b"p",
    ] {
        let mut server = rfc_server();
        assert_eq!(
            server.handle_client_first(message),
            Err(ScramError::ChannelBindingUnsupported)
        );
    }
}

/// Plays the client side by hand, so tests can send client-final shapes our client never produces.
fn hand_made_client_final(
    secret: &ScramSecret,
    client_first_bare: &[u8],
    server_first: &[u8],
    channel_binding: &str,
    extensions: &str,
) -> (Vec<u8>, Vec<u8>) {
    let nonce = String::from_utf8(server_first.to_vec()).unwrap();
    let nonce = nonce.strip_prefix("r=").and_then(|s| s.split(',').next()).unwrap();
    let without_proof = format!("c={channel_binding},r={nonce}{extensions}");
    let salted = salted_password("secret", &secret.salt, secret.iterations);
    let client_key = hmac(&salted, &[b"Client Key"]);
    let auth = [client_first_bare, b",", server_first, b",", without_proof.as_bytes()];
    let proof = xor(&client_key, &hmac(&sha256(&client_key), &auth));
    let client_final = format!("{without_proof},p={}", BASE64.encode(proof));
    let server_final = format!("v={}", BASE64.encode(hmac(&secret.server_key, &auth)));
    (client_final.into_bytes(), server_final.into_bytes())
}

#[test]
fn y_flag_is_accepted_and_must_be_replayed_in_c() {
    // "y,,": the client supports channel binding but thinks we do not, as a
    // channel-binding-capable libpq says when the server offers no SCRAM-SHA-256-PLUS.
    let secret = pg_secret("secret");
    let mut server = ScramServer::new(secret.clone(), &[5; 18]);
    let server_first = server.handle_client_first(b"y,,n=,r=clientnonce").unwrap();
    let (client_final, expected) = hand_made_client_final(&secret, b"n=,r=clientnonce", &server_first, "eSws", "");
    let (server_final, _) = server.handle_client_final(&client_final).unwrap();
    assert_eq!(server_final, expected);

    // c= must replay the header actually sent: "biws" after "y,," is refused.
    let mut server = ScramServer::new(secret.clone(), &[5; 18]);
    let server_first = server.handle_client_first(b"y,,n=,r=clientnonce").unwrap();
    let (client_final, _) = hand_made_client_final(&secret, b"n=,r=clientnonce", &server_first, "biws", "");
    assert_eq!(
        server.handle_client_final(&client_final),
        Err(ScramError::Malformed(
            "channel binding (c=) does not match the gs2 header"
        ))
    );

    // ... and "eSws" after "n,," likewise.
    let mut server = ScramServer::new(secret.clone(), &[5; 18]);
    let server_first = server.handle_client_first(b"n,,n=,r=clientnonce").unwrap();
    let (client_final, _) = hand_made_client_final(&secret, b"n=,r=clientnonce", &server_first, "eSws", "");
    assert_eq!(
        server.handle_client_final(&client_final),
        Err(ScramError::Malformed(
            "channel binding (c=) does not match the gs2 header"
        ))
    );
}

#[test]
fn unsupported_client_first_features_are_refused() {
    let cases: &[(&[u8], ScramError)] = &[
        (
            b"n,a=admin,n=,r=abc",
            ScramError::Malformed("authorization identity (a=) is not supported"),
        ),
        (
            b"n,,m=ext,n=,r=abc",
            ScramError::Malformed("mandatory extensions (m=) are not supported"),
        ),
        (
            b"x,,n=,r=abc",
            ScramError::Malformed("channel-binding flag in gs2 header"),
        ),
        (b"n,,n=,r=a\x7fc", ScramError::Malformed("client nonce (r=)")),
        (b"n,,n=,r=", ScramError::Malformed("client nonce (r=)")),
        (b"n,,r=abc", ScramError::Malformed("user name (n=)")),
        (b"n,,n=,r=abc,1=x", ScramError::Malformed("extension attribute")),
        (b"n,,n=,r=a\0c", ScramError::Malformed("message contains a NUL byte")),
    ];
    for (message, expected) in cases {
        let mut server = rfc_server();
        assert_eq!(
            server.handle_client_first(message).as_ref(),
            Err(expected),
            "{}",
            String::from_utf8_lossy(message)
        );
    }
    // Like PostgreSQL, well-formed optional extensions after the nonce are ignored.
    let mut server = rfc_server();
    assert!(server.handle_client_first(b"n,,n=,r=abc,x=y").is_ok());
}

#[test]
fn client_final_extensions_before_proof_are_signed_and_accepted() {
    let secret = pg_secret("secret");
    let mut server = ScramServer::new(secret.clone(), b"server-nonce-bytes");
    let server_first = server.handle_client_first(b"n,,n=,r=cn").unwrap();
    let (client_final, expected) = hand_made_client_final(&secret, b"n=,r=cn", &server_first, "biws", ",x=ext");
    let (server_final, _) = server.handle_client_final(&client_final).unwrap();
    assert_eq!(server_final, expected);
}

#[test]
fn client_rejects_bad_server_messages() {
    let first_with = |iterations: &str| format!("r={RFC_CLIENT_NONCE}srv,s={RFC_SALT_B64},i={iterations}").into_bytes();
    for (message, expected) in [
        (
            first_with("0"),
            ScramError::Malformed("iteration count (i=) out of range"),
        ),
        (
            first_with("10000001"),
            ScramError::Malformed("iteration count (i=) out of range"),
        ),
        (first_with("+4096"), ScramError::Malformed("iteration count (i=)")),
        (first_with("99999999999"), ScramError::Malformed("iteration count (i=)")),
        (
            first_with("4096,x=y"),
            ScramError::Malformed("trailing data after iteration count (i=)"),
        ),
        (
            format!("r={RFC_CLIENT_NONCE},s=@@,i=4096").into_bytes(),
            ScramError::Malformed("salt (s=)"),
        ),
        (
            format!("r={RFC_CLIENT_NONCE}\x01,s={RFC_SALT_B64},i=1").into_bytes(),
            ScramError::Malformed("nonce (r=)"),
        ),
        (b"e=other-error".to_vec(), ScramError::Malformed("nonce (r=)")),
    ] {
        let mut client = rfc_client();
        assert_eq!(client.handle_server_first(&message), Err(expected));
    }
}

#[test]
fn client_server_final_outcomes() {
    let ready = || {
        let mut client = rfc_keys_client();
        client.handle_server_first(RFC_SERVER_FIRST).unwrap();
        client
    };
    assert_eq!(
        ready().handle_server_final(b"e=invalid-proof"),
        Err(ScramError::ServerError("invalid-proof".into()))
    );
    assert_eq!(
        ready().handle_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        Err(ScramError::InvalidServerSignature)
    );
    assert_eq!(
        ready().handle_server_final(b"v=AAAA"),
        Err(ScramError::Malformed("server signature (v=)"))
    );
    let mut with_trailer = RFC_SERVER_FINAL.to_vec();
    with_trailer.extend_from_slice(b",x=y");
    assert_eq!(
        ready().handle_server_final(&with_trailer),
        Err(ScramError::Malformed("trailing data after server signature (v=)"))
    );
    assert_eq!(
        ready().handle_server_final(b"x=1"),
        Err(ScramError::Malformed("server-final-message (expected v= or e=)"))
    );
}

#[test]
fn out_of_order_calls_are_unexpected_state_and_end_the_exchange() {
    let mut server = rfc_server();
    assert_eq!(
        server.handle_client_final(RFC_CLIENT_FINAL),
        Err(ScramError::UnexpectedState)
    );
    assert_eq!(
        server.handle_client_first(RFC_CLIENT_FIRST),
        Err(ScramError::UnexpectedState)
    );

    let mut server = rfc_server();
    server.handle_client_first(RFC_CLIENT_FIRST).unwrap();
    assert_eq!(
        server.handle_client_first(RFC_CLIENT_FIRST),
        Err(ScramError::UnexpectedState)
    );
    assert_eq!(
        server.handle_client_final(RFC_CLIENT_FINAL),
        Err(ScramError::UnexpectedState)
    );

    let mut server = rfc_server();
    server.handle_client_first(RFC_CLIENT_FIRST).unwrap();
    server.handle_client_final(RFC_CLIENT_FINAL).unwrap();
    assert_eq!(
        server.handle_client_final(RFC_CLIENT_FINAL),
        Err(ScramError::UnexpectedState)
    );

    let mut client = rfc_keys_client();
    assert_eq!(
        client.handle_server_final(RFC_SERVER_FINAL),
        Err(ScramError::UnexpectedState)
    );
    assert_eq!(
        client.handle_server_first(RFC_SERVER_FIRST),
        Err(ScramError::UnexpectedState)
    );

    let mut client = rfc_keys_client();
    client.handle_server_first(RFC_SERVER_FIRST).unwrap();
    assert_eq!(
        client.handle_server_first(RFC_SERVER_FIRST),
        Err(ScramError::UnexpectedState)
    );
    assert_eq!(
        client.handle_server_final(RFC_SERVER_FINAL),
        Err(ScramError::UnexpectedState)
    );

    let mut client = rfc_keys_client();
    client.handle_server_first(RFC_SERVER_FIRST).unwrap();
    client.handle_server_final(RFC_SERVER_FINAL).unwrap();
    assert_eq!(
        client.handle_server_final(RFC_SERVER_FINAL),
        Err(ScramError::UnexpectedState)
    );

    // A failed step ends the exchange rather than allowing a retry.
    let mut client = rfc_keys_client();
    assert!(client.handle_server_first(b"garbage").is_err());
    assert_eq!(
        client.handle_server_first(RFC_SERVER_FIRST),
        Err(ScramError::UnexpectedState)
    );
    let mut server = rfc_server();
    assert!(server.handle_client_first(b"garbage").is_err());
    assert_eq!(
        server.handle_client_first(RFC_CLIENT_FIRST),
        Err(ScramError::UnexpectedState)
    );
}

#[test]
fn every_prefix_of_valid_messages_is_handled() {
    let nonce_value_start = RFC_CLIENT_FIRST.len() - RFC_CLIENT_NONCE.len();
    for len in 0..RFC_CLIENT_FIRST.len() {
        let result = rfc_server().handle_client_first(&RFC_CLIENT_FIRST[..len]);
        // Cutting inside the nonce leaves a shorter but valid nonce.
        assert_eq!(result.is_ok(), len > nonce_value_start, "client-first[..{len}]");
    }

    for len in 0..RFC_CLIENT_FINAL.len() {
        let mut server = rfc_server();
        server.handle_client_first(RFC_CLIENT_FIRST).unwrap();
        assert!(
            server.handle_client_final(&RFC_CLIENT_FINAL[..len]).is_err(),
            "client-final[..{len}]"
        );
    }

    let iterations_start = RFC_SERVER_FIRST.len() - "4096".len();
    for len in 0..RFC_SERVER_FIRST.len() {
        let mut client = rfc_keys_client();
        let result = client.handle_server_first(&RFC_SERVER_FIRST[..len]);
        // Cutting inside "4096" leaves a valid, smaller iteration count.
        assert_eq!(result.is_ok(), len > iterations_start, "server-first[..{len}]");
    }

    for len in 0..RFC_SERVER_FINAL.len() {
        let mut client = rfc_keys_client();
        client.handle_server_first(RFC_SERVER_FIRST).unwrap();
        assert!(
            client.handle_server_final(&RFC_SERVER_FINAL[..len]).is_err(),
            "server-final[..{len}]"
        );
    }
}

#[test]
fn garbage_is_rejected_without_panicking() {
    let garbage: &[&[u8]] = &[
        b"",
        b"\0",
        b",",
        b",,,,",
        b"=",
        b"==",
        b"n",
        b"n,",
        b"n,,",
        b"n,,n",
        b"n,,n=",
        b"n,,n=,",
        b"n,,n=,r",
        b"y",
        b"a=b",
        b"r=,s=,i=",
        b"c=,r=,p=",
        b"v=",
        b"e",
        b"\xff\xfe\xfd",
        b"n,,n=\xff,r=\xff",
        b"p=,p=,p=",
    ];
    let huge = vec![b'a'; 1 << 20];
    for message in garbage.iter().copied().chain([huge.as_slice()]) {
        assert!(rfc_server().handle_client_first(message).is_err());

        let mut server = rfc_server();
        server.handle_client_first(RFC_CLIENT_FIRST).unwrap();
        assert!(server.handle_client_final(message).is_err());

        assert!(rfc_keys_client().handle_server_first(message).is_err());

        let mut client = rfc_keys_client();
        client.handle_server_first(RFC_SERVER_FIRST).unwrap();
        assert!(client.handle_server_final(message).is_err());
    }
}

#[test]
fn mutated_messages_never_panic_or_authenticate() {
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    for _ in 0..3000 {
        let message = mutate(&mut rng, RFC_CLIENT_FIRST);
        let _ = rfc_server().handle_client_first(&message);

        let message = mutate(&mut rng, RFC_CLIENT_FINAL);
        let mut server = rfc_server();
        server.handle_client_first(RFC_CLIENT_FIRST).unwrap();
        if let Ok((server_final, _)) = server.handle_client_final(&message) {
            // Only mutations outside the signed content and proof can still succeed.
            assert_eq!(server_final, RFC_SERVER_FINAL);
        }

        let message = mutate(&mut rng, RFC_SERVER_FIRST);
        let mut client = rfc_keys_client();
        let _ = client.handle_server_first(&message);

        let message = mutate(&mut rng, RFC_SERVER_FINAL);
        let mut client = rfc_keys_client();
        client.handle_server_first(RFC_SERVER_FIRST).unwrap();
        if client.handle_server_final(&message).is_ok() {
            // A trailing comma is the only harmless change (libpq tolerates it too).
            assert!(message.starts_with(RFC_SERVER_FINAL), "{message:?}");
        }

        let secret = String::from_utf8_lossy(&mutate(&mut rng, PG_VERIFIERS[0].1.as_bytes())).into_owned();
        if let Ok(parsed) = ScramSecret::parse(&secret) {
            assert_eq!(ScramSecret::parse(&parsed.to_verifier()), Ok(parsed));
        }
    }
}

#[test]
fn secret_parse_rejects_malformed() {
    let good = PG_VERIFIERS[0].1;
    assert!(ScramSecret::is_scram_secret(good));
    assert!(!ScramSecret::is_scram_secret("md5abc"));
    let bad = [
        String::new(),
        "SCRAM-SHA-256$".into(),
        good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1),
        good.replacen("4096", "0", 1),
        good.replacen("4096", "-1", 1),
        good.replacen("4096", "+4096", 1),
        good.replacen("4096", "", 1),
        good.replacen("4096", "4294967296", 1),
        good.replacen(':', ";", 1),
        good.replacen('$', "#", 2),
        good.replacen("Do4L", "Do4", 1),
        good.replacen("8zc8", "8zc", 1),
        good.replacen("dKbd", "", 1),
        format!("{good}:extra"),
        format!("{good}$extra"),
    ];
    for secret in bad {
        assert_eq!(
            ScramSecret::parse(&secret),
            Err(ScramError::MalformedSecret),
            "{secret}"
        );
    }
}

#[test]
fn from_password_defaults_and_zero_iterations() {
    let secret = ScramSecret::from_password("pw", b"salt", 0);
    assert_eq!(secret.iterations, 1);
    assert_eq!(ScramSecret::parse(&secret.to_verifier()), Ok(secret));
    let secret = ScramSecret::from_password("pw", b"", DEFAULT_ITERATIONS);
    assert_eq!(ScramSecret::parse(&secret.to_verifier()), Ok(secret));
}

#[test]
fn debug_output_redacts_key_material() {
    let keys = ScramKeys {
        client_key: [0x41; 32],
        server_key: [0x42; 32],
    };
    let rendered = format!("{keys:?}");
    assert!(rendered.contains("redacted"));
    assert!(!rendered.contains("65"), "{rendered}");
    let credential = ScramCredential::Password("hunter2".into());
    assert!(!format!("{credential:?}").contains("hunter2"));
    let client = ScramClient::new(credential, &[1; 18]);
    assert!(!format!("{client:?}").contains("hunter2"));
    let server = ScramServer::new(pg_secret("secret"), &[1; 18]);
    assert!(format!("{server:?}").contains("AwaitingClientFirst"));
}

#[test]
fn errors_display_human_readable_messages() {
    assert_eq!(
        ScramError::Malformed("proof (p=)").to_string(),
        "malformed SCRAM message: proof (p=)"
    );
    assert_eq!(
        ScramError::ServerError("invalid-proof".into()).to_string(),
        "SCRAM server reported an error: invalid-proof"
    );
    assert_eq!(
        ScramError::InvalidProof.to_string(),
        "SCRAM authentication failed: invalid client proof"
    );
}

#[test]
fn one_trailing_comma_after_the_proof_is_accepted_as_postgresql_does() {
    // PostgreSQL's read_attr_value consumes the comma after a value, so
    // "...,p=<proof>," passes its end-of-message check; a second one does not
    // (protocol/fuzz/regressions/scram_server/trailing_comma_after_the_proof).
    for (suffix, accepted) in [(&b","[..], true), (b",,", false), (b",x", false)] {
        let mut server = ScramServer::new(pg_secret("secret"), &[7; 18]);
        let mut client = ScramClient::new(ScramCredential::Password("secret".into()), &[9; 18]);
        let server_first = server.handle_client_first(&client.client_first()).unwrap();
        let mut client_final = client.handle_server_first(&server_first).unwrap();
        client_final.extend_from_slice(suffix);
        assert_eq!(
            server.handle_client_final(&client_final).is_ok(),
            accepted,
            "{suffix:?}"
        );
    }
}
