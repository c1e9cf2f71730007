//! Workers: validate → (set mail) → invite → (set userType) → record, rate-limited and
//! checkpointed.
//!
//! A producer reads pending items in input order a chunk at a time, looks their users up in bulk
//! (`id in (…)` through `$batch`; several chunks at once, [`lookups`], or from one read of the
//! whole tenant in pages when a dry run names enough of it), asks the stored address index ([`facts`], refreshed with
//! Graph's delta query at the start of the pass) who else holds their addresses, and validates each
//! with the pure `validate` function. Verdicts that need no request are recorded at once; users to
//! convert go through a bounded channel to `concurrency` workers, so reading the next chunk
//! overlaps with converting the current one.
//!
//! Exactly-once: this module is the convert pass's producer and workers; each item is carried
//! out by the one executor ([`executor`]) as the convert pass declares it ([`convert`]), every
//! decision made by [`planner`]. An item is checkpointed `in_flight` (with the step, fenced by
//! the lease) before a request can leave the process; an attempt is charged only once the
//! request may have reached Graph. When the outcome is unknown the user is re-read before
//! anything is sent again, and `reconcile_in_flight` does the same at start-up for items a crash
//! left behind. The queue is called on the blocking pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::graph::{GraphClient, GraphError};
use crate::item::{ItemRecord, ItemState, Reason, RunMode, RunOptions, RunRecord};
use crate::model::{
    EmailAddress, InvitationRequest, InvitedUserMessageInfo, InvitedUserRef, Recipient, User,
};
use crate::progress::Progress;
use crate::queue::{LookupOutcome, Queue, VerdictRecord};
use crate::validate::{validate_with, Verdict};

pub mod backout;
pub mod convert;
pub mod executor;
pub mod facts;
pub mod lookups;
pub mod planner;
pub mod resend;
pub mod retire;
pub mod scan;

use convert::{db, ConvertItem, ConvertOps};
use executor::Settled;
use planner::{Step, StopReason};

/// Items read, looked up and validated together: one `$batch` of 20 × 15 ids.
const CHUNK: usize = 300;

/// How a pass over the queue ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing pending is left (or `--limit` was reached).
    Completed { limit_reached: bool },
    /// Ctrl-C: claimed work was finished and checkpointed; the rest stays pending.
    Interrupted,
    /// The tenant refused to go on (invitations blocked, consent revoked): stop, exit 4.
    TenantRefused(String),
}

/// Everything a pass needs. Cheap to clone into tasks.
#[derive(Clone)]
pub struct Pipeline {
    pub queue: Arc<Queue>,
    pub graph: GraphClient,
    pub run: Arc<RunRecord>,
    pub progress: Arc<Progress>,
    /// Becomes `true` on Ctrl-C: stop claiming, finish what is on the wire.
    pub stop: watch::Receiver<bool>,
    /// `--only`: the items this pass may work; the other pending ones stay pending.
    pub only: Option<Arc<std::collections::HashSet<i64>>>,
}

/// Shared state of one pass.
struct Pass {
    pipeline: Pipeline,
    /// Set once by the first item (or the producer) that stops the run.
    stop_reason: Mutex<Option<StopReason>>,
    /// Converted (or would-convert) plus dispatched: what `--limit` counts.
    dispatched: AtomicU64,
    /// Items that stayed `in_flight` because the user could not be re-read.
    unresolved: AtomicU64,
    /// Items handed to the workers and not yet settled by them.
    outstanding: AtomicU64,
    /// Woken each time a worker settles an item: the producer waits on it between rounds.
    settled: tokio::sync::Notify,
}

/// One item handed to the workers: settled (and the producer told) when dropped, whether the
/// worker finished it, skipped it for a stop, or failed.
struct Handed<'a>(&'a Pass);

impl Drop for Handed<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::SeqCst);
        self.0.settled.notify_waiters();
    }
}

impl Pass {
    fn options(&self) -> &RunOptions {
        &self.pipeline.run.options
    }

    /// Hands one item to the workers; `false` when the pass stops or no worker is left.
    async fn hand_out(
        &self,
        tx: &mpsc::Sender<(ItemRecord, String)>,
        item: ItemRecord,
        email: String,
    ) -> bool {
        if self.stopping() {
            return false;
        }
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        if tx.send((item, email)).await.is_err() {
            drop(Handed(self));
            return false;
        }
        true
    }

    /// Waits until every item handed out is settled (or no worker is left to settle them).
    async fn all_settled(&self, tx: &mpsc::Sender<(ItemRecord, String)>) {
        loop {
            // Created before the check: a worker settling in between still wakes it.
            let settled = self.settled.notified();
            if self.outstanding.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::select! {
                () = settled => {}
                () = tx.closed() => return,
            }
        }
    }

    fn stopping(&self) -> bool {
        *self.pipeline.stop.borrow() || self.stop_reason.lock().map(|r| r.is_some()).unwrap_or(true)
    }

    /// Stops the run: the first reason wins, later ones are logged.
    fn stop_with(&self, reason: StopReason) {
        let mut r = self.stop_reason.lock().unwrap_or_else(|p| p.into_inner());
        match &reason {
            StopReason::TenantRefused(m) => {
                tracing::error!(message = %m, "the tenant refused to go on; stopping the run")
            }
            StopReason::Unreachable(m) => {
                tracing::error!(message = %m, "Graph cannot be reached; stopping the run")
            }
            StopReason::Error(m) => tracing::error!(message = %m, "stopping the run"),
            StopReason::LeaseLost => {
                tracing::error!("the run's lease was taken over; this process writes nothing more")
            }
        }
        if r.is_none() {
            *r = Some(reason);
        }
    }
}

/// Runs the queue of `pipeline.run` until nothing pending is left, Ctrl-C, or a tenant refusal.
pub async fn work(pipeline: Pipeline) -> anyhow::Result<Outcome> {
    let _driving = crate::queue::threads::driving_tasks();
    let run_id = pipeline.run.id;
    let facts = match facts::refresh(&pipeline.graph, &pipeline.queue).await {
        Ok((f, refresh)) => {
            tracing::info!(
                run_id,
                verified_domains = f.verified_domains.len(),
                pages = refresh.pages,
                changed_users = refresh.changes,
                full_round = refresh.full,
                "tenant facts brought up to date"
            );
            Arc::new(f)
        }
        Err(facts::FactsError::Graph(e)) => {
            return refusal_or_error(e, "reading the tenant's domains and addresses")
        }
        Err(e) => return Err(anyhow::Error::new(e).context("updating the tenant's address index")),
    };

    let counts = db(&pipeline.queue, move |q| q.counts(run_id)).await?;
    let done = counts.total - counts.state(ItemState::Pending) - counts.state(ItemState::InFlight);
    pipeline.progress.resume_at(done);
    let already = match pipeline.run.mode {
        RunMode::Live => counts.state(ItemState::Converted) + counts.state(ItemState::InFlight),
        RunMode::DryRun => counts.state(ItemState::WouldConvert),
    };

    let pass = Arc::new(Pass {
        pipeline: pipeline.clone(),
        stop_reason: Mutex::new(None),
        dispatched: AtomicU64::new(already),
        unresolved: AtomicU64::new(0),
        outstanding: AtomicU64::new(0),
        settled: tokio::sync::Notify::new(),
    });

    let ops = Arc::new(ConvertOps {
        queue: pipeline.queue.clone(),
        graph: pipeline.graph.clone(),
        progress: pipeline.progress.clone(),
    });
    reconcile_in_flight(&pass, &ops).await?;

    let concurrency = pass.options().concurrency.max(1);
    // A whole chunk fits in the hand-off, so the next chunk's look-ups overlap with inviting
    // this one and the workers never wait on the producer.
    let (tx, rx) = mpsc::channel::<(ItemRecord, String)>((concurrency * 2).max(CHUNK));
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    if pipeline.run.mode == RunMode::Live {
        for _ in 0..concurrency {
            let pass = pass.clone();
            let ops = ops.clone();
            let rx = rx.clone();
            workers.spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((item, email)) = next else { break };
                    let _handed = Handed(&pass);
                    if pass.stopping() {
                        // Never marked in flight: it simply stays pending.
                        continue;
                    }
                    let (run_id, item_id) = (item.run_id, item.id);
                    convert(&pass, &ops, item, email)
                        .instrument(tracing::info_span!("item", run_id, item_id))
                        .await?;
                }
                anyhow::Ok(())
            });
        }
        // Only the workers hold the hand-off from here: if every one of them ends early, the
        // producer sees it closed instead of waiting for items nobody will settle.
        drop(rx);
    }

    let reads = if pipeline.run.mode == RunMode::DryRun && !pass.options().read_by_key {
        match lookups::choose(
            &pipeline.graph,
            &pipeline.queue,
            run_id,
            pipeline.only.as_deref(),
        )
        .await
        {
            Ok(reads) => reads,
            Err(lookups::ChooseError::Graph(e)) => {
                return refusal_or_error(e, "reading the users the run names")
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        lookups::Reads::ByKey
    };
    let produced = produce(&pass, &facts, &reads, tx).await;
    while let Some(joined) = workers.join_next().await {
        joined.context("an invite worker panicked")??;
    }
    let limit_reached = produced?;

    pass.pipeline.progress.finish();
    let reason = pass
        .stop_reason
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match reason {
        Some(StopReason::TenantRefused(message)) => return Ok(Outcome::TenantRefused(message)),
        Some(StopReason::Unreachable(message)) => {
            let cut_off = db(&pass.pipeline.queue, move |q| q.counts(run_id))
                .await?
                .state(ItemState::InFlight);
            anyhow::bail!(
                "Graph cannot be reached, nothing more was sent: {message}{}",
                unknown_left(cut_off)
            )
        }
        Some(StopReason::Error(message)) => anyhow::bail!(message),
        Some(StopReason::LeaseLost) => {
            return Err(crate::queue::QueueError::LeaseLost { run_id }.into())
        }
        None => {}
    }
    if *pass.pipeline.stop.borrow() {
        return Ok(Outcome::Interrupted);
    }
    let unresolved = pass.unresolved.load(Ordering::Relaxed);
    if unresolved > 0 {
        tracing::warn!(
            unresolved,
            "some invitations have an unknown outcome and the user could not be re-read; \
             they stay in_flight and `resume` reconciles them"
        );
    }
    Ok(Outcome::Completed { limit_reached })
}

/// What a stop says about items whose outcome stayed unknown: their answer was cut off and the
/// user could not be re-read within the client's window, so they stay `in_flight` (never sent
/// again blind) and the next `resume` re-reads them before anything else.
fn unknown_left(in_flight: u64) -> String {
    match in_flight {
        0 => String::new(),
        n => format!(
            "; {n} item(s) whose answer was cut off stay in_flight: `resume` re-reads those users \
             before sending anything"
        ),
    }
}

fn refusal_or_error(e: GraphError, doing: &str) -> anyhow::Result<Outcome> {
    match e {
        GraphError::TenantRefused { message, .. } => Ok(Outcome::TenantRefused(message)),
        other => Err(anyhow::Error::new(other).context(doing.to_string())),
    }
}

/// Reads pending items chunk by chunk, records verdicts, hands conversions to the workers.
/// Returns whether `--limit` stopped it.
///
/// The users of the next chunks are read while this one is recorded: as many chunks ahead as
/// keep the read budget spent at the measured round trip ([`lookups::chunks_ahead`]). Chunks
/// are recorded in the order the walk read them, and a round ends only once every chunk read
/// ahead is recorded, so the rounds see exactly what they saw with one chunk at a time.
async fn produce(
    pass: &Arc<Pass>,
    facts: &Arc<facts::Facts>,
    reads: &lookups::Reads,
    tx: mpsc::Sender<(ItemRecord, String)>,
) -> anyhow::Result<bool> {
    let p = &pass.pipeline;
    let mut scan = scan::Scan::default();
    let mut ahead = lookups::Ahead::default();
    // What one chunk's look-ups cost: its 20 filters of 15 (one `$batch` in a live run).
    let ru_per_chunk = CHUNK.div_ceil(crate::graph::VALUES_PER_FILTER) as u32;
    let mut round_ended = false;
    loop {
        if pass.stopping() {
            return Ok(false);
        }
        let run_id = p.run.id;
        let budget = p.graph.read_budget();
        let depth = lookups::chunks_ahead(budget.per_second(), budget.latency(), ru_per_chunk);
        while !round_ended && ahead.len() < depth {
            let only = p.only.clone();
            let (walked, next) = db(&p.queue, move |q| {
                let keep = |i: &ItemRecord| only.as_ref().is_none_or(|only| only.contains(&i.id));
                let next = scan.next(q, run_id, CHUNK, keep)?;
                Ok((scan, next))
            })
            .await?;
            scan = walked;
            let items = match next {
                scan::Next::Items(items) => items,
                scan::Next::RoundEnded => {
                    round_ended = true;
                    break;
                }
                scan::Next::Done => {
                    if ahead.is_empty() {
                        return Ok(false);
                    }
                    break;
                }
            };
            // Items a previous pass took half-way (mail set or invited) go on at their next
            // step: validating them again against the snapshot taken before the change would
            // be wrong.
            let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
            let steps = db(&p.queue, move |q| q.steps_of(&ids)).await?;
            let (started, items): (Vec<_>, Vec<_>) = items
                .into_iter()
                .partition(|i| steps.get(&i.id).is_some_and(|s| s.mail_set || s.invited));
            for item in started {
                let row = &steps[&item.id];
                let email = row
                    .mail_to
                    .clone()
                    .or_else(|| item.external_email.clone())
                    .unwrap_or_default();
                pass.dispatched.fetch_add(1, Ordering::Relaxed);
                if !pass.hand_out(&tx, item, email).await {
                    return Ok(false);
                }
            }
            ahead.push(lookups::Chunk::start(reads, &p.graph, items));
        }
        let Some(chunk) = ahead.pop() else {
            // Every chunk of the round is recorded. Items the workers still hold may put
            // others back (or show they are pending): the next round starts once they are
            // settled.
            if round_ended {
                pass.all_settled(&tx).await;
                round_ended = false;
            }
            continue;
        };
        let (items, found) = chunk.answered().await;
        let found = match found {
            Ok(found) => found,
            Err(GraphError::TenantRefused { message, .. }) => {
                pass.stop_with(StopReason::TenantRefused(message));
                return Ok(false);
            }
            Err(GraphError::NotSent { message }) => {
                pass.stop_with(StopReason::Unreachable(message));
                return Ok(false);
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("looking users up in Graph (the run is resumable)"))
            }
        };
        if pass.stopping() {
            return Ok(false);
        }
        let (pass_, facts_) = (pass.clone(), facts.clone());
        let settled = db(&p.queue, move |_| {
            let verdicts = prepare(&pass_, items, &facts_, found)?;
            record_chunk(&pass_, verdicts)
        })
        .await?;
        for ready in settled.to_invite {
            if ready.mail_change.is_some() || ready.needs_guest {
                let (id, mail, guest) = (ready.item.id, ready.mail_change, ready.needs_guest);
                db(&p.queue, move |q| {
                    q.plan_steps(
                        id,
                        mail.as_ref().map(|m| (m.from.as_deref(), m.to.as_str())),
                        guest,
                    )
                })
                .await?;
            }
            if !pass.hand_out(&tx, ready.item, ready.email).await {
                return Ok(false);
            }
        }
        if settled.limit_reached {
            return Ok(true);
        }
    }
}

/// A user the chunk's checks let through in a live run, to be handed to the workers.
struct ToInvite {
    item: ItemRecord,
    email: String,
    mail_change: Option<crate::validate::MailChange>,
    needs_guest: bool,
}

/// What recording a chunk's verdicts leaves the producer to do.
struct ChunkRecorded {
    to_invite: Vec<ToInvite>,
    /// `--limit` was reached in this chunk: the users after it stay pending.
    limit_reached: bool,
}

/// Records every verdict of a chunk that ends its item without a request (skipped, blocked, and
/// in a dry run `would_convert`) in one write transaction, in order, up to `--limit`; returns
/// the users a live run goes on to invite. Runs on the blocking pool.
fn record_chunk(
    pass: &Pass,
    verdicts: Vec<(ItemRecord, Verdict)>,
) -> crate::queue::Result<ChunkRecorded> {
    let p = &pass.pipeline;
    let limit = pass.options().limit;
    let mut ended: Vec<VerdictRecord> = Vec::new();
    let mut to_invite = Vec::new();
    let mut limit_reached = false;
    for (item, verdict) in verdicts {
        match verdict {
            Verdict::Skip { reason, detail } | Verdict::Block { reason, detail } => {
                ended.push(VerdictRecord {
                    item_id: item.id,
                    state: reason.state(),
                    reason: Some(reason),
                    detail: Some(detail),
                    external_email: None,
                });
            }
            Verdict::Convert {
                email,
                mut notes,
                mail_change,
            } => {
                let needs_guest = planner::plan(
                    mail_change.is_some(),
                    item.snapshot.as_ref().and_then(|u| u.user_type.as_deref()),
                    pass.options().set_guest,
                )
                .needs(Step::SetGuest);
                if limit.is_some_and(|l| pass.dispatched.load(Ordering::Relaxed) >= l) {
                    limit_reached = true;
                    break;
                }
                pass.dispatched.fetch_add(1, Ordering::Relaxed);
                match p.run.mode {
                    RunMode::DryRun => {
                        if needs_guest {
                            notes.push("userType will be set to Guest after the invitation".into());
                        }
                        let detail = (!notes.is_empty()).then(|| notes.join("; "));
                        ended.push(VerdictRecord {
                            item_id: item.id,
                            state: ItemState::WouldConvert,
                            reason: None,
                            detail,
                            external_email: Some(email),
                        });
                    }
                    RunMode::Live => to_invite.push(ToInvite {
                        item,
                        email,
                        mail_change,
                        needs_guest,
                    }),
                }
            }
        }
    }
    p.queue.record_verdicts(&ended)?;
    for r in &ended {
        p.progress.item_done(&p.queue, r.item_id);
    }
    Ok(ChunkRecorded {
        to_invite,
        limit_reached,
    })
}

/// Records what the look-up found for the chunk's users without a snapshot (not found ends the
/// item) in one write transaction, then validates every item. In an `apply`, a planned user
/// who is gone is blocked `changed_since_plan` (first, so `--limit` never leaves one behind).
fn prepare(
    pass: &Pass,
    items: Vec<ItemRecord>,
    facts: &facts::Facts,
    by_key: HashMap<String, User>,
) -> crate::queue::Result<Vec<(ItemRecord, Verdict)>> {
    let p = &pass.pipeline;
    // `apply`: a planned user who is gone now changed since the plan (its verdict did), so it
    // ends `changed_since_plan`, not `user_not_found` as in a run without a plan.
    let (gone, items): (Vec<ItemRecord>, Vec<ItemRecord>) = items.into_iter().partition(|i| {
        p.run.plan_run_id.is_some()
            && i.snapshot.is_none()
            && i.key
                .as_ref()
                .is_some_and(|k| !by_key.contains_key(&k.normalized()))
    });
    let gone = gone.into_iter().map(|item| {
        let key = item.key.as_ref().map_or("", |k| k.value());
        let verdict = Verdict::Block {
            reason: Reason::ChangedSincePlan,
            detail: format!("deleted since the plan: no user with id {key} in the tenant now"),
        };
        (item, verdict)
    });
    let gone: Vec<(ItemRecord, Verdict)> = gone.collect();
    let found: Vec<(i64, Option<&User>)> = items
        .iter()
        .filter(|i| i.snapshot.is_none())
        .map(|i| {
            (
                i.id,
                i.key.as_ref().and_then(|k| by_key.get(&k.normalized())),
            )
        })
        .collect();
    let mut outcomes = p
        .queue
        .record_lookups(&found)?
        .into_iter()
        .zip(found.iter().map(|&(_, u)| u));
    let mut ready = Vec::with_capacity(items.len());
    for mut item in items {
        if item.snapshot.is_none() {
            let (outcome, found) = outcomes.next().expect("one outcome per looked-up item");
            if outcome != LookupOutcome::Found {
                p.progress.item_done(&p.queue, item.id);
                continue;
            }
            item.snapshot = found.cloned();
            item.user_id = found.map(|u| u.id.clone());
        }
        ready.push(item);
    }

    let facts = facts.for_chunk(&p.queue, &ready)?;
    let verdicts = ready
        .into_iter()
        .filter_map(|item| {
            let user = item.snapshot.as_ref()?;
            let verdict = validate_with(
                user,
                item.external_email.as_deref(),
                &facts,
                pass.options().set_mail,
            );
            Some((item, verdict))
        })
        .collect();
    let mut verdicts = against_plan(pass, verdicts)?;
    verdicts.splice(0..0, gone);
    Ok(verdicts)
}

/// `apply`: a user who changed since the approved dry run is not converted, whatever the checks
/// say now (see [`crate::drift`]). Runs without a plan pass through unchanged.
fn against_plan(
    pass: &Pass,
    verdicts: Vec<(ItemRecord, Verdict)>,
) -> crate::queue::Result<Vec<(ItemRecord, Verdict)>> {
    let p = &pass.pipeline;
    if p.run.plan_run_id.is_none() {
        return Ok(verdicts);
    }
    let ids: Vec<i64> = verdicts.iter().map(|(i, _)| i.id).collect();
    let plans = p.queue.plan_snapshots(&ids)?;
    Ok(verdicts
        .into_iter()
        .map(|(item, verdict)| {
            let drift = match (plans.get(&item.id), item.snapshot.as_ref()) {
                (Some(plan), Some(now)) => crate::drift::changed_since_plan(
                    &plan.user,
                    plan.email.as_deref(),
                    now,
                    &verdict,
                ),
                _ => None,
            };
            match drift {
                Some(detail) => (
                    item,
                    Verdict::Block {
                        reason: crate::item::Reason::ChangedSincePlan,
                        detail,
                    },
                ),
                None => (item, verdict),
            }
        })
        .collect())
}

/// The invitation for one item: run options, overridden per row.
pub fn invitation_request(
    item: &ItemRecord,
    email: &str,
    options: &RunOptions,
) -> InvitationRequest {
    let o = &item.overrides;
    let send = o.send_invitation_message.unwrap_or(!options.silent);
    let language = o
        .message_language
        .clone()
        .or_else(|| options.message_language.clone());
    let body = o
        .customized_message_body
        .clone()
        .or_else(|| options.message_body.clone());
    let cc = o.cc_recipient.clone().or_else(|| options.cc.clone());
    let info =
        (language.is_some() || body.is_some() || cc.is_some()).then(|| InvitedUserMessageInfo {
            message_language: language,
            customized_message_body: body,
            cc_recipients: cc.map(|address| {
                vec![Recipient {
                    email_address: EmailAddress {
                        name: None,
                        address,
                    },
                }]
            }),
        });
    InvitationRequest {
        invited_user_email_address: email.to_string(),
        invite_redirect_url: o
            .invite_redirect_url
            .clone()
            .unwrap_or_else(|| options.redirect_url.clone()),
        send_invitation_message: Some(send),
        invited_user: item.user_id.clone().map(|id| InvitedUserRef { id }),
        invited_user_message_info: info,
        ..Default::default()
    }
}

/// Resolves every item a previous process left `in_flight`: the executor re-reads the user and
/// the planner decides whether the step in flight took effect. Never sends anything.
async fn reconcile_in_flight(pass: &Pass, ops: &ConvertOps) -> anyhow::Result<()> {
    let p = &pass.pipeline;
    let run_id = p.run.id;
    let items = db(&p.queue, move |q| q.in_flight_items(run_id)).await?;
    if items.is_empty() {
        return Ok(());
    }
    tracing::info!(count = items.len(), "reconciling items left in flight");
    for item in items {
        let has_user = item.user_id.is_some();
        let id = item.id;
        let row = db(&p.queue, move |q| q.steps(id)).await?;
        let step = row
            .as_ref()
            .and_then(|r| r.in_flight.as_deref())
            .and_then(Step::parse)
            .unwrap_or(Step::Invite);
        let email = match (step, &row) {
            (Step::SetMail, Some(r)) => r.mail_to.clone().unwrap_or_default(),
            _ => item.external_email.clone().unwrap_or_default(),
        };
        let (mut it, mut plan) = ConvertItem::load(&p.queue, item, email, pass.options()).await?;
        match executor::reconcile_item(ops, &mut it, &mut plan, Some(step), has_user).await? {
            Settled::Stopped(reason) => {
                pass.stop_with(reason);
                return Ok(());
            }
            Settled::Recorded | Settled::Unresolved => {}
        }
    }
    Ok(())
}

/// Converts one item: the executor carries out the planner's actions until it leaves.
async fn convert(
    pass: &Pass,
    ops: &ConvertOps,
    item: ItemRecord,
    email: String,
) -> anyhow::Result<()> {
    let (mut it, mut plan) = ConvertItem::load(&ops.queue, item, email, pass.options()).await?;
    match executor::work_item(ops, &mut it, &mut plan, || pass.stopping()).await? {
        Settled::Recorded => {}
        Settled::Unresolved => {
            pass.unresolved.fetch_add(1, Ordering::Relaxed);
        }
        Settled::Stopped(reason) => pass.stop_with(reason),
    }
    Ok(())
}

/// How a run's items ended, for the exit code.
pub fn needs_attention(queue: &Queue, run_id: i64) -> anyhow::Result<bool> {
    let c = queue.counts(run_id)?;
    Ok(c.state(ItemState::Blocked) + c.state(ItemState::Failed) + c.state(ItemState::InFlight) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Overrides, UserKey};

    fn item(overrides: Overrides) -> ItemRecord {
        ItemRecord {
            id: 1,
            run_id: 1,
            line: Some(2),
            key: Some(UserKey::Id("u1".into())),
            user_id: Some("u1".into()),
            user_principal_name: None,
            display_name: None,
            user_type: None,
            external_email: None,
            overrides,
            state: ItemState::Pending,
            reason: None,
            detail: None,
            attempts: 0,
            snapshot: None,
            error_code: None,
            error_message: None,
            request_id: None,
            client_request_id: None,
            invitation_id: None,
            invitation_status: None,
            reconciled: false,
            updated_at: String::new(),
        }
    }

    #[test]
    fn a_stop_names_the_items_left_in_flight_only_when_there_are_some() {
        assert_eq!(unknown_left(0), "");
        let two = unknown_left(2);
        assert!(two.contains("2 item(s)"), "{two}");
        assert!(two.contains("stay in_flight"), "{two}");
        assert!(two.contains("`resume` re-reads"), "{two}");
    }

    #[test]
    fn silent_run_sends_no_message_unless_a_row_says_so() {
        let options = RunOptions {
            silent: true,
            ..Default::default()
        };
        let plain = invitation_request(&item(Overrides::default()), "a@f.com", &options);
        assert_eq!(plain.send_invitation_message, Some(false));
        assert_eq!(plain.invited_user.unwrap().id, "u1");
        assert!(plain.invited_user_message_info.is_none());
        let row = Overrides {
            send_invitation_message: Some(true),
            cc_recipient: Some("boss@f.com".into()),
            invite_redirect_url: Some("https://apps.example".into()),
            ..Default::default()
        };
        let req = invitation_request(&item(row), "a@f.com", &options);
        assert_eq!(req.send_invitation_message, Some(true));
        assert_eq!(req.invite_redirect_url, "https://apps.example");
        let cc = req
            .invited_user_message_info
            .unwrap()
            .cc_recipients
            .unwrap();
        assert_eq!(cc.len(), 1);
        assert_eq!(cc[0].email_address.address, "boss@f.com");
    }
}
