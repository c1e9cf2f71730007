//! Work spans: how long each process worked a run, for the reports' rate and duration. The only
//! writes behind those figures, kept out of the read-only report queries.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::params;

use super::{now, Queue, Result};

/// How often a working process moves its span's `last_seen_at` forward. A process killed
/// without warning loses at most this much of its working time.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

impl Queue {
    fn open_span(&self, run_id: i64) -> Result<i64> {
        let conn = self.conn();
        let at = now();
        conn.execute(
            "INSERT INTO work_spans (run_id, started_at, last_seen_at) VALUES (?1, ?2, ?2)",
            params![run_id, at],
        )
        .map_err(|e| self.err(e))?;
        Ok(conn.last_insert_rowid())
    }

    fn touch_span(&self, span_id: i64, end: bool) -> Result<()> {
        let sql = if end {
            "UPDATE work_spans SET last_seen_at = ?2, ended_at = ?2 WHERE id = ?1"
        } else {
            "UPDATE work_spans SET last_seen_at = ?2 WHERE id = ?1 AND ended_at IS NULL"
        };
        self.conn()
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params![span_id, now()]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// One process's stretch of work on a run: opened by [`WorkSpan::start`], kept alive by a
/// heartbeat thread every [`HEARTBEAT`], closed by [`WorkSpan::finish`] or on drop.
pub struct WorkSpan {
    queue: Arc<Queue>,
    id: i64,
    stop: Option<mpsc::Sender<()>>,
    beat: Option<JoinHandle<()>>,
}

impl WorkSpan {
    pub fn start(queue: Arc<Queue>, run_id: i64) -> Result<WorkSpan> {
        let id = queue.open_span(run_id)?;
        let (stop, rx) = mpsc::channel::<()>();
        let q = queue.clone();
        let beat = std::thread::Builder::new()
            .name("work-span".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(HEARTBEAT) {
                    if let Err(e) = q.touch_span(id, false) {
                        tracing::warn!(error = %e, "work span heartbeat failed");
                    }
                }
            })
            .ok();
        Ok(WorkSpan {
            queue,
            id,
            stop: Some(stop),
            beat,
        })
    }

    /// Stops the heartbeat and ends the span now.
    pub fn finish(mut self) -> Result<()> {
        self.close()
    }

    fn close(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            drop(stop);
            if let Some(beat) = self.beat.take() {
                let _ = beat.join();
            }
            self.queue.touch_span(self.id, true)?;
        }
        Ok(())
    }
}

impl Drop for WorkSpan {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "could not close the work span");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::item::RunMode;
    use crate::queue::testing::queue_with_run;

    #[test]
    fn a_span_is_closed_when_finished() {
        let (_d, q, run_id) = queue_with_run(RunMode::Live);
        let span = WorkSpan::start(q.clone(), run_id).unwrap();
        span.finish().unwrap();
        let open: i64 = q
            .conn()
            .query_row(
                "SELECT count(*) FROM work_spans WHERE ended_at IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(open, 0);
        assert!(q.active_seconds(run_id).unwrap().unwrap() >= 0.0);
    }
}
