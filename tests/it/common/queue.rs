//! The queue as tests set it up and read it: runs made directly, and items by state.

use std::collections::BTreeSet;
use std::path::Path;

use b2b_convert::item::{
    ItemRecord, ItemState, NewItem, Overrides, RunMode, RunOptions, SourceSpec, UserKey,
};
use b2b_convert::queue::{NewRun, Queue};

/// Creates a run over `users.csv` directly in the queue, as if begun against `graph_url` signed
/// in to tenant `tenant_id`; returns its id.
pub fn create_csv_run(queue: &Queue, mode: RunMode, tenant_id: &str, graph_url: &str) -> i64 {
    let source = SourceSpec::Csv {
        path: "users.csv".into(),
    };
    queue
        .create_run(NewRun {
            source: &source,
            mode,
            options: &RunOptions::default(),
            tenant_id: Some(tenant_id),
            graph_url,
        })
        .unwrap()
}

/// A CSV row naming user `id` by object id, on `line`, with nothing else.
pub fn item_by_id(line: u64, id: &str) -> NewItem {
    NewItem {
        line: Some(line),
        key: Some(UserKey::Id(id.to_string())),
        external_email: None,
        overrides: Overrides::default(),
        bad_input: None,
        snapshot: None,
    }
}

pub fn items(db: &Path, run_id: i64) -> Vec<ItemRecord> {
    Queue::open(db).unwrap().items(run_id).unwrap()
}

/// The items of run `run_id` in `state`, in order.
pub fn items_in(db: &Path, run_id: i64, state: ItemState) -> Vec<ItemRecord> {
    let mut all = items(db, run_id);
    all.retain(|i| i.state == state);
    all
}

pub fn count(items: &[ItemRecord], state: ItemState) -> usize {
    items.iter().filter(|i| i.state == state).count()
}

/// The user ids of the items in `state`.
pub fn user_ids(items: &[ItemRecord], state: ItemState) -> BTreeSet<String> {
    items
        .iter()
        .filter(|i| i.state == state)
        .map(|i| i.user_id.clone().unwrap())
        .collect()
}
