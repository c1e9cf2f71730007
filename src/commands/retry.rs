//! `retry` subcommand.

use crate::exit::ExitStatus;

pub async fn retry(
    _db: &std::path::Path,
    _args: crate::cli::RetryArgs,
) -> anyhow::Result<ExitStatus> {
    super::not_implemented("retry")
}
