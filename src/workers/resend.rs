//! The resend pass (`resend`) as the executor sees it: one step, a re-invitation with
//! `resetRedemption: true`, `invitedUser.id` and the run's message options, recorded in the
//! pass's entries (`resends`).
//!
//! Its re-read is Graph's `externalUserStateChangeDateTime` against the last `track`
//! ([`after_unknown`], pure): a reset moves the stamp; an unchanged stamp proves it did not
//! happen only when the track read the user at least a stamp's resolution before the
//! checkpoint. A user who redeemed (or vanished) meanwhile is skipped, never reset.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::graph::{GraphError, ResponseMeta, Traced};
use crate::item::{ItemRecord, RunOptions};
use crate::model::{Invitation, InvitationRequest, User};
use crate::queue::pass::{EntryKey, PassUser};
use crate::queue::track::{ResendChange, ResendEntry, ResendState, ACCEPTED};
use crate::queue::Trace;

use super::convert::db;
use super::executor::{trace_of, EntryPass, EntryWork, PassContext, PassRequests, UsersById};
use super::planner::{Checkpoint, ItemPlan, Pass, Reread, Step};

/// Graph stamps `externalUserStateChangeDateTime` to the second: two changes at least this far
/// apart in real time carry different stamps.
pub const STAMP_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// What a re-read of the user showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// No such user any more.
    Gone,
    /// The user's `externalUserState` and its change time.
    State {
        state: Option<String>,
        changed_at: Option<String>,
    },
}

impl Seen {
    pub fn of(user: Option<&User>) -> Seen {
        match user {
            None => Seen::Gone,
            Some(u) => Seen::State {
                state: u.external_user_state.clone(),
                changed_at: u.external_user_state_change_date_time.clone(),
            },
        }
    }
}

/// The decision after a resend whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUnknown {
    /// Graph's change time moved past the one `track` read: the reset took effect.
    TookEffect,
    /// The user redeemed meanwhile: nothing more to send.
    Redeemed,
    /// The user no longer exists.
    Gone,
    /// The user shows no invitation at all (not a B2B user): a reset cannot apply.
    NotInvited,
    /// Unchanged since the track: the reset did not take effect; it may be sent again.
    SendAgain,
    /// Unchanged, and the pass's attempts for this user are used up.
    GiveUp,
    /// Nothing proves the reset did not happen (no change time, or the track read the user
    /// too shortly before the checkpoint for a second-resolution stamp to differ): never send
    /// blind; the operator checks after the next `track`.
    Ambiguous,
}

/// What the last `track` knew about the user before the pass touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline<'a> {
    /// Graph's `externalUserStateChangeDateTime` as tracked (Graph's clock).
    pub changed_at: Option<&'a str>,
    /// When `track` read it (our clock).
    pub tracked_at: Option<&'a str>,
}

/// Decides what a lost answer means, before anything is sent again. Graph's change times are
/// compared only with each other, and our checkpoint only with our own `tracked_at`, so clock
/// skew between us and Graph cannot mislead it: the tracked change happened before the track
/// read it, a reset after the checkpoint; when those are at least [`STAMP_RESOLUTION`] apart
/// an unchanged stamp proves the reset did not happen. Times that do not parse count as absent.
pub fn after_unknown(
    seen: &Seen,
    checkpoint_at: &str,
    baseline: Baseline<'_>,
    attempts: u32,
    max_attempts: u32,
) -> AfterUnknown {
    let (state, changed_at) = match seen {
        Seen::Gone => return AfterUnknown::Gone,
        Seen::State { state, changed_at } => (state, changed_at),
    };
    let Some(state) = state.as_deref().filter(|s| !s.trim().is_empty()) else {
        return AfterUnknown::NotInvited;
    };
    if state.eq_ignore_ascii_case(ACCEPTED) {
        return AfterUnknown::Redeemed;
    }
    let (Some(changed), Some(before)) = (
        parse_time(changed_at.as_deref()),
        parse_time(baseline.changed_at),
    ) else {
        return AfterUnknown::Ambiguous;
    };
    if changed > before {
        return AfterUnknown::TookEffect;
    }
    match (
        parse_time(baseline.tracked_at),
        parse_time(Some(checkpoint_at)),
    ) {
        (Some(tracked), Some(checkpoint)) if checkpoint - tracked >= STAMP_RESOLUTION => {}
        _ => return AfterUnknown::Ambiguous,
    }
    if attempts < max_attempts {
        AfterUnknown::SendAgain
    } else {
        AfterUnknown::GiveUp
    }
}

/// The latest last-invitation time a user may have to be re-invited with `--older-than DAYS`,
/// in the queue's time format.
pub fn cutoff(now: DateTime<Utc>, older_than_days: u32) -> String {
    (now - chrono::TimeDelta::days(i64::from(older_than_days)))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A Graph time (RFC 3339) as UTC; `None` when absent or unreadable. Also `retire`'s.
pub(super) fn parse_time(t: Option<&str>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// One user being re-invited.
pub struct ResendItem {
    pub entry: ResendEntry,
    req: InvitationRequest,
    sent: Option<Traced<Invitation>>,
}

impl ResendItem {
    /// The re-invitation of `item` (which has an object id and an invited address), planned
    /// with the attempts the pass already made at it.
    pub fn new(
        entry: ResendEntry,
        item: &ItemRecord,
        email: &str,
        options: &RunOptions,
    ) -> (ResendItem, ItemPlan) {
        let mut req = super::invitation_request(item, email, options);
        req.reset_redemption = Some(true);
        let plan = ItemPlan::new(
            Checkpoint::new(Pass::Resend, Pass::Resend.steps()),
            entry.attempts,
            options.max_attempts,
        );
        (
            ResendItem {
                entry,
                req,
                sent: None,
            },
            plan,
        )
    }
}

/// What the resend pass needs to carry out its step.
pub struct ResendOps {
    /// The queue, Graph and the progress bar.
    pub cx: PassContext,
    pub pass_id: i64,
    /// The run's message options, with which each user is re-invited.
    pub options: Arc<RunOptions>,
}

impl PassRequests for ResendOps {
    type Item = ResendItem;

    async fn send(&self, it: &mut ResendItem, _step: Step) -> Result<ResponseMeta, GraphError> {
        let traced = self.cx.graph.invite(&it.req).await?;
        let meta = traced.meta.clone();
        it.sent = Some(traced);
        Ok(meta)
    }

    async fn reread(&self, it: &ResendItem, _step: Step) -> Reread {
        let Some(user_id) = it.entry.user.user_id.as_deref() else {
            return Reread::Unprovable {
                code: "NoUserId".into(),
                message: "no object id".into(),
            };
        };
        self.cx
            .reread_user(user_id, |u| judge(&it.entry, &Seen::of(u)))
            .await
    }
}

impl EntryPass for ResendOps {
    type State = ResendState;

    fn context(&self) -> &PassContext {
        &self.cx
    }

    fn key(&self, it: &ResendItem) -> EntryKey {
        EntryKey::of_pass(self.pass_id, it.entry.user.item_id)
    }

    /// Keeps the checkpoint's time: a lost answer is judged against it.
    fn in_flight(&self, it: &mut ResendItem, _step: Step) -> anyhow::Result<ResendChange> {
        let (change, at) = ResendChange::in_flight();
        it.entry.checkpoint_at = Some(at);
        Ok(change)
    }

    fn step_done(&self, _it: &ResendItem, _step: Step) -> Option<ResendChange> {
        // One step: recording the entry `sent` is its checkpoint.
        None
    }

    fn done(&self, it: &ResendItem, _meta: Option<&ResponseMeta>) -> ResendChange {
        match &it.sent {
            Some(t) => ResendChange::sent(
                Some(&t.value.id),
                &trace_of(Some(&t.meta)),
                t.value.invite_redeem_url.as_deref(),
            ),
            None => ResendChange::sent(None, &Trace::default(), None),
        }
    }

    fn failed(
        &self,
        _it: &ResendItem,
        code: &str,
        message: &str,
        meta: Option<&ResponseMeta>,
    ) -> ResendChange {
        ResendChange::failed(code, message, &trace_of(meta))
    }

    fn skipped(&self, _it: &ResendItem, why: &str) -> ResendChange {
        ResendChange::skipped(why)
    }
}

/// Entries a killed process left in flight are decided first (never sent blind), then the
/// pending ones. Each chunk of users is re-read in bulk just before it is re-invited: a user who
/// redeemed since the last `track` is skipped, so a redemption is never reset. `--limit` counts
/// the users re-invited.
impl EntryWork for ResendOps {
    type Entry = ResendEntry;
    const NAME: &'static str = "resend";
    const READING: &'static str = "re-reading the pass's users before re-inviting them";
    const LIMIT_COUNTS_LEFT_ALONE: bool = false;

    async fn entries(&self, state: ResendState) -> anyhow::Result<Vec<ResendEntry>> {
        let pass = self.pass_id;
        db(&self.cx.queue, move |q| q.resend_entries(pass, state)).await
    }

    fn user(entry: &ResendEntry) -> &PassUser {
        &entry.user
    }

    fn in_flight_step(_entry: &ResendEntry) -> Option<Step> {
        Some(Step::Reinvite)
    }

    /// The entry's item and re-invitation; an entry whose item has no object id or invited
    /// address cannot be re-invited and is recorded failed (`None`).
    async fn prepare(&self, entry: ResendEntry) -> anyhow::Result<Option<(ResendItem, ItemPlan)>> {
        let item_id = entry.user.item_id;
        let item = self.cx.item(item_id, "resend").await?;
        match (item.user_id.as_deref(), item.external_email.as_deref()) {
            (Some(_), Some(email)) => Ok(Some(ResendItem::new(entry, &item, email, &self.options))),
            _ => {
                let why = "the item has no object id or invited address";
                let failed = ResendChange::failed("NoAddress", why, &Trace::default());
                self.leave(EntryKey::of_pass(self.pass_id, item_id), failed)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Records those who redeemed since the last `track` (or are gone) as skipped.
    async fn sort_chunk(
        &self,
        chunk: Vec<ResendEntry>,
        now: &UsersById,
    ) -> anyhow::Result<Vec<ResendEntry>> {
        let mut left = Vec::with_capacity(chunk.len());
        for entry in chunk {
            let why = match entry.user.user_id.as_deref().map(|id| now.get(id)) {
                // No object id: `prepare` records it failed.
                None => None,
                Some(None) => Some("the user no longer exists"),
                Some(Some(u)) => u
                    .external_user_state
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(ACCEPTED))
                    .then_some("the user redeemed since the last track"),
            };
            match why {
                Some(why) => {
                    let key = EntryKey::of_pass(self.pass_id, entry.user.item_id);
                    self.leave(key, ResendChange::skipped(why)).await?;
                }
                None => left.push(entry),
            }
        }
        Ok(left)
    }
}

/// The planner's reading of what the user shows after a resend whose outcome is unknown.
pub fn judge(entry: &ResendEntry, seen: &Seen) -> Reread {
    let decision = after_unknown(
        seen,
        entry.checkpoint_at.as_deref().unwrap_or(""),
        Baseline {
            changed_at: entry.tracked_changed_at.as_deref(),
            tracked_at: entry.tracked_at.as_deref(),
        },
        // The planner bounds the attempts: here only "sent again is safe" matters.
        0,
        1,
    );
    tracing::info!(
        item = entry.user.item_id,
        ?decision,
        "resend with unknown outcome decided"
    );
    match decision {
        AfterUnknown::TookEffect => Reread::Done,
        AfterUnknown::Redeemed => Reread::Moot {
            why: "the user redeemed meanwhile".into(),
        },
        AfterUnknown::Gone => Reread::Moot {
            why: "the user no longer exists".into(),
        },
        AfterUnknown::NotInvited => Reread::Unprovable {
            code: "NotInvited".into(),
            message: "the user shows no invitation (externalUserState empty): run `track`, \
                      then `retry`"
                .into(),
        },
        AfterUnknown::SendAgain | AfterUnknown::GiveUp => Reread::NotDone,
        AfterUnknown::Ambiguous => Reread::Unprovable {
            code: "UnknownOutcome".into(),
            message: "the answer was lost and Graph's change time cannot show whether the reset \
                      took effect; nothing was sent again: check the user after the next `track`"
                .into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(s: &str, at: &str) -> Seen {
        Seen::State {
            state: Some(s.into()),
            changed_at: Some(at.into()),
        }
    }

    const CHANGED: &str = "2026-11-01T08:00:00Z";
    const TRACKED_AT: &str = "2026-11-22T09:00:00.000Z";
    const CHECKPOINT: &str = "2026-11-22T10:00:00.000Z";
    const BASE: Baseline<'static> = Baseline {
        changed_at: Some(CHANGED),
        tracked_at: Some(TRACKED_AT),
    };

    #[test]
    fn a_lost_answer_is_decided_by_graphs_change_time() {
        use AfterUnknown::*;
        let pending = |at: &str| state("PendingAcceptance", at);
        let just_tracked = Baseline {
            changed_at: Some(CHANGED),
            tracked_at: Some("2026-11-22T09:59:59.500Z"),
        };
        let rows: Vec<(&str, Seen, Baseline, u32, u32, AfterUnknown)> = vec![
            ("gone", Seen::Gone, BASE, 1, 6, Gone),
            (
                "redeemed meanwhile",
                state("Accepted", "2026-11-22T09:30:00Z"),
                BASE,
                1,
                6,
                Redeemed,
            ),
            (
                "no state at all",
                Seen::State {
                    state: None,
                    changed_at: None,
                },
                BASE,
                1,
                6,
                NotInvited,
            ),
            (
                "changed since track",
                pending("2026-11-22T10:00:01Z"),
                BASE,
                1,
                6,
                TookEffect,
            ),
            (
                "changed since track, Graph's clock far behind ours",
                pending("2026-11-01T08:00:01Z"),
                BASE,
                1,
                6,
                TookEffect,
            ),
            (
                "unchanged since track",
                pending(CHANGED),
                BASE,
                1,
                6,
                SendAgain,
            ),
            (
                "unchanged, attempts used up",
                pending(CHANGED),
                BASE,
                6,
                6,
                GiveUp,
            ),
            (
                "unchanged but tracked under a second before the checkpoint",
                pending(CHANGED),
                just_tracked,
                1,
                6,
                Ambiguous,
            ),
            (
                "never tracked a change time",
                pending("2026-11-22T10:00:05Z"),
                Baseline {
                    changed_at: None,
                    tracked_at: Some(TRACKED_AT),
                },
                1,
                6,
                Ambiguous,
            ),
            (
                "no change time now",
                Seen::State {
                    state: Some("PendingAcceptance".into()),
                    changed_at: None,
                },
                BASE,
                1,
                6,
                Ambiguous,
            ),
            (
                "no tracked_at",
                pending(CHANGED),
                Baseline {
                    changed_at: Some(CHANGED),
                    tracked_at: None,
                },
                1,
                6,
                Ambiguous,
            ),
        ];
        for (name, reread, baseline, attempts, max, expected) in rows {
            assert_eq!(
                after_unknown(&reread, CHECKPOINT, baseline, attempts, max),
                expected,
                "{name}"
            );
        }
    }

    /// Write transactions one re-invited user costs, counted by the queue's commit hook: the
    /// checkpoint, then the attempt's charge with the entry `sent`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_re_invited_user_costs_two_write_transactions() {
        use crate::queue::track::TrackResult;
        let run = crate::workers::executor::on_emulator::converted(1, false).await;
        let q = &run.cx.queue;
        let track = q.start_track(run.run_id()).unwrap();
        let seen = TrackResult::Seen {
            item_id: run.items[0].id,
            state: "PendingAcceptance".into(),
            changed_at: None,
        };
        q.record_track_results(track, &[seen]).unwrap();
        q.finish_track(track).unwrap();
        let pass = q
            .create_resend_pass(run.run_id(), 0, &cutoff(Utc::now(), 0))
            .unwrap()
            .unwrap();
        let ops = ResendOps {
            cx: run.cx.clone(),
            pass_id: pass.id,
            options: Arc::default(),
        };
        let spent = crate::workers::executor::on_emulator::write_transactions_of(q, ops).await;
        assert_eq!(q.resend_summary(pass.id).unwrap().done, 1);
        assert_eq!(spent, 2);
    }

    #[test]
    fn cutoff_counts_whole_days_back() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(cutoff(now, 0), "2026-11-22T10:00:00.000Z");
        assert_eq!(cutoff(now, 7), "2026-11-15T10:00:00.000Z");
    }
}
