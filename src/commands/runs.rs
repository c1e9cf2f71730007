//! `runs`: one line per run.

use std::path::Path;

use crate::exit::ExitStatus;
use crate::item::ItemState;
use crate::queue::Queue;

pub fn runs(db: &Path) -> anyhow::Result<ExitStatus> {
    let queue = Queue::open_existing(db)?;
    println!(
        "{:>4}  {:<24}  {:<7}  {:<11}  {:>7} {:>9} {:>7} {:>7} {:>7}  source",
        "id", "started", "mode", "status", "total", "converted", "would", "blocked", "failed"
    );
    for run in queue.list_runs()? {
        let c = queue.counts(run.id)?;
        println!(
            "{:>4}  {:<24}  {:<7}  {:<11}  {:>7} {:>9} {:>7} {:>7} {:>7}  {}",
            run.id,
            run.started_at,
            run.mode.as_str(),
            run.status,
            c.total,
            c.state(ItemState::Converted),
            c.state(ItemState::WouldConvert),
            c.state(ItemState::Blocked),
            c.state(ItemState::Failed),
            run.source
        );
    }
    Ok(ExitStatus::Success)
}
