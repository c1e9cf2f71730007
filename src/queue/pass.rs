//! What the pass tables (`resends`, `retires`, `backout_entries`) share: one entry per user of a
//! pass, changed by [`EntryChange`]s — from one of the states it may leave to the next, setting
//! what the change records — that [`Queue::change_entry`] makes in one fenced write transaction.
//! A change that finds the entry elsewhere says where it actually is. One piece of SQL, so the
//! passes cannot drift apart in how they guard a state change.

use rusqlite::types::Value;
use rusqlite::{params_from_iter, OptionalExtension};

use super::{Queue, QueueError, Result};

/// A state of an entry in a pass table, and the table; its stored spelling is `name`, read
/// back by `FromStr`. Declared with `entry_state!`.
pub trait EntryState:
    Copy + PartialEq + Send + Sync + 'static + std::str::FromStr<Err = String>
{
    /// The table the pass's entries live in.
    const TABLE: &'static str;
    /// The condition naming one entry: `?1` and `?2` are its [`EntryKey`].
    const KEY: &'static str;
    /// What a `Moved` error says when the user has no entry in the pass at all.
    const MISSING: &'static str;
    /// Waiting for the pass.
    const PENDING: Self;
    /// A request may be on the wire (or was when the process died).
    const IN_FLIGHT: Self;
    /// Every step is done: re-invited, retired, put back.
    const DONE: Self;
    const FAILED: Self;
    /// Left alone: nothing to send after all.
    const SKIPPED: Self;
    /// What going back to pending clears besides the state (empty: nothing).
    const OFF_THE_WIRE: &'static str;

    /// The state as stored.
    fn name(self) -> &'static str;

    /// Whether the pass still has to work an entry in this state.
    fn is_open(self) -> bool {
        self == Self::PENDING || self == Self::IN_FLIGHT
    }
}

/// Declares the state enum of a pass table with [`crate::item::wire_enum`] (`Debug`, `Clone`,
/// `Copy`, `PartialEq`, `Eq`) and its [`EntryState`]. Every pass table's states are `Pending`,
/// `InFlight`, the table's own done state, `Failed` and `Skipped`, in that order, stored as
/// `pending`, `in_flight`, …, `failed`, `skipped`; only the done state (with its spelling) and
/// what `Skipped` means are given. `table`, `key`, `missing` and `off_the_wire` are the
/// trait's constants; an unknown spelling reads as ``unknown <table> state `…` ``. A table
/// whose passes have a table of their own names it as `passes` instead of `key` and
/// `off_the_wire`: its entries are keyed by pass and item, going back to pending clears
/// nothing else, and it is a [`PassTable`].
macro_rules! entry_state {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($states:tt)* }
        table = $table:literal, passes = $passes:literal, missing = $missing:literal;
    ) => {
        entry_state! {
            $(#[$meta])*
            pub enum $name { $($states)* }
            table = $table, key = "pass_id = ?1 AND item_id = ?2", missing = $missing,
            off_the_wire = "";
        }

        impl $crate::queue::pass::PassTable for $name {
            const PASSES: &'static str = $passes;
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(#[$done_meta:meta])* $done:ident = $done_wire:literal,
            $(#[$skipped_meta:meta])* Skipped,
        }
        table = $table:literal, key = $key:literal, missing = $missing:literal,
        off_the_wire = $off_the_wire:literal;
    ) => {
        $crate::item::wire_enum! {
            $(#[$meta])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub enum $name {
                Pending = "pending",
                /// A request may be on the wire (or was when the process died).
                InFlight = "in_flight",
                $(#[$done_meta])* $done = $done_wire,
                Failed = "failed",
                $(#[$skipped_meta])* Skipped = "skipped",
            }
            unknown = |s| format!("unknown {} state `{s}`", $table);
        }

        impl $crate::queue::pass::EntryState for $name {
            const TABLE: &'static str = $table;
            const KEY: &'static str = $key;
            const MISSING: &'static str = $missing;
            const PENDING: Self = $name::Pending;
            const IN_FLIGHT: Self = $name::InFlight;
            const DONE: Self = $name::$done;
            const FAILED: Self = $name::Failed;
            const SKIPPED: Self = $name::Skipped;
            const OFF_THE_WIRE: &'static str = $off_the_wire;

            fn name(self) -> &'static str {
                self.as_str()
            }
        }
    };
}
pub(super) use entry_state;

/// A pass table whose passes are recorded in a table of their own (`resend_passes`,
/// `retire_passes`), each entry naming its pass.
pub trait PassTable: EntryState {
    /// The table of the passes.
    const PASSES: &'static str;
}

/// Which entry of its table a change is for: the two values [`EntryState::KEY`] binds, and the
/// entry's item.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryKey {
    item_id: i64,
    key: [Value; 2],
}

impl EntryKey {
    /// The entry of `item_id` in pass `pass_id` (`resends`, `retires`).
    pub fn of_pass(pass_id: i64, item_id: i64) -> EntryKey {
        EntryKey {
            item_id,
            key: [Value::Integer(pass_id), Value::Integer(item_id)],
        }
    }

    /// The entry of `item_id` in the back-out named `kind` (`backout_entries`).
    pub fn of_item(item_id: i64, kind: &str) -> EntryKey {
        EntryKey {
            item_id,
            key: [Value::Integer(item_id), Value::Text(kind.to_string())],
        }
    }
}

/// One change of one entry: `set` (placeholders from `?3`, bound to `values`), and the state it
/// moves the entry to from one of the states it may leave (none: any, and the state is kept).
/// A change may write the entry's item too, in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryChange<S> {
    moves: Option<(Vec<S>, S)>,
    set: String,
    values: Vec<Value>,
    /// `UPDATE items SET …` of the entry's item: `?1` is the item id, the values bind from `?2`.
    item: Option<(String, Vec<Value>)>,
}

impl<S: EntryState> EntryChange<S> {
    /// Moves the entry from one of `from` to `to`, setting `set` too (may be empty).
    pub(super) fn moves(from: &[S], to: S, set: &str, values: Vec<Value>) -> Self {
        EntryChange {
            moves: Some((from.to_vec(), to)),
            set: set.to_string(),
            values,
            item: None,
        }
    }

    /// Sets `set` wherever the entry is, its state kept.
    pub(super) fn in_place(set: &str, values: Vec<Value>) -> Self {
        EntryChange {
            moves: None,
            set: set.to_string(),
            values,
            item: None,
        }
    }

    /// The entry's item is written too: `set` with `?1` the item id and `values` from `?2`.
    pub(super) fn and_item(mut self, set: &str, values: Vec<Value>) -> Self {
        self.item = Some((set.to_string(), values));
        self
    }

    /// One more request at the current step that may have reached Graph (`--max-attempts`).
    pub fn charge() -> Self {
        Self::moves(
            &[S::IN_FLIGHT],
            S::IN_FLIGHT,
            "attempts = attempts + 1",
            vec![],
        )
    }

    /// The last error of an entry whose outcome is unknown; the entry stays where it is.
    pub fn note_error(code: &str, message: &str, request_id: Option<&str>) -> Self {
        Self::in_place(
            "error_code = ?3, error_message = ?4, request_id = coalesce(?5, request_id)",
            vec![text(Some(code)), text(Some(message)), text(request_id)],
        )
    }

    /// A request that certainly did not take effect waits again (the tenant refused it before
    /// carrying it out, or a re-read showed the user unchanged).
    pub fn back_to_pending() -> Self {
        Self::moves(&[S::IN_FLIGHT], S::PENDING, S::OFF_THE_WIRE, vec![])
    }
}

/// A text parameter (`NULL` for none).
pub(super) fn text(v: Option<&str>) -> Value {
    v.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

/// `?first, ?first+1, …`: `n` numbered placeholders.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|k| format!("?{k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Queue {
    /// Makes `changes` to one entry, in order, in ONE write transaction; the lease is checked
    /// in the same transaction, so a holder that lost the run changes nothing, and the first
    /// change that finds the entry elsewhere rolls all of them back.
    pub fn change_entry<S: EntryState>(
        &self,
        key: &EntryKey,
        changes: &[EntryChange<S>],
    ) -> Result<()> {
        self.write_tx(|tx| {
            self.check_fence(tx)?;
            for change in changes {
                self.change_on(tx, key, change)?;
            }
            Ok(())
        })
    }

    fn change_on<S: EntryState>(
        &self,
        tx: &rusqlite::Transaction<'_>,
        key: &EntryKey,
        change: &EntryChange<S>,
    ) -> Result<()> {
        let mut bound: Vec<Value> = key.key.to_vec();
        bound.extend(change.values.iter().cloned());
        let mut set = change.set.clone();
        let mut guard = String::new();
        if let Some((from, to)) = &change.moves {
            let at = bound.len() + 1;
            if !set.is_empty() {
                set.push_str(", ");
            }
            set.push_str(&format!("state = ?{at}"));
            guard = format!(" AND state IN ({})", placeholders(at + 1, from.len()));
            bound.push(state(*to));
            bound.extend(from.iter().map(|s| state(*s)));
        }
        let sql = format!("UPDATE {} SET {set} WHERE {}{guard}", S::TABLE, S::KEY);
        let changed = tx
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute(params_from_iter(bound)))
            .map_err(|e| self.err(e))?;
        if changed != 1 {
            return Err(self.moved(tx, key, change));
        }
        if let Some((set, values)) = &change.item {
            let mut bound = vec![Value::Integer(key.item_id)];
            bound.extend(values.iter().cloned());
            tx.prepare_cached(&format!("UPDATE items SET {set} WHERE id = ?1"))
                .and_then(|mut s| s.execute(params_from_iter(bound)))
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// The error of a change that found its entry elsewhere (or nowhere).
    fn moved<S: EntryState>(
        &self,
        tx: &rusqlite::Transaction<'_>,
        key: &EntryKey,
        change: &EntryChange<S>,
    ) -> QueueError {
        let actual = tx
            .query_row(
                &format!("SELECT state FROM {} WHERE {}", S::TABLE, S::KEY),
                params_from_iter(key.key.iter()),
                |r| r.get::<_, String>(0),
            )
            .optional();
        let expected = change
            .moves
            .as_ref()
            .map_or(S::IN_FLIGHT, |(from, _)| from[0]);
        match actual {
            Ok(actual) => QueueError::Moved {
                item_id: key.item_id,
                expected: expected.name(),
                actual: actual.unwrap_or_else(|| S::MISSING.into()),
            },
            Err(e) => self.err(e),
        }
    }

    /// How many entries there are in each state, among those `cond` names (`params` bound).
    pub(super) fn entry_counts<S: EntryState>(
        &self,
        cond: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<EntryCounts> {
        let rows: Vec<(String, i64)> = self.select_rows(
            &format!(
                "SELECT state, count(*) FROM {} WHERE {cond} GROUP BY state",
                S::TABLE
            ),
            params,
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut counts = EntryCounts::default();
        for (name, n) in rows {
            let field = match parse_state::<S>(&name)? {
                s if s == S::PENDING => &mut counts.pending,
                s if s == S::IN_FLIGHT => &mut counts.in_flight,
                s if s == S::DONE => &mut counts.done,
                s if s == S::FAILED => &mut counts.failed,
                _ => &mut counts.skipped,
            };
            *field = n as u64;
        }
        Ok(counts)
    }

    /// Ends a pass once none of its users is pending or in flight; returns whether it ended.
    pub fn finish_pass<S: PassTable>(&self, pass_id: i64) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                &format!(
                    "UPDATE {} SET finished_at = ?2
                     WHERE id = ?1 AND finished_at IS NULL AND NOT EXISTS (
                       SELECT 1 FROM {} WHERE pass_id = ?1 AND state IN (?3, ?4))",
                    S::PASSES,
                    S::TABLE
                ),
                rusqlite::params![
                    pass_id,
                    super::now(),
                    state(S::PENDING),
                    state(S::IN_FLIGHT)
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Every user of a pass, with where each is within it, in item order.
    pub fn pass_users<S: PassTable>(&self, pass_id: i64) -> Result<Vec<(PassUser, S)>> {
        let rows: Vec<(PassUser, String)> = self.select_rows(
            &format!(
                "SELECT {PASS_USER_COLUMNS}, e.state
                 FROM {} e JOIN items i ON i.id = e.item_id WHERE e.pass_id = ?1
                 ORDER BY e.item_id",
                S::TABLE
            ),
            [pass_id],
            |r| Ok((PassUser::from_row(r)?, r.get(4)?)),
        )?;
        rows.into_iter()
            .map(|(user, name)| Ok((user, parse_state(&name)?)))
            .collect()
    }

    /// Who a new pass would take: the items `candidates` names (a condition on `items i`,
    /// `params` bound), in item order.
    pub(super) fn candidate_users(
        &self,
        candidates: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<PassUser>> {
        self.select_rows(
            &format!("SELECT {PASS_USER_COLUMNS} FROM items i WHERE {candidates} ORDER BY i.id"),
            params,
            PassUser::from_row,
        )
    }

    /// Records a new pass of `S` in `tx`, its row in [`PassTable::PASSES`] (`columns` set to
    /// `values`) and its users in the same transaction: those [`Queue::candidate_users`] lists
    /// for `candidates` (`params` bound, the pass id after them). The pass id, or `None` when
    /// there is nobody to take (`tx` must then not be committed).
    pub(super) fn insert_pass<S: PassTable>(
        &self,
        tx: &rusqlite::Transaction<'_>,
        columns: &str,
        values: &[&dyn rusqlite::ToSql],
        candidates: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Option<i64>> {
        tx.execute(
            &format!(
                "INSERT INTO {} ({columns}) VALUES ({})",
                S::PASSES,
                placeholders(1, values.len())
            ),
            values,
        )
        .map_err(|e| self.err(e))?;
        let pass_id = tx.last_insert_rowid();
        let mut bound = params.to_vec();
        bound.push(&pass_id);
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO {} (pass_id, item_id)
                     SELECT ?{}, i.id FROM items i WHERE {candidates} ORDER BY i.id",
                    S::TABLE,
                    bound.len()
                ),
                bound.as_slice(),
            )
            .map_err(|e| self.err(e))?;
        Ok((n > 0).then_some(pass_id))
    }

    /// Every row `sql` selects (`params` bound), read by `row`.
    pub(super) fn select_rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, row)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

/// A state read back from its table.
fn parse_state<S: EntryState>(name: &str) -> Result<S> {
    name.parse().map_err(|message| QueueError::Corrupt {
        column: "state",
        message,
    })
}

fn state<S: EntryState>(s: S) -> Value {
    Value::Text(s.name().to_string())
}

/// How many entries of a pass (or a back-out) are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryCounts {
    pub pending: u64,
    pub in_flight: u64,
    /// Re-invited (`resend`), put back (`restore`), converted back (`rollback`).
    pub done: u64,
    pub failed: u64,
    /// Left alone: nothing to send after all (redeemed meanwhile, changed since, gone).
    pub skipped: u64,
}

impl EntryCounts {
    /// Users the pass has not finished with.
    pub fn open(&self) -> u64 {
        self.pending + self.in_flight
    }

    /// Every user of the pass.
    pub fn total(&self) -> u64 {
        self.open() + self.done + self.failed + self.skipped
    }
}

/// A user a pass would take, or took: who `--dry-run` lists and `--only` names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PassUser {
    pub item_id: i64,
    pub user_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub external_email: Option<String>,
}

/// The columns [`PassUser::from_row`] reads, of the items table as `i`.
pub(super) const PASS_USER_COLUMNS: &str =
    "i.id, i.user_id, i.user_principal_name, i.external_email";

impl PassUser {
    /// [`PASS_USER_COLUMNS`], first in the row.
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PassUser> {
        Ok(PassUser {
            item_id: r.get(0)?,
            user_id: r.get(1)?,
            user_principal_name: r.get(2)?,
            external_email: r.get(3)?,
        })
    }
}
