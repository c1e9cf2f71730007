//! `apply DRY_RUN_ID`: the live run of exactly what a change board approved.
//!
//! Terraform's plan/apply for a one-way change: the new live run's items are the dry run's
//! `would_convert` users, no one else whatever the source holds today, with the dry run's
//! options. Each user is read and validated again just before sending, and one who changed
//! since the plan ends `blocked` `changed_since_plan` (see [`crate::drift`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use super::common::{self, RequestLog};
use crate::cli::ApplyArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::graph::{Credentials, GraphClient};
use crate::item::{ItemState, RunMode, RunRecord};
use crate::queue::Queue;

/// Users read together for the drift count before the confirmation.
const PRE_READ_CHUNK: usize = 300;

pub async fn apply(db: &Path, args: ApplyArgs) -> anyhow::Result<ExitStatus> {
    let exec = &args.exec;
    if exec.set_mail || exec.set_guest || exec.keep_redeem_links {
        return Err(ExitError::usage(
            "apply runs the plan's options: --set-mail, --set-guest and --keep-redeem-links \
             belong to the dry run (make a new one with them and have it approved)",
        )
        .into());
    }
    let queue = Arc::new(Queue::open_existing(db)?);
    let plan = common::pick_run(&queue, Some(args.dry_run_id))?;
    let age = check_plan(&queue, &plan, args.max_age)?;
    let mut options = plan.options.clone();
    common::apply_exec(&mut options, exec)?;
    let only = common::read_only(exec.only.as_deref())?;
    options.only = only.as_ref().map(|names| names.len() as u64);
    common::require_consent_possible(RunMode::Live, exec.yes)?;
    let credentials = Credentials::resolve(exec.sign_in.auth)?;
    let credentials_tenant = credentials.tenant_id().map(str::to_string);
    let endpoints = common::endpoints_for(&exec.sign_in.endpoints, &plan).with_timeouts(exec);
    let graph = common::connect(&endpoints, credentials, &options, RunMode::Live)?;
    graph.authenticate().await?;
    // A plan of another tenant is refused before any request beyond sign-in and domains.
    super::tenant::check_run_tenant(&graph, &queue, &plan, credentials_tenant.as_deref()).await?;
    let plan = common::pick_run(&queue, Some(plan.id))?;
    let group = matches!(plan.source, crate::item::SourceSpec::Group { .. });
    super::preflight::require_ready(
        &graph,
        &super::preflight::needs_of(RunMode::Live, &options, group),
    )
    .await?;

    let (run_id, lease, copied) = queue.create_apply_run(&plan, &options, &endpoints.graph_url)?;
    println!("run-id: {run_id}");
    let graph = graph.with_observer(Arc::new(RequestLog {
        queue: queue.clone(),
        run_id,
    }));
    let run = queue.run(run_id)?.context("the new run vanished")?;
    let drifted = match pre_read(&queue, &graph, run_id).await {
        Ok(n) => n,
        Err(e) => {
            drop(lease);
            queue.discard_run(run_id)?;
            return Err(e.context("reading the plan's users again (nothing was sent)"));
        }
    };
    print_plan(&queue, &plan, &age, copied, drifted)?;
    let scope = match common::Scope::of(&queue, &graph, &run, only.as_deref()).await {
        Ok(scope) => scope,
        Err(e) => {
            drop(lease);
            queue.discard_run(run_id)?;
            return Err(e);
        }
    };
    if !exec.yes && scope.users > 0 && !common::confirm(&run, scope.users)? {
        drop(lease);
        queue.discard_run(run_id)?;
        println!("run {run_id} removed");
        return Err(common::declined());
    }
    common::execute(queue, &lease, run, graph, exec.report.as_deref(), scope).await
}

/// A plan is applied only when it is a finished dry run no older than `--max-age` days (exit 2
/// otherwise). Returns its age.
fn check_plan(
    queue: &Queue,
    plan: &RunRecord,
    max_age_days: u32,
) -> anyhow::Result<chrono::Duration> {
    if plan.mode != RunMode::DryRun {
        return Err(ExitError::usage(format!(
            "run {} is a live run, not a dry run: apply takes the dry run a change board approved",
            plan.id
        ))
        .into());
    }
    let counts = queue.counts(plan.id)?;
    let unfinished = counts.state(ItemState::Pending) + counts.state(ItemState::InFlight);
    let finished_at = match (&plan.finished_at, plan.status.as_str()) {
        (Some(at), "finished") if plan.ingest_complete && unfinished == 0 => at,
        _ => {
            return Err(ExitError::usage(format!(
                "dry run {} is not finished (status {}, {unfinished} users not checked yet): \
                 finish it with `b2b-convert resume {}`, have it approved, then apply it",
                plan.id, plan.status, plan.id
            ))
            .into())
        }
    };
    let finished = chrono::DateTime::parse_from_rfc3339(finished_at).with_context(|| {
        format!(
            "run {} has an unreadable finish time {finished_at}",
            plan.id
        )
    })?;
    let age = chrono::Utc::now().signed_duration_since(finished);
    if age > chrono::Duration::days(i64::from(max_age_days)) {
        return Err(ExitError::usage(format!(
            "dry run {} finished {} ago, longer than --max-age {max_age_days} days: the tenant \
             has moved on since; make a new dry run and have it approved",
            plan.id,
            human_age(&age)
        ))
        .into());
    }
    Ok(age)
}

/// The cheap pre-read before the confirmation: reads the plan's users in bulk and counts those
/// whose decisive properties changed (or who are gone). The pass reads them again just before
/// sending; this is only the figure the operator decides on.
async fn pre_read(queue: &Queue, graph: &GraphClient, run_id: i64) -> anyhow::Result<u64> {
    let mut drifted = 0;
    let mut after = 0;
    loop {
        let items = queue.pending_items(run_id, after, PRE_READ_CHUNK)?;
        let Some(last) = items.last() else {
            return Ok(drifted);
        };
        after = last.id;
        let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
        let plans = queue.plan_snapshots(&ids)?;
        let user_ids: Vec<String> = items.iter().filter_map(|i| i.user_id.clone()).collect();
        let now: std::collections::HashMap<String, crate::model::User> = graph
            .users_by_ids(&user_ids)
            .await?
            .into_iter()
            .map(|u| (u.id.to_ascii_lowercase(), u))
            .collect();
        for item in &items {
            let (Some(plan), Some(id)) = (plans.get(&item.id), &item.user_id) else {
                continue;
            };
            let changed = match now.get(&id.to_ascii_lowercase()) {
                Some(user) => !crate::drift::property_changes(&plan.user, user).is_empty(),
                None => true,
            };
            drifted += u64::from(changed);
        }
    }
}

/// What the operator confirms: the plan's id, age and the figures the board approved, and how
/// many users drifted since.
fn print_plan(
    queue: &Queue,
    plan: &RunRecord,
    age: &chrono::Duration,
    copied: u64,
    drifted: u64,
) -> anyhow::Result<()> {
    let c = queue.counts(plan.id)?;
    println!(
        "plan: dry run {} of {}, finished {} ({} ago)",
        plan.id,
        plan.source,
        plan.finished_at.as_deref().unwrap_or("?"),
        human_age(age)
    );
    println!(
        "  approved: {} users to convert ({} blocked, {} skipped, {} in all); invitations {}{}{}",
        c.state(ItemState::WouldConvert),
        c.state(ItemState::Blocked),
        c.state(ItemState::Skipped),
        c.total,
        common::describe_email(&plan.options),
        if plan.options.set_mail {
            "; mail set first where needed"
        } else {
            ""
        },
        if plan.options.set_guest {
            "; userType set to Guest after"
        } else {
            ""
        },
    );
    println!(
        "  changed since the plan: {drifted} of {copied} users (they will not be converted: \
         changed_since_plan)"
    );
    Ok(())
}

/// "3 days 4 hours", "5 hours", "12 minutes".
fn human_age(age: &chrono::Duration) -> String {
    let minutes = age.num_minutes().max(0);
    let (days, hours) = (minutes / 1440, minutes % 1440 / 60);
    match (days, hours) {
        (0, 0) => format!("{minutes} minutes"),
        (0, h) => format!("{h} hours"),
        (d, 0) => format!("{d} days"),
        (d, h) => format!("{d} days {h} hours"),
    }
}

#[cfg(test)]
mod tests {
    use super::human_age;

    #[test]
    fn ages_read_as_people_say_them() {
        let m = chrono::Duration::minutes;
        assert_eq!(human_age(&m(12)), "12 minutes");
        assert_eq!(human_age(&m(5 * 60 + 3)), "5 hours");
        assert_eq!(human_age(&m(2 * 1440)), "2 days");
        assert_eq!(human_age(&m(3 * 1440 + 4 * 60)), "3 days 4 hours");
    }
}
