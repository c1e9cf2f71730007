//! `retire` passes (issue 19): the users a pass fixes when it starts, where each is within it
//! (which of its two steps are done, the Graph times a lost answer is judged against), and the
//! credential facts `track` and `retire` read (synced or not, `lastPasswordChangeDateTime`).
//! SQL only; the decisions live in `workers::retire`. Every change of an entry is fenced by the
//! run's lease. No password is ever written here.

use rusqlite::{params, OptionalExtension};

use super::pass::{entry_state, text, EntryChange, PassUser, PASS_USER_COLUMNS};
use super::track::{normalize_time, ACCEPTED};
use super::{now, Queue, Result, Trace};
use crate::item::{wire_enum, ItemState};

/// A `retire` pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetirePass {
    pub id: i64,
    pub run_id: i64,
    pub started_at: String,
}

entry_state! {
    /// Where one user is within a retire pass.
    pub enum RetireState {
        /// Password set and sessions revoked.
        Retired = "retired",
        /// Not written: see [`SkipKind`].
        Skipped,
    }
    table = "retires", passes = "retire_passes", missing = "not in this retire pass";
}

wire_enum! {
    /// Why a user of a pass was not written.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum SkipKind {
        /// Not `Accepted` when the pass re-read them: both credentials work until redemption.
        Unredeemed = "unredeemed",
        /// Synced from on-premises: Graph cannot write the password (`scripts`).
        Synced = "synced",
        /// Holds an admin role: needs Privileged Authentication Administrator.
        Privileged = "privileged",
        /// No longer in the tenant.
        Gone = "gone",
    }
    unknown = |s| format!("unknown retire skip kind `{s}`");
}

/// One user of a retire pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetireEntry {
    pub pass_id: i64,
    pub user: PassUser,
    pub state: RetireState,
    /// The step checkpointed in flight (`Step::as_str`).
    pub step: Option<String>,
    pub attempts: u32,
    pub password_before: Option<String>,
    pub sessions_before: Option<String>,
    pub password_set: bool,
    pub sessions_revoked: bool,
    pub skip_kind: Option<SkipKind>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// Counts of a pass by entry state, and of its skipped users by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetireSummary {
    pub pending: u64,
    pub in_flight: u64,
    pub retired: u64,
    pub failed: u64,
    pub unredeemed: u64,
    pub synced: u64,
    pub privileged: u64,
    pub gone: u64,
}

impl RetireSummary {
    /// Users of the pass not retired and not gone: they still hold a working internal password.
    pub fn not_done(&self) -> u64 {
        self.pending
            + self.in_flight
            + self.failed
            + self.unredeemed
            + self.synced
            + self.privileged
    }
}

/// A run's retirement as status and reports show it (docs/usage.md, `retire`: status JSON `retired`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiredCounts {
    /// Cloud-only converted users whose internal password was set to a random value.
    pub passwords: u64,
    /// … and whose sign-in sessions were revoked.
    pub sessions: u64,
    /// Cloud-only converted users not retired who had not redeemed when last read.
    pub awaiting_redemption: u64,
    /// Cloud-only converted users who redeemed but are not retired yet (`retire` does them).
    pub redeemed_not_retired: u64,
    pub on_premises: OnPremisesCounts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OnPremisesCounts {
    /// Synced converted users whose password changed after their redemption.
    pub retired: u64,
    /// Synced converted users not known to be retired.
    pub not_yet: u64,
}

/// What a read of one converted user showed about its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFacts {
    pub item_id: i64,
    pub synced: bool,
    pub password_changed_at: Option<String>,
    /// `externalUserState` and its change time, when the read is `retire`'s (`track` records
    /// them with its results).
    pub seen: Option<SeenState>,
}

/// A user's `externalUserState` and its change time as Graph showed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenState {
    pub state: Option<String>,
    pub changed_at: Option<String>,
}

/// (After [`PASS_USER_COLUMNS`].)
const ENTRY_COLUMNS: &str = "r.pass_id, r.state, r.step, r.attempts, r.password_before, r.sessions_before, r.password_set_at IS NOT NULL, \
    r.sessions_revoked_at IS NOT NULL, r.skip_kind, r.error_code, r.error_message";

/// `?1` run id: converted items with an object id not retired by an earlier pass.
const CANDIDATE_WHERE: &str = "i.run_id = ?1 AND i.state = ?2 AND i.user_id IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM retires x WHERE x.item_id = i.id AND x.state = ?3)";

/// The parameters of [`CANDIDATE_WHERE`].
fn candidate_params(run_id: &i64) -> [&dyn rusqlite::ToSql; 3] {
    [run_id, &ItemState::Converted, &RetireState::Retired]
}

/// Whether an item is synced: the last read, else the snapshot taken before the conversion.
pub(super) const SYNCED: &str =
    "coalesce(i.on_premises_sync, json_extract(i.snapshot, '$.onPremisesSyncEnabled'), 0) = 1";

impl Queue {
    /// The run's unfinished retire pass, if one was interrupted.
    pub fn open_retire_pass(&self, run_id: i64) -> Result<Option<RetirePass>> {
        self.conn()
            .query_row(
                "SELECT id, run_id, started_at FROM retire_passes
                 WHERE run_id = ?1 AND finished_at IS NULL ORDER BY id LIMIT 1",
                [run_id],
                |r| {
                    Ok(RetirePass {
                        id: r.get(0)?,
                        run_id: r.get(1)?,
                        started_at: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The converted users a new pass would take, in item order.
    pub fn retire_candidates(&self, run_id: i64) -> Result<Vec<PassUser>> {
        self.candidate_users(CANDIDATE_WHERE, &candidate_params(&run_id))
    }

    /// Creates a pass over [`Queue::retire_candidates`], fixing its users in the same
    /// transaction. `None` (and no pass) when there is nobody to retire.
    pub fn create_retire_pass(&self, run_id: i64) -> Result<Option<RetirePass>> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        self.check_fence(&tx)?;
        let at = now();
        let Some(pass_id) = self.insert_pass::<RetireState>(
            &tx,
            "run_id, started_at",
            params![run_id, at],
            CANDIDATE_WHERE,
            &candidate_params(&run_id),
        )?
        else {
            return Ok(None);
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Some(RetirePass {
            id: pass_id,
            run_id,
            started_at: at,
        }))
    }

    /// The pass's entries in `state`, in item order.
    pub fn retire_entries(&self, pass_id: i64, state: RetireState) -> Result<Vec<RetireEntry>> {
        self.entries_where("r.state = ?2", params![pass_id, state])
    }

    /// Every entry of the pass, in item order.
    pub fn all_retire_entries(&self, pass_id: i64) -> Result<Vec<RetireEntry>> {
        self.entries_where("1", params![pass_id])
    }

    fn entries_where(&self, cond: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<RetireEntry>> {
        self.select_rows(
            &format!(
                "SELECT {PASS_USER_COLUMNS}, {ENTRY_COLUMNS}
                 FROM retires r JOIN items i ON i.id = r.item_id
                 WHERE r.pass_id = ?1 AND {cond} ORDER BY r.item_id"
            ),
            p,
            |r| {
                Ok(RetireEntry {
                    user: PassUser::from_row(r)?,
                    pass_id: r.get(4)?,
                    state: r.get(5)?,
                    step: r.get(6)?,
                    attempts: r.get::<_, i64>(7)? as u32,
                    password_before: r.get(8)?,
                    sessions_before: r.get(9)?,
                    password_set: r.get(10)?,
                    sessions_revoked: r.get(11)?,
                    skip_kind: r.get(12)?,
                    error_code: r.get(13)?,
                    error_message: r.get(14)?,
                })
            },
        )
    }

    /// Counts of the pass's entries by state, and of its skipped users by why.
    pub fn retire_summary(&self, pass_id: i64) -> Result<RetireSummary> {
        let rows: Vec<(RetireState, Option<SkipKind>, i64)> = self.select_rows(
            "SELECT state, skip_kind, count(*) FROM retires WHERE pass_id = ?1
             GROUP BY state, skip_kind",
            [pass_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let mut s = RetireSummary::default();
        for (state, kind, n) in rows {
            let n = n as u64;
            match (state, kind) {
                (RetireState::Pending, _) => s.pending += n,
                (RetireState::InFlight, _) => s.in_flight += n,
                (RetireState::Retired, _) => s.retired += n,
                (RetireState::Failed, _) => s.failed += n,
                (RetireState::Skipped, Some(SkipKind::Unredeemed)) => s.unredeemed += n,
                (RetireState::Skipped, Some(SkipKind::Synced)) => s.synced += n,
                (RetireState::Skipped, Some(SkipKind::Privileged)) => s.privileged += n,
                (RetireState::Skipped, Some(SkipKind::Gone) | None) => s.gone += n,
            }
        }
        Ok(s)
    }

    /// Records what a read of converted users showed about their credentials, and (when
    /// `seen` is given) their `externalUserState` as `retire` re-read it, in one transaction.
    /// `tracked_at` is `track`'s and stays: status and reports count the redemptions the pass
    /// saw.
    pub fn record_credentials(&self, facts: &[CredentialFacts]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for f in facts {
            tx.execute(
                "UPDATE items SET on_premises_sync = ?2, password_changed_at = ?3 WHERE id = ?1",
                params![
                    f.item_id,
                    f.synced,
                    f.password_changed_at.as_deref().map(normalize_time)
                ],
            )
            .map_err(|e| self.err(e))?;
            if let Some(seen) = &f.seen {
                tx.execute(
                    "UPDATE items SET external_user_state = ?2,
                        external_user_state_changed_at = ?3 WHERE id = ?1",
                    params![
                        f.item_id,
                        seen.state,
                        seen.changed_at.as_deref().map(normalize_time)
                    ],
                )
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The run's retirement over all its passes and the last reads (docs/usage.md, `retire`: status `retired`).
    pub fn retired_counts(&self, run_id: i64) -> Result<RetiredCounts> {
        let sql = format!(
            "WITH c AS (
               SELECT i.id, {SYNCED} AS synced, i.external_user_state AS state,
                      i.external_user_state_changed_at AS redeemed_at,
                      i.password_changed_at AS changed_at,
                      EXISTS (SELECT 1 FROM retires r WHERE r.item_id = i.id
                              AND r.password_set_at IS NOT NULL) AS password,
                      EXISTS (SELECT 1 FROM retires r WHERE r.item_id = i.id
                              AND r.sessions_revoked_at IS NOT NULL) AS sessions
               FROM items i WHERE i.run_id = ?1 AND i.state = ?2)
             SELECT
               coalesce(sum(NOT synced AND password), 0),
               coalesce(sum(NOT synced AND sessions), 0),
               coalesce(sum(NOT synced AND NOT password AND coalesce(state, '') <> ?3), 0),
               coalesce(sum(NOT synced AND NOT password AND coalesce(state, '') = ?3), 0),
               coalesce(sum(synced AND state = ?3 AND changed_at > redeemed_at), 0),
               coalesce(sum(synced AND NOT (coalesce(state, '') = ?3
                                            AND coalesce(changed_at > redeemed_at, 0))), 0)
             FROM c"
        );
        self.conn()
            .query_row(&sql, params![run_id, ItemState::Converted, ACCEPTED], |r| {
                let n = |k: usize| r.get::<_, i64>(k).map(|v| v as u64);
                Ok(RetiredCounts {
                    passwords: n(0)?,
                    sessions: n(1)?,
                    awaiting_redemption: n(2)?,
                    redeemed_not_retired: n(3)?,
                    on_premises: OnPremisesCounts {
                        retired: n(4)?,
                        not_yet: n(5)?,
                    },
                })
            })
            .map_err(|e| self.err(e))
    }
}

/// A change of a retire entry, for [`Queue::change_entry`] with [`super::EntryKey::of_pass`].
pub type RetireChange = EntryChange<RetireState>;

impl RetireChange {
    /// Checkpoint before a request for `step` can leave the process: `pending` → `in_flight`
    /// (in flight already when the step before it was just done in this process). The Graph
    /// times the pass just read are kept the first time: a later checkpoint of the same entry
    /// keeps what was seen before anything was sent.
    pub fn in_flight(
        step: &str,
        password_before: Option<&str>,
        sessions_before: Option<&str>,
    ) -> Self {
        Self::moves(
            &[RetireState::Pending, RetireState::InFlight],
            RetireState::InFlight,
            "step = ?3, checkpoint_at = ?4,
             password_before = CASE WHEN password_set_at IS NULL AND attempts = 0
                               THEN ?5 ELSE password_before END,
             sessions_before = CASE WHEN sessions_revoked_at IS NULL AND attempts = 0
                               THEN ?6 ELSE sessions_before END",
            vec![
                text(Some(step)),
                text(Some(&now())),
                text(password_before),
                text(sessions_before),
            ],
        )
    }

    /// A step took effect: the password is set (`password`) or the sessions are revoked; the
    /// next step starts with no attempts. The entry stays in flight.
    pub fn step_done(password: bool) -> Self {
        let column = if password {
            "password_set_at"
        } else {
            "sessions_revoked_at"
        };
        Self::moves(
            &[RetireState::InFlight, RetireState::Pending],
            RetireState::InFlight,
            &format!("{column} = coalesce({column}, ?3), attempts = 0"),
            vec![text(Some(&now()))],
        )
    }

    /// Both steps are done.
    pub fn retired(trace: &Trace) -> Self {
        Self::moves(
            &[RetireState::InFlight, RetireState::Pending],
            RetireState::Retired,
            "step = NULL, error_code = NULL, error_message = NULL,
             request_id = coalesce(?3, request_id),
             client_request_id = coalesce(?4, client_request_id)",
            vec![
                text(trace.request_id.as_deref()),
                text(trace.client_request_id.as_deref()),
            ],
        )
    }

    /// Graph refused a step (or attempts ran out).
    pub fn failed(code: &str, message: &str, request_id: Option<&str>) -> Self {
        Self::moves(
            &[RetireState::Pending, RetireState::InFlight],
            RetireState::Failed,
            "error_code = ?3, error_message = ?4, request_id = coalesce(?5, request_id)",
            vec![text(Some(code)), text(Some(message)), text(request_id)],
        )
    }

    /// The user is not written in this pass, for `kind`.
    pub fn skipped(kind: SkipKind, why: &str) -> Self {
        Self::moves(
            &[RetireState::Pending, RetireState::InFlight],
            RetireState::Skipped,
            "skip_kind = ?3, error_message = ?4",
            vec![text(Some(kind.as_str())), text(Some(why))],
        )
    }
}
