//! Back-out entries (issue 20): one per item and kind (`restore`, `rollback`), where each user
//! is within its back-out. SQL for the `backout_entries` table only; the decisions live in
//! `workers::backout`. Every change of an entry is fenced by the run's lease.

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter};

use super::{now, Queue, Result};

/// Which back-out an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoutKind {
    /// `restore`: the tool's own follow-up writes put back from the snapshot.
    Restore,
    /// `rollback`: the user converted back to an internal member (Graph beta).
    Rollback,
}

impl BackoutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackoutKind::Restore => "restore",
            BackoutKind::Rollback => "rollback",
        }
    }
}

/// Where one user is within its back-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoutState {
    Pending,
    /// A request may be on the wire (or was when the process died).
    InFlight,
    Done,
    Failed,
    /// Left alone: changed since by someone else, not redeemed, or gone.
    Skipped,
}

impl BackoutState {
    pub const ALL: [BackoutState; 5] = [
        BackoutState::Pending,
        BackoutState::InFlight,
        BackoutState::Done,
        BackoutState::Failed,
        BackoutState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackoutState::Pending => "pending",
            BackoutState::InFlight => "in_flight",
            BackoutState::Done => "done",
            BackoutState::Failed => "failed",
            BackoutState::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> BackoutState {
        BackoutState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .unwrap_or(BackoutState::Failed)
    }
}

/// A user to put into a back-out: for `restore`, what to put back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewBackout {
    pub item_id: i64,
    pub needs_user_type: bool,
    pub user_type_to: Option<String>,
    pub needs_mail: bool,
    pub mail_to: Option<String>,
    pub mail_tool: Option<String>,
}

/// One user of a back-out as stored, with the item's object id and UPN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoutEntry {
    pub item_id: i64,
    pub kind: BackoutKind,
    pub state: BackoutState,
    pub user_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub needs_user_type: bool,
    pub user_type_to: Option<String>,
    pub needs_mail: bool,
    pub mail_to: Option<String>,
    pub mail_tool: Option<String>,
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

/// How many users of a run each back-out reached, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackoutCounts {
    pub pending: u64,
    pub in_flight: u64,
    pub done: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl BackoutCounts {
    /// Users the back-out has not finished with.
    pub fn open(&self) -> u64 {
        self.pending + self.in_flight
    }
}

const ENTRY_COLUMNS: &str = "b.item_id, b.kind, b.state, i.user_id, i.user_principal_name, \
     b.needs_user_type, b.user_type_to, b.needs_mail, b.mail_to, b.mail_tool, b.in_flight, \
     b.user_type_done_at IS NOT NULL, b.mail_done_at IS NOT NULL, b.passwords_file, \
     b.converted_back_at, b.attempts, b.detail, b.error_code, b.error_message, b.finished_at";

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BackoutEntry> {
    let kind: String = r.get(1)?;
    let state: String = r.get(2)?;
    Ok(BackoutEntry {
        item_id: r.get(0)?,
        kind: if kind == "rollback" {
            BackoutKind::Rollback
        } else {
            BackoutKind::Restore
        },
        state: BackoutState::parse(&state),
        user_id: r.get(3)?,
        user_principal_name: r.get(4)?,
        needs_user_type: r.get(5)?,
        user_type_to: r.get(6)?,
        needs_mail: r.get(7)?,
        mail_to: r.get(8)?,
        mail_tool: r.get(9)?,
        in_flight: r.get(10)?,
        user_type_done: r.get(11)?,
        mail_done: r.get(12)?,
        passwords_file: r.get(13)?,
        converted_back_at: r.get(14)?,
        attempts: r.get(15)?,
        detail: r.get(16)?,
        error_code: r.get(17)?,
        error_message: r.get(18)?,
        finished_at: r.get(19)?,
    })
}

fn text(v: Option<&str>) -> Value {
    v.map_or(Value::Null, |s| Value::Text(s.to_string()))
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
                .prepare_cached(
                    "INSERT INTO backout_entries (item_id, run_id, kind, needs_user_type,
                        user_type_to, needs_mail, mail_to, mail_tool, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (item_id, kind) DO UPDATE SET
                        state = 'pending', detail = NULL, finished_at = NULL, attempts = 0
                     WHERE backout_entries.state = 'skipped'",
                )
                .map_err(|e| self.err(e))?;
            let at = now();
            for u in users {
                insert
                    .execute(params![
                        u.item_id,
                        run_id,
                        kind.as_str(),
                        u.needs_user_type,
                        u.user_type_to,
                        u.needs_mail,
                        u.mail_to,
                        u.mail_tool,
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
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM backout_entries b JOIN items i ON i.id = b.item_id
                 WHERE b.run_id = ?1 AND b.kind = ?2 AND (?3 IS NULL OR b.state = ?3)
                 ORDER BY b.item_id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![run_id, kind.as_str(), state.map(BackoutState::as_str)],
                entry_from_row,
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Counts of the run's entries of `kind` by state.
    pub fn backout_counts(&self, run_id: i64, kind: BackoutKind) -> Result<BackoutCounts> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT state, count(*) FROM backout_entries
                 WHERE run_id = ?1 AND kind = ?2 GROUP BY state",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id, kind.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?;
        let mut c = BackoutCounts::default();
        for row in rows {
            let (state, n) = row.map_err(|e| self.err(e))?;
            match BackoutState::parse(&state) {
                BackoutState::Pending => c.pending = n,
                BackoutState::InFlight => c.in_flight = n,
                BackoutState::Done => c.done = n,
                BackoutState::Failed => c.failed = n,
                BackoutState::Skipped => c.skipped = n,
            }
        }
        Ok(c)
    }

    /// Checkpoints `step` in flight: after this a request may leave. `passwords_file` names
    /// the file that holds the password this request carries (`rollback` of a cloud user).
    pub fn backout_in_flight(
        &self,
        item_id: i64,
        kind: BackoutKind,
        step: &str,
        passwords_file: Option<&str>,
    ) -> Result<()> {
        self.backout_write(
            item_id,
            kind,
            "state = 'in_flight', in_flight = ?5, passwords_file = coalesce(?6, passwords_file)",
            vec![text(Some(step)), text(passwords_file)],
        )
    }

    /// Checkpoints `step` done; the next step starts with no attempts made.
    pub fn backout_step_done(&self, item_id: i64, kind: BackoutKind, step: &str) -> Result<()> {
        let column = match step {
            "restore_user_type" => "user_type_done_at",
            "restore_mail" => "mail_done_at",
            // One step: recording the entry done is its checkpoint.
            _ => return Ok(()),
        };
        self.backout_write(
            item_id,
            kind,
            &format!("{column} = coalesce({column}, ?5), in_flight = NULL, attempts = 0"),
            vec![text(Some(&now()))],
        )
    }

    /// One more request that may have reached Graph.
    pub fn backout_charge(&self, item_id: i64, kind: BackoutKind) -> Result<()> {
        self.backout_write(item_id, kind, "attempts = attempts + 1", vec![])
    }

    /// The last error of an entry whose outcome is unknown.
    pub fn backout_note_error(
        &self,
        item_id: i64,
        kind: BackoutKind,
        code: &str,
        message: &str,
    ) -> Result<()> {
        self.backout_write(
            item_id,
            kind,
            "error_code = ?5, error_message = ?6",
            vec![text(Some(code)), text(Some(message))],
        )
    }

    /// Nothing took effect: the entry waits for a later attempt or `restore`/`rollback`.
    pub fn backout_to_pending(&self, item_id: i64, kind: BackoutKind) -> Result<()> {
        self.backout_write(item_id, kind, "state = 'pending', in_flight = NULL", vec![])
    }

    /// Every step is done. `converted_back_at` is the conversion answer's time (`rollback`).
    pub fn backout_done(
        &self,
        item_id: i64,
        kind: BackoutKind,
        converted_back_at: Option<&str>,
        request_id: Option<&str>,
        client_request_id: Option<&str>,
    ) -> Result<()> {
        self.backout_write(
            item_id,
            kind,
            "state = 'done', in_flight = NULL, finished_at = ?5,
             converted_back_at = coalesce(?6, converted_back_at),
             request_id = coalesce(?7, request_id),
             client_request_id = coalesce(?8, client_request_id),
             error_code = NULL, error_message = NULL",
            vec![
                text(Some(&now())),
                text(converted_back_at),
                text(request_id),
                text(client_request_id),
            ],
        )
    }

    pub fn backout_failed(
        &self,
        item_id: i64,
        kind: BackoutKind,
        code: &str,
        message: &str,
        request_id: Option<&str>,
    ) -> Result<()> {
        self.backout_write(
            item_id,
            kind,
            "state = 'failed', in_flight = NULL, finished_at = ?5, error_code = ?6,
             error_message = ?7, request_id = coalesce(?8, request_id)",
            vec![
                text(Some(&now())),
                text(Some(code)),
                text(Some(message)),
                text(request_id),
            ],
        )
    }

    /// Left alone, and why (changed since by someone else, not redeemed, gone).
    pub fn backout_skipped(&self, item_id: i64, kind: BackoutKind, why: &str) -> Result<()> {
        self.backout_write(
            item_id,
            kind,
            "state = 'skipped', in_flight = NULL, finished_at = ?5, detail = ?6",
            vec![text(Some(&now())), text(Some(why))],
        )
    }

    /// One `UPDATE backout_entries SET {set}` binding the entry as `?1`/`?2`, the fence as
    /// `?3`/`?4` and `values` from `?5`: it changes nothing unless the lease is still ours.
    fn backout_write(
        &self,
        item_id: i64,
        kind: BackoutKind,
        set: &str,
        values: Vec<Value>,
    ) -> Result<()> {
        let (fence_run, fence_token) = self.fence();
        let mut bound = vec![
            Value::Integer(item_id),
            text(Some(kind.as_str())),
            fence_run.map_or(Value::Null, Value::Integer),
            text(fence_token.as_deref()),
        ];
        bound.extend(values);
        let conn = self.conn();
        let changed = conn
            .prepare_cached(&format!(
                "UPDATE backout_entries SET {set} WHERE item_id = ?1 AND kind = ?2 AND {}",
                super::fence_sql(3, 4)
            ))
            .and_then(|mut s| s.execute(params_from_iter(bound)))
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            self.check_fence(&conn)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{NewItem, Overrides, RunMode, RunOptions, SourceSpec, UserKey};
    use crate::queue::QueueError;

    fn queue_with_items() -> (tempfile::TempDir, Queue, i64, Vec<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.db")).unwrap();
        let run = q
            .create_run(
                &SourceSpec::Csv {
                    path: "u.csv".into(),
                },
                RunMode::Live,
                &RunOptions::default(),
                None,
                "http://127.0.0.1:1",
            )
            .unwrap();
        let rows: Vec<NewItem> = (1..=2)
            .map(|n| NewItem {
                line: Some(n),
                key: Some(UserKey::UserPrincipalName(format!("u{n}@contoso.com"))),
                external_email: Some(format!("u{n}@fabrikam.com")),
                overrides: Overrides::default(),
                bad_input: None,
                snapshot: None,
            })
            .collect();
        q.insert_items(run, &rows, None).unwrap();
        let ids = q.items(run).unwrap().iter().map(|i| i.id).collect();
        (dir, q, run, ids)
    }

    fn restore(item_id: i64) -> NewBackout {
        NewBackout {
            item_id,
            needs_user_type: true,
            user_type_to: Some("Member".into()),
            needs_mail: true,
            mail_to: None,
            mail_tool: Some("a@fabrikam.com".into()),
        }
    }

    #[test]
    fn an_entry_moves_through_its_steps_and_is_never_started_over() {
        let (_d, q, run, ids) = queue_with_items();
        let _lease = q.take_lease(run).unwrap();
        let kind = BackoutKind::Restore;
        q.add_backout(run, kind, &[restore(ids[0]), restore(ids[1])])
            .unwrap();
        q.backout_in_flight(ids[0], kind, "restore_user_type", None)
            .unwrap();
        q.backout_charge(ids[0], kind).unwrap();
        q.backout_step_done(ids[0], kind, "restore_user_type")
            .unwrap();
        let e = &q.backout_entries(run, kind, None).unwrap()[0];
        assert_eq!(e.state, BackoutState::InFlight);
        assert!(e.user_type_done && !e.mail_done);
        assert_eq!((e.attempts, e.in_flight.as_deref()), (0, None));
        q.backout_done(ids[0], kind, None, Some("r1"), Some("c1"))
            .unwrap();
        q.backout_skipped(
            ids[1],
            kind,
            "changed since by someone else: mail is x@y.com",
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
        let refused = q.backout_in_flight(ids[0], kind, "convert_back", Some("pw.csv"));
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
