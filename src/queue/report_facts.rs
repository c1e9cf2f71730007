//! Read-only figures for the report's first page: what the conversion leaves to do for the
//! users it converts (or, in a dry run, would convert) — who still has an internal password to
//! retire on-premises or in the cloud, and who keeps userType Member and so member billing.
//! One aggregate query over the `items_run_state` index; nothing here writes.

use rusqlite::params;

use super::retire::SYNCED;
use super::{Queue, Result};
use crate::item::ItemState;

/// The users of one state (`converted`, or `would_convert` in a dry run), by what the
/// conversion does not change for them: where their password lives and their userType as read
/// before any change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeftToDo {
    pub users: u64,
    /// Synced from on-premises (`onPremisesSyncEnabled`): their password is retired there.
    pub synced: u64,
    /// userType Member before the conversion, which leaves userType as it is.
    pub member: u64,
    /// userType Guest before the conversion ("internal guests").
    pub guest: u64,
}

impl Queue {
    /// [`LeftToDo`] for the run's items in `state`.
    pub fn left_to_do(&self, run_id: i64, state: ItemState) -> Result<LeftToDo> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT count(*),
                            coalesce(sum({SYNCED}), 0),
                            coalesce(sum(lower(coalesce(i.user_type,
                                json_extract(i.snapshot, '$.userType'), '')) = 'member'), 0),
                            coalesce(sum(lower(coalesce(i.user_type,
                                json_extract(i.snapshot, '$.userType'), '')) = 'guest'), 0)
                       FROM items i WHERE i.run_id = ?1 AND i.state = ?2"
                ),
                params![run_id, state],
                |r| {
                    let n = |k: usize| r.get::<_, i64>(k).map(|v| v as u64);
                    Ok(LeftToDo {
                        users: n(0)?,
                        synced: n(1)?,
                        member: n(2)?,
                        guest: n(3)?,
                    })
                },
            )
            .map_err(|e| self.err(e))
    }
}
