//! Redemption bookkeeping (issue 10): what `track` read about converted users, the `resend`
//! passes that re-invite those still pending, and the read-only queries `status`, reports and
//! `export-links` build on. SQL only; the decisions live in `commands::{track, resend}`.

use rusqlite::params;

use super::{now, Queue, QueueError, Result, Trace};
use crate::item::ItemState;

/// `externalUserState` of a user who has redeemed.
pub const ACCEPTED: &str = "Accepted";
/// `externalUserState` of a user invited but not yet redeemed.
pub const PENDING_ACCEPTANCE: &str = "PendingAcceptance";
/// Error code of an item `track` found unchanged after a 201 (docs/usage.md, `track`).
pub const NOT_APPLIED: &str = "NotApplied";

/// A converted item as `track` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackTarget {
    pub item_id: i64,
    pub user_id: String,
    pub user_principal_name: Option<String>,
    /// The ids of the invitation's answer: what Microsoft support asks for.
    pub trace: Trace,
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackCounts {
    pub accepted: u64,
    pub pending: u64,
    pub not_applied: u64,
    pub missing: u64,
}

/// The `tracks` columns [`TrackCounts::from_row`] reads, in its order.
pub(super) const TRACK_COUNT_COLUMNS: &str = "accepted, pending, not_applied, missing";

impl TrackCounts {
    /// The counts from [`TRACK_COUNT_COLUMNS`], selected from column `at` on.
    pub(super) fn from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<TrackCounts> {
        let n = |k: usize| r.get::<_, i64>(at + k).map(|v| v as u64);
        Ok(TrackCounts {
            accepted: n(0)?,
            pending: n(1)?,
            not_applied: n(2)?,
            missing: n(3)?,
        })
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

// The read-only aggregates and the resend passes live beside this module; their types are
// re-exported here, where callers have always found them.
pub use super::redemption::*;
pub use super::resend::*;

impl Queue {
    // ---- track ----------------------------------------------------------------------------

    /// Converted items of the run after `after_id` that have a user id, in id order.
    pub fn track_targets(
        &self,
        run_id: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<TrackTarget>> {
        self.select_rows(
            "SELECT id, user_id, user_principal_name, request_id, client_request_id
             FROM items WHERE run_id = ?1 AND state = ?4 AND user_id IS NOT NULL
               AND id > ?2
             ORDER BY id LIMIT ?3",
            params![run_id, after_id, limit as i64, ItemState::Converted],
            |r| {
                Ok(TrackTarget {
                    item_id: r.get(0)?,
                    user_id: r.get(1)?,
                    user_principal_name: r.get(2)?,
                    trace: Trace {
                        request_id: r.get(3)?,
                        client_request_id: r.get(4)?,
                    },
                })
            },
        )
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
                            "UPDATE items SET state = ?5, error_code = ?2,
                                error_message = ?3, external_user_state = NULL,
                                external_user_state_changed_at = NULL, tracked_at = ?4,
                                updated_at = ?4
                             WHERE id = ?1 AND state = ?6",
                            params![
                                item_id,
                                NOT_APPLIED,
                                message,
                                at,
                                ItemState::Failed,
                                ItemState::Converted
                            ],
                        )
                        .map_err(|e| self.err(e))?;
                    if changed != 1 {
                        return Err(QueueError::Moved {
                            item_id: *item_id,
                            expected: ItemState::Converted.as_str(),
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
        self.conn()
            .query_row(
                &format!(
                    "UPDATE tracks SET finished_at = ?2 WHERE id = ?1 RETURNING {TRACK_COUNT_COLUMNS}"
                ),
                params![track_id, now()],
                |r| TrackCounts::from_row(r, 0),
            )
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::item::{ItemState, RunMode, RunOptions};
    use crate::model::{Invitation, User};
    use crate::queue::pass::EntryKey;
    use crate::queue::testing::{csv_run_with, insert_users, temp_queue};
    use crate::queue::Trace;

    const URL: &str = "https://login.example/redeem?ticket=SECRET-TICKET";

    /// Makes one change to the entry of `item` in `pass`.
    fn change(q: &Queue, pass: i64, item: i64, change: ResendChange) -> Result<()> {
        q.change_entry(&EntryKey::of_pass(pass, item), &[change])
    }

    /// A live run of `n` users, all converted with an invitation carrying a redeem URL.
    fn converted_run(keep: bool, n: usize) -> (tempfile::TempDir, Arc<Queue>, i64, Vec<i64>) {
        let (dir, q) = temp_queue();
        let options = RunOptions {
            keep_redeem_links: keep,
            ..RunOptions::default()
        };
        let run = csv_run_with(&q, RunMode::Live, &options, Some("t"));
        let ids = insert_users(&q, run, n);
        for (i, &id) in ids.iter().enumerate() {
            let uid = format!("u{i}");
            let user = User {
                id: uid.clone(),
                user_principal_name: Some(format!("{uid}@contoso.com")),
                mail: Some(format!("{uid}@fabrikam.com")),
                ..Default::default()
            };
            q.record_lookup(id, Some(&user)).unwrap();
            q.mark_in_flight(id, &format!("{uid}@fabrikam.com"))
                .unwrap();
            let inv = Invitation {
                id: format!("inv-{uid}"),
                status: "PendingAcceptance".into(),
                invite_redeem_url: Some(URL.into()),
                ..Default::default()
            };
            q.record_converted(id, Some(&inv), Some("req-1"), Some("crid-1"))
                .unwrap();
        }
        (dir, q, run, ids)
    }

    /// What `track` concludes of a user it saw in `state`, changed at `changed_at`.
    fn seen(item_id: i64, state: &str, changed_at: &str) -> TrackResult {
        TrackResult::Seen {
            item_id,
            state: state.into(),
            changed_at: Some(changed_at.into()),
        }
    }

    /// One whole `track` of `run` that concludes `results`.
    fn track(q: &Queue, run: i64, results: &[TrackResult]) {
        let t = q.start_track(run).unwrap();
        q.record_track_results(t, results).unwrap();
        q.finish_track(t).unwrap();
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
        assert_eq!(targets[0].trace.request_id.as_deref(), Some("req-1"));
        let t = q.start_track(run).unwrap();
        q.record_track_results(
            t,
            &[
                seen(ids[0], ACCEPTED, "2026-11-21T10:00:00Z"),
                seen(ids[1], PENDING_ACCEPTANCE, "2026-11-20T10:00:00.1234567Z"),
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
        let waiting: Vec<_> = waiting.iter().map(|w| w.user.item_id).collect();
        assert_eq!(waiting, vec![ids[1], ids[3]]);
        assert_eq!(q.track_history(run).unwrap().len(), 1);
        let n = q.not_redeemed(run, 10).unwrap();
        assert_eq!(
            n[0].external_user_state_changed_at.as_deref(),
            Some("2026-11-20T10:00:00.123Z")
        );
    }

    #[test]
    fn a_resend_holder_taken_over_changes_no_entry() {
        let (_d, q, run, ids) = converted_run(false, 1);
        track(
            &q,
            run,
            &[seen(ids[0], PENDING_ACCEPTANCE, "2026-11-01T10:00:00Z")],
        );
        let pass = q
            .create_resend_pass(run, 0, "2099-01-01T00:00:00.000Z")
            .unwrap()
            .unwrap();
        let _lease = q.take_lease(run).unwrap();
        change(&q, pass.id, ids[0], ResendChange::in_flight().0).unwrap();
        // Another process takes the run over (this one froze past the stale window).
        q.conn()
            .execute(
                "UPDATE run_leases SET token = 'theirs' WHERE run_id = ?1",
                [run],
            )
            .unwrap();
        let lost = |r: Result<()>| matches!(r, Err(QueueError::LeaseLost { .. }));
        let late = [
            ResendChange::charge(),
            ResendChange::sent(Some("inv"), &Trace::default(), None),
            ResendChange::note_error("E", "late", None),
            ResendChange::back_to_pending(),
        ];
        for refused in late {
            assert!(lost(change(&q, pass.id, ids[0], refused)));
        }
        let entry = &q.resend_entries(pass.id, ResendState::InFlight).unwrap()[0];
        assert_eq!(entry.attempts, 0);
        assert_eq!(q.resend_summary(pass.id).unwrap().done, 0);
    }

    #[test]
    fn a_resend_pass_fixes_its_users_and_is_continued() {
        let (_d, q, run, ids) = converted_run(true, 3);
        track(
            &q,
            run,
            &[
                seen(ids[0], ACCEPTED, "2026-11-01T10:00:00Z"),
                seen(ids[1], PENDING_ACCEPTANCE, "2026-11-01T10:00:00Z"),
                seen(ids[2], PENDING_ACCEPTANCE, "2026-11-20T10:00:00Z"),
            ],
        );
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
            pending.iter().map(|e| e.user.item_id).collect::<Vec<_>>(),
            vec![ids[1], ids[2]]
        );
        assert_eq!(
            pending[0].tracked_changed_at.as_deref(),
            Some("2026-11-01T10:00:00.000Z")
        );
        let (in_flight, cp) = ResendChange::in_flight();
        change(&q, pass.id, ids[1], in_flight).unwrap();
        assert!(change(&q, pass.id, ids[1], ResendChange::in_flight().0).is_err());
        let inflight = q.resend_entries(pass.id, ResendState::InFlight).unwrap();
        assert_eq!(inflight[0].checkpoint_at.as_deref(), Some(cp.as_str()));
        // The checkpoint is not an attempt (a kill right after it sent nothing); the answer is.
        assert_eq!(inflight[0].attempts, 0);
        change(&q, pass.id, ids[1], ResendChange::charge()).unwrap();
        let inflight = q.resend_entries(pass.id, ResendState::InFlight).unwrap();
        assert_eq!(inflight[0].attempts, 1);
        let trace = Trace {
            request_id: Some("r".into()),
            client_request_id: None,
        };
        let sent = ResendChange::sent(Some("inv-2"), &trace, Some(URL));
        change(&q, pass.id, ids[1], sent).unwrap();
        assert!(!q.finish_pass::<ResendState>(pass.id).unwrap());
        change(&q, pass.id, ids[2], ResendChange::in_flight().0).unwrap();
        change(&q, pass.id, ids[2], ResendChange::back_to_pending()).unwrap();
        let failed = ResendChange::failed("BadRequest", "no", &Trace::default());
        change(&q, pass.id, ids[2], failed).unwrap();
        let s = q.resend_summary(pass.id).unwrap();
        assert_eq!((s.done, s.failed, s.pending, s.in_flight), (1, 1, 0, 0));
        assert!(q.finish_pass::<ResendState>(pass.id).unwrap());
        assert!(q.open_resend_pass(run).unwrap().is_none());
        // Re-invited after the last track: not a candidate again until a new track shows the
        // user still pending, and then only once the resend is older than the cutoff. (The
        // user whose resend was refused stays a candidate.)
        assert_eq!(
            q.resend_candidates(run, "2099-01-01T00:00:00.000Z")
                .unwrap(),
            1
        );
        // The new track must read after the resend; both stamps are to the millisecond, so
        // the resend is moved a second back rather than waited for.
        q.conn()
            .execute(
                "UPDATE resends SET sent_at = strftime('%Y-%m-%dT%H:%M:%fZ', sent_at, '-1 second')
                 WHERE sent_at IS NOT NULL",
                [],
            )
            .unwrap();
        track(
            &q,
            run,
            &[seen(ids[1], PENDING_ACCEPTANCE, "2026-11-01T10:00:00Z")],
        );
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
