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

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;

use super::common;
use crate::cli::ResendArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::item::{RunMode, RunRecord};
use crate::queue::pass::{EntryCounts, EntryState as _, PassUser};
use crate::queue::track::ResendState;
use crate::queue::Queue;
use crate::source::only::OnlyList;
use crate::workers::resend::{cutoff, ResendOps};

const RESEND: common::PassCommand = common::PassCommand {
    name: "resend",
    label: "re-inviting",
    done: "sent",
    nobody: "nobody to re-invite",
    who: WHO,
};

/// Who `--only` may name, in its error: the users a resend takes.
const WHO: &str = "not pending acceptance in this run's resend (not converted, redeemed, or not \
     tracked as pending)";

pub async fn resend(db: &Path, args: ResendArgs) -> anyhow::Result<ExitStatus> {
    let only = common::read_only_list(args.only.as_deref())?;
    if args.dry_run {
        return dry_run(db, &args, only.as_ref());
    }
    // One process at a time works a run: a resend pass holds the run's lease like run/resume do,
    // taken before the pass is read or created.
    let (queue, lease, run) = common::lease_run(db, Some(args.run_id))?;
    let last_tracked = resendable(&queue, &run)?;
    common::require_consent_possible(RunMode::Live, args.yes)?;
    let say = |line: String| common::say(args.json, line);

    let flags = common::PassFlags::new(&RESEND, only.as_ref(), args.limit, args.yes, args.json);
    // The run's open pass (`true`: continued), else a new one over the candidates this
    // invocation chose, once the operator confirmed; none when there is nobody to re-invite.
    let cut = cutoff(Utc::now(), args.older_than);
    let opened = flags.open_pass(
        queue.open_resend_pass(run.id)?,
        || queue.resend_candidate_list(run.id, &cut),
        || {
            format!(
                "no converted user of run {} is pending acceptance (older than {} days) per the \
                 track of {last_tracked}",
                run.id, args.older_than
            )
        },
        |n| confirm(&run, n, args.older_than, &last_tracked),
        || queue.create_resend_pass(run.id, args.older_than, &cut),
    )?;
    let Some((pass, continued)) = opened else {
        print_json(&args, &run, None, false, &EntryCounts::default(), true);
        return Ok(ExitStatus::Success);
    };
    // The pass's own users decide what `--only` may name, and which entries are left to work.
    let pass_run = flags.pass_run::<ResendState>(
        &queue,
        &lease,
        &run,
        (pass.id, &pass.started_at),
        continued.then_some(|| queue.resend_summary(pass.id).map(|s| (s.done, s.open()))),
        |n| confirm(&run, n, pass.older_than_days, &last_tracked),
    )?;
    let graph = common::sign_in(&args.sign_in, &queue, &run, RunMode::Live).await?;
    let end = pass_run
        .work(graph, |cx| ResendOps {
            cx,
            pass_id: pass.id,
            options: Arc::new(run.options.clone()),
        })
        .await?;
    let s = queue.resend_summary(pass.id)?;
    let finished = queue.finish_pass::<ResendState>(pass.id)?;
    say(format!(
        "resend pass {} of run {}: {} re-invited, {} failed, {} skipped (redeemed meanwhile or gone), {} left",
        pass.id,
        run.id,
        s.done,
        s.failed,
        s.skipped,
        s.open()
    ));
    print_json(&args, &run, Some(pass.id), continued, &s, finished);
    let again = format!("`b2b-convert resend {}` continues this pass", run.id);
    common::pass_exit(end, run.id, &again, say, || {
        if s.pending > 0 && (args.limit.is_some() || only.is_some()) {
            say(format!(
                "{} left in this pass for a later `b2b-convert resend {}`",
                s.pending, run.id
            ));
            if s.failed > 0 {
                ExitStatus::NeedsAttention
            } else {
                ExitStatus::Success
            }
        } else if !finished {
            say(format!(
                "some outcomes are still unknown; `b2b-convert resend {}` reconciles them",
                run.id
            ));
            ExitStatus::NeedsAttention
        } else if s.failed > 0 {
            ExitStatus::NeedsAttention
        } else {
            ExitStatus::Success
        }
    })
}

/// A run `resend` can work: live, and tracked at least once. Returns the last track's time.
fn resendable(queue: &Queue, run: &RunRecord) -> anyhow::Result<String> {
    common::require_live(run, "nobody was invited, there is nothing to resend")?;
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
    let (queue, run) = common::read_run(db, args.run_id)?;
    let last_tracked = resendable(&queue, &run)?;
    let users = match queue.open_resend_pass(run.id)? {
        Some(pass) => {
            let all = queue.pass_users::<ResendState>(pass.id)?;
            let users: Vec<PassUser> = all.iter().map(|(user, _)| user.clone()).collect();
            common::choose(&users, only, None, WHO)?;
            all.into_iter()
                .filter(|(_, state)| state.is_open())
                .map(|(user, _)| user)
                .collect()
        }
        None => queue.resend_candidate_list(run.id, &cutoff(Utc::now(), args.older_than))?,
    };
    let users = common::chosen(&users, only, args.limit, WHO)?;
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

/// `--json`: one object on stdout with the figures the lines above give people.
fn print_json(
    args: &ResendArgs,
    run: &RunRecord,
    pass_id: Option<i64>,
    continued: bool,
    s: &EntryCounts,
    finished: bool,
) {
    common::print_pass_json(args.json, run.id, pass_id, continued, finished, || {
        serde_json::json!({
            "reinvited": s.done,
            "failed": s.failed,
            "skipped": s.skipped,
            "left": s.open(),
        })
    });
}

fn confirm(run: &RunRecord, n: u64, days: u32, tracked: &str) -> anyhow::Result<bool> {
    common::confirm_pass(&format!(
        "About to RE-INVITE {n} users of run {} (tenant {}) still pending acceptance per the track \
         of {tracked} (last invited {days}+ days ago), with resetRedemption: their earlier \
         redeem links stop working. Invitation emails: {}.",
        run.id,
        run.tenant_id.as_deref().unwrap_or("(from token)"),
        if run.options.silent {
            "not sent (--silent)"
        } else {
            "sent"
        },
    ))
}
