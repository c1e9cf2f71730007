//! `rollback RUN_ID --only PATH`: convert named users whose invitation the partner redeemed
//! back to internal members, with Graph's beta `convertExternalToInternalMemberUser` (said
//! once on stderr: Microsoft does not support beta APIs in production).
//!
//! Cloud users keep the snapshot's UPN and get a new random password, written only to the
//! `--passwords-out` file (created 0600 with `create_new`; required when cloud users are named,
//! refused with exit 2 before anything is sent otherwise); synced users send no body. Each user
//! is re-read just before: only `externalUserState` `Accepted` is sent, the others are reported.
//! Exactly once per user through the one executor (`workers::backout` explains where the
//! password is written relative to the checkpoint, and why).

use std::path::Path;

use super::common::{self, say};
use super::restore::{
    confirm, converted, finish, live_run, name_of, named_items, open_entries, BackOut,
};
use crate::cli::RollbackArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::item::RunMode;
use crate::queue::backout::{BackoutKind, BackoutState, NewBackout};
use crate::workers::backout::{is_synced, PasswordsFile};
use crate::workers::executor::PassEnd;

/// Said once per invocation, on stderr and in the report.
pub const BETA_NOTICE: &str = "rollback uses a Microsoft Graph beta API \
     (convertExternalToInternalMemberUser), which Microsoft does not support in production";

pub async fn rollback(db: &Path, args: RollbackArgs) -> anyhow::Result<ExitStatus> {
    let only = common::read_only_list(Some(&args.only))?;
    eprintln!("note: {BETA_NOTICE}");
    let (queue, lease, run) = common::open_run(db, args.run_id, args.dry_run)?;
    live_run(&run, "roll back")?;
    let items = queue.items(run.id)?;
    let named = named_items(&items, only.as_ref())?.unwrap_or_default();
    let open = open_entries(&queue, run.id, BackoutKind::Rollback, Some(&named))?;
    let taken: std::collections::BTreeSet<i64> = queue
        .backout_entries(run.id, BackoutKind::Rollback, None)?
        .into_iter()
        .filter(|e| e.state != BackoutState::Skipped)
        .map(|e| e.user.item_id)
        .collect();
    let mut wanted = Vec::new();
    for item in items.iter().filter(|i| named.contains(&i.id)) {
        if !converted(item) {
            say(
                args.json,
                format!(
                    "not sent {}: not converted by this run ({})",
                    name_of(item),
                    item.state.as_str()
                ),
            );
        } else if !taken.contains(&item.id) {
            wanted.push(NewBackout {
                item_id: item.id,
                ..NewBackout::default()
            });
        }
    }
    let works = |id: i64| open.contains(&id) || wanted.iter().any(|w| w.item_id == id);
    let cloud = items
        .iter()
        .filter(|i| works(i.id) && !is_synced(i.snapshot.as_ref()))
        .count();
    let this_time = (open.len() + wanted.len()) as u64;
    let Some(lease) = lease else {
        for item in items.iter().filter(|i| works(i.id)) {
            let body = if is_synced(item.snapshot.as_ref()) {
                "synced: no body".to_string()
            } else {
                format!(
                    "cloud: keeps {} and gets a new password (to --passwords-out)",
                    item.snapshot
                        .as_ref()
                        .and_then(|u| u.user_principal_name.clone())
                        .unwrap_or_else(|| name_of(item))
                )
            };
            say(
                args.json,
                format!("would convert back {} if redeemed: {body}", name_of(item)),
            );
        }
        say(
            args.json,
            format!(
                "dry run: {this_time} user(s) of run {} would be converted back if redeemed \
                 (re-read just before); nothing was sent",
                run.id
            ),
        );
        return Ok(ExitStatus::Success);
    };
    if this_time == 0 {
        say(
            args.json,
            format!(
                "nothing to roll back: the users named are rolled back or not converted by run {}",
                run.id
            ),
        );
        return finish(
            &queue,
            &run,
            BackoutKind::Rollback,
            PassEnd::Done,
            args.json,
        );
    }
    if cloud > 0 && args.passwords_out.is_none() {
        return Err(ExitError::usage(format!(
            "{cloud} of the users named are cloud-only: their new passwords need \
             --passwords-out PATH (a new file, created 0600); nothing was sent"
        ))
        .into());
    }
    common::require_consent_possible(RunMode::Live, args.yes)?;
    if !args.yes && !confirm(&run, "CONVERT BACK to internal members", this_time)? {
        return Err(common::declined());
    }
    let graph = common::sign_in(&args.sign_in, &queue, &run, RunMode::Live).await?;
    // Created after the tenant check (a refused tenant leaves no file behind) and before any
    // request that writes.
    let passwords = match (&args.passwords_out, cloud) {
        (Some(path), n) if n > 0 => Some(PasswordsFile::create(path).map_err(|e| {
            ExitError::usage(format!(
                "--passwords-out {}: {e} (a new file is needed, never overwritten); nothing was \
                 sent",
                path.display()
            ))
        })?),
        _ => None,
    };
    queue.add_backout(run.id, BackoutKind::Rollback, &wanted)?;
    let file = passwords.as_ref().map(|p| p.path().display().to_string());
    let back_out = BackOut {
        queue: &queue,
        lease: &lease,
        run: &run,
        kind: BackoutKind::Rollback,
        users: this_time,
        only: Some(named),
    };
    let end = back_out.work(graph, passwords).await?;
    if let Some(file) = file {
        say(
            args.json,
            format!("new passwords of the cloud users converted back: {file}"),
        );
    }
    finish(&queue, &run, BackoutKind::Rollback, end, args.json)
}
