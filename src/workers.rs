//! Workers: validate → invite → record, rate-limited and checkpointed.
//!
//! A producer reads pending items in input order a chunk at a time, looks their users up in bulk
//! (`id in (…)` through `$batch`), asks Graph who else holds their addresses, and validates each
//! with the pure `validate` function. Verdicts that need no request are recorded at once; users to
//! convert go through a bounded channel to `concurrency` invite workers, so reading the next chunk
//! overlaps with inviting the current one.
//!
//! Exactly-once: an item is checkpointed `in_flight` before its invitation can leave the process.
//! When the outcome is unknown (timeout, dropped connection, 5xx) the user is re-read before
//! anything is sent again, and if the invitation took effect the item ends `converted`
//! (reconciled). `reconcile_in_flight` does the same at start-up for items a crash left behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::graph::{GraphClient, GraphError};
use crate::item::{ItemRecord, ItemState, RunMode, RunOptions, RunRecord, UserKey};
use crate::model::{
    EmailAddress, InvitationRequest, InvitedUserMessageInfo, InvitedUserRef, Recipient, User,
};
use crate::progress::Progress;
use crate::queue::{LookupOutcome, Queue};
use crate::validate::{validate, TenantFacts, Verdict};
use tracing::Instrument;

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
}

/// Shared state of one pass.
struct Pass {
    pipeline: Pipeline,
    refusal: Mutex<Option<String>>,
    /// Converted (or would-convert) plus dispatched: what `--limit` counts.
    dispatched: AtomicU64,
    /// Items that stayed `in_flight` because the user could not be re-read.
    unresolved: AtomicU64,
}

impl Pass {
    fn options(&self) -> &RunOptions {
        &self.pipeline.run.options
    }

    fn stopping(&self) -> bool {
        *self.pipeline.stop.borrow() || self.refusal.lock().map(|r| r.is_some()).unwrap_or(true)
    }

    /// Ends an item `failed` with Graph's code and message and counts it done.
    fn fail(
        &self,
        item_id: i64,
        code: &str,
        message: &str,
        meta: Option<&crate::graph::ResponseMeta>,
    ) -> anyhow::Result<()> {
        self.pipeline.queue.record_failed(
            item_id,
            code,
            message,
            meta.and_then(|m| m.request_id.as_deref()),
            meta.map(|m| m.client_request_id.as_str()),
        )?;
        self.pipeline.progress.inc(1);
        Ok(())
    }

    fn refuse(&self, message: String) {
        let mut r = self.refusal.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            tracing::error!(%message, "the tenant refused to go on; stopping the run");
            *r = Some(message);
        }
    }
}

/// Runs the queue of `pipeline.run` until nothing pending is left, Ctrl-C, or a tenant refusal.
pub async fn work(pipeline: Pipeline) -> anyhow::Result<Outcome> {
    let run_id = pipeline.run.id;
    let facts = match tenant_facts(&pipeline.graph).await {
        Ok(f) => Arc::new(f),
        Err(e) => return refusal_or_error(e, "reading the tenant's domains and addresses"),
    };
    tracing::info!(
        run_id,
        verified_domains = facts.verified_domains.len(),
        addresses = facts.address_owners.len(),
        "tenant facts read"
    );

    let counts = pipeline.queue.counts(run_id)?;
    let done = counts.total - counts.state(ItemState::Pending) - counts.state(ItemState::InFlight);
    pipeline.progress.set_position(done);
    let already = match pipeline.run.mode {
        RunMode::Live => counts.state(ItemState::Converted) + counts.state(ItemState::InFlight),
        RunMode::DryRun => counts.state(ItemState::WouldConvert),
    };

    let pass = Arc::new(Pass {
        pipeline: pipeline.clone(),
        refusal: Mutex::new(None),
        dispatched: AtomicU64::new(already),
        unresolved: AtomicU64::new(0),
    });

    reconcile_in_flight(&pass).await?;

    let concurrency = pass.options().concurrency.max(1);
    // A whole chunk fits in the hand-off, so the next chunk's look-ups overlap with inviting
    // this one and the workers never wait on the producer.
    let (tx, rx) = mpsc::channel::<(ItemRecord, String)>((concurrency * 2).max(CHUNK));
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    if pipeline.run.mode == RunMode::Live {
        for _ in 0..concurrency {
            let pass = pass.clone();
            let rx = rx.clone();
            workers.spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((item, email)) = next else { break };
                    if pass.stopping() {
                        // Never marked in flight: it simply stays pending.
                        continue;
                    }
                    let (run_id, item_id) = (item.run_id, item.id);
                    convert(&pass, item, email)
                        .instrument(tracing::info_span!("item", run_id, item_id))
                        .await?;
                    pass.pipeline
                        .progress
                        .outcome_of(&pass.pipeline.queue, item_id);
                }
                anyhow::Ok(())
            });
        }
    }

    let produced = produce(&pass, &facts, tx).await;
    while let Some(joined) = workers.join_next().await {
        joined.context("an invite worker panicked")??;
    }
    let limit_reached = produced?;

    pass.pipeline.progress.finish();
    if let Some(message) = pass
        .refusal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Ok(Outcome::TenantRefused(message));
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

fn refusal_or_error(e: GraphError, doing: &str) -> anyhow::Result<Outcome> {
    match e {
        GraphError::TenantRefused { message, .. } => Ok(Outcome::TenantRefused(message)),
        other => Err(anyhow::Error::new(other).context(doing.to_string())),
    }
}

/// Reads pending items chunk by chunk, records verdicts, hands conversions to the workers.
/// Returns whether `--limit` stopped it.
async fn produce(
    pass: &Arc<Pass>,
    facts: &TenantFacts,
    tx: mpsc::Sender<(ItemRecord, String)>,
) -> anyhow::Result<bool> {
    let p = &pass.pipeline;
    let limit = pass.options().limit;
    let mut after = 0;
    loop {
        if pass.stopping() {
            return Ok(false);
        }
        let items = p.queue.pending_items(p.run.id, after, CHUNK)?;
        let Some(last) = items.last() else {
            return Ok(false);
        };
        after = last.id;
        let verdicts = match prepare(pass, items, facts).await {
            Ok(v) => v,
            Err(GraphError::TenantRefused { message, .. }) => {
                pass.refuse(message);
                return Ok(false);
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("looking users up in Graph (the run is resumable)"))
            }
        };
        for (item, verdict) in verdicts {
            match verdict {
                Verdict::Skip { reason, detail } | Verdict::Block { reason, detail } => {
                    p.queue.record_verdict(
                        item.id,
                        reason.state(),
                        Some(reason),
                        Some(&detail),
                        None,
                    )?;
                    p.progress.inc(1);
                    p.progress.outcome_of(&p.queue, item.id);
                }
                Verdict::Convert { email, notes } => {
                    if limit.is_some_and(|l| pass.dispatched.load(Ordering::Relaxed) >= l) {
                        return Ok(true);
                    }
                    pass.dispatched.fetch_add(1, Ordering::Relaxed);
                    match p.run.mode {
                        RunMode::DryRun => {
                            let detail = (!notes.is_empty()).then(|| notes.join("; "));
                            p.queue.record_verdict(
                                item.id,
                                ItemState::WouldConvert,
                                None,
                                detail.as_deref(),
                                Some(&email),
                            )?;
                            p.progress.inc(1);
                            p.progress.outcome_of(&p.queue, item.id);
                        }
                        RunMode::Live => {
                            if pass.stopping() || tx.send((item, email)).await.is_err() {
                                return Ok(false);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Reads what validation needs to know about the tenant once per pass: verified domains and
/// who holds which address in `mail` or `otherMails`. Listing every user's addresses costs one
/// request per 999 users, far less than asking about each checked address.
async fn tenant_facts(graph: &GraphClient) -> Result<TenantFacts, GraphError> {
    let mut facts = TenantFacts {
        verified_domains: graph
            .verified_domains()
            .await?
            .iter()
            .filter(|d| d.is_verified)
            .map(|d| d.id.to_ascii_lowercase())
            .collect(),
        ..Default::default()
    };
    let mut next: Option<String> = None;
    loop {
        let page = graph.list_user_addresses_page(next.as_deref()).await?;
        for user in &page.value {
            facts.add_owner(user);
        }
        match page.next_link {
            Some(link) => next = Some(link),
            None => return Ok(facts),
        }
    }
}

/// Looks up the chunk's users that have no snapshot yet, then validates every item.
async fn prepare(
    pass: &Pass,
    items: Vec<ItemRecord>,
    facts: &TenantFacts,
) -> Result<Vec<(ItemRecord, Verdict)>, GraphError> {
    let p = &pass.pipeline;
    let mut ids = Vec::new();
    let mut upns = Vec::new();
    for item in items.iter().filter(|i| i.snapshot.is_none()) {
        match &item.key {
            Some(UserKey::Id(v)) => ids.push(v.clone()),
            Some(UserKey::UserPrincipalName(v)) => upns.push(v.clone()),
            None => {}
        }
    }
    let mut by_key: HashMap<String, User> = HashMap::new();
    if !ids.is_empty() {
        for u in p.graph.users_by_ids(&ids).await? {
            by_key.insert(UserKey::Id(u.id.clone()).normalized(), u);
        }
    }
    if !upns.is_empty() {
        for u in p.graph.users_by_upns(&upns).await? {
            if let Some(upn) = &u.user_principal_name {
                by_key.insert(UserKey::UserPrincipalName(upn.clone()).normalized(), u);
            }
        }
    }

    let mut ready = Vec::with_capacity(items.len());
    for mut item in items {
        if item.snapshot.is_none() {
            let found = item.key.as_ref().and_then(|k| by_key.get(&k.normalized()));
            let outcome = p
                .queue
                .record_lookup(item.id, found)
                .map_err(|e| GraphError::Config(e.to_string()))?;
            if outcome != LookupOutcome::Found {
                p.progress.inc(1);
                p.progress.outcome_of(&p.queue, item.id);
                continue;
            }
            item.snapshot = found.cloned();
            item.user_id = found.map(|u| u.id.clone());
        }
        ready.push(item);
    }

    Ok(ready
        .into_iter()
        .filter_map(|item| {
            let user = item.snapshot.as_ref()?;
            let verdict = validate(user, item.external_email.as_deref(), facts);
            Some((item, verdict))
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

/// What a re-read of the user says about an invitation whose answer was lost.
enum Reconciled {
    Converted,
    NotConverted,
    Unreadable(GraphError),
}

async fn reread(graph: &GraphClient, user_id: &str) -> Reconciled {
    match graph.get_user(user_id).await {
        Ok(Some(u))
            if u.external_user_state
                .as_deref()
                .is_some_and(|s| !s.is_empty()) =>
        {
            Reconciled::Converted
        }
        Ok(_) => Reconciled::NotConverted,
        Err(e) => Reconciled::Unreadable(e),
    }
}

/// Resolves every item a previous process left `in_flight`: converted if the user shows the
/// invitation took effect, otherwise back to pending. Never sends an invitation.
async fn reconcile_in_flight(pass: &Pass) -> anyhow::Result<()> {
    let p = &pass.pipeline;
    let items = p.queue.in_flight_items(p.run.id)?;
    if items.is_empty() {
        return Ok(());
    }
    tracing::info!(count = items.len(), "reconciling items left in flight");
    for item in items {
        let Some(user_id) = item.user_id.as_deref() else {
            p.queue.back_to_pending(item.id)?;
            continue;
        };
        match reread(&p.graph, user_id).await {
            Reconciled::Converted => {
                p.queue.record_converted(item.id, None, None, None)?;
                p.progress.inc(1);
            }
            Reconciled::NotConverted => p.queue.back_to_pending(item.id)?,
            Reconciled::Unreadable(GraphError::TenantRefused { message, .. }) => {
                pass.refuse(message);
                return Ok(());
            }
            Reconciled::Unreadable(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "re-reading user {user_id} to reconcile an unfinished invitation"
                )))
            }
        }
    }
    Ok(())
}

/// Converts one user: checkpoint, send, record; on an unknown outcome re-read before resending.
async fn convert(pass: &Pass, item: ItemRecord, email: String) -> anyhow::Result<()> {
    let p = &pass.pipeline;
    let q = &p.queue;
    let req = invitation_request(&item, &email, pass.options());
    let max_attempts = pass.options().max_attempts.max(1);
    let mut attempts = item.attempts;
    let mut unknown_before = false;
    loop {
        q.mark_in_flight(item.id, &email)?;
        attempts += 1;
        let result = p.graph.invite(&req).await;
        let (code, message, meta) = match result {
            Ok(traced) => {
                q.record_converted(
                    item.id,
                    Some(&traced.value),
                    traced.meta.request_id.as_deref(),
                    Some(&traced.meta.client_request_id),
                )?;
                p.progress.inc(1);
                return Ok(());
            }
            Err(GraphError::TenantRefused { message, .. }) => {
                // Refused before it was carried out: the user was not touched.
                q.back_to_pending(item.id)?;
                pass.refuse(message);
                return Ok(());
            }
            Err(GraphError::Api {
                code,
                message,
                meta,
                ..
            }) => {
                if unknown_before {
                    // An earlier attempt's answer was lost; this refusal may be Graph saying the
                    // user is converted already. The tenant's word decides.
                    if let Some(uid) = item.user_id.as_deref() {
                        if let Reconciled::Converted = reread(&p.graph, uid).await {
                            q.record_converted(item.id, None, meta.request_id.as_deref(), None)?;
                            p.progress.inc(1);
                            return Ok(());
                        }
                    }
                }
                return pass.fail(item.id, &code, &message, Some(&meta));
            }
            Err(GraphError::Unknown { message, meta }) => {
                ("UnknownOutcome".to_string(), message, meta)
            }
            Err(other) => {
                let code = other.code().unwrap_or("Error");
                return pass.fail(item.id, code, &other.to_string(), other.meta());
            }
        };
        unknown_before = true;
        q.note_error(
            item.id,
            &code,
            &message,
            meta.request_id.as_deref(),
            Some(&meta.client_request_id),
        )?;
        let Some(user_id) = item.user_id.as_deref() else {
            return pass.fail(item.id, &code, &message, Some(&meta));
        };
        match reread(&p.graph, user_id).await {
            Reconciled::Converted => {
                tracing::info!(item = item.id, "answer lost but the invitation took effect");
                q.record_converted(item.id, None, meta.request_id.as_deref(), None)?;
                p.progress.inc(1);
                return Ok(());
            }
            Reconciled::NotConverted if attempts < max_attempts && !pass.stopping() => {
                q.back_to_pending(item.id)?;
                tokio::time::sleep(retry_delay(attempts)).await;
            }
            Reconciled::NotConverted => {
                if pass.stopping() {
                    q.back_to_pending(item.id)?;
                    return Ok(());
                }
                let message = format!("{message} (after {attempts} attempts)");
                return pass.fail(item.id, &code, &message, Some(&meta));
            }
            Reconciled::Unreadable(GraphError::TenantRefused { message, .. }) => {
                pass.refuse(message);
                return Ok(());
            }
            Reconciled::Unreadable(e) => {
                // Unknown and unknowable for now: never resend blind. `resume` reconciles it.
                tracing::warn!(item = item.id, error = %e, "cannot re-read user; item stays in flight");
                pass.unresolved.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
}

/// Exponential backoff with full jitter between attempts at one invitation.
fn retry_delay(attempt: u32) -> Duration {
    let cap = Duration::from_secs(30);
    let base = Duration::from_millis(500).saturating_mul(1 << attempt.min(6));
    let max = base.min(cap);
    max.mul_f64(rand::random::<f64>())
}

/// How a run's items ended, for the exit code.
pub fn needs_attention(queue: &Queue, run_id: i64) -> anyhow::Result<bool> {
    let c = queue.counts(run_id)?;
    Ok(c.state(ItemState::Blocked) + c.state(ItemState::Failed) + c.state(ItemState::InFlight) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Overrides;

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

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..20 {
            assert!(retry_delay(attempt) <= Duration::from_secs(30));
        }
    }
}
