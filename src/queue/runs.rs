//! Runs: creating (leased from birth), reading, ending, discarding.

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::*;

impl Queue {
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
        insert_run(&conn, source, mode, options, tenant_id, graph_url).map_err(|e| self.err(e))
    }

    /// Creates a run already leased to this process, in one transaction: a bare `resume` in
    /// another terminal can never pick the new run up while it is being ingested.
    pub fn create_leased_run(
        &self,
        source: &SourceSpec,
        mode: RunMode,
        options: &RunOptions,
        tenant_id: Option<&str>,
        graph_url: &str,
    ) -> Result<(i64, RunLease)> {
        let (run_id, token) = {
            let mut conn = self.conn();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.err(e))?;
            let run_id = insert_run(&tx, source, mode, options, tenant_id, graph_url)
                .map_err(|e| self.err(e))?;
            let token = lease::acquire_in(&tx, run_id, &Holder::current(), pid_alive)
                .map_err(|e| self.lease_err(run_id, e))?;
            tx.commit().map_err(|e| self.err(e))?;
            (run_id, token)
        };
        Ok((run_id, self.start_heartbeat(run_id, token)?))
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
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT 1"
            ))
            .and_then(|mut s| s.query_row([], run_from_row).optional())
            .map_err(|e| self.err(e))?
            .transpose()
    }

    /// The latest live run: what `track` and `export-links` mean without a run id (a dry run
    /// converted nobody, so there is nothing to track or export).
    pub fn latest_live_run(&self) -> Result<Option<RunRecord>> {
        self.conn()
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE mode = ?1 ORDER BY id DESC LIMIT 1"
            ))
            .and_then(|mut s| s.query_row([RunMode::Live], run_from_row).optional())
            .map_err(|e| self.err(e))?
            .transpose()
    }

    pub fn list_runs(&self) -> Result<Vec<RunRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], run_from_row)
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter().collect()
    }

    /// Marks a run running again (resume) or ended with `status`.
    pub fn set_run_status(&self, id: i64, status: RunStatus) -> Result<()> {
        let finished = (status != RunStatus::Running).then(now);
        self.conn()
            .prepare_cached("UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, status, finished]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes a run that never started (the operator declined the confirmation): its items, its
    /// request log and its lease, in one transaction.
    pub fn discard_run(&self, run_id: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        for sql in [
            "DELETE FROM requests WHERE run_id = ?1",
            "DELETE FROM items WHERE run_id = ?1",
            "DELETE FROM run_leases WHERE run_id = ?1",
            "DELETE FROM runs WHERE id = ?1",
        ] {
            tx.execute(sql, [run_id]).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
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
}

fn insert_run(
    conn: &Connection,
    source: &SourceSpec,
    mode: RunMode,
    options: &RunOptions,
    tenant_id: Option<&str>,
    graph_url: &str,
) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO runs (source, mode, options, tenant_id, graph_url, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        to_json(source),
        mode.as_str(),
        to_json(options),
        tenant_id,
        graph_url,
        now()
    ])?;
    Ok(conn.last_insert_rowid())
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
