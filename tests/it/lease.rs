//! One process at a time works a run, and the bookkeeping around a run's life: a second process
//! is refused and changes nothing, unusable inputs never become runs, a finished run's resume is
//! a no-op, and `retry` sees the user as it is now. Verdicts are counts and records read from the
//! emulator and the database; nothing depends on how fast the machine is.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use b2b_convert::emulator::Tenant;
use b2b_convert::item::{ItemState, RunMode, RunStatus};
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
    // Graph's buckets ×4, so the client's --rate below is the pace, not /invitations' 30/s.
    let Generated { dir, csv, emu, .. } = Generated::scaled(300, 21, 4.0, |_| {}).await;
    let expected = would_convert(&emu, &dir.path().join("dry.db"), &csv, "").await;

    let db = dir.path().join("live.db");
    // Slow enough (about 2 s for 255 invitations) that the second process meets a lease held
    // by a working run, never a finished one.
    let args = run_args(&csv, "--yes --rate 120 --concurrency 4");
    let first = command(&emu, &db, &args).spawn().unwrap();
    let first_pid = first.id().unwrap();
    // Bounded wait until the first process is converting (it holds the lease from creation).
    let converting = || emu.invitations().len() >= 5;
    poll_until(converting, Duration::from_millis(20), 12_000).await;
    let second = run(&emu, &db, &["resume", "--yes"]).await;
    second.assert_exit(1);
    second.assert_stderr_has(&format!("is being worked by pid {first_pid} on "));
    output_of(first).await.assert_finished();

    // One invitation per converted user, none refused, none repeated, none failed.
    let its = items(&db, 1);
    assert_eq!(count(&its, ItemState::Failed), 0);
    assert_eq!(count(&its, ItemState::InFlight), 0);
    assert_eq!(user_ids(&its, ItemState::Converted), expected);
    assert_each_converted_user_invited_once(&emu, &its);
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
        let out = run_csv(&emu, &db, &path, "--dry-run").await;
        assert_eq!(out.code, 2, "{name}: {}", out.stderr);
        assert!(out.stderr.contains(name), "{name}: {}", out.stderr);
        assert!(!out.stdout.contains("run-id:"), "{name}: {}", out.stdout);
    }
    let missing = dir.path().join("missing.csv");
    let out = run_csv(&emu, &db, &missing, "--dry-run").await;
    out.assert_exit(2);
    assert_eq!(run_count(&db), 0);
    // So a bare resume finds nothing to pick.
    let out = run(&emu, &db, &["resume"]).await;
    assert_ne!(out.code, 0);
    assert!(!out.stdout.contains("run-id:"), "{}", out.stdout);
}

/// Inputs without bounds are refused at once, before a run exists: an endless message file or
/// CSV (`/dev/zero`), a language tag that is a path; and a `--db` that is not this tool's
/// database is refused with a one-line cause, its mode untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_or_hostile_inputs_and_foreign_databases_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let emu = start_sample().await;
    let db = dir.path().join("q.db");
    let csv = sample_csv();
    let csv = csv.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "run",
                "--csv",
                csv,
                "--dry-run",
                "--message-file",
                "/dev/zero",
            ],
            "--message-file /dev/zero: longer than 64 KiB",
        ),
        (
            &[
                "run",
                "--csv",
                csv,
                "--dry-run",
                "--message-language",
                "../../etc",
            ],
            "not a BCP 47 language tag",
        ),
        (
            &["run", "--csv", "/dev/zero", "--dry-run"],
            "is this a CSV file?",
        ),
    ];
    for (args, want) in cases {
        let out = run(&emu, &db, args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert!(!out.stdout.contains("run-id:"), "{args:?}: {}", out.stdout);
    }
    assert_eq!(run_count(&db), 0);

    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a database\n").unwrap();
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o644)).unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    for path in [&notes, &folder] {
        let mode = || std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let before = mode();
        for args in [&["status"][..], &["run", "--csv", csv, "--dry-run"][..]] {
            let out = run(&emu, path, args).await;
            assert_eq!(out.code, 1, "{}: {}", path.display(), out.stderr);
            let lines: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| l.starts_with("error"))
                .collect();
            assert_eq!(lines.len(), 1, "one-line cause: {}", out.stderr);
            assert!(
                out.stderr.contains("nothing was changed") || out.stderr.contains("directory"),
                "{}",
                out.stderr
            );
        }
        assert_eq!(mode(), before, "{} keeps its mode", path.display());
    }
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "not a database\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_a_finished_run_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start_sample().await;
    let db = dir.path().join("q.db");
    let out = run_csv(&emu, &db, &sample_csv(), "--yes").await;
    out.assert_exit(3);
    let run_id = out.run_id();
    let before = Queue::open(&db).unwrap().run(run_id).unwrap().unwrap();
    assert_eq!(before.status, "finished");
    let stats = emu.stats();

    // No --yes and no terminal: a finished run asks for nothing.
    let out = run(&emu, &db, &["resume"]).await;
    assert_eq!(out.code, 3, "blocked items remain: {}", out.stderr);
    out.assert_stdout_has(&format!("run {run_id} is finished: nothing to resume"));
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
        let run_id = create_csv_run(&q, RunMode::Live, &emu.tenant_id(), &emu.base_url());
        q.insert_items(run_id, &[item_by_id(2, &user.id)], Some("2"))
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
    run(&emu, &db, &["retry", &run_id.to_string(), "--yes"])
        .await
        .assert_exit(0);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_that_lost_its_lease_writes_nothing_and_exits_1() {
    // A 1.5 s stale window (heartbeat every 125 ms) instead of 60 s: same rule, scaled.
    const STALE: (&str, &str) = ("B2B_LEASE_STALE_MS", "1500");
    let Generated { dir, csv, emu, .. } =
        Generated::scaled(400, 23, 4.0, |c| c.latency = Duration::from_millis(20)).await;
    let db = dir.path().join("live.db");

    // Slow enough that both processes are still converting when the first wakes.
    let args = run_args(&csv, "--yes --silent --set-guest --rate 60 --concurrency 4");
    let first = command(&emu, &db, &args)
        .env(STALE.0, STALE.1)
        .spawn()
        .unwrap();
    let first_pid = first.id().unwrap();
    let poll = Duration::from_millis(20);
    poll_until(|| emu.invitations().len() >= 20, poll, 12_000).await;
    assert!(emu.invitations().len() >= 20, "the first process converts");
    // A holder frozen inside a write transaction keeps SQLite's write lock: the second process
    // then cannot take the lease (it gives up after its busy timeout, exit 1, having changed
    // nothing). Thaw briefly and freeze again; a few tries are always enough.
    let queue = Queue::open(&db).unwrap();
    let mut taken = None;
    for _ in 0..5 {
        signal(first_pid, "-STOP");
        // Bounded wait until the frozen holder's heartbeat is older than the stale window.
        for _ in 0..1_000 {
            let row = queue.lease(1).unwrap().unwrap();
            if chrono::Utc::now().timestamp_millis() - row.heartbeat_ms > 1_700 {
                break;
            }
            tokio::time::sleep(poll).await;
        }
        let mut second = command(&emu, &db, &["resume", "--yes"]);
        let mut second = second.env(STALE.0, STALE.1).spawn().unwrap();
        let second_pid = second.id().unwrap();
        let mut took = false;
        for _ in 0..3_000 {
            if queue.lease(1).unwrap().is_some_and(|l| l.pid == second_pid) {
                took = true;
                break;
            }
            if second.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(poll).await;
        }
        if took {
            taken = Some((second, second_pid));
            break;
        }
        let out = output_of(second).await;
        out.assert_exit(1);
        let err = &out.stderr;
        assert!(err.contains("locked"), "refused for another reason: {err}");
        signal(first_pid, "-CONT");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (second, second_pid) = taken.expect("the second process took the lease over");
    assert_eq!(queue.lease(1).unwrap().map(|l| l.pid), Some(second_pid));
    // The new holder is converting before the old one wakes.
    let at_takeover = emu.invitations().len();
    poll_until(|| emu.invitations().len() >= at_takeover + 10, poll, 12_000).await;
    signal(first_pid, "-CONT");

    let first = output_of(first).await;
    first.assert_exit(1);
    first.assert_stderr_has("taken over");
    let second = output_of(second).await;
    second.assert_finished();

    // From the emulator's own logs: nobody invited or patched twice, every invited user
    // converted, nothing left in flight.
    let per_user = invitations_per_user(&emu);
    let twice: Vec<_> = emu
        .invitations()
        .into_iter()
        .filter(|i| per_user[i["userId"].as_str().unwrap()] > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "{twice:#?}\nfirst: {}\nsecond: {}",
        first.stderr,
        second.stderr
    );
    let patches = emu.patches();
    let patched = count_per_user(patches.iter().filter(|p| p["property"] == "userType"));
    assert!(!patched.is_empty());
    assert!(patched.values().all(|n| *n == 1), "{patched:?}");
    let its = items(&db, 1);
    assert_eq!(count(&its, ItemState::InFlight), 0);
    assert_eq!(
        per_user.keys().cloned().collect::<BTreeSet<_>>(),
        user_ids(&its, ItemState::Converted)
    );
    assert_eq!(queue.lease(1).unwrap(), None);
}

/// A process killed after its invitation was sent leaves the item `in_flight`; at `resume`
/// the re-read is served by a replica behind the write (the user looks unconverted), so the
/// invitation goes out again and Graph refuses it "already a B2B collaboration user". That
/// refusal says the step is done: the user is re-read and recorded `converted`, not `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_refused_as_done_already_is_reconciled_converted() {
    let Generated { dir, csv, emu, .. } = Generated::scaled(40, 31, 100.0, |c| {
        // Every accepted invitation's next single read of the user lags behind it.
        c.lagging_read_rate = 1.0;
    })
    .await;
    let db = dir.path().join("live.db");
    // A pilot of 3: the others are looked up (snapshot kept) and left pending.
    run_csv(&emu, &db, &csv, "--yes --silent --limit 3")
        .await
        .assert_finished();
    let queue = Queue::open(&db).unwrap();
    let victim = queue
        .items(1)
        .unwrap()
        .into_iter()
        .find(|i| {
            i.state == ItemState::Pending && i.snapshot.is_some() && i.external_email.is_some()
        })
        .expect("a pending user already looked up");
    let (user, email) = (
        victim.user_id.clone().unwrap(),
        victim.external_email.clone().unwrap(),
    );

    // The crash: checkpointed, sent, accepted, answer never recorded.
    queue.mark_in_flight(victim.id, &email).unwrap();
    drop(queue);
    let graph = raw::G::new(&emu).await;
    let (status, _) = graph
        .post("/invitations", raw::invite_body(&user, &email))
        .await;
    assert_eq!(status, 201);

    // `--limit 0` lifts the pilot's limit, so the item is worked again after reconciliation.
    run(&emu, &db, &["resume", "--yes", "--limit", "0"])
        .await
        .assert_finished();
    let after = items(&db, 1);
    let item = after.iter().find(|i| i.id == victim.id).unwrap();
    assert_eq!(item.state, ItemState::Converted, "{item:?}");
    assert_eq!(invitations_per_user(&emu)[&user], 1, "accepted once");
    assert_eq!(count(&after, ItemState::Failed), 0);
}
