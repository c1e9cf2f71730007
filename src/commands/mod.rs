//! One file per subcommand. `dispatch` is the only entry; commands that need no database never
//! open it.

mod apply;
mod bench;
mod common;
mod demo;
mod emulator;
mod export_links;
mod out_file;
pub mod preflight;
mod profiles;
pub mod report;
mod resend;
mod restore;
mod resume;
mod retire;
mod retry;
mod rollback;
mod run;
mod runs;
mod scripts;
mod status;
mod tenant;
mod track;

use crate::cli::{Cli, Command};
use crate::exit::ExitStatus;

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitStatus> {
    ignore_file_size_signal();
    if works_a_run(&cli.command) {
        common::stop_at_once_until_a_pass_listens()?;
    }
    match cli.command {
        Command::Run(args) => run::run(&cli.db, args).await,
        Command::Resume(args) => resume::resume(&cli.db, args).await,
        Command::Apply(args) => apply::apply(&cli.db, args).await,
        Command::Retry(args) => retry::retry(&cli.db, args).await,
        Command::Status(args) => status::status(&cli.db, args),
        Command::Runs(args) => runs::runs(&cli.db, args.json),
        Command::Report(args) => report::report(&cli.db, args),
        Command::Track(args) => track::track(&cli.db, args).await,
        Command::Resend(args) => resend::resend(&cli.db, args).await,
        Command::Restore(args) => restore::restore(&cli.db, args).await,
        Command::Rollback(args) => rollback::rollback(&cli.db, args).await,
        Command::Retire(args) => retire::retire(&cli.db, args).await,
        Command::ExportLinks(args) => export_links::export_links(&cli.db, args),
        Command::Scripts(args) => scripts::scripts(&cli.db, args),
        Command::Profiles => profiles::profiles(),
        Command::Emulator(args) => emulator::emulator(args).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::Bench(args) => bench::bench(args).await,
        Command::Preflight(args) => preflight::preflight(&cli.db, args).await,
    }
}

/// The commands that sign in and work a run's users: a signal stops them the same way from
/// their first instant (SPEC "Signals"). The emulator and the read-only commands keep the
/// default dispositions.
fn works_a_run(command: &Command) -> bool {
    matches!(
        command,
        Command::Run(_)
            | Command::Resume(_)
            | Command::Apply(_)
            | Command::Retry(_)
            | Command::Track(_)
            | Command::Resend(_)
            | Command::Restore(_)
            | Command::Rollback(_)
            | Command::Retire(_)
            | Command::Preflight(_)
    )
}

/// A write past the file size limit (`ulimit -f`, a quota) raises SIGXFSZ, whose default kills
/// the process on the spot, mid-step. Ignored, the write fails instead, like a full disk, and
/// the run stops through its error path: resumable, exit 1, the database named.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory of ours; it happens
    // once, before any thread of ours writes a file.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
