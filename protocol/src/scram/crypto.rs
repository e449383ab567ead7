//! The primitives: Hi, HMAC, SHA-256, SASLprep as PostgreSQL applies it, constant-time compare.

use super::*;

pub(super) fn decode_key(encoded: &[u8]) -> Option<[u8; KEY_LEN]> {
    BASE64.decode(encoded).ok()?.try_into().ok()
}

pub(super) fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

pub(super) fn new_mac(key: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of any length (long ones are hashed first); hmac 0.12's
    // new_from_slice only errs for fixed-key-size MACs, which HMAC is not.
    HmacSha256::new_from_slice(key).expect("HMAC-SHA-256 accepts keys of any length")
}

pub(super) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac = new_mac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Hi() from RFC 5802, i.e. PBKDF2-HMAC-SHA-256 with a single output block.
pub(super) fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    // Keying once and cloning saves re-hashing the key pads on every iteration.
    let keyed = new_mac(password);
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; KEY_LEN] = mac.finalize().into_bytes().into();
    let mut result = u;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        result = xor(&result, &u);
    }
    result
}

pub(super) fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    hi(saslprep_like_postgres(password).as_bytes(), salt, iterations)
}

/// SASLprep exactly as PostgreSQL's pg_saslprep() applies it to passwords, falling back to
/// the raw password whenever pg_saslprep() would refuse it.
///
/// stringprep::saslprep alone is not enough: PostgreSQL skips all checks for pure-ASCII
/// input, treats a password that maps to nothing as invalid, and checks prohibited and bidi
/// characters on the mapped string *before* NFKC (so e.g. "a\u{340}" stays raw in PostgreSQL
/// but would normalise to "à" under the RFC). Getting this wrong would lock users with such
/// passwords out, because the stored verifier was built by PostgreSQL.
pub(super) fn saslprep_like_postgres(password: &str) -> Cow<'_, str> {
    use stringprep::tables;

    if password.is_ascii() {
        return Cow::Borrowed(password);
    }
    let mapped: String = password
        .chars()
        .filter(|&c| !tables::commonly_mapped_to_nothing(c))
        .map(|c| if tables::non_ascii_space_character(c) { ' ' } else { c })
        .collect();
    if mapped.is_empty() {
        return Cow::Borrowed(password);
    }
    let prohibited = |c: char| {
        tables::non_ascii_space_character(c)
            || tables::ascii_control_character(c)
            || tables::non_ascii_control_character(c)
            || tables::private_use(c)
            || tables::non_character_code_point(c)
            || tables::surrogate_code(c)
            || tables::inappropriate_for_plain_text(c)
            || tables::inappropriate_for_canonical_representation(c)
            || tables::change_display_properties_or_deprecated(c)
            || tables::tagging_character(c)
            || tables::unassigned_code_point(c)
    };
    if mapped.chars().any(prohibited) {
        return Cow::Borrowed(password);
    }
    if mapped.chars().any(tables::bidi_r_or_al) {
        let first_last_ok = mapped.chars().next().is_some_and(tables::bidi_r_or_al)
            && mapped.chars().next_back().is_some_and(tables::bidi_r_or_al);
        if !first_last_ok || mapped.chars().any(tables::bidi_l) {
            return Cow::Borrowed(password);
        }
    }
    // The mapped string passed PostgreSQL's checks, so only NFKC is left to apply; saslprep()
    // does that (its mapping step is a no-op by now). It re-checks after NFKC, which could in
    // theory refuse a string PostgreSQL accepts; no such case is known, and raw is the
    // closest fallback.
    match stringprep::saslprep(&mapped) {
        Ok(prepared) => Cow::Owned(prepared.into_owned()),
        Err(_) => Cow::Borrowed(password),
    }
}

pub(super) fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// Compares without an early exit, so timing does not reveal how much of a proof was right.
pub(super) fn constant_time_eq(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
