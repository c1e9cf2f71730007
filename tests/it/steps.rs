//! The exactly-once planner seen from outside: attempts count only requests that may have
//! reached Graph, and an unreachable Graph stops the run resumable with nothing left in flight.
//! Every verdict is a count read from the emulator's or the queue's own records.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use b2b_convert::emulator::{EmulatorConfig, Tenant};
use b2b_convert::item::ItemState;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_checkpoints_are_not_charged_as_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Tenant::generate(300, 21);
    let csv = dir.path().join("users.csv");
    tenant.write_csv(&csv).unwrap();
    let mut config = EmulatorConfig::new(tenant);
    // Slow answers keep many items checkpointed in flight at each kill.
    config.latency = Duration::from_millis(20);
    // Graph's buckets ×10: the client's --rate is the pace, not Graph's real refill.
    config.bucket_scale = 10.0;
    let emu = start(config).await;
    let db = dir.path().join("live.db");

    for (i, target) in [20usize, 60, 120].into_iter().enumerate() {
        let args: Vec<&str> = if i == 0 {
            vec![
                "run",
                "--csv",
                csv.to_str().unwrap(),
                "--yes",
                "--rate",
                "200",
                "--concurrency",
                "16",
            ]
        } else {
            vec!["resume", "--yes"]
        };
        let mut child = command(&emu, &db, &args).spawn().unwrap();
        let mut polls = 0;
        while emu.invitations().len() < target && polls < 12_000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            polls += 1;
        }
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert_died_of_sigkill(&status, "killed mid-run, not ended");
    }
    let out = run(&emu, &db, &["resume", "--yes"]).await;
    assert!([0, 3].contains(&out.code), "{}", out.stderr);
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

/// Graph's port closes in the middle of a live run: the run stops resumable (exit 1, a message
/// naming the URL) and nobody is charged for the outage. An item is left `in_flight` only when
/// its request was written as the port closed (the answer cut off, never to be resent blind, the
/// user unreadable within the client's window); the stop says so, and a resume against Graph
/// back on the same port settles every one of them exactly once. The hidden
/// `--unreachable-after 2` shortens the client's not-sent retry window (45 s by default) so the
/// test does not wait three quarters of a minute on a closed port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_graph_port_stops_the_run_with_nothing_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Tenant::generate(400, 23);
    let csv = dir.path().join("users.csv");
    tenant.write_csv(&csv).unwrap();
    let mut config = EmulatorConfig::new(tenant.clone());
    config.latency = Duration::from_millis(5);
    let mut emu = start(config).await;
    let db = dir.path().join("live.db");
    let args = [
        "run",
        "--csv",
        csv.to_str().unwrap(),
        "--yes",
        "--rate",
        "50",
        "--concurrency",
        "8",
        "--unreachable-after",
        "2",
    ];
    let child = command(&emu, &db, &args).spawn().unwrap();
    let mut polls = 0;
    while emu.invitations().len() < 30 && polls < 6_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        polls += 1;
    }
    let url = emu.base_url();
    let invited_before = emu.invitations().len();
    assert!(invited_before >= 30, "the run got going");
    // The port closes between requests: answers already being written are finished, every
    // later connection is refused. A request written on a kept-alive connection in that instant
    // is the one the client cannot tell from an answer cut off.
    emu.close_port().await;
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("the run ends on its own")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
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

    // Graph is back on the same port: resume settles everything, each user invited once.
    emu.reopen_port().await.unwrap();
    let out = run(&emu, &db, &["resume", "--yes"]).await;
    assert!([0, 3].contains(&out.code), "{}", out.stderr);
    let its = items(&db, 1);
    assert_eq!(count(&its, ItemState::InFlight), 0, "{}", out.stderr);
    assert_eq!(count(&its, ItemState::Pending), 0, "{}", out.stderr);
    assert_eq!(count(&its, ItemState::Failed), 0, "{}", out.stderr);
    let per_user = invitations_per_user(&emu);
    let twice: Vec<_> = per_user.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "invited more than once: {twice:?}");
    let converted: BTreeSet<String> = its
        .iter()
        .filter(|i| i.state == ItemState::Converted)
        .map(|i| i.user_id.clone().unwrap())
        .collect();
    let invited: BTreeSet<String> = per_user.keys().cloned().collect();
    assert_eq!(invited, converted, "one invitation per converted user");
    for i in &stranded {
        let now = its.iter().find(|n| n.id == i.id).unwrap();
        assert_eq!(
            now.state,
            ItemState::Converted,
            "settled by resume: {now:?}"
        );
    }
}

/// Graph's port closes cutting off the answers in progress (slow answers keep every worker's
/// invitation on the wire): those items stay `in_flight`, never sent again blind, the stop
/// counts them, and a resume against Graph back on the same port re-reads each user first:
/// every invitation that took effect is recorded, none is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cut_off_as_the_port_closes_stay_in_flight_and_resume_settles_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Tenant::generate(200, 37);
    let csv = dir.path().join("users.csv");
    tenant.write_csv(&csv).unwrap();
    let mut config = EmulatorConfig::new(tenant);
    // Carried out at once, answered 300 ms later: the cut finds invitations done, unanswered.
    config.latency = Duration::from_millis(300);
    let mut emu = start(config).await;
    let db = dir.path().join("live.db");
    let args = [
        "run",
        "--csv",
        csv.to_str().unwrap(),
        "--yes",
        "--rate",
        "50",
        "--concurrency",
        "8",
        "--unreachable-after",
        "2",
    ];
    let child = command(&emu, &db, &args).spawn().unwrap();
    let mut polls = 0;
    while emu.invitations().len() < 20 && polls < 6_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        polls += 1;
    }
    assert!(emu.invitations().len() >= 20, "the run got going");
    emu.cut_port().await;
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("the run ends on its own")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
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

    emu.reopen_port().await.unwrap();
    let out = run(&emu, &db, &["resume", "--yes"]).await;
    assert!([0, 3].contains(&out.code), "{}", out.stderr);
    let its = items(&db, 1);
    assert_eq!(count(&its, ItemState::InFlight), 0, "{}", out.stderr);
    assert_eq!(count(&its, ItemState::Pending), 0, "{}", out.stderr);
    assert_eq!(count(&its, ItemState::Failed), 0, "{}", out.stderr);
    let per_user = invitations_per_user(&emu);
    let twice: Vec<_> = per_user.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "invited more than once: {twice:?}");
    let converted: BTreeSet<String> = its
        .iter()
        .filter(|i| i.state == ItemState::Converted)
        .map(|i| i.user_id.clone().unwrap())
        .collect();
    let invited: BTreeSet<String> = per_user.keys().cloned().collect();
    assert_eq!(invited, converted, "one invitation per converted user");
    for id in &stranded {
        let now = its.iter().find(|n| n.id == *id).unwrap();
        assert_eq!(
            now.state,
            ItemState::Converted,
            "settled by resume: {now:?}"
        );
    }
}

/// Users the dry run with `--set-mail --set-guest` says would convert, and the subset whose
/// `mail` it says will be set (id → the CSV address).
async fn dry_run_plan(
    emu: &b2b_convert::emulator::Emulator,
    dir: &std::path::Path,
    csv: &std::path::Path,
) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let db = dir.join("dry.db");
    let args = [
        "run",
        "--csv",
        csv.to_str().unwrap(),
        "--dry-run",
        "--set-mail",
        "--set-guest",
        // Reads only: the client's default --rate (20/s) would be most of the wait.
        "--rate",
        "2000",
    ];
    let out = run(emu, &db, &args).await;
    assert!([0, 3].contains(&out.code), "{}", out.stderr);
    let its = items(&db, out.run_id());
    let would: BTreeSet<String> = its
        .iter()
        .filter(|i| i.state == ItemState::WouldConvert)
        .map(|i| i.user_id.clone().unwrap())
        .collect();
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

fn scaled(tenant: Tenant) -> EmulatorConfig {
    let mut config = EmulatorConfig::new(tenant);
    // Graph's bucket shapes, scaled so no test waits on wall-clock throttling.
    config.bucket_scale = 50.0;
    config
}

/// Issue 9's acceptance: mail set → invited → userType set, each exactly once, through 20%
/// faults, 10% lost answers and repeated SIGKILLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_mail_and_set_guest_survive_faults_lost_answers_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Tenant::generate(1_000, 31);
    let csv = dir.path().join("users.csv");
    tenant.write_csv(&csv).unwrap();
    let guest_before: BTreeSet<String> = tenant
        .users
        .iter()
        .filter(|u| u.user_type.as_deref() == Some("Guest"))
        .map(|u| u.id.clone())
        .collect();
    let mut config = scaled(tenant);
    config.fault_rate = 0.2;
    // Graph's 503s ask for 1–3 s; a tenth of a second keeps the run busy, not asleep.
    config.fault_retry_after_max = std::time::Duration::from_millis(100);
    config.lost_response_rate = 0.1;
    config.seed = 7;
    let emu = start(config).await;
    let (expected, fixable) = dry_run_plan(&emu, dir.path(), &csv).await;
    assert!(
        fixable.len() >= 10,
        "the tenant has users --set-mail fixes: {}",
        fixable.len()
    );

    let db = dir.path().join("live.db");
    for (i, fraction) in [0.2, 0.45, 0.7].into_iter().enumerate() {
        let target = (expected.len() as f64 * fraction) as usize;
        let args: Vec<&str> = if i == 0 {
            vec![
                "run",
                "--csv",
                csv.to_str().unwrap(),
                "--yes",
                "--silent",
                "--set-mail",
                "--set-guest",
                "--rate",
                "400",
                "--concurrency",
                "16",
                "--max-attempts",
                "12",
            ]
        } else {
            vec!["resume", "--yes"]
        };
        let mut child = command(&emu, &db, &args).spawn().unwrap();
        let mut polls = 0;
        while emu.invitations().len() < target && polls < 12_000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            polls += 1;
        }
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert_died_of_sigkill(&status, "died of SIGKILL, not ended");
    }
    let out = run(&emu, &db, &["resume", "--yes"]).await;
    assert_eq!(out.code, 3, "blocked users remain: exit 3\n{}", out.stderr);

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
    let converted: BTreeSet<String> = its
        .iter()
        .filter(|i| i.state == ItemState::Converted)
        .map(|i| i.user_id.clone().unwrap())
        .collect();
    assert_eq!(converted, expected, "converted = what the dry run promised");

    let per_user = invitations_per_user(&emu);
    let twice: Vec<_> = per_user.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "invited more than once: {twice:?}");
    let invited: BTreeSet<String> = per_user.keys().cloned().collect();
    assert_eq!(
        invited, converted,
        "one accepted invitation per converted user"
    );

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
    let patches = emu.patches();
    let mail_patched: BTreeSet<String> = patches
        .iter()
        .filter(|p| p["property"] == "mail")
        .map(|p| p["userId"].as_str().unwrap().to_string())
        .collect();
    let fixable_ids: BTreeSet<String> = fixable.keys().cloned().collect();
    assert_eq!(
        mail_patched, fixable_ids,
        "mail written only for fixable users"
    );
    let guest_patched: BTreeSet<String> = patches
        .iter()
        .filter(|p| p["property"] == "userType")
        .map(|p| p["userId"].as_str().unwrap().to_string())
        .collect();
    let needed_guest: BTreeSet<String> = converted.difference(&guest_before).cloned().collect();
    assert_eq!(
        guest_patched, needed_guest,
        "users already Guest need no PATCH"
    );

    let status = run(&emu, &db, &["status", "1", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["followUps"]["mailSet"], fixable.len() as u64);
    assert_eq!(status["followUps"]["guestSet"], needed_guest.len() as u64);
}
