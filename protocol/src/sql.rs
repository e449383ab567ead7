//! Just enough SQL to follow session state as it passes: which statements of a
//! query set a session variable, prepare or deallocate a statement, or start or
//! stop listening, so a session can be recreated on a new server without asking the
//! old one (which may be gone). This is a lexer, not a parser: a statement it cannot
//! classify with certainty, or one that creates state that cannot be recreated
//! (temporary tables, session advisory locks, WITH HOLD cursors), is reported as
//! [`Effect::Opaque`], and the caller stops trusting its own record.
//!
//! State changed out of sight (inside a function, a trigger, a DO block) cannot be
//! seen from the wire at all; `DO` and `CALL` are therefore opaque, and plain
//! function calls are assumed not to change session state.

/// What one statement does to session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect<'a> {
    /// Nothing the session-state record follows.
    None,
    /// `SET [SESSION] name ...`: `name` is normalised (lower case unless quoted;
    /// `TIME ZONE` → `timezone`, ...); `statement` replays it.
    Set { name: Ident<'a>, statement: &'a [u8] },
    /// `RESET name`.
    Reset { name: Ident<'a> },
    /// `RESET ALL`.
    ResetAll,
    /// `PREPARE name ...`; `statement` replays it.
    Prepare { name: Ident<'a>, statement: &'a [u8] },
    /// `DEALLOCATE [PREPARE] name`, or every statement (protocol-level ones
    /// included) for `DEALLOCATE ALL`.
    Deallocate { name: Option<Ident<'a>> },
    /// `LISTEN channel`.
    Listen { channel: Ident<'a> },
    /// `UNLISTEN channel`, or `UNLISTEN *` (`None`).
    Unlisten { channel: Option<Ident<'a>> },
    /// `DISCARD ALL`: the session is as new.
    DiscardAll,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT...: where this appears, the statements of
    /// one query do not succeed or fail as one unit.
    Transaction,
    /// Session state changed in a way that is not followed; the reason names it.
    Opaque(&'static str),
}

/// An identifier as written: unquoted ones compare case-insensitively (PostgreSQL
/// folds them to lower case), quoted ones exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ident<'a> {
    /// A bare word, or a fixed multi-word name already normalised.
    Bare(&'a [u8]),
    /// The text between double quotes, with `""` still doubled.
    Quoted(&'a [u8]),
}

/// PostgreSQL keeps this many bytes of a name (NAMEDATALEN - 1) and drops the rest.
const NAME_BYTES: usize = 63;

impl Ident<'_> {
    /// The name PostgreSQL uses: lower-cased when bare, unescaped when quoted, cut
    /// to 63 bytes (at a character boundary) as the server cuts it.
    pub fn normalized(&self) -> String {
        let mut name = match self {
            Ident::Bare(b) => String::from_utf8_lossy(b).to_ascii_lowercase(),
            Ident::Quoted(b) => String::from_utf8_lossy(b).replace("\"\"", "\""),
        };
        if name.len() > NAME_BYTES {
            let mut end = NAME_BYTES;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
        }
        name
    }
}

/// The effects of every statement in `sql` (a Query or Parse text), in order. An
/// empty query has none. Allocates nothing.
pub fn effects(sql: &[u8]) -> Effects<'_> {
    Effects {
        lexer: Lexer { s: sql, i: 0 },
    }
}

/// Iterator returned by [`effects`].
pub struct Effects<'a> {
    lexer: Lexer<'a>,
}

impl<'a> Iterator for Effects<'a> {
    type Item = Effect<'a>;

    fn next(&mut self) -> Option<Effect<'a>> {
        loop {
            let first = self.lexer.next()?;
            if first.kind == Kind::Semicolon {
                continue;
            }
            return Some(self.statement(first));
        }
    }
}

impl<'a> Effects<'a> {
    /// Classifies the statement that starts with `first` and consumes it up to
    /// and including its semicolon.
    fn statement(&mut self, first: Token<'a>) -> Effect<'a> {
        let start = first.start;
        let mut words = Words {
            tokens: [Some(first), None, None, None],
            statement: &[],
        };
        let mut count = 1;
        let mut end = first.end;
        let mut opaque: Option<&'static str> = None;
        let check = |t: &Token<'a>, opaque: &mut Option<&'static str>| {
            if opaque.is_none() && t.kind == Kind::Word {
                *opaque = risky_word(t.text);
            }
        };
        check(&first, &mut opaque);
        while let Some(t) = self.lexer.next() {
            if t.kind == Kind::Semicolon {
                break;
            }
            check(&t, &mut opaque);
            if count < words.tokens.len() {
                words.tokens[count] = Some(t);
                count += 1;
            }
            end = t.end;
        }
        words.statement = &self.lexer.s[start..end];
        if first.kind != Kind::Word {
            // `(SELECT ...)`: only a query can start this way.
            return opaque.map_or(Effect::None, Effect::Opaque);
        }
        if words.is(0, "DO") || words.is(0, "CALL") {
            return Effect::Opaque("DO/CALL (state changed inside is not visible)");
        }
        if words.is(0, "LOAD") {
            return Effect::Opaque("LOAD");
        }
        if let Some(reason) = opaque {
            return Effect::Opaque(reason);
        }
        words.classify()
    }
}

/// The first few tokens of a statement (all any classification needs) and its text.
struct Words<'a> {
    tokens: [Option<Token<'a>>; 4],
    statement: &'a [u8],
}

impl<'a> Words<'a> {
    /// Whether token `i` is the keyword `kw`.
    fn is(&self, i: usize, kw: &str) -> bool {
        self.tokens[i]
            .filter(|t| t.kind == Kind::Word)
            .is_some_and(|t| t.text.eq_ignore_ascii_case(kw.as_bytes()))
    }

    /// Token `i` as a name.
    fn ident(&self, i: usize) -> Option<Ident<'a>> {
        self.tokens[i].and_then(Token::ident)
    }

    /// What a statement free of risky words does, by its first keyword.
    fn classify(&self) -> Effect<'a> {
        const TRANSACTION: [&str; 8] = [
            "BEGIN",
            "START",
            "COMMIT",
            "END",
            "ROLLBACK",
            "ABORT",
            "SAVEPOINT",
            "RELEASE",
        ];
        match () {
            _ if self.is(0, "SET") => self.set(),
            _ if self.is(0, "RESET") => self.reset(),
            _ if self.is(0, "PREPARE") => self.prepare(),
            _ if self.is(0, "DEALLOCATE") => self.deallocate(),
            _ if self.is(0, "LISTEN") => match self.ident(1) {
                Some(channel) => Effect::Listen { channel },
                None => Effect::Opaque("a LISTEN statement not understood"),
            },
            _ if self.is(0, "UNLISTEN") => self.unlisten(),
            _ if TRANSACTION.iter().any(|k| self.is(0, k)) => Effect::Transaction,
            // PLANS, SEQUENCES and TEMP drop caches or state that never moves.
            _ if self.is(0, "DISCARD") && self.is(1, "ALL") => Effect::DiscardAll,
            _ => Effect::None,
        }
    }

    fn set(&self) -> Effect<'a> {
        // Transaction-scoped forms end with the transaction.
        if self.is(1, "LOCAL") || self.is(1, "TRANSACTION") || self.is(1, "CONSTRAINTS") {
            return Effect::None;
        }
        let at = if self.is(1, "SESSION") && !self.is(2, "AUTHORIZATION") && !self.is(2, "CHARACTERISTICS") {
            2
        } else {
            1
        };
        let name = match () {
            _ if self.is(at, "TIME") && self.is(at + 1, "ZONE") => Ident::Bare(b"timezone"),
            _ if self.is(at, "SESSION") && self.is(at + 1, "AUTHORIZATION") => Ident::Bare(b"session_authorization"),
            _ if self.is(at, "SESSION") && self.is(at + 1, "CHARACTERISTICS") => {
                Ident::Bare(b"session characteristics")
            }
            _ if self.is(at, "NAMES") => Ident::Bare(b"client_encoding"),
            _ if self.is(at, "SCHEMA") => Ident::Bare(b"search_path"),
            _ => match self.ident(at) {
                // `SET a.b = ...` (a custom variable): the lexer sees a.b as one word.
                Some(name) => name,
                None => return Effect::Opaque("a SET statement not understood"),
            },
        };
        Effect::Set {
            name,
            statement: self.statement,
        }
    }

    fn reset(&self) -> Effect<'a> {
        match () {
            _ if self.is(1, "ALL") => Effect::ResetAll,
            _ if self.is(1, "TIME") && self.is(2, "ZONE") => Effect::Reset {
                name: Ident::Bare(b"timezone"),
            },
            _ if self.is(1, "SESSION") && self.is(2, "AUTHORIZATION") => Effect::Reset {
                name: Ident::Bare(b"session_authorization"),
            },
            _ => match self.ident(1) {
                Some(name) => Effect::Reset { name },
                None => Effect::Opaque("a RESET statement not understood"),
            },
        }
    }

    fn prepare(&self) -> Effect<'a> {
        // PREPARE TRANSACTION is two-phase commit, not a statement.
        if self.is(1, "TRANSACTION") {
            return Effect::Transaction;
        }
        match self.ident(1) {
            Some(name) => Effect::Prepare {
                name,
                statement: self.statement,
            },
            None => Effect::Opaque("a PREPARE statement not understood"),
        }
    }

    fn deallocate(&self) -> Effect<'a> {
        let at = if self.is(1, "PREPARE") { 2 } else { 1 };
        if self.is(at, "ALL") {
            return Effect::Deallocate { name: None };
        }
        match self.ident(at) {
            Some(name) => Effect::Deallocate { name: Some(name) },
            None => Effect::Opaque("a DEALLOCATE statement not understood"),
        }
    }

    fn unlisten(&self) -> Effect<'a> {
        if self.tokens[1].is_some_and(|t| t.text == b"*") {
            return Effect::Unlisten { channel: None };
        }
        match self.ident(1) {
            Some(channel) => Effect::Unlisten { channel: Some(channel) },
            None => Effect::Opaque("an UNLISTEN statement not understood"),
        }
    }
}

/// A word anywhere in a statement that means state which cannot be recreated, or
/// a session variable set by a function call.
fn risky_word(w: &[u8]) -> Option<&'static str> {
    // Each part of a qualified name: `pg_temp.t`, `pg_catalog.set_config`.
    w.split(|&b| b == b'.').find_map(risky_name)
}

fn risky_name(w: &[u8]) -> Option<&'static str> {
    // Most words cannot be one of these: one byte decides (this runs per word of
    // every query on the data path).
    if !matches!(w.first().map(u8::to_ascii_lowercase), Some(b't' | b'p' | b'h' | b's')) {
        return None;
    }
    let starts = |p: &str| w.len() >= p.len() && w[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    let is = |p: &str| w.eq_ignore_ascii_case(p.as_bytes());
    if is("TEMP") || is("TEMPORARY") || starts("pg_temp") {
        return Some("temporary tables");
    }
    if starts("pg_advisory_lock") || starts("pg_try_advisory_lock") {
        return Some("session advisory locks");
    }
    if is("HOLD") {
        return Some("WITH HOLD cursors");
    }
    if is("set_config") {
        return Some("set_config()");
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A keyword or identifier (dots and `$` included: `a.b`, `pg_catalog.f`).
    Word,
    /// A double-quoted identifier; `text` is between the quotes.
    Quoted,
    /// A string literal (any form), a number or a parameter.
    Literal,
    Semicolon,
    /// Any other punctuation, one byte.
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    text: &'a [u8],
    start: usize,
    end: usize,
}

impl<'a> Token<'a> {
    fn ident(self) -> Option<Ident<'a>> {
        match self.kind {
            Kind::Word => Some(Ident::Bare(self.text)),
            Kind::Quoted => Some(Ident::Quoted(self.text)),
            _ => None,
        }
    }
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'.' || b >= 0x80
}

impl<'a> Lexer<'a> {
    fn peek(&self, at: usize) -> u8 {
        self.s.get(at).copied().unwrap_or(0)
    }

    /// Skips whitespace and comments (nested block comments included).
    fn skip_blank(&mut self) {
        loop {
            while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
            if self.peek(self.i) == b'-' && self.peek(self.i + 1) == b'-' {
                while self.i < self.s.len() && self.s[self.i] != b'\n' {
                    self.i += 1;
                }
            } else if self.peek(self.i) == b'/' && self.peek(self.i + 1) == b'*' {
                let mut depth = 0usize;
                while self.i < self.s.len() {
                    if self.peek(self.i) == b'/' && self.peek(self.i + 1) == b'*' {
                        depth += 1;
                        self.i += 2;
                    } else if self.peek(self.i) == b'*' && self.peek(self.i + 1) == b'/' {
                        depth -= 1;
                        self.i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.i += 1;
                    }
                }
            } else {
                return;
            }
        }
    }

    /// Skips a quoted run starting after its opening `q`; `backslash` for E'' strings.
    fn skip_quoted(&mut self, q: u8, backslash: bool) {
        while self.i < self.s.len() {
            let b = self.s[self.i];
            self.i += 1;
            if backslash && b == b'\\' {
                self.i += 1;
            } else if b == q {
                if self.peek(self.i) == q {
                    self.i += 1;
                } else {
                    return;
                }
            }
        }
    }

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_blank();
        let start = self.i;
        let b = *self.s.get(start)?;
        let token = |lexer: &Self, kind: Kind, text_from: usize, text_to: usize| Token {
            kind,
            text: &lexer.s[text_from..text_to.min(lexer.s.len())],
            start,
            end: lexer.i.min(lexer.s.len()),
        };
        // E'...', B'...', X'...', U&'...' and N'...' are literals, not words.
        let prefixed_quote = match b.to_ascii_uppercase() {
            b'E' | b'B' | b'X' | b'N' if self.peek(start + 1) == b'\'' => Some(1),
            b'U' if self.peek(start + 1) == b'&' && self.peek(start + 2) == b'\'' => Some(2),
            _ => None,
        };
        if let Some(skip) = prefixed_quote {
            self.i = start + skip + 1;
            self.skip_quoted(b'\'', b.eq_ignore_ascii_case(&b'E'));
            return Some(token(self, Kind::Literal, start, self.i));
        }
        if is_word_start(b) {
            self.i += 1;
            while self.i < self.s.len() && is_word_byte(self.s[self.i]) {
                self.i += 1;
            }
            return Some(token(self, Kind::Word, start, self.i));
        }
        self.i += 1;
        match b {
            b';' => Some(token(self, Kind::Semicolon, start, self.i)),
            b'\'' => {
                self.skip_quoted(b'\'', false);
                Some(token(self, Kind::Literal, start, self.i))
            }
            b'"' => {
                self.skip_quoted(b'"', false);
                let close = if self.i > start + 1 && self.s.get(self.i - 1) == Some(&b'"') {
                    self.i - 1
                } else {
                    self.i
                };
                Some(token(self, Kind::Quoted, start + 1, close))
            }
            b'$' => {
                // $1 is a parameter; $tag$ ... $tag$ and $$ ... $$ are strings.
                if self.peek(self.i).is_ascii_digit() {
                    while self.peek(self.i).is_ascii_digit() {
                        self.i += 1;
                    }
                    return Some(token(self, Kind::Literal, start, self.i));
                }
                let mut j = self.i;
                while j < self.s.len() && (self.s[j].is_ascii_alphanumeric() || self.s[j] == b'_' || self.s[j] >= 0x80)
                {
                    j += 1;
                }
                if self.peek(j) != b'$' {
                    return Some(token(self, Kind::Other, start, self.i));
                }
                let tag = &self.s[start..=j];
                self.i = j + 1;
                match self.s[self.i..].windows(tag.len()).position(|w| w == tag) {
                    Some(p) => self.i += p + tag.len(),
                    None => self.i = self.s.len(),
                }
                Some(token(self, Kind::Literal, start, self.i))
            }
            b'0'..=b'9' => {
                while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'.') {
                    self.i += 1;
                }
                Some(token(self, Kind::Literal, start, self.i))
            }
            _ => Some(token(self, Kind::Other, start, self.i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(sql: &str) -> Vec<Effect<'_>> {
        effects(sql.as_bytes()).collect()
    }

    fn one(sql: &str) -> Effect<'_> {
        let v = all(sql);
        assert_eq!(v.len(), 1, "{sql}: {v:?}");
        v[0]
    }

    fn set_name(sql: &str) -> String {
        match one(sql) {
            Effect::Set { name, statement } => {
                assert!(statement.starts_with(b"SET") || statement.starts_with(b"set"), "{sql}");
                assert!(!statement.ends_with(b";"), "{sql}");
                name.normalized()
            }
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn set_forms_name_the_variable() {
        assert_eq!(set_name("SET search_path TO a, b"), "search_path");
        assert_eq!(set_name("set SESSION Statement_Timeout = '5s';"), "statement_timeout");
        assert_eq!(set_name("SET \"Weird\"\"Name\" = 1"), "Weird\"Name");
        assert_eq!(set_name("SET TIME ZONE 'UTC'"), "timezone");
        assert_eq!(set_name("SET SESSION AUTHORIZATION bob"), "session_authorization");
        assert_eq!(
            set_name("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            "session characteristics"
        );
        assert_eq!(set_name("SET NAMES 'UTF8'"), "client_encoding");
        assert_eq!(set_name("SET myapp.tenant = '7'"), "myapp.tenant");
        assert_eq!(
            set_name("  /* c */ -- x\n SET application_name = 'a;b'"),
            "application_name"
        );
        assert_eq!(set_name("SET ROLE app"), "role");
    }

    #[test]
    fn transaction_scoped_and_unrelated_statements_change_nothing() {
        for sql in [
            "SET LOCAL search_path = x",
            "set transaction isolation level serializable",
            "SET CONSTRAINTS ALL DEFERRED",
            "SELECT 1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "INSERT INTO t (a) VALUES ('SET x = 1; LISTEN y')",
            "select $$ LISTEN a $$, $q$ SET a $q$",
            "DISCARD PLANS",
            "select e'it\\'s SET'",
        ] {
            assert_eq!(one(sql), Effect::None, "{sql}");
        }
        assert!(all("").is_empty());
        assert!(all(" ; -- nothing\n").is_empty());
    }

    #[test]
    fn prepares_listens_and_resets() {
        assert!(
            matches!(one("PREPARE q1 (int) AS SELECT $1"), Effect::Prepare { name, .. } if name.normalized() == "q1")
        );
        assert_eq!(
            one("DEALLOCATE PREPARE Q1"),
            Effect::Deallocate {
                name: Some(Ident::Bare(b"Q1"))
            }
        );
        assert_eq!(one("deallocate all"), Effect::Deallocate { name: None });
        assert_eq!(
            one("LISTEN \"Chan\""),
            Effect::Listen {
                channel: Ident::Quoted(b"Chan")
            }
        );
        assert_eq!(one("UNLISTEN *"), Effect::Unlisten { channel: None });
        assert_eq!(
            one("unlisten c"),
            Effect::Unlisten {
                channel: Some(Ident::Bare(b"c"))
            }
        );
        assert_eq!(one("RESET ALL"), Effect::ResetAll);
        assert_eq!(
            one("RESET time zone"),
            Effect::Reset {
                name: Ident::Bare(b"timezone")
            }
        );
        assert_eq!(one("DISCARD ALL"), Effect::DiscardAll);
    }

    #[test]
    fn state_that_cannot_be_followed_is_opaque() {
        for (sql, why) in [
            ("CREATE TEMP TABLE t (a int)", "temporary tables"),
            ("create temporary table t as select 1", "temporary tables"),
            ("select * into temp t from x", "temporary tables"),
            ("insert into pg_temp.t values (1)", "temporary tables"),
            ("SELECT pg_advisory_lock(1)", "session advisory locks"),
            ("select pg_catalog.pg_try_advisory_lock(1, 2)", "session advisory locks"),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD cursors"),
            ("SELECT set_config('search_path', 'x', false)", "set_config()"),
            ("select pg_catalog.set_config('a.b', '1', false)", "set_config()"),
        ] {
            assert_eq!(one(sql), Effect::Opaque(why), "{sql}");
        }
        assert!(matches!(one("DO $$ BEGIN PERFORM 1; END $$"), Effect::Opaque(_)));
        assert!(matches!(one("CALL p()"), Effect::Opaque(_)));
        // The transaction-level lock ends with the transaction.
        assert_eq!(one("select pg_advisory_xact_lock(1)"), Effect::None);
        // Words inside strings and comments are not statements.
        assert_eq!(one("select 'temp', /* hold */ 1 -- set_config\n"), Effect::None);
    }

    #[test]
    fn every_statement_of_a_multi_statement_query() {
        let v = all("BEGIN; SET search_path = a; COMMIT; LISTEN x;");
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], Effect::Transaction);
        assert!(matches!(v[1], Effect::Set { statement, .. } if statement == b"SET search_path = a"));
        assert_eq!(v[2], Effect::Transaction);
        assert_eq!(one("PREPARE TRANSACTION 'x'"), Effect::Transaction);
        assert_eq!(one("end"), Effect::Transaction);
        assert!(matches!(v[3], Effect::Listen { .. }));
    }

    #[test]
    fn malformed_input_never_panics() {
        for sql in [
            "'",
            "\"",
            "$a$",
            "$",
            "e'\\",
            "/* /* */",
            "--",
            "SET",
            "SET \"",
            "RESET",
            "LISTEN",
            "UNLISTEN",
            "DEALLOCATE",
            "PREPARE",
            "u&'",
            "$1",
            "\u{80}",
            "SET ;",
        ] {
            let _ = all(sql);
        }
    }
}
