//! `retry`: put a run's failed items back to pending, then continue it.

use std::path::Path;

use super::common;
use crate::cli::RetryArgs;
use crate::exit::ExitStatus;
use crate::queue::Queue;

pub async fn retry(db: &Path, args: RetryArgs) -> anyhow::Result<ExitStatus> {
    let run = {
        let queue = Queue::open_existing(db)?;
        let run = common::pick_run(&queue, Some(args.run_id))?;
        let n = queue.requeue_failed(run.id)?;
        println!("run-id: {}", run.id);
        println!("requeued {n} failed items");
        run
    };
    common::continue_run(db, run, &args.exec).await
}
