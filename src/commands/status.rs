//! `status` subcommand.

use crate::exit::ExitStatus;

pub fn status(_db: &std::path::Path, _args: crate::cli::StatusArgs) -> anyhow::Result<ExitStatus> {
    super::not_implemented("status")
}
