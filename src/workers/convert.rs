//! The convert pass (`run`, `resume`, `retry`) as the executor sees it: (set mail) → invite →
//! (set userType), each step's request, its re-read, and its records in the item queue.

use std::sync::Arc;

use crate::graph::{GraphClient, GraphError, ResponseMeta, Traced};
use crate::item::{ItemRecord, RunOptions};
use crate::model::{Invitation, InvitationRequest};
use crate::progress::Progress;
use crate::queue::{ItemWrite, Queue, StepRow, Trace};

use super::executor::{reread_error, PassOps, PassRequests, Write};
use super::planner::{Checkpoint, ItemPlan, Reread, Step};

/// One user being converted.
pub struct ConvertItem {
    pub item: ItemRecord,
    /// The address invited (and the one `--set-mail` writes).
    pub email: String,
    req: InvitationRequest,
    /// The item has a step checkpoint (it needs a step besides the invitation).
    has_steps: bool,
    /// The accepted invitation, once answered.
    invitation: Option<Traced<Invitation>>,
}

impl ConvertItem {
    /// Reads the item's step checkpoint and plans it: attempts already made at its current step
    /// count against `--max-attempts`.
    pub async fn load(
        queue: &Arc<Queue>,
        item: ItemRecord,
        email: String,
        options: &RunOptions,
    ) -> anyhow::Result<(ConvertItem, ItemPlan)> {
        let id = item.id;
        let row = db(queue, move |q| q.steps(id)).await?;
        let made = row.as_ref().map_or(item.attempts, |r| r.attempts);
        let plan = ItemPlan::new(checkpoint(row.as_ref()), made, options.max_attempts);
        let req = super::invitation_request(&item, &email, options);
        Ok((
            ConvertItem {
                item,
                email,
                req,
                has_steps: row.is_some(),
                invitation: None,
            },
            plan,
        ))
    }
}

/// The planner's view of an item's stored step checkpoint (none: the invitation only).
pub fn checkpoint(row: Option<&StepRow>) -> Checkpoint {
    match row {
        Some(r) => Checkpoint::convert(
            r.needs_mail,
            r.mail_set,
            r.invited,
            r.needs_guest,
            r.guest_set,
        ),
        None => Checkpoint::convert(false, false, false, false, false),
    }
}

/// What the convert pass needs to carry out its steps.
pub struct ConvertOps {
    pub queue: Arc<Queue>,
    pub graph: GraphClient,
    pub progress: Arc<Progress>,
}

impl PassRequests for ConvertOps {
    type Item = ConvertItem;

    async fn send(&self, it: &mut ConvertItem, step: Step) -> Result<ResponseMeta, GraphError> {
        let uid = it.item.user_id.as_deref().unwrap_or_default();
        match step {
            Step::Invite => {
                let traced = self.graph.invite(&it.req).await?;
                let meta = traced.meta.clone();
                it.invitation = Some(traced);
                Ok(meta)
            }
            Step::SetMail => {
                let change = serde_json::json!({ "mail": it.email });
                Ok(self.graph.patch_user(uid, &change).await?.meta)
            }
            Step::SetGuest => {
                let change = serde_json::json!({ "userType": "Guest" });
                Ok(self.graph.patch_user(uid, &change).await?.meta)
            }
            other => unreachable!("the convert pass has no step {other:?}"),
        }
    }

    async fn reread(&self, it: &ConvertItem, step: Step) -> Reread {
        reread(&self.graph, it.item.user_id.as_deref(), step, &it.email).await
    }
}

impl PassOps for ConvertOps {
    /// The convert pass's rows are one item and its step checkpoint: every batch the executor
    /// hands over is one write transaction (`Queue::item_writes`), and the bar moves on (the
    /// user's outcome read back for the log) on the same blocking thread.
    async fn record(&self, it: &mut ConvertItem, writes: Vec<Write>) -> anyhow::Result<()> {
        let id = it.item.id;
        let mut ended = false;
        let mut rows = Vec::with_capacity(writes.len());
        for write in writes {
            ended |= matches!(write, Write::Done(_) | Write::Failed { .. });
            rows.extend(item_write(it, write)?);
        }
        let progress = self.progress.clone();
        db(&self.queue, move |q| {
            q.item_writes(id, &rows)?;
            if ended {
                progress.item_done(q, id);
            }
            Ok(())
        })
        .await
    }
}

/// The queue row write of one executor write (`None`: the item has no step checkpoint to mark).
fn item_write(it: &mut ConvertItem, write: Write) -> anyhow::Result<Option<ItemWrite>> {
    let trace = |meta: Option<&ResponseMeta>| Trace {
        request_id: meta.and_then(|m| m.request_id.clone()),
        client_request_id: meta.map(|m| m.client_request_id.clone()),
    };
    Ok(match write {
        Write::Checkpoint(step) => Some(ItemWrite::InFlight {
            email: it.email.clone(),
            step: it.has_steps.then(|| step.as_str()),
        }),
        Write::Charge => Some(ItemWrite::Charge),
        Write::NoteUnknown {
            code,
            message,
            meta,
        } => Some(ItemWrite::NoteError {
            code,
            message,
            trace: trace(Some(&meta.unwrap_or_default())),
        }),
        Write::StepDone(step) => it.has_steps.then(|| ItemWrite::StepDone(step.as_str())),
        Write::Done(meta) => {
            let (invitation, meta) = match it.invitation.take() {
                Some(t) => (Some(Box::new(t.value)), Some(t.meta)),
                None => (None, meta),
            };
            let mut trace = trace(meta.as_ref());
            if invitation.is_none() {
                trace.client_request_id = None;
            }
            Some(ItemWrite::Converted { invitation, trace })
        }
        Write::BackToPending => Some(ItemWrite::BackToPending),
        Write::Failed {
            code,
            message,
            meta,
        } => Some(ItemWrite::Failed {
            code,
            message,
            trace: trace(meta.as_ref()),
        }),
        Write::Skipped(why) => anyhow::bail!(
            "item {}: the convert pass has no skipped outcome ({why}); stopping",
            it.item.id
        ),
    })
}

/// Reads the user back: did `step` (towards `email`) take effect?
pub async fn reread(graph: &GraphClient, user_id: Option<&str>, step: Step, email: &str) -> Reread {
    let Some(user_id) = user_id else {
        return Reread::Unreadable {
            message: "the item has no object id to read".into(),
        };
    };
    match graph.get_user(user_id).await {
        Ok(Some(u)) => {
            let done = match step {
                Step::Invite => u
                    .external_user_state
                    .as_deref()
                    .is_some_and(|s| !s.is_empty()),
                Step::SetMail => u
                    .mail
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(email)),
                Step::SetGuest => u.user_type.as_deref() == Some("Guest"),
                other => unreachable!("the convert pass has no step {other:?}"),
            };
            if done {
                Reread::Done
            } else {
                Reread::NotDone
            }
        }
        Ok(None) => Reread::NotDone,
        Err(e) => reread_error(user_id, e),
    }
}

pub use crate::queue::threads::db;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::{EmulatorConfig, Tenant};
    use crate::item::ItemState;
    use crate::workers::executor::on_emulator::{live_run, looked_up};
    use crate::workers::executor::{work_item, Settled};

    /// Write transactions one converted user costs, per combination of `--set-mail` and
    /// `--set-guest`, counted by the queue's commit hook against the emulator: the checkpoint
    /// before the first request, then one transaction per answered step holding its charge, its
    /// done mark and the next step's checkpoint or the user's end. At most two per step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_converted_user_costs_at_most_two_write_transactions_per_step() {
        let tenant = Tenant::generate(60, 7);
        let users: Vec<crate::model::User> = tenant
            .users
            .iter()
            .filter(|u| {
                u.user_type.as_deref() == Some("Member")
                    && u.mail.is_some()
                    && u.external_user_state.is_none()
                    && u.on_premises_sync_enabled.is_none()
                    && u.on_premises_user_principal_name.is_none()
                    && u.account_enabled == Some(true)
                    && !u.has_enabled_exchange_plan()
            })
            .take(4)
            .cloned()
            .collect();
        assert_eq!(users.len(), 4, "four convertible members");
        let options = RunOptions::default();
        let live = live_run(EmulatorConfig::new(tenant), &options).await;
        let (queue, run) = (live.queue, live.run_id);
        let ops = ConvertOps {
            queue: queue.clone(),
            graph: live.graph,
            progress: Arc::new(Progress::new("test", 4)),
        };
        // (set mail, set guest) → write transactions, steps.
        let cases = [
            ((false, false), 2, 1),
            ((false, true), 3, 2),
            ((true, false), 3, 2),
            ((true, true), 4, 3),
        ];
        for (k, ((set_mail, set_guest), want, steps)) in cases.into_iter().enumerate() {
            let user = &users[k];
            let id = looked_up(&queue, run, k, user);
            let email = match set_mail {
                true => format!("partner{k}@fabrikam.example"),
                false => user.mail.clone().unwrap(),
            };
            if set_mail || set_guest {
                let from = user.mail.as_deref();
                queue
                    .plan_steps(id, set_mail.then_some((from, email.as_str())), set_guest)
                    .unwrap();
            }
            let item = queue.item(id).unwrap().unwrap();
            let (mut it, mut plan) = ConvertItem::load(&queue, item, email, &options)
                .await
                .unwrap();
            let before = queue.write_transactions();
            let settled = work_item(&ops, &mut it, &mut plan, || false).await.unwrap();
            let spent = queue.write_transactions() - before;
            assert_eq!(settled, Settled::Recorded);
            let done = queue.item(it.item.id).unwrap().unwrap();
            assert_eq!(
                done.state,
                ItemState::Converted,
                "{set_mail} {set_guest}: {done:?}"
            );
            assert_eq!(
                done.attempts as usize, steps,
                "one charged request per step"
            );
            assert_eq!(spent, want, "set_mail {set_mail}, set_guest {set_guest}");
            assert!(spent <= 2 * steps as u64);
        }
    }
}
