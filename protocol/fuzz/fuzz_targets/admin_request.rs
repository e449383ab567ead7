//! The admin API's request bodies, parsed as the proxy's admin endpoint parses
//! them (`parse_body` in `proxy/src/admin.rs`): `pgcutover_api::parse_request` into
//! the request type of each endpoint that takes a body, with an empty
//! body read as `{}` for `POST /hold` and `POST /switchover`.
//!
//! The input is one request body (the endpoint caps bodies at 4096 bytes, libFuzzer's
//! default `-max_len`); it goes to every endpoint's type: `PrepareRequest`
//! (`/prepare`), `HoldRequest` (`/hold`), `RouteRequest` (`/route`), `PhaseUpdate`
//! (`/phase`) and `SwitchoverRequest` (`/switchover`).
//!
//! Checked: no panic; an error formats (the 400 reply quotes it); a body a type
//! accepts is a JSON object (`serde_json::Value` parses it, strictly, to an
//! object) and the same request read straight from that `Value` is equal; an
//! accepted request serialises, and its JSON parses back to an equal request
//! (floats within 2 ulp: serde_json's default float parser is not always exact).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcutover_api::{HoldRequest, PhaseUpdate, PrepareRequest, RouteRequest, SwitchoverRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::hint::black_box;

/// Largest body the admin endpoint reads (`MAX_BODY`).
const MAX_BODY: usize = 4096;

fuzz_target!(|body: &[u8]| {
    if body.len() > MAX_BODY {
        return;
    }
    let or_empty_object: &[u8] = if body.is_empty() { b"{}" } else { body };
    check::<PrepareRequest>(body, PartialEq::eq);
    check::<HoldRequest>(or_empty_object, PartialEq::eq);
    check::<RouteRequest>(body, PartialEq::eq);
    check::<PhaseUpdate>(body, phase_update_close);
    check::<SwitchoverRequest>(or_empty_object, PartialEq::eq);
});

fn check<T>(body: &[u8], close: fn(&T, &T) -> bool)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let parsed = match pgcutover_api::parse_request::<T>(body) {
        Ok(t) => t,
        Err(e) => {
            black_box(format!("expected a JSON body like {{}}: {e}"));
            return;
        }
    };
    // Before parse_request read the body as a JSON object first, serde_json accepted
    // bodies that are not JSON in a value a type ignores (regressions/admin_request/),
    // and arrays: neither may pass now.
    let value: serde_json::Value = serde_json::from_slice(body).expect("accepted a body that is not JSON");
    assert!(value.is_object(), "accepted a body that is not a JSON object");
    let via_value = serde_json::from_value::<T>(value).expect("the same JSON as a Value was refused");
    assert_eq!(via_value, parsed, "parse_request and from_value disagree");
    round_trip(&parsed, close);
}

fn round_trip<T>(parsed: &T, close: fn(&T, &T) -> bool)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let text = serde_json::to_vec(parsed).expect("a request serialises");
    let again = serde_json::from_slice::<T>(&text).expect("a request's own JSON was refused");
    assert!(
        close(&again, parsed),
        "round trip changed {parsed:?} into {again:?} (via {})",
        String::from_utf8_lossy(&text)
    );
}

fn phase_update_close(a: &PhaseUpdate, b: &PhaseUpdate) -> bool {
    let times = match (&a.ended, &b.ended) {
        (None, None) => true,
        (Some(x), Some(y)) => x.phase == y.phase && within_ulps(x.ms, y.ms, 2),
        _ => false,
    };
    a.phase == b.phase && a.outcome == b.outcome && times
}

fn within_ulps(a: f64, b: f64, ulps: u64) -> bool {
    if a == b {
        return true;
    }
    if a.is_nan() || b.is_nan() || a.is_sign_negative() != b.is_sign_negative() {
        return false;
    }
    a.to_bits().abs_diff(b.to_bits()) <= ulps
}
