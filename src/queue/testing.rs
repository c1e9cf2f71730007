//! Set-up the queue's unit tests share: a fresh database in a temporary directory, and a run.

use std::sync::Arc;

use super::{NewRun, Queue};
use crate::item::{NewItem, Overrides, RunMode, RunOptions, SourceSpec, UserKey};

/// A fresh, migrated queue in a temporary directory (kept alive by the returned guard).
pub fn temp_queue() -> (tempfile::TempDir, Arc<Queue>) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&dir.path().join("q.db")).unwrap();
    (dir, Arc::new(q))
}

/// A fresh queue with one run of `users.csv` in `mode`, bound to no tenant: the guard, the
/// queue and the run's id.
pub fn queue_with_run(mode: RunMode) -> (tempfile::TempDir, Arc<Queue>, i64) {
    let (dir, q) = temp_queue();
    let run = csv_run(&q, mode, None);
    (dir, q, run)
}

/// A CSV row to insert: its `line`, the user's `key` and the explicit external `email`.
pub fn row(line: u64, key: Option<UserKey>, email: Option<&str>) -> NewItem {
    NewItem {
        line: Some(line),
        key,
        external_email: email.map(str::to_string),
        overrides: Overrides::default(),
        bad_input: None,
        snapshot: None,
    }
}

/// A run of `users.csv` in `mode` with `options`, bound to `tenant` when given; its id.
pub fn csv_run_with(q: &Queue, mode: RunMode, options: &RunOptions, tenant: Option<&str>) -> i64 {
    q.create_run(NewRun {
        source: &SourceSpec::Csv {
            path: "users.csv".into(),
        },
        mode,
        options,
        tenant_id: tenant,
        graph_url: "http://127.0.0.1:1",
    })
    .unwrap()
}

/// A run of `users.csv` in `mode`, bound to `tenant` when given; its id.
pub fn csv_run(q: &Queue, mode: RunMode, tenant: Option<&str>) -> i64 {
    csv_run_with(q, mode, &RunOptions::default(), tenant)
}

/// `n` rows of `users.csv` (lines 2, 3, …), keyed by the object ids `u0`, `u1`, … and without
/// a partner address, inserted into `run`; their item ids, in row order.
pub fn insert_users(q: &Queue, run: i64, n: usize) -> Vec<i64> {
    let rows: Vec<NewItem> = (0..n as u64)
        .map(|i| row(i + 2, Some(UserKey::Id(format!("u{i}"))), None))
        .collect();
    q.insert_items(run, &rows, None).unwrap();
    q.items(run).unwrap().iter().map(|i| i.id).collect()
}
