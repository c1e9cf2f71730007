//! Items: reading them and every state change of one item. A change names the states it leaves
//! (`… WHERE id = ? AND state IN (…)`) and fails loudly when the row moved under it.

use rusqlite::{params, OptionalExtension, Row};

use super::*;

/// The request and client-request ids of the answer a write records, when there was one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub request_id: Option<String>,
    pub client_request_id: Option<String>,
}

impl Trace {
    /// The trace of an answer's ids, as the caller has them.
    pub fn of(request_id: Option<&str>, client_request_id: Option<&str>) -> Self {
        Trace {
            request_id: request_id.map(str::to_string),
            client_request_id: client_request_id.map(str::to_string),
        }
    }
}

/// An item's last error and the ids of the answer that carried it (`?2`–`?5`).
const ITEM_ERROR: &str = "error_code = ?2, error_message = ?3,
    request_id = coalesce(?4, request_id),
    client_request_id = coalesce(?5, client_request_id)";

/// One write of an item's step bookkeeping, for [`Queue::item_writes`]: each is what the
/// method of the same purpose writes on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemWrite {
    /// [`Queue::mark_in_flight`], and the step on the wire when the item has a step checkpoint.
    InFlight {
        email: String,
        step: Option<&'static str>,
    },
    /// [`Queue::charge_attempt`].
    Charge,
    /// The last error of an item that stays where it is (e.g. in_flight awaiting
    /// reconciliation), noted without changing its state.
    NoteError {
        code: String,
        message: String,
        trace: Trace,
    },
    /// [`Queue::step_done`].
    StepDone(&'static str),
    /// [`Queue::record_converted`].
    Converted {
        invitation: Option<Box<Invitation>>,
        trace: Trace,
    },
    /// [`Queue::record_failed`].
    Failed {
        code: String,
        message: String,
        trace: Trace,
    },
    /// [`Queue::back_to_pending`].
    BackToPending,
}

/// A validation verdict that ends an item without a request (see [`Queue::record_verdicts`]).
#[derive(Debug, Clone)]
pub struct VerdictRecord {
    pub item_id: i64,
    /// `would_convert`, `skipped` or `blocked`.
    pub state: ItemState,
    pub reason: Option<Reason>,
    pub detail: Option<String>,
    /// The address the invitation would go to (kept where `None`).
    pub external_email: Option<String>,
}

impl Queue {
    // ---- work -----------------------------------------------------------------------------

    /// Pending items after `after_id`, in input order.
    pub fn pending_items(
        &self,
        run_id: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<ItemRecord>> {
        self.select_items(
            &format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE run_id = ?1 AND state = ?4 AND id > ?2
                 ORDER BY id LIMIT ?3"
            ),
            params![run_id, after_id, limit as i64, ItemState::Pending],
        )
    }

    pub fn in_flight_items(&self, run_id: i64) -> Result<Vec<ItemRecord>> {
        self.select_items(
            &format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE run_id = ?1 AND state = ?2 ORDER BY id"
            ),
            params![run_id, ItemState::InFlight],
        )
    }

    /// Every item of the run, in input order (reports).
    pub fn items(&self, run_id: i64) -> Result<Vec<ItemRecord>> {
        self.select_items(
            &format!("SELECT {ITEM_COLUMNS} FROM items WHERE run_id = ?1 ORDER BY id"),
            params![run_id],
        )
    }

    pub fn item(&self, item_id: i64) -> Result<Option<ItemRecord>> {
        Ok(self
            .select_items(
                &format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1"),
                params![item_id],
            )?
            .pop())
    }

    pub(super) fn select_items(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<ItemRecord>> {
        self.select_rows(sql, params, item_from_row)?
            .into_iter()
            .collect()
    }

    /// Stores what Graph said about a pending item's user. The snapshot is written once: later
    /// reads (reconciliation) never overwrite the record of the user before the change.
    pub fn record_lookup(&self, item_id: i64, user: Option<&User>) -> Result<LookupOutcome> {
        let mut outcomes = self.record_lookups(&[(item_id, user)])?;
        Ok(outcomes.remove(0))
    }

    /// [`Queue::record_lookup`] for a whole chunk of looked-up items in ONE write transaction
    /// (issue 15: fewer write transactions per user). Nothing has been sent for these items,
    /// so no checkpoint is involved: a kill before the commit only means looking them up again.
    /// Items are settled in order, so a later item of the chunk resolving to the same user as an
    /// earlier one is its `duplicate_user`, exactly as with one call per item.
    pub fn record_lookups(&self, found: &[(i64, Option<&User>)]) -> Result<Vec<LookupOutcome>> {
        self.write_tx(|tx| {
            // Fenced like every item write: a holder that lost the run records nothing.
            self.check_fence(tx)?;
            found
                .iter()
                .map(|&(item_id, user)| self.lookup_in(tx, item_id, user))
                .collect()
        })
    }

    fn lookup_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        item_id: i64,
        user: Option<&User>,
    ) -> Result<LookupOutcome> {
        let (run_id, state): (i64, ItemState) = tx
            .prepare_cached("SELECT run_id, state FROM items WHERE id = ?1")
            .and_then(|mut s| s.query_row([item_id], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(|e| self.err(e))?;
        if state != ItemState::Pending {
            return Err(QueueError::Moved {
                item_id,
                expected: ItemState::Pending.as_str(),
                actual: state.to_string(),
            });
        }
        let outcome = match user {
            None => {
                tx.prepare_cached(
                    "UPDATE items SET state = ?3, reason = ?4,
                        detail = 'no user with ' || coalesce(key_kind, 'key') || ' ' || coalesce(key_value, '') || ' in the tenant',
                        updated_at = ?2 WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        item_id,
                        now(),
                        ItemState::Blocked,
                        Reason::UserNotFound
                    ])
                })
                .map_err(|e| self.err(e))?;
                LookupOutcome::NotFound
            }
            Some(u) => {
                let earlier: Option<(i64, Option<i64>)> = tx
                    .prepare_cached(
                        "SELECT id, line FROM items WHERE run_id = ?1 AND user_id = ?2 AND id <> ?3
                           AND (reason IS NULL OR reason <> ?4)
                         ORDER BY id LIMIT 1",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![run_id, u.id, item_id, Reason::DuplicateUser], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                    })
                    .optional()
                    .map_err(|e| self.err(e))?;
                match earlier {
                    Some((other, line)) => {
                        let first = line
                            .map(|l| format!("line {l}"))
                            .unwrap_or_else(|| format!("item {other}"));
                        tx.prepare_cached(
                            "UPDATE items SET state = ?6, reason = ?7,
                                detail = ?2, user_principal_name = ?3, display_name = ?4,
                                updated_at = ?5 WHERE id = ?1",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                item_id,
                                format!("same user ({}) as {first}", u.id),
                                u.user_principal_name,
                                u.display_name,
                                now(),
                                ItemState::Blocked,
                                Reason::DuplicateUser
                            ])
                        })
                        .map_err(|e| self.err(e))?;
                        LookupOutcome::DuplicateOf(other)
                    }
                    None => {
                        tx.prepare_cached(
                            "UPDATE items SET user_id = ?2, user_principal_name = ?3,
                                display_name = ?4, user_type = ?5,
                                snapshot = coalesce(snapshot, ?6), updated_at = ?7
                             WHERE id = ?1",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                item_id,
                                u.id,
                                u.user_principal_name,
                                u.display_name,
                                u.user_type,
                                to_json(u),
                                now()
                            ])
                        })
                        .map_err(|e| self.err(e))?;
                        LookupOutcome::Found
                    }
                }
            }
        };
        Ok(outcome)
    }

    /// A validation verdict that ends the item without a request: `would_convert`, `skipped`
    /// or `blocked`.
    pub fn record_verdict(
        &self,
        item_id: i64,
        state: ItemState,
        reason: Option<Reason>,
        detail: Option<&str>,
        external_email: Option<&str>,
    ) -> Result<()> {
        self.record_verdicts(&[VerdictRecord {
            item_id,
            state,
            reason,
            detail: detail.map(str::to_string),
            external_email: external_email.map(str::to_string),
        }])
    }

    /// Several items' verdicts in ONE write transaction (a chunk of a dry run is one commit,
    /// not one per user). The first refused write rolls all of them back.
    pub fn record_verdicts(&self, verdicts: &[VerdictRecord]) -> Result<()> {
        self.write_tx(|tx| {
            for v in verdicts {
                self.transition_on(
                    tx,
                    v.item_id,
                    &[ItemState::Pending],
                    "state = ?2, reason = ?3, detail = ?4,
                     external_email = coalesce(?5, external_email)",
                    params![v.item_id, v.state, v.reason, v.detail, v.external_email],
                )?;
            }
            Ok(())
        })
    }

    /// Checkpoint before an invitation can leave the process: `pending` → `in_flight`. Also
    /// accepted from `in_flight` (a retry after an unknown outcome that reconciliation showed had
    /// not taken effect). Not an attempt: a kill right after it sent nothing (see
    /// [`Queue::charge_attempt`]).
    pub fn mark_in_flight(&self, item_id: i64, external_email: &str) -> Result<()> {
        self.transition(
            item_id,
            &[ItemState::Pending, ItemState::InFlight],
            "state = ?3, external_email = ?2",
            params![item_id, external_email, ItemState::InFlight],
        )
    }

    /// One more request for the item that may have reached Graph: `attempts` counts them over
    /// the item's life (reports), the step checkpoint's `attempts` at the current step (what
    /// `--max-attempts` bounds).
    pub fn charge_attempt(&self, item_id: i64) -> Result<()> {
        self.item_writes(item_id, &[ItemWrite::Charge])
    }

    /// Several writes of one item's step bookkeeping in ONE write transaction, in order (issue
    /// 22: at most two write transactions per step). The executor joins what exactly-once lets
    /// it join: an attempt's charge, the step done and the next step's checkpoint, or the
    /// record of the item's end. Each write is fenced and state-guarded as on its own; the
    /// first one refused rolls all of them back.
    pub fn item_writes(&self, item_id: i64, writes: &[ItemWrite]) -> Result<()> {
        self.write_tx(|tx| {
            for write in writes {
                self.item_write_on(tx, item_id, write)?;
            }
            Ok(())
        })
    }

    fn item_write_on(&self, conn: &Connection, item_id: i64, write: &ItemWrite) -> Result<()> {
        match write {
            ItemWrite::InFlight { email, step } => {
                self.transition_on(
                    conn,
                    item_id,
                    &[ItemState::Pending, ItemState::InFlight],
                    "state = ?3, external_email = ?2",
                    params![item_id, email, ItemState::InFlight],
                )?;
                if let Some(step) = step {
                    self.step_in_flight_on(conn, item_id, step)?;
                }
                Ok(())
            }
            ItemWrite::Charge => {
                self.transition_on(
                    conn,
                    item_id,
                    &[ItemState::InFlight],
                    "attempts = attempts + 1",
                    params![item_id],
                )?;
                conn.prepare_cached(
                    "UPDATE item_steps SET attempts = attempts + 1 WHERE item_id = ?1",
                )
                .and_then(|mut s| s.execute([item_id]))
                .map_err(|e| self.err(e))?;
                Ok(())
            }
            ItemWrite::NoteError {
                code,
                message,
                trace,
            } => self.note_error_on(conn, item_id, code, message, trace),
            ItemWrite::StepDone(step) => self.step_done_on(conn, item_id, step),
            ItemWrite::Converted { invitation, trace } => {
                self.converted_on(conn, item_id, invitation.as_deref(), trace)
            }
            ItemWrite::Failed {
                code,
                message,
                trace,
            } => self.failed_on(conn, item_id, code, message, trace),
            ItemWrite::BackToPending => self.transition_on(
                conn,
                item_id,
                &[ItemState::InFlight],
                "state = ?2",
                params![item_id, ItemState::Pending],
            ),
        }
    }

    /// The invitation API accepted it; `invitation` is `None` when reconciliation found the user
    /// converted without ever seeing the answer.
    pub fn record_converted(
        &self,
        item_id: i64,
        invitation: Option<&Invitation>,
        request_id: Option<&str>,
        client_request_id: Option<&str>,
    ) -> Result<()> {
        let trace = Trace::of(request_id, client_request_id);
        self.converted_on(&self.conn(), item_id, invitation, &trace)
    }

    fn converted_on(
        &self,
        conn: &Connection,
        item_id: i64,
        invitation: Option<&Invitation>,
        trace: &Trace,
    ) -> Result<()> {
        let reconciled = invitation.is_none();
        self.transition_on(
            conn,
            item_id,
            &[ItemState::InFlight],
            // The redeem URL is bound but kept only when the run asked for it
            // (`--keep-redeem-links`): otherwise it never reaches the file.
            &format!(
                "state = ?8, invitation_id = ?2, invitation_status = ?3,
                 invite_redeem_url = CASE WHEN {keep} THEN ?4 END, reconciled = ?5,
                 request_id = coalesce(?6, request_id), client_request_id = coalesce(?7, client_request_id),
                 error_code = NULL, error_message = NULL",
                keep = super::track::KEEP_LINKS
            ),
            params![
                item_id,
                invitation.map(|i| i.id.clone()),
                invitation
                    .map(|i| i.status.clone())
                    .or_else(|| Some("reconciled".to_string())),
                invitation.and_then(|i| i.invite_redeem_url.clone()),
                reconciled,
                trace.request_id,
                trace.client_request_id,
                ItemState::Converted
            ],
        )
    }

    /// The API refused it permanently or attempts ran out.
    pub fn record_failed(
        &self,
        item_id: i64,
        code: &str,
        message: &str,
        request_id: Option<&str>,
        client_request_id: Option<&str>,
    ) -> Result<()> {
        let trace = Trace::of(request_id, client_request_id);
        self.failed_on(&self.conn(), item_id, code, message, &trace)
    }

    /// The item ends `failed` (from `pending` or `in_flight`) with its last error and the ids
    /// of the answer that carried it.
    fn failed_on(
        &self,
        conn: &Connection,
        item_id: i64,
        code: &str,
        message: &str,
        trace: &Trace,
    ) -> Result<()> {
        self.transition_on(
            conn,
            item_id,
            &[ItemState::Pending, ItemState::InFlight],
            &format!("state = ?6, {ITEM_ERROR}"),
            params![
                item_id,
                code,
                message,
                trace.request_id,
                trace.client_request_id,
                ItemState::Failed
            ],
        )
    }

    /// The item's last error is noted, the item staying where it is (e.g. in_flight awaiting
    /// reconciliation), whatever its state; fenced by the lease.
    fn note_error_on(
        &self,
        conn: &Connection,
        item_id: i64,
        code: &str,
        message: &str,
        trace: &Trace,
    ) -> Result<()> {
        let (request_id, client_request_id) = (&trace.request_id, &trace.client_request_id);
        let (fence_run, fence_token) = self.fence();
        let changed = conn
            .prepare_cached(&format!(
                "UPDATE items SET {ITEM_ERROR}, updated_at = ?6 WHERE id = ?1 AND {}",
                super::fence_sql(7, 8)
            ))
            .and_then(|mut s| {
                s.execute(params![
                    item_id,
                    code,
                    message,
                    request_id,
                    client_request_id,
                    now(),
                    fence_run,
                    fence_token
                ])
            })
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            self.check_fence(conn)?;
        }
        Ok(())
    }

    /// An `in_flight` item whose request certainly did not take effect (the tenant refused it
    /// before carrying it out, or reconciliation showed the user unchanged) goes back to wait.
    pub fn back_to_pending(&self, item_id: i64) -> Result<()> {
        self.transition(
            item_id,
            &[ItemState::InFlight],
            "state = ?2",
            params![item_id, ItemState::Pending],
        )
    }

    /// `retry`: every failed item of the run goes back to pending with a fresh attempt count and
    /// no snapshot, so its user is read again and the fix the report asked for is seen. (A
    /// failed item changed nothing in the tenant, so its old snapshot records no change.)
    pub fn requeue_failed(&self, run_id: i64) -> Result<u64> {
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE items SET state = ?3, attempts = 0, snapshot = NULL,
                    external_email = NULL, updated_at = ?2
                 WHERE run_id = ?1 AND state = ?4",
            )
            .and_then(|mut s| {
                s.execute(params![
                    run_id,
                    now(),
                    ItemState::Pending,
                    ItemState::Failed
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// One state change of one item: `set` uses `?1` (the item id) to `?n` (the caller's
    /// parameters); the time and the states it may leave are bound after them. The statement
    /// text is fixed per call site, so it is prepared once and cached.
    /// A state change of one item, from one of `from`, fenced by the lease this process holds.
    fn transition(
        &self,
        item_id: i64,
        from: &[ItemState],
        set: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<()> {
        self.transition_on(&self.conn(), item_id, from, set, params)
    }

    /// [`Queue::transition`] on `conn`: the open transaction of a caller that writes more.
    fn transition_on(
        &self,
        conn: &Connection,
        item_id: i64,
        from: &[ItemState],
        set: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<()> {
        let n = params.len();
        let allowed = (0..from.len())
            .map(|k| format!("?{}", n + 2 + k))
            .collect::<Vec<_>>()
            .join(", ");
        let fence_at = n + 2 + from.len();
        let sql = format!(
            "UPDATE items SET {set}, updated_at = ?{} WHERE id = ?1 AND state IN ({allowed}) AND {}",
            n + 1,
            super::fence_sql(fence_at, fence_at + 1)
        );
        let at = now();
        let (fence_run, fence_token) = self.fence();
        let mut bound: Vec<&dyn rusqlite::ToSql> = params.to_vec();
        bound.push(&at);
        bound.extend(from.iter().map(|s| s as &dyn rusqlite::ToSql));
        bound.push(&fence_run);
        bound.push(&fence_token);
        let changed = conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute(bound.as_slice()))
            .map_err(|e| self.err(e))?;
        if changed == 1 {
            return Ok(());
        }
        self.check_fence(conn)?;
        let actual: Option<ItemState> = conn
            .prepare_cached("SELECT state FROM items WHERE id = ?1")
            .and_then(|mut s| s.query_row([item_id], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))?;
        Err(QueueError::Moved {
            item_id,
            expected: from[0].as_str(),
            actual: actual.map_or_else(|| "missing".into(), |s| s.to_string()),
        })
    }
}

pub(super) const ITEM_COLUMNS: &str =
    "id, run_id, line, key_kind, key_value, user_id, user_principal_name, \
    display_name, user_type, requested_email, external_email, overrides, state, reason, detail, \
    attempts, snapshot, error_code, error_message, request_id, client_request_id, invitation_id, \
    invitation_status, reconciled, updated_at";

pub(super) fn item_from_row(r: &Row<'_>) -> rusqlite::Result<Result<ItemRecord>> {
    let key_kind: Option<String> = r.get(3)?;
    let key_value: Option<String> = r.get(4)?;
    let key = match (key_kind.as_deref(), key_value) {
        (Some("id"), Some(v)) => Some(UserKey::Id(v)),
        (Some(_), Some(v)) => Some(UserKey::UserPrincipalName(v)),
        _ => None,
    };
    let requested: Option<String> = r.get(9)?;
    let effective: Option<String> = r.get(10)?;
    let overrides: Option<String> = r.get(11)?;
    let state: String = r.get(12)?;
    let reason: Option<String> = r.get(13)?;
    let snapshot: Option<String> = r.get(16)?;
    let line: Option<i64> = r.get(2)?;
    let attempts: i64 = r.get(15)?;
    let base = ItemRecord {
        id: r.get(0)?,
        run_id: r.get(1)?,
        line: line.map(|l| l as u64),
        key,
        user_id: r.get(5)?,
        user_principal_name: r.get(6)?,
        display_name: r.get(7)?,
        user_type: r.get(8)?,
        external_email: effective.or(requested),
        overrides: Overrides::default(),
        state: ItemState::Pending,
        reason: None,
        detail: r.get(14)?,
        attempts: attempts as u32,
        snapshot: None,
        error_code: r.get(17)?,
        error_message: r.get(18)?,
        request_id: r.get(19)?,
        client_request_id: r.get(20)?,
        invitation_id: r.get(21)?,
        invitation_status: r.get(22)?,
        reconciled: r.get(23)?,
        updated_at: r.get(24)?,
    };
    Ok((|| {
        let mut item = base;
        item.state = state.parse().map_err(|m| QueueError::Corrupt {
            column: "items.state",
            message: m,
        })?;
        item.reason = reason
            .map(|s| s.parse())
            .transpose()
            .map_err(|m| QueueError::Corrupt {
                column: "items.reason",
                message: m,
            })?;
        if let Some(o) = overrides {
            item.overrides = from_json(&o, "items.overrides")?;
        }
        if let Some(s) = snapshot {
            item.snapshot = Some(from_json(&s, "items.snapshot")?);
        }
        Ok(item)
    })())
}
