//! Exit codes of SPEC.md and the error type that carries one out of a command.

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

/// Maps the outcome of a command to the process exit code, printing the one-line cause.
pub fn exit_code_of(result: anyhow::Result<ExitStatus>) -> i32 {
    match result {
        Ok(status) => status.code(),
        Err(err) => {
            if let Some(exit) = err.downcast_ref::<ExitError>() {
                eprintln!("error: {}", exit.message);
                return exit.status.code();
            }
            eprintln!("error: {err:#}");
            ExitStatus::Fatal.code()
        }
    }
}
