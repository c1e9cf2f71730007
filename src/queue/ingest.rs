//! Ingestion: a source's rows into a run, in large transactions that carry the source's cursor.

use rusqlite::params;

use super::*;

/// Rows per `INSERT` statement. Each execution of a statement has a fixed cost (the
/// AUTOINCREMENT counter read and written back, the parent-key check of `run_id`, the temporary
/// lookup table of the `state` CHECK): a multi-row `VALUES` pays it once per 100 rows.
/// 100 × [`ROW_PARAMS`] + 2 parameters stay far below SQLite's limit of 32,766.
const ROWS_PER_INSERT: usize = 100;

/// Parameters per row in [`insert_sql`]; `?1` (run id) and `?2` (time) are shared.
const ROW_PARAMS: usize = 14;

/// `INSERT INTO items … VALUES (…), (…), …` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO items (run_id, line, key_kind, key_value, key_norm, user_id,
            user_principal_name, display_name, user_type, requested_email, overrides,
            state, reason, detail, snapshot, created_at, updated_at) VALUES ",
    );
    for r in 0..rows {
        let p = 3 + r * ROW_PARAMS;
        if r > 0 {
            sql.push(',');
        }
        sql.push_str("(?1");
        for i in 0..ROW_PARAMS {
            sql.push_str(&format!(", ?{}", p + i));
        }
        sql.push_str(", ?2, ?2)");
    }
    sql
}

/// Counts `n` items inserted in `state` into `run_counts`, in the inserting transaction (the
/// inserts are counted per statement; state changes and deletes by triggers, migration 0012).
pub(super) fn add_to_count(
    tx: &Connection,
    run_id: i64,
    state: ItemState,
    n: u64,
) -> rusqlite::Result<()> {
    if n == 0 {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO run_counts (run_id, state, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (run_id, state) DO UPDATE SET n = n + excluded.n",
    )?
    .execute(params![run_id, state, n as i64])?;
    Ok(())
}

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
    /// killed at any point resumes from the cursor without losing or repeating a row.
    ///
    /// Rows are appended without looking anything up: a user named twice is stored `pending`
    /// both times here and settled by [`Queue::finish_ingest`] in one sorted pass, which is what
    /// keeps a million random GUIDs near SQLite's own import speed (a per-row look-up needs a
    /// random-key index maintained row by row, a random page dirtied per row).
    pub fn insert_items(
        &self,
        run_id: i64,
        items: &[NewItem],
        cursor: Option<&str>,
    ) -> Result<InsertStats> {
        self.write_tx(|tx| {
            let mut stats = InsertStats::default();
            let at = now();
            for chunk in items.chunks(ROWS_PER_INSERT) {
                // Full chunks reuse one cached statement; the shorter last one of a batch is
                // prepared once and dropped, so it never evicts the queue's other cached
                // statements.
                let (mut cached, mut fresh);
                let insert: &mut rusqlite::Statement<'_> = if chunk.len() == ROWS_PER_INSERT {
                    static FULL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                    let sql = FULL.get_or_init(|| insert_sql(ROWS_PER_INSERT));
                    cached = tx.prepare_cached(sql).map_err(|e| self.err(e))?;
                    &mut cached
                } else {
                    fresh = tx
                        .prepare(&insert_sql(chunk.len()))
                        .map_err(|e| self.err(e))?;
                    &mut fresh
                };
                insert
                    .raw_bind_parameter(1, run_id)
                    .and_then(|()| insert.raw_bind_parameter(2, &at))
                    .map_err(|e| self.err(e))?;
                for (r, item) in chunk.iter().enumerate() {
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
                    let (state, reason, detail) = match &item.bad_input {
                        Some(msg) => {
                            stats.bad_input += 1;
                            (
                                ItemState::Blocked,
                                Some(Reason::BadInput),
                                Some(msg.as_str()),
                            )
                        }
                        None => {
                            stats.pending += 1;
                            (ItemState::Pending, None, None)
                        }
                    };
                    let snap = item.snapshot.as_ref();
                    let upn =
                        snap.and_then(|u| u.user_principal_name.as_deref())
                            .or(match &item.key {
                                Some(UserKey::UserPrincipalName(u)) => Some(u.as_str()),
                                _ => None,
                            });
                    let first = 3 + r * ROW_PARAMS;
                    let bind = |insert: &mut rusqlite::Statement<'_>| -> rusqlite::Result<()> {
                        insert.raw_bind_parameter(first, item.line.map(|l| l as i64))?;
                        insert.raw_bind_parameter(first + 1, kind)?;
                        insert.raw_bind_parameter(first + 2, value)?;
                        insert.raw_bind_parameter(first + 3, &norm)?;
                        insert.raw_bind_parameter(first + 4, snap.map(|u| u.id.as_str()))?;
                        insert.raw_bind_parameter(first + 5, upn)?;
                        insert.raw_bind_parameter(
                            first + 6,
                            snap.and_then(|u| u.display_name.as_deref()),
                        )?;
                        insert.raw_bind_parameter(
                            first + 7,
                            snap.and_then(|u| u.user_type.as_deref()),
                        )?;
                        insert.raw_bind_parameter(first + 8, item.external_email.as_deref())?;
                        insert.raw_bind_parameter(
                            first + 9,
                            (!item.overrides.is_empty()).then(|| to_json(&item.overrides)),
                        )?;
                        insert.raw_bind_parameter(first + 10, state)?;
                        insert.raw_bind_parameter(first + 11, reason)?;
                        insert.raw_bind_parameter(first + 12, detail)?;
                        insert.raw_bind_parameter(first + 13, snap.map(to_json))
                    };
                    bind(insert).map_err(|e| self.err(e))?;
                }
                insert.raw_execute().map_err(|e| self.err(e))?;
            }
            add_to_count(tx, run_id, ItemState::Pending, stats.pending).map_err(|e| self.err(e))?;
            add_to_count(tx, run_id, ItemState::Blocked, stats.bad_input)
                .map_err(|e| self.err(e))?;
            if let Some(c) = cursor {
                tx.execute(
                    "UPDATE runs SET ingest_cursor = ?2 WHERE id = ?1",
                    params![run_id, c],
                )
                .map_err(|e| self.err(e))?;
            }
            Ok(stats)
        })
    }

    /// Ends ingestion, idempotently, in one transaction with `ingest_complete`:
    /// - a user named more than once (same case-folded key) keeps its first row `pending`; every
    ///   later row is blocked `duplicate_user`, "same user as line N" (N: the first row's line);
    /// - then every pending item whose explicit external email is shared with another user of
    ///   the run is blocked `duplicate_email` (both, per docs/usage.md).
    ///
    /// Each is one `GROUP BY` over the run's rows (SQLite's external sorter: memory bounded by
    /// its cache whatever the run's size) into a temporary table of the keys or addresses seen
    /// more than once; only when that table is not empty is the run scanned again to block
    /// rows. Rows already `bad_input` or `duplicate_user` never count as "the first row", so a
    /// repeated call (a process killed before `ingest_complete` was stored) changes nothing.
    pub fn finish_ingest(&self, run_id: i64) -> Result<FinishStats> {
        self.write_tx(|tx| {
            let at = now();
            // The keys and addresses that occur more than once go to small temporary tables
            // first: the common case (none) then costs one GROUP BY each and never scans the run
            // again.
            tx.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS ingest_dup_keys
                     (key_norm TEXT PRIMARY KEY, first_id INTEGER NOT NULL);
                 CREATE TEMP TABLE IF NOT EXISTS ingest_dup_emails (email TEXT PRIMARY KEY);
                 DELETE FROM temp.ingest_dup_keys;
                 DELETE FROM temp.ingest_dup_emails;",
            )
            .map_err(|e| self.err(e))?;
            // One kind of duplicate: `collect` fills its temporary table with what occurs more
            // than once; only when it found any does `block` block the rows it names as `reason`.
            let settle = |collect: &str, block: &str, reason: Reason| -> Result<usize> {
                let found = tx
                    .execute(
                        collect,
                        params![run_id, Reason::DuplicateUser, Reason::BadInput],
                    )
                    .map_err(|e| self.err(e))?;
                if found == 0 {
                    return Ok(0);
                }
                tx.execute(
                    block,
                    params![run_id, at, ItemState::Blocked, reason, ItemState::Pending],
                )
                .map_err(|e| self.err(e))
            };
            let duplicate_user = settle(
                "INSERT INTO temp.ingest_dup_keys (key_norm, first_id)
                 SELECT key_norm, min(id) FROM items
                 WHERE run_id = ?1 AND key_norm IS NOT NULL
                   AND (reason IS NULL OR reason NOT IN (?2, ?3))
                 GROUP BY key_norm HAVING count(*) > 1",
                "UPDATE items SET state = ?3, reason = ?4,
                    detail = 'same user as ' || coalesce(
                        'line ' || (SELECT f.line FROM items AS f WHERE f.id = d.first_id),
                        'an earlier entry'),
                    updated_at = ?2
                 FROM temp.ingest_dup_keys AS d
                 WHERE items.run_id = ?1 AND items.state = ?5 AND items.key_norm = d.key_norm
                   AND items.id > d.first_id",
                Reason::DuplicateUser,
            )?;
            let duplicate_email = settle(
                "INSERT INTO temp.ingest_dup_emails (email)
                 SELECT lower(requested_email) FROM items
                 WHERE run_id = ?1 AND requested_email IS NOT NULL
                   AND (reason IS NULL OR reason NOT IN (?2, ?3))
                 GROUP BY lower(requested_email) HAVING count(*) > 1",
                "UPDATE items SET state = ?3, reason = ?4,
                    detail = 'external email ' || requested_email || ' is given for more than one user',
                    updated_at = ?2
                 WHERE run_id = ?1 AND state = ?5 AND requested_email IS NOT NULL
                   AND lower(requested_email) IN (SELECT email FROM temp.ingest_dup_emails)",
                Reason::DuplicateEmail,
            )?;
            tx.execute_batch(
                "DELETE FROM temp.ingest_dup_keys; DELETE FROM temp.ingest_dup_emails;",
            )
            .map_err(|e| self.err(e))?;
            tx.execute(
                "UPDATE runs SET ingest_complete = 1 WHERE id = ?1",
                [run_id],
            )
            .map_err(|e| self.err(e))?;
            Ok(FinishStats {
                duplicate_user: duplicate_user as u64,
                duplicate_email: duplicate_email as u64,
            })
        })
    }
}
