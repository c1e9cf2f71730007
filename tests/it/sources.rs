//! Graph-query sources, request economy and sign-in, against the emulator over loopback.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use b2b_convert::emulator::{Emulator, EmulatorConfig, Tenant};
use b2b_convert::item::ItemState;
use b2b_convert::queue::Queue;
use common::*;

/// Asks the emulator itself which users match `filter`: the expectation for a `--filter` run.
async fn emulator_evaluation(emu: &Emulator, filter: &str) -> BTreeSet<String> {
    let http = reqwest::Client::new();
    let bearer = raw::token(emu).await;
    let mut url = reqwest::Url::parse_with_params(
        &format!("{}/v1.0/users", emu.base_url()),
        &[("$filter", filter), ("$select", "id"), ("$top", "500")],
    )
    .unwrap()
    .to_string();
    let mut ids = BTreeSet::new();
    for _ in 0..1_000 {
        let page = raw::json_of(http.get(&url).bearer_auth(&bearer)).await;
        for u in page["value"].as_array().unwrap() {
            assert!(ids.insert(u["id"].as_str().unwrap().to_string()));
        }
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => return ids,
        }
    }
    panic!("paging did not end");
}

fn queued_ids(db: &Path, run_id: i64) -> Vec<String> {
    items(db, run_id)
        .into_iter()
        .map(|i| i.user_id.unwrap())
        .collect()
}

fn once_each(ids: &[String]) -> BTreeSet<String> {
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "a user was queued twice");
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_run_queues_exactly_the_matching_users_even_across_a_crash_mid_listing() {
    let mut config = EmulatorConfig::new(Tenant::generate(5_000, 21));
    // Slow answers keep the six-page listing open long enough to kill it in the middle.
    config.latency = Duration::from_millis(150);
    config.ru_per_10s = Some(0);
    let emu = start(config).await;
    let filter = "accountEnabled eq true and userType in ('Guest', 'Member')";
    let expected = emulator_evaluation(&emu, filter).await;
    assert!(expected.len() > 999, "the listing spans several pages");

    let (_dir, db) = temp_db();
    let mut child = command(
        &emu,
        &db,
        &["run", "--filter", filter, "--dry-run", "--rate", "500"],
    )
    .spawn()
    .unwrap();
    // Kill once some pages are stored but the listing is not complete.
    let killed_mid_listing = kill_mid_ingest(&mut child, &db).await;
    assert!(killed_mid_listing, "the listing was interrupted part-way");
    let run_id = Queue::open(&db).unwrap().latest_run().unwrap().unwrap().id;
    let partial = queued_ids(&db, run_id).len();
    assert!(
        partial > 0 && partial < expected.len(),
        "stopped mid-listing: {partial}"
    );

    run(&emu, &db, &["resume", "--rate", "500"])
        .await
        .assert_finished();
    let got = once_each(&queued_ids(&db, run_id));
    assert_eq!(got, expected, "exactly the users the tenant says match");
    let its = items(&db, run_id);
    assert_eq!(count(&its, ItemState::Pending), 0);
    assert!(count(&its, ItemState::WouldConvert) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_filter_is_a_usage_error_before_anything_is_queued() {
    let emu = start_sample().await;
    let (_dir, db) = temp_db();
    let out = run(
        &emu,
        &db,
        &["run", "--filter", "favouriteColour eq 'blue'", "--dry-run"],
    )
    .await;
    out.assert_exit(2);
    out.assert_stderr_has("Graph refused the query");
    assert!(!out.stdout.contains("run-id"), "no run was created");
    // Advanced queries get ConsistencyLevel + $count and work.
    let args = [
        "run",
        "--filter",
        "endsWith(mail,'@fabrikam.com')",
        "--dry-run",
    ];
    let out = run(&emu, &db, &args).await;
    out.assert_finished();
    assert!(!items(&db, out.run_id()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_transitive_reaches_nested_members_once_each() {
    let tenant = Tenant::sample();
    let groups: BTreeMap<String, Vec<String>> = tenant
        .groups
        .iter()
        .map(|g| (g.id.clone(), g.members.clone()))
        .collect();
    let users: BTreeSet<String> = tenant.users.iter().map(|u| u.id.clone()).collect();
    // The group with a nested group inside.
    let (top, _) = groups
        .iter()
        .find(|(_, m)| m.iter().any(|id| groups.contains_key(id)))
        .expect("the sample tenant nests a group");
    let mut expected = BTreeSet::new();
    let mut direct = BTreeSet::new();
    let mut todo = vec![(top.clone(), true)];
    let mut seen = BTreeSet::new();
    while let Some((g, is_top)) = todo.pop() {
        if !seen.insert(g.clone()) {
            continue;
        }
        for m in &groups[&g] {
            if groups.contains_key(m) {
                todo.push((m.clone(), false));
            } else if users.contains(m) {
                expected.insert(m.clone());
                if is_top {
                    direct.insert(m.clone());
                }
            }
        }
    }
    assert!(expected.len() > direct.len(), "nesting adds members");

    let emu = start(EmulatorConfig::new(tenant)).await;
    let (_dir, db) = temp_db();
    let out = run(
        &emu,
        &db,
        &["run", "--group", top, "--transitive", "--dry-run"],
    )
    .await;
    out.assert_finished();
    assert_eq!(once_each(&queued_ids(&db, out.run_id())), expected);
    let out = run(&emu, &db, &["run", "--group", top, "--dry-run"]).await;
    assert_eq!(once_each(&queued_ids(&db, out.run_id())), direct);
}

/// Graph requests per converted user, counted the way Graph counts them: every `$batch`
/// sub-request is a request (the outer `$batch` POST is not counted again), token requests are
/// not Graph requests.
fn requests_per_converted(emu: &Emulator, converted: usize) -> f64 {
    let stats = emu.stats();
    let total: u64 = stats["requests"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains(" /v1.0/") && k.as_str() != "POST /v1.0/$batch")
        .map(|(k, _)| requests_to(&stats, k))
        .sum();
    total as f64 / converted as f64
}

/// Graph's buckets ×20 (as `bench --scale` does) so no run waits on Graph's real refill, and
/// every 1,000th invitation request answered 429 by count: each run converts over 1,000 users, so
/// the economy is still measured under throttling (asserted) whatever the machine's speed. One
/// 429 halves the client's pace for a while, hence one per run and a high --rate.
fn economy_emulator(tenant: Tenant) -> EmulatorConfig {
    let mut config = EmulatorConfig::new(tenant);
    config.bucket_scale = 20.0;
    config.throttle_every_nth_invitation = 1_000;
    config
}

/// A live run of the users `source` names (`--filter …` or `--csv …`), paced high and never
/// settling: the economy is measured under throttling, as asserted. Returns how many it
/// converted.
async fn economy_run(emu: &Emulator, db: &Path, source: [&str; 2]) -> usize {
    let mut args = vec!["run"];
    args.extend(source);
    args.extend([
        "--yes",
        "--rate",
        "2000",
        "--settle-rate",
        "2000",
        "--concurrency",
        "16",
    ]);
    let out = run(emu, db, &args).await;
    out.assert_exit(3);
    count(&items(db, out.run_id()), ItemState::Converted)
}

/// Asserts the run over `source` spent at most `target` Graph requests per converted user, and
/// was throttled on the way.
fn assert_economy(emu: &Emulator, converted: usize, target: f64, source: &str) {
    let per_user = requests_per_converted(emu, converted);
    assert!(
        per_user <= target,
        "{source}: {per_user:.3} requests per converted user"
    );
    assert!(
        emu.stats()["throttled"].as_u64().unwrap() > 0,
        "{source}: throttled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_economy_meets_the_targets_for_query_and_csv_sources() {
    let dir = tempfile::tempdir().unwrap();
    // --filter: the listing already carries every property validation needs.
    let emu = start(economy_emulator(Tenant::generate(1_500, 4))).await;
    let filter = ["--filter", "accountEnabled eq true"];
    let converted = economy_run(&emu, &dir.path().join("filter.db"), filter).await;
    assert!(converted > 1_000);
    assert_economy(&emu, converted, 1.02, "--filter");
    emu.shutdown().await;

    // --csv: users looked up 15 at a time, in $batch requests.
    let (tenant, csv) = generated(1_500, 4, dir.path());
    let emu = start(economy_emulator(tenant)).await;
    let db = dir.path().join("csv.db");
    let converted = economy_run(&emu, &db, ["--csv", csv.to_str().unwrap()]).await;
    assert_economy(&emu, converted, 1.15, "--csv");
    let v = status_json(&emu, &db, None).await;
    assert!(v["graphRequestsPerUser"].as_f64().unwrap() <= 1.15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_sign_in_works_and_a_wrong_key_is_refused() {
    let emu = start_sample().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = sample_csv();
    for (cert, ok) in [
        ("tests/fixtures/app-cert-with-key.pem", true),
        ("tests/fixtures/wrong-cert-with-key.pem", false),
    ] {
        let db = dir.path().join(format!("{ok}.db"));
        let mut cmd = command(&emu, &db, &run_args(&csv, "--dry-run"));
        cmd.env_remove("AZURE_CLIENT_SECRET")
            .env("AZURE_CLIENT_CERTIFICATE_PATH", repo_path(cert));
        let out = run_command(cmd).await;
        if ok {
            out.assert_exit(3);
        } else {
            out.assert_exit(1);
            let stderr = &out.stderr;
            assert!(stderr.contains("AADSTS"), "a clear sign-in error: {stderr}");
            assert!(!db.exists() || Queue::open(&db).unwrap().latest_run().unwrap().is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expiring_mid_run_cause_no_failed_item() {
    // Graph's buckets ×10: the client's --rate 60 alone keeps the run longer than a token's
    // two seconds, without waiting on Graph's real invitation refill.
    let Generated { dir, csv, emu, .. } =
        Generated::scaled(300, 13, 10.0, |c| c.token_lifetime = Duration::from_secs(2)).await;
    let db = dir.path().join("q.db");
    let out = run_csv(&emu, &db, &csv, "--yes --rate 60").await;
    out.assert_exit(3);
    let its = items(&db, out.run_id());
    assert_eq!(count(&its, ItemState::Failed), 0);
    assert_eq!(count(&its, ItemState::Pending), 0);
    let tokens = requests_to(&emu.stats(), "POST /{tenant}/oauth2/v2.0/token");
    assert!(
        tokens >= 2,
        "the token was renewed during the run ({tokens} token requests)"
    );
    assert_eq!(
        invitations_per_user(&emu).len(),
        count(&its, ItemState::Converted)
    );
}

/// The hostile-days repro, end to end: a notes cell with another user's row pasted into it, on
/// a row with one field too many, must convert nobody, least of all the pasted user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pasted_row_inside_a_quoted_cell_converts_nobody() {
    let emu = common::start_sample().await;
    let (dir, db) = temp_db();
    let csv = dir.path().join("p.csv");
    let named = "3535df92-088c-5e62-a2d6-4e3cfa0512e6";
    let pasted = "50d40596-fd29-50f4-930b-15ecf3b4c22b";
    std::fs::write(
        &csv,
        format!("id,notes\n{named},\"vendor note\n{pasted},pasted\nend of note\",extra\n"),
    )
    .unwrap();
    let out = run_csv(&emu, &db, &csv, "--yes").await;
    assert_eq!(out.code, 3, "a bad row: {}", out.stderr);
    let items = common::items(&db, out.run_id());
    assert_eq!(
        items.len(),
        1,
        "one record, as RFC 4180 reads it: {items:?}"
    );
    assert_eq!(items[0].state, ItemState::Blocked);
    assert!(
        items[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("expected 2 fields, found 3") && d.contains("lines 2–4")),
        "{:?}",
        items[0]
    );
    assert!(emu.invitations().is_empty(), "{:?}", emu.invitations());
}
