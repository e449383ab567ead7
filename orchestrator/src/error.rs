//! The orchestrator's errors: each names the object, the cause and the fix, on one line.

use crate::targets::Side;
use tokio_postgres::error::SqlState;

/// Something the orchestrator could not do, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The configuration cannot be used for this command.
    #[error("config: {0}")]
    Config(String),
    /// A server could not be reached or refused the login.
    #[error("cannot connect to {side} at {addr} (database {database}): {reason}; {fix}")]
    Connect {
        /// Blue or green.
        side: Side,
        /// host:port.
        addr: String,
        /// The database.
        database: String,
        /// What went wrong.
        reason: String,
        /// What to change.
        fix: String,
        /// The server's SQLSTATE, when the server answered (none for network errors).
        code: Option<SqlState>,
    },
    /// A statement failed.
    #[error("{side} database {database}: {doing} failed: {message}")]
    Sql {
        /// Blue or green.
        side: Side,
        /// The database.
        database: String,
        /// What pgcutover was doing.
        doing: String,
        /// The server's message (with detail and hint).
        message: String,
    },
    /// A PostgreSQL client program (pg_dump, pg_restore, psql) failed or is missing.
    #[error("{tool}: {message}")]
    Tool {
        /// The program.
        tool: String,
        /// What happened, with the fix.
        message: String,
    },
    /// A guardrail refused to go on; nothing was changed by the refused step.
    #[error("{problem}; {fix}")]
    Refused {
        /// What is wrong, naming the objects.
        problem: String,
        /// What to do.
        fix: String,
    },
}

impl OrchestratorError {
    /// A guardrail refusal.
    pub fn refused(problem: impl Into<String>, fix: impl Into<String>) -> OrchestratorError {
        OrchestratorError::Refused {
            problem: one_line(&problem.into()),
            fix: one_line(&fix.into()),
        }
    }

    /// Whether a login failed because its database does not exist (SQLSTATE 3D000): a
    /// missing role says "does not exist" too, so the message text cannot tell.
    pub fn is_missing_database(&self) -> bool {
        matches!(self, OrchestratorError::Connect { code: Some(c), .. } if *c == SqlState::INVALID_CATALOG_NAME)
    }
}

/// Folds a multi-line server or tool message into one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The message of a tokio-postgres error with its detail and hint, on one line.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = db.message().to_owned();
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("; hint: {h}"));
            }
            one_line(&m)
        }
        None => {
            let mut m = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                let t = s.to_string();
                if !m.contains(&t) {
                    m.push_str(&format!(": {t}"));
                }
                src = s.source();
            }
            one_line(&m)
        }
    }
}

/// Adds "which side, which database, doing what" to tokio-postgres errors.
pub(crate) trait SqlContext<T> {
    fn ctx(self, side: Side, database: &str, doing: &str) -> Result<T, OrchestratorError>;
}

impl<T> SqlContext<T> for Result<T, tokio_postgres::Error> {
    fn ctx(self, side: Side, database: &str, doing: &str) -> Result<T, OrchestratorError> {
        self.map_err(|e| OrchestratorError::Sql {
            side,
            database: database.to_owned(),
            doing: doing.to_owned(),
            message: pg_message(&e),
        })
    }
}
