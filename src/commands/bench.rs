//! `bench` subcommand.

use crate::exit::ExitStatus;

pub async fn bench(_args: crate::cli::BenchArgs) -> anyhow::Result<ExitStatus> {
    super::not_implemented("bench")
}
