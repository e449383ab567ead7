//! The admin API's bearer token: one reader and one rule for the proxy that checks
//! it and the CLI that presents it, so the CLI cannot send a token the proxy refuses.

use std::fmt;
use std::path::{Path, PathBuf};

/// Shortest token accepted: it is a password reachable over the network.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The token from `[proxy] admin_token_file`, trimmed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

/// Why `admin_token_file` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// The file cannot be read.
    #[error("cannot read admin_token_file {path}: {source}")]
    Read {
        /// The configured file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token is shorter than [`MIN_ADMIN_TOKEN_LEN`].
    #[error(
        "admin_token_file {path}: the token must be at least {MIN_ADMIN_TOKEN_LEN} characters (e.g. openssl rand -hex 32 > {path})"
    )]
    TooShort {
        /// The configured file.
        path: PathBuf,
    },
}

impl AdminToken {
    /// Reads and checks the token in `path`.
    pub fn load(path: &Path) -> Result<AdminToken, AdminTokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdminTokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        AdminToken::new(text.trim()).ok_or_else(|| AdminTokenError::TooShort { path: path.to_owned() })
    }

    /// Reads `path` when one is configured.
    pub fn load_optional(path: Option<&Path>) -> Result<Option<AdminToken>, AdminTokenError> {
        path.map(AdminToken::load).transpose()
    }

    /// A token given directly; `None` when it is too short.
    pub fn new(token: &str) -> Option<AdminToken> {
        (token.len() >= MIN_ADMIN_TOKEN_LEN).then(|| AdminToken(token.to_owned()))
    }

    /// The token, for an `Authorization: Bearer` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        presented.len() == self.0.len()
            && presented
                .bytes()
                .zip(self.0.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tokens_are_refused_and_comparison_is_exact() {
        assert!(AdminToken::new("fifteen-chars-x").is_none());
        let t = AdminToken::new("sixteen-chars-xx").unwrap();
        assert!(t.matches("sixteen-chars-xx"));
        assert!(!t.matches("sixteen-chars-xy"));
        assert!(!t.matches("sixteen-chars-x"));
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }
}
