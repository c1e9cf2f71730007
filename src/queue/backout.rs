//! Back-out entries (issue 20): one per item and kind (`restore`, `rollback`), where each user
//! is within its back-out. SQL for the `backout_entries` table only; the decisions live in
//! `workers::backout`. Every change of an entry is fenced by the run's lease.

use rusqlite::params;

use super::pass::{entry_state, text, EntryChange, EntryCounts, PassUser, PASS_USER_COLUMNS};
use super::{now, Queue, Result, Trace};
use crate::item::wire_enum;

wire_enum! {
    /// Which back-out an entry belongs to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BackoutKind {
        /// `restore`: the tool's own follow-up writes put back from the snapshot.
        Restore = "restore",
        /// `rollback`: the user converted back to an internal member (Graph beta).
        Rollback = "rollback",
    }
    unknown = |s| format!("unknown back-out kind `{s}`");
}

entry_state! {
    /// Where one user is within its back-out.
    pub enum BackoutState {
        Done = "done",
        /// Left alone: changed since by someone else, not redeemed, or gone.
        Skipped,
    }
    table = "backout_entries", key = "item_id = ?1 AND kind = ?2",
    missing = "not in this back-out",
    // The step last checkpointed in flight is off the wire.
    off_the_wire = "in_flight = NULL";
}

/// What a `restore` puts back (nothing, for a `rollback`): the properties the tool wrote and the
/// values from before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutBack {
    pub needs_user_type: bool,
    /// The snapshot's userType.
    pub user_type_to: Option<String>,
    pub needs_mail: bool,
    /// The snapshot's mail (`None`: it had none).
    pub mail_to: Option<String>,
    /// The address `--set-mail` wrote.
    pub mail_tool: Option<String>,
}

/// The columns of [`PutBack`], in its field order.
const PUT_BACK_COLUMNS: &str = "needs_user_type, user_type_to, needs_mail, mail_to, mail_tool";

impl PutBack {
    /// The userType put back: the snapshot's, Graph's default `Member` when none was recorded.
    pub fn user_type(&self) -> &str {
        self.user_type_to.as_deref().unwrap_or("Member")
    }

    /// Both properties to put back: userType `Member`, and mail `mail_to` over the tool's
    /// `mail_tool`.
    #[cfg(test)]
    pub(crate) fn user_type_and_mail(mail_to: Option<&str>, mail_tool: Option<&str>) -> PutBack {
        PutBack {
            needs_user_type: true,
            user_type_to: Some("Member".into()),
            needs_mail: true,
            mail_to: mail_to.map(str::to_string),
            mail_tool: mail_tool.map(str::to_string),
        }
    }
}

/// A user to put into a back-out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewBackout {
    pub item_id: i64,
    pub put_back: PutBack,
}

/// One user of a back-out as stored, with its user (the item's object id, UPN and address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoutEntry {
    pub user: PassUser,
    pub kind: BackoutKind,
    pub state: BackoutState,
    pub put_back: PutBack,
    /// The step last checkpointed in flight.
    pub in_flight: Option<String>,
    pub user_type_done: bool,
    pub mail_done: bool,
    /// `rollback`: the file holding the password of the last request that may have left.
    pub passwords_file: Option<String>,
    pub converted_back_at: Option<String>,
    pub attempts: u32,
    pub detail: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub finished_at: Option<String>,
}

/// (After [`PASS_USER_COLUMNS`], `b.kind, b.state` and [`PUT_BACK_COLUMNS`].)
const ENTRY_COLUMNS: &str =
    "b.in_flight, b.user_type_done_at IS NOT NULL, b.mail_done_at IS NOT NULL, b.passwords_file, \
     b.converted_back_at, b.attempts, b.detail, b.error_code, b.error_message, b.finished_at";

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BackoutEntry> {
    let kind: String = r.get(4)?;
    let state: String = r.get(5)?;
    Ok(BackoutEntry {
        user: PassUser::from_row(r)?,
        kind: kind.parse().unwrap_or(BackoutKind::Restore),
        // A state this version does not know reads as failed: it is never worked again.
        state: state.parse().unwrap_or(BackoutState::Failed),
        put_back: PutBack {
            needs_user_type: r.get(6)?,
            user_type_to: r.get(7)?,
            needs_mail: r.get(8)?,
            mail_to: r.get(9)?,
            mail_tool: r.get(10)?,
        },
        in_flight: r.get(11)?,
        user_type_done: r.get(12)?,
        mail_done: r.get(13)?,
        passwords_file: r.get(14)?,
        converted_back_at: r.get(15)?,
        attempts: r.get(16)?,
        detail: r.get(17)?,
        error_code: r.get(18)?,
        error_message: r.get(19)?,
        finished_at: r.get(20)?,
    })
}

impl Queue {
    /// Puts users into a back-out. A user already in it keeps its entry (never started over);
    /// one left alone before (skipped) is taken up again with what is now asked.
    pub fn add_backout(&self, run_id: i64, kind: BackoutKind, users: &[NewBackout]) -> Result<()> {
        let mut conn = self.conn();
        self.check_fence(&conn)?;
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut insert = tx
                .prepare_cached(&format!(
                    "INSERT INTO backout_entries (item_id, run_id, kind, {PUT_BACK_COLUMNS},
                        created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (item_id, kind) DO UPDATE SET
                        state = 'pending', detail = NULL, finished_at = NULL, attempts = 0
                     WHERE backout_entries.state = 'skipped'"
                ))
                .map_err(|e| self.err(e))?;
            let at = now();
            for u in users {
                let p = &u.put_back;
                insert
                    .execute(params![
                        u.item_id,
                        run_id,
                        kind.as_str(),
                        p.needs_user_type,
                        p.user_type_to,
                        p.needs_mail,
                        p.mail_to,
                        p.mail_tool,
                        at
                    ])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The run's entries of `kind`, in item order; `state` narrows them.
    pub fn backout_entries(
        &self,
        run_id: i64,
        kind: BackoutKind,
        state: Option<BackoutState>,
    ) -> Result<Vec<BackoutEntry>> {
        self.select_rows(
            &format!(
                "SELECT {PASS_USER_COLUMNS}, b.kind, b.state, {PUT_BACK_COLUMNS}, {ENTRY_COLUMNS}
                 FROM backout_entries b JOIN items i ON i.id = b.item_id
                 WHERE b.run_id = ?1 AND b.kind = ?2 AND (?3 IS NULL OR b.state = ?3)
                 ORDER BY b.item_id"
            ),
            params![run_id, kind.as_str(), state.map(BackoutState::as_str)],
            entry_from_row,
        )
    }

    /// Counts of the run's entries of `kind` by state.
    pub fn backout_counts(&self, run_id: i64, kind: BackoutKind) -> Result<EntryCounts> {
        self.entry_counts::<BackoutState>("run_id = ?1 AND kind = ?2", &[&run_id, &kind.as_str()])
    }
}

/// A change of a back-out entry, for [`Queue::change_entry`] with [`super::EntryKey::of_item`].
pub type BackoutChange = EntryChange<BackoutState>;

impl BackoutChange {
    /// Checkpoints `step` in flight: after this a request may leave. `passwords_file` names
    /// the file that holds the password this request carries (`rollback` of a cloud user).
    pub fn in_flight(step: &str, passwords_file: Option<&str>) -> Self {
        Self::moves(
            &[BackoutState::Pending, BackoutState::InFlight],
            BackoutState::InFlight,
            "in_flight = ?3, passwords_file = coalesce(?4, passwords_file)",
            vec![text(Some(step)), text(passwords_file)],
        )
    }

    /// Checkpoints `step` done; the next step starts with no attempts made. `None` for the one
    /// step of a rollback: recording the entry done is its checkpoint.
    pub fn step_done(step: &str) -> Option<Self> {
        let column = match step {
            "restore_user_type" => "user_type_done_at",
            "restore_mail" => "mail_done_at",
            _ => return None,
        };
        Some(Self::in_place(
            &format!("{column} = coalesce({column}, ?3), in_flight = NULL, attempts = 0"),
            vec![text(Some(&now()))],
        ))
    }

    /// Every step is done. `converted_back_at` is the conversion answer's time (`rollback`).
    pub fn done(converted_back_at: Option<&str>, trace: &Trace) -> Self {
        Self::moves(
            &[BackoutState::Pending, BackoutState::InFlight],
            BackoutState::Done,
            "in_flight = NULL, finished_at = ?3,
             converted_back_at = coalesce(?4, converted_back_at),
             request_id = coalesce(?5, request_id),
             client_request_id = coalesce(?6, client_request_id),
             error_code = NULL, error_message = NULL",
            vec![
                text(Some(&now())),
                text(converted_back_at),
                text(trace.request_id.as_deref()),
                text(trace.client_request_id.as_deref()),
            ],
        )
    }

    /// Graph refused a step (or attempts ran out).
    pub fn failed(code: &str, message: &str, request_id: Option<&str>) -> Self {
        Self::moves(
            &[BackoutState::Pending, BackoutState::InFlight],
            BackoutState::Failed,
            "in_flight = NULL, finished_at = ?3, error_code = ?4, error_message = ?5,
             request_id = coalesce(?6, request_id)",
            vec![
                text(Some(&now())),
                text(Some(code)),
                text(Some(message)),
                text(request_id),
            ],
        )
    }

    /// Left alone, and why (changed since by someone else, not redeemed, gone).
    pub fn skipped(why: &str) -> Self {
        Self::moves(
            &[BackoutState::Pending, BackoutState::InFlight],
            BackoutState::Skipped,
            "in_flight = NULL, finished_at = ?3, detail = ?4",
            vec![text(Some(&now())), text(Some(why))],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::item::RunMode;
    use crate::queue::pass::EntryKey;
    use crate::queue::testing::{insert_users, queue_with_run};
    use crate::queue::QueueError;

    /// A live run of two users, and their item ids.
    fn queue_with_items() -> (tempfile::TempDir, Arc<Queue>, i64, Vec<i64>) {
        let (dir, q, run) = queue_with_run(RunMode::Live);
        let ids = insert_users(&q, run, 2);
        (dir, q, run, ids)
    }

    fn restore(item_id: i64) -> NewBackout {
        NewBackout {
            item_id,
            put_back: PutBack::user_type_and_mail(None, Some("a@fabrikam.com")),
        }
    }

    #[test]
    fn an_entry_moves_through_its_steps_and_is_never_started_over() {
        let (_d, q, run, ids) = queue_with_items();
        let _lease = q.take_lease(run).unwrap();
        let kind = BackoutKind::Restore;
        q.add_backout(run, kind, &[restore(ids[0]), restore(ids[1])])
            .unwrap();
        let first = EntryKey::of_item(ids[0], kind.as_str());
        let step_done = BackoutChange::step_done("restore_user_type").unwrap();
        q.change_entry(
            &first,
            &[
                BackoutChange::in_flight("restore_user_type", None),
                BackoutChange::charge(),
                step_done,
            ],
        )
        .unwrap();
        let e = &q.backout_entries(run, kind, None).unwrap()[0];
        assert_eq!(e.state, BackoutState::InFlight);
        assert!(e.user_type_done && !e.mail_done);
        assert_eq!((e.attempts, e.in_flight.as_deref()), (0, None));
        let trace = Trace {
            request_id: Some("r1".into()),
            client_request_id: Some("c1".into()),
        };
        q.change_entry(&first, &[BackoutChange::done(None, &trace)])
            .unwrap();
        let why = "changed since by someone else: mail is x@y.com";
        q.change_entry(
            &EntryKey::of_item(ids[1], kind.as_str()),
            &[BackoutChange::skipped(why)],
        )
        .unwrap();
        // Asked again: the done entry keeps its record, the one left alone is taken up again.
        q.add_backout(run, kind, &[restore(ids[0]), restore(ids[1])])
            .unwrap();
        let c = q.backout_counts(run, kind).unwrap();
        assert_eq!((c.done, c.pending, c.skipped), (1, 1, 0));
        assert_eq!(
            q.backout_counts(run, BackoutKind::Rollback).unwrap().done,
            0
        );
    }

    #[test]
    fn a_lost_lease_refuses_every_entry_write() {
        let (_d, q, run, ids) = queue_with_items();
        let _lease = q.take_lease(run).unwrap();
        let kind = BackoutKind::Rollback;
        q.add_backout(
            run,
            kind,
            &[NewBackout {
                item_id: ids[0],
                ..NewBackout::default()
            }],
        )
        .unwrap();
        // Another process takes the run over.
        q.conn()
            .execute(
                "UPDATE run_leases SET token = 'theirs' WHERE run_id = ?1",
                params![run],
            )
            .unwrap();
        let refused = q.change_entry(
            &EntryKey::of_item(ids[0], kind.as_str()),
            &[BackoutChange::in_flight("convert_back", Some("pw.csv"))],
        );
        assert!(
            matches!(refused, Err(QueueError::LeaseLost { .. })),
            "{refused:?}"
        );
        assert!(matches!(
            q.add_backout(run, kind, &[]),
            Err(QueueError::LeaseLost { .. })
        ));
        let e = &q.backout_entries(run, kind, None).unwrap()[0];
        assert_eq!(
            (e.state, e.passwords_file.as_deref()),
            (BackoutState::Pending, None)
        );
    }
}
