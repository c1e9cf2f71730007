//! The exactly-once planner seen from outside: attempts count only requests that may have
//! reached Graph, and an unreachable Graph stops the run resumable with nothing left in flight.
//! Every verdict is a count read from the emulator's or the queue's own records.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use b2b_convert::emulator::Emulator;
use b2b_convert::item::ItemState;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_checkpoints_are_not_charged_as_attempts() {
    let Generated { dir, csv, emu, .. } = Generated::scaled(300, 21, 10.0, |c| {
        // Slow answers keep many items checkpointed in flight at each kill.
        c.latency = Duration::from_millis(20);
    })
    .await;
    let db = dir.path().join("live.db");

    let first_run = run_args(&csv, "--yes --rate 200 --concurrency 16");
    kill_at_invitation_counts(&emu, &db, &first_run, &[20, 60, 120]).await;
    run(&emu, &db, &["resume", "--yes"]).await.assert_finished();
    let its = items(&db, 1);
    assert_eq!(count(&its, ItemState::Pending), 0);
    assert_eq!(count(&its, ItemState::InFlight), 0);
    assert_eq!(
        count(&its, ItemState::Failed),
        0,
        "no user ran out of attempts"
    );
    let charged: u64 = its.iter().map(|i| u64::from(i.attempts)).sum();
    let sent = requests_to(&emu.stats(), "POST /v1.0/invitations");
    assert!(
        charged <= sent,
        "attempts charged ({charged}) never exceed invitation requests Graph saw ({sent})"
    );
    for i in its.iter().filter(|i| i.state == ItemState::Converted) {
        assert!(
            i.attempts <= 1,
            "no faults: one request per user at most, {i:?}"
        );
    }
}

/// `run` at 50/s with 8 workers, and the hidden `--unreachable-after 2`: the client's not-sent
/// retry window (45 s by default) shortened so a test does not wait long on a closed port.
fn port_run_args(csv: &Path) -> Vec<&str> {
    run_args(csv, "--yes --rate 50 --concurrency 8 --unreachable-after 2")
}

/// Graph is back on the same port: a resume settles everything, each user invited once, and
/// the items `stranded` in flight at the stop end converted.
async fn resume_settles_every_item_once(emu: &mut Emulator, db: &Path, stranded: &[i64]) {
    emu.reopen_port().await.unwrap();
    let out = run(emu, db, &["resume", "--yes"]).await;
    out.assert_finished();
    let its = items(db, 1);
    assert_eq!(count(&its, ItemState::InFlight), 0, "{}", out.stderr);
    assert_eq!(count(&its, ItemState::Pending), 0, "{}", out.stderr);
    assert_eq!(count(&its, ItemState::Failed), 0, "{}", out.stderr);
    assert_each_converted_user_invited_once(emu, &its);
    for id in stranded {
        let now = its.iter().find(|n| n.id == *id).unwrap();
        assert_eq!(
            now.state,
            ItemState::Converted,
            "settled by resume: {now:?}"
        );
    }
}

/// Graph's port closes in the middle of a live run: the run stops resumable (exit 1, a message
/// naming the URL) and nobody is charged for the outage. An item is left `in_flight` only when
/// its request was written as the port closed (the answer cut off, never to be resent blind, the
/// user unreadable within the client's window); the stop says so, and a resume against Graph
/// back on the same port settles every one of them exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_graph_port_stops_the_run_with_nothing_in_flight() {
    let Generated {
        dir, csv, mut emu, ..
    } = Generated::start(400, 23, |c| c.latency = Duration::from_millis(5)).await;
    let db = dir.path().join("live.db");
    let child = command(&emu, &db, &port_run_args(&csv)).spawn().unwrap();
    wait_for_invitations(&emu, 30).await;
    let url = emu.base_url();
    // The port closes between requests: answers already being written are finished, every
    // later connection is refused. A request written on a kept-alive connection in that instant
    // is the one the client cannot tell from an answer cut off.
    emu.close_port().await;
    let out = output_of(child).await;
    out.assert_exit(1);
    let stderr = &out.stderr;
    assert!(
        stderr.contains(&url) || stderr.contains("127.0.0.1"),
        "names the URL: {stderr}"
    );
    let its = items(&db, 1);
    let stranded: Vec<_> = its
        .iter()
        .filter(|i| i.state == ItemState::InFlight)
        .collect();
    for i in &stranded {
        assert_eq!(
            i.error_code.as_deref(),
            Some("UnknownOutcome"),
            "in flight only after an answer cut off: {i:?}"
        );
    }
    assert!(
        stranded.len() <= 8,
        "at most one cut-off request per connection (--concurrency 8): {}",
        stranded.len()
    );
    assert_eq!(
        stderr.contains("stay in_flight"),
        !stranded.is_empty(),
        "the stop names the items left in flight, and only then: {stderr}"
    );
    assert!(
        count(&its, ItemState::Pending) > 0,
        "the rest waits for resume"
    );
    assert_eq!(
        count(&its, ItemState::Failed),
        0,
        "no user charged for an outage"
    );
    let stranded: Vec<i64> = stranded.iter().map(|i| i.id).collect();
    resume_settles_every_item_once(&mut emu, &db, &stranded).await;
}

/// Graph's port closes cutting off the answers in progress (slow answers keep every worker's
/// invitation on the wire): those items stay `in_flight`, never sent again blind, the stop
/// counts them, and a resume against Graph back on the same port re-reads each user first:
/// every invitation that took effect is recorded, none is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cut_off_as_the_port_closes_stay_in_flight_and_resume_settles_them_once() {
    let Generated {
        dir, csv, mut emu, ..
    } = Generated::start(200, 37, |c| {
        // Carried out at once, answered 300 ms later: the cut finds invitations done, unanswered.
        c.latency = Duration::from_millis(300);
    })
    .await;
    let db = dir.path().join("live.db");
    let child = command(&emu, &db, &port_run_args(&csv)).spawn().unwrap();
    wait_for_invitations(&emu, 20).await;
    emu.cut_port().await;
    let out = output_of(child).await;
    out.assert_exit(1);
    let stderr = &out.stderr;
    let its = items(&db, 1);
    let stranded: Vec<i64> = its
        .iter()
        .filter(|i| i.state == ItemState::InFlight)
        .map(|i| i.id)
        .collect();
    assert!(
        (1..=8).contains(&stranded.len()),
        "one cut-off invitation per busy worker at most: {}\n{stderr}",
        stranded.len()
    );
    for i in its.iter().filter(|i| i.state == ItemState::InFlight) {
        assert_eq!(i.error_code.as_deref(), Some("UnknownOutcome"), "{i:?}");
    }
    assert!(
        stderr.contains(&format!(
            "{} item(s) whose answer was cut off stay in_flight",
            stranded.len()
        )),
        "the stop counts them: {stderr}"
    );
    assert_eq!(
        count(&its, ItemState::Failed),
        0,
        "no user charged for an outage"
    );
    resume_settles_every_item_once(&mut emu, &db, &stranded).await;
}

/// Users the dry run with `--set-mail --set-guest` says would convert, and the subset whose
/// `mail` it says will be set (id → the CSV address).
async fn dry_run_plan(
    emu: &Emulator,
    dir: &Path,
    csv: &Path,
) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let db = dir.join("dry.db");
    // Reads only: the client's default --rate (20/s) would be most of the wait.
    let flags = "--dry-run --set-mail --set-guest --rate 2000";
    let out = run_csv(emu, &db, csv, flags).await;
    out.assert_finished();
    let its = items(&db, out.run_id());
    let would = user_ids(&its, ItemState::WouldConvert);
    let fixable = its
        .iter()
        .filter(|i| i.state == ItemState::WouldConvert)
        .filter(|i| {
            i.detail
                .as_deref()
                .is_some_and(|d| d.contains("mail will be set"))
        })
        .map(|i| {
            (
                i.user_id.clone().unwrap(),
                i.external_email.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        requests_to(&emu.stats(), "PATCH /v1.0/users/{id}"),
        0,
        "a dry run sends no PATCH"
    );
    (would, fixable)
}

/// Issue 9's acceptance: mail set → invited → userType set, each exactly once, through 20%
/// faults, 10% lost answers and repeated SIGKILLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_mail_and_set_guest_survive_faults_lost_answers_and_sigkill() {
    let Generated {
        dir,
        tenant,
        csv,
        emu,
    } = Generated::scaled(1_000, 31, 50.0, |c| {
        c.fault_rate = 0.2;
        // Graph's 503s ask for 1–3 s; a tenth of a second keeps the run busy, not asleep.
        c.fault_retry_after_max = std::time::Duration::from_millis(100);
        c.lost_response_rate = 0.1;
        c.seed = 7;
    })
    .await;
    let guest_before: BTreeSet<String> = tenant
        .users
        .iter()
        .filter(|u| u.user_type.as_deref() == Some("Guest"))
        .map(|u| u.id.clone())
        .collect();
    let (expected, fixable) = dry_run_plan(&emu, dir.path(), &csv).await;
    assert!(
        fixable.len() >= 10,
        "the tenant has users --set-mail fixes: {}",
        fixable.len()
    );

    let db = dir.path().join("live.db");
    let first_run = run_args(
        &csv,
        "--yes --silent --set-mail --set-guest --rate 400 --concurrency 16 --max-attempts 12",
    );
    let targets = [0.2, 0.45, 0.7].map(|fraction| (expected.len() as f64 * fraction) as usize);
    kill_at_invitation_counts(&emu, &db, &first_run, &targets).await;
    // Blocked users remain: exit 3.
    let out = run(&emu, &db, &["resume", "--yes"]).await;
    out.assert_exit(3);

    let its = items(&db, 1);
    let unsettled = its
        .iter()
        .find(|i| matches!(i.state, ItemState::Pending | ItemState::InFlight));
    assert_eq!(
        count(&its, ItemState::Pending) + count(&its, ItemState::InFlight),
        0,
        "{unsettled:?}\n{}",
        out.stderr
    );
    assert_eq!(
        count(&its, ItemState::Failed),
        0,
        "{:?}",
        its.iter().find(|i| i.state == ItemState::Failed)
    );
    let converted = user_ids(&its, ItemState::Converted);
    assert_eq!(converted, expected, "converted = what the dry run promised");
    assert_each_converted_user_invited_once(&emu, &its);

    for (id, address) in &fixable {
        let user = emu.user(id).unwrap();
        assert_eq!(
            user.mail.as_deref(),
            Some(address.as_str()),
            "mail set for {id}"
        );
    }
    for id in &converted {
        let user = emu.user(id).unwrap();
        assert_eq!(user.user_type.as_deref(), Some("Guest"), "userType of {id}");
    }
    let fixable_ids: BTreeSet<String> = fixable.keys().cloned().collect();
    assert_eq!(
        patched_users(&emu, "mail"),
        fixable_ids,
        "mail written only for fixable users"
    );
    let needed_guest: BTreeSet<String> = converted.difference(&guest_before).cloned().collect();
    assert_eq!(
        patched_users(&emu, "userType"),
        needed_guest,
        "users already Guest need no PATCH"
    );

    let status = status_json(&emu, &db, Some(1)).await;
    assert_eq!(status["followUps"]["mailSet"], fixable.len() as u64);
    assert_eq!(status["followUps"]["guestSet"], needed_guest.len() as u64);
}
