//! The back-out passes as the executor sees them (issue 20): `restore` puts the tool's own
//! follow-up writes back from the snapshot (userType, then mail, each a checkpointed PATCH);
//! `rollback` converts a redeemed user back to an internal member with Graph's beta action.
//!
//! Every step's re-read is the user's property itself: a restore step is done when the property
//! holds the snapshot's value, not done while it holds the tool's, and anything else means
//! someone changed the user since — the user is then left alone and reported, never overwritten.
//! A conversion back is done when the user no longer carries an external identity
//! (`externalUserState` empty, or `externalUserConvertedOn` set).
//!
//! Rollback passwords: a cloud user's new password is written (and synced to disk) to the
//! `--passwords-out` file *before* the entry is checkpointed in flight, so no request Graph can
//! accept carries a password that is not already on disk. The entry records which file holds
//! it (never the password). A crash after the write and before the request leaves only a line
//! for a password Graph never received: the next `rollback` (with a new file) sends a new one,
//! and the entry names the file whose line Graph holds.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde_json::json;
use tokio::sync::watch;

use crate::graph::{ConvertBack, GraphClient, GraphError, Password, ResponseMeta, Traced};
use crate::item::ItemRecord;
use crate::model::{ConversionUserDetails, User};
use crate::progress::Progress;
use crate::queue::backout::{BackoutEntry, BackoutKind, BackoutState};
use crate::queue::track::ACCEPTED;
use crate::queue::Queue;

use super::convert::db;
use super::executor::{self, reread_error, PassOps, Settled};
use super::planner::{Checkpoint, ItemPlan, Pass, Reread, Step};
use super::resend::PassEnd;

/// The userType `--set-guest` writes.
pub const TOOL_USER_TYPE: &str = "Guest";

/// Users read together before their back-out: one `$batch` of 20 × 15 ids.
const CHUNK: usize = 300;

/// Where one property stands against the snapshot and the tool's write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    /// It holds the snapshot's value: nothing (more) to put back.
    Restored,
    /// It still holds what the tool wrote: put it back.
    ToolsValue,
    /// Someone else changed it since: leave the user alone. The value seen, for the report.
    ChangedSince(String),
}

/// Compares a property with the snapshot's and the tool's values (case-insensitively: Graph
/// compares addresses and userType so). An absent value and an empty one are the same.
pub fn property(current: Option<&str>, snapshot: Option<&str>, tool: Option<&str>) -> Property {
    let norm = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_lowercase)
    };
    let (now, was, wrote) = (norm(current), norm(snapshot), norm(tool));
    if now == was {
        Property::Restored
    } else if now == wrote {
        Property::ToolsValue
    } else {
        Property::ChangedSince(current.unwrap_or("(none)").to_string())
    }
}

/// The userType a restore puts back: the snapshot's, Graph's default `Member` when it had none.
pub fn user_type_to(snapshot: Option<&User>) -> String {
    snapshot
        .and_then(|u| u.user_type.clone())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| "Member".to_string())
}

/// What the user as read now says about a restore step.
pub fn restore_view(entry: &BackoutEntry, user: Option<&User>, step: Step) -> Reread {
    let Some(user) = user else {
        return Reread::Moot {
            why: "the user no longer exists".into(),
        };
    };
    let (name, seen) = match step {
        Step::RestoreUserType => (
            "userType",
            property(
                user.user_type.as_deref(),
                entry.user_type_to.as_deref(),
                Some(TOOL_USER_TYPE),
            ),
        ),
        _ => (
            "mail",
            property(
                user.mail.as_deref(),
                entry.mail_to.as_deref(),
                entry.mail_tool.as_deref(),
            ),
        ),
    };
    match seen {
        Property::Restored => Reread::Done,
        Property::ToolsValue => Reread::NotDone,
        Property::ChangedSince(value) => Reread::Moot {
            why: format!("changed since by someone else: {name} is {value}"),
        },
    }
}

/// What the user as read now says about a conversion back.
pub fn rollback_view(user: Option<&User>) -> Reread {
    let Some(user) = user else {
        return Reread::Moot {
            why: "the user no longer exists".into(),
        };
    };
    let state = user
        .external_user_state
        .as_deref()
        .filter(|s| !s.trim().is_empty());
    if user.external_user_converted_on.is_some() || state.is_none() {
        Reread::Done
    } else if state.is_some_and(|s| s.eq_ignore_ascii_case(ACCEPTED)) {
        Reread::NotDone
    } else {
        Reread::Moot {
            why: format!(
                "not redeemed: externalUserState is {}",
                state.unwrap_or_default()
            ),
        }
    }
}

/// Whether a user is synced from on-premises (its conversion back sends no body).
pub fn is_synced(user: Option<&User>) -> bool {
    user.is_some_and(|u| u.on_premises_sync_enabled == Some(true))
}

/// The `--passwords-out` file: created 0600 with `create_new` (never overwritten), one CSV line
/// per password, each synced to disk before the request that carries it may leave.
pub struct PasswordsFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl PasswordsFile {
    pub fn create(path: &Path) -> std::io::Result<PasswordsFile> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(b"userPrincipalName,objectId,password,writtenAt\n")?;
        file.sync_all()?;
        Ok(PasswordsFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, upn: &str, id: &str, password: &Password) -> std::io::Result<()> {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut line = format!("{upn},{id},{},{at}\n", password.reveal()).into_bytes();
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let written = file.write_all(&line).and_then(|()| file.sync_data());
        line.fill(0);
        written
    }
}

/// How a user is converted back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum How {
    Restore,
    /// Cloud-only: keeps the snapshot's UPN.
    Cloud {
        upn: String,
    },
    Synced,
}

/// One user being backed out.
pub struct BackoutItem {
    pub entry: BackoutEntry,
    how: How,
    /// The password of this process's requests for a cloud user (one per process).
    password: Option<Password>,
    answer: Option<Traced<ConversionUserDetails>>,
}

impl BackoutItem {
    /// The item's back-out, planned with the attempts already made at its current step.
    pub fn new(
        entry: BackoutEntry,
        item: &ItemRecord,
        max_attempts: u32,
    ) -> (BackoutItem, ItemPlan) {
        let (how, checkpoint) = match entry.kind {
            BackoutKind::Restore => (
                How::Restore,
                Checkpoint::restore(
                    entry.needs_user_type,
                    entry.user_type_done,
                    entry.needs_mail,
                    entry.mail_done,
                ),
            ),
            BackoutKind::Rollback => {
                let snapshot = item.snapshot.as_ref();
                let how = match is_synced(snapshot) {
                    true => How::Synced,
                    false => How::Cloud {
                        upn: snapshot
                            .and_then(|u| u.user_principal_name.clone())
                            .or_else(|| item.user_principal_name.clone())
                            .unwrap_or_default(),
                    },
                };
                (how, Checkpoint::new(Pass::Rollback, Pass::Rollback.steps()))
            }
        };
        let plan = ItemPlan::new(checkpoint, entry.attempts, max_attempts);
        (
            BackoutItem {
                entry,
                how,
                password: None,
                answer: None,
            },
            plan,
        )
    }

    fn user_id(&self) -> &str {
        self.entry.user_id.as_deref().unwrap_or_default()
    }
}

/// What a back-out pass needs to carry out its steps.
pub struct BackoutOps {
    pub queue: Arc<Queue>,
    pub graph: GraphClient,
    pub kind: BackoutKind,
    pub progress: Arc<Progress>,
    /// `rollback` of cloud users: where their new passwords go.
    pub passwords: Option<PasswordsFile>,
    pub max_attempts: u32,
}

/// Works the run's back-out of `ops.kind`: entries a killed process left in flight are decided
/// first from a re-read (never sent blind), then the pending ones (those of `only` when given),
/// each chunk re-read in bulk just before it is worked so a user changed by someone else, or
/// not redeemed, is left alone; `concurrency` at a time through the run's shared limiter.
pub async fn work(
    ops: Arc<BackoutOps>,
    run_id: i64,
    concurrency: usize,
    stop: watch::Receiver<bool>,
    only: Option<BTreeSet<i64>>,
) -> anyhow::Result<PassEnd> {
    let kind = ops.kind;
    let in_flight = db(&ops.queue, move |q| {
        q.backout_entries(run_id, kind, Some(BackoutState::InFlight))
    })
    .await?;
    for entry in in_flight {
        // No step named: a restore left between its two steps (the first checkpointed done,
        // the second not yet in flight). Every in-flight checkpoint names its step.
        let step = entry.in_flight.as_deref().and_then(Step::parse);
        let has_user = entry.user_id.is_some();
        let (mut it, mut plan) = prepare(&ops, entry).await?;
        if let Settled::Stopped(reason) =
            executor::reconcile_item(&*ops, &mut it, &mut plan, step, has_user).await?
        {
            return Ok(PassEnd::Stopped(reason));
        }
    }

    let pass_stop = executor::PassStop::new(stop);
    let stopping = pass_stop.stopping();
    let mut pending = db(&ops.queue, move |q| {
        q.backout_entries(run_id, kind, Some(BackoutState::Pending))
    })
    .await?;
    if let Some(only) = &only {
        pending.retain(|e| only.contains(&e.item_id));
    }
    for chunk in pending.chunks(CHUNK) {
        if stopping() {
            break;
        }
        let chunk = match read_before(&ops, chunk.to_vec()).await? {
            Ok(left) => left,
            Err(e) => {
                return Ok(executor::chunk_read_stopped(
                    e,
                    "re-reading the users before backing them out",
                ))
            }
        };
        executor::work_chunk(
            &ops,
            chunk,
            concurrency,
            &pass_stop,
            |ops: Arc<BackoutOps>, entry| async move { prepare(&ops, entry).await.map(Some) },
            "back-out",
        )
        .await?;
    }
    Ok(pass_stop.end())
}

async fn prepare(ops: &BackoutOps, entry: BackoutEntry) -> anyhow::Result<(BackoutItem, ItemPlan)> {
    let item_id = entry.item_id;
    let item = db(&ops.queue, move |q| q.item(item_id))
        .await?
        .context("a back-out names a vanished item")?;
    Ok(BackoutItem::new(entry, &item, ops.max_attempts))
}

/// Reads the chunk's users in bulk just before their back-out. A restore step whose property
/// already holds the snapshot's value is checkpointed done without a request; a user changed
/// since by someone else, not redeemed, gone or without an object id is recorded left alone.
/// Returns the entries still to work, as now checkpointed.
async fn read_before(
    ops: &BackoutOps,
    chunk: Vec<BackoutEntry>,
) -> anyhow::Result<Result<Vec<BackoutEntry>, GraphError>> {
    let ids: Vec<String> = chunk.iter().filter_map(|e| e.user_id.clone()).collect();
    let found = match ops.graph.users_by_ids(&ids).await {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let now: HashMap<String, User> = found
        .into_iter()
        .map(|u| (u.id.to_lowercase(), u))
        .collect();
    let kind = ops.kind;
    let mut left = Vec::with_capacity(chunk.len());
    'entries: for mut entry in chunk {
        let Some(id) = entry.user_id.as_deref() else {
            skip(ops, &entry, "the item has no object id").await?;
            continue;
        };
        let user = now.get(&id.to_lowercase());
        match kind {
            BackoutKind::Rollback => match rollback_view(user) {
                Reread::NotDone => left.push(entry),
                Reread::Done => {
                    skip(
                        ops,
                        &entry,
                        "already an internal member (converted back elsewhere)",
                    )
                    .await?;
                }
                Reread::Moot { why } => skip(ops, &entry, &why).await?,
                _ => left.push(entry),
            },
            BackoutKind::Restore => {
                for (needed, done, step) in [
                    (
                        entry.needs_user_type,
                        entry.user_type_done,
                        Step::RestoreUserType,
                    ),
                    (entry.needs_mail, entry.mail_done, Step::RestoreMail),
                ] {
                    if !needed || done {
                        continue;
                    }
                    match restore_view(&entry, user, step) {
                        Reread::Moot { why } => {
                            skip(ops, &entry, &why).await?;
                            continue 'entries;
                        }
                        Reread::Done => {
                            let item_id = entry.item_id;
                            db(&ops.queue, move |q| {
                                q.backout_step_done(item_id, kind, step.as_str())
                            })
                            .await?;
                            match step {
                                Step::RestoreUserType => entry.user_type_done = true,
                                _ => entry.mail_done = true,
                            }
                        }
                        _ => {}
                    }
                }
                left.push(entry);
            }
        }
    }
    Ok(Ok(left))
}

async fn skip(ops: &BackoutOps, entry: &BackoutEntry, why: &str) -> anyhow::Result<()> {
    let (item_id, kind, why) = (entry.item_id, ops.kind, why.to_string());
    db(&ops.queue, move |q| q.backout_skipped(item_id, kind, &why)).await?;
    ops.progress.inc(1);
    Ok(())
}

impl PassOps for BackoutOps {
    type Item = BackoutItem;

    async fn checkpoint(&self, it: &mut BackoutItem, step: Step) -> anyhow::Result<()> {
        let mut file = None;
        if let How::Cloud { upn } = &it.how {
            if it.password.is_none() {
                let passwords = self
                    .passwords
                    .as_ref()
                    .context("a cloud user's rollback needs --passwords-out")?;
                let password = Password::generate()?;
                passwords
                    .write(upn, it.user_id(), &password)
                    .with_context(|| format!("writing {}", passwords.path().display()))?;
                it.password = Some(password);
            }
            file = self
                .passwords
                .as_ref()
                .map(|p| p.path().display().to_string());
        }
        let (item_id, kind) = (it.entry.item_id, self.kind);
        db(&self.queue, move |q| {
            q.backout_in_flight(item_id, kind, step.as_str(), file.as_deref())
        })
        .await
    }

    async fn send(&self, it: &mut BackoutItem, step: Step) -> Result<ResponseMeta, GraphError> {
        let id = it.user_id().to_string();
        match step {
            Step::RestoreUserType => {
                let to = it.entry.user_type_to.as_deref().unwrap_or("Member");
                let t = self
                    .graph
                    .patch_user(&id, &json!({ "userType": to }))
                    .await?;
                Ok(t.meta)
            }
            Step::RestoreMail => {
                let t = self
                    .graph
                    .patch_user(&id, &json!({ "mail": it.entry.mail_to }))
                    .await?;
                Ok(t.meta)
            }
            _ => {
                let how = match (&it.how, &it.password) {
                    (How::Cloud { upn }, Some(password)) => ConvertBack::Cloud {
                        user_principal_name: upn,
                        password,
                        mail: None,
                    },
                    _ => ConvertBack::Synced,
                };
                let answer = self.graph.convert_back(&id, &how).await?;
                let meta = answer.meta.clone();
                it.answer = Some(answer);
                Ok(meta)
            }
        }
    }

    async fn reread(&self, it: &BackoutItem, step: Step) -> Reread {
        let id = it.user_id();
        match self.graph.get_user(id).await {
            Ok(user) => match step {
                Step::ConvertBack => rollback_view(user.as_ref()),
                _ => restore_view(&it.entry, user.as_ref(), step),
            },
            Err(e) => reread_error(id, e),
        }
    }

    async fn charge(&self, it: &BackoutItem) -> anyhow::Result<()> {
        let (item_id, kind) = (it.entry.item_id, self.kind);
        db(&self.queue, move |q| q.backout_charge(item_id, kind)).await
    }

    async fn note_unknown(
        &self,
        it: &BackoutItem,
        code: &str,
        message: &str,
        _meta: Option<&ResponseMeta>,
    ) -> anyhow::Result<()> {
        let (item_id, kind) = (it.entry.item_id, self.kind);
        let (code, message) = (code.to_string(), message.to_string());
        db(&self.queue, move |q| {
            q.backout_note_error(item_id, kind, &code, &message)
        })
        .await
    }

    async fn step_done(&self, it: &BackoutItem, step: Step) -> anyhow::Result<()> {
        let (item_id, kind) = (it.entry.item_id, self.kind);
        db(&self.queue, move |q| {
            q.backout_step_done(item_id, kind, step.as_str())
        })
        .await
    }

    async fn record_done(
        &self,
        it: &mut BackoutItem,
        meta: Option<ResponseMeta>,
    ) -> anyhow::Result<()> {
        let (item_id, kind) = (it.entry.item_id, self.kind);
        let at = it
            .answer
            .take()
            .and_then(|a| a.value.converted_to_internal_user_date_time);
        db(&self.queue, move |q| {
            q.backout_done(
                item_id,
                kind,
                at.as_deref(),
                meta.as_ref().and_then(|m| m.request_id.as_deref()),
                meta.as_ref().map(|m| m.client_request_id.as_str()),
            )
        })
        .await?;
        self.progress.inc(1);
        Ok(())
    }

    async fn back_to_pending(&self, it: &BackoutItem) -> anyhow::Result<()> {
        let (item_id, kind) = (it.entry.item_id, self.kind);
        db(&self.queue, move |q| q.backout_to_pending(item_id, kind)).await
    }

    async fn record_failed(
        &self,
        it: &BackoutItem,
        code: &str,
        message: &str,
        meta: Option<ResponseMeta>,
    ) -> anyhow::Result<()> {
        let (item_id, kind) = (it.entry.item_id, self.kind);
        let (code, message) = (code.to_string(), message.to_string());
        db(&self.queue, move |q| {
            q.backout_failed(
                item_id,
                kind,
                &code,
                &message,
                meta.as_ref().and_then(|m| m.request_id.as_deref()),
            )
        })
        .await?;
        self.progress.inc(1);
        Ok(())
    }

    async fn record_skipped(&self, it: &BackoutItem, why: &str) -> anyhow::Result<()> {
        let (item_id, kind, why) = (it.entry.item_id, self.kind, why.to_string());
        db(&self.queue, move |q| q.backout_skipped(item_id, kind, &why)).await?;
        self.progress.inc(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(user_type: Option<&str>, mail: Option<&str>) -> User {
        User {
            id: "u1".into(),
            user_type: user_type.map(str::to_string),
            mail: mail.map(str::to_string),
            external_user_state: Some(ACCEPTED.into()),
            ..User::default()
        }
    }

    fn entry() -> BackoutEntry {
        BackoutEntry {
            item_id: 1,
            kind: BackoutKind::Restore,
            state: BackoutState::Pending,
            user_id: Some("u1".into()),
            user_principal_name: Some("a@contoso.com".into()),
            needs_user_type: true,
            user_type_to: Some("Member".into()),
            needs_mail: true,
            mail_to: None,
            mail_tool: Some("a@fabrikam.com".into()),
            in_flight: None,
            user_type_done: false,
            mail_done: false,
            passwords_file: None,
            converted_back_at: None,
            attempts: 0,
            detail: None,
            error_code: None,
            error_message: None,
            finished_at: None,
        }
    }

    #[test]
    fn a_property_is_restored_the_tools_or_someone_elses() {
        let rows = [
            (
                Some("Member"),
                Some("Member"),
                Some("Guest"),
                Property::Restored,
            ),
            (
                Some("guest"),
                Some("Member"),
                Some("Guest"),
                Property::ToolsValue,
            ),
            (None, None, Some("a@f.com"), Property::Restored),
            (Some(""), None, Some("a@f.com"), Property::Restored),
            (Some("A@F.com"), None, Some("a@f.com"), Property::ToolsValue),
            (
                Some("x@other.com"),
                Some("old@c.com"),
                Some("a@f.com"),
                Property::ChangedSince("x@other.com".into()),
            ),
            (
                None,
                Some("old@c.com"),
                Some("a@f.com"),
                Property::ChangedSince("(none)".into()),
            ),
        ];
        for (now, was, tool, want) in rows {
            assert_eq!(property(now, was, tool), want, "{now:?} {was:?} {tool:?}");
        }
    }

    #[test]
    fn restore_re_reads_say_done_not_done_or_leave_alone() {
        let e = entry();
        let u = user(Some("Guest"), Some("a@fabrikam.com"));
        assert_eq!(
            restore_view(&e, Some(&u), Step::RestoreUserType),
            Reread::NotDone
        );
        assert_eq!(
            restore_view(&e, Some(&u), Step::RestoreMail),
            Reread::NotDone
        );
        let back = user(Some("Member"), None);
        assert_eq!(
            restore_view(&e, Some(&back), Step::RestoreUserType),
            Reread::Done
        );
        assert_eq!(
            restore_view(&e, Some(&back), Step::RestoreMail),
            Reread::Done
        );
        let other = user(Some("Contractor"), Some("a@fabrikam.com"));
        assert_eq!(
            restore_view(&e, Some(&other), Step::RestoreUserType),
            Reread::Moot {
                why: "changed since by someone else: userType is Contractor".into()
            }
        );
        assert!(matches!(
            restore_view(&e, None, Step::RestoreMail),
            Reread::Moot { .. }
        ));
    }

    #[test]
    fn a_conversion_back_is_seen_by_the_external_identity_gone() {
        let redeemed = user(Some("Guest"), None);
        assert_eq!(rollback_view(Some(&redeemed)), Reread::NotDone);
        let back = User {
            external_user_state: None,
            external_user_converted_on: Some("2026-12-01T08:00:00Z".into()),
            ..redeemed.clone()
        };
        assert_eq!(rollback_view(Some(&back)), Reread::Done);
        let pending = User {
            external_user_state: Some("PendingAcceptance".into()),
            ..redeemed
        };
        assert_eq!(
            rollback_view(Some(&pending)),
            Reread::Moot {
                why: "not redeemed: externalUserState is PendingAcceptance".into()
            }
        );
        assert!(matches!(rollback_view(None), Reread::Moot { .. }));
    }

    #[test]
    fn the_passwords_file_is_private_new_and_holds_each_password() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw.csv");
        let file = PasswordsFile::create(&path).unwrap();
        let password = Password::generate().unwrap();
        file.write("a@contoso.com", "u1", &password).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("a@contoso.com,u1,{},", password.reveal())));
        assert!(PasswordsFile::create(&path).is_err(), "never overwritten");
    }
}
