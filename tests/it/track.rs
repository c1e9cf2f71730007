//! After the weekend: `track` finds who redeemed and which invitations never took effect,
//! `resend` re-invites exactly the pending users once per pass (surviving SIGKILL), and redeem
//! links exist only with `--keep-redeem-links`. Verdicts are counts from the emulator's own
//! records and the queue; nothing depends on how fast the machine is.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use b2b_convert::emulator::{Emulator, EmulatorConfig, Tenant};
use b2b_convert::item::ItemState;
use common::*;

/// A generated tenant converted by a silent live run (`flags` added) into `live.db`, the
/// emulator's buckets scaled so nothing waits on throttling and `change` adjusting the rest.
struct Converted {
    dir: tempfile::TempDir,
    csv: PathBuf,
    emu: Emulator,
    db: PathBuf,
    run_id: i64,
    converted: BTreeSet<String>,
}

impl Converted {
    async fn start(
        n: usize,
        seed: u64,
        flags: &str,
        change: impl FnOnce(&mut EmulatorConfig),
    ) -> Converted {
        let Generated { dir, csv, emu, .. } = Generated::scaled(n, seed, 1_000.0, change).await;
        let db = dir.path().join("live.db");
        let flags = format!("--yes --silent --rate 1000 --concurrency 8 {flags}");
        let run_id = finished_run(&emu, &db, &csv, &flags).await;
        let converted = user_ids(&items(&db, run_id), ItemState::Converted);
        Converted {
            dir,
            csv,
            emu,
            db,
            run_id,
            converted,
        }
    }

    /// Runs the binary against this tenant and database.
    async fn run(&self, args: &[&str]) -> Ran {
        run(&self.emu, &self.db, args).await
    }

    /// The run's `status RUN --json`.
    async fn status(&self) -> serde_json::Value {
        status_json(&self.emu, &self.db, Some(self.run_id)).await
    }

    /// What waiting `secs` seconds after the run's `track` does to every time a resend
    /// compares, without waiting: the queue's record of the track moves `secs` into the past
    /// (our clock: a resend's checkpoint must be a stamp's resolution, 1 s, after it), and the
    /// emulator's clock moves `secs` forward (Graph's: a reset is stamped, to the second, later
    /// than the invitation it resets). Either alone leaves a lost reset unprovable or unseen.
    fn as_if_waited_after_track(&self, secs: u32) {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        let moved = conn
            .execute(
                "UPDATE items SET tracked_at = strftime('%Y-%m-%dT%H:%M:%fZ', tracked_at, ?2)
             WHERE run_id = ?1 AND tracked_at IS NOT NULL",
                rusqlite::params![self.run_id, format!("-{secs} seconds")],
            )
            .unwrap();
        assert!(moved > 0, "the run was tracked");
        self.emu.clock().advance(Duration::from_secs(secs.into()));
    }
}

/// The bytes of the database and its WAL (what an attacker with the file would see).
fn database_bytes(db: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    for suffix in ["-wal", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(b) = std::fs::read(Path::new(&p)) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_reinvites_every_pending_user_once_and_survives_sigkill() {
    let t = Converted::start(200, 21, "", |c| {
        // Slow enough answers that the resend pass is killed half-way, and some answers lost.
        c.latency = Duration::from_millis(15);
        c.lost_response_rate = 0.1;
        c.seed = 5;
    })
    .await;
    assert!(t.converted.len() > 100, "mostly convertible");
    let id = t.run_id.to_string();

    // No redeem URL is stored without --keep-redeem-links: not in the file, not in the WAL.
    let bytes = database_bytes(&t.db);
    assert!(
        !contains(&bytes, b"/redeem?"),
        "a redeem URL reached the database"
    );
    assert!(
        !contains(&bytes, b"ticket%3d"),
        "a redeem ticket reached the database"
    );
    let out = t
        .run(&[
            "export-links",
            &id,
            "--out",
            t.dir.path().join("l.csv").to_str().unwrap(),
        ])
        .await;
    out.assert_exit(2);
    out.assert_stderr_has("--keep-redeem-links");

    let before = t.status().await;
    assert_eq!(before["redemption"]["untracked"], t.converted.len() as u64);
    assert!(before["lastTrackedAt"].is_null());
    let out = t.run(&["resend", &id, "--yes"]).await;
    assert_eq!(out.code, 2, "resend needs a track first: {}", out.stderr);

    let requests_before = requests_to(&t.emu.stats(), "POST /v1.0/$batch");
    let out = t.run(&["track", &id]).await;
    out.assert_exit(0);
    let batches = requests_to(&t.emu.stats(), "POST /v1.0/$batch") - requests_before;
    assert_eq!(
        batches as usize,
        t.converted.len().div_ceil(300),
        "~300 users per request"
    );
    let tracked = t.status().await;
    assert_eq!(
        tracked["redemption"]["pendingAcceptance"],
        t.converted.len() as u64
    );
    assert_eq!(tracked["redemption"]["untracked"], 0);
    assert!(tracked["lastTrackedAt"].is_string());

    // An unchanged stamp proves a lost reset did not happen only a stamp's resolution after
    // the track, and a reset shows only in a later second than the invitation it resets.
    t.as_if_waited_after_track(2);
    let invited_once = t.emu.invitations().len();
    let mut child = command(&t.emu, &t.db, &["resend", &id, "--yes"])
        .spawn()
        .unwrap();
    let mut killed = false;
    for _ in 0..6_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if t.emu.invitations().len() >= invited_once + 30 {
            sigkill(&mut child, "died of SIGKILL").await;
            killed = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    assert!(killed, "the resend pass was killed half-way");
    let partial = t.emu.invitations().len() - invited_once;
    assert!(partial < t.converted.len(), "killed before the pass ended");

    let out = t.run(&["resend", &id, "--yes"]).await;
    out.assert_exit(0);
    out.assert_stdout_has("continuing resend pass");
    let per_user = invitations_per_user(&t.emu);
    let wrong: Vec<_> = per_user
        .iter()
        .filter(|(u, n)| !t.converted.contains(*u) || **n != 2)
        .collect();
    assert!(
        wrong.is_empty(),
        "each pending user re-invited exactly once: {wrong:?}"
    );
    assert_eq!(per_user.len(), t.converted.len());

    // The pass is finished: another resend starts no new pass until a new track.
    let out = t.run(&["resend", &id, "--yes"]).await;
    out.assert_exit(0);
    out.assert_stdout_has("nobody to re-invite");
    assert_eq!(t.emu.invitations().len(), invited_once + t.converted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_links_writes_each_converted_users_link_once_privately() {
    let t = Converted::start(60, 4, "--keep-redeem-links", |_| {}).await;
    let out_path = t.dir.path().join("links.csv");
    let id = t.run_id.to_string();
    let export = ["export-links", &id, "--out", out_path.to_str().unwrap()];
    let out = t.run(&export).await;
    out.assert_exit(0);
    assert!(
        !out.stdout.contains("/redeem?") && !out.stderr.contains("/redeem?"),
        "never printed"
    );
    let text = std::fs::read_to_string(&out_path).unwrap();
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        rows.headers().unwrap(),
        vec![
            "userPrincipalName",
            "externalEmail",
            "inviteRedeemUrl",
            "teamsUrl"
        ]
    );
    let teams = format!(
        "https://teams.microsoft.com/?tenantId={}",
        t.emu.tenant_id()
    );
    let mut n = 0;
    for row in rows.records() {
        let row = row.unwrap();
        assert!(row[2].contains("/redeem?"), "{row:?}");
        assert_eq!(&row[3], teams.as_str());
        n += 1;
    }
    assert_eq!(n, t.converted.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let out = t.run(&export).await;
    assert_eq!(out.code, 2, "never overwritten: {}", out.stderr);
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), text);
}

/// Measurement for docs/performance.md, not a timing assertion: `track` of 100,000 converted
/// users costs about 100,000 / 300 Graph requests. Run with
/// `cargo test --release --test track -- --ignored --nocapture track_of_100k`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: 100,000 users (release build)"]
async fn track_of_100k_converted_users_costs_one_request_per_300() {
    use b2b_convert::item::{NewItem, RunMode};
    use b2b_convert::model::Invitation;
    use b2b_convert::queue::Queue;
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let mut tenant = Tenant::generate(N, 7);
    // Every user as the invitation left it: converted, pending acceptance.
    for u in &mut tenant.users {
        u.external_user_state = Some("PendingAcceptance".into());
        u.external_user_state_change_date_time = Some("2026-11-20T10:00:00Z".into());
    }
    let users: Vec<(String, Option<String>)> = tenant
        .users
        .iter()
        .take(N)
        .map(|u| (u.id.clone(), u.mail.clone()))
        .collect();
    let mut config = EmulatorConfig::new(tenant);
    config.bucket_scale = 1_000.0;
    let emu = start(config).await;
    let db = dir.path().join("q.db");
    let run_id = {
        let q = Queue::open(&db).unwrap();
        let run_id = create_csv_run(&q, RunMode::Live, &emu.tenant_id(), &emu.base_url());
        let rows: Vec<NewItem> = users
            .iter()
            .enumerate()
            .map(|(i, (id, _))| item_by_id(i as u64 + 2, id))
            .collect();
        q.insert_items(run_id, &rows, None).unwrap();
        q.finish_ingest(run_id).unwrap();
        let mut after = 0;
        loop {
            let items = q.pending_items(run_id, after, 5_000).unwrap();
            let Some(last) = items.last() else { break };
            after = last.id;
            for item in items {
                let id = item.key.as_ref().unwrap().value().to_string();
                let user = b2b_convert::model::User {
                    id: id.clone(),
                    ..Default::default()
                };
                q.record_lookup(item.id, Some(&user)).unwrap();
                q.mark_in_flight(item.id, "x@fabrikam.example").unwrap();
                let inv = Invitation {
                    id: format!("inv-{id}"),
                    status: "PendingAcceptance".into(),
                    ..Default::default()
                };
                q.record_converted(item.id, Some(&inv), None, None).unwrap();
            }
        }
        q.set_run_status(run_id, b2b_convert::item::RunStatus::Finished)
            .unwrap();
        run_id
    };
    let before = emu.stats();
    let started = std::time::Instant::now();
    let out = run(&emu, &db, &["track", &run_id.to_string()]).await;
    let took = started.elapsed();
    out.assert_exit(0);
    let after = emu.stats();
    let batches =
        requests_to(&after, "POST /v1.0/$batch") - requests_to(&before, "POST /v1.0/$batch");
    let gets = requests_to(&after, "GET /v1.0/users") - requests_to(&before, "GET /v1.0/users");
    let status = status_json(&emu, &db, Some(run_id)).await;
    println!(
        "track of {N} converted users: {batches} $batch + {gets} GET users requests \
         (reference: {N} / 300 = {}), run's own request log {} ; {:.1} s wall; {}",
        N.div_ceil(300),
        status["graphRequests"],
        took.as_secs_f64(),
        out.stdout.trim()
    );
    assert_eq!(status["redemption"]["pendingAcceptance"], N as u64);
    assert_eq!(batches as usize, N.div_ceil(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_finds_who_redeemed_and_names_invitations_that_never_took_effect() {
    let t = Converted::start(160, 31, "", |c| {
        c.not_applied_rate = 0.15;
        c.seed = 9;
    })
    .await;
    let id = t.run_id.to_string();
    let mut applied = BTreeSet::new();
    let mut not_applied = BTreeSet::new();
    for inv in t.emu.invitations() {
        let user = inv["userId"].as_str().unwrap().to_string();
        if inv["applied"] == true {
            applied.insert(user);
        } else {
            not_applied.insert(user);
        }
    }
    assert!(!not_applied.is_empty(), "some invitations were dropped");
    assert_eq!(
        applied
            .union(&not_applied)
            .cloned()
            .collect::<BTreeSet<_>>(),
        t.converted
    );
    // Some partners redeem.
    let redeemed: BTreeSet<String> = applied.iter().take(25).cloned().collect();
    for user in &redeemed {
        assert_eq!(t.emu.redeem(user), Some(200), "redeem {user}");
    }

    let out = t.run(&["track", &id]).await;
    assert_eq!(
        out.code, 3,
        "not-applied users need attention\n{}",
        out.stderr
    );
    for user in &not_applied {
        assert!(out.stderr.contains(user.as_str()), "{user} named loudly");
    }
    let its = items(&t.db, t.run_id);
    let failed: BTreeSet<String> = its
        .iter()
        .filter(|i| i.state == ItemState::Failed && i.error_code.as_deref() == Some("NotApplied"))
        .map(|i| i.user_id.clone().unwrap())
        .collect();
    assert_eq!(
        failed, not_applied,
        "exactly the dropped invitations leave converted"
    );
    assert!(its
        .iter()
        .filter(|i| i.error_code.as_deref() == Some("NotApplied"))
        .all(|i| i.error_message.as_deref().unwrap().contains("request-id")));
    let status = t.status().await;
    let r = &status["redemption"];
    assert_eq!(r["accepted"], redeemed.len() as u64);
    assert_eq!(
        r["pendingAcceptance"],
        (applied.len() - redeemed.len()) as u64
    );
    assert_eq!(r["notApplied"], not_applied.len() as u64);
    assert_eq!(r["untracked"], 0);

    // resend re-invites exactly the pending users; redeemed and not-applied users are left alone.
    t.as_if_waited_after_track(2);
    let before = t.emu.invitations().len();
    let out = t.run(&["resend", &id, "--yes"]).await;
    out.assert_exit(0);
    let resent: Vec<serde_json::Value> = t.emu.invitations()[before..].to_vec();
    let resent_users: BTreeSet<String> = resent
        .iter()
        .map(|i| i["userId"].as_str().unwrap().to_string())
        .collect();
    let pending: BTreeSet<String> = applied.difference(&redeemed).cloned().collect();
    assert_eq!(resent.len(), pending.len(), "once each");
    assert_eq!(resent_users, pending);
    assert!(resent.iter().all(|i| i["resetRedemption"] == true));

    // `retry` invites the not-applied users again.
    let out = t.run(&["retry", &id, "--yes"]).await;
    out.assert_finished();
    let again: BTreeSet<String> = t.emu.invitations()[before + resent.len()..]
        .iter()
        .map(|i| i["userId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(again, not_applied);
}

/// Without a run id, `track` and `export-links` take the latest *live* run even when a dry run
/// came after it; `track --json` and `runs --json` print one JSON object; `export-links` counts
/// and names the converted users whose link was lost with their invitation's answer, and says
/// how to get them one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_and_export_links_default_to_the_latest_live_run_and_name_missing_links() {
    let t = Converted::start(80, 12, "--keep-redeem-links", |c| {
        // Lost answers: those users are converted by reconciliation, without a stored link.
        c.lost_response_rate = 0.25;
    })
    .await;
    let run_id = t.run_id;
    let dry_id = finished_run(&t.emu, &t.db, &t.csv, "--dry-run").await;
    assert!(dry_id > run_id);

    let out = t.run(&["track", "--json"]).await;
    out.assert_exit(0);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["runId"], run_id, "the live run, not the later dry run");
    let figures = ["accepted", "pendingAcceptance", "notApplied", "missing"];
    let tracked: u64 = figures.iter().map(|k| v[k].as_u64().unwrap()).sum();
    assert_eq!(tracked, t.converted.len() as u64);

    let out = t.run(&["runs", "--json"]).await;
    out.assert_exit(0);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["mode"], "live");
    assert_eq!(runs[1]["mode"], "dry_run");
    assert_eq!(runs[0]["states"]["converted"], t.converted.len() as u64);

    let out_path = t.dir.path().join("links.csv");
    let out = t
        .run(&["export-links", "--out", out_path.to_str().unwrap()])
        .await;
    out.assert_exit(0);
    let written = csv::Reader::from_path(&out_path).unwrap().records().count();
    let without: Vec<_> = items_in(&t.db, run_id, ItemState::Converted)
        .into_iter()
        .filter(|i| i.invitation_id.is_none())
        .collect();
    assert_eq!(
        written + out.stderr.matches("\n  ").count(),
        t.converted.len(),
        "{}",
        out.stderr
    );
    assert!(
        written < t.converted.len(),
        "some answers were lost: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "{} converted users of run {run_id} have no stored redeem link",
            t.converted.len() - written
        )),
        "{}",
        out.stderr
    );
    out.assert_stderr_has(&format!("resend {run_id} --only"));
    for i in &without {
        assert!(out
            .stderr
            .contains(i.user_principal_name.as_deref().unwrap()));
    }
}

/// Stdout as the one JSON object it must be.
fn one_json_object(out: &Ran) -> serde_json::Value {
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "one JSON object: {}",
        out.stdout
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_dry_run_only_and_limit_choose_who_and_redeemed_users_are_never_reset() {
    let t = Converted::start(80, 29, "", |_| {}).await;
    assert!(
        t.converted.len() > 30,
        "mostly convertible: {}",
        t.converted.len()
    );
    let id = t.run_id.to_string();
    let out = t.run(&["track", &id]).await;
    out.assert_exit(0);
    let converted: Vec<String> = t.converted.iter().cloned().collect();
    // Three partners redeem after the track: a resend must not reset them.
    let redeemed: BTreeSet<String> = converted.iter().take(3).cloned().collect();
    for user in &redeemed {
        assert_eq!(t.emu.redeem(user), Some(200), "redeem {user}");
    }
    let invited_before = t.emu.invitations().len();

    // --dry-run lists everyone pending per the track, sends and records nothing.
    let out = t.run(&["resend", &id, "--dry-run", "--json"]).await;
    out.assert_exit(0);
    let listed = one_json_object(&out);
    assert_eq!(listed["dryRun"], true);
    assert_eq!(listed["wouldReinvite"], converted.len() as u64);
    assert_eq!(listed["users"].as_array().unwrap().len(), converted.len());
    let out = t.run(&["resend", &id, "--dry-run", "--limit", "4"]).await;
    out.assert_exit(0);
    assert_eq!(
        out.stdout.matches("would re-invite ").count(),
        4,
        "{}",
        out.stdout
    );
    assert_eq!(t.emu.invitations().len(), invited_before);

    // A name the pass does not hold is an error before anything is sent.
    let only = t.dir.path().join("only.txt");
    let stranger = "00000000-0000-4000-8000-000000000000";
    std::fs::write(&only, format!("# pilot\n{}\n{stranger}\n", converted[5])).unwrap();
    let out = t
        .run(&["resend", &id, "--yes", "--only", only.to_str().unwrap()])
        .await;
    out.assert_exit(2);
    out.assert_stderr_has(stranger);
    assert_eq!(t.emu.invitations().len(), invited_before);

    // --only: exactly the two named users (by object id and by UPN), nobody else.
    let upn = t
        .emu
        .user(&converted[6])
        .unwrap()
        .user_principal_name
        .unwrap();
    std::fs::write(
        &only,
        format!("{}   # by id\n\n{}\n", converted[5].to_uppercase(), upn),
    )
    .unwrap();
    let out = t
        .run(&[
            "resend",
            &id,
            "--yes",
            "--json",
            "--only",
            only.to_str().unwrap(),
        ])
        .await;
    out.assert_exit(0);
    let first = one_json_object(&out);
    assert_eq!(first["reinvited"], 2, "{first}");
    let resets = resets_per_user(&t.emu);
    let pilots: BTreeSet<String> = [converted[5].clone(), converted[6].clone()].into();
    assert_eq!(resets.keys().cloned().collect::<BTreeSet<_>>(), pilots);

    // --limit: five more of the same pass.
    let out = t
        .run(&["resend", &id, "--yes", "--json", "--limit", "5"])
        .await;
    out.assert_exit(0);
    let second = one_json_object(&out);
    assert_eq!(second["continued"], true, "{second}");
    assert_eq!(second["passId"], first["passId"]);
    let after_limit = resets_per_user(&t.emu);
    assert_eq!(after_limit.values().sum::<usize>(), 7, "{after_limit:?}");

    // The rest; the users who redeemed since the track are re-read, skipped and never reset.
    let out = t.run(&["resend", &id, "--yes", "--json"]).await;
    out.assert_exit(0);
    let last = one_json_object(&out);
    assert_eq!(last["finished"], true, "{last}");
    assert_eq!(last["left"], 0, "{last}");
    assert_eq!(last["skipped"], redeemed.len() as u64, "{last}");
    let resets = resets_per_user(&t.emu);
    assert!(resets.values().all(|n| *n == 1), "{resets:?}");
    let expected: BTreeSet<String> = converted
        .iter()
        .filter(|u| !redeemed.contains(*u))
        .cloned()
        .collect();
    assert_eq!(resets.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for user in &redeemed {
        assert_eq!(
            t.emu.user(user).unwrap().external_user_state.as_deref(),
            Some("Accepted"),
            "{user} keeps its redemption"
        );
    }
}
