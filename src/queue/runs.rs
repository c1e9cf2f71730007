//! Runs: creating (leased from birth), reading, ending, discarding.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::*;

/// What an `apply` run's plan saw of one user.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedUser {
    pub user: User,
    /// The address the plan would have invited.
    pub email: Option<String>,
}

/// One entry of a run's option history (`resume` with other send options).
#[derive(Debug, Clone, PartialEq)]
pub struct OptionChange {
    pub at: String,
    /// The lowest item id still pending when the change was made.
    pub first_item_id: Option<i64>,
    /// Items converted or failed before the change: it applies from the next one on.
    pub sent_before: u64,
    /// The options in force from then on.
    pub options: RunOptions,
    /// What changed, in words ("as started" for the options the run began with).
    pub changes: String,
}

/// What a new run is made of, as [`Queue::create_run`] and [`Queue::create_leased_run`] store it.
#[derive(Debug, Clone, Copy)]
pub struct NewRun<'a> {
    pub source: &'a SourceSpec,
    pub mode: RunMode,
    pub options: &'a RunOptions,
    /// The tenant the run was begun signed in to, when known.
    pub tenant_id: Option<&'a str>,
    pub graph_url: &'a str,
}

impl Queue {
    // ---- runs -----------------------------------------------------------------------------

    pub fn create_run(&self, new: NewRun<'_>) -> Result<i64> {
        let conn = self.conn();
        insert_run(&conn, new).map_err(|e| self.err(e))
    }

    /// Creates a run already leased to this process, in one transaction: a bare `resume` in
    /// another terminal can never pick the new run up while it is being ingested. The run is
    /// bound to `tenant` (when known) in the same transaction, so no run exists unbound.
    pub fn create_leased_run(
        &self,
        new: NewRun<'_>,
        tenant: Option<&TenantIdentity>,
    ) -> Result<(i64, RunLease)> {
        let (run_id, token) = self.write_tx(|tx| {
            let run_id = insert_run(tx, new).map_err(|e| self.err(e))?;
            if let Some(t) = tenant {
                bind_tenant(tx, run_id, t, "token").map_err(|e| self.err(e))?;
            }
            let token = lease::acquire_in(tx, run_id, &Holder::current(), pid_alive)
                .map_err(|e| self.lease_err(run_id, e))?;
            Ok((run_id, token))
        })?;
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
        self.write_tx(|tx| {
            for sql in [
                "DELETE FROM requests WHERE run_id = ?1",
                "DELETE FROM items WHERE run_id = ?1",
                "DELETE FROM run_counts WHERE run_id = ?1",
                "DELETE FROM run_leases WHERE run_id = ?1",
                "DELETE FROM runs WHERE id = ?1",
            ] {
                tx.execute(sql, [run_id]).map_err(|e| self.err(e))?;
            }
            Ok(())
        })
    }

    /// Records the tenant of a run made before runs recorded theirs, once its stored tenant name
    /// was matched against the signed-in tenant.
    pub fn adopt_run_tenant(&self, run_id: i64, tenant: &TenantIdentity) -> Result<()> {
        bind_tenant(&self.conn(), run_id, tenant, "options").map_err(|e| self.err(e))
    }

    /// `apply`: a new live run, leased from birth, over exactly the dry run's `would_convert`
    /// items, in one transaction. Each new item names its user by the object id the plan
    /// resolved (a UPN could name someone else by now) and keeps the plan's snapshot and
    /// address for the comparison just before sending. Returns the run id, the lease and the
    /// number of items.
    pub fn create_apply_run(
        &self,
        plan: &RunRecord,
        options: &RunOptions,
        graph_url: &str,
    ) -> Result<(i64, RunLease, u64)> {
        let (run_id, token, copied) = self.write_tx(|tx| {
            let new = NewRun {
                source: &plan.source,
                mode: RunMode::Live,
                options,
                tenant_id: plan.tenant_id.as_deref(),
                graph_url,
            };
            let run_id = insert_run(tx, new).map_err(|e| self.err(e))?;
            if let Some(t) = &plan.tenant {
                bind_tenant(tx, run_id, t, "token").map_err(|e| self.err(e))?;
            }
            let at = now();
            let copied = tx
                .execute(
                    "INSERT INTO items (run_id, line, key_kind, key_value, key_norm, user_id,
                        user_principal_name, display_name, user_type, requested_email, overrides,
                        state, plan_snapshot, plan_email, created_at, updated_at)
                     SELECT ?1, line, 'id', user_id, 'id:' || lower(user_id), user_id,
                        user_principal_name, display_name, user_type, requested_email, overrides,
                        ?3, snapshot, external_email, ?4, ?4
                       FROM items
                      WHERE run_id = ?2 AND state = ?5 AND user_id IS NOT NULL
                      ORDER BY id",
                    params![
                        run_id,
                        plan.id,
                        ItemState::Pending,
                        at,
                        ItemState::WouldConvert
                    ],
                )
                .map_err(|e| self.err(e))? as u64;
            super::ingest::add_to_count(tx, run_id, ItemState::Pending, copied)
                .map_err(|e| self.err(e))?;
            tx.execute(
                "UPDATE runs SET plan_run_id = ?2, ingest_complete = 1 WHERE id = ?1",
                params![run_id, plan.id],
            )
            .map_err(|e| self.err(e))?;
            let token = lease::acquire_in(tx, run_id, &Holder::current(), pid_alive)
                .map_err(|e| self.lease_err(run_id, e))?;
            Ok((run_id, token, copied))
        })?;
        Ok((run_id, self.start_heartbeat(run_id, token)?, copied))
    }

    /// What the plan saw of each item of an `apply` run: the user's snapshot and the address it
    /// would have invited. Items without a plan (other runs) are absent.
    pub fn plan_snapshots(&self, item_ids: &[i64]) -> Result<HashMap<i64, PlannedUser>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT plan_snapshot, plan_email FROM items
                  WHERE id = ?1 AND plan_snapshot IS NOT NULL",
            )
            .map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for &id in item_ids {
            let row: Option<(String, Option<String>)> = stmt
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some((snapshot, email)) = row {
                out.insert(
                    id,
                    PlannedUser {
                        user: from_json(&snapshot, "items.plan_snapshot")?,
                        email,
                    },
                );
            }
        }
        Ok(out)
    }

    /// `resume` with other send options: stores the options in force from now on and the change
    /// in the run's option history, in one transaction. The first change also records the
    /// options the run started with, so the history covers every item.
    pub fn change_run_options(
        &self,
        run_id: i64,
        before: &RunOptions,
        after: &RunOptions,
        changes: &str,
    ) -> Result<()> {
        self.write_tx(|tx| {
            // The first item still pending and how many were sent (where the change applies
            // from), whether the history has begun, and the run's first item (where it began).
            let (first_pending, sent, recorded, first): (Option<i64>, i64, i64, Option<i64>) = tx
                .query_row(
                    "SELECT (SELECT min(id) FROM items WHERE run_id = ?1 AND state = ?2),
                            (SELECT count(*) FROM items WHERE run_id = ?1 AND state IN (?3, ?4)),
                            (SELECT count(*) FROM option_changes WHERE run_id = ?1),
                            (SELECT min(id) FROM items WHERE run_id = ?1)",
                    params![
                        run_id,
                        ItemState::Pending,
                        ItemState::Converted,
                        ItemState::Failed
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(|e| self.err(e))?;
            let at = now();
            let insert =
                |at: &str, first: Option<i64>, sent: i64, opts: &RunOptions, what: &str| {
                    tx.execute(
                        "INSERT INTO option_changes
                            (run_id, at, first_item_id, sent_before, options, changes)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![run_id, at, first, sent, to_json(opts), what],
                    )
                    .map_err(|e| self.err(e))
                };
            if recorded == 0 {
                let started: Option<String> = tx
                    .query_row("SELECT started_at FROM runs WHERE id = ?1", [run_id], |r| {
                        r.get(0)
                    })
                    .map_err(|e| self.err(e))?;
                insert(
                    started.as_deref().unwrap_or(&at),
                    first,
                    0,
                    before,
                    "as started",
                )?;
            }
            insert(&at, first_pending, sent, after, changes)?;
            tx.execute(
                "UPDATE runs SET options = ?2 WHERE id = ?1",
                params![run_id, to_json(after)],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// The run's option history, oldest first; empty when its options never changed.
    pub fn option_history(&self, run_id: i64) -> Result<Vec<OptionChange>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT at, first_item_id, sent_before, options, changes FROM option_changes
                  WHERE run_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(at, first_item_id, sent_before, options, changes)| {
                Ok(OptionChange {
                    at,
                    first_item_id,
                    sent_before: sent_before as u64,
                    options: from_json(&options, "option_changes.options")?,
                    changes,
                })
            })
            .collect()
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

fn bind_tenant(
    conn: &Connection,
    run_id: i64,
    tenant: &TenantIdentity,
    source: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET tenant_tid = ?2, tenant_initial_domain = ?3, tenant_default_domain = ?4,
                tenant_source = ?5
          WHERE id = ?1",
        params![
            run_id,
            tenant.id,
            tenant.initial_domain,
            tenant.default_domain,
            source
        ],
    )?;
    Ok(())
}

fn insert_run(conn: &Connection, new: NewRun<'_>) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO runs (source, mode, options, tenant_id, graph_url, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        to_json(new.source),
        new.mode.as_str(),
        to_json(new.options),
        new.tenant_id,
        new.graph_url,
        now()
    ])?;
    Ok(conn.last_insert_rowid())
}

const RUN_COLUMNS: &str = "id, source, mode, options, tenant_id, graph_url, started_at, \
    finished_at, status, ingest_complete, tenant_tid, tenant_initial_domain, \
    tenant_default_domain, plan_run_id";

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
            tenant: r
                .get::<_, Option<String>>(10)
                .map_err(corrupt("runs.tenant_tid"))?
                .map(|id| -> Result<TenantIdentity> {
                    Ok(TenantIdentity {
                        id,
                        initial_domain: r.get(11).map_err(corrupt("runs.tenant_initial_domain"))?,
                        default_domain: r.get(12).map_err(corrupt("runs.tenant_default_domain"))?,
                    })
                })
                .transpose()?,
            plan_run_id: r.get(13).map_err(corrupt("runs.plan_run_id"))?,
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: &str = "A2600000-0000-4000-8000-000000000001";

    /// A database made before migration 9: its runs stored only the tenant they were started
    /// with. A tenant id becomes the run's tenant; a domain name or nothing stays unknown (the
    /// check matches a domain at the next command, see `commands::tenant`).
    #[test]
    fn runs_made_before_migration_9_take_their_tenant_from_their_stored_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrations().to_version(&mut conn, 7).unwrap();
            for tenant in [Some(TID), Some("contoso.onmicrosoft.com"), None] {
                let new = NewRun {
                    source: &SourceSpec::Csv {
                        path: "u.csv".into(),
                    },
                    mode: RunMode::Live,
                    options: &RunOptions::default(),
                    tenant_id: tenant,
                    graph_url: "https://graph.microsoft.com",
                };
                insert_run(&conn, new).unwrap();
            }
        }
        let q = Queue::open(&path).unwrap();
        let runs = q.list_runs().unwrap();
        assert_eq!(
            runs[0].tenant,
            Some(TenantIdentity {
                id: TID.to_lowercase(),
                initial_domain: None,
                default_domain: None,
            })
        );
        assert_eq!(runs[1].tenant, None);
        assert_eq!(
            runs[1].tenant_id.as_deref(),
            Some("contoso.onmicrosoft.com")
        );
        assert_eq!(runs[2].tenant, None);
        assert!(runs.iter().all(|r| r.plan_run_id.is_none()));
        // Matched later, a run's tenant is recorded in full.
        let identity = TenantIdentity {
            id: TID.to_lowercase(),
            initial_domain: Some("contoso.onmicrosoft.com".into()),
            default_domain: Some("contoso.com".into()),
        };
        q.adopt_run_tenant(runs[1].id, &identity).unwrap();
        assert_eq!(q.run(runs[1].id).unwrap().unwrap().tenant, Some(identity));
    }

    #[test]
    fn the_option_history_starts_with_the_options_the_run_began_with() {
        let (_d, q) = testing::temp_queue();
        let silent = RunOptions {
            silent: true,
            ..RunOptions::default()
        };
        let id = testing::csv_run_with(&q, RunMode::Live, &silent, None);
        assert!(q.option_history(id).unwrap().is_empty());
        let loud = RunOptions::default();
        q.change_run_options(id, &silent, &loud, "with Microsoft's invitation email")
            .unwrap();
        let h = q.option_history(id).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].changes.as_str(), h[0].options.silent),
            ("as started", true)
        );
        assert!(!h[1].options.silent);
        assert_eq!(h[1].sent_before, 0);
        assert_eq!(q.run(id).unwrap().unwrap().options, loud);
        // A later change adds one entry, not another "as started".
        q.change_run_options(id, &loud, &silent, "silent (no invitation email)")
            .unwrap();
        assert_eq!(q.option_history(id).unwrap().len(), 3);
    }
}
