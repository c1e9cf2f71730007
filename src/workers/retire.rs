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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::graph::{GraphClient, GraphError, Password, ResponseMeta};
use crate::model::User;
use crate::progress::Progress;
use crate::queue::track::ACCEPTED;
use crate::queue::{CredentialFacts, Queue, RetireEntry, RetireState, SkipKind};

use super::convert::db;
use super::executor::{self, reread_error, PassOps, Settled};
use super::planner::{Checkpoint, ItemPlan, Pass, Reread, Step};
use super::resend::PassEnd;

/// Users re-read together just before they are written: one `$batch` of 20 × 15 ids.
const CHUNK: usize = 300;

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
    match (parse(before), now.map(|n| parse(Some(n)))) {
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

fn parse(t: Option<&str>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
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
        let user_id = entry.user_id.clone()?;
        let mut cp = Checkpoint::new(Pass::Retire, Pass::Retire.steps());
        if entry.password_set {
            cp.mark_done(Step::SetPassword);
        }
        if entry.sessions_revoked {
            cp.mark_done(Step::RevokeSessions);
        }
        let step = entry
            .step
            .as_deref()
            .and_then(Step::parse)
            .unwrap_or(Step::SetPassword);
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

/// What the retire pass needs to carry out its steps.
pub struct RetireOps {
    pub queue: Arc<Queue>,
    pub graph: GraphClient,
    pub pass_id: i64,
    pub progress: Arc<Progress>,
    pub max_attempts: u32,
}

impl RetireOps {
    fn done(&self) {
        self.progress.inc(1);
    }
}

impl PassOps for RetireOps {
    type Item = RetireItem;

    async fn checkpoint(&self, it: &mut RetireItem, step: Step) -> anyhow::Result<()> {
        it.step = step;
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        let (pw, ss) = (
            it.entry.password_before.clone(),
            it.entry.sessions_before.clone(),
        );
        db(&self.queue, move |q| {
            q.mark_retire_in_flight(pass, item_id, step.as_str(), pw.as_deref(), ss.as_deref())
        })
        .await
    }

    async fn send(&self, it: &mut RetireItem, step: Step) -> Result<ResponseMeta, GraphError> {
        match step {
            Step::SetPassword => {
                // Generated for this one request and wiped when it goes out of scope.
                let password = Password::generate()?;
                let sent = self.graph.set_password(&it.user_id, &password).await;
                drop(password);
                sent.map(|t| t.meta)
            }
            _ => self
                .graph
                .revoke_sessions(&it.user_id)
                .await
                .map(|t| t.meta),
        }
    }

    async fn reread(&self, it: &RetireItem, step: Step) -> Reread {
        match self.graph.get_user(&it.user_id).await {
            Ok(u) => {
                let seen = judge(step, &it.entry, u.as_ref());
                tracing::info!(
                    item = it.entry.item_id,
                    step = step.as_str(),
                    ?seen,
                    "retire step with unknown outcome decided"
                );
                seen
            }
            Err(e) => reread_error(&it.user_id, e),
        }
    }

    async fn charge(&self, it: &RetireItem) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        db(&self.queue, move |q| q.charge_retire_attempt(pass, item_id)).await
    }

    async fn note_unknown(
        &self,
        it: &RetireItem,
        code: &str,
        message: &str,
        meta: Option<&ResponseMeta>,
    ) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        let (code, message) = (code.to_string(), message.to_string());
        let request_id = meta.and_then(|m| m.request_id.clone());
        db(&self.queue, move |q| {
            q.note_retire_error(pass, item_id, &code, &message, request_id.as_deref())
        })
        .await
    }

    async fn step_done(&self, it: &RetireItem, step: Step) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        let password = step == Step::SetPassword;
        db(&self.queue, move |q| {
            q.retire_step_done(pass, item_id, password, false)
        })
        .await
    }

    async fn record_done(
        &self,
        it: &mut RetireItem,
        meta: Option<ResponseMeta>,
    ) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        db(&self.queue, move |q| {
            q.record_retired(
                pass,
                item_id,
                meta.as_ref().and_then(|m| m.request_id.as_deref()),
                meta.as_ref().map(|m| m.client_request_id.as_str()),
            )
        })
        .await?;
        self.done();
        Ok(())
    }

    async fn back_to_pending(&self, it: &RetireItem) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        db(&self.queue, move |q| {
            q.retire_back_to_pending(pass, item_id)
        })
        .await
    }

    async fn record_failed(
        &self,
        it: &RetireItem,
        code: &str,
        message: &str,
        meta: Option<ResponseMeta>,
    ) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        let request_id = meta.and_then(|m| m.request_id);
        // A password refused for this target after the caller's own role check passed: the
        // target holds an admin role the role list did not show. Reported, not failed blindly.
        if it.step == Step::SetPassword && code == DENIED {
            let why = format!(
                "Graph refused the password change ({message}): the user holds an admin role; \
                 resetting it needs Privileged Authentication Administrator"
            );
            db(&self.queue, move |q| {
                q.record_retire_skipped(pass, item_id, SkipKind::Privileged, &why)
            })
            .await?;
        } else {
            let (code, message) = (code.to_string(), message.to_string());
            db(&self.queue, move |q| {
                q.record_retire_failed(pass, item_id, &code, &message, request_id.as_deref())
            })
            .await?;
        }
        self.done();
        Ok(())
    }

    async fn record_skipped(&self, it: &RetireItem, why: &str) -> anyhow::Result<()> {
        let (pass, item_id, why) = (self.pass_id, it.entry.item_id, why.to_string());
        db(&self.queue, move |q| {
            q.record_retire_skipped(pass, item_id, SkipKind::Gone, &why)
        })
        .await?;
        self.done();
        Ok(())
    }
}

/// Works the pass: entries a killed process left in flight are decided first (never sent
/// blind), then the pending ones, `concurrency` at a time through the run's shared limiter.
/// Each chunk is re-read in bulk just before it is written; at most `limit` users are taken by
/// this process, and with `only` just those items (`--only`).
pub async fn work(
    ops: Arc<RetireOps>,
    privileges: Arc<Privileges>,
    concurrency: usize,
    stop: watch::Receiver<bool>,
    limit: Option<u64>,
    only: Option<BTreeSet<i64>>,
) -> anyhow::Result<PassEnd> {
    let q = &ops.queue;
    let pass = ops.pass_id;
    let in_flight = db(q, move |q| q.retire_entries(pass, RetireState::InFlight)).await?;
    for entry in in_flight {
        let Some((mut it, mut plan)) = RetireItem::new(entry, ops.max_attempts) else {
            continue;
        };
        let step = it.step;
        if let Settled::Stopped(reason) =
            executor::reconcile_item(&*ops, &mut it, &mut plan, Some(step), true).await?
        {
            return Ok(PassEnd::Stopped(reason));
        }
    }

    let pass_stop = executor::PassStop::new(stop);
    let stopping = pass_stop.stopping();
    let mut budget = limit.unwrap_or(u64::MAX);
    let mut pending = db(q, move |q| q.retire_entries(pass, RetireState::Pending)).await?;
    if let Some(only) = &only {
        pending.retain(|e| only.contains(&e.item_id));
    }
    for chunk in pending.chunks(CHUNK) {
        if stopping() || budget == 0 {
            break;
        }
        let mut chunk = chunk.to_vec();
        chunk.truncate(usize::try_from(budget).unwrap_or(usize::MAX));
        budget = budget.saturating_sub(chunk.len() as u64);
        let chunk = match sort_chunk(&ops, &privileges, chunk).await? {
            Ok(left) => left,
            Err(e) => {
                return Ok(executor::chunk_read_stopped(
                    e,
                    "re-reading the pass's users before retiring them",
                ))
            }
        };
        executor::work_chunk(&ops, chunk, concurrency, &pass_stop, |ops: Arc<RetireOps>, entry| async move { Ok(RetireItem::new(entry, ops.max_attempts)) }, "retire").await?;
    }
    Ok(pass_stop.end())
}

/// Re-reads the chunk's users in bulk, records what they show (redemption, synced, password
/// change time) and skips those not to be written; returns the others with the two Graph times
/// their first request is judged against.
async fn sort_chunk(
    ops: &RetireOps,
    privileges: &Privileges,
    chunk: Vec<RetireEntry>,
) -> anyhow::Result<Result<Vec<RetireEntry>, GraphError>> {
    let ids: Vec<String> = chunk.iter().filter_map(|e| e.user_id.clone()).collect();
    let found = match ops.graph.users_by_ids(&ids).await {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let now: HashMap<String, User> = found
        .into_iter()
        .map(|u| (u.id.to_lowercase(), u))
        .collect();
    let mut facts = Vec::new();
    let mut left = Vec::with_capacity(chunk.len());
    for mut entry in chunk {
        let user = entry
            .user_id
            .as_deref()
            .and_then(|id| now.get(&id.to_lowercase()));
        if let Some(u) = user {
            facts.push(CredentialFacts {
                item_id: entry.item_id,
                synced: u.on_premises_sync_enabled == Some(true),
                password_changed_at: u.last_password_change_date_time.clone(),
            });
            let (item_id, state, changed) = (
                entry.item_id,
                u.external_user_state.clone(),
                u.external_user_state_change_date_time.clone(),
            );
            db(&ops.queue, move |q| {
                q.record_seen_state(item_id, state.as_deref(), changed.as_deref())
            })
            .await?;
        }
        match skip_reason(user, privileges) {
            Some((kind, why)) => {
                let (pass, item_id) = (ops.pass_id, entry.item_id);
                db(&ops.queue, move |q| {
                    q.record_retire_skipped(pass, item_id, kind, &why)
                })
                .await?;
                ops.done();
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
    db(&ops.queue, move |q| q.record_credentials(&facts)).await?;
    Ok(Ok(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(password_before: Option<&str>, sessions_before: Option<&str>) -> RetireEntry {
        RetireEntry {
            pass_id: 1,
            item_id: 1,
            user_id: Some("u1".into()),
            user_principal_name: None,
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
