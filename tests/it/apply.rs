//! Issue 18 against the emulator: runs belong to their tenant, `apply` runs exactly the approved
//! plan, `--only` pilots inside one run, and `resume` with other send options keeps a history.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use b2b_convert::emulator::{Emulator, EmulatorConfig, Tenant};
use b2b_convert::item::{ItemState, Reason};
use b2b_convert::model::Domain;
use common::*;
use serde_json::{json, Value};

/// A generated tenant of `n` users and an input CSV over them.
async fn tenant_with_csv(n: usize, seed: u64, dir: &Path) -> (Emulator, PathBuf) {
    let tenant = Tenant::generate(n, seed);
    let csv = dir.join(format!("users-{seed}.csv"));
    tenant.write_csv(&csv).unwrap();
    (start(EmulatorConfig::new(tenant)).await, csv)
}

/// Tenant B: another directory, named fabrikam.
async fn fabrikam(seed: u64) -> Emulator {
    let mut tenant = Tenant::generate(10, seed);
    tenant.domains = vec![
        Domain {
            id: "fabrikam.com".into(),
            is_verified: true,
            is_default: true,
            is_initial: false,
        },
        Domain {
            id: "fabrikam.onmicrosoft.com".into(),
            is_verified: true,
            is_default: false,
            is_initial: true,
        },
    ];
    start(EmulatorConfig::new(tenant)).await
}

/// Sets properties on a user as an administrator would (`POST /_emulator/users/{id}`).
async fn admin_changes(emu: &Emulator, id: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/_emulator/users/{id}", emu.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

fn status_json(out: &Ran) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_with_another_tenants_environment_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let (contoso, csv) = tenant_with_csv(30, 11, dir.path()).await;
    let started = run(
        &contoso,
        &db,
        &[
            "run",
            "--csv",
            csv.to_str().unwrap(),
            "--limit",
            "2",
            "--yes",
        ],
    )
    .await;
    assert_eq!(started.code, 0, "{}\n{}", started.stdout, started.stderr);
    let run_id = started.run_id();
    let status = status_json(&run(&contoso, &db, &["status", &run_id.to_string(), "--json"]).await);
    assert_eq!(status["tenant"]["id"], contoso.tenant_id());
    assert_eq!(status["tenant"]["initialDomain"], "contoso.onmicrosoft.com");
    assert_eq!(status["tenant"]["defaultDomain"], "contoso.com");
    assert_eq!(status["plan"], Value::Null);
    let pending_before = count(&items(&db, run_id), ItemState::Pending);
    assert!(pending_before > 0);

    // The wrong `source`: tenant B's environment loaded.
    let other = fabrikam(12).await;
    assert_ne!(other.tenant_id(), contoso.tenant_id());
    let refused = run(
        &other,
        &db,
        &["resume", &run_id.to_string(), "--limit", "8", "--yes"],
    )
    .await;
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    let line = refused
        .stderr
        .lines()
        .find(|l| l.contains("belongs to tenant"))
        .unwrap_or_else(|| panic!("no refusal line:\n{}", refused.stderr));
    assert!(
        line.contains(&format!(
            "run {run_id} belongs to tenant contoso.onmicrosoft.com ({})",
            contoso.tenant_id()
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "you are signed in to fabrikam.onmicrosoft.com ({})",
            other.tenant_id()
        )),
        "{line}"
    );
    assert!(
        line.contains("sign in to the run's tenant, or start a new run"),
        "{line}"
    );

    // Nothing reached B beyond the token and the domains.
    let stats = other.stats();
    for key in stats["requests"].as_object().unwrap().keys() {
        assert!(
            key == "GET /v1.0/domains" || key.ends_with("/oauth2/v2.0/token"),
            "tenant B was sent {key}"
        );
    }
    assert_eq!(requests_to(&stats, "GET /v1.0/domains"), 1);
    assert!(other.invitations().is_empty());
    // And A's run is as it was.
    assert_eq!(
        count(&items(&db, run_id), ItemState::Pending),
        pending_before
    );
    assert_eq!(count(&items(&db, run_id), ItemState::Failed), 0);

    // Its own tenant continues it.
    let resumed = run(
        &contoso,
        &db,
        &["resume", &run_id.to_string(), "--limit", "0", "--yes"],
    )
    .await;
    assert!(resumed.code == 0 || resumed.code == 3, "{}", resumed.stderr);
    assert_eq!(count(&items(&db, run_id), ItemState::Pending), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_converts_exactly_the_plan_minus_the_users_changed_since() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let (emu, csv) = tenant_with_csv(40, 21, dir.path()).await;
    let plan = run(
        &emu,
        &db,
        &[
            "run",
            "--csv",
            csv.to_str().unwrap(),
            "--dry-run",
            "--silent",
        ],
    )
    .await;
    assert!(plan.code == 0 || plan.code == 3, "{}", plan.stderr);
    let plan_id = plan.run_id();
    let planned: Vec<_> = items(&db, plan_id)
        .into_iter()
        .filter(|i| i.state == ItemState::WouldConvert)
        .collect();
    assert!(planned.len() > 10, "{} would convert", planned.len());

    // Three users change after the board approved the plan.
    let changed: Vec<String> = planned[..3]
        .iter()
        .map(|i| i.user_id.clone().unwrap())
        .collect();
    let old_mail = planned[0].snapshot.as_ref().unwrap().mail.clone().unwrap();
    admin_changes(
        &emu,
        &changed[0],
        json!({"mail": "moved@elsewhere.example"}),
    )
    .await;
    admin_changes(&emu, &changed[1], json!({"accountEnabled": false})).await;
    admin_changes(
        &emu,
        &changed[2],
        json!({"onPremisesUserPrincipalName": "someone@corp.local"}),
    )
    .await;
    // And the source now names someone the board never saw: apply does not read it.
    std::fs::write(&csv, "id\nnot-in-the-plan\n").unwrap();

    let report = dir.path().join("live.md");
    let applied = run(
        &emu,
        &db,
        &[
            "apply",
            &plan_id.to_string(),
            "--yes",
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(applied.code, 3, "{}\n{}", applied.stdout, applied.stderr);
    assert!(applied.stdout.starts_with("run-id: "), "{}", applied.stdout);
    let live_id = applied.run_id();
    assert!(
        applied.stdout.contains(&format!("plan: dry run {plan_id}")),
        "{}",
        applied.stdout
    );
    assert!(
        applied.stdout.contains(&format!(
            "changed since the plan: 3 of {} users",
            planned.len()
        )),
        "{}",
        applied.stdout
    );

    // Exactly the plan minus the three, each invited once, with the plan's options (silent).
    let want: BTreeSet<String> = planned[3..]
        .iter()
        .map(|i| i.user_id.clone().unwrap())
        .collect();
    let invited = invitations_per_user(&emu);
    assert_eq!(invited.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(invited.values().all(|&n| n == 1));
    assert!(emu
        .invitations()
        .iter()
        .all(|inv| inv["sendInvitationMessage"] == false));

    let live = items(&db, live_id);
    assert_eq!(
        live.len(),
        planned.len(),
        "items are the plan's, not the source's"
    );
    assert_eq!(count(&live, ItemState::Converted), planned.len() - 3);
    for id in &changed {
        let item = live
            .iter()
            .find(|i| i.user_id.as_ref() == Some(id))
            .unwrap();
        assert_eq!(item.state, ItemState::Blocked, "{id}");
        assert_eq!(item.reason, Some(Reason::ChangedSincePlan), "{id}");
    }
    let detail = |id: &str| {
        live.iter()
            .find(|i| i.user_id.as_deref() == Some(id))
            .and_then(|i| i.detail.clone())
            .unwrap()
    };
    assert_eq!(
        detail(&changed[0]),
        format!("mail was {old_mail} at the plan, now moved@elsewhere.example")
    );
    assert_eq!(
        detail(&changed[1]),
        "accountEnabled was true at the plan, now false"
    );
    assert!(detail(&changed[2])
        .contains("onPremisesUserPrincipalName was (none) at the plan, now someone@corp.local"));

    let status = status_json(&run(&emu, &db, &["status", &live_id.to_string(), "--json"]).await);
    assert_eq!(status["plan"], plan_id);
    assert_eq!(status["mode"], "live");
    assert_eq!(status["tenant"]["id"], emu.tenant_id());
    assert_eq!(status["reasons"]["changed_since_plan"], 3);

    let md = std::fs::read_to_string(&report).unwrap();
    let plan_section = &md[md.find("## Plan").expect("a plan section")..];
    assert!(
        plan_section.contains(&format!("applies dry run {plan_id} (finished ")),
        "{plan_section}"
    );
    assert!(
        plan_section.contains("moved@elsewhere.example"),
        "{plan_section}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_an_unfinished_a_too_old_a_live_or_a_foreign_plan() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let (emu, csv) = tenant_with_csv(30, 31, dir.path()).await;
    let csv = csv.to_str().unwrap();

    // Not finished: a dry run stopped by --limit still has users to check.
    let partial = run(
        &emu,
        &db,
        &["run", "--csv", csv, "--dry-run", "--limit", "2"],
    )
    .await;
    let partial_id = partial.run_id();
    let refused = run(&emu, &db, &["apply", &partial_id.to_string(), "--yes"]).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("is not finished"),
        "{}",
        refused.stderr
    );

    // Too old: any finished plan is older than --max-age 0.
    let plan = run(&emu, &db, &["run", "--csv", csv, "--dry-run"]).await;
    let plan_id = plan.run_id();
    let refused = run(
        &emu,
        &db,
        &["apply", &plan_id.to_string(), "--yes", "--max-age", "0"],
    )
    .await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--max-age 0"), "{}", refused.stderr);

    // A live run is not a plan.
    let live = run(&emu, &db, &["run", "--csv", csv, "--limit", "1", "--yes"]).await;
    let refused = run(&emu, &db, &["apply", &live.run_id().to_string(), "--yes"]).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    let invited_so_far = emu.invitations().len();

    // Another tenant's sign-in: exit 1, nothing sent there.
    let other = fabrikam(32).await;
    let refused = run(&other, &db, &["apply", &plan_id.to_string(), "--yes"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("belongs to tenant"),
        "{}",
        refused.stderr
    );
    assert!(other.invitations().is_empty());
    assert_eq!(emu.invitations().len(), invited_so_far);

    // None of the refusals left a run behind.
    let runs: Vec<i64> = b2b_convert::queue::Queue::open(&db)
        .unwrap()
        .list_runs()
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(runs, vec![partial_id, plan_id, live.run_id()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_only_pilot_silent_then_resume_no_silent_is_one_run_with_an_option_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let (emu, csv) = tenant_with_csv(30, 41, dir.path()).await;
    let csv = csv.to_str().unwrap();
    let tenant = Tenant::generate(30, 41);
    // Pilot users who agreed to test: far apart in the CSV, named by id and by UPN.
    let convertible: Vec<_> = tenant
        .users
        .iter()
        .filter(|u| {
            u.account_enabled == Some(true)
                && u.on_premises_user_principal_name.is_none()
                && !u.has_enabled_exchange_plan()
                && u.external_user_state.is_none()
                && u.mail.is_some()
        })
        .collect();
    let pilot = [convertible[1], convertible[7], convertible[12]];
    let only = dir.path().join("pilot.txt");
    std::fs::write(
        &only,
        format!(
            "# users who agreed to test\n{}\n{}\n\n{}\n",
            pilot[0].id,
            pilot[1]
                .user_principal_name
                .as_deref()
                .unwrap()
                .to_uppercase(),
            pilot[2].id
        ),
    )
    .unwrap();

    // A name that is not in the run is an error before anything is sent, and leaves no run.
    let typo = dir.path().join("typo.txt");
    std::fs::write(&typo, format!("{}\nnobody@contoso.com\n", pilot[0].id)).unwrap();
    let refused = run(
        &emu,
        &db,
        &[
            "run",
            "--csv",
            csv,
            "--silent",
            "--only",
            typo.to_str().unwrap(),
            "--yes",
        ],
    )
    .await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("nobody@contoso.com"),
        "{}",
        refused.stderr
    );
    assert!(emu.invitations().is_empty());
    assert!(b2b_convert::queue::Queue::open(&db)
        .unwrap()
        .list_runs()
        .unwrap()
        .is_empty());

    let piloted = run(
        &emu,
        &db,
        &[
            "run",
            "--csv",
            csv,
            "--silent",
            "--only",
            only.to_str().unwrap(),
            "--yes",
        ],
    )
    .await;
    assert_eq!(piloted.code, 0, "{}\n{}", piloted.stdout, piloted.stderr);
    let run_id = piloted.run_id();
    let pilot_ids: BTreeSet<String> = pilot.iter().map(|u| u.id.clone()).collect();
    let invited: BTreeSet<String> = invitations_per_user(&emu).into_keys().collect();
    assert_eq!(invited, pilot_ids, "only the named users");
    let after_pilot = items(&db, run_id);
    assert_eq!(count(&after_pilot, ItemState::Converted), 3);
    assert_eq!(
        count(&after_pilot, ItemState::Pending) + 3 + count(&after_pilot, ItemState::Blocked),
        after_pilot.len(),
        "the others stay pending"
    );

    let report = dir.path().join("run.md");
    let resumed = run(
        &emu,
        &db,
        &[
            "resume",
            &run_id.to_string(),
            "--no-silent",
            "--yes",
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .await;
    assert!(resumed.code == 0 || resumed.code == 3, "{}", resumed.stderr);
    let all = items(&db, run_id);
    assert_eq!(count(&all, ItemState::Pending), 0);
    for inv in emu.invitations() {
        let user = inv["userId"].as_str().unwrap();
        assert_eq!(
            inv["sendInvitationMessage"],
            !pilot_ids.contains(user),
            "silent for the pilot only: {user}"
        );
    }
    assert_eq!(
        emu.invitations().len(),
        count(&all, ItemState::Converted),
        "one run, every conversion invited once"
    );

    let md = std::fs::read_to_string(&report).unwrap();
    let history = &md[md.find("## Option history").expect("an option history")..];
    assert!(
        history.contains("- items 1–3: silent (no invitation email) (as the run started, "),
        "{history}"
    );
    assert!(
        history.contains("- items 4–…: with Microsoft's invitation email (changed at "),
        "{history}"
    );
    // The pilot's stretch says it was one; the rest of the run was not scoped.
    let lines: Vec<&str> = history
        .lines()
        .filter(|l| l.starts_with("- items"))
        .collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(
        lines[0].ends_with("; pilot: 3 named users (--only))"),
        "{}",
        lines[0]
    );
    assert!(!lines[1].contains("pilot"), "{}", lines[1]);
    let json_path = dir.path().join("run.json");
    let written = run(
        &emu,
        &db,
        &[
            "report",
            &run_id.to_string(),
            "--out",
            json_path.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(written.code, 0, "{}", written.stderr);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let h = v["optionHistory"].as_array().unwrap();
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(
        (h[0]["silent"].clone(), h[0]["sentBefore"].clone()),
        (json!(true), json!(0))
    );
    assert_eq!(
        (h[1]["silent"].clone(), h[1]["sentBefore"].clone()),
        (json!(false), json!(3))
    );
}

/// Runs the binary with a pseudo-terminal as stdin (so it asks for confirmation) and `answer`
/// typed into it.
async fn run_answering(emu: &Emulator, db: &Path, args: &[&str], answer: &str) -> Ran {
    use std::io::Write as _;
    use std::os::fd::FromRawFd as _;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new descriptors into the integers; the others may be null.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty");
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let mut cmd = command(emu, db, args);
    cmd.stdin(std::process::Stdio::from(slave));
    let child = cmd.spawn().expect("binary starts");
    master.write_all(answer.as_bytes()).unwrap();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("the prompted command ends")
        .unwrap();
    drop(master);
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_names_the_tenant_and_this_invocations_users_and_no_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let (emu, csv) = tenant_with_csv(30, 51, dir.path()).await;
    let csv = csv.to_str().unwrap();
    let tenant = format!("contoso.onmicrosoft.com ({})", emu.tenant_id());

    let declined = run_answering(&emu, &db, &["run", "--csv", csv, "--limit", "3"], "n\n").await;
    assert_eq!(declined.code, 1, "{}\n{}", declined.stdout, declined.stderr);
    assert!(
        declined.stderr.contains(&format!(
            "About to CONVERT up to 3 users of tenant {tenant}"
        )),
        "{}",
        declined.stderr
    );
    assert!(
        declined.stderr.contains("declined: nothing was sent"),
        "{}",
        declined.stderr
    );
    assert!(emu.invitations().is_empty());
    let queue = b2b_convert::queue::Queue::open(&db).unwrap();
    assert!(
        queue.list_runs().unwrap().is_empty(),
        "no run left to resume"
    );

    // A run whose pilot is two named users: the prompt counts those two, not the run.
    let started = run(&emu, &db, &["run", "--csv", csv, "--limit", "1", "--yes"]).await;
    let run_id = started.run_id();
    let pending: Vec<_> = items(&db, run_id)
        .into_iter()
        .filter(|i| i.state == ItemState::Pending)
        .collect();
    let only = dir.path().join("two.txt");
    std::fs::write(
        &only,
        format!(
            "{}\n{}\n",
            pending[0].key.as_ref().unwrap().value(),
            pending[5].key.as_ref().unwrap().value()
        ),
    )
    .unwrap();
    let invited = emu.invitations().len();
    let declined = run_answering(
        &emu,
        &db,
        &[
            "resume",
            &run_id.to_string(),
            "--limit",
            "0",
            "--only",
            only.to_str().unwrap(),
        ],
        "no\n",
    )
    .await;
    assert_eq!(declined.code, 1, "{}", declined.stderr);
    assert!(
        declined.stderr.contains(&format!(
            "About to CONVERT up to 2 users of tenant {tenant}"
        )),
        "{}",
        declined.stderr
    );
    assert_eq!(emu.invitations().len(), invited, "nothing was sent");
    assert_eq!(
        count(&items(&db, run_id), ItemState::Pending),
        pending.len(),
        "the run is as it was"
    );

    let accepted = run_answering(
        &emu,
        &db,
        &[
            "resume",
            &run_id.to_string(),
            "--limit",
            "0",
            "--only",
            only.to_str().unwrap(),
        ],
        "yes\n",
    )
    .await;
    assert_eq!(accepted.code, 0, "{}", accepted.stderr);
    assert_eq!(emu.invitations().len(), invited + 2);
}

/// The binary in `cwd` with only a secret in its environment: everything else comes from the
/// profile the arguments name.
async fn run_in(cwd: &Path, secret: &str, args: &[&str]) -> Ran {
    let out = tokio::process::Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", cwd)
        .env("AZURE_CLIENT_SECRET", secret)
        .env("B2B_BACKOFF_BASE_MS", "20")
        .current_dir(cwd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, out)
        .await
        .expect("command ends")
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_keep_two_tenants_queues_apart_and_never_hold_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (contoso, csv) = tenant_with_csv(20, 61, dir.path()).await;
    let fabrikam = fabrikam(62).await;
    let env = |emu: &Emulator, k: &str| common::raw::env(emu, k);
    let profile = |emu: &Emulator| {
        format!(
            "tenant_id = \"{}\"\nclient_id = \"{}\"\ngraph_url = \"{}\"\nlogin_url = \"{}\"\n",
            emu.tenant_id(),
            env(emu, "AZURE_CLIENT_ID"),
            emu.base_url(),
            emu.base_url()
        )
    };
    std::fs::write(
        dir.path().join("b2b-convert.toml"),
        format!(
            "# one table per customer\n[profiles.contoso]\n{}\n[profiles.fabrikam]\n{}",
            profile(&contoso),
            profile(&fabrikam)
        ),
    )
    .unwrap();
    let csv = csv.to_str().unwrap();
    let a_secret = env(&contoso, "AZURE_CLIENT_SECRET");
    let b_secret = env(&fabrikam, "AZURE_CLIENT_SECRET");

    let a = run_in(
        dir.path(),
        &a_secret,
        &["--profile", "contoso", "run", "--csv", csv, "--dry-run"],
    )
    .await;
    assert!(a.code == 0 || a.code == 3, "{}\n{}", a.stdout, a.stderr);
    assert!(
        dir.path().join("contoso.db").is_file(),
        "the profile's own database"
    );
    let none_yet = run_in(dir.path(), &b_secret, &["--profile=fabrikam", "runs"]).await;
    assert_eq!(
        none_yet.code, 1,
        "fabrikam has no queue yet: {}",
        none_yet.stdout
    );
    assert!(!dir.path().join("fabrikam.db").exists());
    assert_eq!(requests_to(&fabrikam.stats(), "GET /v1.0/users"), 0);
    let b = run_in(
        dir.path(),
        &b_secret,
        &[
            "--profile=fabrikam",
            "run",
            "--filter",
            "accountEnabled eq true",
            "--dry-run",
        ],
    )
    .await;
    assert!(b.code == 0 || b.code == 3, "{}\n{}", b.stdout, b.stderr);
    assert!(dir.path().join("fabrikam.db").is_file());
    // Each queue holds its own tenant's run only.
    for (name, secret, emu, source) in [
        ("contoso", &a_secret, &contoso, "csv:"),
        ("fabrikam", &b_secret, &fabrikam, "filter:"),
    ] {
        let runs = b2b_convert::queue::Queue::open(&dir.path().join(format!("{name}.db")))
            .unwrap()
            .list_runs()
            .unwrap();
        assert_eq!(runs.len(), 1, "{name}");
        assert!(runs[0].source.to_string().starts_with(source), "{name}");
        assert_eq!(
            runs[0].tenant.as_ref().unwrap().id,
            emu.tenant_id(),
            "{name}"
        );
        let status = run_in(dir.path(), secret, &["--profile", name, "status", "--json"]).await;
        assert_eq!(
            status_json(&status)["tenant"]["id"],
            emu.tenant_id(),
            "{name}"
        );
    }

    let listed = run_in(dir.path(), "", &["profiles"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    for want in [
        "contoso",
        "fabrikam",
        "contoso.db",
        "fabrikam.db",
        &contoso.tenant_id(),
    ] {
        assert!(listed.stdout.contains(want), "{want}: {}", listed.stdout);
    }
    assert!(!listed.stdout.contains(&a_secret));

    // The command line beats the profile.
    let elsewhere = dir.path().join("elsewhere.db");
    let flagged = run_in(
        dir.path(),
        &a_secret,
        &[
            "--profile",
            "contoso",
            "--db",
            elsewhere.to_str().unwrap(),
            "run",
            "--csv",
            csv,
            "--dry-run",
        ],
    )
    .await;
    assert!(flagged.code == 0 || flagged.code == 3, "{}", flagged.stderr);
    assert!(elsewhere.is_file());

    // A secret in the file is refused, naming the line, and never printed.
    let leaky = tempfile::tempdir().unwrap();
    std::fs::write(
        leaky.path().join("b2b-convert.toml"),
        "[profiles.x]\ntenant_id = \"t\"\nclient_secret = \"s3cr3t-value\"\n",
    )
    .unwrap();
    let refused = run_in(leaky.path(), "", &["--profile", "x", "runs"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("line 3"), "{}", refused.stderr);
    assert!(!refused.stderr.contains("s3cr3t"), "{}", refused.stderr);
    let unknown = run_in(dir.path(), "", &["--profile", "northwind", "runs"]).await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("no profile `northwind`"),
        "{}",
        unknown.stderr
    );
}

/// `--limit` counts users of one invocation: a pilot of 2, then a plain `resume`, converts
/// everyone else; nothing of the pilot's limit is left in the run's options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_belongs_to_its_invocation_and_a_plain_resume_works_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let (emu, csv) = tenant_with_csv(20, 61, dir.path()).await;
    let csv = csv.to_str().unwrap();
    let piloted = run(&emu, &db, &["run", "--csv", csv, "--limit", "2", "--yes"]).await;
    assert!([0, 3].contains(&piloted.code), "{}", piloted.stderr);
    let run_id = piloted.run_id();
    assert_eq!(emu.invitations().len(), 2, "the pilot's two users");
    let pending = count(&items(&db, run_id), ItemState::Pending);
    assert!(pending > 2, "users are left for the resume: {pending}");

    let resumed = run(&emu, &db, &["resume", &run_id.to_string(), "--yes"]).await;
    assert!([0, 3].contains(&resumed.code), "{}", resumed.stderr);
    let all = items(&db, run_id);
    assert_eq!(count(&all, ItemState::Pending), 0, "no limit was inherited");
    assert_eq!(emu.invitations().len(), count(&all, ItemState::Converted));
    let run = b2b_convert::queue::Queue::open(&db)
        .unwrap()
        .run(run_id)
        .unwrap()
        .unwrap();
    assert_eq!(run.options.limit, None);
}

/// A planned user deleted before the apply changed since the plan (its verdict did): it ends
/// `blocked` `changed_since_plan` "deleted since the plan", and nothing is sent for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_between_plan_and_apply_ends_changed_since_plan() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let (emu, csv) = tenant_with_csv(20, 71, dir.path()).await;
    let csv = csv.to_str().unwrap();
    let plan = run(&emu, &db, &["run", "--csv", csv, "--dry-run"]).await;
    assert!([0, 3].contains(&plan.code), "{}", plan.stderr);
    let planned: Vec<_> = items(&db, plan.run_id())
        .into_iter()
        .filter(|i| i.state == ItemState::WouldConvert)
        .collect();
    assert!(planned.len() >= 3, "{} would convert", planned.len());
    let deleted = planned[1].user_id.clone().unwrap();
    assert!(emu.delete_user(&deleted));

    let applied = run(&emu, &db, &["apply", &plan.run_id().to_string(), "--yes"]).await;
    assert_eq!(applied.code, 3, "{}\n{}", applied.stdout, applied.stderr);
    let live = items(&db, applied.run_id());
    let gone = live
        .iter()
        .find(|i| i.user_id.as_deref() == Some(deleted.as_str()))
        .unwrap();
    assert_eq!(gone.state, ItemState::Blocked, "{gone:?}");
    assert_eq!(gone.reason, Some(Reason::ChangedSincePlan), "{gone:?}");
    assert!(
        gone.detail
            .as_deref()
            .unwrap()
            .starts_with("deleted since the plan"),
        "{gone:?}"
    );
    assert_eq!(count(&live, ItemState::Converted), planned.len() - 1);
    assert!(!invitations_per_user(&emu).contains_key(&deleted));
}
