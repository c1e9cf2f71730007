//! The producer's walk over a run's pending items.
//!
//! A single walk in id order (`pending_items(run, after, chunk)`) misses every item that turns
//! `pending` behind its cursor: an item that was `in_flight` or otherwise busy when the walk
//! passed its id and was put back to wait afterwards would stay `pending` while the run reports
//! itself finished — a user nobody converted, silently. So a pass walks in rounds: when a round
//! reaches the end having found anything new, another round starts from the first id, and the
//! pass ends only when a whole round finds nothing it has not handed out already.
//!
//! Every item is handed out at most once per pass: an item this pass already gave to a worker
//! and that is `pending` again was put back by that worker (Ctrl-C, a stopping run) and waits for
//! the next pass, never for a second request from this one. That also bounds the rounds: each
//! one but the last hands out at least one item never seen before.

use std::collections::HashSet;

use crate::item::ItemRecord;
use crate::queue::{Queue, Result};

/// Where a pass is in its run's pending items.
#[derive(Debug, Default)]
pub struct Scan {
    /// The last id read in this round.
    after: i64,
    /// Every item handed out in this pass.
    seen: HashSet<i64>,
    /// This round handed out at least one item.
    found_this_round: bool,
    /// Rounds started after the first (logs).
    rounds: u32,
}

/// What the walk has next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Pending items never handed out in this pass, in id order.
    Items(Vec<ItemRecord>),
    /// A round ended having found something: wait for the items handed out to settle, then
    /// call [`Scan::next`] again to start the next round from the first id.
    RoundEnded,
    /// A whole round found nothing new: the pass has every pending item it may work.
    Done,
}

impl Scan {
    /// Reads the next chunk of pending items (at most `chunk` rows read).
    pub fn next(&mut self, queue: &Queue, run_id: i64, chunk: usize) -> Result<Next> {
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
                .filter(|i| self.seen.insert(i.id))
                .collect();
            if !fresh.is_empty() {
                self.found_this_round = true;
                if self.rounds > 0 {
                    tracing::info!(
                        items = fresh.len(),
                        round = self.rounds + 1,
                        "items turned pending behind the producer's cursor; taking them now"
                    );
                }
                return Ok(Next::Items(fresh));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{ItemState, NewItem, Overrides, RunMode, RunOptions, SourceSpec, UserKey};

    fn queue_with(n: u64) -> (tempfile::TempDir, Queue, i64, Vec<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.db")).unwrap();
        let run = q
            .create_run(
                &SourceSpec::Csv {
                    path: "users.csv".into(),
                },
                RunMode::Live,
                &RunOptions::default(),
                Some("t"),
                "http://127.0.0.1:1",
            )
            .unwrap();
        let rows: Vec<NewItem> = (0..n)
            .map(|k| NewItem {
                line: Some(k + 2),
                key: Some(UserKey::Id(format!("u{k}"))),
                external_email: None,
                overrides: Overrides::default(),
                bad_input: None,
                snapshot: None,
            })
            .collect();
        q.insert_items(run, &rows, None).unwrap();
        let ids = q
            .pending_items(run, 0, 100)
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        (dir, q, run, ids)
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
        assert_eq!(ids(scan.next(&q, run, 2).unwrap()), [all[0], all[2]]);
        assert_eq!(ids(scan.next(&q, run, 2).unwrap()), [all[3], all[4]]);
        // Behind the cursor, it goes back to wait.
        q.back_to_pending(all[1]).unwrap();
        assert_eq!(scan.next(&q, run, 2).unwrap(), Next::RoundEnded);
        assert_eq!(ids(scan.next(&q, run, 2).unwrap()), [all[1]]);
        assert_eq!(scan.next(&q, run, 2).unwrap(), Next::RoundEnded);
        assert_eq!(scan.next(&q, run, 2).unwrap(), Next::Done);
    }

    /// An item this pass handed out and that is pending again (its worker put it back while the
    /// run stops) is never handed out twice: no second request for it from this pass.
    #[test]
    fn an_item_is_handed_out_once_per_pass() {
        let (_d, q, run, all) = queue_with(3);
        let mut scan = Scan::default();
        assert_eq!(ids(scan.next(&q, run, 10).unwrap()), all);
        // Every item stays pending (as if each worker put its item back).
        assert_eq!(scan.next(&q, run, 10).unwrap(), Next::RoundEnded);
        assert_eq!(scan.next(&q, run, 10).unwrap(), Next::Done);
        assert_eq!(q.counts(run).unwrap().state(ItemState::Pending), 3);
    }

    #[test]
    fn an_empty_queue_is_done_at_once() {
        let (_d, q, run, _) = queue_with(0);
        assert_eq!(Scan::default().next(&q, run, 10).unwrap(), Next::Done);
    }
}
