//! `sql::effects` (the session-state lexer) on arbitrary bytes, and on the same
//! input made valid UTF-8.
//!
//! The input is the text of a Query (or a Parse's query), no control prefix. It is
//! lexed as it is (the API takes bytes, and a Query's text need not be UTF-8), and
//! then, when it is not valid UTF-8 already, as `String::from_utf8_lossy` of it
//! (what the proxy sees from a UTF-8 client, multi-byte characters included).
//!
//! Checked, for both: no panic; the iterator ends, and yields at most one effect
//! per `;` byte plus one; every slice an effect returns (`statement`, an `Ident`'s
//! text) lies inside the input, except the fixed names the lexer substitutes
//! (`timezone`, `session_authorization`, ...); a `Set`/`Prepare` statement starts
//! with its keyword; a quoted `Ident` sits right after a `"` in the input, a bare
//! one is a non-empty word; `Ident::normalized` does not panic, lower-cases a bare
//! name, undoubles `""` in a quoted one and cuts it to 63 bytes (NAMEDATALEN - 1)
//! at a character boundary; lexing the same text twice gives the same effects; and the lexer
//! allocates nothing, as `effects` documents (a counting global allocator).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcutover_protocol::sql::{self, Effect, Ident};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts allocations, to check that lexing allocates nothing.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// NAMEDATALEN - 1: the bytes of a name PostgreSQL keeps.
const NAME_BYTES: usize = 63;

/// Names the lexer substitutes for multi-word forms; not slices of the input.
const FIXED_NAMES: [&[u8]; 5] = [
    b"timezone",
    b"session_authorization",
    b"session characteristics",
    b"client_encoding",
    b"search_path",
];

fuzz_target!(|data: &[u8]| {
    check(data);
    if std::str::from_utf8(data).is_err() {
        let text = String::from_utf8_lossy(data);
        check(text.as_bytes());
    }
});

fn check(input: &[u8]) {
    // Lex once without allocating: count the effects and remember the first few.
    let mut first = [Effect::None; 8];
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut count = 0usize;
    for e in sql::effects(input) {
        if count < first.len() {
            first[count] = e;
        }
        count += 1;
        check_effect(input, &e);
    }
    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(allocated, 0, "sql::effects allocated {allocated} times");

    let semicolons = input.iter().filter(|&&b| b == b';').count();
    assert!(count <= semicolons + 1, "{count} effects from {semicolons} semicolons");

    // Deterministic: the same text gives the same effects.
    let again: Vec<Effect<'_>> = sql::effects(input).collect();
    assert_eq!(again.len(), count);
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a, b);
    }
    for e in &again {
        normalize(e);
    }
}

fn check_effect(input: &[u8], e: &Effect<'_>) {
    match *e {
        Effect::Set { name, statement } => {
            check_ident(input, name, true);
            check_statement(input, statement, "SET");
        }
        Effect::Prepare { name, statement } => {
            check_ident(input, name, false);
            check_statement(input, statement, "PREPARE");
        }
        Effect::Reset { name } => check_ident(input, name, true),
        Effect::Deallocate { name } | Effect::Unlisten { channel: name } => {
            if let Some(name) = name {
                check_ident(input, name, false);
            }
        }
        Effect::Listen { channel } => check_ident(input, channel, false),
        Effect::Opaque(why) => assert!(!why.is_empty()),
        Effect::None | Effect::ResetAll | Effect::DiscardAll | Effect::Transaction => {}
    }
}

fn check_statement(input: &[u8], statement: &[u8], keyword: &str) {
    assert!(inside(input, statement), "statement is not a slice of the input");
    assert!(
        statement.len() >= keyword.len() && statement[..keyword.len()].eq_ignore_ascii_case(keyword.as_bytes()),
        "a {keyword} statement that does not start with {keyword}"
    );
}

fn check_ident(input: &[u8], ident: Ident<'_>, may_be_fixed: bool) {
    match ident {
        Ident::Bare(text) => {
            if inside(input, text) {
                assert!(!text.is_empty(), "empty bare name");
                assert!(!text[0].is_ascii_digit() && text[0] != b'$' && text[0] != b'.');
            } else {
                assert!(may_be_fixed, "a name outside the input");
                assert!(FIXED_NAMES.contains(&text), "a name outside the input: {text:?}");
            }
        }
        Ident::Quoted(text) => {
            assert!(inside(input, text), "quoted name is not a slice of the input");
            let at = text.as_ptr() as usize - input.as_ptr() as usize;
            assert!(at >= 1 && input[at - 1] == b'"', "quoted name not after a quote");
        }
    }
}

fn normalize(e: &Effect<'_>) {
    let ident = match *e {
        Effect::Set { name, .. } | Effect::Reset { name } | Effect::Prepare { name, .. } => Some(name),
        Effect::Listen { channel } => Some(channel),
        Effect::Deallocate { name } | Effect::Unlisten { channel: name } => name,
        _ => None,
    };
    if let Some(ident) = ident {
        let n = ident.normalized();
        let full = match ident {
            Ident::Bare(b) => String::from_utf8_lossy(b).to_ascii_lowercase(),
            Ident::Quoted(b) => String::from_utf8_lossy(b).replace("\"\"", "\""),
        };
        // PostgreSQL keeps NAMEDATALEN - 1 bytes of a name, cut at a character boundary.
        assert!(full.starts_with(&n), "{n:?} is not a prefix of {full:?}");
        if full.len() <= NAME_BYTES {
            assert_eq!(n, full);
        } else {
            assert!(n.len() <= NAME_BYTES && n.len() > NAME_BYTES - 4, "{n:?} from {full:?}");
        }
    }
}

/// Whether `part` lies within `whole` (empty slices included, at any offset up to the end).
fn inside(whole: &[u8], part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}
