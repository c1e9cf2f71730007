//! `restore RUN_ID`: undo the tool's own follow-up writes from the snapshot — `userType` back
//! where `--set-guest` changed it, `mail` back where `--set-mail` changed it (the step records
//! say which were done). Each property is one checkpointed step of the one executor
//! (`workers::backout`), exactly once through a crash, reconciled by re-reading the user. A
//! user someone else changed since is left alone and reported. The invitation itself cannot be
//! undone here (`rollback` converts redeemed users back).
//!
//! The helpers both back-out commands share (who `--only` names, the confirmation, the
//! outcome and its exit status) live here too.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::common::{self, say};
use crate::cli::RestoreArgs;
use crate::exit::ExitStatus;
use crate::graph::GraphClient;
use crate::item::{ItemRecord, ItemState, RunMode, RunRecord};
use crate::queue::backout::{BackoutKind, BackoutState, NewBackout, PutBack};
use crate::queue::pass::{EntryCounts, EntryState as _};
use crate::queue::{Queue, RunLease};
use crate::source::only::OnlyList;
use crate::workers::backout::{user_type_to, BackoutOps, PasswordsFile};
use crate::workers::executor::{PassEnd, PassScope};

pub async fn restore(db: &Path, args: RestoreArgs) -> anyhow::Result<ExitStatus> {
    let only = common::read_only_list(args.only.as_deref())?;
    let (queue, lease, run) = common::open_run(db, args.run_id, args.dry_run)?;
    live_run(&run, "restore")?;
    let items = queue.items(run.id)?;
    let named = named_items(&items, only.as_ref())?;
    let wanted = restore_plan(&queue, &items, named.as_ref())?;
    let open: Vec<i64> = open_entries(&queue, run.id, BackoutKind::Restore, named.as_ref())?;
    let this_time = (wanted.len() + open.len()) as u64;
    let Some(lease) = lease else {
        for (u, item) in wanted.iter().filter_map(|u| {
            items
                .iter()
                .find(|i| i.id == u.item_id)
                .map(|item| (u, item))
        }) {
            let what = put_back_changes(
                &u.put_back,
                |to| format!("userType Guest → {to}"),
                |tool, before| format!("mail {tool} → {before}"),
            );
            if !args.json {
                println!("would restore {}: {}", name_of(item), what.join(", "));
            }
        }
        say(
            args.json,
            format!(
                "dry run: {} user(s) of run {} would be restored; nothing was sent",
                this_time, run.id
            ),
        );
        print_json(
            args.json,
            &run,
            BackoutKind::Restore,
            &queue,
            true,
            this_time,
        )?;
        return Ok(ExitStatus::Success);
    };
    if this_time == 0 {
        say(
            args.json,
            format!(
                "nothing to restore: no user of run {} has a mail or userType the tool set \
                 that is not restored already",
                run.id
            ),
        );
        print_json(args.json, &run, BackoutKind::Restore, &queue, false, 0)?;
        return Ok(ExitStatus::Success);
    }
    common::require_consent_possible(RunMode::Live, args.yes)?;
    if !args.yes
        && !confirm(
            &run,
            "RESTORE the mail and userType the tool set for",
            this_time,
        )?
    {
        return Err(common::declined());
    }
    let graph = common::sign_in(&args.sign_in, &queue, &run, RunMode::Live).await?;
    queue.add_backout(run.id, BackoutKind::Restore, &wanted)?;
    let back_out = BackOut {
        queue: &queue,
        lease: &lease,
        run: &run,
        kind: BackoutKind::Restore,
        users: this_time,
        only: named,
    };
    let end = back_out.work(graph, None).await?;
    finish(&queue, &run, BackoutKind::Restore, end, args.json)
}

/// A back-out works a live run's users only.
pub(super) fn live_run(run: &RunRecord, command: &str) -> anyhow::Result<()> {
    let nothing = format!("nothing was written to any user, there is nothing to {command}");
    common::require_live(run, &nothing)
}

/// The items `--only` names (`None`: every item). A name that matches no item of the run is a
/// usage error before anything is sent.
pub(super) fn named_items(
    items: &[ItemRecord],
    only: Option<&OnlyList>,
) -> anyhow::Result<Option<BTreeSet<i64>>> {
    let Some(only) = only else {
        return Ok(None);
    };
    let named = common::named_by(items, Some(only), "not in this run", |i| {
        (i.user_id.as_deref(), i.user_principal_name.as_deref())
    })?;
    Ok(Some(named.into_iter().map(|i| i.id).collect()))
}

/// The users whose mail or userType the tool set (per their step records) and who are not in
/// a restore yet, with the values to put back from the snapshot.
pub fn restore_plan(
    queue: &Queue,
    items: &[ItemRecord],
    named: Option<&BTreeSet<i64>>,
) -> anyhow::Result<Vec<NewBackout>> {
    let taken: BTreeSet<i64> = queue
        .backout_entries(
            items.first().map_or(0, |i| i.run_id),
            BackoutKind::Restore,
            None,
        )?
        .into_iter()
        .filter(|e| e.state != BackoutState::Skipped)
        .map(|e| e.user.item_id)
        .collect();
    let ids: Vec<i64> = items
        .iter()
        .filter(|i| named.is_none_or(|n| n.contains(&i.id)) && !taken.contains(&i.id))
        .map(|i| i.id)
        .collect();
    let steps = queue.steps_of(&ids)?;
    Ok(items
        .iter()
        .filter_map(|i| {
            let s = steps.get(&i.id)?;
            let (user_type, mail) = (s.guest_set, s.needs_mail && s.mail_set);
            (user_type || mail).then(|| NewBackout {
                item_id: i.id,
                put_back: PutBack {
                    needs_user_type: user_type,
                    user_type_to: user_type.then(|| user_type_to(i.snapshot.as_ref())),
                    needs_mail: mail,
                    mail_to: s.mail_from.clone(),
                    mail_tool: s.mail_to.clone(),
                },
            })
        })
        .collect())
}

/// What `put_back` changes, one line each: `user_type` of the userType put back, `mail` of the
/// address the tool wrote and the one from before (`(none)`: no address).
pub(super) fn put_back_changes(
    put_back: &PutBack,
    user_type: impl Fn(&str) -> String,
    mail: impl Fn(&str, &str) -> String,
) -> Vec<String> {
    let mut what = Vec::new();
    if put_back.needs_user_type {
        what.push(user_type(put_back.user_type()));
    }
    if put_back.needs_mail {
        what.push(mail(
            put_back.mail_tool.as_deref().unwrap_or("(none)"),
            put_back.mail_to.as_deref().unwrap_or("(none)"),
        ));
    }
    what
}

/// Entries of `kind` not finished yet (a back-out a crash interrupted), those `named` only.
pub(super) fn open_entries(
    queue: &Queue,
    run_id: i64,
    kind: BackoutKind,
    named: Option<&BTreeSet<i64>>,
) -> anyhow::Result<Vec<i64>> {
    Ok(queue
        .backout_entries(run_id, kind, None)?
        .into_iter()
        .filter(|e| e.state.is_open())
        .filter(|e| named.is_none_or(|n| n.contains(&e.user.item_id)))
        .map(|e| e.user.item_id)
        .collect())
}

pub(super) fn name_of(item: &ItemRecord) -> String {
    item.user_principal_name
        .clone()
        .or_else(|| item.user_id.clone())
        .unwrap_or_else(|| format!("item {}", item.id))
}

/// Asks before a back-out touches anyone, naming the tenant and the number of users.
pub(super) fn confirm(run: &RunRecord, what: &str, users: u64) -> anyhow::Result<bool> {
    let tenant = run
        .tenant
        .as_ref()
        .map_or_else(|| "(unknown tenant)".to_string(), ToString::to_string);
    common::confirm_pass(&format!(
        "About to {what} {users} users of tenant {tenant} (run {}).",
        run.id
    ))
}

/// A back-out this invocation works under the run's lease.
pub(super) struct BackOut<'a> {
    pub queue: &'a Arc<Queue>,
    pub lease: &'a RunLease,
    pub run: &'a RunRecord,
    pub kind: BackoutKind,
    /// How many users this invocation works (the progress bar's count).
    pub users: u64,
    /// `--only`: just the entries of these items.
    pub only: Option<BTreeSet<i64>>,
}

impl BackOut<'_> {
    /// Works the back-out (see [`common::PassRun::work`]); `passwords` takes the new passwords
    /// of the cloud users a rollback converts back.
    pub async fn work(
        self,
        graph: GraphClient,
        passwords: Option<PasswordsFile>,
    ) -> anyhow::Result<PassEnd> {
        let (run, kind) = (self.run, self.kind);
        let pass_run = common::PassRun {
            queue: self.queue,
            lease: self.lease,
            run,
            label: match kind {
                BackoutKind::Restore => "restoring",
                BackoutKind::Rollback => "converting back",
            },
            users: self.users,
            continues: format!("`{}` continues", kind.as_str()),
            scope: PassScope {
                concurrency: run.options.concurrency,
                limit: None,
                only: self.only,
            },
        };
        pass_run
            .work(graph, |cx| BackoutOps {
                cx,
                run_id: run.id,
                kind,
                passwords,
                max_attempts: run.options.max_attempts,
            })
            .await
    }
}

/// The summary line, `--json`'s object, every user left alone or failed, and the exit status:
/// 3 when users were left not done.
pub(super) fn finish(
    queue: &Queue,
    run: &RunRecord,
    kind: BackoutKind,
    end: PassEnd,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let c = queue.backout_counts(run.id, kind)?;
    let command = kind.as_str();
    if !json {
        for e in queue.backout_entries(run.id, kind, None)? {
            let who = e
                .user
                .user_principal_name
                .clone()
                .or(e.user.user_id.clone())
                .unwrap_or_default();
            match e.state {
                BackoutState::Skipped => {
                    println!("left alone {who}: {}", e.detail.unwrap_or_default());
                }
                BackoutState::Failed => println!(
                    "failed {who}: {} {}",
                    e.error_code.unwrap_or_default(),
                    e.error_message.unwrap_or_default()
                ),
                _ => {}
            }
        }
        println!(
            "{command} of run {}: {} done, {} failed, {} left alone, {} left",
            run.id,
            c.done,
            c.failed,
            c.skipped,
            c.open()
        );
    }
    print_json(json, run, kind, queue, false, c.open())?;
    let resume = format!("`b2b-convert {command} {}` continues", run.id);
    common::pass_exit(
        end,
        run.id,
        &resume,
        |line| say(json, line),
        || {
            if not_done(&c) {
                ExitStatus::NeedsAttention
            } else {
                ExitStatus::Success
            }
        },
    )
}

fn not_done(c: &EntryCounts) -> bool {
    c.failed + c.skipped + c.open() > 0
}

fn print_json(
    json: bool,
    run: &RunRecord,
    kind: BackoutKind,
    queue: &Queue,
    dry_run: bool,
    left: u64,
) -> anyhow::Result<()> {
    if !json {
        return Ok(());
    }
    let c = queue.backout_counts(run.id, kind)?;
    println!(
        "{}",
        serde_json::json!({
            "runId": run.id,
            "command": kind.as_str(),
            "dryRun": dry_run,
            "done": c.done,
            "failed": c.failed,
            "leftAlone": c.skipped,
            "left": left,
        })
    );
    Ok(())
}

/// Whether an item is one a rollback may take: converted by this run.
pub(super) fn converted(item: &ItemRecord) -> bool {
    item.state == ItemState::Converted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_back_changes_lists_each_property_put_back_with_its_values() {
        let dry_run = |p: &PutBack| {
            put_back_changes(
                p,
                |to| format!("userType Guest → {to}"),
                |tool, before| format!("mail {tool} → {before}"),
            )
        };
        let both = PutBack::user_type_and_mail(None, Some("a@fabrikam.com"));
        assert_eq!(
            dry_run(&both),
            ["userType Guest → Member", "mail a@fabrikam.com → (none)"]
        );
        let mail_only = PutBack {
            needs_mail: true,
            mail_to: Some("b@contoso.com".into()),
            ..PutBack::default()
        };
        assert_eq!(dry_run(&mail_only), ["mail (none) → b@contoso.com"]);
        // No userType recorded: Graph's default.
        let user_type_only = PutBack {
            needs_user_type: true,
            ..PutBack::default()
        };
        assert_eq!(dry_run(&user_type_only), ["userType Guest → Member"]);
        assert!(dry_run(&PutBack::default()).is_empty());
    }
}
