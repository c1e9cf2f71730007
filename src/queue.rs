//! The SQLite work queue: the only module with SQL.
//!
//! One file per deployment (WAL, `synchronous=NORMAL`, created 0600) holds runs, their items and
//! an append-only log of Graph requests. Every state change is its own small transaction, so a
//! process killed at any instant leaves a consistent checkpoint; state changes name the state they
//! leave (`… WHERE id = ? AND state = ?`) and fail loudly when the row moved under them.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};
use rusqlite_migration::{Migrations, M};

use crate::item::{
    ItemRecord, ItemState, NewItem, Overrides, Reason, RequestRecord, RunCounts, RunMode,
    RunOptions, RunRecord, SourceSpec, UserKey,
};
use crate::model::{Invitation, User};

pub mod track;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path}: schema migration failed: {message}")]
    Migration { path: PathBuf, message: String },
    #[error("database {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("item {item_id} is not {expected} (it moved under us: {actual})")]
    Moved {
        item_id: i64,
        expected: &'static str,
        actual: String,
    },
    #[error("stored JSON in column {column} is unreadable: {message}")]
    Corrupt {
        column: &'static str,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, QueueError>;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../migrations/0001_init.sql")),
        M::up(include_str!("../migrations/0005_redemption.sql")),
    ])
}

/// What `insert_items` did with a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InsertStats {
    pub pending: u64,
    pub bad_input: u64,
    pub duplicate_user: u64,
}

/// What `record_lookup` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupOutcome {
    /// Snapshot stored; the item goes on to validation.
    Found,
    NotFound,
    /// Another item of the run already resolved to this user.
    DuplicateOf(i64),
}

pub struct Queue {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Queue {
    /// Opens (creating 0600 if absent) and migrates the database.
    pub fn open(path: &Path) -> Result<Queue> {
        create_private(path)?;
        let mut conn = Connection::open(path).map_err(|e| sqlite_err(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| sqlite_err(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| sqlite_err(path, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| sqlite_err(path, e))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| sqlite_err(path, e))?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| QueueError::Migration {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Queue {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Opens an existing database only; reading commands must not create one by accident.
    pub fn open_existing(path: &Path) -> Result<Queue> {
        if !path.exists() {
            return Err(QueueError::Io {
                path: path.to_path_buf(),
                message: "no such database (run `b2b-convert run …` first, or pass --db)".into(),
            });
        }
        Queue::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> QueueError {
        sqlite_err(&self.path, e)
    }

    // ---- runs -----------------------------------------------------------------------------

    pub fn create_run(
        &self,
        source: &SourceSpec,
        mode: RunMode,
        options: &RunOptions,
        tenant_id: Option<&str>,
        graph_url: &str,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (source, mode, options, tenant_id, graph_url, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                to_json(source),
                mode.as_str(),
                to_json(options),
                tenant_id,
                graph_url,
                now()
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(conn.last_insert_rowid())
    }

    pub fn run(&self, id: i64) -> Result<Option<RunRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                [id],
                run_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .transpose()
    }

    pub fn latest_run(&self) -> Result<Option<RunRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT 1"),
                [],
                run_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .transpose()
    }

    pub fn list_runs(&self) -> Result<Vec<RunRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], run_from_row)
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter().collect()
    }

    /// Marks a run running again (resume) or ended with `status`.
    pub fn set_run_status(&self, id: i64, status: &str) -> Result<()> {
        let finished = if status == "running" {
            None
        } else {
            Some(now())
        };
        self.conn()
            .execute(
                "UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1",
                params![id, status, finished],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// `resume` may change how the work is done (rate, concurrency); the run keeps the record.
    pub fn update_run_options(&self, id: i64, options: &RunOptions) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE runs SET options = ?2 WHERE id = ?1",
                params![id, to_json(options)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

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
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut stats = InsertStats::default();
        {
            let mut seen = tx
                .prepare_cached(
                    "SELECT line FROM items WHERE run_id = ?1 AND key_norm = ?2
                     AND (reason IS NULL OR reason NOT IN ('duplicate_user', 'bad_input'))
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
                            .query_row(params![run_id, n], |r| r.get(0))
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
                        state.as_str(),
                        reason.map(Reason::as_str),
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
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let n = tx
            .execute(
                "UPDATE items SET state = 'blocked', reason = 'duplicate_email',
                    detail = 'external email ' || requested_email || ' is given for more than one user',
                    updated_at = ?2
                 WHERE run_id = ?1 AND state = 'pending' AND requested_email IS NOT NULL
                   AND lower(requested_email) IN (
                     SELECT lower(requested_email) FROM items
                     WHERE run_id = ?1 AND requested_email IS NOT NULL
                       AND (reason IS NULL OR reason NOT IN ('duplicate_user', 'bad_input'))
                     GROUP BY lower(requested_email) HAVING count(*) > 1)",
                params![run_id, now()],
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

    // ---- work -----------------------------------------------------------------------------

    /// Pending items after `after_id`, in input order.
    pub fn pending_items(
        &self,
        run_id: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<ItemRecord>> {
        self.select_items(
            &format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE run_id = ?1 AND state = 'pending' AND id > ?2
                 ORDER BY id LIMIT ?3"
            ),
            params![run_id, after_id, limit as i64],
        )
    }

    pub fn in_flight_items(&self, run_id: i64) -> Result<Vec<ItemRecord>> {
        self.select_items(
            &format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE run_id = ?1 AND state = 'in_flight' ORDER BY id"
            ),
            params![run_id],
        )
    }

    /// Every item of the run, in input order (reports).
    pub fn items(&self, run_id: i64) -> Result<Vec<ItemRecord>> {
        self.select_items(
            &format!("SELECT {ITEM_COLUMNS} FROM items WHERE run_id = ?1 ORDER BY id"),
            params![run_id],
        )
    }

    pub fn item(&self, item_id: i64) -> Result<Option<ItemRecord>> {
        Ok(self
            .select_items(
                &format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1"),
                params![item_id],
            )?
            .pop())
    }

    fn select_items(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<ItemRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, item_from_row)
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter().collect()
    }

    /// Stores what Graph said about a pending item's user. The snapshot is written once: later
    /// reads (reconciliation) never overwrite the record of the user before the change.
    pub fn record_lookup(&self, item_id: i64, user: Option<&User>) -> Result<LookupOutcome> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let (run_id, state): (i64, String) = tx
            .query_row(
                "SELECT run_id, state FROM items WHERE id = ?1",
                [item_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        if state != "pending" {
            return Err(QueueError::Moved {
                item_id,
                expected: "pending",
                actual: state,
            });
        }
        let outcome = match user {
            None => {
                tx.execute(
                    "UPDATE items SET state = 'blocked', reason = 'user_not_found',
                        detail = 'no user with ' || coalesce(key_kind, 'key') || ' ' || coalesce(key_value, '') || ' in the tenant',
                        updated_at = ?2 WHERE id = ?1",
                    params![item_id, now()],
                )
                .map_err(|e| self.err(e))?;
                LookupOutcome::NotFound
            }
            Some(u) => {
                let earlier: Option<(i64, Option<i64>)> = tx
                    .query_row(
                        "SELECT id, line FROM items WHERE run_id = ?1 AND user_id = ?2 AND id <> ?3
                           AND (reason IS NULL OR reason <> 'duplicate_user')
                         ORDER BY id LIMIT 1",
                        params![run_id, u.id, item_id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?;
                match earlier {
                    Some((other, line)) => {
                        let first = line
                            .map(|l| format!("line {l}"))
                            .unwrap_or_else(|| format!("item {other}"));
                        tx.execute(
                            "UPDATE items SET state = 'blocked', reason = 'duplicate_user',
                                detail = ?2, user_principal_name = ?3, display_name = ?4,
                                updated_at = ?5 WHERE id = ?1",
                            params![
                                item_id,
                                format!("same user ({}) as {first}", u.id),
                                u.user_principal_name,
                                u.display_name,
                                now()
                            ],
                        )
                        .map_err(|e| self.err(e))?;
                        LookupOutcome::DuplicateOf(other)
                    }
                    None => {
                        tx.execute(
                            "UPDATE items SET user_id = ?2, user_principal_name = ?3,
                                display_name = ?4, user_type = ?5,
                                snapshot = coalesce(snapshot, ?6), updated_at = ?7
                             WHERE id = ?1",
                            params![
                                item_id,
                                u.id,
                                u.user_principal_name,
                                u.display_name,
                                u.user_type,
                                to_json(u),
                                now()
                            ],
                        )
                        .map_err(|e| self.err(e))?;
                        LookupOutcome::Found
                    }
                }
            }
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(outcome)
    }

    /// A validation verdict that ends the item without a request: `would_convert`, `skipped`
    /// or `blocked`.
    pub fn record_verdict(
        &self,
        item_id: i64,
        state: ItemState,
        reason: Option<Reason>,
        detail: Option<&str>,
        external_email: Option<&str>,
    ) -> Result<()> {
        self.transition(
            item_id,
            &["pending"],
            "state = ?2, reason = ?3, detail = ?4, external_email = coalesce(?5, external_email)",
            params![
                item_id,
                state.as_str(),
                reason.map(Reason::as_str),
                detail,
                external_email
            ],
        )
    }

    /// Checkpoint before an invitation can leave the process: `pending` → `in_flight`,
    /// one more attempt. Also accepted from `in_flight` (a retry after an unknown outcome that
    /// reconciliation showed had not taken effect).
    pub fn mark_in_flight(&self, item_id: i64, external_email: &str) -> Result<()> {
        self.transition(
            item_id,
            &["pending", "in_flight"],
            "state = 'in_flight', attempts = attempts + 1, external_email = ?2",
            params![item_id, external_email],
        )
    }

    /// The invitation API accepted it; `invitation` is `None` when reconciliation found the user
    /// converted without ever seeing the answer.
    pub fn record_converted(
        &self,
        item_id: i64,
        invitation: Option<&Invitation>,
        request_id: Option<&str>,
        client_request_id: Option<&str>,
    ) -> Result<()> {
        let reconciled = invitation.is_none();
        self.transition(
            item_id,
            &["in_flight"],
            &format!(
                "state = 'converted', invitation_id = ?2, invitation_status = ?3,
             invite_redeem_url = CASE WHEN {keep} THEN ?4 END, reconciled = ?5,
             request_id = coalesce(?6, request_id), client_request_id = coalesce(?7, client_request_id),
             error_code = NULL, error_message = NULL",
                keep = track::KEEP_LINKS
            ),
            params![
                item_id,
                invitation.map(|i| i.id.clone()),
                invitation
                    .map(|i| i.status.clone())
                    .or_else(|| Some("reconciled".to_string())),
                invitation.and_then(|i| i.invite_redeem_url.clone()),
                reconciled,
                request_id,
                client_request_id
            ],
        )
    }

    /// The API refused it permanently or attempts ran out.
    pub fn record_failed(
        &self,
        item_id: i64,
        code: &str,
        message: &str,
        request_id: Option<&str>,
        client_request_id: Option<&str>,
    ) -> Result<()> {
        self.transition(
            item_id,
            &["pending", "in_flight"],
            "state = 'failed', error_code = ?2, error_message = ?3,
             request_id = coalesce(?4, request_id), client_request_id = coalesce(?5, client_request_id)",
            params![item_id, code, message, request_id, client_request_id],
        )
    }

    /// Notes the last error of an item that stays where it is (e.g. in_flight awaiting
    /// reconciliation) without changing state.
    pub fn note_error(
        &self,
        item_id: i64,
        code: &str,
        message: &str,
        request_id: Option<&str>,
        client_request_id: Option<&str>,
    ) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE items SET error_code = ?2, error_message = ?3,
                    request_id = coalesce(?4, request_id),
                    client_request_id = coalesce(?5, client_request_id), updated_at = ?6
                 WHERE id = ?1",
                params![item_id, code, message, request_id, client_request_id, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// An `in_flight` item whose request certainly did not take effect (the tenant refused it
    /// before carrying it out, or reconciliation showed the user unchanged) goes back to wait.
    pub fn back_to_pending(&self, item_id: i64) -> Result<()> {
        self.transition(
            item_id,
            &["in_flight"],
            "state = 'pending'",
            params![item_id],
        )
    }

    /// `retry`: every failed item of the run goes back to pending with a fresh attempt count.
    pub fn requeue_failed(&self, run_id: i64) -> Result<u64> {
        let n = self
            .conn()
            .execute(
                "UPDATE items SET state = 'pending', attempts = 0, updated_at = ?2
                 WHERE run_id = ?1 AND state = 'failed'",
                params![run_id, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    fn transition(
        &self,
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
        let conn = self.conn();
        let sql = format!(
            "UPDATE items SET {set}, updated_at = '{}' WHERE id = ?1 AND state IN ({allowed})",
            now()
        );
        let changed = conn.execute(&sql, params).map_err(|e| self.err(e))?;
        if changed == 1 {
            return Ok(());
        }
        let actual: Option<String> = conn
            .query_row("SELECT state FROM items WHERE id = ?1", [item_id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        Err(QueueError::Moved {
            item_id,
            expected: from[0],
            actual: actual.unwrap_or_else(|| "missing".into()),
        })
    }

    // ---- requests log and counts ----------------------------------------------------------

    pub fn log_request(&self, rec: &RequestRecord, throttled: bool, attempt: u32) -> Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO requests (run_id, item_id, method, path, status, client_request_id,
                    request_id, duration_ms, throttled, attempt, error, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    rec.run_id,
                    rec.item_id,
                    rec.method,
                    rec.path,
                    rec.status,
                    rec.client_request_id,
                    rec.request_id,
                    rec.duration_ms as i64,
                    throttled,
                    attempt,
                    rec.error,
                    rec.at
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn counts(&self, run_id: i64) -> Result<RunCounts> {
        let conn = self.conn();
        let mut counts = RunCounts::default();
        for s in ItemState::ALL {
            counts.states.insert(s.as_str().to_string(), 0);
        }
        let mut stmt = conn
            .prepare_cached("SELECT state, count(*) FROM items WHERE run_id = ?1 GROUP BY state")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (state, n) = row.map_err(|e| self.err(e))?;
            counts.total += n as u64;
            counts.states.insert(state, n as u64);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT reason, count(*) FROM items WHERE run_id = ?1 AND reason IS NOT NULL
                 GROUP BY reason",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (reason, n) = row.map_err(|e| self.err(e))?;
            counts.reasons.insert(reason, n as u64);
        }
        let (requests, throttled, retries): (i64, i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(throttled), 0), coalesce(sum(attempt > 1), 0)
                 FROM requests WHERE run_id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| self.err(e))?;
        counts.graph_requests = requests as u64;
        counts.throttled_requests = throttled as u64;
        counts.retries = retries as u64;
        counts.reconciled = conn
            .query_row(
                "SELECT count(*) FROM items WHERE run_id = ?1 AND reconciled = 1",
                [run_id],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| self.err(e))? as u64;
        Ok(counts)
    }
}

const RUN_COLUMNS: &str = "id, source, mode, options, tenant_id, graph_url, started_at, \
    finished_at, status, ingest_complete";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<Result<RunRecord>> {
    let source: String = r.get(1)?;
    let mode: String = r.get(2)?;
    let options: String = r.get(3)?;
    Ok((|| {
        Ok(RunRecord {
            id: r.get(0).map_err(corrupt("runs.id"))?,
            source: from_json(&source, "runs.source")?,
            mode: mode.parse().map_err(|m| QueueError::Corrupt {
                column: "runs.mode",
                message: m,
            })?,
            options: from_json(&options, "runs.options")?,
            tenant_id: r.get(4).map_err(corrupt("runs.tenant_id"))?,
            graph_url: r.get(5).map_err(corrupt("runs.graph_url"))?,
            started_at: r.get(6).map_err(corrupt("runs.started_at"))?,
            finished_at: r.get(7).map_err(corrupt("runs.finished_at"))?,
            status: r.get(8).map_err(corrupt("runs.status"))?,
            ingest_complete: r.get(9).map_err(corrupt("runs.ingest_complete"))?,
        })
    })())
}

const ITEM_COLUMNS: &str = "id, run_id, line, key_kind, key_value, user_id, user_principal_name, \
    display_name, user_type, requested_email, external_email, overrides, state, reason, detail, \
    attempts, snapshot, error_code, error_message, request_id, client_request_id, invitation_id, \
    invitation_status, reconciled, updated_at";

fn item_from_row(r: &Row<'_>) -> rusqlite::Result<Result<ItemRecord>> {
    let key_kind: Option<String> = r.get(3)?;
    let key_value: Option<String> = r.get(4)?;
    let key = match (key_kind.as_deref(), key_value) {
        (Some("id"), Some(v)) => Some(UserKey::Id(v)),
        (Some(_), Some(v)) => Some(UserKey::UserPrincipalName(v)),
        _ => None,
    };
    let requested: Option<String> = r.get(9)?;
    let effective: Option<String> = r.get(10)?;
    let overrides: Option<String> = r.get(11)?;
    let state: String = r.get(12)?;
    let reason: Option<String> = r.get(13)?;
    let snapshot: Option<String> = r.get(16)?;
    let line: Option<i64> = r.get(2)?;
    let attempts: i64 = r.get(15)?;
    let base = ItemRecord {
        id: r.get(0)?,
        run_id: r.get(1)?,
        line: line.map(|l| l as u64),
        key,
        user_id: r.get(5)?,
        user_principal_name: r.get(6)?,
        display_name: r.get(7)?,
        user_type: r.get(8)?,
        external_email: effective.or(requested),
        overrides: Overrides::default(),
        state: ItemState::Pending,
        reason: None,
        detail: r.get(14)?,
        attempts: attempts as u32,
        snapshot: None,
        error_code: r.get(17)?,
        error_message: r.get(18)?,
        request_id: r.get(19)?,
        client_request_id: r.get(20)?,
        invitation_id: r.get(21)?,
        invitation_status: r.get(22)?,
        reconciled: r.get(23)?,
        updated_at: r.get(24)?,
    };
    Ok((|| {
        let mut item = base;
        item.state = state.parse().map_err(|m| QueueError::Corrupt {
            column: "items.state",
            message: m,
        })?;
        item.reason = reason
            .map(|s| s.parse())
            .transpose()
            .map_err(|m| QueueError::Corrupt {
                column: "items.reason",
                message: m,
            })?;
        if let Some(o) = overrides {
            item.overrides = from_json(&o, "items.overrides")?;
        }
        if let Some(s) = snapshot {
            item.snapshot = Some(from_json(&s, "items.snapshot")?);
        }
        Ok(item)
    })())
}

fn corrupt(column: &'static str) -> impl Fn(rusqlite::Error) -> QueueError {
    move |e| QueueError::Corrupt {
        column,
        message: e.to_string(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("queue types serialise to JSON")
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, column: &'static str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| QueueError::Corrupt {
        column,
        message: e.to_string(),
    })
}

fn sqlite_err(path: &Path, source: rusqlite::Error) -> QueueError {
    QueueError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the database file readable by its owner only: it holds the users' snapshots and the
/// invitations' redeem links.
fn create_private(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| QueueError::Io {
            path: path.to_path_buf(),
            message: format!("cannot create folder {}: {e}", dir.display()),
        })?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(QueueError::Io {
            path: path.to_path_buf(),
            message: format!("cannot create: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.db")).unwrap();
        (dir, q)
    }

    fn row(line: u64, key: Option<UserKey>, email: Option<&str>) -> NewItem {
        NewItem {
            line: Some(line),
            key,
            external_email: email.map(str::to_string),
            overrides: Overrides::default(),
            bad_input: None,
            snapshot: None,
        }
    }

    fn csv_run(q: &Queue) -> i64 {
        q.create_run(
            &SourceSpec::Csv {
                path: "users.csv".into(),
            },
            RunMode::DryRun,
            &RunOptions::default(),
            Some("t"),
            "http://127.0.0.1:1",
        )
        .unwrap()
    }

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            user_principal_name: Some(format!("{id}@contoso.com")),
            mail: Some(format!("{id}@fabrikam.com")),
            ..Default::default()
        }
    }

    #[test]
    fn migrations_validate() {
        migrations().validate().unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _q) = queue();
        let mode = std::fs::metadata(dir.path().join("q.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn duplicates_are_blocked_at_ingest() {
        let (_d, q) = queue();
        let run = csv_run(&q);
        let stats = q
            .insert_items(
                run,
                &[
                    row(2, Some(UserKey::Id("A".into())), Some("x@p.com")),
                    row(3, Some(UserKey::Id("a".into())), None),
                    row(4, Some(UserKey::Id("b".into())), Some("X@P.com")),
                    row(5, Some(UserKey::Id("c".into())), Some("c@p.com")),
                ],
                Some("5"),
            )
            .unwrap();
        assert_eq!(stats.pending, 3);
        assert_eq!(stats.duplicate_user, 1);
        assert_eq!(q.finish_ingest(run).unwrap(), 2);
        let items = q.items(run).unwrap();
        let got: Vec<_> = items.iter().map(|i| (i.line, i.state, i.reason)).collect();
        assert_eq!(
            got,
            vec![
                (Some(2), ItemState::Blocked, Some(Reason::DuplicateEmail)),
                (Some(3), ItemState::Blocked, Some(Reason::DuplicateUser)),
                (Some(4), ItemState::Blocked, Some(Reason::DuplicateEmail)),
                (Some(5), ItemState::Pending, None),
            ]
        );
        assert_eq!(q.ingest_cursor(run).unwrap().as_deref(), Some("5"));
        assert!(q.run(run).unwrap().unwrap().ingest_complete);
    }

    #[test]
    fn lookup_spots_same_user_under_two_keys() {
        let (_d, q) = queue();
        let run = csv_run(&q);
        q.insert_items(
            run,
            &[
                row(2, Some(UserKey::Id("u1".into())), None),
                row(
                    3,
                    Some(UserKey::UserPrincipalName("u1@contoso.com".into())),
                    None,
                ),
                row(4, Some(UserKey::Id("zz".into())), None),
            ],
            None,
        )
        .unwrap();
        let items = q.pending_items(run, 0, 10).unwrap();
        let u = user("u1");
        assert_eq!(
            q.record_lookup(items[0].id, Some(&u)).unwrap(),
            LookupOutcome::Found
        );
        assert_eq!(
            q.record_lookup(items[1].id, Some(&u)).unwrap(),
            LookupOutcome::DuplicateOf(items[0].id)
        );
        assert_eq!(
            q.record_lookup(items[2].id, None).unwrap(),
            LookupOutcome::NotFound
        );
        let counts = q.counts(run).unwrap();
        assert_eq!(counts.state(ItemState::Pending), 1);
        assert_eq!(counts.reasons["duplicate_user"], 1);
        assert_eq!(counts.reasons["user_not_found"], 1);
        assert_eq!(q.item(items[0].id).unwrap().unwrap().snapshot, Some(u));
    }

    #[test]
    fn state_changes_name_the_state_they_leave() {
        let (_d, q) = queue();
        let run = csv_run(&q);
        q.insert_items(run, &[row(2, Some(UserKey::Id("u1".into())), None)], None)
            .unwrap();
        let id = q.pending_items(run, 0, 1).unwrap()[0].id;
        // Converting an item that never went in flight is a bug and must be loud.
        assert!(matches!(
            q.record_converted(id, None, None, None),
            Err(QueueError::Moved { .. })
        ));
        q.mark_in_flight(id, "u1@fabrikam.com").unwrap();
        assert_eq!(q.in_flight_items(run).unwrap().len(), 1);
        let inv = Invitation {
            id: "inv1".into(),
            status: "PendingAcceptance".into(),
            invite_redeem_url: Some("https://redeem/secret".into()),
            ..Default::default()
        };
        q.record_converted(id, Some(&inv), Some("req-1"), Some("crid-1"))
            .unwrap();
        let item = q.item(id).unwrap().unwrap();
        assert_eq!(item.state, ItemState::Converted);
        assert_eq!(item.attempts, 1);
        assert_eq!(item.request_id.as_deref(), Some("req-1"));
        assert!(!item.reconciled);
        assert!(q.mark_in_flight(id, "x").is_err());
    }

    #[test]
    fn retry_requeues_failed_items() {
        let (_d, q) = queue();
        let run = csv_run(&q);
        q.insert_items(run, &[row(2, Some(UserKey::Id("u1".into())), None)], None)
            .unwrap();
        let id = q.pending_items(run, 0, 1).unwrap()[0].id;
        q.mark_in_flight(id, "a@b.com").unwrap();
        q.record_failed(id, "BadRequest", "nope", Some("r"), None)
            .unwrap();
        assert_eq!(q.requeue_failed(run).unwrap(), 1);
        let item = q.item(id).unwrap().unwrap();
        assert_eq!((item.state, item.attempts), (ItemState::Pending, 0));
    }

    #[test]
    fn counts_include_every_state_and_requests() {
        let (_d, q) = queue();
        let run = csv_run(&q);
        q.log_request(
            &RequestRecord {
                run_id: run,
                item_id: None,
                method: "GET".into(),
                path: "/v1.0/domains".into(),
                status: Some(429),
                client_request_id: "c".into(),
                request_id: None,
                duration_ms: 3,
                error: None,
                at: now(),
            },
            true,
            2,
        )
        .unwrap();
        let c = q.counts(run).unwrap();
        assert_eq!(c.states.len(), ItemState::ALL.len());
        assert_eq!(
            (c.graph_requests, c.throttled_requests, c.retries),
            (1, 1, 1)
        );
    }
}
