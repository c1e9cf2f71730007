//! What the per-pass tables (`resends`, `retires`) share: an entry moves from one of the states
//! it may leave to the next in one fenced write transaction, and a move that finds the entry
//! elsewhere says where it actually is. One piece of SQL, so the passes cannot drift apart in
//! how they guard a state change.

use rusqlite::{params, OptionalExtension};

use super::{Queue, QueueError, Result};

/// A state of an entry in a pass table keyed by `(pass_id, item_id)`.
pub(super) trait PassState: rusqlite::ToSql + rusqlite::types::FromSql + Copy {
    /// The table the pass's entries live in.
    const TABLE: &'static str;
    /// What a `Moved` error says when the user has no entry in the pass at all.
    const MISSING: &'static str;

    fn name(self) -> &'static str;
}

impl Queue {
    /// Moves one entry of a pass from one of `from` to `to`, setting `set` too (`?1` pass, `?2`
    /// item, then the caller's parameters; `set` may be empty); the lease is checked in the same
    /// write transaction, so a holder that lost the run changes nothing.
    pub(super) fn pass_transition<S: PassState>(
        &self,
        pass_id: i64,
        item_id: i64,
        from: &[S],
        to: S,
        set: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<()> {
        let n = params.len();
        let allowed = (0..from.len())
            .map(|k| format!("?{}", n + 2 + k))
            .collect::<Vec<_>>()
            .join(", ");
        let set = if set.is_empty() {
            String::new()
        } else {
            format!("{set}, ")
        };
        let sql = format!(
            "UPDATE {} SET {set}state = ?{} WHERE pass_id = ?1 AND item_id = ?2 AND state IN ({allowed})",
            S::TABLE,
            n + 1
        );
        let mut bound: Vec<&dyn rusqlite::ToSql> = params.to_vec();
        bound.push(&to);
        bound.extend(from.iter().map(|s| s as &dyn rusqlite::ToSql));
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        self.check_fence(&tx)?;
        if tx
            .execute(&sql, bound.as_slice())
            .map_err(|e| self.err(e))?
            == 1
        {
            tx.commit().map_err(|e| self.err(e))?;
            return Ok(());
        }
        let actual: Option<S> = tx
            .query_row(
                &format!(
                    "SELECT state FROM {} WHERE pass_id = ?1 AND item_id = ?2",
                    S::TABLE
                ),
                params![pass_id, item_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Err(QueueError::Moved {
            item_id,
            expected: from[0].name(),
            actual: actual.map_or_else(|| S::MISSING.into(), |s| s.name().into()),
        })
    }
}
