//! Live conversion that survives anything: faults, lost answers, throttling, SIGKILL, SIGINT,
//! and a tenant that blocks invitations. Every verdict is a count or an order read from the
//! emulator's own records; no assertion depends on how fast the machine is.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use b2b_convert::emulator::{Emulator, EmulatorConfig, Tenant};
use b2b_convert::item::ItemState;
use common::*;

/// The users a dry run says would convert: the expectation every live run is held to.
async fn dry_run_expectation(emu: &Emulator, dir: &Path, csv: &Path) -> BTreeSet<String> {
    // Reads only, so the client's own --rate (default 30/s) and the workers' backoff after
    // faults are the only waits: the rate lifted, more workers to overlap the backoffs.
    would_convert(
        emu,
        &dir.join("dry.db"),
        csv,
        "--rate 2000 --concurrency 32",
    )
    .await
}

/// Exactly once: the converted items, the emulator's invitations and the dry run's
/// expectation are the same set, and no user was invited twice.
fn assert_exactly_once(emu: &Emulator, db: &Path, run_id: i64, expected: &BTreeSet<String>) {
    let its = items(db, run_id);
    assert_eq!(count(&its, ItemState::Pending), 0);
    assert_eq!(count(&its, ItemState::InFlight), 0);
    assert_eq!(
        count(&its, ItemState::Failed),
        0,
        "{:?}",
        its.iter().find(|i| i.state == ItemState::Failed)
    );
    assert_eq!(
        &user_ids(&its, ItemState::Converted),
        expected,
        "converted = what the dry run promised"
    );
    assert_each_converted_user_invited_once(emu, &its);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lost_answers_and_throttling_still_convert_everyone_exactly_once() {
    // Graph's bucket shapes scaled ×20 so the run does not wait on Graph's real refill, and
    // every 1,000th invitation request answered 429 by count: the run needs more than 1,500
    // invitation requests (asserted below), so it is throttled whatever the machine's speed.
    // Each 429 halves the client's pace for a while, hence few of them and a high --rate.
    let Generated { dir, csv, emu, .. } = Generated::scaled(2_000, 11, 20.0, |c| {
        c.fault_rate = 0.2;
        // Graph's 503s ask for 1–3 s; a tenth of a second keeps the run busy, not asleep.
        c.fault_retry_after_max = std::time::Duration::from_millis(100);
        c.lost_response_rate = 0.1;
        c.throttle_every_nth_invitation = 1_000;
        c.seed = 3;
    })
    .await;
    let expected = dry_run_expectation(&emu, dir.path(), &csv).await;
    assert!(
        expected.len() > 1_500,
        "the generated tenant is mostly convertible"
    );

    let db = dir.path().join("live.db");
    // Never settle: the run must meet 429s (pacing on pressure is tests/pacing.rs).
    let flags = "--yes --silent --rate 2000 --settle-rate 2000 --concurrency 48 --max-attempts 12";
    // Blocked users remain: exit 3.
    let out = run_csv(&emu, &db, &csv, flags).await;
    out.assert_exit(3);
    assert_exactly_once(&emu, &db, out.run_id(), &expected);
    let stats = emu.stats();
    assert!(
        stats["throttled"].as_u64().unwrap() > 0,
        "the run was really throttled"
    );
    let reconciled = items(&db, out.run_id())
        .iter()
        .filter(|i| i.reconciled)
        .count();
    assert!(reconciled > 0, "lost answers were reconciled, not re-sent");
    for inv in emu.invitations() {
        assert_eq!(inv["sendInvitationMessage"], false, "--silent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_several_points_then_resume_converts_everyone_exactly_once() {
    // Graph's buckets ×10: the client's --rate 100 is the pace, not Graph's real refill.
    let Generated { dir, csv, emu, .. } = Generated::scaled(600, 5, 10.0, |c| {
        c.lost_response_rate = 0.05;
        c.latency = Duration::from_millis(5);
    })
    .await;
    let expected = dry_run_expectation(&emu, dir.path(), &csv).await;
    let db = dir.path().join("live.db");

    let first_run = run_args(&csv, "--yes --rate 100 --concurrency 8");
    // Kill after roughly a quarter, a half and three quarters of the invitations.
    let targets = [0.25, 0.5, 0.75].map(|fraction| (expected.len() as f64 * fraction) as usize);
    kill_at_invitation_counts(&emu, &db, &first_run, &targets).await;
    let run_id = b2b_convert::queue::Queue::open(&db)
        .unwrap()
        .latest_run()
        .unwrap()
        .unwrap()
        .id;
    run(&emu, &db, &["resume", "--yes"]).await.assert_exit(3);
    assert_exactly_once(&emu, &db, run_id, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_by_every_request() {
    const CONCURRENCY: usize = 4;
    // 429s by count (every 30th invitation request) rather than a small bucket, so the run is
    // throttled several times without waiting on a slow real refill.
    let Generated { dir, csv, emu, .. } =
        Generated::scaled(120, 8, 10.0, |c| c.throttle_every_nth_invitation = 30).await;
    let expected = dry_run_expectation(&emu, dir.path(), &csv).await;
    let db = dir.path().join("live.db");
    // The pace after a 429 is tests/pacing.rs's business; this test is about Retry-After.
    let flags = format!("--yes --rate 400 --settle-rate 400 --concurrency {CONCURRENCY}");
    let out = run_csv(&emu, &db, &csv, &flags).await;
    out.assert_exit(3);
    assert_exactly_once(&emu, &db, out.run_id(), &expected);

    let log = emu_requests(&emu).await;
    let throttled: Vec<_> = log.iter().filter(|r| r.status == 429).collect();
    assert!(!throttled.is_empty(), "the run was throttled");
    // After a 429 with Retry-After r at time t, nothing new may arrive before t + r. Requests
    // already on the wire when the 429 was sent may still arrive, however slow the machine:
    // they are counted, not timed. At most one per other worker and one look-up by the producer.
    let on_the_wire = CONCURRENCY;
    for t in &throttled {
        let until = t.at_ms + t.retry_after_ms.expect("429 carries Retry-After");
        let early: Vec<_> = log
            .iter()
            .filter(|r| r.seq > t.seq && r.at_ms < until && r.path.contains("/v1.0/"))
            .collect();
        assert!(
            early.len() <= on_the_wire,
            "requests before Retry-After elapsed ({t:?}): {early:?}"
        );
    }
}

#[derive(Debug)]
struct Logged {
    /// The emulator's order of answering.
    seq: u64,
    at_ms: u64,
    status: u64,
    path: String,
    retry_after_ms: Option<u64>,
}

async fn emu_requests(emu: &Emulator) -> Vec<Logged> {
    let v: serde_json::Value = reqwest::get(format!("{}/_emulator/requests", emu.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Logged {
            seq: r["seq"].as_u64().unwrap(),
            at_ms: r["atMs"].as_u64().unwrap(),
            status: r["status"].as_u64().unwrap_or(0),
            path: r["path"].as_str().unwrap_or_default().to_string(),
            retry_after_ms: r["retryAfterMs"].as_u64(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_directory_stops_the_run_with_exit_4_and_no_retry_storm() {
    let mut config = EmulatorConfig::new(Tenant::sample());
    config.block_invitations = true;
    let emu = start(config).await;
    let (_dir, db) = temp_db();
    let out = run_csv(&emu, &db, &sample_csv(), "--yes --concurrency 4").await;
    out.assert_exit(4);
    out.assert_stderr_has("Invitations are blocked");
    let its = items(&db, out.run_id());
    assert_eq!(count(&its, ItemState::Converted), 0);
    assert_eq!(count(&its, ItemState::InFlight), 0);
    assert!(
        count(&its, ItemState::Pending) > 0,
        "untouched users stay pending"
    );
    let posts = requests_to(&emu.stats(), "POST /v1.0/invitations");
    assert!(
        posts <= 4,
        "at most one refused request per worker, not a storm: {posts}"
    );
    let v = status_json(&emu, &db, None).await;
    assert_eq!(v["status"], "stopped");
}

/// Unix only: the interrupt is sent with `kill -INT`.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_130_and_the_run_resumes_to_completion() {
    // Graph's buckets ×10: the resume at --rate 200 is not held to Graph's real refill.
    let Generated { dir, csv, emu, .. } = Generated::scaled(300, 9, 10.0, |_| {}).await;
    let (expected, db, out) = signalled_slow_run(&emu, dir.path(), &csv, "-INT").await;
    out.assert_exit(130);
    assert!(
        emu.invitations().len() < expected.len(),
        "stopped before the end"
    );
    let its = b2b_convert::queue::Queue::open(&db).unwrap();
    let run = its.latest_run().unwrap().unwrap();
    assert_eq!(run.status, "interrupted");
    run_resume(&emu, &db).await.assert_exit(3);
    assert_exactly_once(&emu, &db, run.id, &expected);
}

async fn run_resume(emu: &Emulator, db: &Path) -> Ran {
    run(emu, db, &["resume", "--yes", "--rate", "200"]).await
}

/// `run` at 20/s: slow enough to be stopped part-way.
fn slow_run_args(csv: &Path) -> Vec<&str> {
    run_args(csv, "--yes --rate 20")
}

/// What the dry run promises, then a slow live run (see [`slow_run_args`]) into `dir/live.db`
/// sent `signal` once it has invited 10 users: the promise, the database and the run's outcome.
async fn signalled_slow_run(
    emu: &Emulator,
    dir: &Path,
    csv: &Path,
    signal: &str,
) -> (BTreeSet<String>, PathBuf, Ran) {
    let expected = dry_run_expectation(emu, dir, csv).await;
    let db = dir.join("live.db");
    let child = command(emu, &db, &slow_run_args(csv)).spawn().unwrap();
    let out = signal_when_invited(emu, child, 10, &[signal]).await;
    (expected, db, out)
}

/// Sends `signals` (e.g. `["-TERM"]`) to the child once it has invited `after` users in all.
async fn signal_when_invited(
    emu: &Emulator,
    child: tokio::process::Child,
    after: usize,
    signals: &[&str],
) -> Ran {
    let pid = child.id().unwrap();
    // Bounded wait for progress, by count of invitations the tenant accepted.
    let invited = || emu.invitations().len() >= after;
    poll_until(invited, Duration::from_millis(20), 12_000).await;
    for name in signals {
        signal(pid, name);
    }
    output_of(child).await
}

/// A SIGTERM while the run is still signing in (a token endpoint slow to answer) ends it at
/// once with 130 and says nothing was on the wire, rather than dying with 143 or being ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_signing_in_stops_at_once_with_130() {
    let Generated { dir, csv, emu, .. } = Generated::start(20, 13, |_| {}).await;
    // A token endpoint that takes the request and never answers; it says when the request came.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let login = format!("http://{}", listener.local_addr().unwrap());
    let (asked_tx, asked) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let n = socket.read(&mut buf).await.unwrap_or(0);
        let _ = asked_tx.send(n);
        while socket.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    let db = dir.path().join("live.db");
    let child = command(&emu, &db, &run_args(&csv, "--yes"))
        .env("B2B_LOGIN_URL", &login)
        .spawn()
        .unwrap();
    let n = tokio::time::timeout(COMMAND_TIMEOUT, asked)
        .await
        .expect("the run asks for a token")
        .unwrap();
    assert!(n > 0, "a token request arrived");
    signal(child.id().unwrap(), "-TERM");
    let out = output_of(child).await;
    out.assert_exit(130);
    out.assert_stderr_has("SIGTERM: stopped before any request of the pass was on the wire");
    assert_eq!(emu.invitations().len(), 0);
    server.abort();
}

/// SIGTERM (schedulers, systemd, containers) and SIGHUP (a closed terminal) stop a run like
/// Ctrl-C: exit 130, nothing left `in_flight`, the resume command on stderr; two signals in a
/// row quit at once and `resume` reconciles. The run then finishes with everyone converted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sighup_stop_like_ctrl_c_and_the_run_resumes_exactly_once() {
    let Generated { dir, csv, emu, .. } = Generated::scaled(300, 13, 10.0, |_| {}).await;
    let (expected, db, out) = signalled_slow_run(&emu, dir.path(), &csv, "-TERM").await;
    out.assert_exit(130);
    let stderr = &out.stderr;
    assert!(stderr.contains("SIGTERM: stopping"), "{stderr}");
    assert!(out.stdout.contains("resume"), "{stderr}");
    let its = items(&db, 1);
    assert_eq!(count(&its, ItemState::InFlight), 0, "nothing left mid-step");
    let run = b2b_convert::queue::Queue::open(&db)
        .unwrap()
        .run(1)
        .unwrap()
        .unwrap();
    assert_eq!(run.status, "interrupted");

    let child = command(&emu, &db, &["resume", "--yes", "--rate", "20"])
        .spawn()
        .unwrap();
    let invited = emu.invitations().len();
    let out = signal_when_invited(&emu, child, invited + 10, &["-HUP"]).await;
    out.assert_exit(130);
    out.assert_stderr_has("SIGHUP: stopping");
    assert_eq!(count(&items(&db, 1), ItemState::InFlight), 0);

    let child = command(&emu, &db, &["resume", "--yes", "--rate", "20"])
        .spawn()
        .unwrap();
    let invited = emu.invitations().len();
    // A second signal quits at once.
    let out = signal_when_invited(&emu, child, invited + 10, &["-TERM", "-TERM"]).await;
    out.assert_exit(130);

    run_resume(&emu, &db).await.assert_exit(3);
    assert_exactly_once(&emu, &db, 1, &expected);
}
