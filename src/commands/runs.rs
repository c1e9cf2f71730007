//! `runs`: one line per run, or (`--json`) one JSON object with the same figures.

use std::path::Path;

use crate::exit::ExitStatus;
use crate::item::ItemState;
use crate::queue::Queue;

pub fn runs(db: &Path, json: bool) -> anyhow::Result<ExitStatus> {
    let queue = Queue::open_existing(db)?;
    if json {
        println!("{}", runs_json(&queue)?);
        return Ok(ExitStatus::Success);
    }
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

/// `{"runs": [{"runId", "startedAt", "finishedAt", "mode", "status", "source", "total",
/// "states": {state → count, all present}}…]}`, oldest first.
fn runs_json(queue: &Queue) -> anyhow::Result<serde_json::Value> {
    let mut out = Vec::new();
    for run in queue.list_runs()? {
        let c = queue.counts(run.id)?;
        let states: serde_json::Map<String, serde_json::Value> = ItemState::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), c.state(*s).into()))
            .collect();
        out.push(serde_json::json!({
            "runId": run.id,
            "startedAt": run.started_at,
            "finishedAt": run.finished_at,
            "mode": run.mode.as_str(),
            "status": run.status,
            "source": run.source.to_string(),
            "total": c.total,
            "states": states,
        }));
    }
    Ok(serde_json::json!({ "runs": out }))
}
