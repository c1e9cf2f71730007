//! `resume`: continue a run that stopped (crash, Ctrl-C, network loss) with its stored options.

use std::path::Path;

use super::common;
use crate::cli::ResumeArgs;
use crate::exit::ExitStatus;
use crate::queue::Queue;

pub async fn resume(db: &Path, args: ResumeArgs) -> anyhow::Result<ExitStatus> {
    let run = {
        let queue = Queue::open_existing(db)?;
        common::pick_run(&queue, args.run_id)?
    };
    println!("run-id: {}", run.id);
    common::continue_run(db, run, &args.exec).await
}
