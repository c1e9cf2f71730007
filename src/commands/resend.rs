//! `resend`: re-invite converted users still `PendingAcceptance` (per the last `track`) with
//! `resetRedemption: true`, `invitedUser.id` and the run's message options.
//!
//! A pass is recorded in the database with its users fixed when it starts; each is re-invited
//! once per pass by the one executor (`workers::resend` declares the step and its re-read):
//! checkpoint `in_flight` before the request can leave, and on an unknown outcome (lost answer,
//! 5xx, a process killed mid-request) re-read the user and let Graph's
//! `externalUserStateChangeDateTime` decide before anything is sent again. An interrupted pass
//! is continued by the next `resend`, never started over.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;

use super::common;
use crate::cli::ResendArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::graph::Credentials;
use crate::item::{RunMode, RunRecord};
use crate::progress::Progress;
use crate::workers::planner::StopReason;
use crate::workers::resend::{cutoff, PassEnd, ResendOps};

pub async fn resend(db: &Path, args: ResendArgs) -> anyhow::Result<ExitStatus> {
    // One process at a time works a run: a resend pass holds the run's lease like run/resume do,
    // taken before the pass is read or created.
    let (queue, lease, run) = common::lease_run(db, Some(args.run_id))?;
    if run.mode != RunMode::Live {
        return Err(ExitError::usage(format!(
            "run {} is a dry run: nobody was invited, there is nothing to resend",
            run.id
        ))
        .into());
    }
    common::require_consent_possible(RunMode::Live, args.yes)?;
    let counts = queue.redemption_counts(run.id)?;
    let Some(last_tracked) = counts.last_tracked_at.clone() else {
        return Err(ExitError::usage(format!(
            "run {} has never been tracked: `b2b-convert track {}` first shows who is still pending",
            run.id, run.id
        ))
        .into());
    };

    let (pass, continued) = match queue.open_resend_pass(run.id)? {
        Some(pass) => (pass, true),
        None => {
            let cut = cutoff(Utc::now(), args.older_than);
            let n = queue.resend_candidates(run.id, &cut)?;
            if n == 0 {
                println!(
                    "nobody to re-invite: no converted user of run {} is pending acceptance \
                     (older than {} days) per the track of {last_tracked}",
                    run.id, args.older_than
                );
                return Ok(ExitStatus::Success);
            }
            if !args.yes && !confirm(&run, n, args.older_than, &last_tracked)? {
                println!("not confirmed: nothing sent");
                return Ok(ExitStatus::Interrupted);
            }
            match queue.create_resend_pass(run.id, args.older_than, &cut)? {
                Some(pass) => (pass, false),
                None => {
                    println!("nobody to re-invite");
                    return Ok(ExitStatus::Success);
                }
            }
        }
    };
    if continued {
        let s = queue.resend_summary(pass.id)?;
        println!(
            "continuing resend pass {} of run {} (started {}): {} sent, {} left",
            pass.id,
            run.id,
            pass.started_at,
            s.sent,
            s.pending + s.in_flight
        );
        if !args.yes && s.pending + s.in_flight > 0 {
            let left = s.pending + s.in_flight;
            if !confirm(&run, left, pass.older_than_days, &last_tracked)? {
                println!("not confirmed: nothing sent");
                return Ok(ExitStatus::Interrupted);
            }
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

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let lost = lease.lost_flag();
    let ctrl_c = tokio::spawn(async move {
        let lease_lost = async {
            while !lost.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            signal = tokio::signal::ctrl_c() => if signal.is_ok() {
                crate::progress::suspend(|| {
                    eprintln!("\nstopping after the requests on the wire; `resend` continues this pass")
                });
            },
            () = lease_lost => {}
        }
        let _ = stop_tx.send(true);
    });
    let before = queue.resend_summary(pass.id)?;
    let progress = Arc::new(Progress::new("re-inviting", before.total()));
    progress.set_position(before.total() - before.pending - before.in_flight);
    let ops = Arc::new(ResendOps {
        queue: queue.clone(),
        graph: graph.with_gate(common::lease_gate(&lease)),
        pass_id: pass.id,
        progress: progress.clone(),
    });
    let outcome = crate::workers::resend::work(ops, Arc::new(run.options.clone()), stop, None).await;
    ctrl_c.abort();
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
    println!(
        "resend pass {} of run {}: {} re-invited, {} failed, {} skipped (redeemed meanwhile or gone), {} left",
        pass.id,
        run.id,
        s.sent,
        s.failed,
        s.skipped,
        s.pending + s.in_flight
    );
    match outcome {
        PassEnd::Stopped(StopReason::TenantRefused(message)) => {
            eprintln!("error: the tenant refused to go on: {message}");
            println!(
                "stopped: nothing more was sent; `b2b-convert resend {}` continues this pass",
                run.id
            );
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
            println!(
                "interrupted: `b2b-convert resend {}` continues this pass",
                run.id
            );
            Ok(ExitStatus::Interrupted)
        }
        PassEnd::Done if !finished => {
            println!(
                "some outcomes are still unknown; `b2b-convert resend {}` reconciles them",
                run.id
            );
            Ok(ExitStatus::NeedsAttention)
        }
        PassEnd::Done if s.failed > 0 => Ok(ExitStatus::NeedsAttention),
        PassEnd::Done => Ok(ExitStatus::Success),
    }
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

