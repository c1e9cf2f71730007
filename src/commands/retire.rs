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

use std::path::Path;
use std::sync::Arc;

use super::common;
use crate::cli::RetireArgs;
use crate::exit::ExitStatus;
use crate::graph::GraphClient;
use crate::item::{RunMode, RunRecord};
use crate::queue::pass::{EntryState as _, PassUser};
use crate::queue::{RetireEntry, RetireState, RetireSummary, SkipKind};
use crate::source::only::OnlyList;
use crate::workers::executor::UsersById;
use crate::workers::retire::{skip_reason, Privileges, RetireOps};

/// Users named on screen per kind; the rest are in `--json`, the reports and `scripts`.
const LISTED: usize = 20;

const RETIRE: common::PassCommand = common::PassCommand {
    name: "retire",
    label: "retiring",
    done: "retired",
    nobody: "nobody to retire",
    who: WHO,
};

/// Who `--only` may name, in its error: the users a retire pass takes.
const WHO: &str = "not converted users of this run left to retire";

pub async fn retire(db: &Path, args: RetireArgs) -> anyhow::Result<ExitStatus> {
    let only = common::read_only_list(args.only.as_deref())?;
    if args.dry_run {
        return dry_run(db, &args, only.as_ref()).await;
    }
    let (queue, lease, run) = common::lease_run(db, Some(args.run_id))?;
    live_only(&run)?;
    common::require_consent_possible(RunMode::Live, args.yes)?;
    let say = |line: String| common::say(args.json, line);

    let graph = common::sign_in(&args.sign_in, &queue, &run, RunMode::Live).await?;
    let findings = super::preflight::require_retire_ready(&graph).await?;
    let privileges = Arc::new(privileges(&graph, &findings).await);

    let flags = common::PassFlags::new(&RETIRE, only.as_ref(), args.limit, args.yes, args.json);
    // The run's open pass (`true`: continued), else a new one over the candidates this
    // invocation chose, once the operator confirmed; none when there is nobody to retire.
    let opened = flags.open_pass(
        queue.open_retire_pass(run.id)?,
        || queue.retire_candidates(run.id),
        || format!("run {} has no converted user left to retire", run.id),
        |n| confirm(&run, n),
        || queue.create_retire_pass(run.id),
    )?;
    let Some((pass, continued)) = opened else {
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
    };
    let pass_run = flags.pass_run::<RetireState>(
        &queue,
        &lease,
        &run,
        (pass.id, &pass.started_at),
        continued.then_some(|| {
            let s = queue.retire_summary(pass.id)?;
            Ok((s.retired, s.pending + s.in_flight))
        }),
        |n| confirm(&run, n),
    )?;
    let end = pass_run
        .work(graph, |cx| RetireOps {
            cx,
            pass_id: pass.id,
            max_attempts: run.options.max_attempts,
            privileges,
        })
        .await?;
    let s = queue.retire_summary(pass.id)?;
    let finished = queue.finish_pass::<RetireState>(pass.id)?;
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
    common::pass_exit(end, run.id, &again, say, || {
        if s.not_done() > 0 {
            ExitStatus::NeedsAttention
        } else {
            ExitStatus::Success
        }
    })
}

/// A run `retire` can work: live.
fn live_only(run: &RunRecord) -> anyhow::Result<()> {
    common::require_live(run, "nobody was converted, there is nothing to retire")
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
    let (queue, run) = common::read_run(db, args.run_id)?;
    live_only(&run)?;
    let candidates: Vec<PassUser> = match queue.open_retire_pass(run.id)? {
        Some(pass) => queue
            .pass_users::<RetireState>(pass.id)?
            .into_iter()
            .filter(|(_, state)| state.is_open())
            .map(|(user, _)| user)
            .collect(),
        None => queue.retire_candidates(run.id)?,
    };
    let chosen = common::chosen(&candidates, only, args.limit, WHO)?;
    let graph = common::sign_in(&args.sign_in, &queue, &run, RunMode::DryRun).await?;
    let findings = super::preflight::retire_findings_of(&graph).await;
    let privileges = privileges(&graph, &findings).await;
    let ids: Vec<String> = chosen.iter().filter_map(|c| c.user_id.clone()).collect();
    let users = UsersById::read(&graph, &ids).await?;
    let mut would = Vec::new();
    let mut not = Vec::new();
    for c in &chosen {
        let user = c.user_id.as_deref().and_then(|id| users.get(id));
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

/// The users of the pass skipped for `kind`, by UPN (or object id).
fn names(entries: &[RetireEntry], kind: SkipKind) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.state == RetireState::Skipped && e.skip_kind == Some(kind))
        .map(|e| {
            e.user
                .user_principal_name
                .clone()
                .or_else(|| e.user.user_id.clone())
                .unwrap_or_else(|| format!("item {}", e.user.item_id))
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
                e.user.user_principal_name.as_deref().unwrap_or("?"),
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
    common::print_pass_json(args.json, run.id, pass_id, continued, finished, || {
        serde_json::json!({
            "retired": s.retired,
            "awaitingRedemption": s.unredeemed,
            "synced": s.synced,
            "syncedUsers": names(entries, SkipKind::Synced),
            "privileged": s.privileged,
            "privilegedUsers": names(entries, SkipKind::Privileged),
            "failed": s.failed,
            "gone": s.gone,
            "left": s.pending + s.in_flight,
        })
    });
}

fn confirm(run: &RunRecord, n: u64) -> anyhow::Result<bool> {
    common::confirm_pass(&format!(
        "About to RETIRE the internal credentials of up to {n} converted users of run {} (tenant {}): \
         each one who has redeemed gets a random password nobody knows and its sign-in sessions \
         revoked; their internal password stops working for good. Synced and unredeemed users are \
         not written.",
        run.id,
        run.tenant
            .as_ref()
            .map(|t| t.to_string())
            .or_else(|| run.tenant_id.clone())
            .unwrap_or_else(|| "(from token)".into()),
    ))
}
