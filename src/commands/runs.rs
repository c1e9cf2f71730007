//! `runs` subcommand.

use crate::exit::ExitStatus;

pub fn runs(_db: &std::path::Path) -> anyhow::Result<ExitStatus> {
    super::not_implemented("runs")
}
