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

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use serde_json::json;

use crate::graph::{ConvertBack, GraphError, Password, ResponseMeta, Traced};
use crate::item::ItemRecord;
use crate::model::{ConversionUserDetails, User};
use crate::queue::backout::{BackoutChange, BackoutEntry, BackoutKind, BackoutState};
use crate::queue::pass::{EntryKey, PassUser};
use crate::queue::track::ACCEPTED;

use super::convert::db;
use super::executor::{trace_of, EntryPass, EntryWork, PassContext, PassRequests, UsersById};
use super::planner::{Checkpoint, ItemPlan, Pass, Reread, Step};

/// The userType `--set-guest` writes.
pub const TOOL_USER_TYPE: &str = "Guest";

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
                entry.put_back.user_type_to.as_deref(),
                Some(TOOL_USER_TYPE),
            ),
        ),
        _ => (
            "mail",
            property(
                user.mail.as_deref(),
                entry.put_back.mail_to.as_deref(),
                entry.put_back.mail_tool.as_deref(),
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
                    entry.put_back.needs_user_type,
                    entry.user_type_done,
                    entry.put_back.needs_mail,
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
        self.entry.user.user_id.as_deref().unwrap_or_default()
    }
}

/// What a back-out pass needs to carry out its steps.
pub struct BackoutOps {
    /// The queue, Graph and the progress bar.
    pub cx: PassContext,
    pub run_id: i64,
    pub kind: BackoutKind,
    /// `rollback` of cloud users: where their new passwords go.
    pub passwords: Option<PasswordsFile>,
    pub max_attempts: u32,
}

impl BackoutOps {
    fn key_of(&self, item_id: i64) -> EntryKey {
        EntryKey::of_item(item_id, self.kind.as_str())
    }
}

impl PassRequests for BackoutOps {
    type Item = BackoutItem;

    async fn send(&self, it: &mut BackoutItem, step: Step) -> Result<ResponseMeta, GraphError> {
        let id = it.user_id().to_string();
        match step {
            Step::RestoreUserType => {
                let to = it.entry.put_back.user_type();
                let t = self
                    .cx
                    .graph
                    .patch_user(&id, &json!({ "userType": to }))
                    .await?;
                Ok(t.meta)
            }
            Step::RestoreMail => {
                let t = self
                    .cx
                    .graph
                    .patch_user(&id, &json!({ "mail": it.entry.put_back.mail_to }))
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
                let answer = self.cx.graph.convert_back(&id, &how).await?;
                let meta = answer.meta.clone();
                it.answer = Some(answer);
                Ok(meta)
            }
        }
    }

    async fn reread(&self, it: &BackoutItem, step: Step) -> Reread {
        self.cx
            .reread_user(it.user_id(), |user| match step {
                Step::ConvertBack => rollback_view(user),
                _ => restore_view(&it.entry, user, step),
            })
            .await
    }
}

impl EntryPass for BackoutOps {
    type State = BackoutState;

    fn context(&self) -> &PassContext {
        &self.cx
    }

    fn key(&self, it: &BackoutItem) -> EntryKey {
        self.key_of(it.entry.user.item_id)
    }

    /// A cloud user's new password is written (and synced) to the passwords file before the
    /// checkpoint, which names the file.
    fn in_flight(&self, it: &mut BackoutItem, step: Step) -> anyhow::Result<BackoutChange> {
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
        Ok(BackoutChange::in_flight(step.as_str(), file.as_deref()))
    }

    fn step_done(&self, _it: &BackoutItem, step: Step) -> Option<BackoutChange> {
        BackoutChange::step_done(step.as_str())
    }

    fn done(&self, it: &BackoutItem, meta: Option<&ResponseMeta>) -> BackoutChange {
        let at = it
            .answer
            .as_ref()
            .and_then(|a| a.value.converted_to_internal_user_date_time.as_deref());
        BackoutChange::done(at, &trace_of(meta))
    }

    fn failed(
        &self,
        _it: &BackoutItem,
        code: &str,
        message: &str,
        meta: Option<&ResponseMeta>,
    ) -> BackoutChange {
        BackoutChange::failed(code, message, meta.and_then(|m| m.request_id.as_deref()))
    }

    fn skipped(&self, _it: &BackoutItem, why: &str) -> BackoutChange {
        BackoutChange::skipped(why)
    }
}

/// Entries a killed process left in flight are decided first from a re-read (never sent
/// blind), then the pending ones, each chunk re-read in bulk just before it is worked so a user
/// changed by someone else, or not redeemed, is left alone.
impl EntryWork for BackoutOps {
    type Entry = BackoutEntry;
    const NAME: &'static str = "back-out";
    const READING: &'static str = "re-reading the users before backing them out";

    async fn entries(&self, state: BackoutState) -> anyhow::Result<Vec<BackoutEntry>> {
        let (run_id, kind) = (self.run_id, self.kind);
        db(&self.cx.queue, move |q| {
            q.backout_entries(run_id, kind, Some(state))
        })
        .await
    }

    fn user(entry: &BackoutEntry) -> &PassUser {
        &entry.user
    }

    /// No step named: a restore left between its two steps (the first checkpointed done, the
    /// second not yet in flight). Every in-flight checkpoint names its step.
    fn in_flight_step(entry: &BackoutEntry) -> Option<Step> {
        entry.in_flight.as_deref().and_then(Step::parse)
    }

    async fn prepare(
        &self,
        entry: BackoutEntry,
    ) -> anyhow::Result<Option<(BackoutItem, ItemPlan)>> {
        let item = self.cx.item(entry.user.item_id, "back-out").await?;
        Ok(Some(BackoutItem::new(entry, &item, self.max_attempts)))
    }

    /// A restore step whose property already holds the snapshot's value is checkpointed done
    /// without a request; a user changed since by someone else, not redeemed, gone or without
    /// an object id is recorded left alone.
    async fn sort_chunk(
        &self,
        chunk: Vec<BackoutEntry>,
        now: &UsersById,
    ) -> anyhow::Result<Vec<BackoutEntry>> {
        let mut left = Vec::with_capacity(chunk.len());
        for mut entry in chunk {
            let Some(id) = entry.user.user_id.as_deref() else {
                self.leave_alone(&entry, "the item has no object id")
                    .await?;
                continue;
            };
            let user = now.get(id);
            let why = match self.kind {
                BackoutKind::Rollback => match rollback_view(user) {
                    Reread::Done => {
                        Some("already an internal member (converted back elsewhere)".to_string())
                    }
                    Reread::Moot { why } => Some(why),
                    _ => None,
                },
                BackoutKind::Restore => self.restored_already(&mut entry, user).await?,
            };
            match why {
                Some(why) => self.leave_alone(&entry, &why).await?,
                None => left.push(entry),
            }
        }
        Ok(left)
    }
}

impl BackoutOps {
    /// Checkpoints done each restore step of `entry` whose property `user` already shows
    /// back, without a request; why the user is left alone, when someone else changed it since
    /// (or it is gone).
    async fn restored_already(
        &self,
        entry: &mut BackoutEntry,
        user: Option<&User>,
    ) -> anyhow::Result<Option<String>> {
        for step in [Step::RestoreUserType, Step::RestoreMail] {
            let (needed, done) = match step {
                Step::RestoreUserType => (entry.put_back.needs_user_type, entry.user_type_done),
                _ => (entry.put_back.needs_mail, entry.mail_done),
            };
            if !needed || done {
                continue;
            }
            match restore_view(entry, user, step) {
                Reread::Moot { why } => return Ok(Some(why)),
                Reread::Done => {
                    let key = self.key_of(entry.user.item_id);
                    let changes: Vec<_> = BackoutChange::step_done(step.as_str())
                        .into_iter()
                        .collect();
                    db(&self.cx.queue, move |q| q.change_entry(&key, &changes)).await?;
                    match step {
                        Step::RestoreUserType => entry.user_type_done = true,
                        _ => entry.mail_done = true,
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    async fn leave_alone(&self, entry: &BackoutEntry, why: &str) -> anyhow::Result<()> {
        self.leave(self.key_of(entry.user.item_id), BackoutChange::skipped(why))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::backout::PutBack;

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
            user: PassUser {
                item_id: 1,
                user_id: Some("u1".into()),
                user_principal_name: Some("a@contoso.com".into()),
                external_email: None,
            },
            kind: BackoutKind::Restore,
            state: BackoutState::Pending,
            put_back: PutBack::user_type_and_mail(None, Some("a@fabrikam.com")),
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
        let back = user(Some("Member"), None);
        for (now, want) in [(&u, Reread::NotDone), (&back, Reread::Done)] {
            for step in [Step::RestoreUserType, Step::RestoreMail] {
                assert_eq!(restore_view(&e, Some(now), step), want, "{now:?} {step:?}");
            }
        }
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

    /// Works one back-out of `kind` for the run's only user and returns the write
    /// transactions it cost.
    async fn write_transactions_of(
        run: &crate::workers::executor::on_emulator::Converted,
        kind: BackoutKind,
        passwords: Option<PasswordsFile>,
    ) -> u64 {
        let q = &run.cx.queue;
        let ops = BackoutOps {
            cx: run.cx.clone(),
            run_id: run.run_id(),
            kind,
            passwords,
            max_attempts: 3,
        };
        let spent = crate::workers::executor::on_emulator::write_transactions_of(q, ops).await;
        assert_eq!(q.backout_counts(run.run_id(), kind).unwrap().done, 1);
        spent
    }

    /// The checkpoint of the userType, its charge and done with the mail's checkpoint, the
    /// mail's charge and done with the entry `done`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_user_costs_three_write_transactions() {
        let run = crate::workers::executor::on_emulator::converted(1, true).await;
        let back = crate::queue::backout::NewBackout {
            item_id: run.items[0].id,
            put_back: PutBack::user_type_and_mail(
                Some("before1@fabrikam.example"),
                run.items[0].external_email.as_deref(),
            ),
        };
        run.cx
            .queue
            .add_backout(run.run_id(), BackoutKind::Restore, &[back])
            .unwrap();
        let spent = write_transactions_of(&run, BackoutKind::Restore, None).await;
        assert_eq!(spent, 3);
    }

    /// The checkpoint, then the charge with the entry `done`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rolled_back_user_costs_two_write_transactions() {
        let run = crate::workers::executor::on_emulator::converted(1, false).await;
        let user_id = run.items[0].user_id.clone().unwrap();
        assert_eq!(run.emulator.redeem(&user_id), Some(200));
        let back = crate::queue::backout::NewBackout {
            item_id: run.items[0].id,
            ..Default::default()
        };
        run.cx
            .queue
            .add_backout(run.run_id(), BackoutKind::Rollback, &[back])
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let passwords = PasswordsFile::create(&dir.path().join("pw.csv")).unwrap();
        let spent = write_transactions_of(&run, BackoutKind::Rollback, Some(passwords)).await;
        assert_eq!(spent, 2);
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
