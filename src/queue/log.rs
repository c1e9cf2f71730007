//! The append-only Graph request log and the run's counts.

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use rusqlite::{params, TransactionBehavior};

use super::*;

/// Buffered rows are written once this many are waiting…
pub const LOG_FLUSH_ROWS: usize = 256;
/// …or once the oldest has waited this long (checked as rows arrive).
pub const LOG_FLUSH_AFTER: Duration = Duration::from_millis(250);

/// Request rows not yet written.
#[derive(Default)]
pub(super) struct LogBuffer {
    rows: Vec<(RequestRecord, bool, u32)>,
    since: Option<Instant>,
}

impl LogBuffer {
    /// [`LOG_FLUSH_ROWS`] rows are waiting, or the oldest has waited [`LOG_FLUSH_AFTER`].
    fn due(&self) -> bool {
        self.rows.len() >= LOG_FLUSH_ROWS
            || self.since.is_some_and(|s| s.elapsed() >= LOG_FLUSH_AFTER)
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Err(e) = self.flush_request_log() {
            tracing::warn!(error = %e, "could not write the last Graph requests to the log");
        }
    }
}

impl Queue {
    // ---- requests log and counts ----------------------------------------------------------

    /// Records one Graph request. Rows are buffered and written together, one transaction per
    /// [`LOG_FLUSH_ROWS`] rows or [`LOG_FLUSH_AFTER`], instead of one per HTTP attempt: the log
    /// is the support trail, not a checkpoint, so it never costs a write transaction per request.
    /// Buffered rows are written before any count is read, when the run's work ends, and when
    /// the queue is dropped (a normal exit loses none; a SIGKILL loses at most one batch).
    pub fn log_request(&self, rec: &RequestRecord, throttled: bool, attempt: u32) -> Result<()> {
        let due = {
            let mut buf = self.log_buffer();
            buf.rows.push((rec.clone(), throttled, attempt));
            buf.since.get_or_insert_with(Instant::now);
            buf.due()
        };
        // On a thread that drives async tasks the rows wait for the pass's next database call
        // on the blocking pool ([`super::threads::db`]), which writes them when due.
        if due && !super::threads::misplaced() {
            self.flush_request_log()?;
        }
        Ok(())
    }

    /// Writes the buffered request rows if they are due (see [`Queue::log_request`]).
    pub fn flush_request_log_if_due(&self) -> Result<()> {
        let due = self.log_buffer().due();
        if due {
            self.flush_request_log()?;
        }
        Ok(())
    }

    /// Writes every buffered request row in one transaction.
    pub fn flush_request_log(&self) -> Result<()> {
        if self.log_buffer().rows.is_empty() {
            return Ok(());
        }
        // The connection first, then the rows: a count read on another thread meanwhile finds
        // the buffer empty and waits for this write on the connection, so it sees these rows.
        let mut conn = self.conn();
        let rows = {
            let mut buf = self.log_buffer();
            buf.since = None;
            std::mem::take(&mut buf.rows)
        };
        if rows.is_empty() {
            return Ok(());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO requests (run_id, item_id, method, path, status, client_request_id,
                        request_id, duration_ms, throttled, attempt, error, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(|e| self.err(e))?;
            for (rec, throttled, attempt) in &rows {
                insert
                    .execute(params![
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
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The `(name, count)` rows `sql` selects for the run `?1`.
    fn named_counts(
        &self,
        conn: &Connection,
        sql: &str,
        run_id: i64,
    ) -> Result<Vec<(String, u64)>> {
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    fn log_buffer(&self) -> MutexGuard<'_, LogBuffer> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn counts(&self, run_id: i64) -> Result<RunCounts> {
        self.flush_request_log()?;
        let conn = self.conn();
        let mut counts = RunCounts::default();
        for s in ItemState::ALL {
            counts.states.insert(s.as_str().to_string(), 0);
        }
        // The states' counts are the `run_counts` rows (migrations 0012 and 0013), not a count
        // over the run's items.
        let states = self.named_counts(
            &conn,
            "SELECT state, n FROM run_counts WHERE run_id = ?1 AND n > 0",
            run_id,
        )?;
        for (state, n) in states {
            counts.total += n;
            counts.states.insert(state, n);
        }
        counts.reasons.extend(self.named_counts(
            &conn,
            "SELECT reason, count(*) FROM items WHERE run_id = ?1 AND reason IS NOT NULL
             GROUP BY reason",
            run_id,
        )?);
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
