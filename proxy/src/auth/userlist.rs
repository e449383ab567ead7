//! PgBouncer's `auth_file` format: one `"user" "secret"` pair per line, `""` escapes
//! a quote, lines starting with `;` or `#` are comments.

use super::secret::Secret;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Secrets by user name.
#[derive(Debug, Clone, Default)]
pub struct Userlist {
    users: HashMap<String, Secret>,
}

/// An auth_file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UserlistError {
    /// The file cannot be read.
    #[error("cannot read auth_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `"user" "secret"`.
    #[error("auth_file {path} line {line}: {problem}; expected \"user\" \"secret\"")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

impl Userlist {
    /// Reads and parses an auth_file.
    pub fn load(path: &Path) -> Result<Userlist, UserlistError> {
        let text = std::fs::read_to_string(path).map_err(|source| UserlistError::Read {
            path: path.to_owned(),
            source,
        })?;
        Userlist::parse(&text).map_err(|(line, problem)| UserlistError::Syntax {
            path: path.to_owned(),
            line,
            problem,
        })
    }

    /// Parses auth_file text; errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Userlist, (usize, String)> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let (user, rest) = quoted(line).map_err(|p| (i + 1, p))?;
            let (secret, rest) = quoted(rest.trim_start()).map_err(|p| (i + 1, p))?;
            if !rest.trim().is_empty() {
                return Err((i + 1, "unexpected text after the secret".into()));
            }
            let secret = Secret::parse(&secret).map_err(|p| (i + 1, format!("user {user:?}: {p}")))?;
            users.insert(user, secret);
        }
        Ok(Userlist { users })
    }

    /// The secret for `user`.
    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Reads one `"..."` field with `""` escapes; returns it and the rest of the line.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let body = s.strip_prefix('"').ok_or("field does not start with a double quote")?;
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if matches!(chars.peek(), Some((_, '"'))) {
                chars.next();
                out.push('"');
            } else {
                return Ok((out, &body[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    Err("unterminated double quote".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_userlist_in_deploy_is_valid() {
        let text = include_str!("../../../deploy/userlist.example.txt");
        let u = Userlist::parse(text).unwrap();
        assert_eq!(u.len(), 3);
    }

    #[test]
    fn parses_pgbouncer_userlist() {
        let text = r#"
; comment
"alice" "plain pw"
"bo""b" "md53175bce1d3201d16594cebf9d7eb3f9d"
  "carol"   "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$aW5kZXhpbmRleGluZGV4aW5kZXhpbmRleGluZGV4aW4=:aW5kZXhpbmRleGluZGV4aW5kZXhpbmRleGluZGV4aW4="
"#;
        let u = Userlist::parse(text).unwrap();
        assert_eq!(u.len(), 3);
        assert_eq!(u.get("alice"), Some(&Secret::Plain("plain pw".into())));
        assert!(matches!(u.get("bo\"b"), Some(Secret::Md5(_))));
        assert!(matches!(u.get("carol"), Some(Secret::Scram(_))));
        assert!(u.get("dave").is_none());
    }

    #[test]
    fn reports_line_of_syntax_errors() {
        assert_eq!(Userlist::parse("\"a\" \"b\"\nalice pw\n").unwrap_err().0, 2);
        assert_eq!(Userlist::parse("\"a\" \"b").unwrap_err().0, 1);
        assert_eq!(Userlist::parse("\"a\" \"b\" x").unwrap_err().0, 1);
        assert!(Userlist::parse("\"a\" \"SCRAM-SHA-256$nonsense\"")
            .unwrap_err()
            .1
            .contains("SCRAM"));
    }
}
