//! Ingestion: a source's rows into a run, in large transactions that carry the source's cursor.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::*;

impl Queue {
    // ---- ingestion ------------------------------------------------------------------------

    pub fn ingest_cursor(&self, run_id: i64) -> Result<Option<String>> {
        self.conn()
            .query_row(
                "SELECT ingest_cursor FROM runs WHERE id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Stores a batch of source rows and the source's cursor in ONE transaction, so an ingestion
    /// killed at any point resumes from the cursor without losing or repeating a row. A user
    /// already in the run (same case-folded key) is stored `blocked` / `duplicate_user`.
    pub fn insert_items(
        &self,
        run_id: i64,
        items: &[NewItem],
        cursor: Option<&str>,
    ) -> Result<InsertStats> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let mut stats = InsertStats::default();
        {
            let mut seen = tx
                .prepare_cached(
                    "SELECT line FROM items WHERE run_id = ?1 AND key_norm = ?2
                     AND (reason IS NULL OR reason NOT IN (?3, ?4))
                     ORDER BY id LIMIT 1",
                )
                .map_err(|e| self.err(e))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO items (run_id, line, key_kind, key_value, key_norm, user_id,
                        user_principal_name, display_name, user_type, requested_email, overrides,
                        state, reason, detail, snapshot, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16)",
                )
                .map_err(|e| self.err(e))?;
            let at = now();
            for item in items {
                let (kind, value, norm) = match &item.key {
                    Some(k @ UserKey::Id(v)) => {
                        (Some("id"), Some(v.as_str()), Some(k.normalized()))
                    }
                    Some(k @ UserKey::UserPrincipalName(v)) => (
                        Some("userPrincipalName"),
                        Some(v.as_str()),
                        Some(k.normalized()),
                    ),
                    None => (None, None, None),
                };
                let (state, reason, detail) = if let Some(msg) = &item.bad_input {
                    stats.bad_input += 1;
                    (
                        ItemState::Blocked,
                        Some(Reason::BadInput),
                        Some(msg.clone()),
                    )
                } else {
                    let earlier: Option<Option<i64>> = match &norm {
                        Some(n) => seen
                            .query_row(
                                params![run_id, n, Reason::DuplicateUser, Reason::BadInput],
                                |r| r.get(0),
                            )
                            .optional()
                            .map_err(|e| self.err(e))?,
                        None => None,
                    };
                    match earlier {
                        Some(line) => {
                            stats.duplicate_user += 1;
                            let first = line
                                .map(|l| format!("line {l}"))
                                .unwrap_or_else(|| "an earlier entry".into());
                            (
                                ItemState::Blocked,
                                Some(Reason::DuplicateUser),
                                Some(format!("same user as {first}")),
                            )
                        }
                        None => {
                            stats.pending += 1;
                            (ItemState::Pending, None, None)
                        }
                    }
                };
                let snap = item.snapshot.as_ref();
                let overrides = (!item.overrides.is_empty()).then(|| to_json(&item.overrides));
                insert
                    .execute(params![
                        run_id,
                        item.line.map(|l| l as i64),
                        kind,
                        value,
                        norm,
                        snap.map(|u| u.id.clone()),
                        snap.and_then(|u| u.user_principal_name.clone())
                            .or_else(|| match &item.key {
                                Some(UserKey::UserPrincipalName(u)) => Some(u.clone()),
                                _ => None,
                            }),
                        snap.and_then(|u| u.display_name.clone()),
                        snap.and_then(|u| u.user_type.clone()),
                        item.external_email,
                        overrides,
                        state,
                        reason,
                        detail,
                        snap.map(to_json),
                        at,
                    ])
                    .map_err(|e| self.err(e))?;
            }
        }
        if let Some(c) = cursor {
            tx.execute(
                "UPDATE runs SET ingest_cursor = ?2 WHERE id = ?1",
                params![run_id, c],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(stats)
    }

    /// Ends ingestion: every pending item whose explicit external email is shared with another
    /// user of the run is blocked `duplicate_email` (both, per SPEC.md). Idempotent.
    pub fn finish_ingest(&self, run_id: i64) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let n = tx
            .execute(
                "UPDATE items SET state = ?3, reason = ?4,
                    detail = 'external email ' || requested_email || ' is given for more than one user',
                    updated_at = ?2
                 WHERE run_id = ?1 AND state = ?5 AND requested_email IS NOT NULL
                   AND lower(requested_email) IN (
                     SELECT lower(requested_email) FROM items
                     WHERE run_id = ?1 AND requested_email IS NOT NULL
                       AND (reason IS NULL OR reason NOT IN (?6, ?7))
                     GROUP BY lower(requested_email) HAVING count(*) > 1)",
                params![
                    run_id,
                    now(),
                    ItemState::Blocked,
                    Reason::DuplicateEmail,
                    ItemState::Pending,
                    Reason::DuplicateUser,
                    Reason::BadInput
                ],
            )
            .map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE runs SET ingest_complete = 1 WHERE id = ?1",
            [run_id],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n as u64)
    }
}
