//! Redemption bookkeeping (issue 10): what `track` read about converted users, the `resend`
//! passes that re-invite those still pending, and the read-only queries `status`, reports and
//! `export-links` build on. SQL only; the decisions live in `commands::{track, resend}`.

use rusqlite::{params, OptionalExtension};

use super::{now, Queue, QueueError, Result};

/// `externalUserState` of a user who has redeemed.
pub const ACCEPTED: &str = "Accepted";
/// `externalUserState` of a user invited but not yet redeemed.
pub const PENDING_ACCEPTANCE: &str = "PendingAcceptance";
/// Error code of an item `track` found unchanged after a 201 (SPEC.md, `track`).
pub const NOT_APPLIED: &str = "NotApplied";

/// A converted item as `track` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackTarget {
    pub item_id: i64,
    pub user_id: String,
    pub user_principal_name: Option<String>,
    /// `request-id` of the invitation's answer: what Microsoft support asks for.
    pub request_id: Option<String>,
    pub client_request_id: Option<String>,
}

/// What `track` concluded about one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackResult {
    /// The user shows a B2B state (`PendingAcceptance`, `Accepted`, …). `changed_at` is
    /// normalised RFC 3339 (see [`normalize_time`]).
    Seen {
        item_id: i64,
        state: String,
        changed_at: Option<String>,
    },
    /// Graph answered 201 but the user has no `externalUserState`: the item leaves `converted`
    /// for `failed` / `NotApplied` so `retry` invites it again.
    NotApplied { item_id: i64, message: String },
    /// The user no longer exists (deleted since the run): recorded as tracked, state unknown.
    Missing { item_id: i64 },
}

/// Counts of one `track` invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackCounts {
    pub accepted: u64,
    pub pending: u64,
    pub not_applied: u64,
    pub missing: u64,
}

/// `status --json`'s `redemption` object and `lastTrackedAt`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedemptionCounts {
    pub pending_acceptance: u64,
    pub accepted: u64,
    /// Items `track` moved to `failed` / `NotApplied` that are still there (not yet retried).
    pub not_applied: u64,
    /// Converted items no `track` has read yet (or whose user has vanished).
    pub untracked: u64,
    pub last_tracked_at: Option<String>,
}

/// One `track` invocation, for the redemption chart over time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackPass {
    pub id: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub accepted: u64,
    pub pending: u64,
    pub not_applied: u64,
    pub missing: u64,
}

/// Redemptions on one day (UTC), from Graph's own change times of the accepted users.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedemptionDay {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub accepted: u64,
    /// Accepted up to and including this day.
    pub cumulative: u64,
}

/// A converted user who has not redeemed (yet), per the last `track`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotRedeemed {
    pub item_id: i64,
    pub user_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub external_email: Option<String>,
    /// When the item became `converted`.
    pub invited_at: Option<String>,
    /// `PendingAcceptance`, or `None` when never tracked.
    pub external_user_state: Option<String>,
    pub external_user_state_changed_at: Option<String>,
    /// When the last `resend` pass re-invited the user, if one did.
    pub last_resent_at: Option<String>,
}

/// One line of `export-links`. Holds a credential-like URL: never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedeemLink {
    pub user_principal_name: Option<String>,
    pub external_email: Option<String>,
    pub invite_redeem_url: String,
}

impl std::fmt::Debug for RedeemLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedeemLink")
            .field("user_principal_name", &self.user_principal_name)
            .field("external_email", &self.external_email)
            .field("invite_redeem_url", &"<redacted>")
            .finish()
    }
}

/// A `resend` pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendPass {
    pub id: i64,
    pub run_id: i64,
    pub older_than_days: u32,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// Where one user is within a resend pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendState {
    Pending,
    /// A request may be on the wire (or was when the process died).
    InFlight,
    Sent,
    Failed,
    /// Nothing to send after all (redeemed meanwhile, user gone).
    Skipped,
}

impl ResendState {
    pub fn as_str(self) -> &'static str {
        match self {
            ResendState::Pending => "pending",
            ResendState::InFlight => "in_flight",
            ResendState::Sent => "sent",
            ResendState::Failed => "failed",
            ResendState::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> Result<ResendState> {
        Ok(match s {
            "pending" => ResendState::Pending,
            "in_flight" => ResendState::InFlight,
            "sent" => ResendState::Sent,
            "failed" => ResendState::Failed,
            "skipped" => ResendState::Skipped,
            other => {
                return Err(QueueError::Corrupt {
                    column: "resends.state",
                    message: format!("unknown resend state `{other}`"),
                })
            }
        })
    }
}

/// One user of a resend pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendEntry {
    pub pass_id: i64,
    pub item_id: i64,
    pub user_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub state: ResendState,
    pub attempts: u32,
    /// When the entry was last put in flight.
    pub checkpoint_at: Option<String>,
    /// Graph's change time as the last `track` read it: the user's last change before this
    /// pass (Graph's clock).
    pub tracked_changed_at: Option<String>,
    /// When that `track` read the user (our clock).
    pub tracked_at: Option<String>,
}

/// A user `resend` would re-invite (listed by `resend --dry-run`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResendUser {
    pub item_id: i64,
    pub user_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub external_email: Option<String>,
}

/// Counts of a pass by entry state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResendSummary {
    pub pending: u64,
    pub in_flight: u64,
    pub sent: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl ResendSummary {
    /// Every user of the pass.
    pub fn total(&self) -> u64 {
        self.pending + self.in_flight + self.sent + self.failed + self.skipped
    }
}

/// Graph's times come with or without fractions (`…T10:00:00Z`, `…T10:00:00.1234567Z`); stored
/// times are all `…T10:00:00.000Z` so SQL can compare them as text. Unparseable input is kept
/// as is.
pub fn normalize_time(value: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .unwrap_or_else(|_| value.to_string())
}

/// What a lost answer is judged against: Graph's change time as the last `track` read it, and
/// when (on our clock) that read was made. Candidates are always tracked after any earlier
/// resend, so the tracked change time is the user's last change before this pass.
const RESEND_COLUMNS: &str = "r.pass_id, r.item_id, i.user_id, i.user_principal_name, r.state, \
    r.attempts, r.checkpoint_at, i.external_user_state_changed_at, i.tracked_at";

impl Queue {
    // ---- track ----------------------------------------------------------------------------

    /// Converted items of the run after `after_id` that have a user id, in id order.
    pub fn track_targets(
        &self,
        run_id: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<TrackTarget>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, user_id, user_principal_name, request_id, client_request_id
                 FROM items WHERE run_id = ?1 AND state = 'converted' AND user_id IS NOT NULL
                   AND id > ?2
                 ORDER BY id LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id, after_id, limit as i64], |r| {
                Ok(TrackTarget {
                    item_id: r.get(0)?,
                    user_id: r.get(1)?,
                    user_principal_name: r.get(2)?,
                    request_id: r.get(3)?,
                    client_request_id: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    pub fn start_track(&self, run_id: i64) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO tracks (run_id, started_at) VALUES (?1, ?2)",
            params![run_id, now()],
        )
        .map_err(|e| self.err(e))?;
        Ok(conn.last_insert_rowid())
    }

    /// Records one chunk of `track` results in one transaction. A `NotApplied` item must still
    /// be `converted` (it moves to `failed`); anything else moved under us is an error.
    pub fn record_track_results(&self, track_id: i64, results: &[TrackResult]) -> Result<()> {
        let at = now();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut counts = TrackCounts::default();
        for result in results {
            match result {
                TrackResult::Seen {
                    item_id,
                    state,
                    changed_at,
                } => {
                    tx.execute(
                        "UPDATE items SET external_user_state = ?2,
                            external_user_state_changed_at = ?3, tracked_at = ?4
                         WHERE id = ?1",
                        params![
                            item_id,
                            state,
                            changed_at.as_deref().map(normalize_time),
                            at
                        ],
                    )
                    .map_err(|e| self.err(e))?;
                    if state == ACCEPTED {
                        counts.accepted += 1;
                    } else {
                        counts.pending += 1;
                    }
                }
                TrackResult::NotApplied { item_id, message } => {
                    let changed = tx
                        .execute(
                            "UPDATE items SET state = 'failed', error_code = ?2,
                                error_message = ?3, external_user_state = NULL,
                                external_user_state_changed_at = NULL, tracked_at = ?4,
                                updated_at = ?4
                             WHERE id = ?1 AND state = 'converted'",
                            params![item_id, NOT_APPLIED, message, at],
                        )
                        .map_err(|e| self.err(e))?;
                    if changed != 1 {
                        return Err(QueueError::Moved {
                            item_id: *item_id,
                            expected: "converted",
                            actual: "another state".into(),
                        });
                    }
                    counts.not_applied += 1;
                }
                TrackResult::Missing { item_id } => {
                    tx.execute(
                        "UPDATE items SET external_user_state = NULL,
                            external_user_state_changed_at = NULL, tracked_at = ?2
                         WHERE id = ?1",
                        params![item_id, at],
                    )
                    .map_err(|e| self.err(e))?;
                    counts.missing += 1;
                }
            }
        }
        tx.execute(
            "UPDATE tracks SET accepted = accepted + ?2, pending = pending + ?3,
                not_applied = not_applied + ?4, missing = missing + ?5
             WHERE id = ?1",
            params![
                track_id,
                counts.accepted as i64,
                counts.pending as i64,
                counts.not_applied as i64,
                counts.missing as i64
            ],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Marks a `track` complete; only complete tracks count for `lastTrackedAt` and `resend`.
    pub fn finish_track(&self, track_id: i64) -> Result<TrackCounts> {
        let conn = self.conn();
        conn.execute(
            "UPDATE tracks SET finished_at = ?2 WHERE id = ?1",
            params![track_id, now()],
        )
        .map_err(|e| self.err(e))?;
        conn.query_row(
            "SELECT accepted, pending, not_applied, missing FROM tracks WHERE id = ?1",
            [track_id],
            |r| {
                Ok(TrackCounts {
                    accepted: r.get::<_, i64>(0)? as u64,
                    pending: r.get::<_, i64>(1)? as u64,
                    not_applied: r.get::<_, i64>(2)? as u64,
                    missing: r.get::<_, i64>(3)? as u64,
                })
            },
        )
        .map_err(|e| self.err(e))
    }

    // ---- read-only queries for status and reports -----------------------------------------

    /// Redemption counts of the run as of the last `track` (SPEC.md, "Machine-readable status").
    pub fn redemption_counts(&self, run_id: i64) -> Result<RedemptionCounts> {
        let conn = self.conn();
        let (pending, accepted, untracked, not_applied): (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT
                   coalesce(sum(state = 'converted' AND external_user_state = 'PendingAcceptance'), 0),
                   coalesce(sum(state = 'converted' AND external_user_state = 'Accepted'), 0),
                   coalesce(sum(state = 'converted' AND (external_user_state IS NULL
                     OR external_user_state NOT IN ('PendingAcceptance', 'Accepted'))), 0),
                   coalesce(sum(state = 'failed' AND error_code = 'NotApplied'), 0)
                 FROM items WHERE run_id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(|e| self.err(e))?;
        let last_tracked_at: Option<String> = conn
            .query_row(
                "SELECT max(finished_at) FROM tracks WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(RedemptionCounts {
            pending_acceptance: pending as u64,
            accepted: accepted as u64,
            not_applied: not_applied as u64,
            untracked: untracked as u64,
            last_tracked_at,
        })
    }

    /// Every completed `track` of the run, oldest first: redemption counts over time.
    pub fn track_history(&self, run_id: i64) -> Result<Vec<TrackPass>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, started_at, finished_at, accepted, pending, not_applied, missing
                 FROM tracks WHERE run_id = ?1 AND finished_at IS NOT NULL ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok(TrackPass {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                    finished_at: r.get(2)?,
                    accepted: r.get::<_, i64>(3)? as u64,
                    pending: r.get::<_, i64>(4)? as u64,
                    not_applied: r.get::<_, i64>(5)? as u64,
                    missing: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Redemptions per UTC day, from Graph's change times of the users `track` saw `Accepted`.
    pub fn redemption_timeline(&self, run_id: i64) -> Result<Vec<RedemptionDay>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT substr(external_user_state_changed_at, 1, 10) AS day, count(*)
                 FROM items WHERE run_id = ?1 AND state = 'converted'
                   AND external_user_state = 'Accepted'
                   AND external_user_state_changed_at IS NOT NULL
                 GROUP BY day ORDER BY day",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let mut cumulative = 0;
        Ok(rows
            .into_iter()
            .map(|(day, accepted)| {
                cumulative += accepted;
                RedemptionDay {
                    day,
                    accepted,
                    cumulative,
                }
            })
            .collect())
    }

    /// Converted users who have not redeemed per the last `track` (pending or never tracked),
    /// oldest invitation first, at most `limit`.
    pub fn not_redeemed(&self, run_id: i64, limit: usize) -> Result<Vec<NotRedeemed>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT i.id, i.user_id, i.user_principal_name, i.external_email, i.invited_at,
                   i.external_user_state, i.external_user_state_changed_at,
                   (SELECT max(r.sent_at) FROM resends r WHERE r.item_id = i.id AND r.state = 'sent')
                 FROM items i WHERE i.run_id = ?1 AND i.state = 'converted'
                   AND (i.external_user_state IS NULL OR i.external_user_state <> 'Accepted')
                 ORDER BY i.invited_at, i.id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id, limit as i64], |r| {
                Ok(NotRedeemed {
                    item_id: r.get(0)?,
                    user_id: r.get(1)?,
                    user_principal_name: r.get(2)?,
                    external_email: r.get(3)?,
                    invited_at: r.get(4)?,
                    external_user_state: r.get(5)?,
                    external_user_state_changed_at: r.get(6)?,
                    last_resent_at: r.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Redeem links of the run's converted users (only runs with `--keep-redeem-links` have any).
    pub fn redeem_links(&self, run_id: i64) -> Result<Vec<RedeemLink>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT user_principal_name, external_email, invite_redeem_url FROM items
                 WHERE run_id = ?1 AND state = 'converted' AND invite_redeem_url IS NOT NULL
                 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok(RedeemLink {
                    user_principal_name: r.get(0)?,
                    external_email: r.get(1)?,
                    invite_redeem_url: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    // ---- resend passes --------------------------------------------------------------------

    /// The run's unfinished resend pass, if one was interrupted.
    pub fn open_resend_pass(&self, run_id: i64) -> Result<Option<ResendPass>> {
        self.conn()
            .query_row(
                "SELECT id, run_id, older_than_days, started_at, finished_at FROM resend_passes
                 WHERE run_id = ?1 AND finished_at IS NULL ORDER BY id LIMIT 1",
                [run_id],
                pass_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Converted users still `PendingAcceptance` per the last `track` whose last invitation
    /// (Graph's change time, else the conversion, or a later resend) is at or before `cutoff`.
    pub fn resend_candidates(&self, run_id: i64, cutoff: &str) -> Result<u64> {
        let n: i64 = self
            .conn()
            .query_row(
                &format!("SELECT count(*) FROM items i WHERE {CANDIDATE_WHERE}"),
                params![run_id, cutoff],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// The users of [`Queue::resend_candidates`], in item order (`resend --dry-run` lists them).
    pub fn resend_candidate_list(&self, run_id: i64, cutoff: &str) -> Result<Vec<ResendUser>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT i.id, i.user_id, i.user_principal_name, i.external_email FROM items i
                 WHERE {CANDIDATE_WHERE} ORDER BY i.id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id, cutoff], |r| {
                Ok(ResendUser {
                    item_id: r.get(0)?,
                    user_id: r.get(1)?,
                    user_principal_name: r.get(2)?,
                    external_email: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Creates a pass over the candidates of [`Queue::resend_candidates`], fixing its users in
    /// the same transaction. `None` (and no pass) when there is nobody to re-invite.
    pub fn create_resend_pass(
        &self,
        run_id: i64,
        older_than_days: u32,
        cutoff: &str,
    ) -> Result<Option<ResendPass>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO resend_passes (run_id, older_than_days, started_at) VALUES (?1, ?2, ?3)",
            params![run_id, older_than_days, now()],
        )
        .map_err(|e| self.err(e))?;
        let pass_id = tx.last_insert_rowid();
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO resends (pass_id, item_id)
                     SELECT ?3, i.id FROM items i WHERE {CANDIDATE_WHERE} ORDER BY i.id"
                ),
                params![run_id, cutoff, pass_id],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Ok(None);
        }
        let pass = tx
            .query_row(
                "SELECT id, run_id, older_than_days, started_at, finished_at FROM resend_passes
                 WHERE id = ?1",
                [pass_id],
                pass_from_row,
            )
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Some(pass))
    }

    /// The pass's entries in `state`, in item order.
    pub fn resend_entries(&self, pass_id: i64, state: ResendState) -> Result<Vec<ResendEntry>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {RESEND_COLUMNS} FROM resends r JOIN items i ON i.id = r.item_id
                 WHERE r.pass_id = ?1 AND r.state = ?2 ORDER BY r.item_id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![pass_id, state.as_str()], |r| {
                Ok((
                    ResendEntry {
                        pass_id: r.get(0)?,
                        item_id: r.get(1)?,
                        user_id: r.get(2)?,
                        user_principal_name: r.get(3)?,
                        state: ResendState::Pending,
                        attempts: r.get::<_, i64>(5)? as u32,
                        checkpoint_at: r.get(6)?,
                        tracked_changed_at: r.get(7)?,
                        tracked_at: r.get(8)?,
                    },
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(mut entry, state)| {
                entry.state = ResendState::parse(&state)?;
                Ok(entry)
            })
            .collect()
    }

    /// Checkpoint before a resend can leave the process: `pending` → `in_flight`. Returns the
    /// checkpoint time, which a lost answer is later judged against. Not an attempt: a process
    /// killed right after it sent nothing (see [`Queue::charge_resend_attempt`]).
    pub fn mark_resend_in_flight(&self, pass_id: i64, item_id: i64) -> Result<String> {
        let at = now();
        self.resend_transition(
            pass_id,
            item_id,
            &["pending"],
            "state = 'in_flight', checkpoint_at = ?3",
            params![pass_id, item_id, at],
        )?;
        Ok(at)
    }

    /// One more re-invitation of the user that may have reached Graph (`--max-attempts`).
    pub fn charge_resend_attempt(&self, pass_id: i64, item_id: i64) -> Result<()> {
        self.resend_transition(
            pass_id,
            item_id,
            &["in_flight"],
            "attempts = attempts + 1",
            params![pass_id, item_id],
        )
    }

    /// The resend took effect. `redeem_url` is stored on the item only for runs with
    /// `--keep-redeem-links` (a reset invalidates the previous link).
    #[allow(clippy::too_many_arguments)]
    pub fn record_resent(
        &self,
        pass_id: i64,
        item_id: i64,
        invitation_id: Option<&str>,
        request_id: Option<&str>,
        client_request_id: Option<&str>,
        redeem_url: Option<&str>,
    ) -> Result<()> {
        let reconciled = invitation_id.is_none();
        let at = now();
        self.resend_transition(
            pass_id,
            item_id,
            &["in_flight"],
            "state = 'sent', sent_at = ?3, reconciled = ?4, invitation_id = ?5,
             request_id = coalesce(?6, request_id),
             client_request_id = coalesce(?7, client_request_id),
             error_code = NULL, error_message = NULL",
            params![
                pass_id,
                item_id,
                at,
                reconciled,
                invitation_id,
                request_id,
                client_request_id
            ],
        )?;
        self.conn()
            .execute(
                &format!(
                    "UPDATE items SET external_user_state = 'PendingAcceptance',
                        invite_redeem_url = CASE WHEN {KEEP_LINKS} THEN coalesce(?2, invite_redeem_url)
                                                 ELSE NULL END
                     WHERE id = ?1"
                ),
                params![item_id, redeem_url],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Graph refused the resend (or attempts ran out): the user stays converted and pending.
    pub fn record_resend_failed(
        &self,
        pass_id: i64,
        item_id: i64,
        code: &str,
        message: &str,
        request_id: Option<&str>,
        client_request_id: Option<&str>,
    ) -> Result<()> {
        self.resend_transition(
            pass_id,
            item_id,
            &["pending", "in_flight"],
            "state = 'failed', error_code = ?3, error_message = ?4,
             request_id = coalesce(?5, request_id),
             client_request_id = coalesce(?6, client_request_id)",
            params![
                pass_id,
                item_id,
                code,
                message,
                request_id,
                client_request_id
            ],
        )
    }

    /// Nothing to send after all: the user redeemed meanwhile, or is gone.
    pub fn record_resend_skipped(&self, pass_id: i64, item_id: i64, why: &str) -> Result<()> {
        self.resend_transition(
            pass_id,
            item_id,
            &["pending", "in_flight"],
            "state = 'skipped', error_message = ?3",
            params![pass_id, item_id, why],
        )
    }

    /// A resend that certainly did not take effect waits again (the tenant refused it before
    /// carrying it out, or a re-read showed the user unchanged).
    pub fn resend_back_to_pending(&self, pass_id: i64, item_id: i64) -> Result<()> {
        self.resend_transition(
            pass_id,
            item_id,
            &["in_flight"],
            "state = 'pending'",
            params![pass_id, item_id],
        )
    }

    /// Notes the last error of an entry that stays where it is.
    pub fn note_resend_error(
        &self,
        pass_id: i64,
        item_id: i64,
        code: &str,
        message: &str,
        request_id: Option<&str>,
    ) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE resends SET error_code = ?3, error_message = ?4,
                    request_id = coalesce(?5, request_id)
                 WHERE pass_id = ?1 AND item_id = ?2",
                params![pass_id, item_id, code, message, request_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn resend_summary(&self, pass_id: i64) -> Result<ResendSummary> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT state, count(*) FROM resends WHERE pass_id = ?1 GROUP BY state")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([pass_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let mut s = ResendSummary::default();
        for (state, n) in rows {
            match ResendState::parse(&state)? {
                ResendState::Pending => s.pending = n,
                ResendState::InFlight => s.in_flight = n,
                ResendState::Sent => s.sent = n,
                ResendState::Failed => s.failed = n,
                ResendState::Skipped => s.skipped = n,
            }
        }
        Ok(s)
    }

    /// Ends a pass once none of its users is pending or in flight; returns whether it ended.
    pub fn finish_resend_pass(&self, pass_id: i64) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE resend_passes SET finished_at = ?2
                 WHERE id = ?1 AND finished_at IS NULL AND NOT EXISTS (
                   SELECT 1 FROM resends WHERE pass_id = ?1 AND state IN ('pending', 'in_flight'))",
                params![pass_id, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    fn resend_transition(
        &self,
        pass_id: i64,
        item_id: i64,
        from: &[&'static str],
        set: &str,
        params: impl rusqlite::Params,
    ) -> Result<()> {
        let allowed = from
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut conn = self.conn();
        // The lease is checked and the entry changed in one write transaction: a holder that
        // lost the run changes nothing.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        self.check_fence(&tx)?;
        let sql = format!(
            "UPDATE resends SET {set} WHERE pass_id = ?1 AND item_id = ?2 AND state IN ({allowed})"
        );
        if tx.execute(&sql, params).map_err(|e| self.err(e))? == 1 {
            tx.commit().map_err(|e| self.err(e))?;
            return Ok(());
        }
        let conn = tx;
        let actual: Option<String> = conn
            .query_row(
                "SELECT state FROM resends WHERE pass_id = ?1 AND item_id = ?2",
                params![pass_id, item_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Err(QueueError::Moved {
            item_id,
            expected: from[0],
            actual: actual.unwrap_or_else(|| "not in this resend pass".into()),
        })
    }
}

/// Whether the item's run keeps redeem links (`RunOptions.keepRedeemLinks`); evaluated inside
/// the UPDATE so a URL is never written, not even transiently, for a run without the flag.
pub(super) const KEEP_LINKS: &str = "coalesce((SELECT json_extract(options, '$.keepRedeemLinks') \
    FROM runs WHERE runs.id = items.run_id), 0) = 1";

/// `?1` run id, `?2` cutoff: converted, `PendingAcceptance` per the last track, last invited
/// (Graph's change time, else the conversion, or a later resend) at or before the cutoff. A user
/// re-invited after their last track is not known to be pending any more: a new `track` first.
const CANDIDATE_WHERE: &str = "i.run_id = ?1 AND i.state = 'converted' AND i.user_id IS NOT NULL
    AND i.external_user_state = 'PendingAcceptance'
    AND NOT EXISTS (SELECT 1 FROM resends s WHERE s.item_id = i.id AND s.state = 'sent'
                    AND s.sent_at >= coalesce(i.tracked_at, ''))
    AND max(coalesce(i.external_user_state_changed_at, i.invited_at, ''),
            coalesce((SELECT max(r.sent_at) FROM resends r
                      WHERE r.item_id = i.id AND r.state = 'sent'), '')) <= ?2";

fn pass_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResendPass> {
    Ok(ResendPass {
        id: r.get(0)?,
        run_id: r.get(1)?,
        older_than_days: r.get::<_, i64>(2)? as u32,
        started_at: r.get(3)?,
        finished_at: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{ItemState, NewItem, Overrides, RunMode, RunOptions, SourceSpec, UserKey};
    use crate::model::{Invitation, User};

    const URL: &str = "https://login.example/redeem?ticket=SECRET-TICKET";

    /// A live run of `n` users, all converted with an invitation carrying a redeem URL.
    fn converted_run(keep: bool, n: usize) -> (tempfile::TempDir, Queue, i64, Vec<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.db")).unwrap();
        let options = RunOptions {
            keep_redeem_links: keep,
            ..RunOptions::default()
        };
        let run = q
            .create_run(
                &SourceSpec::Csv {
                    path: "u.csv".into(),
                },
                RunMode::Live,
                &options,
                Some("t"),
                "http://127.0.0.1:1",
            )
            .unwrap();
        let rows: Vec<NewItem> = (0..n)
            .map(|i| NewItem {
                line: Some(i as u64 + 2),
                key: Some(UserKey::Id(format!("u{i}"))),
                external_email: None,
                overrides: Overrides::default(),
                bad_input: None,
                snapshot: None,
            })
            .collect();
        q.insert_items(run, &rows, None).unwrap();
        let mut ids = Vec::new();
        for item in q.pending_items(run, 0, n).unwrap() {
            let uid = item.key.as_ref().unwrap().value().to_string();
            let user = User {
                id: uid.clone(),
                user_principal_name: Some(format!("{uid}@contoso.com")),
                mail: Some(format!("{uid}@fabrikam.com")),
                ..Default::default()
            };
            q.record_lookup(item.id, Some(&user)).unwrap();
            q.mark_in_flight(item.id, &format!("{uid}@fabrikam.com"))
                .unwrap();
            let inv = Invitation {
                id: format!("inv-{uid}"),
                status: "PendingAcceptance".into(),
                invite_redeem_url: Some(URL.into()),
                ..Default::default()
            };
            q.record_converted(item.id, Some(&inv), Some("req-1"), Some("crid-1"))
                .unwrap();
            ids.push(item.id);
        }
        (dir, q, run, ids)
    }

    #[test]
    fn redeem_urls_are_stored_only_with_the_flag() {
        let (_d, q, run, ids) = converted_run(false, 2);
        assert!(q.redeem_links(run).unwrap().is_empty());
        let invited: Option<String> = q
            .conn()
            .query_row(
                "SELECT invited_at FROM items WHERE id = ?1",
                [ids[0]],
                |r| r.get(0),
            )
            .unwrap();
        assert!(invited.is_some());
        let (_d2, q2, run2, _) = converted_run(true, 2);
        let links = q2.redeem_links(run2).unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].invite_redeem_url, URL);
        assert_eq!(links[0].external_email.as_deref(), Some("u0@fabrikam.com"));
    }

    #[test]
    fn track_records_states_and_moves_not_applied_to_failed() {
        let (_d, q, run, ids) = converted_run(false, 4);
        assert_eq!(q.redemption_counts(run).unwrap().untracked, 4);
        let targets = q.track_targets(run, 0, 10).unwrap();
        assert_eq!(targets.len(), 4);
        assert_eq!(targets[0].request_id.as_deref(), Some("req-1"));
        let t = q.start_track(run).unwrap();
        q.record_track_results(
            t,
            &[
                TrackResult::Seen {
                    item_id: ids[0],
                    state: ACCEPTED.into(),
                    changed_at: Some("2026-11-21T10:00:00Z".into()),
                },
                TrackResult::Seen {
                    item_id: ids[1],
                    state: PENDING_ACCEPTANCE.into(),
                    changed_at: Some("2026-11-20T10:00:00.1234567Z".into()),
                },
                TrackResult::NotApplied {
                    item_id: ids[2],
                    message: "never took effect (request-id req-1)".into(),
                },
            ],
        )
        .unwrap();
        let counts = q.finish_track(t).unwrap();
        assert_eq!(
            counts,
            TrackCounts {
                accepted: 1,
                pending: 1,
                not_applied: 1,
                missing: 0
            }
        );
        let r = q.redemption_counts(run).unwrap();
        assert_eq!(
            (r.accepted, r.pending_acceptance, r.not_applied, r.untracked),
            (1, 1, 1, 1)
        );
        assert!(r.last_tracked_at.is_some());
        let failed = q.item(ids[2]).unwrap().unwrap();
        assert_eq!(failed.state, ItemState::Failed);
        assert_eq!(failed.error_code.as_deref(), Some(NOT_APPLIED));
        // A second NotApplied for the same item is a bug, and loud.
        assert!(q
            .record_track_results(
                t,
                &[TrackResult::NotApplied {
                    item_id: ids[2],
                    message: "again".into()
                }]
            )
            .is_err());
        // retry puts it back; it is no longer counted not applied.
        assert_eq!(q.requeue_failed(run).unwrap(), 1);
        assert_eq!(q.redemption_counts(run).unwrap().not_applied, 0);

        let timeline = q.redemption_timeline(run).unwrap();
        assert_eq!(
            timeline,
            vec![RedemptionDay {
                day: "2026-11-21".into(),
                accepted: 1,
                cumulative: 1
            }]
        );
        let waiting = q.not_redeemed(run, 10).unwrap();
        let waiting: Vec<_> = waiting.iter().map(|w| w.item_id).collect();
        assert_eq!(waiting, vec![ids[1], ids[3]]);
        assert_eq!(q.track_history(run).unwrap().len(), 1);
        let n = q.not_redeemed(run, 10).unwrap();
        assert_eq!(
            n[0].external_user_state_changed_at.as_deref(),
            Some("2026-11-20T10:00:00.123Z")
        );
    }

    #[test]
    fn a_resend_pass_fixes_its_users_and_is_continued() {
        let (_d, q, run, ids) = converted_run(true, 3);
        let t = q.start_track(run).unwrap();
        q.record_track_results(
            t,
            &[
                TrackResult::Seen {
                    item_id: ids[0],
                    state: ACCEPTED.into(),
                    changed_at: Some("2026-11-01T10:00:00Z".into()),
                },
                TrackResult::Seen {
                    item_id: ids[1],
                    state: PENDING_ACCEPTANCE.into(),
                    changed_at: Some("2026-11-01T10:00:00Z".into()),
                },
                TrackResult::Seen {
                    item_id: ids[2],
                    state: PENDING_ACCEPTANCE.into(),
                    changed_at: Some("2026-11-20T10:00:00Z".into()),
                },
            ],
        )
        .unwrap();
        q.finish_track(t).unwrap();
        // Older than the 10th: only the user invited on the 1st.
        assert_eq!(
            q.resend_candidates(run, "2026-11-10T00:00:00.000Z")
                .unwrap(),
            1
        );
        assert!(q
            .create_resend_pass(run, 3, "2026-10-01T00:00:00.000Z")
            .unwrap()
            .is_none());
        assert!(q.open_resend_pass(run).unwrap().is_none());
        let pass = q
            .create_resend_pass(run, 0, "2026-12-01T00:00:00.000Z")
            .unwrap()
            .unwrap();
        assert_eq!(q.open_resend_pass(run).unwrap(), Some(pass.clone()));
        let pending = q.resend_entries(pass.id, ResendState::Pending).unwrap();
        assert_eq!(
            pending.iter().map(|e| e.item_id).collect::<Vec<_>>(),
            vec![ids[1], ids[2]]
        );
        assert_eq!(
            pending[0].tracked_changed_at.as_deref(),
            Some("2026-11-01T10:00:00.000Z")
        );
        let cp = q.mark_resend_in_flight(pass.id, ids[1]).unwrap();
        assert!(q.mark_resend_in_flight(pass.id, ids[1]).is_err());
        let inflight = q.resend_entries(pass.id, ResendState::InFlight).unwrap();
        assert_eq!(inflight[0].checkpoint_at.as_deref(), Some(cp.as_str()));
        assert_eq!(inflight[0].attempts, 1);
        q.record_resent(pass.id, ids[1], Some("inv-2"), Some("r"), None, Some(URL))
            .unwrap();
        assert!(!q.finish_resend_pass(pass.id).unwrap());
        q.mark_resend_in_flight(pass.id, ids[2]).unwrap();
        q.resend_back_to_pending(pass.id, ids[2]).unwrap();
        q.record_resend_failed(pass.id, ids[2], "BadRequest", "no", None, None)
            .unwrap();
        let s = q.resend_summary(pass.id).unwrap();
        assert_eq!((s.sent, s.failed, s.pending, s.in_flight), (1, 1, 0, 0));
        assert!(q.finish_resend_pass(pass.id).unwrap());
        assert!(q.open_resend_pass(run).unwrap().is_none());
        // Re-invited after the last track: not a candidate again until a new track shows the
        // user still pending, and then only once the resend is older than the cutoff. (The
        // user whose resend was refused stays a candidate.)
        assert_eq!(
            q.resend_candidates(run, "2099-01-01T00:00:00.000Z")
                .unwrap(),
            1
        );
        // Times are to the millisecond: the new track must read after the resend.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let t = q.start_track(run).unwrap();
        q.record_track_results(
            t,
            &[TrackResult::Seen {
                item_id: ids[1],
                state: PENDING_ACCEPTANCE.into(),
                changed_at: Some("2026-11-01T10:00:00Z".into()),
            }],
        )
        .unwrap();
        q.finish_track(t).unwrap();
        assert_eq!(
            q.resend_candidates(run, "2026-11-10T00:00:00.000Z")
                .unwrap(),
            0
        );
        assert_eq!(
            q.resend_candidates(run, "2099-01-01T00:00:00.000Z")
                .unwrap(),
            2
        );
    }

    #[test]
    fn graph_times_are_normalised_for_comparison() {
        assert_eq!(
            normalize_time("2026-11-20T10:00:00Z"),
            "2026-11-20T10:00:00.000Z"
        );
        assert_eq!(
            normalize_time("2026-11-20T11:00:00.9999+01:00"),
            "2026-11-20T10:00:00.999Z"
        );
        assert_eq!(normalize_time("garbage"), "garbage");
    }
}
