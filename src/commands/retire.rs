//! `retire`: after redemption, close the old door. Each converted cloud-only user who redeemed
//! (re-read in bulk when the pass reaches them, never taken from an old `track`) gets a random
//! internal password nobody knows and its sign-in sessions revoked: two checkpointed steps on
//! the one executor (`workers::retire` declares them and their re-reads). Synced users are
//! listed for `scripts`, users not yet redeemed are counted ("redeem first"), and admin-role
//! holders are reported as needing Privileged Authentication Administrator.
//!
//! Under the run's lease, the tenant check first, then the permission check of
//! `preflight --retire` (exit 4 with the checklist before any write). A pass is recorded in the
//! database with its users fixed when it starts; an interrupted pass is continued by the next
//! `retire`, never started over. Exit 3 when users were left not done.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::common;
use crate::cli::RetireArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::graph::{Credentials, GraphClient};
use crate::item::{RunMode, RunRecord};
use crate::model::User;
use crate::progress::Progress;
use crate::queue::{Queue, RetireCandidate, RetireEntry, RetireState, RetireSummary, SkipKind};
use crate::source::only::OnlyList;
use crate::workers::planner::StopReason;
use crate::workers::resend::PassEnd;
use crate::workers::retire::{skip_reason, Privileges, RetireOps};

/// Users named on screen per kind; the rest are in `--json`, the reports and `scripts`.
const LISTED: usize = 20;

pub async fn retire(db: &Path, args: RetireArgs) -> anyhow::Result<ExitStatus> {
    let only = match &args.only {
        Some(path) => Some(OnlyList::read(path).map_err(|e| ExitError::usage(e.to_string()))?),
        None => None,
    };
    if args.dry_run {
        return dry_run(db, &args, only.as_ref()).await;
    }
    let (queue, lease, run) = common::lease_run(db, Some(args.run_id))?;
    live_only(&run)?;
    common::require_consent_possible(RunMode::Live, args.yes)?;
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };

    let graph = common::connect_to_run(
        &common::endpoints_for(&args.endpoints, &run),
        Credentials::resolve(args.auth)?,
        &queue,
        &run,
        RunMode::Live,
    )
    .await?;
    let findings = super::preflight::require_retire_ready(&graph).await?;
    let privileges = Arc::new(privileges(&graph, &findings).await);

    let (pass, continued) = match queue.open_retire_pass(run.id)? {
        Some(pass) => (pass, true),
        None => {
            let candidates = queue.retire_candidates(run.id)?;
            let chosen = choose(&candidates, only.as_ref(), args.limit)?;
            if chosen.is_empty() {
                say(format!(
                    "nobody to retire: run {} has no converted user left to retire",
                    run.id
                ));
                print_json(
                    &args,
                    &run,
                    None,
                    false,
                    &[],
                    &RetireSummary::default(),
                    true,
                );
                return Ok(ExitStatus::Success);
            }
            if !args.yes && !confirm(&run, chosen.len() as u64)? {
                eprintln!("declined: nothing was sent");
                return Ok(ExitStatus::Fatal);
            }
            match queue.create_retire_pass(run.id)? {
                Some(pass) => (pass, false),
                None => {
                    say("nobody to retire".into());
                    print_json(
                        &args,
                        &run,
                        None,
                        false,
                        &[],
                        &RetireSummary::default(),
                        true,
                    );
                    return Ok(ExitStatus::Success);
                }
            }
        }
    };
    let all = queue.all_retire_entries(pass.id)?;
    let entries_as_candidates: Vec<RetireCandidate> = all
        .iter()
        .map(|e| RetireCandidate {
            item_id: e.item_id,
            user_id: e.user_id.clone(),
            user_principal_name: e.user_principal_name.clone(),
        })
        .collect();
    let selected: Option<BTreeSet<i64>> = match &only {
        Some(o) => Some(
            choose(&entries_as_candidates, Some(o), None)?
                .into_iter()
                .collect(),
        ),
        None => None,
    };
    let open = all
        .iter()
        .filter(|e| matches!(e.state, RetireState::Pending | RetireState::InFlight))
        .filter(|e| selected.as_ref().is_none_or(|s| s.contains(&e.item_id)))
        .count() as u64;
    let this_time = args.limit.map_or(open, |l| l.min(open));
    if continued {
        let s = queue.retire_summary(pass.id)?;
        say(format!(
            "continuing retire pass {} of run {} (started {}): {} retired, {} left",
            pass.id,
            run.id,
            pass.started_at,
            s.retired,
            s.pending + s.in_flight
        ));
        if !args.yes && this_time > 0 && !confirm(&run, this_time)? {
            eprintln!("declined: nothing was sent");
            return Ok(ExitStatus::Fatal);
        }
    }

    let watch = common::StopWatch::start(&lease, "`retire` continues this pass".into())?;
    // The bar counts what this invocation will work, never the pass's total (SPEC: `--limit`).
    let progress = Arc::new(Progress::new("retiring", this_time));
    let ops = Arc::new(RetireOps {
        queue: queue.clone(),
        graph: graph.with_gate(common::lease_gate(&lease)),
        pass_id: pass.id,
        progress: progress.clone(),
        max_attempts: run.options.max_attempts,
    });
    let outcome = crate::workers::retire::work(
        ops,
        privileges,
        run.options.concurrency,
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
    let s = queue.retire_summary(pass.id)?;
    let finished = queue.finish_retire_pass(pass.id)?;
    let entries = queue.all_retire_entries(pass.id)?;
    if !args.json {
        print_summary(&run, pass.id, &s, &entries);
    }
    print_json(
        &args,
        &run,
        Some(pass.id),
        continued,
        &entries,
        &s,
        finished,
    );
    let again = format!("`b2b-convert retire {}` continues this pass", run.id);
    match outcome {
        PassEnd::Stopped(StopReason::TenantRefused(message)) => {
            eprintln!("error: the tenant refused to go on: {message}");
            say(format!("stopped: nothing more was sent; {again}"));
            Ok(ExitStatus::TenantRefused)
        }
        PassEnd::Stopped(StopReason::Unreachable(message)) => Err(anyhow::anyhow!(
            "Graph cannot be reached, nothing more was sent: {message}; {again}"
        )),
        PassEnd::Stopped(StopReason::LeaseLost) => Err(anyhow::anyhow!(
            "run {} was taken over by another process while this one was stalled; stopped",
            run.id
        )),
        PassEnd::Stopped(StopReason::Error(message)) => Err(anyhow::anyhow!("{message}; {again}")),
        PassEnd::Interrupted => {
            say(format!("interrupted: {again}"));
            Ok(ExitStatus::Interrupted)
        }
        PassEnd::Done if s.not_done() > 0 => Ok(ExitStatus::NeedsAttention),
        PassEnd::Done => Ok(ExitStatus::Success),
    }
}

/// A run `retire` can work: live.
fn live_only(run: &RunRecord) -> anyhow::Result<()> {
    if run.mode != RunMode::Live {
        return Err(ExitError::usage(format!(
            "run {} is a dry run: nobody was converted, there is nothing to retire",
            run.id
        ))
        .into());
    }
    Ok(())
}

/// Who holds an admin role (one request), and whether the caller may reset their passwords too.
/// When the role list cannot be read, the pass goes on and Graph's 403 for such a target
/// reports it instead.
async fn privileges(graph: &GraphClient, findings: &[super::preflight::Finding]) -> Privileges {
    let admins_allowed = findings
        .iter()
        .any(|f| f.check == "password reset role" && f.status == "ok");
    let holders = match graph.directory_role_holders().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read who holds directory roles; Graph's refusals will name them");
            Default::default()
        }
    };
    Privileges {
        holders,
        admins_allowed,
    }
}

/// `--dry-run`: re-reads the users this invocation would take (the open pass's users left,
/// else the candidates a new pass would fix, with `--only` and `--limit`) and says what would
/// happen to each. Takes no lease and writes nothing.
async fn dry_run(
    db: &Path,
    args: &RetireArgs,
    only: Option<&OnlyList>,
) -> anyhow::Result<ExitStatus> {
    let queue = Arc::new(Queue::open_existing(db)?);
    let run = common::pick_run(&queue, Some(args.run_id))?;
    live_only(&run)?;
    let candidates: Vec<RetireCandidate> = match queue.open_retire_pass(run.id)? {
        Some(pass) => queue
            .all_retire_entries(pass.id)?
            .into_iter()
            .filter(|e| matches!(e.state, RetireState::Pending | RetireState::InFlight))
            .map(|e| RetireCandidate {
                item_id: e.item_id,
                user_id: e.user_id,
                user_principal_name: e.user_principal_name,
            })
            .collect(),
        None => queue.retire_candidates(run.id)?,
    };
    let chosen: BTreeSet<i64> = choose(&candidates, only, args.limit)?.into_iter().collect();
    let chosen: Vec<&RetireCandidate> = candidates
        .iter()
        .filter(|c| chosen.contains(&c.item_id))
        .collect();
    let graph = common::connect_to_run(
        &common::endpoints_for(&args.endpoints, &run),
        Credentials::resolve(args.auth)?,
        &queue,
        &run,
        RunMode::DryRun,
    )
    .await?;
    let findings = super::preflight::retire_findings_of(&graph).await;
    let privileges = privileges(&graph, &findings).await;
    let ids: Vec<String> = chosen.iter().filter_map(|c| c.user_id.clone()).collect();
    let users: std::collections::HashMap<String, User> = graph
        .users_by_ids(&ids)
        .await?
        .into_iter()
        .map(|u| (u.id.to_lowercase(), u))
        .collect();
    let mut would = Vec::new();
    let mut not = Vec::new();
    for c in &chosen {
        let user = c
            .user_id
            .as_deref()
            .and_then(|id| users.get(&id.to_lowercase()));
        let name = c.user_principal_name.as_deref().unwrap_or("?");
        match skip_reason(user, &privileges) {
            None => would.push(name.to_string()),
            Some((kind, why)) => not.push((kind, name.to_string(), why)),
        }
    }
    let missing: Vec<&super::preflight::Finding> =
        findings.iter().filter(|f| f.status == "missing").collect();
    if args.json {
        let by_kind = |k: SkipKind| not.iter().filter(|(kind, ..)| *kind == k).count();
        println!(
            "{}",
            serde_json::json!({
                "runId": run.id,
                "dryRun": true,
                "wouldRetire": would.len(),
                "users": would,
                "awaitingRedemption": by_kind(SkipKind::Unredeemed),
                "synced": by_kind(SkipKind::Synced),
                "privileged": by_kind(SkipKind::Privileged),
                "gone": by_kind(SkipKind::Gone),
                "missingPermissions": missing.iter().map(|f| &f.check).collect::<Vec<_>>(),
            })
        );
    } else {
        for name in &would {
            println!("would retire {name}: random password, then sessions revoked");
        }
        for (kind, name, why) in &not {
            println!("would not write {name} ({}): {why}", kind.as_str());
        }
        for f in &missing {
            println!("not ready: {}: {}", f.check, f.detail);
        }
        println!(
            "dry run: {} users of run {} would be retired, {} not written; nothing was sent",
            would.len(),
            run.id,
            not.len()
        );
    }
    Ok(ExitStatus::Success)
}

/// The item ids `--only` and `--limit` choose among `users`, in item order. A name that is
/// none of them is an error before anything is sent (exit 2).
fn choose(
    users: &[RetireCandidate],
    only: Option<&OnlyList>,
    limit: Option<u64>,
) -> anyhow::Result<Vec<i64>> {
    let named = |o: &OnlyList, u: &RetireCandidate| {
        o.names(u.user_id.as_deref(), u.user_principal_name.as_deref())
    };
    if let Some(o) = only {
        let missing: Vec<String> = o
            .keys
            .iter()
            .filter(|k| {
                let single = OnlyList {
                    keys: vec![(*k).clone()],
                };
                !users.iter().any(|u| named(&single, u))
            })
            .map(|k| k.value().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(ExitError::usage(format!(
                "--only names {} user(s) who are not converted users of this run left to retire: {}",
                missing.len(),
                missing.join(", ")
            ))
            .into());
        }
    }
    let cap = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    Ok(users
        .iter()
        .filter(|u| only.is_none_or(|o| named(o, u)))
        .take(cap)
        .map(|u| u.item_id)
        .collect())
}

/// The users of the pass skipped for `kind`, by UPN (or object id).
fn names(entries: &[RetireEntry], kind: SkipKind) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.state == RetireState::Skipped && e.skip_kind == Some(kind))
        .map(|e| {
            e.user_principal_name
                .clone()
                .or_else(|| e.user_id.clone())
                .unwrap_or_else(|| format!("item {}", e.item_id))
        })
        .collect()
}

fn print_summary(run: &RunRecord, pass_id: i64, s: &RetireSummary, entries: &[RetireEntry]) {
    println!(
        "retire pass {pass_id} of run {}: {} retired (random password, sessions revoked), {} not redeemed yet (redeem first), {} synced (on-premises), {} holding an admin role, {} failed, {} gone, {} left",
        run.id,
        s.retired,
        s.unredeemed,
        s.synced,
        s.privileged,
        s.failed,
        s.gone,
        s.pending + s.in_flight
    );
    let list = |title: String, names: Vec<String>| {
        if names.is_empty() {
            return;
        }
        println!("{title}:");
        for n in names.iter().take(LISTED) {
            println!("  {n}");
        }
        if names.len() > LISTED {
            println!(
                "  … and {} more (`--json` lists them all)",
                names.len() - LISTED
            );
        }
    };
    list(
        format!(
            "synced users: Graph cannot write their on-premises password; `b2b-convert scripts {} --out DIR` writes ad-retire-passwords.ps1 for them",
            run.id
        ),
        names(entries, SkipKind::Synced),
    );
    list(
        "holding an admin role: their password needs Privileged Authentication Administrator (assign it, then run `retire` again)".into(),
        names(entries, SkipKind::Privileged),
    );
    let failed: Vec<String> = entries
        .iter()
        .filter(|e| e.state == RetireState::Failed)
        .map(|e| {
            format!(
                "{}: {} {}",
                e.user_principal_name.as_deref().unwrap_or("?"),
                e.error_code.as_deref().unwrap_or(""),
                e.error_message.as_deref().unwrap_or("")
            )
        })
        .collect();
    list("failed".into(), failed);
}

/// `--json`: one object on stdout with the figures the lines above give people.
fn print_json(
    args: &RetireArgs,
    run: &RunRecord,
    pass_id: Option<i64>,
    continued: bool,
    entries: &[RetireEntry],
    s: &RetireSummary,
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
            "retired": s.retired,
            "awaitingRedemption": s.unredeemed,
            "synced": s.synced,
            "syncedUsers": names(entries, SkipKind::Synced),
            "privileged": s.privileged,
            "privilegedUsers": names(entries, SkipKind::Privileged),
            "failed": s.failed,
            "gone": s.gone,
            "left": s.pending + s.in_flight,
            "finished": finished,
        })
    );
}

fn confirm(run: &RunRecord, n: u64) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    let mut err = std::io::stderr();
    writeln!(
        err,
        "About to RETIRE the internal credentials of up to {n} converted users of run {} (tenant {}): \
         each one who has redeemed gets a random password nobody knows and its sign-in sessions \
         revoked; their internal password stops working for good. Synced and unredeemed users are \
         not written.\nType `yes` to go on: ",
        run.id,
        run.tenant
            .as_ref()
            .map(|t| t.to_string())
            .or_else(|| run.tenant_id.clone())
            .unwrap_or_else(|| "(from token)".into()),
    )?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}
