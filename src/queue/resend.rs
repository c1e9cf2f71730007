//! `resend` passes (issue 10): the users a pass fixes when it starts and where each is within
//! it. SQL only; the decisions live in `workers::resend`. Every change of an entry is fenced by
//! the run's lease ([`Queue::change_entry`]).

use rusqlite::types::Value;
use rusqlite::{params, OptionalExtension};

use super::pass::{entry_state, text, EntryChange, EntryCounts, PassUser, PASS_USER_COLUMNS};
use super::redemption::KEEP_LINKS;
use super::track::PENDING_ACCEPTANCE;
use super::{now, Queue, Result, Trace};
use crate::item::ItemState;

/// A `resend` pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendPass {
    pub id: i64,
    pub run_id: i64,
    pub older_than_days: u32,
    pub started_at: String,
    pub finished_at: Option<String>,
}

entry_state! {
    /// Where one user is within a resend pass.
    pub enum ResendState {
        Sent = "sent",
        /// Nothing to send after all (redeemed meanwhile, user gone).
        Skipped,
    }
    table = "resends", passes = "resend_passes", missing = "not in this resend pass";
}

/// One user of a resend pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendEntry {
    pub pass_id: i64,
    pub user: PassUser,
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

/// What a lost answer is judged against: Graph's change time as the last `track` read it, and
/// when (on our clock) that read was made. Candidates are always tracked after any earlier
/// resend, so the tracked change time is the user's last change before this pass.
/// (After [`PASS_USER_COLUMNS`].)
const RESEND_COLUMNS: &str = "r.pass_id, r.state, r.attempts, r.checkpoint_at, \
    i.external_user_state_changed_at, i.tracked_at";

impl Queue {
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
                candidate_params(&run_id, &cutoff),
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// The users of [`Queue::resend_candidates`], in item order (`resend --dry-run` lists them).
    pub fn resend_candidate_list(&self, run_id: i64, cutoff: &str) -> Result<Vec<PassUser>> {
        self.candidate_users(CANDIDATE_WHERE, &candidate_params(&run_id, &cutoff))
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
        let Some(pass_id) = self.insert_pass::<ResendState>(
            &tx,
            "run_id, older_than_days, started_at",
            params![run_id, older_than_days, now()],
            CANDIDATE_WHERE,
            &candidate_params(&run_id, &cutoff),
        )?
        else {
            return Ok(None);
        };
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
        self.select_rows(
            &format!(
                "SELECT {PASS_USER_COLUMNS}, {RESEND_COLUMNS}
                 FROM resends r JOIN items i ON i.id = r.item_id
                 WHERE r.pass_id = ?1 AND r.state = ?2 ORDER BY r.item_id"
            ),
            params![pass_id, state],
            |r| {
                Ok(ResendEntry {
                    user: PassUser::from_row(r)?,
                    pass_id: r.get(4)?,
                    state: r.get(5)?,
                    attempts: r.get::<_, i64>(6)? as u32,
                    checkpoint_at: r.get(7)?,
                    tracked_changed_at: r.get(8)?,
                    tracked_at: r.get(9)?,
                })
            },
        )
    }

    /// Counts of the pass's entries by state (`done`: re-invited).
    pub fn resend_summary(&self, pass_id: i64) -> Result<EntryCounts> {
        self.entry_counts::<ResendState>("pass_id = ?1", &[&pass_id])
    }
}

/// A change of a resend entry, for [`Queue::change_entry`] with [`super::EntryKey::of_pass`].
pub type ResendChange = EntryChange<ResendState>;

impl ResendChange {
    /// Checkpoint before a resend can leave the process: `pending` → `in_flight`. Returns the
    /// checkpoint time too, which a lost answer is later judged against. Not an attempt: a
    /// process killed right after it sent nothing (see [`EntryChange::charge`]).
    pub fn in_flight() -> (ResendChange, String) {
        let at = now();
        let change = Self::moves(
            &[ResendState::Pending],
            ResendState::InFlight,
            "checkpoint_at = ?3",
            vec![text(Some(&at))],
        );
        (change, at)
    }

    /// The resend took effect (`invitation_id` none: a re-read showed it did). `redeem_url` is
    /// stored on the item only for runs with `--keep-redeem-links` (a reset invalidates the
    /// previous link); the item is pending acceptance again.
    pub fn sent(invitation_id: Option<&str>, trace: &Trace, redeem_url: Option<&str>) -> Self {
        Self::moves(
            &[ResendState::InFlight],
            ResendState::Sent,
            "sent_at = ?3, reconciled = ?4, invitation_id = ?5,
             request_id = coalesce(?6, request_id),
             client_request_id = coalesce(?7, client_request_id),
             error_code = NULL, error_message = NULL",
            vec![
                text(Some(&now())),
                Value::from(invitation_id.is_none()),
                text(invitation_id),
                text(trace.request_id.as_deref()),
                text(trace.client_request_id.as_deref()),
            ],
        )
        .and_item(
            &format!(
                "external_user_state = ?3,
                 invite_redeem_url = CASE WHEN {KEEP_LINKS} THEN coalesce(?2, invite_redeem_url)
                                          ELSE NULL END"
            ),
            vec![text(redeem_url), text(Some(PENDING_ACCEPTANCE))],
        )
    }

    /// Graph refused the resend (or attempts ran out): the user stays converted and pending.
    pub fn failed(code: &str, message: &str, trace: &Trace) -> Self {
        Self::moves(
            &[ResendState::Pending, ResendState::InFlight],
            ResendState::Failed,
            "error_code = ?3, error_message = ?4,
             request_id = coalesce(?5, request_id),
             client_request_id = coalesce(?6, client_request_id)",
            vec![
                text(Some(code)),
                text(Some(message)),
                text(trace.request_id.as_deref()),
                text(trace.client_request_id.as_deref()),
            ],
        )
    }

    /// Nothing to send after all: the user redeemed meanwhile, or is gone.
    pub fn skipped(why: &str) -> Self {
        Self::moves(
            &[ResendState::Pending, ResendState::InFlight],
            ResendState::Skipped,
            "error_message = ?3",
            vec![text(Some(why))],
        )
    }
}

/// `?1` run id, `?2` cutoff: converted, `PendingAcceptance` per the last track, last invited
/// (Graph's change time, else the conversion, or a later resend) at or before the cutoff. A user
/// re-invited after their last track is not known to be pending any more: a new `track` first.
const CANDIDATE_WHERE: &str = "i.run_id = ?1 AND i.state = ?3 AND i.user_id IS NOT NULL
    AND i.external_user_state = ?4
    AND NOT EXISTS (SELECT 1 FROM resends s WHERE s.item_id = i.id AND s.state = ?5
                    AND s.sent_at >= coalesce(i.tracked_at, ''))
    AND max(coalesce(i.external_user_state_changed_at, i.invited_at, ''),
            coalesce((SELECT max(r.sent_at) FROM resends r
                      WHERE r.item_id = i.id AND r.state = ?5), '')) <= ?2";

/// The parameters of [`CANDIDATE_WHERE`].
fn candidate_params<'a>(run_id: &'a i64, cutoff: &'a &str) -> [&'a dyn rusqlite::ToSql; 5] {
    [
        run_id,
        cutoff,
        &ItemState::Converted,
        &PENDING_ACCEPTANCE,
        &ResendState::Sent,
    ]
}

fn pass_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResendPass> {
    Ok(ResendPass {
        id: r.get(0)?,
        run_id: r.get(1)?,
        older_than_days: r.get::<_, i64>(2)? as u32,
        started_at: r.get(3)?,
        finished_at: r.get(4)?,
    })
}
