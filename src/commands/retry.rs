//! `retry`: put a run's failed items back to pending, then continue it.

use std::path::Path;

use super::common;
use crate::cli::RetryArgs;
use crate::exit::ExitStatus;

pub async fn retry(db: &Path, args: RetryArgs) -> anyhow::Result<ExitStatus> {
    let (queue, lease, run) = common::lease_run(db, Some(args.run_id))?;
    // Options are checked before anything changes, so a bad flag leaves the failed items be;
    // the failed items go back to pending only once the run's tenant is confirmed.
    common::apply_exec(&mut run.options.clone(), &args.exec)?;
    println!("run-id: {}", run.id);
    common::continue_run(queue, &lease, run, &args.exec, common::Continue::Retry).await
}
