//! `emulator` subcommand.

use crate::exit::ExitStatus;

pub async fn emulator(_args: crate::cli::EmulatorArgs) -> anyhow::Result<ExitStatus> {
    super::not_implemented("emulator")
}
