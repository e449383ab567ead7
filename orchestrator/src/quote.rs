//! SQL and conninfo quoting for the few statements that cannot take parameters
//! (DDL, CREATE SUBSCRIPTION ... CONNECTION): the SQL quoting is the protocol
//! crate's, shared with the proxy; the conninfo quoting is libpq's.

// One quoting for the whole product: `E'...'` literals mean the same whatever
// `standard_conforming_strings` the server or role has.
pub use pgcutover_protocol::quote::{quote_ident, quote_literal};

/// A libpq conninfo value, quoted when it needs to be.
pub(crate) fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's \\"), "E'it''s \\\\'");
        assert_eq!(conninfo_value("plain"), "plain");
        assert_eq!(conninfo_value("a b'c\\"), "'a b\\'c\\\\'");
        assert_eq!(conninfo_value(""), "''");
    }
}
