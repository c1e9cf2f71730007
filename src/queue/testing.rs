//! Set-up the queue's unit tests share: a fresh database in a temporary directory, and a run.

use std::sync::Arc;

use super::Queue;
use crate::item::{RunMode, RunOptions, SourceSpec};

/// A fresh, migrated queue in a temporary directory (kept alive by the returned guard).
pub fn temp_queue() -> (tempfile::TempDir, Arc<Queue>) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&dir.path().join("q.db")).unwrap();
    (dir, Arc::new(q))
}

/// A run of `users.csv` in `mode`, bound to `tenant` when given; its id.
pub fn csv_run(q: &Queue, mode: RunMode, tenant: Option<&str>) -> i64 {
    q.create_run(
        &SourceSpec::Csv {
            path: "users.csv".into(),
        },
        mode,
        &RunOptions::default(),
        tenant,
        "http://127.0.0.1:1",
    )
    .unwrap()
}
