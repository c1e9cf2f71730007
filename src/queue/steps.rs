//! Checkpoints of an item's follow-up steps (`--set-mail`, `--set-guest`): which steps it needs,
//! which are done, and which one may be on the wire. SQL for the `item_steps` table only.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, Queue, Result};

/// One item's step checkpoint as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepRow {
    pub needs_mail: bool,
    pub mail_from: Option<String>,
    pub mail_to: Option<String>,
    pub needs_guest: bool,
    /// `set_mail`, `invite` or `set_guest`: the step last checkpointed in flight.
    pub in_flight: Option<String>,
    pub mail_set: bool,
    pub invited: bool,
    pub guest_set: bool,
    /// Requests at the current step that may have reached Graph.
    pub attempts: u32,
}

/// How many users of a run got each follow-up write (status `followUps`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowUps {
    pub mail_set: u64,
    pub guest_set: u64,
}

const STEP_COLUMNS: &str = "needs_mail, mail_from, mail_to, needs_guest, in_flight, \
     mail_set_at IS NOT NULL, invited_at IS NOT NULL, guest_set_at IS NOT NULL, attempts";

fn step_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<StepRow> {
    Ok(StepRow {
        needs_mail: r.get(at)?,
        mail_from: r.get(at + 1)?,
        mail_to: r.get(at + 2)?,
        needs_guest: r.get(at + 3)?,
        in_flight: r.get(at + 4)?,
        mail_set: r.get(at + 5)?,
        invited: r.get(at + 6)?,
        guest_set: r.get(at + 7)?,
        attempts: r.get(at + 8)?,
    })
}

impl Queue {
    /// Records which steps an item needs, once: a plan already stored (a resumed item) is kept,
    /// so the old `mail` recorded before the change is never overwritten.
    pub fn plan_steps(
        &self,
        item_id: i64,
        mail: Option<(Option<&str>, &str)>,
        needs_guest: bool,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO item_steps (item_id, needs_mail, mail_from, mail_to, needs_guest)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (item_id) DO NOTHING",
                params![
                    item_id,
                    mail.is_some(),
                    mail.and_then(|m| m.0),
                    mail.map(|m| m.1),
                    needs_guest
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The item's step checkpoint, `None` when it needs nothing besides the invitation.
    pub fn steps(&self, item_id: i64) -> Result<Option<StepRow>> {
        self.conn()
            .query_row(
                &format!("SELECT {STEP_COLUMNS} FROM item_steps WHERE item_id = ?1"),
                params![item_id],
                |r| step_from_row(r, 0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Step checkpoints of the given items (those that have one).
    pub fn steps_of(&self, item_ids: &[i64]) -> Result<HashMap<i64, StepRow>> {
        let mut out = HashMap::new();
        for id in item_ids {
            if let Some(row) = self.steps(*id)? {
                out.insert(*id, row);
            }
        }
        Ok(out)
    }

    /// Notes which step is about to go on the wire (before `mark_in_flight`), fenced by the
    /// lease.
    pub fn step_in_flight(&self, item_id: i64, step: &str) -> Result<()> {
        self.step_in_flight_on(&self.conn(), item_id, step)
    }

    pub(super) fn step_in_flight_on(
        &self,
        conn: &Connection,
        item_id: i64,
        step: &str,
    ) -> Result<()> {
        self.fenced_step_write(conn, item_id, "in_flight = ?2", step)
    }

    /// Checkpoints a step as done (answered, or shown done by a re-read); the next step starts
    /// with no attempts made. Fenced by the lease.
    pub fn step_done(&self, item_id: i64, step: &str) -> Result<()> {
        self.step_done_on(&self.conn(), item_id, step)
    }

    pub(super) fn step_done_on(&self, conn: &Connection, item_id: i64, step: &str) -> Result<()> {
        let column = match step {
            "set_mail" => "mail_set_at",
            "invite" => "invited_at",
            "set_guest" => "guest_set_at",
            other => unreachable!("unknown step {other}"),
        };
        self.fenced_step_write(
            conn,
            item_id,
            &format!("{column} = coalesce({column}, ?2), in_flight = NULL, attempts = 0"),
            &now(),
        )
    }

    /// One `UPDATE item_steps SET {set}` (binding `value` as `?2`) that changes nothing unless
    /// the lease this process holds is still its own.
    fn fenced_step_write(
        &self,
        conn: &Connection,
        item_id: i64,
        set: &str,
        value: &str,
    ) -> Result<()> {
        let (fence_run, fence_token) = self.fence();
        let changed = conn
            .prepare_cached(&format!(
                "UPDATE item_steps SET {set} WHERE item_id = ?1 AND {}",
                super::fence_sql(3, 4)
            ))
            .and_then(|mut s| s.execute(params![item_id, value, fence_run, fence_token]))
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            self.check_fence(conn)?;
        }
        Ok(())
    }

    /// Users of the run whose mail / userType the tool changed.
    pub fn follow_ups(&self, run_id: i64) -> Result<FollowUps> {
        self.conn()
            .query_row(
                "SELECT count(s.mail_set_at), count(s.guest_set_at)
                 FROM item_steps s JOIN items i ON i.id = s.item_id WHERE i.run_id = ?1",
                params![run_id],
                |r| {
                    Ok(FollowUps {
                        mail_set: r.get::<_, i64>(0)? as u64,
                        guest_set: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .map_err(|e| self.err(e))
    }
}
