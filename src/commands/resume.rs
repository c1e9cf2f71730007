//! `resume` subcommand.

use crate::exit::ExitStatus;

pub async fn resume(
    _db: &std::path::Path,
    _args: crate::cli::ResumeArgs,
) -> anyhow::Result<ExitStatus> {
    super::not_implemented("resume")
}
