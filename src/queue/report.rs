//! Read-only SQL for reports (the work spans they read are written by `spans`).
//!
//! Reports never load a whole run: the people formats read aggregates and the users who need
//! action (through the `items_run_state` index); the CSV and JSON reports stream every item from
//! one prepared statement, row by row, so a report of a million-item run stays in flat memory.

use std::collections::BTreeMap;
use std::io;

use rusqlite::params;

use super::items::{item_from_row, ITEM_COLUMNS};
use super::{Queue, Result};
use crate::item::{FollowUpCounts, ItemExtras, PaceMinute};
use crate::item::{ItemRecord, ItemState};

impl Queue {
    /// Converted users of a run with no stored redeem link (their invitation's answer was lost
    /// and the conversion was reconciled from a re-read): UPN, else object id, in item order.
    pub fn converted_without_link(&self, run_id: i64) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT COALESCE(user_principal_name, user_id, '') FROM items
                 WHERE run_id = ?1 AND state = ?2 AND invite_redeem_url IS NULL
                 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id, crate::item::ItemState::Converted], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

impl Queue {
    /// Blocked and failed items of the run, by id: the users the people formats list.
    pub fn attention_items(&self, run_id: i64) -> Result<Vec<ItemRecord>> {
        self.select_items(
            &format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE run_id = ?1 AND state IN (?2, ?3)
                 ORDER BY id"
            ),
            params![run_id, ItemState::Blocked, ItemState::Failed],
        )
    }

    /// How many items carry per-row overrides.
    pub fn overridden_count(&self, run_id: i64) -> Result<u64> {
        let conn = self.conn();
        conn.query_row(
            "SELECT count(*) FROM items WHERE run_id = ?1 AND overrides IS NOT NULL",
            [run_id],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(|e| self.err(e))
    }

    /// Calls `f` with every item of the run in id order, with its redemption and follow-up
    /// times, one row in memory at a time. The connection stays locked while it runs: a report
    /// is written by one thread.
    pub fn for_each_item(
        &self,
        run_id: i64,
        f: &mut dyn FnMut(&ItemRecord, &ItemExtras) -> io::Result<()>,
    ) -> io::Result<()> {
        let conn = self.conn();
        let to_io = |e: rusqlite::Error| io::Error::other(self.err(e));
        // The extras follow the item columns; a correlated lookup by primary key keeps the
        // item columns unqualified and the scan on `items` in id order.
        let at = ITEM_COLUMNS.split(',').count();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, items.invited_at, external_user_state,
                   external_user_state_changed_at, tracked_at,
                   (SELECT s.mail_set_at FROM item_steps s WHERE s.item_id = items.id),
                   (SELECT s.guest_set_at FROM item_steps s WHERE s.item_id = items.id)
                 FROM items WHERE run_id = ?1 ORDER BY id"
            ))
            .map_err(to_io)?;
        let mut rows = stmt.query([run_id]).map_err(to_io)?;
        while let Some(row) = rows.next().map_err(to_io)? {
            let item = item_from_row(row)
                .map_err(to_io)?
                .map_err(io::Error::other)?;
            let extras = (|| {
                Ok::<_, rusqlite::Error>(ItemExtras {
                    invited_at: row.get(at)?,
                    external_user_state: row.get(at + 1)?,
                    external_user_state_changed_at: row.get(at + 2)?,
                    tracked_at: row.get(at + 3)?,
                    mail_set_at: row.get(at + 4)?,
                    guest_set_at: row.get(at + 5)?,
                })
            })()
            .map_err(to_io)?;
            f(&item, &extras)?;
        }
        Ok(())
    }

    /// Users of the run whose follow-up writes were planned and done. A live run plans steps
    /// in `item_steps`; a dry run stores no plan (it writes nothing), so its planned steps are
    /// counted from the notes validation and the workers put in a would-convert item's detail
    /// ("mail will be set …", "userType will be set to Guest …"), in one aggregate.
    pub fn follow_up_counts(&self, run_id: i64) -> Result<FollowUpCounts> {
        let conn = self.conn();
        let (mail_planned, mail_set, guest_planned, guest_set): (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT coalesce(sum(s.needs_mail), 0), count(s.mail_set_at),
                        coalesce(sum(s.needs_guest), 0), count(s.guest_set_at)
                 FROM item_steps s JOIN items i ON i.id = s.item_id WHERE i.run_id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(|e| self.err(e))?;
        let (dry_mail, dry_guest): (i64, i64) = conn
            .query_row(
                "SELECT coalesce(sum(instr(detail, 'mail will be set') > 0), 0),
                        coalesce(sum(instr(detail, 'userType will be set to Guest') > 0), 0)
                 FROM items WHERE run_id = ?1 AND state = ?2 AND detail IS NOT NULL",
                params![run_id, ItemState::WouldConvert],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        Ok(FollowUpCounts {
            mail_planned: (mail_planned + dry_mail) as u64,
            mail_set: mail_set as u64,
            guest_planned: (guest_planned + dry_guest) as u64,
            guest_set: guest_set as u64,
        })
    }

    /// Seconds the run was worked: the sum of its work spans, each ended at its `ended_at` or,
    /// for a process that died without closing it, at its last heartbeat. `None` when the run
    /// has no span (recorded before spans existed).
    pub fn active_seconds(&self, run_id: i64) -> Result<Option<f64>> {
        let conn = self.conn();
        conn.query_row(
            "SELECT CASE WHEN count(*) = 0 THEN NULL ELSE
                 sum(max(0.0, julianday(coalesce(ended_at, last_seen_at)) - julianday(started_at)))
                 * 86400.0 END
             FROM work_spans WHERE run_id = ?1",
            [run_id],
            |r| r.get::<_, Option<f64>>(0),
        )
        .map_err(|e| self.err(e))
    }

    /// Conversions (items' last update in state `converted`) and 429 responses per UTC minute,
    /// minutes without either left out. Grouped in SQLite: memory is one entry per minute.
    pub fn pace(&self, run_id: i64) -> Result<Vec<PaceMinute>> {
        let conn = self.conn();
        let mut minutes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let converted: &dyn rusqlite::ToSql = &ItemState::Converted;
        let throttled: &dyn rusqlite::ToSql = &429;
        let queries = [
            (
                "SELECT substr(updated_at, 1, 16), count(*) FROM items
                 WHERE run_id = ?1 AND state = ?2 GROUP BY 1",
                converted,
            ),
            (
                "SELECT substr(at, 1, 16), count(*) FROM requests
                 WHERE run_id = ?1 AND status = ?2 GROUP BY 1",
                throttled,
            ),
        ];
        for (n, (sql, which)) in queries.into_iter().enumerate() {
            let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![run_id, which], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (minute, count) = row.map_err(|e| self.err(e))?;
                let slot = minutes.entry(minute).or_default();
                if n == 0 {
                    slot.0 += count as u64;
                } else {
                    slot.1 += count as u64;
                }
            }
        }
        Ok(minutes
            .into_iter()
            .map(|(minute, (converted, throttled))| PaceMinute {
                minute: format!("{minute}:00Z"),
                converted,
                throttled,
            })
            .collect())
    }

    /// Items per state, for the progress bar: the run's few `run_counts` rows (migration 0012),
    /// which triggers keep in step with every item change, so a poll costs the same at 1M items
    /// as at ten.
    pub fn state_counts(&self, run_id: i64) -> Result<Vec<(ItemState, u64)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT state, n FROM run_counts WHERE run_id = ?1 AND n > 0 ORDER BY state",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (state, n) = row.map_err(|e| self.err(e))?;
            if let Ok(state) = state.parse::<ItemState>() {
                out.push((state, n as u64));
            }
        }
        Ok(out)
    }

    /// 429 responses of the run logged after request `after`, and the last request id seen:
    /// a rowid range, so polling it costs only the new rows.
    pub fn throttled_after(&self, run_id: i64, after: i64) -> Result<(u64, i64)> {
        let conn = self.conn();
        conn.query_row(
            "SELECT coalesce(sum(status = 429 AND run_id = ?1), 0), coalesce(max(id), ?2)
             FROM requests WHERE id > ?2",
            params![run_id, after],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?)),
        )
        .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use crate::item::RunMode;
    use crate::queue::testing::queue_with_run;

    #[test]
    fn spans_sum_and_a_killed_process_ends_at_its_last_heartbeat() {
        let (_d, q, run_id) = queue_with_run(RunMode::Live);
        assert_eq!(q.active_seconds(run_id).unwrap(), None);
        {
            let conn = q.conn();
            // A closed 60 s span, a span whose process died 30 s after starting (never closed),
            // and a span whose clock ran backwards (counts as zero).
            conn.execute_batch(&format!(
                "INSERT INTO work_spans (run_id, started_at, last_seen_at, ended_at) VALUES
                   ({run_id}, '2025-03-01T10:00:00Z', '2025-03-01T10:00:50Z', '2025-03-01T10:01:00Z'),
                   ({run_id}, '2025-03-02T10:00:00Z', '2025-03-02T10:00:30Z', NULL),
                   ({run_id}, '2025-03-03T10:00:00Z', '2025-03-03T09:00:00Z', NULL);"
            ))
            .unwrap();
        }
        let s = q.active_seconds(run_id).unwrap().unwrap();
        assert!((s - 90.0).abs() < 0.01, "{s}");
    }
}
