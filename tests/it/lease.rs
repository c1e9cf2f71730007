//! One process at a time works a run, and the bookkeeping around a run's life: a second process
//! is refused and changes nothing, unusable inputs never become runs, a finished run's resume is
//! a no-op, and `retry` sees the user as it is now. Verdicts are counts and records read from the
//! emulator and the database; nothing depends on how fast the machine is.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use b2b_convert::emulator::{EmulatorConfig, Tenant};
use b2b_convert::item::{
    ItemState, NewItem, Overrides, RunMode, RunOptions, RunStatus, SourceSpec, UserKey,
};
use b2b_convert::queue::Queue;
use common::*;

fn run_count(db: &Path) -> usize {
    if !db.exists() {
        return 0;
    }
    Queue::open(db).unwrap().list_runs().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_leased_run_exits_1_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Tenant::generate(300, 21);
    let csv = dir.path().join("users.csv");
    tenant.write_csv(&csv).unwrap();
    let mut config = EmulatorConfig::new(tenant);
    // Graph's buckets ×4, so the client's --rate below is the pace, not /invitations' 30/s.
    config.bucket_scale = 4.0;
    let emu = start(config).await;

    let dry = dir.path().join("dry.db");
    let out = run(
        &emu,
        &dry,
        &["run", "--csv", csv.to_str().unwrap(), "--dry-run"],
    )
    .await;
    assert!([0, 3].contains(&out.code), "{}", out.stderr);
    let expected: BTreeSet<String> = items(&dry, out.run_id())
        .into_iter()
        .filter(|i| i.state == ItemState::WouldConvert)
        .map(|i| i.user_id.unwrap())
        .collect();

    let db = dir.path().join("live.db");
    let first = command(
        &emu,
        &db,
        &[
            "run",
            "--csv",
            csv.to_str().unwrap(),
            "--yes",
            // Slow enough (about 2 s for 255 invitations) that the second process meets a
            // lease held by a working run, never a finished one.
            "--rate",
            "120",
            "--concurrency",
            "4",
        ],
    )
    .spawn()
    .unwrap();
    let first_pid = first.id().unwrap();
    // Bounded wait until the first process is converting (it holds the lease from creation).
    let mut waited = Duration::ZERO;
    while emu.invitations().len() < 5 && waited < COMMAND_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    let second = run(&emu, &db, &["resume", "--yes"]).await;
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains(&format!("is being worked by pid {first_pid} on ")),
        "{}",
        second.stderr
    );
    let first = tokio::time::timeout(COMMAND_TIMEOUT, first.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        [Some(0), Some(3)].contains(&first.status.code()),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // One invitation per converted user, none refused, none repeated, none failed.
    let its = items(&db, 1);
    let converted: BTreeSet<String> = its
        .iter()
        .filter(|i| i.state == ItemState::Converted)
        .map(|i| i.user_id.clone().unwrap())
        .collect();
    assert_eq!(count(&its, ItemState::Failed), 0);
    assert_eq!(count(&its, ItemState::InFlight), 0);
    assert_eq!(converted, expected);
    let per_user = invitations_per_user(&emu);
    assert!(per_user.values().all(|n| *n == 1), "{per_user:?}");
    assert_eq!(per_user.keys().cloned().collect::<BTreeSet<_>>(), converted);
    let stats = emu.stats();
    let refused: u64 = stats["requests"]["POST /v1.0/invitations"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(status, _)| status.as_str() != "201")
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert_eq!(refused, 0, "{stats}");
    // The lease went with the process.
    assert_eq!(Queue::open(&db).unwrap().lease(1).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_inputs_are_refused_before_a_run_exists() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start_sample().await;
    let db = dir.path().join("q.db");
    let cases = [
        ("empty.csv", ""),
        (
            "nokey.csv",
            "mail,externalEmail\na@contoso.com,a@fabrikam.com\n",
        ),
    ];
    for (name, text) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(
            &emu,
            &db,
            &["run", "--csv", path.to_str().unwrap(), "--dry-run"],
        )
        .await;
        assert_eq!(out.code, 2, "{name}: {}", out.stderr);
        assert!(out.stderr.contains(name), "{name}: {}", out.stderr);
        assert!(!out.stdout.contains("run-id:"), "{name}: {}", out.stdout);
    }
    let missing = dir.path().join("missing.csv");
    let out = run(
        &emu,
        &db,
        &["run", "--csv", missing.to_str().unwrap(), "--dry-run"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(run_count(&db), 0);
    // So a bare resume finds nothing to pick.
    let out = run(&emu, &db, &["resume"]).await;
    assert_ne!(out.code, 0);
    assert!(!out.stdout.contains("run-id:"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_a_finished_run_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start_sample().await;
    let db = dir.path().join("q.db");
    let csv = repo_path("sample-data/users.csv");
    let out = run(&emu, &db, &["run", "--csv", csv.to_str().unwrap(), "--yes"]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let run_id = out.run_id();
    let before = Queue::open(&db).unwrap().run(run_id).unwrap().unwrap();
    assert_eq!(before.status, "finished");
    let stats = emu.stats();

    // No --yes and no terminal: a finished run asks for nothing.
    let out = run(&emu, &db, &["resume"]).await;
    assert_eq!(out.code, 3, "blocked items remain: {}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("run {run_id} is finished: nothing to resume")),
        "{}",
        out.stdout
    );
    assert_eq!(emu.stats()["requests"], stats["requests"], "no Graph call");
    let after = Queue::open(&db).unwrap().run(run_id).unwrap().unwrap();
    assert_eq!(after.finished_at, before.finished_at);
    assert_eq!(after.status, "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reads_its_users_again_before_validating() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Tenant::sample();
    let emu = start_sample().await;
    let db = dir.path().join("q.db");
    let user = tenant
        .users
        .iter()
        .find(|u| u.id == "3535df92-088c-5e62-a2d6-4e3cfa0512e6")
        .expect("a user the sample converts")
        .clone();
    let current_mail = user.mail.clone().unwrap();
    // A failed item whose snapshot is older than the tenant: the user's mail has been fixed
    // since (as a report's fix hint asks).
    let mut stale = user.clone();
    stale.mail = Some("old.address@fabrikam.com".into());
    let run_id = {
        let q = Queue::open(&db).unwrap();
        let run_id = q
            .create_run(
                &SourceSpec::Csv {
                    path: "users.csv".into(),
                },
                RunMode::Live,
                &RunOptions::default(),
                Some(&emu.tenant_id()),
                &emu.base_url(),
            )
            .unwrap();
        q.insert_items(
            run_id,
            &[NewItem {
                line: Some(2),
                key: Some(UserKey::Id(user.id.clone())),
                external_email: None,
                overrides: Overrides::default(),
                bad_input: None,
                snapshot: None,
            }],
            Some("2"),
        )
        .unwrap();
        q.finish_ingest(run_id).unwrap();
        let item = q.pending_items(run_id, 0, 1).unwrap().remove(0);
        q.record_lookup(item.id, Some(&stale)).unwrap();
        q.mark_in_flight(item.id, "old.address@fabrikam.com")
            .unwrap();
        q.record_failed(item.id, "Request_BadRequest", "refused", None, None)
            .unwrap();
        q.set_run_status(run_id, RunStatus::Finished).unwrap();
        run_id
    };
    let out = run(&emu, &db, &["retry", &run_id.to_string(), "--yes"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let invitations = emu.invitations();
    assert_eq!(invitations.len(), 1, "{invitations:?}");
    assert_eq!(
        invitations[0]["invitedUserEmailAddress"].as_str(),
        Some(current_mail.as_str())
    );
    let item = items(&db, run_id).remove(0);
    assert_eq!(item.state, ItemState::Converted);
    assert_eq!(
        item.snapshot.unwrap().mail.as_deref(),
        Some(current_mail.as_str())
    );
}
