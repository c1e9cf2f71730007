//! `report` subcommand.

use crate::exit::ExitStatus;

pub fn report(_db: &std::path::Path, _args: crate::cli::ReportArgs) -> anyhow::Result<ExitStatus> {
    super::not_implemented("report")
}
