//! `demo` subcommand.

use crate::exit::ExitStatus;

pub async fn demo(_args: crate::cli::DemoArgs) -> anyhow::Result<ExitStatus> {
    super::not_implemented("demo")
}
