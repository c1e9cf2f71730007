//! The producer's walk over a run's pending items.
//!
//! A single walk in id order (`pending_items(run, after, chunk)`) misses every item that turns
//! `pending` behind its cursor: an item that was `in_flight` or otherwise busy when the walk
//! passed its id and was put back to wait afterwards would stay `pending` while the run reports
//! itself finished — a user nobody converted, silently. So a pass walks in rounds: when a round
//! reaches the end having found anything new, another round starts from the first id, and the
//! pass ends only when a whole round finds nothing it has not handed out already.
//!
//! A new round starts only once the workers have settled every item handed out, so no worker
//! holds an item while the walk reads it: an item `pending` then is waiting, and handing it out
//! is what the next `resume` would do. An item is handed out at most [`HAND_OUTS`] times per
//! pass — a second time when its worker, or the producer, left it `pending` without the pass
//! stopping (a stopping pass ends the walk anyway) — which also bounds the rounds: each one but
//! the last hands out at least one item.

use std::collections::HashMap;

use crate::item::ItemRecord;
use crate::queue::{Queue, Result};

/// How many times one pass may hand out the same item.
pub const HAND_OUTS: u8 = 2;

/// Where a pass is in its run's pending items.
#[derive(Debug, Default)]
pub struct Scan {
    /// The last id read in this round.
    after: i64,
    /// How many times each item was handed out in this pass.
    handed: HashMap<i64, u8>,
    /// This round handed out at least one item.
    found_this_round: bool,
    /// Rounds started after the first (logs).
    rounds: u32,
}

/// What the walk has next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Pending items this pass may work and has not handed out [`HAND_OUTS`] times, in id order.
    Items(Vec<ItemRecord>),
    /// A round ended having found something: wait for the items handed out to settle, then
    /// call [`Scan::next`] again to start the next round from the first id.
    RoundEnded,
    /// A whole round found nothing new: the pass has every pending item it may work.
    Done,
}

impl Scan {
    /// Reads the next chunk of pending items (at most `chunk` rows read); `keep` says which
    /// items this pass may work (`--only`): the others are passed over and never count as found.
    pub fn next(
        &mut self,
        queue: &Queue,
        run_id: i64,
        chunk: usize,
        keep: impl Fn(&ItemRecord) -> bool,
    ) -> Result<Next> {
        loop {
            let items = queue.pending_items(run_id, self.after, chunk)?;
            let Some(last) = items.last() else {
                if !self.found_this_round {
                    return Ok(Next::Done);
                }
                self.after = 0;
                self.found_this_round = false;
                self.rounds += 1;
                return Ok(Next::RoundEnded);
            };
            self.after = last.id;
            let fresh: Vec<ItemRecord> = items
                .into_iter()
                .filter(|i| keep(i))
                .filter(|i| {
                    let n = self.handed.entry(i.id).or_insert(0);
                    *n += 1;
                    *n <= HAND_OUTS
                })
                .collect();
            if !fresh.is_empty() {
                self.found_this_round = true;
                if self.rounds > 0 {
                    tracing::info!(
                        items = fresh.len(),
                        first_item = fresh[0].id,
                        round = self.rounds + 1,
                        "pending items found again on a later walk (put back behind the cursor, or left pending); taking them now"
                    );
                }
                return Ok(Next::Items(fresh));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::item::{ItemState, RunMode};
    use crate::queue::testing::{csv_run, insert_users, temp_queue};

    fn queue_with(n: u64) -> (tempfile::TempDir, Arc<Queue>, i64, Vec<i64>) {
        let (dir, q) = temp_queue();
        let run = csv_run(&q, RunMode::Live, Some("t"));
        let ids = insert_users(&q, run, n as usize);
        (dir, q, run, ids)
    }

    /// What a worker does with an item it converts.
    fn converted(q: &Queue, id: i64) {
        q.mark_in_flight(id, "a@f.com").unwrap();
        q.record_converted(id, None, None, None).unwrap();
    }

    fn ids(next: Next) -> Vec<i64> {
        match next {
            Next::Items(items) => items.iter().map(|i| i.id).collect(),
            other => panic!("expected items, got {other:?}"),
        }
    }

    /// The failure seen under load: an item busy (`in_flight`) while the walk passes its id and
    /// put back to `pending` afterwards was never read again, and the pass ended with it pending.
    #[test]
    fn an_item_put_back_behind_the_cursor_is_taken_in_the_next_round() {
        let (_d, q, run, all) = queue_with(5);
        // Item 2 is busy when the walk passes it (a previous step of this process holds it).
        q.mark_in_flight(all[1], "a@f.com").unwrap();
        let mut scan = Scan::default();
        assert_eq!(
            ids(scan.next(&q, run, 2, |_| true).unwrap()),
            [all[0], all[2]]
        );
        assert_eq!(
            ids(scan.next(&q, run, 2, |_| true).unwrap()),
            [all[3], all[4]]
        );
        // The workers convert what they were given; behind the cursor, item 2 goes back to wait.
        for id in [all[0], all[2], all[3], all[4]] {
            converted(&q, id);
        }
        q.back_to_pending(all[1]).unwrap();
        assert_eq!(scan.next(&q, run, 2, |_| true).unwrap(), Next::RoundEnded);
        assert_eq!(ids(scan.next(&q, run, 2, |_| true).unwrap()), [all[1]]);
        converted(&q, all[1]);
        assert_eq!(scan.next(&q, run, 2, |_| true).unwrap(), Next::RoundEnded);
        assert_eq!(scan.next(&q, run, 2, |_| true).unwrap(), Next::Done);
    }

    /// An item handed out and left pending though the pass did not stop (read, then neither
    /// sent nor recorded) is taken once more in the next round, and then no more: the walk
    /// ends even if it stays pending.
    #[test]
    fn an_item_left_pending_is_handed_out_once_more_then_the_walk_ends() {
        let (_d, q, run, all) = queue_with(3);
        let mut scan = Scan::default();
        assert_eq!(ids(scan.next(&q, run, 10, |_| true).unwrap()), all);
        converted(&q, all[0]);
        // all[1] and all[2] stay pending, as if dropped.
        assert_eq!(scan.next(&q, run, 10, |_| true).unwrap(), Next::RoundEnded);
        assert_eq!(
            ids(scan.next(&q, run, 10, |_| true).unwrap()),
            [all[1], all[2]]
        );
        assert_eq!(scan.next(&q, run, 10, |_| true).unwrap(), Next::RoundEnded);
        assert_eq!(scan.next(&q, run, 10, |_| true).unwrap(), Next::Done);
        assert_eq!(q.counts(run).unwrap().state(ItemState::Pending), 2);
    }

    /// `--only`: the other pending items are passed over and never start another round.
    #[test]
    fn items_outside_the_pass_are_passed_over() {
        let (_d, q, run, all) = queue_with(4);
        let only = [all[1], all[3]];
        let mut scan = Scan::default();
        let keep = |i: &ItemRecord| only.contains(&i.id);
        assert_eq!(ids(scan.next(&q, run, 2, keep).unwrap()), [all[1]]);
        assert_eq!(ids(scan.next(&q, run, 2, keep).unwrap()), [all[3]]);
        converted(&q, all[1]);
        converted(&q, all[3]);
        assert_eq!(scan.next(&q, run, 2, keep).unwrap(), Next::RoundEnded);
        assert_eq!(scan.next(&q, run, 2, keep).unwrap(), Next::Done);
    }

    #[test]
    fn an_empty_queue_is_done_at_once() {
        let (_d, q, run, _) = queue_with(0);
        assert_eq!(
            Scan::default().next(&q, run, 10, |_| true).unwrap(),
            Next::Done
        );
    }
}
