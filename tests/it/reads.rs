//! Reads at the read budget: a dry run reads the users its CSV names by key with many requests
//! in flight at once, or the whole tenant in pages when that takes fewer requests, and the
//! verdicts are the same either way; a resend keeps several invitations in flight. Everything
//! is counted by the emulator (requests per endpoint, the most answered at once), never timed.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use b2b_convert::emulator::Emulator;
use b2b_convert::item::ItemState;
use common::*;

/// Every item's verdict by its CSV line: what a change board reads, whichever way it was read.
fn verdicts(db: &Path, run_id: i64) -> BTreeMap<u64, (ItemState, Option<String>, Option<String>)> {
    items(db, run_id)
        .into_iter()
        .map(|i| {
            (
                i.line.unwrap(),
                (i.state, i.reason.map(|r| format!("{r:?}")), i.detail),
            )
        })
        .collect()
}

async fn dry_run(emu: &Emulator, db: &Path, csv: &Path, flags: &str) -> (i64, String) {
    let out = run_csv(emu, db, csv, &format!("--dry-run {flags}")).await;
    out.assert_finished();
    let id = out.run_id();
    let left = items(db, id)
        .iter()
        .filter(|i| matches!(i.state, ItemState::Pending | ItemState::InFlight))
        .count();
    assert_eq!(left, 0, "the dry run settled every item: {}", out.stderr);
    (id, out.stderr)
}

/// `GET /v1.0/users` requests (listings, look-ups by `$filter`, the count) during `f`.
async fn user_reads<F: std::future::Future<Output = T>, T>(emu: &Emulator, f: F) -> (T, u64) {
    let before = requests_to(&emu.stats(), "GET /v1.0/users");
    let out = f.await;
    (out, requests_to(&emu.stats(), "GET /v1.0/users") - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reads_by_key_many_at_once_or_in_pages_and_decides_the_same() {
    let Generated { dir, csv, emu, .. } = Generated::start(3_000, 17, |c| {
        // Answers take a while, so reads one after another could never overlap.
        c.latency = Duration::from_millis(25);
    })
    .await;
    let few = dir.path().join("few.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(
        &few,
        text.lines().take(31).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let db = dir.path().join("dry.db");

    // The first pass builds the address index; its reads are not counted here.
    let (first, _) = dry_run(&emu, &db, &csv, "").await;

    // The CSV names the whole tenant: 4 pages of 999 cost fewer requests than 200 look-ups.
    let ((paged, log), reads) = user_reads(&emu, dry_run(&emu, &db, &csv, "")).await;
    assert!(
        log.contains("reading the tenant in pages of 999"),
        "the log says which: {log}"
    );
    assert_eq!(reads, 1 + 4, "one count, then 3,000 users in pages of 999");

    // By key: 3,000 ids, 15 a request, many in flight at once.
    emu.take_max_in_flight();
    let ((by_key, _), reads) = user_reads(&emu, dry_run(&emu, &db, &csv, "--read-by-key")).await;
    let most = emu.take_max_in_flight();
    assert_eq!(reads, 3_000 / 15, "one look-up per 15 users, no count");
    assert!(
        most > 1,
        "look-ups overlap: at most {most} answered at once"
    );

    // A CSV of 30 users: 2 look-ups cost fewer requests than 4 pages.
    let ((_, log), reads) = user_reads(&emu, dry_run(&emu, &db, &few, "")).await;
    assert!(
        log.contains("looking users up by key, 15 a request"),
        "the log says which: {log}"
    );
    assert_eq!(reads, 1 + 2, "one count, then 2 look-ups");

    let expected = verdicts(&db, first);
    assert_eq!(expected.len(), 3_000);
    assert!(
        expected.values().any(|v| v.0 == ItemState::WouldConvert)
            && expected.values().any(|v| v.0 != ItemState::WouldConvert),
        "a tenant with convertible and blocked users"
    );
    assert_eq!(verdicts(&db, paged), expected, "pages decide the same");
    assert_eq!(verdicts(&db, by_key), expected, "look-ups decide the same");
    assert_eq!(emu.stats()["throttled"], 0, "within Graph's read budget");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_keeps_several_invitations_in_flight_and_reinvites_each_user_once() {
    let Generated { dir, csv, emu, .. } =
        Generated::scaled(120, 23, 1_000.0, |c| c.latency = Duration::from_millis(40)).await;
    let db = dir.path().join("live.db");
    let out = run_csv(
        &emu,
        &db,
        &csv,
        "--yes --silent --rate 1000 --concurrency 8",
    )
    .await;
    out.assert_finished();
    let id = out.run_id().to_string();
    run(&emu, &db, &["track", &id]).await.assert_exit(0);
    let pending = emu.invitations().len();
    assert!(pending > 20, "most users converted: {pending}");

    emu.take_max_in_flight();
    run(&emu, &db, &["resend", &id, "--yes"])
        .await
        .assert_exit(0);
    let most = emu.take_max_in_flight();
    assert!(
        most > 1,
        "resend works several users at once: at most {most} answered at once"
    );
    let resent = resets_per_user(&emu);
    assert_eq!(resent.len(), pending, "every pending user re-invited");
    assert!(resent.values().all(|&n| n == 1), "each once: {resent:?}");
    emu.shutdown().await;
}
