//! The retire pass (`retire`) as the executor sees it: two steps per converted cloud-only user
//! who redeemed — `PATCH passwordProfile` with a fresh random password, then
//! `revokeSignInSessions` — recorded in the pass's entries (`retires`).
//!
//! Who is written is decided from a bulk re-read just before each chunk is worked, never from an
//! old `track`: a user not `Accepted` is skipped ("redeem first": both credentials work until
//! then), a synced user is left to `scripts` (Graph cannot write an on-premises password), and a
//! user holding an admin role is reported as needing Privileged Authentication Administrator
//! unless the caller holds it. The re-read's `lastPasswordChangeDateTime` and
//! `signInSessionsValidFromDateTime` are checkpointed with the first request, and a lost answer
//! is judged by whether Graph's time moved past them ([`judge`], pure): never resent blind.
//! The password lives in memory for one request only (`graph::Password`, wiped on drop).

use std::collections::HashMap;
use std::sync::Arc;

use crate::graph::{GraphError, Password, ResponseMeta};
use crate::model::User;
use crate::queue::pass::{EntryKey, PassUser};
use crate::queue::track::ACCEPTED;
use crate::queue::{CredentialFacts, RetireChange, RetireEntry, RetireState, SeenState, SkipKind};

use super::convert::db;
use super::executor::{trace_of, EntryPass, EntryWork, PassContext, PassRequests, UsersById};
use super::planner::{Checkpoint, ItemPlan, Pass, Reread, Step};
use super::resend::parse_time;

/// The one directory role whose holders a User Administrator may reset like anyone.
const GUEST_INVITER: &str = "Guest Inviter";

/// Graph's code for a write the caller's permissions or roles do not allow on this target.
const DENIED: &str = "Authorization_RequestDenied";

/// What retiring needs to know about who holds an admin role.
#[derive(Debug, Clone, Default)]
pub struct Privileges {
    /// Object id (lower case) → the directory roles it holds.
    pub holders: HashMap<String, Vec<String>>,
    /// The caller holds Privileged Authentication Administrator or Global Administrator: admin
    /// targets can be written too.
    pub admins_allowed: bool,
}

/// Why a re-read user is not written in this pass, or `None` when both steps are for them.
pub fn skip_reason(user: Option<&User>, privileges: &Privileges) -> Option<(SkipKind, String)> {
    let Some(u) = user else {
        return Some((SkipKind::Gone, "the user no longer exists".into()));
    };
    let accepted = u
        .external_user_state
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case(ACCEPTED));
    if !accepted {
        return Some((
            SkipKind::Unredeemed,
            format!(
                "not redeemed yet (externalUserState {}): redeem first; both credentials work until then",
                u.external_user_state.as_deref().unwrap_or("empty")
            ),
        ));
    }
    if u.on_premises_sync_enabled == Some(true) {
        return Some((
            SkipKind::Synced,
            "synced from on-premises: Graph cannot write the password; `scripts` writes \
             ad-retire-passwords.ps1"
                .into(),
        ));
    }
    if let Some(roles) = privileges.holders.get(&u.id.to_lowercase()) {
        // Guest Inviter is no admin role: a User Administrator may reset its holders.
        let admin = roles.iter().any(|r| !r.eq_ignore_ascii_case(GUEST_INVITER));
        if admin && !privileges.admins_allowed {
            return Some((
                SkipKind::Privileged,
                format!(
                    "holds {}: resetting an admin's password needs Privileged Authentication \
                     Administrator",
                    roles.join(", ")
                ),
            ));
        }
    }
    None
}

/// What a re-read after a lost answer proves about `step`: done when Graph's time moved past
/// the one seen before the first request (both on Graph's clock), not done when it did not.
/// Graph sets the time on every password change and every revocation, so an unchanged (or
/// absent) time proves the request did not take effect. A user gone is moot.
pub fn judge(step: Step, entry: &RetireEntry, user: Option<&User>) -> Reread {
    let Some(u) = user else {
        return Reread::Moot {
            why: "the user no longer exists".into(),
        };
    };
    let (before, now) = match step {
        Step::SetPassword => (
            entry.password_before.as_deref(),
            u.last_password_change_date_time.as_deref(),
        ),
        _ => (
            entry.sessions_before.as_deref(),
            u.sign_in_sessions_valid_from_date_time.as_deref(),
        ),
    };
    match (parse_time(before), now.map(|n| parse_time(Some(n)))) {
        (_, None) => Reread::NotDone,
        (_, Some(None)) => Reread::Unprovable {
            code: "UnknownOutcome".into(),
            message: format!(
                "the answer was lost and Graph's time `{}` cannot be read; nothing was sent \
                 again: check the user",
                now.unwrap_or_default()
            ),
        },
        (None, Some(Some(_))) if before.is_some() => Reread::Unprovable {
            code: "UnknownOutcome".into(),
            message: "the answer was lost and the time seen before it cannot be read; nothing \
                      was sent again: check the user"
                .into(),
        },
        (None, Some(Some(_))) => Reread::Done,
        (Some(b), Some(Some(n))) if n > b => Reread::Done,
        (Some(_), Some(Some(_))) => Reread::NotDone,
    }
}

/// One user being retired.
pub struct RetireItem {
    pub entry: RetireEntry,
    user_id: String,
    /// The step last checkpointed.
    step: Step,
}

impl RetireItem {
    fn new(entry: RetireEntry, max_attempts: u32) -> Option<(RetireItem, ItemPlan)> {
        let user_id = entry.user.user_id.clone()?;
        let mut cp = Checkpoint::new(Pass::Retire, Pass::Retire.steps());
        if entry.password_set {
            cp.mark_done(Step::SetPassword);
        }
        if entry.sessions_revoked {
            cp.mark_done(Step::RevokeSessions);
        }
        let step = checkpointed_step(&entry);
        let plan = ItemPlan::new(cp, entry.attempts, max_attempts);
        Some((
            RetireItem {
                entry,
                user_id,
                step,
            },
            plan,
        ))
    }
}

/// The step the entry was last checkpointed at (the first, before any).
fn checkpointed_step(entry: &RetireEntry) -> Step {
    entry
        .step
        .as_deref()
        .and_then(Step::parse)
        .unwrap_or(Step::SetPassword)
}

/// What the retire pass needs to carry out its steps.
pub struct RetireOps {
    /// The queue, Graph and the progress bar.
    pub cx: PassContext,
    pub pass_id: i64,
    pub max_attempts: u32,
    /// Who holds an admin role, and whether the caller may write them too.
    pub privileges: Arc<Privileges>,
}

impl PassRequests for RetireOps {
    type Item = RetireItem;

    async fn send(&self, it: &mut RetireItem, step: Step) -> Result<ResponseMeta, GraphError> {
        match step {
            Step::SetPassword => {
                // Generated for this one request and wiped when it goes out of scope.
                let password = Password::generate()?;
                let sent = self.cx.graph.set_password(&it.user_id, &password).await;
                drop(password);
                sent.map(|t| t.meta)
            }
            _ => self
                .cx
                .graph
                .revoke_sessions(&it.user_id)
                .await
                .map(|t| t.meta),
        }
    }

    async fn reread(&self, it: &RetireItem, step: Step) -> Reread {
        self.cx
            .reread_user(&it.user_id, |u| {
                let seen = judge(step, &it.entry, u);
                tracing::info!(
                    item = it.entry.user.item_id,
                    step = step.as_str(),
                    ?seen,
                    "retire step with unknown outcome decided"
                );
                seen
            })
            .await
    }
}

impl EntryPass for RetireOps {
    type State = RetireState;

    fn context(&self) -> &PassContext {
        &self.cx
    }

    fn key(&self, it: &RetireItem) -> EntryKey {
        EntryKey::of_pass(self.pass_id, it.entry.user.item_id)
    }

    fn in_flight(&self, it: &mut RetireItem, step: Step) -> anyhow::Result<RetireChange> {
        it.step = step;
        Ok(RetireChange::in_flight(
            step.as_str(),
            it.entry.password_before.as_deref(),
            it.entry.sessions_before.as_deref(),
        ))
    }

    fn step_done(&self, _it: &RetireItem, step: Step) -> Option<RetireChange> {
        Some(RetireChange::step_done(step == Step::SetPassword))
    }

    fn done(&self, _it: &RetireItem, meta: Option<&ResponseMeta>) -> RetireChange {
        RetireChange::retired(&trace_of(meta))
    }

    /// A password refused for this target after the caller's own role check passed: the
    /// target holds an admin role the role list did not show. Reported, not failed blindly.
    fn failed(
        &self,
        it: &RetireItem,
        code: &str,
        message: &str,
        meta: Option<&ResponseMeta>,
    ) -> RetireChange {
        if it.step == Step::SetPassword && code == DENIED {
            let why = format!(
                "Graph refused the password change ({message}): the user holds an admin role; \
                 resetting it needs Privileged Authentication Administrator"
            );
            return RetireChange::skipped(SkipKind::Privileged, &why);
        }
        let request_id = meta.and_then(|m| m.request_id.as_deref());
        RetireChange::failed(code, message, request_id)
    }

    fn skipped(&self, _it: &RetireItem, why: &str) -> RetireChange {
        RetireChange::skipped(SkipKind::Gone, why)
    }
}

/// Entries a killed process left in flight are decided first (never sent blind), then the
/// pending ones. Each chunk is re-read in bulk just before it is written; `--limit` counts the
/// users taken, written or not.
impl EntryWork for RetireOps {
    type Entry = RetireEntry;
    const NAME: &'static str = "retire";
    const READING: &'static str = "re-reading the pass's users before retiring them";

    async fn entries(&self, state: RetireState) -> anyhow::Result<Vec<RetireEntry>> {
        let pass = self.pass_id;
        db(&self.cx.queue, move |q| q.retire_entries(pass, state)).await
    }

    fn user(entry: &RetireEntry) -> &PassUser {
        &entry.user
    }

    fn in_flight_step(entry: &RetireEntry) -> Option<Step> {
        Some(checkpointed_step(entry))
    }

    async fn prepare(&self, entry: RetireEntry) -> anyhow::Result<Option<(RetireItem, ItemPlan)>> {
        Ok(RetireItem::new(entry, self.max_attempts))
    }

    /// Records what the users show (redemption, synced, password change time), skips those not
    /// to be written, and returns the others with the two Graph times their first request is
    /// judged against.
    async fn sort_chunk(
        &self,
        chunk: Vec<RetireEntry>,
        now: &UsersById,
    ) -> anyhow::Result<Vec<RetireEntry>> {
        let mut facts = Vec::new();
        let mut left = Vec::with_capacity(chunk.len());
        let mut skipped = Vec::new();
        for mut entry in chunk {
            let user = entry.user.user_id.as_deref().and_then(|id| now.get(id));
            if let Some(u) = user {
                facts.push(credential_facts(entry.user.item_id, u));
            }
            match skip_reason(user, &self.privileges) {
                Some((kind, why)) => {
                    skipped.push((entry.user.item_id, RetireChange::skipped(kind, &why)))
                }
                None => {
                    let u = user.expect("a user not skipped was read");
                    if !entry.password_set {
                        entry.password_before = u.last_password_change_date_time.clone();
                    }
                    if !entry.sessions_revoked {
                        entry.sessions_before = u.sign_in_sessions_valid_from_date_time.clone();
                    }
                    left.push(entry);
                }
            }
        }
        db(&self.cx.queue, move |q| q.record_credentials(&facts)).await?;
        for (item_id, change) in skipped {
            self.leave(EntryKey::of_pass(self.pass_id, item_id), change)
                .await?;
        }
        Ok(left)
    }
}

/// What a re-read of a converted user shows about its credentials and its redemption.
fn credential_facts(item_id: i64, u: &User) -> CredentialFacts {
    CredentialFacts {
        item_id,
        synced: u.on_premises_sync_enabled == Some(true),
        password_changed_at: u.last_password_change_date_time.clone(),
        seen: Some(SeenState {
            state: u.external_user_state.clone(),
            changed_at: u.external_user_state_change_date_time.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(password_before: Option<&str>, sessions_before: Option<&str>) -> RetireEntry {
        RetireEntry {
            pass_id: 1,
            user: PassUser {
                item_id: 1,
                user_id: Some("u1".into()),
                user_principal_name: None,
                external_email: None,
            },
            state: RetireState::InFlight,
            step: None,
            attempts: 1,
            password_before: password_before.map(str::to_string),
            sessions_before: sessions_before.map(str::to_string),
            password_set: false,
            sessions_revoked: false,
            skip_kind: None,
            error_code: None,
            error_message: None,
        }
    }

    fn user(password: Option<&str>, sessions: Option<&str>) -> User {
        User {
            id: "U1".into(),
            external_user_state: Some("Accepted".into()),
            last_password_change_date_time: password.map(str::to_string),
            sign_in_sessions_valid_from_date_time: sessions.map(str::to_string),
            ..User::default()
        }
    }

    const OLD: &str = "2026-11-01T08:00:00Z";
    const NEW: &str = "2026-12-01T23:00:00.123Z";

    /// Every (time before, time now) for both steps: moved → done, unchanged or absent → not
    /// done, unreadable → unprovable (never sent again), gone → moot.
    #[test]
    fn a_lost_answer_is_decided_by_graphs_time() {
        let unprovable = |r: &Reread| matches!(r, Reread::Unprovable { .. });
        type Row = (
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            &'static str,
        );
        let rows: [Row; 7] = [
            ("moved", Some(OLD), Some(NEW), "done"),
            ("first change ever", None, Some(NEW), "done"),
            ("unchanged", Some(OLD), Some(OLD), "not done"),
            (
                "unchanged, other spelling",
                Some(OLD),
                Some("2026-11-01T08:00:00.000Z"),
                "not done",
            ),
            ("still never set", None, None, "not done"),
            ("unreadable now", Some(OLD), Some("yesterday"), "unprovable"),
            (
                "unreadable before",
                Some("yesterday"),
                Some(NEW),
                "unprovable",
            ),
        ];
        for step in [Step::SetPassword, Step::RevokeSessions] {
            for (name, before, now, want) in rows {
                let (e, u) = match step {
                    Step::SetPassword => (entry(before, Some(NEW)), user(now, Some(OLD))),
                    _ => (entry(Some(NEW), before), user(Some(OLD), now)),
                };
                let got = judge(step, &e, Some(&u));
                let ok = match want {
                    "done" => got == Reread::Done,
                    "not done" => got == Reread::NotDone,
                    _ => unprovable(&got),
                };
                assert!(ok, "{step:?} {name}: {got:?}");
            }
            assert!(matches!(
                judge(step, &entry(Some(OLD), Some(OLD)), None),
                Reread::Moot { .. }
            ));
        }
    }

    /// Write transactions one retired user costs, counted by the queue's commit hook: what
    /// the chunk's re-read showed, the first checkpoint, the password's charge and done with
    /// the second checkpoint, and the revocation's charge and done with the entry `retired`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retired_user_costs_four_write_transactions() {
        let run = crate::workers::executor::on_emulator::converted(1, false).await;
        let user_id = run.items[0].user_id.clone().unwrap();
        assert_eq!(run.emulator.redeem(&user_id), Some(200));
        let q = &run.cx.queue;
        let pass = q.create_retire_pass(run.run_id()).unwrap().unwrap();
        let ops = RetireOps {
            cx: run.cx.clone(),
            pass_id: pass.id,
            max_attempts: 3,
            privileges: Arc::default(),
        };
        let spent = crate::workers::executor::on_emulator::write_transactions_of(q, ops).await;
        let retired = q.retire_summary(pass.id).unwrap().retired;
        assert_eq!(retired, 1, "{:?}", q.all_retire_entries(pass.id));
        assert_eq!(spent, 4);
    }

    #[test]
    fn who_is_not_written_and_why() {
        let mut holders = HashMap::new();
        holders.insert("admin".to_string(), vec!["User Administrator".to_string()]);
        holders.insert("inviter".to_string(), vec!["Guest Inviter".to_string()]);
        let privileges = Privileges {
            holders,
            admins_allowed: false,
        };
        let with = |state: Option<&str>, synced: Option<bool>, id: &str| User {
            id: id.into(),
            external_user_state: state.map(str::to_string),
            on_premises_sync_enabled: synced,
            ..User::default()
        };
        let kind = |u: Option<&User>, p: &Privileges| skip_reason(u, p).map(|(k, _)| k);
        let rows: [(&str, Option<User>, Option<SkipKind>); 8] = [
            ("gone", None, Some(SkipKind::Gone)),
            (
                "pending",
                Some(with(Some("PendingAcceptance"), None, "a")),
                Some(SkipKind::Unredeemed),
            ),
            (
                "no state",
                Some(with(None, None, "a")),
                Some(SkipKind::Unredeemed),
            ),
            (
                "synced",
                Some(with(Some("Accepted"), Some(true), "a")),
                Some(SkipKind::Synced),
            ),
            (
                "admin",
                Some(with(Some("accepted"), Some(false), "ADMIN")),
                Some(SkipKind::Privileged),
            ),
            (
                "cloud",
                Some(with(Some("Accepted"), Some(false), "a")),
                None,
            ),
            (
                "cloud, sync unknown",
                Some(with(Some("Accepted"), None, "a")),
                None,
            ),
            (
                "guest inviter",
                Some(with(Some("Accepted"), None, "inviter")),
                None,
            ),
        ];
        for (name, u, want) in &rows {
            assert_eq!(kind(u.as_ref(), &privileges), *want, "{name}");
        }
        let allowed = Privileges {
            admins_allowed: true,
            ..privileges
        };
        assert_eq!(kind(rows[4].1.as_ref(), &allowed), None, "admin with PAA");
        let (_, why) = skip_reason(
            rows[4].1.as_ref(),
            &Privileges {
                admins_allowed: false,
                ..allowed
            },
        )
        .unwrap();
        assert!(
            why.contains("Privileged Authentication Administrator"),
            "{why}"
        );
    }
}
