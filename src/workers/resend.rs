//! The resend pass (`resend`) as the executor sees it: one step, a re-invitation with
//! `resetRedemption: true`, `invitedUser.id` and the run's message options, recorded in the
//! pass's entries (`resends`).
//!
//! Its re-read is Graph's `externalUserStateChangeDateTime` against the last `track`
//! ([`after_unknown`], pure): a reset moves the stamp; an unchanged stamp proves it did not
//! happen only when the track read the user at least a stamp's resolution before the
//! checkpoint. A user who redeemed (or vanished) meanwhile is skipped, never reset.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::graph::{GraphClient, GraphError, ResponseMeta, Traced};
use crate::item::{ItemRecord, RunOptions};
use crate::model::{Invitation, InvitationRequest, User};
use crate::progress::Progress;
use crate::queue::track::{ResendEntry, ResendState, ACCEPTED};
use crate::queue::Queue;

use super::convert::db;
use super::executor::{self, reread_error, PassOps, Settled};
use super::planner::{Checkpoint, ItemPlan, Pass, Reread, Step, StopReason};

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
    let (Some(changed), Some(before)) = (parse(changed_at.as_deref()), parse(baseline.changed_at))
    else {
        return AfterUnknown::Ambiguous;
    };
    if changed > before {
        return AfterUnknown::TookEffect;
    }
    match (parse(baseline.tracked_at), parse(Some(checkpoint_at))) {
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

fn parse(t: Option<&str>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// How a resend pass ended in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassEnd {
    /// Nothing pending is left (or `--limit` was reached).
    Done,
    /// Ctrl-C: the requests on the wire were finished and recorded.
    Interrupted,
    /// Stopped for the whole pass (tenant refusal, Graph unreachable, lease lost).
    Stopped(StopReason),
}

/// Users re-read together just before they are re-invited: one `$batch` of 20 × 15 ids.
const CHUNK: usize = 300;

/// Works the pass: entries a killed process left in flight are decided first (never sent
/// blind), then the pending ones, `concurrency` at a time through the run's shared limiter.
/// Each chunk of users is re-read in bulk just before it is re-invited: a user who redeemed
/// since the last `track` is skipped, so a redemption is never reset. At most `limit` users are
/// re-invited by this process, and with `only` just the entries of those items (`--only`).
pub async fn work(
    ops: Arc<ResendOps>,
    options: Arc<RunOptions>,
    stop: watch::Receiver<bool>,
    limit: Option<u64>,
    only: Option<BTreeSet<i64>>,
) -> anyhow::Result<PassEnd> {
    let q = &ops.queue;
    let pass = ops.pass_id;
    let in_flight = db(q, move |q| q.resend_entries(pass, ResendState::InFlight)).await?;
    for entry in in_flight {
        let Some((mut it, mut plan)) = prepare(&ops, &options, entry).await? else {
            continue;
        };
        let has_user = it.entry.user_id.is_some();
        if let Settled::Stopped(reason) =
            executor::reconcile_item(&*ops, &mut it, &mut plan, Some(Step::Reinvite), has_user)
                .await?
        {
            return Ok(PassEnd::Stopped(reason));
        }
    }

    let pass_stop = executor::PassStop::new(stop);
    let stopping = pass_stop.stopping();
    let mut budget = limit.unwrap_or(u64::MAX);
    let mut pending = db(q, move |q| q.resend_entries(pass, ResendState::Pending)).await?;
    if let Some(only) = &only {
        pending.retain(|e| only.contains(&e.item_id));
    }
    for chunk in pending.chunks(CHUNK) {
        if stopping() || budget == 0 {
            break;
        }
        let mut chunk = chunk.to_vec();
        chunk.truncate(usize::try_from(budget).unwrap_or(usize::MAX));
        let chunk = match skip_redeemed(&ops, chunk).await? {
            Ok(left) => left,
            Err(e) => {
                return Ok(executor::chunk_read_stopped(
                    e,
                    "re-reading the pass's users before re-inviting them",
                ))
            }
        };
        budget = budget.saturating_sub(chunk.len() as u64);
        executor::work_chunk(
            &ops,
            chunk,
            options.concurrency,
            &pass_stop,
            {
                let options = options.clone();
                move |ops: Arc<ResendOps>, entry| {
                    let options = options.clone();
                    async move { prepare(&ops, &options, entry).await }
                }
            },
            "resend",
        )
        .await?;
    }
    Ok(pass_stop.end())
}

/// The entry's item and re-invitation; an entry whose item has no object id or invited address
/// cannot be re-invited and is recorded failed (`None`).
async fn prepare(
    ops: &ResendOps,
    options: &RunOptions,
    entry: ResendEntry,
) -> anyhow::Result<Option<(ResendItem, ItemPlan)>> {
    let item_id = entry.item_id;
    let item = db(&ops.queue, move |q| q.item(item_id))
        .await?
        .context("a resend names a vanished item")?;
    match (item.user_id.as_deref(), item.external_email.as_deref()) {
        (Some(_), Some(email)) => Ok(Some(ResendItem::new(entry, &item, email, options))),
        _ => {
            let pass = ops.pass_id;
            db(&ops.queue, move |q| {
                q.record_resend_failed(
                    pass,
                    item_id,
                    "NoAddress",
                    "the item has no object id or invited address",
                    None,
                    None,
                )
            })
            .await?;
            ops.done();
            Ok(None)
        }
    }
}

/// Re-reads the chunk's users in bulk and records those who redeemed since the last `track`
/// (or are gone) as skipped; returns the others.
async fn skip_redeemed(
    ops: &ResendOps,
    chunk: Vec<ResendEntry>,
) -> anyhow::Result<Result<Vec<ResendEntry>, GraphError>> {
    let ids: Vec<String> = chunk.iter().filter_map(|e| e.user_id.clone()).collect();
    let found = match ops.graph.users_by_ids(&ids).await {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let now: HashMap<String, User> = found
        .into_iter()
        .map(|u| (u.id.to_lowercase(), u))
        .collect();
    let mut left = Vec::with_capacity(chunk.len());
    for entry in chunk {
        let why = match entry
            .user_id
            .as_deref()
            .map(|id| now.get(&id.to_lowercase()))
        {
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
                let (pass, item_id) = (ops.pass_id, entry.item_id);
                db(&ops.queue, move |q| {
                    q.record_resend_skipped(pass, item_id, why)
                })
                .await?;
                ops.done();
            }
            None => left.push(entry),
        }
    }
    Ok(Ok(left))
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
    pub queue: Arc<Queue>,
    pub graph: GraphClient,
    pub pass_id: i64,
    pub progress: Arc<Progress>,
}

impl ResendOps {
    fn done(&self) {
        self.progress.inc(1);
    }
}

impl PassOps for ResendOps {
    type Item = ResendItem;

    async fn checkpoint(&self, it: &mut ResendItem, _step: Step) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        let at = db(&self.queue, move |q| q.mark_resend_in_flight(pass, item_id)).await?;
        it.entry.checkpoint_at = Some(at);
        Ok(())
    }

    async fn send(&self, it: &mut ResendItem, _step: Step) -> Result<ResponseMeta, GraphError> {
        let traced = self.graph.invite(&it.req).await?;
        let meta = traced.meta.clone();
        it.sent = Some(traced);
        Ok(meta)
    }

    async fn reread(&self, it: &ResendItem, _step: Step) -> Reread {
        let Some(user_id) = it.entry.user_id.as_deref() else {
            return Reread::Unprovable {
                code: "NoUserId".into(),
                message: "no object id".into(),
            };
        };
        match self.graph.get_user(user_id).await {
            Ok(u) => judge(&it.entry, &Seen::of(u.as_ref())),
            Err(e) => reread_error(user_id, e),
        }
    }

    async fn charge(&self, it: &ResendItem) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        db(&self.queue, move |q| q.charge_resend_attempt(pass, item_id)).await
    }

    async fn note_unknown(
        &self,
        it: &ResendItem,
        code: &str,
        message: &str,
        meta: Option<&ResponseMeta>,
    ) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        let (code, message) = (code.to_string(), message.to_string());
        let request_id = meta.and_then(|m| m.request_id.clone());
        db(&self.queue, move |q| {
            q.note_resend_error(pass, item_id, &code, &message, request_id.as_deref())
        })
        .await
    }

    async fn step_done(&self, _it: &ResendItem, _step: Step) -> anyhow::Result<()> {
        // One step: recording the entry `sent` is its checkpoint.
        Ok(())
    }

    async fn record_done(
        &self,
        it: &mut ResendItem,
        _meta: Option<ResponseMeta>,
    ) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        let sent = it.sent.take();
        db(&self.queue, move |q| match &sent {
            Some(t) => q.record_resent(
                pass,
                item_id,
                Some(&t.value.id),
                t.meta.request_id.as_deref(),
                Some(&t.meta.client_request_id),
                t.value.invite_redeem_url.as_deref(),
            ),
            None => q.record_resent(pass, item_id, None, None, None, None),
        })
        .await?;
        self.done();
        Ok(())
    }

    async fn back_to_pending(&self, it: &ResendItem) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        db(&self.queue, move |q| {
            q.resend_back_to_pending(pass, item_id)
        })
        .await
    }

    async fn record_failed(
        &self,
        it: &ResendItem,
        code: &str,
        message: &str,
        meta: Option<ResponseMeta>,
    ) -> anyhow::Result<()> {
        let (pass, item_id) = (self.pass_id, it.entry.item_id);
        let (code, message) = (code.to_string(), message.to_string());
        db(&self.queue, move |q| {
            q.record_resend_failed(
                pass,
                item_id,
                &code,
                &message,
                meta.as_ref().and_then(|m| m.request_id.as_deref()),
                meta.as_ref().map(|m| m.client_request_id.as_str()),
            )
        })
        .await?;
        self.done();
        Ok(())
    }

    async fn record_skipped(&self, it: &ResendItem, why: &str) -> anyhow::Result<()> {
        let (pass, item_id, why) = (self.pass_id, it.entry.item_id, why.to_string());
        db(&self.queue, move |q| {
            q.record_resend_skipped(pass, item_id, &why)
        })
        .await?;
        self.done();
        Ok(())
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
        item = entry.item_id,
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

    #[test]
    fn cutoff_counts_whole_days_back() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(cutoff(now, 0), "2026-11-22T10:00:00.000Z");
        assert_eq!(cutoff(now, 7), "2026-11-15T10:00:00.000Z");
    }
}
