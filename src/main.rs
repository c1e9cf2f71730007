//! Entry point: parse, set up logging, dispatch, map the outcome to an exit code.

use clap::Parser;

use b2b_convert::cli::Cli;
use b2b_convert::{commands, exit, logging, profile};

fn main() {
    // A profile fills in the environment before parsing, so flags and variables keep priority.
    if let Err(e) = profile::apply(&std::env::args_os().collect::<Vec<_>>()) {
        eprintln!("error: {e}");
        std::process::exit(exit::ExitStatus::Fatal.code());
    }
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.verbose, cli.quiet);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(b2b_convert::queue::threads::runtime_thread_started)
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(commands::dispatch(cli)));
    std::process::exit(exit::exit_code_of(result));
}
