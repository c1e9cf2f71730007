//! `--only`: which items of a run a file of names selects.

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension};

use super::*;

/// The items of a run that a `--only` file names, and the names that match none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub items: HashSet<i64>,
    pub unmatched: Vec<String>,
}

impl Queue {
    /// Matches each name (object id or UPN, case-insensitively) against the run's items: the
    /// object id it resolved to, the key its row gave, or its UPN.
    pub fn only_selection(&self, run_id: i64, names: &[String]) -> Result<Selection> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id FROM items WHERE run_id = ?1
                   AND (lower(user_id) = ?2 OR lower(key_value) = ?2
                        OR lower(user_principal_name) = ?2)",
            )
            .map_err(|e| self.err(e))?;
        let mut selection = Selection::default();
        for name in names {
            let ids = stmt
                .query_map(params![run_id, name.to_lowercase()], |r| r.get::<_, i64>(0))
                .map_err(|e| self.err(e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.err(e))?;
            if ids.is_empty() {
                selection.unmatched.push(name.clone());
            }
            selection.items.extend(ids);
        }
        Ok(selection)
    }

    /// Pending items of the run among `selected` (all pending ones without a selection).
    pub fn pending_among(&self, run_id: i64, selected: Option<&HashSet<i64>>) -> Result<u64> {
        match selected {
            None => Ok(self.counts(run_id)?.state(ItemState::Pending)),
            Some(ids) => {
                let conn = self.conn();
                let mut stmt = conn
                    .prepare_cached("SELECT state FROM items WHERE id = ?1 AND run_id = ?2")
                    .map_err(|e| self.err(e))?;
                let mut n = 0;
                for id in ids {
                    let state: Option<ItemState> = stmt
                        .query_row(params![id, run_id], |r| r.get(0))
                        .optional()
                        .map_err(|e| self.err(e))?;
                    n += u64::from(state == Some(ItemState::Pending));
                }
                Ok(n)
            }
        }
    }
}
