//! The one executor every pass over users runs on: `run`/`resume`/`retry` (convert), `resend`,
//! `retire`, `restore` and `rollback`.
//!
//! A pass declares, through [`PassOps`], how each of its steps' requests is sent, how the user
//! as Graph now holds it shows whether a step took effect (its re-read), and how each outcome is
//! recorded in the queue. The passes whose records are entries of their own table (resend,
//! retire, the back-outs) declare it through [`EntryPass`] instead, which records every batch of
//! writes in one transaction, and [`EntryWork`], which [`work_entries`] works the same way for
//! all of them. The [`planner`](super::planner) decides; this module only carries out its
//! actions, in the same order for every pass:
//!
//! - the item is checkpointed `in_flight` (fenced by the lease) before a request may leave;
//! - an attempt is charged only when the request may have reached Graph;
//! - an unknown outcome (lost answer, timeout, 5xx) or a refusal that may mean "done already"
//!   is followed by a re-read, never by a blind resend;
//! - a request that never left, or a tenant refusal, stops the run;
//! - the pause between attempts at a user is the one retry policy's (`graph::retry::delay`);
//! - a write the lease no longer allows stops this process's pass without writing anything.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::graph::{GraphClient, GraphError, ResponseMeta};
use crate::item::ItemRecord;
use crate::model::User;
use crate::progress::Progress;
use crate::queue::pass::{EntryChange, EntryKey, EntryState, PassUser};
use crate::queue::{Queue, QueueError, Trace};

use super::convert::db;
use super::planner::{Action, Answer, ItemPlan, Leave, Reread, Step, StopReason};

/// How an item left the executor in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Recorded done, failed or skipped, or back to `pending` for a later pass.
    Recorded,
    /// The outcome is unknown and the user could not be read: it stays `in_flight` for the
    /// next process's reconciliation.
    Unresolved,
    /// The whole pass stops (tenant refusal, Graph unreachable, lease lost).
    Stopped(StopReason),
}

/// How a pass's steps reach Graph: each step's request, and the re-read that shows whether it
/// took effect. `Item` is what the pass knows about one user while working it.
pub trait PassRequests: Sync {
    type Item: Send;

    /// Sends `step`'s request. Keeps what the pass needs of the answer in `item`.
    fn send(
        &self,
        item: &mut Self::Item,
        step: Step,
    ) -> impl Future<Output = Result<ResponseMeta, GraphError>> + Send;

    /// Reads the user back: did `step` take effect?
    fn reread(&self, item: &Self::Item, step: Step) -> impl Future<Output = Reread> + Send;
}

/// What one pass declares for the executor: its requests and re-reads ([`PassRequests`]), and
/// its records. Every record is a small queue write; the checkpoint and every state change are
/// fenced by the lease (`QueueError::LeaseLost`).
pub trait PassOps: PassRequests {
    /// Records `writes`, in order, in as few write transactions as the pass's queue rows allow
    /// (the executor hands over what exactly-once lets it join: an attempt's charge with the
    /// step's result, a step done with the next step's checkpoint or the item's end; a
    /// checkpoint `in_flight` is always a batch of its own, recorded before the request
    /// leaves). The first write refused stops the rest.
    fn record(
        &self,
        item: &mut Self::Item,
        writes: Vec<Write>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// One queue write the executor asks of a pass: [`PassOps::record`] gets them in order, a few
/// at a time.
#[derive(Debug, Clone)]
pub enum Write {
    /// Checkpoints `in_flight` at the step: after this a request may leave.
    Checkpoint(Step),
    /// One more request at the step that may have reached Graph.
    Charge,
    /// The last error of an item whose outcome is unknown, kept where it is.
    NoteUnknown {
        code: String,
        message: String,
        meta: Option<ResponseMeta>,
    },
    /// Checkpoints the step done.
    StepDone(Step),
    /// Every step asked for is done; the last answer's meta (none when reconciled).
    Done(Option<ResponseMeta>),
    /// Nothing took effect: the item waits for a later attempt or pass.
    BackToPending,
    /// Graph refused the step for good.
    Failed {
        code: String,
        message: String,
        meta: Option<ResponseMeta>,
    },
    /// The re-read shows the step is moot (why).
    Skipped(String),
}

impl Write {
    /// Whether the write is the user's end in the pass: done, failed or skipped.
    pub fn ends_item(&self) -> bool {
        matches!(
            self,
            Write::Done(_) | Write::Failed { .. } | Write::Skipped(_)
        )
    }
}

/// Reduces a Graph failure of `step`'s request to what the planner decides on.
pub fn answer_of(step: Step, e: &GraphError) -> Answer {
    match e {
        GraphError::Api { code, message, .. } => super::planner::refusal(step, code, message),
        GraphError::TenantRefused { message, .. } => Answer::TenantRefused {
            message: message.clone(),
        },
        GraphError::NotSent { message } => Answer::NotSent {
            message: message.clone(),
        },
        // Retries ran out on something that may have reached Graph: the outcome is unknown.
        GraphError::Unknown { message, .. } | GraphError::Exhausted { message, .. } => {
            Answer::Unknown {
                code: "UnknownOutcome".into(),
                message: message.clone(),
            }
        }
        other => Answer::Refused {
            code: other.code().unwrap_or("Error").to_string(),
            message: other.to_string(),
        },
    }
}

/// Sorts a failed re-read of the user.
pub fn reread_error(user_id: &str, e: GraphError) -> Reread {
    match e {
        GraphError::TenantRefused { message, .. } => Reread::TenantRefused { message },
        GraphError::NotSent { message } => Reread::NotSent { message },
        e => Reread::Unreadable {
            message: format!("re-reading user {user_id}: {e}"),
        },
    }
}

/// A write the lease refused: this process lost the run and stops without writing more.
fn lease_lost(e: &anyhow::Error) -> Option<StopReason> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<QueueError>())
        .any(|q| matches!(q, QueueError::LeaseLost { .. }))
        .then_some(StopReason::LeaseLost)
}

/// Runs a queue write; a refusal by the lease ends the item's work as a stop of the pass.
macro_rules! fenced {
    ($write:expr) => {
        match $write.await {
            Ok(v) => v,
            Err(e) => match lease_lost(&e) {
                Some(reason) => return Ok(Settled::Stopped(reason)),
                None => return Err(e),
            },
        }
    };
}

/// Works one item through its pass's steps until it leaves the executor. `stopping` is asked
/// before each decision that depends on it (Ctrl-C, another item's stop).
///
/// Writes are gathered and recorded together right before the next thing that needs them
/// on disk: a request (its checkpoint must be committed first), a re-read, a pause, or the
/// item leaving the executor. So an accepted step costs its checkpoint and one transaction
/// holding its charge, its done mark and the next step's checkpoint (or the item's end): a
/// process killed in between leaves the item `in_flight` at the step, which `resume` re-reads
/// as it would after a kill just before the charge.
pub async fn work_item<P: PassOps>(
    ops: &P,
    item: &mut P::Item,
    plan: &mut ItemPlan,
    stopping: impl Fn() -> bool + Sync,
) -> anyhow::Result<Settled> {
    let mut last_meta: Option<ResponseMeta> = None;
    let mut writes: Vec<Write> = Vec::new();
    let mut action = plan.start();
    // Records the gathered writes in one call; a refusal by the lease stops the pass.
    macro_rules! flush {
        () => {
            if !writes.is_empty() {
                fenced!(ops.record(item, std::mem::take(&mut writes)));
            }
        };
    }
    loop {
        action = match action {
            Action::Send(step) => {
                writes.push(Write::Checkpoint(step));
                flush!();
                let answer = match ops.send(item, step).await {
                    Ok(meta) => {
                        last_meta = Some(meta);
                        Answer::Accepted
                    }
                    Err(e) => {
                        last_meta = e.meta().cloned();
                        answer_of(step, &e)
                    }
                };
                if super::planner::charges_attempt(&answer) {
                    writes.push(Write::Charge);
                }
                if let Answer::Unknown { code, message } = &answer {
                    writes.push(Write::NoteUnknown {
                        code: code.clone(),
                        message: message.clone(),
                        meta: last_meta.clone(),
                    });
                }
                plan.answered(step, answer, stopping())
            }
            Action::Reread(step) => {
                // The charge (and the unknown answer) are on disk before the wait for Graph.
                flush!();
                let seen = ops.reread(item, step).await;
                plan.reread(step, &seen, stopping())
            }
            Action::StepDone { step, reconciled } => {
                if reconciled {
                    tracing::info!(step = step.as_str(), "answer lost but the step took effect");
                }
                writes.push(Write::StepDone(step));
                plan.step_done(step)
            }
            Action::RecordDone => {
                writes.push(Write::Done(last_meta.take()));
                flush!();
                return Ok(Settled::Recorded);
            }
            Action::Retry(step) => {
                writes.push(Write::BackToPending);
                flush!();
                tokio::time::sleep(crate::graph::retry::delay(plan.attempts_made())).await;
                Action::Send(step)
            }
            Action::BackToPending => {
                writes.push(Write::BackToPending);
                flush!();
                return Ok(Settled::Recorded);
            }
            Action::Fail { code, message } => {
                writes.push(Write::Failed {
                    code,
                    message,
                    meta: last_meta.take(),
                });
                flush!();
                return Ok(Settled::Recorded);
            }
            Action::Skip { why } => {
                writes.push(Write::Skipped(why));
                flush!();
                return Ok(Settled::Recorded);
            }
            Action::LeaveInFlight => {
                flush!();
                // Unknown and unknowable for now: never resend blind. The next process reconciles.
                tracing::warn!("cannot re-read user; item stays in flight");
                return Ok(Settled::Unresolved);
            }
            Action::StopRun {
                reason,
                item: leave,
            } => {
                if leave == Leave::Pending {
                    writes.push(Write::BackToPending);
                }
                flush!();
                return Ok(Settled::Stopped(reason));
            }
        };
    }
}

/// Settles an item a previous process left `in_flight` at `step`, from a re-read of the user
/// (`has_user` false: nothing can have been sent for it). `step` `None`: the item was left
/// between two steps (the last one checkpointed done, the next not yet in flight), so nothing
/// is on the wire and no re-read is needed. Never sends anything.
pub async fn reconcile_item<P: PassOps>(
    ops: &P,
    item: &mut P::Item,
    plan: &mut ItemPlan,
    step: Option<Step>,
    has_user: bool,
) -> anyhow::Result<Settled> {
    let mut action = match step {
        None => plan.between_steps(),
        Some(step) => {
            let seen = match has_user {
                true => Some(ops.reread(item, step).await),
                false => None,
            };
            plan.resumed(step, seen.as_ref())
        }
    };
    // The step shown done and what follows from it are recorded together.
    let mut writes = Vec::new();
    if let Action::StepDone { step, .. } = action {
        writes.push(Write::StepDone(step));
        action = plan.resumed_step_done(step);
    }
    let (end, settled) = match action {
        Action::RecordDone => (Some(Write::Done(None)), Settled::Recorded),
        Action::BackToPending => (Some(Write::BackToPending), Settled::Recorded),
        Action::Skip { why } => (Some(Write::Skipped(why)), Settled::Recorded),
        Action::Fail { code, message } => (
            Some(Write::Failed {
                code,
                message,
                meta: None,
            }),
            Settled::Recorded,
        ),
        Action::StopRun { reason, .. } => (None, Settled::Stopped(reason)),
        other => unreachable!("the planner never plans {other:?} at resume"),
    };
    writes.extend(end);
    if !writes.is_empty() {
        fenced!(ops.record(item, writes));
    }
    Ok(settled)
}

/// How a pass over its entries ended in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassEnd {
    /// Nothing pending is left (or `--limit` was reached).
    Done,
    /// Ctrl-C: the requests on the wire were finished and recorded.
    Interrupted,
    /// Stopped for the whole pass (tenant refusal, Graph unreachable, lease lost).
    Stopped(StopReason),
}

/// Why a pass's workers stop: Ctrl-C, or the first reason one of them gave for the whole pass.
/// Shared by every worker of the pass, so one worker's stop ends the others' before their next
/// user.
struct PassStop {
    stop: watch::Receiver<bool>,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl PassStop {
    fn new(stop: watch::Receiver<bool>) -> PassStop {
        PassStop {
            stop,
            reason: Arc::default(),
        }
    }

    /// Whether no more user is to be started.
    fn stopping(&self) -> impl Fn() -> bool + Clone + Send + Sync + 'static {
        let (stop, reason) = (self.stop.clone(), self.reason.clone());
        move || *stop.borrow() || reason.lock().map_or(true, |r| r.is_some())
    }

    /// How the pass ended in this process, once its workers are done.
    fn end(self) -> PassEnd {
        let reason = self.reason.lock().unwrap_or_else(|p| p.into_inner()).take();
        match reason {
            Some(reason) => PassEnd::Stopped(reason),
            None if *self.stop.borrow() => PassEnd::Interrupted,
            None => PassEnd::Done,
        }
    }
}

/// The pass stops when the bulk re-read of a chunk fails: a tenant refusal or an unreachable
/// Graph as such, anything else as an error saying what was being `doing`.
fn chunk_read_stopped(e: GraphError, doing: &str) -> PassEnd {
    PassEnd::Stopped(match e {
        GraphError::TenantRefused { message, .. } => StopReason::TenantRefused(message),
        GraphError::NotSent { message } => StopReason::Unreachable(message),
        other => StopReason::Error(format!("{doing}: {other}")),
    })
}

/// What a pass over users works with: the run's queue, its Graph client (requests gated by the
/// lease) and the invocation's progress bar.
#[derive(Clone)]
pub struct PassContext {
    pub queue: Arc<Queue>,
    pub graph: GraphClient,
    pub progress: Arc<Progress>,
}

impl PassContext {
    /// The item an entry of the pass names (`what` names the pass in the error of a vanished
    /// one).
    pub async fn item(&self, item_id: i64, what: &str) -> anyhow::Result<ItemRecord> {
        db(&self.queue, move |q| q.item(item_id))
            .await?
            .with_context(|| format!("a {what} names a vanished item"))
    }

    /// Re-reads the user `user_id` after an unknown outcome and lets `judge` read what it shows
    /// (`None`: gone); a read that fails is sorted by [`reread_error`].
    pub async fn reread_user(
        &self,
        user_id: &str,
        judge: impl FnOnce(Option<&User>) -> Reread,
    ) -> Reread {
        match self.graph.get_user(user_id).await {
            Ok(u) => judge(u.as_ref()),
            Err(e) => reread_error(user_id, e),
        }
    }
}

/// A pass whose records are changes of the user's entry in the pass's own table (resend,
/// retire, the back-outs). It says which change each of the executor's writes makes; the
/// bookkeeping is then the same for all of them: each batch the executor hands over is ONE
/// write transaction ([`Queue::change_entry`]), and the progress bar moves once per user ended.
pub trait EntryPass: PassRequests<Item: Sync> {
    /// The states of the pass's table.
    type State: EntryState;

    fn context(&self) -> &PassContext;
    /// The entry `item` is.
    fn key(&self, item: &Self::Item) -> EntryKey;

    /// The checkpoint of `step`, readying `item` for its request.
    fn in_flight(
        &self,
        item: &mut Self::Item,
        step: Step,
    ) -> anyhow::Result<EntryChange<Self::State>>;

    /// `step` done (`None`: nothing to record, the end of a one-step pass is its checkpoint).
    fn step_done(&self, item: &Self::Item, step: Step) -> Option<EntryChange<Self::State>>;

    /// Every step asked for is done; `meta` is the last answer's (none when reconciled).
    fn done(&self, item: &Self::Item, meta: Option<&ResponseMeta>) -> EntryChange<Self::State>;

    fn failed(
        &self,
        item: &Self::Item,
        code: &str,
        message: &str,
        meta: Option<&ResponseMeta>,
    ) -> EntryChange<Self::State>;

    fn skipped(&self, item: &Self::Item, why: &str) -> EntryChange<Self::State>;

    /// Records `change` for an entry the pass leaves without working it (the chunk's re-read
    /// showed nothing to do, or it cannot be worked) and moves the bar past it.
    fn leave(
        &self,
        key: EntryKey,
        change: EntryChange<Self::State>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async move {
            let cx = self.context();
            db(&cx.queue, move |q| q.change_entry(&key, &[change])).await?;
            cx.progress.inc(1);
            Ok(())
        }
    }
}

/// Makes `changes` to `item`'s entry in one write transaction, then moves the bar past the
/// users `ended`.
async fn change_entry<P: EntryPass>(
    ops: &P,
    item: &P::Item,
    changes: Vec<EntryChange<P::State>>,
    ended: u64,
) -> anyhow::Result<()> {
    let cx = ops.context();
    if !changes.is_empty() {
        let key = ops.key(item);
        db(&cx.queue, move |q| q.change_entry(&key, &changes)).await?;
    }
    cx.progress.inc(ended);
    Ok(())
}

impl<P: EntryPass> PassOps for P {
    /// The whole batch is one write transaction: the entry's changes in order.
    async fn record(&self, item: &mut P::Item, writes: Vec<Write>) -> anyhow::Result<()> {
        let mut changes = Vec::with_capacity(writes.len());
        let mut ended = 0;
        for write in writes {
            ended += u64::from(write.ends_item());
            let change = match write {
                Write::Checkpoint(step) => Some(self.in_flight(item, step)?),
                Write::Charge => Some(EntryChange::charge()),
                Write::NoteUnknown {
                    code,
                    message,
                    meta,
                } => {
                    let request_id = meta.as_ref().and_then(|m| m.request_id.as_deref());
                    Some(EntryChange::note_error(&code, &message, request_id))
                }
                Write::StepDone(step) => EntryPass::step_done(self, item, step),
                Write::Done(meta) => Some(self.done(item, meta.as_ref())),
                Write::BackToPending => Some(EntryChange::back_to_pending()),
                Write::Failed {
                    code,
                    message,
                    meta,
                } => Some(self.failed(item, &code, &message, meta.as_ref())),
                Write::Skipped(why) => Some(self.skipped(item, &why)),
            };
            changes.extend(change);
        }
        change_entry(self, item, changes, ended).await
    }
}

/// The request and client-request ids of an answer, as the queue records them.
pub fn trace_of(meta: Option<&ResponseMeta>) -> Trace {
    Trace {
        request_id: meta.and_then(|m| m.request_id.clone()),
        client_request_id: meta.map(|m| m.client_request_id.clone()),
    }
}

/// Users read in bulk, found by object id whatever its case.
pub struct UsersById(HashMap<String, User>);

impl UsersById {
    /// Reads the users of `ids` (15 a filter, 20 filters a `$batch`).
    pub async fn read(graph: &GraphClient, ids: &[String]) -> Result<UsersById, GraphError> {
        let found = graph.users_by_ids(ids).await?;
        Ok(UsersById(
            found
                .into_iter()
                .map(|u| (u.id.to_lowercase(), u))
                .collect(),
        ))
    }

    /// The user of object id `id`, if Graph returned it.
    pub fn get(&self, id: &str) -> Option<&User> {
        self.0.get(&id.to_lowercase())
    }
}

/// Users re-read together just before they are worked: one `$batch` of 20 × 15 ids.
const CHUNK: usize = 300;

/// How a pass over its table's entries is worked, once [`work_entries`] has them: which step
/// an entry was left in flight at, the item and plan the executor works, and what the bulk
/// re-read of each chunk just before it is worked means for its entries.
pub trait EntryWork: EntryPass + Send + Sized + 'static {
    /// An entry as the pass's table holds it.
    type Entry: Clone + Send + 'static;
    /// The pass, as a panicked worker's error names it.
    const NAME: &'static str;
    /// What the pass is doing when a chunk's re-read fails.
    const READING: &'static str;
    /// Whether `--limit` counts the users a chunk's re-read leaves alone too (users taken, by
    /// default), or only those worked.
    const LIMIT_COUNTS_LEFT_ALONE: bool = true;

    /// The pass's entries in `state`, in item order.
    fn entries(
        &self,
        state: Self::State,
    ) -> impl Future<Output = anyhow::Result<Vec<Self::Entry>>> + Send;

    /// The entry's user: its item, and the object id a re-read can find it by (if it has one).
    fn user(entry: &Self::Entry) -> &PassUser;

    /// The step an entry in flight was checkpointed at (`None`: between two steps).
    fn in_flight_step(entry: &Self::Entry) -> Option<Step>;

    /// The item and plan the executor works for `entry` (`None`: nothing to work, the entry
    /// is recorded already).
    fn prepare(
        &self,
        entry: Self::Entry,
    ) -> impl Future<Output = anyhow::Result<Option<(Self::Item, ItemPlan)>>> + Send;

    /// Sorts a chunk by what its users, re-read in bulk just before they are worked, show:
    /// records those the pass leaves alone and returns the others (as now checkpointed).
    fn sort_chunk(
        &self,
        chunk: Vec<Self::Entry>,
        now: &UsersById,
    ) -> impl Future<Output = anyhow::Result<Vec<Self::Entry>>> + Send;
}

/// Which of a pass's users one invocation works, and how.
#[derive(Debug, Clone, Default)]
pub struct PassScope {
    /// Users worked at once, through the run's shared limiter.
    pub concurrency: usize,
    /// `--limit`: at most this many users.
    pub limit: Option<u64>,
    /// `--only`: just the entries of these items.
    pub only: Option<BTreeSet<i64>>,
}

/// Works a pass over its entries: those a killed process left in flight are decided first
/// (never sent blind), then the pending ones of `scope`, a chunk at a time, each chunk re-read
/// in bulk just before it is worked.
pub async fn work_entries<P: EntryWork>(
    ops: Arc<P>,
    scope: PassScope,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<PassEnd> {
    let _driving = crate::queue::threads::driving_tasks();
    if let Some(reason) = reconcile_in_flight(&ops).await? {
        return Ok(PassEnd::Stopped(reason));
    }
    let pass_stop = PassStop::new(stop);
    let stopping = pass_stop.stopping();
    let mut budget = scope.limit.unwrap_or(u64::MAX);
    let mut pending = ops.entries(P::State::PENDING).await?;
    if let Some(only) = &scope.only {
        pending.retain(|e| only.contains(&P::user(e).item_id));
    }
    for chunk in pending.chunks(CHUNK) {
        if stopping() || budget == 0 {
            break;
        }
        let mut chunk = chunk.to_vec();
        chunk.truncate(usize::try_from(budget).unwrap_or(usize::MAX));
        let taken = chunk.len();
        let ids: Vec<String> = chunk
            .iter()
            .filter_map(|e| P::user(e).user_id.clone())
            .collect();
        let now = match UsersById::read(&ops.context().graph, &ids).await {
            Ok(now) => now,
            Err(e) => return Ok(chunk_read_stopped(e, P::READING)),
        };
        let chunk = ops.sort_chunk(chunk, &now).await?;
        let counted = if P::LIMIT_COUNTS_LEFT_ALONE {
            taken
        } else {
            chunk.len()
        };
        budget = budget.saturating_sub(counted as u64);
        work_chunk(&ops, chunk, scope.concurrency, &pass_stop).await?;
    }
    Ok(pass_stop.end())
}

/// Settles every entry a killed process left in flight, from a re-read; the reason the pass
/// stops, if one of them stops it.
async fn reconcile_in_flight<P: EntryWork>(ops: &Arc<P>) -> anyhow::Result<Option<StopReason>> {
    for entry in ops.entries(P::State::IN_FLIGHT).await? {
        let (step, has_user) = (P::in_flight_step(&entry), P::user(&entry).user_id.is_some());
        let Some((mut it, mut plan)) = ops.prepare(entry).await? else {
            continue;
        };
        if let Settled::Stopped(reason) =
            reconcile_item(&**ops, &mut it, &mut plan, step, has_user).await?
        {
            return Ok(Some(reason));
        }
    }
    Ok(None)
}

/// Works one chunk of a pass's entries, `concurrency` workers at a time, until the chunk is
/// empty or the pass stops. A reason a worker stops the pass for is kept in `pass_stop`.
async fn work_chunk<P: EntryWork>(
    ops: &Arc<P>,
    chunk: Vec<P::Entry>,
    concurrency: usize,
    pass_stop: &PassStop,
) -> anyhow::Result<()> {
    let queue = Arc::new(tokio::sync::Mutex::new(VecDeque::from(chunk)));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (ops, queue) = (ops.clone(), queue.clone());
        let (stopping, stop_reason) = (pass_stop.stopping(), pass_stop.reason.clone());
        workers.spawn(async move {
            loop {
                if stopping() {
                    break;
                }
                let Some(entry) = queue.lock().await.pop_front() else {
                    break;
                };
                let Some((mut it, mut plan)) = ops.prepare(entry).await? else {
                    continue;
                };
                let settled = work_item(&*ops, &mut it, &mut plan, &stopping).await?;
                if let Settled::Stopped(reason) = settled {
                    let mut r = stop_reason.lock().unwrap_or_else(|p| p.into_inner());
                    r.get_or_insert(reason);
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.with_context(|| format!("a {} worker panicked", P::NAME))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::workers::planner::{Checkpoint, Pass};

    /// A pass whose Graph answers and re-reads are scripted, and whose records are a journal.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Result<ResponseMeta, GraphError>>>,
        rereads: Mutex<VecDeque<Reread>>,
        journal: Mutex<Vec<String>>,
        /// The lease refuses every write from the n-th on.
        lease_lost_after: Option<usize>,
    }

    impl Scripted {
        fn new(answers: Vec<Result<ResponseMeta, GraphError>>, rereads: Vec<Reread>) -> Self {
            Scripted {
                answers: Mutex::new(answers.into()),
                rereads: Mutex::new(rereads.into()),
                ..Scripted::default()
            }
        }
        fn write(&self, what: String) -> anyhow::Result<()> {
            let mut j = self.journal.lock().unwrap();
            let writes = j
                .iter()
                .filter(|e| !e.starts_with("send") && !e.starts_with("reread"))
                .count();
            if self.lease_lost_after.is_some_and(|n| writes >= n) {
                return Err(QueueError::LeaseLost { run_id: 1 }.into());
            }
            j.push(what);
            Ok(())
        }
        fn journal(&self) -> Vec<String> {
            self.journal.lock().unwrap().clone()
        }
    }

    impl PassRequests for Scripted {
        type Item = ();
        async fn send(&self, _: &mut (), step: Step) -> Result<ResponseMeta, GraphError> {
            self.journal
                .lock()
                .unwrap()
                .push(format!("send {}", step.as_str()));
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted answer")
        }
        async fn reread(&self, _: &(), step: Step) -> Reread {
            self.journal
                .lock()
                .unwrap()
                .push(format!("reread {}", step.as_str()));
            self.rereads
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted re-read")
        }
    }

    impl PassOps for Scripted {
        /// One journal line per write, each a write of its own (a lease lost mid-batch stops
        /// the rest, as a refused transaction would).
        async fn record(&self, _: &mut (), writes: Vec<Write>) -> anyhow::Result<()> {
            for write in writes {
                self.write(match write {
                    Write::Checkpoint(step) => format!("checkpoint {}", step.as_str()),
                    Write::Charge => "charge".into(),
                    Write::NoteUnknown { code, .. } => format!("note {code}"),
                    Write::StepDone(step) => format!("done {}", step.as_str()),
                    Write::Done(_) => "record done".into(),
                    Write::BackToPending => "pending".into(),
                    Write::Failed { code, .. } => format!("failed {code}"),
                    Write::Skipped(why) => format!("skipped {why}"),
                })?;
            }
            Ok(())
        }
    }

    fn ok() -> Result<ResponseMeta, GraphError> {
        Ok(ResponseMeta::default())
    }
    fn lost() -> Result<ResponseMeta, GraphError> {
        Err(GraphError::Unknown {
            message: "answer lost".into(),
            meta: ResponseMeta::default(),
        })
    }
    fn refused(message: &str) -> Result<ResponseMeta, GraphError> {
        Err(GraphError::Api {
            status: 400,
            code: "BadRequest".into(),
            message: message.into(),
            meta: ResponseMeta::default(),
        })
    }
    fn not_sent() -> Result<ResponseMeta, GraphError> {
        Err(GraphError::NotSent {
            message: "http://127.0.0.1:9 refused".into(),
        })
    }
    async fn drive(ops: &Scripted, cp: Checkpoint) -> Settled {
        let mut plan = ItemPlan::new(cp, 0, 3);
        work_item(ops, &mut (), &mut plan, || false).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn every_request_is_checkpointed_first_and_charged_once_answered() {
        let ops = Scripted::new(vec![ok(), ok()], vec![]);
        let cp = Checkpoint::convert(false, false, false, true, false);
        assert_eq!(drive(&ops, cp).await, Settled::Recorded);
        assert_eq!(
            ops.journal(),
            [
                "checkpoint invite",
                "send invite",
                "charge",
                "done invite",
                "checkpoint set_guest",
                "send set_guest",
                "charge",
                "done set_guest",
                "record done"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_is_re_read_before_anything_is_sent_again() {
        let ops = Scripted::new(vec![lost(), ok()], vec![Reread::NotDone]);
        let cp = Checkpoint::new(Pass::Resend, Pass::Resend.steps());
        assert_eq!(drive(&ops, cp).await, Settled::Recorded);
        assert_eq!(
            ops.journal(),
            [
                "checkpoint reinvite",
                "send reinvite",
                "charge",
                "note UnknownOutcome",
                "reread reinvite",
                "pending",
                "checkpoint reinvite",
                "send reinvite",
                "charge",
                "done reinvite",
                "record done"
            ]
        );
    }

    /// The invitation took effect after the tool re-read the user: the next attempt is refused
    /// as "already a B2B collaboration user", and the user decides — converted, not failed.
    #[tokio::test(start_paused = true)]
    async fn a_done_already_refusal_ends_done_not_failed() {
        let already = "User invitation failed. The user is already a B2B collaboration user; \
                       set resetRedemption to true to reset its redemption status.";
        let ops = Scripted::new(
            vec![lost(), refused(already)],
            vec![Reread::NotDone, Reread::Done],
        );
        let cp = Checkpoint::convert(false, false, false, false, false);
        assert_eq!(drive(&ops, cp).await, Settled::Recorded);
        let journal = ops.journal();
        assert_eq!(journal.last().unwrap(), "record done", "{journal:?}");
        assert!(
            !journal.iter().any(|e| e.starts_with("failed")),
            "{journal:?}"
        );
        assert_eq!(journal.iter().filter(|e| *e == "send invite").count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_left_stops_the_pass_uncharged() {
        let ops = Scripted::new(vec![not_sent()], vec![]);
        let cp = Checkpoint::new(Pass::Resend, Pass::Resend.steps());
        assert_eq!(
            drive(&ops, cp).await,
            Settled::Stopped(StopReason::Unreachable("http://127.0.0.1:9 refused".into()))
        );
        assert_eq!(
            ops.journal(),
            ["checkpoint reinvite", "send reinvite", "pending"]
        );
    }

    /// Graph's port closed as the invitation was written: the answer is cut off and the re-read
    /// is refused for the client's whole window. The run stops with the item still `in_flight`
    /// (no "pending" write, no second send): only a re-read at resume may decide it.
    #[tokio::test(start_paused = true)]
    async fn a_cut_off_answer_whose_user_cannot_be_read_stays_in_flight_and_stops() {
        let refused =
            "GET /v1.0/users/u1: cannot connect to http://127.0.0.1:9 (tried 3 times over 2 s)";
        let ops = Scripted::new(
            vec![lost()],
            vec![Reread::NotSent {
                message: refused.into(),
            }],
        );
        let cp = Checkpoint::convert(false, false, false, false, false);
        assert_eq!(
            drive(&ops, cp).await,
            Settled::Stopped(StopReason::Unreachable(refused.into()))
        );
        assert_eq!(
            ops.journal(),
            [
                "checkpoint invite",
                "send invite",
                "charge",
                "note UnknownOutcome",
                "reread invite"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_stops_the_item_before_its_next_request() {
        // The first step's three writes go through; the next checkpoint is refused.
        let ops = Scripted {
            lease_lost_after: Some(3),
            ..Scripted::new(vec![ok()], vec![])
        };
        let cp = Checkpoint::convert(false, false, false, true, false);
        assert_eq!(
            drive(&ops, cp).await,
            Settled::Stopped(StopReason::LeaseLost)
        );
        assert_eq!(
            ops.journal(),
            ["checkpoint invite", "send invite", "charge", "done invite"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn resume_reconciles_without_sending() {
        let ops = Scripted::new(vec![], vec![Reread::Done]);
        let mut plan = ItemPlan::new(Checkpoint::convert(false, false, false, true, false), 0, 3);
        let settled = reconcile_item(&ops, &mut (), &mut plan, Some(Step::Invite), true)
            .await
            .unwrap();
        assert_eq!(settled, Settled::Recorded);
        assert_eq!(ops.journal(), ["reread invite", "done invite", "pending"]);
    }

    /// A restore killed between its two steps (userType checkpointed done, mail not yet in
    /// flight) names no step in flight: it goes on with its next step, or ends done, without
    /// a re-read — never judged by another pass's step (a restore once read as a rollback was
    /// skipped "not redeemed" and left uncounted).
    #[tokio::test(start_paused = true)]
    async fn an_item_left_between_steps_goes_on_without_a_reread() {
        let ops = Scripted::new(vec![], vec![]);
        let mut plan = ItemPlan::new(Checkpoint::restore(true, true, true, false), 0, 3);
        let settled = reconcile_item(&ops, &mut (), &mut plan, None, true)
            .await
            .unwrap();
        assert_eq!(settled, Settled::Recorded);
        assert_eq!(ops.journal(), ["pending"]);

        let ops = Scripted::new(vec![], vec![]);
        let mut plan = ItemPlan::new(Checkpoint::restore(true, true, false, false), 0, 3);
        reconcile_item(&ops, &mut (), &mut plan, None, true)
            .await
            .unwrap();
        assert_eq!(ops.journal(), ["record done"]);
    }
}

/// A live run on an emulator whose users the convert pass converted, for the tests of the
/// passes that come after it (resend, retire, the back-outs).
#[cfg(test)]
pub(crate) mod on_emulator {
    use std::sync::Arc;

    use crate::emulator::{Emulator, EmulatorConfig, Tenant};
    use crate::graph::GraphClient;
    use crate::item::{ItemRecord, RunMode, RunOptions, SourceSpec, UserKey};
    use crate::model::User;
    use crate::progress::Progress;
    use crate::queue::{NewRun, Queue};
    use crate::workers::convert::{ConvertItem, ConvertOps};

    /// A converted run: the emulator holding its users, what a pass over them works with, and
    /// the run's items.
    pub struct Converted {
        pub emulator: Emulator,
        pub cx: super::PassContext,
        pub items: Vec<ItemRecord>,
        _dir: tempfile::TempDir,
    }

    /// The User Administrator role's template id.
    const USER_ADMINISTRATOR: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";

    /// A cloud-only member with a partner address: the plainest user to convert.
    fn member(n: usize) -> User {
        User {
            id: format!("00000000-0000-4000-8000-{n:012}"),
            user_principal_name: Some(format!("member{n}@contoso.com")),
            display_name: Some(format!("Member {n}")),
            mail: Some(format!("member{n}@fabrikam.example")),
            user_type: Some("Member".into()),
            account_enabled: Some(true),
            ..User::default()
        }
    }

    impl Converted {
        pub fn run_id(&self) -> i64 {
            self.items[0].run_id
        }
    }

    /// Works the pass of `ops` over all its entries, one user at a time, to its end, and
    /// returns the write transactions it cost (the queue's commit hook counts them).
    pub async fn write_transactions_of<P: super::EntryWork>(queue: &Queue, ops: P) -> u64 {
        let (_stop, stop) = tokio::sync::watch::channel(false);
        let scope = super::PassScope {
            concurrency: 1,
            ..super::PassScope::default()
        };
        let before = queue.write_transactions();
        let end = super::work_entries(Arc::new(ops), scope, stop)
            .await
            .unwrap();
        assert_eq!(end, super::PassEnd::Done);
        queue.write_transactions() - before
    }

    /// `n` members converted by a live run (`--set-guest` when `set_guest`), one at a time.
    pub async fn converted(n: usize, set_guest: bool) -> Converted {
        let mut tenant = Tenant::generate(1, 7);
        tenant.users = (1..=n).map(member).collect();
        let users = tenant.users.clone();
        let mut config = EmulatorConfig::new(tenant);
        // The app may do every pass: write passwords and revoke sessions as User Administrator.
        config.app_roles.extend(
            [
                "User-PasswordProfile.ReadWrite.All",
                "User.RevokeSessions.All",
            ]
            .map(String::from),
        );
        config.app_directory_roles = vec![USER_ADMINISTRATOR.into()];
        let options = RunOptions {
            set_guest,
            ..RunOptions::default()
        };
        let live = live_run(config, &options).await;
        let queue = live.queue;
        let cx = super::PassContext {
            queue: queue.clone(),
            graph: live.graph,
            progress: Arc::new(Progress::new("test", n as u64)),
        };
        let ops = ConvertOps {
            queue: queue.clone(),
            graph: cx.graph.clone(),
            progress: cx.progress.clone(),
        };
        let mut items = Vec::new();
        for (k, user) in users.iter().enumerate() {
            let id = looked_up(&queue, live.run_id, k, user);
            if set_guest {
                queue.plan_steps(id, None, true).unwrap();
            }
            let item = queue.item(id).unwrap().unwrap();
            let email = user.mail.clone().unwrap();
            let (mut it, mut plan) = ConvertItem::load(&queue, item, email, &options)
                .await
                .unwrap();
            super::work_item(&ops, &mut it, &mut plan, || false)
                .await
                .unwrap();
            items.push(queue.item(it.item.id).unwrap().unwrap());
        }
        Converted {
            emulator: live.emulator,
            cx,
            items,
            _dir: live.dir,
        }
    }

    /// A live run of `u.csv` with `options`, on a fresh emulator of `config`.
    pub struct LiveRun {
        pub emulator: Emulator,
        /// A client of the emulator.
        pub graph: GraphClient,
        pub queue: Arc<Queue>,
        pub run_id: i64,
        /// Holds the queue's database.
        pub dir: tempfile::TempDir,
    }

    pub async fn live_run(config: EmulatorConfig, options: &RunOptions) -> LiveRun {
        let emulator = crate::emulator::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let graph = crate::graph::test_client(&emulator);
        let (dir, queue) = crate::queue::testing::temp_queue();
        let source = SourceSpec::Csv {
            path: "u.csv".into(),
        };
        let run_id = queue
            .create_run(NewRun {
                source: &source,
                mode: RunMode::Live,
                options,
                tenant_id: None,
                graph_url: &emulator.base_url(),
            })
            .unwrap();
        LiveRun {
            emulator,
            graph,
            queue,
            run_id,
            dir,
        }
    }

    /// Adds `user` to the run as the item of CSV line `k + 2`, looked up (found as `user`):
    /// ready for the convert pass. Its id.
    pub fn looked_up(queue: &Queue, run_id: i64, k: usize, user: &User) -> i64 {
        let row =
            crate::queue::testing::row(k as u64 + 2, Some(UserKey::Id(user.id.clone())), None);
        queue.insert_items(run_id, &[row], None).unwrap();
        let item = queue.pending_items(run_id, 0, 1).unwrap().remove(0);
        queue.record_lookup(item.id, Some(user)).unwrap();
        item.id
    }
}
