//! Exit codes of docs/usage.md and the error type that carries one out of a command.

use std::fmt;

/// The process exit codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every item ended converted, would_convert or skipped.
    Success = 0,
    /// Configuration, credentials, database: a one-line cause on stderr.
    Fatal = 1,
    Usage = 2,
    /// Finished, but some items are blocked or failed.
    NeedsAttention = 3,
    /// The tenant refused to go on (invitations blocked, consent revoked, repeated 401).
    TenantRefused = 4,
    /// Interrupted; the run can be resumed.
    Interrupted = 130,
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// An error that ends the process with a specific exit code (usage errors, tenant refusal).
/// Anything else reaching `main` is exit 1.
#[derive(Debug)]
pub struct ExitError {
    pub status: ExitStatus,
    pub message: String,
}

impl ExitError {
    pub fn usage(message: impl Into<String>) -> Self {
        ExitError {
            status: ExitStatus::Usage,
            message: message.into(),
        }
    }
}

impl fmt::Display for ExitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

impl ExitError {
    /// A fatal error with a cause of its own (exit 1), when no library error carries it.
    pub fn fatal(message: impl Into<String>) -> Self {
        ExitError {
            status: ExitStatus::Fatal,
            message: message.into(),
        }
    }
}

/// The one policy for failed commands: which exit code an error means, and the single line
/// that says why. Usage errors carry their own status ([`ExitError`]); anything else that reaches
/// `main` (configuration, credentials, database, a run another process holds) is exit 1.
pub fn classify(err: &anyhow::Error) -> (ExitStatus, String) {
    if let Some(exit) = err.downcast_ref::<ExitError>() {
        return (exit.status, one_line(&exit.message));
    }
    (ExitStatus::Fatal, one_line(&format!("{err:#}")))
}

/// Causes are printed on one line, so scripts reading stderr get one record per failure.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Maps the outcome of a command to the process exit code, printing the one-line cause.
pub fn exit_code_of(result: anyhow::Result<ExitStatus>) -> i32 {
    match result {
        Ok(status) => status.code(),
        Err(err) => {
            let (status, message) = classify(&err);
            eprintln!("error: {message}");
            status.code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_keep_their_code_and_everything_else_is_fatal_on_one_line() {
        let usage = anyhow::Error::from(ExitError::usage("--csv x: no such file"));
        assert_eq!(
            classify(&usage),
            (ExitStatus::Usage, "--csv x: no such file".to_string())
        );
        let db = anyhow::anyhow!("database q.db: disk I/O error\nmore").context("resuming run 3");
        assert_eq!(
            classify(&db),
            (
                ExitStatus::Fatal,
                "resuming run 3: database q.db: disk I/O error; more".to_string()
            )
        );
    }
}
