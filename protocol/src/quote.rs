//! Quoting values into SQL text the proxy builds itself (replayed settings,
//! LISTEN channels), so that no name or value a client chose can change the
//! statement's meaning.

/// A string literal in the escape-string form `E'...'`: backslashes and quotes
/// are doubled, which means the same whatever `standard_conforming_strings` the
/// session set (a plain `'...'` literal would not).
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A quoted identifier `"..."`: embedded double quotes are doubled, and the
/// name keeps its case.
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_and_backslashes() {
        assert_eq!(quote_literal(r"a'b\c"), r"E'a''b\\c'");
        assert_eq!(quote_literal(""), "E''");
        assert_eq!(quote_literal(r"\'"), r"E'\\'''");
        assert_eq!(quote_literal("zürich"), "E'zürich'");
    }

    #[test]
    fn a_literal_cannot_be_closed_early() {
        // Whatever the input, the only unpaired quote is the closing one.
        for input in ["'; drop table t; --", r"\'; select 1; --", "''", r"\\'"] {
            let quoted = quote_literal(input);
            let inner = &quoted[2..quoted.len() - 1];
            let unescaped = inner.replace("\\\\", "").replace("''", "");
            assert!(
                !unescaped.contains('\'') && !unescaped.contains('\\'),
                "{input} -> {quoted}"
            );
        }
    }

    #[test]
    fn identifiers_double_double_quotes() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_ident("MixedCase"), r#""MixedCase""#);
        assert_eq!(quote_ident(""), r#""""#);
    }
}
