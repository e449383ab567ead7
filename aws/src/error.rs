//! What can stop an AWS step, with what to do about it.

/// Why an AWS step could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The configuration lacks what the command needs.
    #[error("[aws] {0}")]
    Config(String),
    /// An RDS call failed.
    #[error("{call}: {message}")]
    Api {
        /// The call, e.g. "RestoreDBClusterToPointInTime green".
        call: String,
        /// The SDK's error with its context.
        message: String,
    },
    /// Something is not as the step needs it; nothing further was changed.
    #[error("{problem}; {fix}")]
    Refused {
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// A wait ran out of time.
    #[error("{what}: still {state} after {waited:?}; {fix}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The last state seen.
        state: String,
        /// How long it waited.
        waited: std::time::Duration,
        /// What to do.
        fix: &'static str,
    },
    /// A database step (SQL on blue or green) failed.
    #[error("{0}")]
    Database(String),
}

impl AwsError {
    /// An RDS call's error: the service's code and message when it answered, else
    /// the SDK's error with its context (a connection refused, a timeout).
    pub(crate) fn api<E, R>(call: impl Into<String>, e: aws_sdk_rds::error::SdkError<E, R>) -> AwsError
    where
        E: aws_sdk_rds::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let message = match e.as_service_error() {
            Some(s) => format!(
                "{}: {}",
                s.code().unwrap_or("error"),
                s.message().unwrap_or("no message")
            ),
            None => aws_sdk_rds::error::DisplayErrorContext(e).to_string(),
        };
        AwsError::Api {
            call: call.into(),
            message,
        }
    }

    pub(crate) fn refused(problem: impl Into<String>, fix: impl Into<String>) -> AwsError {
        AwsError::Refused {
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
