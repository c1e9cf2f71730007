//! Issue 18 against the emulator: runs belong to their tenant, `apply` runs exactly the approved
//! plan, `--only` pilots inside one run, and `resume` with other send options keeps a history.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use b2b_convert::emulator::{Emulator, EmulatorConfig, Tenant};
use b2b_convert::item::{ItemRecord, ItemState, Reason};
use b2b_convert::model::Domain;
use common::*;
use serde_json::{json, Value};

/// An emulator of a generated tenant of `n` users, and an input CSV over them.
async fn tenant_with_csv(n: usize, seed: u64, dir: &Path) -> (Emulator, PathBuf) {
    let (tenant, csv) = generated(n, seed, dir);
    (start(EmulatorConfig::new(tenant)).await, csv)
}

/// A plan: a generated tenant of `n` users with its CSV in `dir` (see [`tenant_with_csv`]) and
/// its dry run `--dry-run FLAGS…` into `db`, finished. The emulator, the CSV, the plan's run id
/// and the items it would convert.
async fn plan(
    n: usize,
    seed: u64,
    dir: &Path,
    db: &Path,
    flags: &str,
) -> (Emulator, PathBuf, i64, Vec<ItemRecord>) {
    let (emu, csv) = tenant_with_csv(n, seed, dir).await;
    let plan_id = finished_run(&emu, db, &csv, &format!("--dry-run {flags}")).await;
    let planned = items_in(db, plan_id, ItemState::WouldConvert);
    (emu, csv, plan_id, planned)
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

/// Runs `args… --report MD_PATH`: the outcome, and the Markdown report the command wrote.
async fn run_with_report(
    emu: &Emulator,
    db: &Path,
    args: &[&str],
    md_path: &Path,
) -> (Ran, String) {
    let mut args = args.to_vec();
    args.extend(["--report", md_path.to_str().unwrap()]);
    let out = run(emu, db, &args).await;
    let md = std::fs::read_to_string(md_path)
        .unwrap_or_else(|e| panic!("{}: {e}\nstderr:\n{}", md_path.display(), out.stderr));
    (out, md)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_with_another_tenants_environment_is_refused_before_anything_is_sent() {
    let (dir, db) = temp_db();
    let (contoso, csv) = tenant_with_csv(30, 11, dir.path()).await;
    let started = run_csv(&contoso, &db, &csv, "--limit 2 --yes").await;
    started.assert_exit(0);
    let run_id = started.run_id();
    let id = run_id.to_string();
    let status = status_json(&contoso, &db, Some(run_id)).await;
    assert_eq!(status["tenant"]["id"], contoso.tenant_id());
    assert_eq!(status["tenant"]["initialDomain"], "contoso.onmicrosoft.com");
    assert_eq!(status["tenant"]["defaultDomain"], "contoso.com");
    assert_eq!(status["plan"], Value::Null);
    let pending_before = count(&items(&db, run_id), ItemState::Pending);
    assert!(pending_before > 0);

    // The wrong `source`: tenant B's environment loaded.
    let other = fabrikam(12).await;
    assert_ne!(other.tenant_id(), contoso.tenant_id());
    let refused = run(&other, &db, &["resume", &id, "--limit", "8", "--yes"]).await;
    refused.assert_exit(1);
    let line = refused
        .stderr
        .lines()
        .find(|l| l.contains("belongs to tenant"))
        .unwrap_or_else(|| panic!("no refusal line:\n{}", refused.stderr));
    let (contoso_id, other_id) = (contoso.tenant_id(), other.tenant_id());
    for part in [
        format!("run {run_id} belongs to tenant contoso.onmicrosoft.com ({contoso_id})"),
        format!("you are signed in to fabrikam.onmicrosoft.com ({other_id})"),
        "sign in to the run's tenant, or start a new run".to_string(),
    ] {
        assert_has(line, &part);
    }

    // Nothing reached B beyond the token and the domains.
    assert_only_sign_in_and_domains(&other);
    assert_eq!(requests_to(&other.stats(), "GET /v1.0/domains"), 1);
    assert!(other.invitations().is_empty());
    // And A's run is as it was.
    assert_eq!(
        count(&items(&db, run_id), ItemState::Pending),
        pending_before
    );
    assert_eq!(count(&items(&db, run_id), ItemState::Failed), 0);

    // Its own tenant continues it.
    let resumed = run(&contoso, &db, &["resume", &id, "--limit", "0", "--yes"]).await;
    resumed.assert_finished();
    assert_eq!(count(&items(&db, run_id), ItemState::Pending), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_converts_exactly_the_plan_minus_the_users_changed_since() {
    let (dir, db) = temp_db();
    let (emu, csv, plan_id, planned) = plan(40, 21, dir.path(), &db, "--silent").await;
    assert!(planned.len() > 10, "{} would convert", planned.len());

    // Three users change after the board approved the plan.
    let changed: Vec<String> = planned[..3]
        .iter()
        .map(|i| i.user_id.clone().unwrap())
        .collect();
    let old_mail = planned[0].snapshot.as_ref().unwrap().mail.clone().unwrap();
    admin_set(
        &emu,
        &changed[0],
        json!({"mail": "moved@elsewhere.example"}),
    )
    .await;
    admin_set(&emu, &changed[1], json!({"accountEnabled": false})).await;
    admin_set(
        &emu,
        &changed[2],
        json!({"onPremisesUserPrincipalName": "someone@corp.local"}),
    )
    .await;
    // And the source now names someone the board never saw: apply does not read it.
    std::fs::write(&csv, "id\nnot-in-the-plan\n").unwrap();

    let apply = ["apply", &plan_id.to_string(), "--yes"];
    let (applied, md) = run_with_report(&emu, &db, &apply, &dir.path().join("live.md")).await;
    applied.assert_exit(3);
    assert!(applied.stdout.starts_with("run-id: "), "{}", applied.stdout);
    let live_id = applied.run_id();
    applied.assert_stdout_has(&format!("plan: dry run {plan_id}"));
    assert!(
        applied.stdout.contains(&format!(
            "changed since the plan: 3 of {} users",
            planned.len()
        )),
        "{}",
        applied.stdout
    );

    // Exactly the plan minus the three, each invited once, with the plan's options (silent).
    let want = user_ids(&planned[3..], ItemState::WouldConvert);
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

    let status = status_json(&emu, &db, Some(live_id)).await;
    assert_eq!(status["plan"], plan_id);
    assert_eq!(status["mode"], "live");
    assert_eq!(status["tenant"]["id"], emu.tenant_id());
    assert_eq!(status["reasons"]["changed_since_plan"], 3);

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
    let (dir, db) = temp_db();
    let (emu, csv) = tenant_with_csv(30, 31, dir.path()).await;

    // Not finished: a dry run stopped by --limit still has users to check.
    let partial = run_csv(&emu, &db, &csv, "--dry-run --limit 2").await;
    let partial_id = partial.run_id();
    let refused = run(&emu, &db, &["apply", &partial_id.to_string(), "--yes"]).await;
    refused.assert_exit(2);
    refused.assert_stderr_has("is not finished");

    // Too old: any finished plan is older than --max-age 0.
    let plan_id = run_csv(&emu, &db, &csv, "--dry-run").await.run_id();
    let plan = plan_id.to_string();
    let refused = run(&emu, &db, &["apply", &plan, "--yes", "--max-age", "0"]).await;
    refused.assert_exit(2);
    refused.assert_stderr_has("--max-age 0");

    // A live run is not a plan.
    let live = run_csv(&emu, &db, &csv, "--limit 1 --yes").await;
    let refused = run(&emu, &db, &["apply", &live.run_id().to_string(), "--yes"]).await;
    refused.assert_exit(2);
    let invited_so_far = emu.invitations().len();

    // Another tenant's sign-in: exit 1, nothing sent there.
    let other = fabrikam(32).await;
    let refused = run(&other, &db, &["apply", &plan, "--yes"]).await;
    refused.assert_exit(1);
    refused.assert_stderr_has("belongs to tenant");
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
    let (dir, db) = temp_db();
    let (emu, csv) = tenant_with_csv(30, 41, dir.path()).await;
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
    let mut args = run_args(&csv, "--silent --yes");
    args.extend(["--only", typo.to_str().unwrap()]);
    let refused = run(&emu, &db, &args).await;
    refused.assert_exit(2);
    refused.assert_stderr_has("nobody@contoso.com");
    assert!(emu.invitations().is_empty());
    assert!(b2b_convert::queue::Queue::open(&db)
        .unwrap()
        .list_runs()
        .unwrap()
        .is_empty());

    let mut args = run_args(&csv, "--silent --yes");
    args.extend(["--only", only.to_str().unwrap()]);
    let piloted = run(&emu, &db, &args).await;
    piloted.assert_exit(0);
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

    let resume = ["resume", &run_id.to_string(), "--no-silent", "--yes"];
    let (resumed, md) = run_with_report(&emu, &db, &resume, &dir.path().join("run.md")).await;
    resumed.assert_finished();
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
    let json = report(&emu, &db, run_id, &dir.path().join("run.json"), &[]).await;
    let v: Value = serde_json::from_str(&json).unwrap();
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
    let out = output_of(child).await;
    drop(master);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_names_the_tenant_and_this_invocations_users_and_no_leaves_nothing() {
    let (dir, db) = temp_db();
    let (emu, csv) = tenant_with_csv(30, 51, dir.path()).await;
    let tenant = format!("contoso.onmicrosoft.com ({})", emu.tenant_id());

    let args = run_args(&csv, "--limit 3");
    let declined = run_answering(&emu, &db, &args, "n\n").await;
    declined.assert_exit(1);
    declined.assert_stderr_has(&format!(
        "About to CONVERT up to 3 users of tenant {tenant}"
    ));
    declined.assert_stderr_has("declined: nothing was sent");
    assert!(emu.invitations().is_empty());
    let queue = b2b_convert::queue::Queue::open(&db).unwrap();
    assert!(
        queue.list_runs().unwrap().is_empty(),
        "no run left to resume"
    );

    // A run whose pilot is two named users: the prompt counts those two, not the run.
    let started = run_csv(&emu, &db, &csv, "--limit 1 --yes").await;
    let run_id = started.run_id();
    let pending = items_in(&db, run_id, ItemState::Pending);
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
    let id = run_id.to_string();
    let resume_pilot = [
        "resume",
        &id,
        "--limit",
        "0",
        "--only",
        only.to_str().unwrap(),
    ];
    let declined = run_answering(&emu, &db, &resume_pilot, "no\n").await;
    declined.assert_exit(1);
    declined.assert_stderr_has(&format!(
        "About to CONVERT up to 2 users of tenant {tenant}"
    ));
    assert_eq!(emu.invitations().len(), invited, "nothing was sent");
    assert_eq!(
        count(&items(&db, run_id), ItemState::Pending),
        pending.len(),
        "the run is as it was"
    );

    let accepted = run_answering(&emu, &db, &resume_pilot, "yes\n").await;
    accepted.assert_exit(0);
    assert_eq!(emu.invitations().len(), invited + 2);
}

/// The binary in `cwd` with only a secret in its environment: everything else comes from the
/// profile the arguments name.
async fn run_in(cwd: &Path, secret: &str, args: &[&str]) -> Ran {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", cwd)
        .env("AZURE_CLIENT_SECRET", secret)
        .env("B2B_BACKOFF_BASE_MS", "20")
        .current_dir(cwd)
        .args(args)
        .stdin(std::process::Stdio::null());
    run_command(cmd).await
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
    a.assert_finished();
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
    b.assert_finished();
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
        assert_eq!(status.json()["tenant"]["id"], emu.tenant_id(), "{name}");
    }

    let listed = run_in(dir.path(), "", &["profiles"]).await;
    listed.assert_exit(0);
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
    flagged.assert_finished();
    assert!(elsewhere.is_file());

    // A secret in the file is refused, naming the line, and never printed.
    let leaky = tempfile::tempdir().unwrap();
    std::fs::write(
        leaky.path().join("b2b-convert.toml"),
        "[profiles.x]\ntenant_id = \"t\"\nclient_secret = \"s3cr3t-value\"\n",
    )
    .unwrap();
    let refused = run_in(leaky.path(), "", &["--profile", "x", "runs"]).await;
    refused.assert_exit(1);
    refused.assert_stderr_has("line 3");
    assert!(!refused.stderr.contains("s3cr3t"), "{}", refused.stderr);
    let unknown = run_in(dir.path(), "", &["--profile", "northwind", "runs"]).await;
    assert_eq!(unknown.code, 1);
    unknown.assert_stderr_has("no profile `northwind`");
}

/// `--limit` counts users of one invocation: a pilot of 2, then a plain `resume`, converts
/// everyone else; nothing of the pilot's limit is left in the run's options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_belongs_to_its_invocation_and_a_plain_resume_works_everyone() {
    let (dir, db) = temp_db();
    let (emu, csv) = tenant_with_csv(20, 61, dir.path()).await;
    let run_id = finished_run(&emu, &db, &csv, "--limit 2 --yes").await;
    assert_eq!(emu.invitations().len(), 2, "the pilot's two users");
    let pending = count(&items(&db, run_id), ItemState::Pending);
    assert!(pending > 2, "users are left for the resume: {pending}");

    run(&emu, &db, &["resume", &run_id.to_string(), "--yes"])
        .await
        .assert_finished();
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
    let (dir, db) = temp_db();
    let (emu, _csv, plan_id, planned) = plan(20, 71, dir.path(), &db, "").await;
    assert!(planned.len() >= 3, "{} would convert", planned.len());
    let deleted = planned[1].user_id.clone().unwrap();
    assert!(emu.delete_user(&deleted));

    let applied = run(&emu, &db, &["apply", &plan_id.to_string(), "--yes"]).await;
    applied.assert_exit(3);
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
