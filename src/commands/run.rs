//! `run` subcommand.

use crate::exit::ExitStatus;

pub async fn run(_db: &std::path::Path, _args: crate::cli::RunArgs) -> anyhow::Result<ExitStatus> {
    super::not_implemented("run")
}
