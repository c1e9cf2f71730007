//! `status`: counts by state and by reason, as a table or one JSON object (docs/usage.md).

use std::path::Path;

use serde_json::json;

use super::common;
use crate::cli::StatusArgs;
use crate::exit::ExitStatus;
use crate::item::{ItemState, Reason};
use crate::queue::backout::BackoutKind;
use crate::queue::Queue;

pub fn status(db: &Path, args: StatusArgs) -> anyhow::Result<ExitStatus> {
    let queue = Queue::open_existing_read_only(db)?;
    let run = common::pick_run(&queue, args.run_id)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status_json(&queue, run.id)?)?
        );
    } else {
        print_table(&queue, run.id)?;
    }
    Ok(ExitStatus::Success)
}

/// The machine-readable status object of docs/usage.md. Keys are stable; every state is present.
pub fn status_json(queue: &Queue, run_id: i64) -> anyhow::Result<serde_json::Value> {
    let run = common::pick_run(queue, Some(run_id))?;
    let c = queue.counts(run_id)?;
    let follow_ups = queue.follow_ups(run_id)?;
    let states: serde_json::Map<String, serde_json::Value> = ItemState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(c.state(*s))))
        .collect();
    // Per converted user once anyone is converted (live), else per item (dry run).
    let per = match c.state(ItemState::Converted) {
        0 => c.total,
        n => n,
    };
    let per_user = if per == 0 {
        0.0
    } else {
        (c.graph_requests as f64 / per as f64 * 1000.0).round() / 1000.0
    };
    let redemption = queue.redemption_counts(run_id)?;
    let retired = queue.retired_counts(run_id)?;
    Ok(json!({
        "runId": run.id,
        "mode": run.mode.as_str(),
        "source": run.source.to_string(),
        "status": run.status,
        "total": c.total,
        "states": states,
        "reasons": c.reasons,
        "graphRequests": c.graph_requests,
        "throttledRequests": c.throttled_requests,
        "reconciled": c.reconciled,
        "graphRequestsPerUser": per_user,
        "followUps": { "mailSet": follow_ups.mail_set, "guestSet": follow_ups.guest_set },
        "redemption": {
            "pendingAcceptance": redemption.pending_acceptance,
            "accepted": redemption.accepted,
            "notApplied": redemption.not_applied,
            "untracked": redemption.untracked,
        },
        "lastTrackedAt": redemption.last_tracked_at,
        "tenant": run.tenant.as_ref().map(|t| json!({
            "id": t.id,
            "initialDomain": t.initial_domain,
            "defaultDomain": t.default_domain,
        })),
        "plan": run.plan_run_id,
        "restored": queue.backout_counts(run_id, BackoutKind::Restore)?.done,
        "rolledBack": queue.backout_counts(run_id, BackoutKind::Rollback)?.done,
        "retired": {
            "passwords": retired.passwords,
            "sessions": retired.sessions,
            "awaitingRedemption": retired.awaiting_redemption,
            "onPremises": {
                "retired": retired.on_premises.retired,
                "notYet": retired.on_premises.not_yet,
            },
        },
    }))
}

/// The human table printed at the end of a run and by `status`.
pub fn print_table(queue: &Queue, run_id: i64) -> anyhow::Result<()> {
    let run = common::pick_run(queue, Some(run_id))?;
    let c = queue.counts(run_id)?;
    println!(
        "run {} · {} · {} · {} · started {}",
        run.id,
        match run.mode {
            crate::item::RunMode::DryRun => "dry run",
            crate::item::RunMode::Live => "live",
        },
        run.status,
        run.source,
        run.started_at
    );
    println!("  {:<14} {:>8}", "state", "users");
    for s in ItemState::ALL {
        println!("  {:<14} {:>8}", s.as_str(), c.state(s));
    }
    println!("  {:<14} {:>8}", "total", c.total);
    if !c.reasons.is_empty() {
        println!("  {:<20} {:>8}", "reason", "users");
        for r in Reason::ALL {
            if let Some(n) = c.reasons.get(r.as_str()) {
                println!("  {:<20} {:>8}", r.as_str(), n);
            }
        }
    }
    println!(
        "  graph requests {} (throttled {}), reconciled {}",
        c.graph_requests, c.throttled_requests, c.reconciled
    );
    Ok(())
}
