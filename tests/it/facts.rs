//! The tenant address index (issue 15 item 2): built once per tenant with Graph's delta query,
//! then refreshed with only what changed, and rebuilt when Graph refuses the stored link.

use crate::common;

use b2b_convert::item::{ItemState, Reason};
use common::*;

const DELTA: &str = "GET /v1.0/users/delta";
const LIST: &str = "GET /v1.0/users";
/// The sample row whose address another user holds (tests/fixtures/sample-expected.csv).
const CONFLICT_LINE: u64 = 42;

fn delta_status(emu: &b2b_convert::emulator::Emulator, status: &str) -> u64 {
    emu.stats()["requests"][DELTA][status].as_u64().unwrap_or(0)
}

/// The state, reason and detail of the sample's conflicting row in `run_id`.
fn conflict_row(db: &std::path::Path, run_id: i64) -> (ItemState, Option<Reason>, String) {
    let item = items(db, run_id)
        .into_iter()
        .find(|i| i.line == Some(CONFLICT_LINE))
        .expect("the sample has the conflicting row");
    (item.state, item.reason, item.detail.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pass_reads_only_the_changes_and_sees_them() {
    let emu = start_sample().await;
    let (_dir, db) = temp_db();
    let first = sample_dry_run(&emu, &db).await;
    // The first pass: a delta link for "from now", then one listing of every user.
    let full_round = delta_status(&emu, "200");
    assert_eq!(full_round, 1);
    let listed = requests_to(&emu.stats(), LIST);
    assert!(listed >= 1);
    let (state, reason, detail) = conflict_row(&db, first.run_id());
    assert_eq!(
        (state, reason),
        (ItemState::Blocked, Some(Reason::MailConflict))
    );
    let holder = detail
        .rsplit("by user ")
        .next()
        .expect("the detail names the other holder")
        .trim()
        .to_string();

    // The other holder leaves the tenant: the next pass learns it from one delta page.
    assert!(emu.delete_user(&holder), "{holder} exists");
    let second = sample_dry_run(&emu, &db).await;
    assert_eq!(
        delta_status(&emu, "200") - full_round,
        1,
        "the second pass resumes from the stored delta link: one page of changes"
    );
    // The same look-ups as the first pass (a dry run reads users by id with plain GETs), but
    // not the listing (one page: the sample tenant has fewer than 999 users).
    assert_eq!(
        requests_to(&emu.stats(), LIST) - listed,
        listed - 1,
        "and lists nobody"
    );
    let (state, reason, detail) = conflict_row(&db, second.run_id());
    assert_eq!(state, ItemState::WouldConvert, "{reason:?} {detail}");

    // Every other verdict is unchanged by the incremental index.
    let before = items(&db, first.run_id());
    let after = items(&db, second.run_id());
    for (a, b) in before.iter().zip(&after) {
        if a.line != Some(CONFLICT_LINE) {
            assert_eq!((a.line, a.state, a.reason), (b.line, b.state, b.reason));
        }
    }
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delta_link_falls_back_to_a_full_round() {
    let emu = start_sample().await;
    let (_dir, db) = temp_db();
    sample_dry_run(&emu, &db).await;
    let listed = requests_to(&emu.stats(), LIST);

    // The stored link expires (Graph keeps delta state for a limited time).
    let conn = rusqlite::Connection::open(&db).unwrap();
    let expired = format!("{}/v1.0/users/delta?$deltatoken=expired", emu.base_url());
    let changed = conn
        .execute("UPDATE tenant_sync SET delta_link = ?1", [&expired])
        .unwrap();
    assert_eq!(changed, 1, "one tenant indexed");
    drop(conn);

    let second = sample_dry_run(&emu, &db).await;
    assert_eq!(
        delta_status(&emu, "410"),
        1,
        "the expired link was tried once"
    );
    assert_eq!(
        requests_to(&emu.stats(), LIST),
        2 * listed,
        "then a full round listed every user again"
    );
    let (state, reason, _) = conflict_row(&db, second.run_id());
    assert_eq!(
        (state, reason),
        (ItemState::Blocked, Some(Reason::MailConflict))
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let link: String = conn
        .query_row("SELECT delta_link FROM tenant_sync", [], |r| r.get(0))
        .unwrap();
    assert_ne!(
        link, expired,
        "the new round's link replaced the refused one"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_full_round_goes_on_at_its_next_page() {
    use b2b_convert::graph::{Credentials, GraphClient, GraphConfig, Limiter};
    use b2b_convert::queue::Queue;
    use b2b_convert::workers::facts;
    use std::sync::Arc;

    // 2,100 users: three listing pages of 999.
    let emu = start(b2b_convert::emulator::EmulatorConfig::new(
        b2b_convert::emulator::Tenant::generate(2_100, 7),
    ))
    .await;
    let env: std::collections::HashMap<String, String> = emu.client_env().into_iter().collect();
    let base = emu.base_url();
    let graph = GraphClient::new(
        GraphConfig::new(
            &base,
            &base,
            Credentials::from_lookup(|k| env.get(k).cloned()).unwrap(),
        ),
        Limiter::new(1_000.0),
    )
    .unwrap();
    let (_dir, db) = temp_db();
    let queue = Arc::new(Queue::open(&db).unwrap());

    let (f, first) = facts::refresh(&graph, &queue).await.unwrap();
    assert_eq!((first.pages, first.changes, first.full), (3, 2_100, true));
    let complete = queue.indexed_addresses(&f.tenant).unwrap();
    let state = queue.facts_sync_state(&f.tenant).unwrap().unwrap();
    let delta = state.delta_link.clone().unwrap();

    // As if the process died after the first page of a full round: the index holds that page
    // and the stored link points at the second.
    let page2 = graph
        .users_addresses_page(None)
        .await
        .unwrap()
        .next_link
        .unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE tenant_sync SET full_round = 1, delta_link = NULL, listing_delta = ?1, \
         round_link = ?2",
        [&delta, &page2],
    )
    .unwrap();
    drop(conn);
    let listed = requests_to(&emu.stats(), LIST);
    let deltas = requests_to(&emu.stats(), DELTA);

    let (_, resumed) = facts::refresh(&graph, &queue).await.unwrap();
    assert_eq!(
        (resumed.pages, resumed.changes),
        (2, 2_100 - 999),
        "pages 2 and 3 only"
    );
    assert_eq!(requests_to(&emu.stats(), LIST) - listed, 2);
    assert_eq!(
        requests_to(&emu.stats(), DELTA),
        deltas,
        "no new delta link taken"
    );
    let state = queue.facts_sync_state(&f.tenant).unwrap().unwrap();
    assert_eq!(
        state.delta_link.as_deref(),
        Some(delta.as_str()),
        "the round's link adopted"
    );
    assert!(!state.full_round && state.round_link.is_none() && state.listing_delta.is_none());
    assert_eq!(queue.indexed_addresses(&f.tenant).unwrap(), complete);
    emu.shutdown().await;
}
