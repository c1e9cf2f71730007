//! `resend`: re-invite converted users still `PendingAcceptance` (per the last `track`) with
//! `resetRedemption: true`, `invitedUser.id` and the run's message options.
//!
//! A pass is recorded in the database with its users fixed when it starts; each is re-invited
//! once per pass by the one executor (`workers::resend` declares the step and its re-read):
//! checkpoint `in_flight` before the request can leave, and on an unknown outcome (lost answer,
//! 5xx, a process killed mid-request) re-read the user and let Graph's
//! `externalUserStateChangeDateTime` decide before anything is sent again. An interrupted pass
//! is continued by the next `resend`, never started over. `--only` and `--limit` choose which of
//! the pass's users this invocation works (the others stay for the next `resend`);
//! `--dry-run` lists them and writes nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;

use super::common;
use crate::cli::ResendArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::graph::Credentials;
use crate::item::{RunMode, RunRecord};
use crate::progress::Progress;
use crate::queue::track::{ResendState, ResendSummary, ResendUser};
use crate::queue::Queue;
use crate::source::only::OnlyList;
use crate::workers::planner::StopReason;
use crate::workers::resend::{cutoff, PassEnd, ResendOps};

pub async fn resend(db: &Path, args: ResendArgs) -> anyhow::Result<ExitStatus> {
    let only = match &args.only {
        Some(path) => Some(OnlyList::read(path).map_err(|e| ExitError::usage(e.to_string()))?),
        None => None,
    };
    if args.dry_run {
        return dry_run(db, &args, only.as_ref());
    }
    // One process at a time works a run: a resend pass holds the run's lease like run/resume do,
    // taken before the pass is read or created.
    let (queue, lease, run) = common::lease_run(db, Some(args.run_id))?;
    let last_tracked = resendable(&queue, &run)?;
    common::require_consent_possible(RunMode::Live, args.yes)?;
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };

    let (pass, continued) = match queue.open_resend_pass(run.id)? {
        Some(pass) => (pass, true),
        None => {
            let cut = cutoff(Utc::now(), args.older_than);
            let users = queue.resend_candidate_list(run.id, &cut)?;
            let chosen = choose(&users, only.as_ref(), args.limit)?;
            if chosen.is_empty() {
                say(format!(
                    "nobody to re-invite: no converted user of run {} is pending acceptance \
                     (older than {} days) per the track of {last_tracked}",
                    run.id, args.older_than
                ));
                print_json(&args, &run, None, false, &ResendSummary::default(), true);
                return Ok(ExitStatus::Success);
            }
            if !args.yes && !confirm(&run, chosen.len() as u64, args.older_than, &last_tracked)? {
                return Err(common::declined());
            }
            match queue.create_resend_pass(run.id, args.older_than, &cut)? {
                Some(pass) => (pass, false),
                None => {
                    say("nobody to re-invite".into());
                    print_json(&args, &run, None, false, &ResendSummary::default(), true);
                    return Ok(ExitStatus::Success);
                }
            }
        }
    };
    // The pass's own users decide what `--only` may name, and which entries are left to work.
    let open = open_entries(&queue, pass.id)?;
    let chosen = choose(&pass_users(&queue, pass.id)?, only.as_ref(), None)?;
    let selected: Option<BTreeSet<i64>> = only.as_ref().map(|_| chosen.iter().copied().collect());
    let left = open
        .iter()
        .filter(|id| selected.as_ref().is_none_or(|s| s.contains(id)))
        .count() as u64;
    let this_time = args.limit.map_or(left, |l| l.min(left));
    if continued {
        let s = queue.resend_summary(pass.id)?;
        say(format!(
            "continuing resend pass {} of run {} (started {}): {} sent, {} left",
            pass.id,
            run.id,
            pass.started_at,
            s.sent,
            s.pending + s.in_flight
        ));
        if !args.yes
            && this_time > 0
            && !confirm(&run, this_time, pass.older_than_days, &last_tracked)?
        {
            return Err(common::declined());
        }
    }

    let graph = common::connect_to_run(
        &common::endpoints_for(&args.endpoints, &run),
        Credentials::resolve(args.auth)?,
        &queue,
        &run,
        RunMode::Live,
    )
    .await?;

    let watch = common::StopWatch::start(&lease, "`resend` continues this pass".into())?;
    // The bar counts what this invocation will work, never the pass's total (SPEC: `--limit`).
    let progress = Arc::new(Progress::new("re-inviting", this_time));
    let ops = Arc::new(ResendOps {
        queue: queue.clone(),
        graph: graph.with_gate(common::lease_gate(&lease)),
        pass_id: pass.id,
        progress: progress.clone(),
    });
    let outcome = crate::workers::resend::work(
        ops,
        Arc::new(run.options.clone()),
        watch.stop.clone(),
        args.limit,
        selected,
    )
    .await;
    drop(watch);
    progress.finish();
    queue.flush_request_log()?;
    if lease.is_lost() || outcome.as_ref().is_err_and(common::lease_refused) {
        return Err(anyhow::anyhow!(
            "run {} was taken over by another process while this one was stalled; stopped",
            run.id
        ));
    }
    let outcome = outcome?;
    let s = queue.resend_summary(pass.id)?;
    let finished = queue.finish_resend_pass(pass.id)?;
    say(format!(
        "resend pass {} of run {}: {} re-invited, {} failed, {} skipped (redeemed meanwhile or gone), {} left",
        pass.id,
        run.id,
        s.sent,
        s.failed,
        s.skipped,
        s.pending + s.in_flight
    ));
    print_json(&args, &run, Some(pass.id), continued, &s, finished);
    match outcome {
        PassEnd::Stopped(StopReason::TenantRefused(message)) => {
            eprintln!("error: the tenant refused to go on: {message}");
            say(format!(
                "stopped: nothing more was sent; `b2b-convert resend {}` continues this pass",
                run.id
            ));
            Ok(ExitStatus::TenantRefused)
        }
        PassEnd::Stopped(StopReason::Unreachable(message)) => Err(anyhow::anyhow!(
            "Graph cannot be reached, nothing more was sent: {message}; `b2b-convert resend {}` continues this pass",
            run.id
        )),
        PassEnd::Stopped(StopReason::LeaseLost) => Err(anyhow::anyhow!(
            "run {} was taken over by another process while this one was stalled; stopped",
            run.id
        )),
        PassEnd::Stopped(StopReason::Error(message)) => Err(anyhow::anyhow!(
            "{message}; `b2b-convert resend {}` continues this pass",
            run.id
        )),
        PassEnd::Interrupted => {
            say(format!(
                "interrupted: `b2b-convert resend {}` continues this pass",
                run.id
            ));
            Ok(ExitStatus::Interrupted)
        }
        PassEnd::Done if s.pending > 0 && (args.limit.is_some() || only.is_some()) => {
            say(format!(
                "{} left in this pass for a later `b2b-convert resend {}`",
                s.pending, run.id
            ));
            Ok(if s.failed > 0 {
                ExitStatus::NeedsAttention
            } else {
                ExitStatus::Success
            })
        }
        PassEnd::Done if !finished => {
            say(format!(
                "some outcomes are still unknown; `b2b-convert resend {}` reconciles them",
                run.id
            ));
            Ok(ExitStatus::NeedsAttention)
        }
        PassEnd::Done if s.failed > 0 => Ok(ExitStatus::NeedsAttention),
        PassEnd::Done => Ok(ExitStatus::Success),
    }
}

/// A run `resend` can work: live, and tracked at least once. Returns the last track's time.
fn resendable(queue: &Queue, run: &RunRecord) -> anyhow::Result<String> {
    if run.mode != RunMode::Live {
        return Err(ExitError::usage(format!(
            "run {} is a dry run: nobody was invited, there is nothing to resend",
            run.id
        ))
        .into());
    }
    let counts = queue.redemption_counts(run.id)?;
    counts.last_tracked_at.ok_or_else(|| {
        ExitError::usage(format!(
            "run {} has never been tracked: `b2b-convert track {}` first shows who is still pending",
            run.id, run.id
        ))
        .into()
    })
}

/// `--dry-run`: who this invocation would re-invite (the open pass's users left, else the
/// candidates a new pass would fix), with `--only` and `--limit` applied. Takes no lease, signs
/// in nowhere, writes nothing.
fn dry_run(db: &Path, args: &ResendArgs, only: Option<&OnlyList>) -> anyhow::Result<ExitStatus> {
    let queue = Queue::open_existing(db)?;
    let run = common::pick_run(&queue, Some(args.run_id))?;
    let last_tracked = resendable(&queue, &run)?;
    let users = match queue.open_resend_pass(run.id)? {
        Some(pass) => {
            let open = open_entries(&queue, pass.id)?;
            let all = pass_users(&queue, pass.id)?;
            choose(&all, only, None)?;
            all.into_iter()
                .filter(|u| open.contains(&u.item_id))
                .collect()
        }
        None => queue.resend_candidate_list(run.id, &cutoff(Utc::now(), args.older_than))?,
    };
    let chosen: BTreeSet<i64> = choose(&users, only, args.limit)?.into_iter().collect();
    let users: Vec<&ResendUser> = users
        .iter()
        .filter(|u| chosen.contains(&u.item_id))
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "runId": run.id,
                "dryRun": true,
                "lastTrackedAt": last_tracked,
                "wouldReinvite": users.len(),
                "users": users,
            })
        );
    } else {
        for u in &users {
            println!(
                "would re-invite {} ({}) at {}",
                u.user_principal_name.as_deref().unwrap_or("?"),
                u.user_id.as_deref().unwrap_or("?"),
                u.external_email.as_deref().unwrap_or("?")
            );
        }
        println!(
            "dry run: {} users of run {} would be re-invited (per the track of {last_tracked}); \
             nothing was sent",
            users.len(),
            run.id
        );
    }
    Ok(ExitStatus::Success)
}

/// Item ids of the pass's entries still to work (pending or in flight).
fn open_entries(queue: &Queue, pass_id: i64) -> anyhow::Result<BTreeSet<i64>> {
    let mut open = BTreeSet::new();
    for state in [ResendState::Pending, ResendState::InFlight] {
        open.extend(
            queue
                .resend_entries(pass_id, state)?
                .iter()
                .map(|e| e.item_id),
        );
    }
    Ok(open)
}

/// Every user of the pass, whatever their state in it.
fn pass_users(queue: &Queue, pass_id: i64) -> anyhow::Result<Vec<ResendUser>> {
    let mut users = Vec::new();
    for state in [
        ResendState::Pending,
        ResendState::InFlight,
        ResendState::Sent,
        ResendState::Failed,
        ResendState::Skipped,
    ] {
        for e in queue.resend_entries(pass_id, state)? {
            users.push(ResendUser {
                item_id: e.item_id,
                user_id: e.user_id,
                user_principal_name: e.user_principal_name,
                external_email: None,
            });
        }
    }
    users.sort_by_key(|u| u.item_id);
    Ok(users)
}

/// The item ids `--only` and `--limit` choose among `users`, in item order. A name that is
/// none of them is an error before anything is sent (exit 2).
fn choose(
    users: &[ResendUser],
    only: Option<&OnlyList>,
    limit: Option<u64>,
) -> anyhow::Result<Vec<i64>> {
    let named = |u: &ResendUser| {
        only.is_none_or(|o| o.names(u.user_id.as_deref(), u.user_principal_name.as_deref()))
    };
    if let Some(o) = only {
        let missing: Vec<String> = o
            .keys
            .iter()
            .filter(|k| {
                let single = OnlyList {
                    keys: vec![(*k).clone()],
                };
                !users
                    .iter()
                    .any(|u| single.names(u.user_id.as_deref(), u.user_principal_name.as_deref()))
            })
            .map(|k| k.value().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(ExitError::usage(format!(
                "--only names {} user(s) who are not pending acceptance in this run's resend \
                 (not converted, redeemed, or not tracked as pending): {}",
                missing.len(),
                missing.join(", ")
            ))
            .into());
        }
    }
    let cap = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    Ok(users
        .iter()
        .filter(|u| named(u))
        .take(cap)
        .map(|u| u.item_id)
        .collect())
}

/// `--json`: one object on stdout with the figures the lines above give people.
fn print_json(
    args: &ResendArgs,
    run: &RunRecord,
    pass_id: Option<i64>,
    continued: bool,
    s: &ResendSummary,
    finished: bool,
) {
    if !args.json {
        return;
    }
    println!(
        "{}",
        serde_json::json!({
            "runId": run.id,
            "passId": pass_id,
            "continued": continued,
            "reinvited": s.sent,
            "failed": s.failed,
            "skipped": s.skipped,
            "left": s.pending + s.in_flight,
            "finished": finished,
        })
    );
}

fn confirm(run: &RunRecord, n: u64, days: u32, tracked: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    let mut err = std::io::stderr();
    writeln!(
        err,
        "About to RE-INVITE {n} users of run {} (tenant {}) still pending acceptance per the track \
         of {tracked} (last invited {days}+ days ago), with resetRedemption: their earlier \
         redeem links stop working. Invitation emails: {}.\nType `yes` to go on: ",
        run.id,
        run.tenant_id.as_deref().unwrap_or("(from token)"),
        if run.options.silent {
            "not sent (--silent)"
        } else {
            "sent"
        },
    )?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}
