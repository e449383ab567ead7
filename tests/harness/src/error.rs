//! The harness's one error type: a message that says what to install or fix.

use crate::*;

/// Everything that can go wrong in the harness; the message says what and, where it
/// helps, includes command output or the server log tail.
pub struct HarnessError(pub(crate) String);

impl HarnessError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> HarnessError {
        HarnessError(msg.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HarnessError {
    // Not derived: `unwrap()` should show multi-line log tails readably.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HarnessError: {}", self.0)
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

pub(crate) type Res<T> = Result<T, HarnessError>;

pub(crate) fn io_err(what: impl fmt::Display, e: io::Error) -> HarnessError {
    HarnessError(format!("{what}: {e}"))
}
