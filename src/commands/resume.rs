//! `resume`: continue a run that stopped (crash, Ctrl-C, network loss) with its stored options.

use std::path::Path;

use super::common;
use crate::cli::ResumeArgs;
use crate::exit::ExitStatus;
use crate::item::ItemState;

pub async fn resume(db: &Path, args: ResumeArgs) -> anyhow::Result<ExitStatus> {
    let (queue, lease, run) = common::lease_run(db, args.run_id)?;
    println!("run-id: {}", run.id);
    if run.status == "finished" && run.ingest_complete {
        let counts = queue.counts(run.id)?;
        if counts.state(ItemState::Pending) == 0 && counts.state(ItemState::InFlight) == 0 {
            // Nothing to do: no Graph call, no confirmation, the finish time stays the record.
            println!("run {} is finished: nothing to resume", run.id);
            return common::finished_status(&queue, run.id);
        }
    }
    common::continue_run(
        queue,
        &lease,
        run,
        &args.exec,
        common::Continue::Resume(&args.send),
    )
    .await
}
