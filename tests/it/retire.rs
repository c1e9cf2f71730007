//! `retire` against the emulator over loopback (issue 19's done-when): a run of 600 generated
//! users, half redeemed, retired through three SIGKILLs and lost answers, leaves exactly one
//! password change and one revocation per redeemed cloud-only user and none for anyone else; no
//! password the emulator received is in the database, its WAL, the logs at `-vv` in both
//! formats, or any report format; without the role nothing is written and the checklist names
//! it; `track` and status follow the retirement.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::Duration;

use b2b_convert::emulator::{EmulatorConfig, Tenant, DEFAULT_APP_ROLES};
use b2b_convert::item::ItemState;
use serde_json::Value;
use tokio::io::AsyncReadExt as _;

use crate::common;

use common::{admin_set, command, items_in, run, run_csv, start};

const USER_ADMIN: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";

fn config(tenant: Tenant, wids: &[&str]) -> EmulatorConfig {
    let mut config = EmulatorConfig::new(tenant);
    // Graph's bucket shapes, scaled so no test waits on wall-clock throttling.
    config.bucket_scale = 50.0;
    config.app_roles = format!(
        "{DEFAULT_APP_ROLES},User-PasswordProfile.ReadWrite.All,User.RevokeSessions.All,Directory.Read.All"
    )
    .split(',')
    .map(str::to_string)
    .collect();
    config.app_directory_roles = wids.iter().map(|w| w.to_string()).collect();
    config
}

/// Converts the tenant's convertible users (run 1) and returns their object ids, in item order.
async fn convert_all(
    emu: &b2b_convert::emulator::Emulator,
    dir: &Path,
    tenant: &Tenant,
) -> Vec<String> {
    let csv = dir.join("users.csv");
    tenant.write_csv(&csv).unwrap();
    let db = dir.join("q.db");
    let r = run_csv(
        emu,
        &db,
        &csv,
        "--yes --silent --rate 400 --concurrency 16 --max-attempts 12",
    )
    .await;
    r.assert_finished();
    items_in(&db, 1, ItemState::Converted)
        .into_iter()
        .map(|i| i.user_id.unwrap())
        .collect()
}

fn passwords(emu: &b2b_convert::emulator::Emulator) -> Vec<String> {
    emu.secrets()
        .iter()
        .map(|s| s["password"].as_str().unwrap().to_string())
        .collect()
}

/// Panics when any of `secrets` occurs in `bytes` (named `what`).
fn assert_no_secret(what: &str, bytes: &[u8], secrets: &[String]) {
    for s in secrets {
        let hit = bytes.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(!hit, "a password the emulator received is in {what}");
    }
}

fn assert_files_clean(db: &Path, secrets: &[String]) {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    for path in [db.to_path_buf(), wal.into()] {
        if let Ok(bytes) = std::fs::read(&path) {
            assert_no_secret(&path.display().to_string(), &bytes, secrets);
        }
    }
}

fn per_user(list: &[Value], filter: impl Fn(&Value) -> bool) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for v in list.iter().filter(|v| filter(v)) {
        *m.entry(v["userId"].as_str().unwrap().to_lowercase())
            .or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_through_three_sigkills_writes_each_redeemed_cloud_user_once_and_no_password_anywhere(
) {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Tenant::generate(600, 19);
    let admins: BTreeSet<String> = tenant
        .directory_roles
        .keys()
        .map(|k| k.to_lowercase())
        .collect();
    let mut cfg = config(tenant.clone(), &[USER_ADMIN]);
    cfg.lost_response_rate = 0.1;
    cfg.seed = 5;
    let emu = start(cfg).await;
    let converted = convert_all(&emu, dir.path(), &tenant).await;
    assert!(
        converted.len() > 200,
        "most users convert: {}",
        converted.len()
    );

    // Half redeem; three of those are synced from on-premises (Graph cannot write them).
    let redeemed: Vec<String> = converted.iter().step_by(2).cloned().collect();
    for id in &redeemed {
        assert_eq!(emu.redeem(id), Some(200), "{id} redeems");
    }
    let synced: Vec<String> = redeemed
        .iter()
        .skip(1)
        .step_by(40)
        .take(3)
        .cloned()
        .collect();
    for id in &synced {
        admin_set(&emu, id, serde_json::json!({"onPremisesSyncEnabled": true})).await;
    }
    let expected: BTreeSet<String> = redeemed
        .iter()
        .map(|id| id.to_lowercase())
        .filter(|id| !synced.iter().any(|s| s.eq_ignore_ascii_case(id)) && !admins.contains(id))
        .collect();
    let privileged: BTreeSet<String> = redeemed
        .iter()
        .map(|id| id.to_lowercase())
        .filter(|id| admins.contains(id))
        .collect();
    assert!(
        !privileged.is_empty(),
        "the seed converts and redeems an admin-role holder"
    );
    let db = dir.path().join("q.db");
    let mut logs: Vec<u8> = Vec::new();
    for fraction in [0.2, 0.45, 0.7] {
        let target = (expected.len() as f64 * fraction) as usize;
        // `-vv` is the most verbose level only without the harness's RUST_LOG.
        let mut child = command(&emu, &db, &["-vv", "retire", "1", "--yes"])
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            buf
        });
        let mut polls = 0;
        while emu.secrets().len() < target && polls < 6_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            polls += 1;
        }
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        let err = reader.await.unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "died of SIGKILL, not ended: {status:?}\n{}",
            String::from_utf8_lossy(&err)
        );
        logs.extend(err);
        // The WAL a killed process leaves behind holds no password either.
        assert_files_clean(&db, &passwords(&emu));
    }
    let out = command(
        &emu,
        &db,
        &[
            "-vv",
            "--log-format",
            "json",
            "retire",
            "1",
            "--yes",
            "--json",
        ],
    )
    .env_remove("RUST_LOG")
    .output();
    let out = tokio::time::timeout(common::COMMAND_TIMEOUT, out)
        .await
        .unwrap()
        .unwrap();
    let last = common::Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // At trace level the log names the steps it took: the password never.
    assert!(
        last.stderr.contains("\"level\":\"TRACE\"") || last.stderr.contains("\"level\":\"DEBUG\""),
        "{}",
        &last.stderr[..last.stderr.len().min(2000)]
    );
    assert_eq!(
        last.code, 3,
        "unredeemed, synced and admin users are left: exit 3\n{}\n{}",
        last.stdout, last.stderr
    );
    logs.extend(last.stderr.as_bytes());
    let summary: Value = serde_json::from_str(last.stdout.trim()).unwrap();
    assert_eq!(summary["left"], 0, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let synced_named: BTreeSet<String> = common::elements(&summary["syncedUsers"])
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let synced_upns: BTreeSet<String> = synced
        .iter()
        .map(|id| emu.user(id).unwrap().user_principal_name.unwrap())
        .collect();
    assert_eq!(
        synced_named, synced_upns,
        "synced users are listed for `scripts`"
    );
    assert_eq!(summary["privileged"], privileged.len() as u64, "{summary}");

    // Exactly one password change and one revocation per redeemed cloud-only user.
    let patches = emu.patches();
    let pw = per_user(&patches, |p| p["property"] == "passwordProfile");
    let revoked = per_user(&emu.revocations(), |_| true);
    let once: BTreeMap<String, usize> = expected.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(
        pw, once,
        "one password change per redeemed cloud-only user, none for anyone else"
    );
    assert_eq!(
        revoked, once,
        "one revocation per redeemed cloud-only user, none for anyone else"
    );
    let secrets = passwords(&emu);
    assert_eq!(secrets.len(), expected.len());
    assert!(secrets.iter().all(|s| s.chars().count() >= 64));

    // Status follows; then `track` sees one synced user's on-premises password change.
    let status = run(&emu, &db, &["status", "1", "--json"]).await;
    let v: Value = serde_json::from_str(&status.stdout).unwrap();
    let retired = &v["retired"];
    assert_eq!(retired["passwords"], expected.len() as u64, "{retired}");
    assert_eq!(retired["sessions"], expected.len() as u64, "{retired}");
    assert_eq!(
        retired["awaitingRedemption"],
        (converted.len() - redeemed.len()) as u64,
        "{retired}"
    );
    assert_eq!(retired["onPremises"]["notYet"], 3, "{retired}");
    admin_set(
        &emu,
        &synced[0],
        serde_json::json!({"lastPasswordChangeDateTime": "2099-01-01T00:00:00Z"}),
    )
    .await;
    let tracked = run(&emu, &db, &["track", "1"]).await;
    tracked.assert_exit(0);
    let status = run(&emu, &db, &["status", "1", "--json"]).await;
    let v: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["retired"]["onPremises"]["retired"], 1, "{}", v["retired"]);
    assert_eq!(v["retired"]["onPremises"]["notYet"], 2, "{}", v["retired"]);
    // No password byte in any file the tool wrote, or in its logs.
    assert_no_secret("stderr at -vv (text and json)", &logs, &secrets);
    for format in ["md", "html", "csv", "json"] {
        let out = dir.path().join(format!("report.{format}"));
        let r = run(&emu, &db, &["report", "1", "--out", out.to_str().unwrap()]).await;
        r.assert_exit(0);
        let bytes = std::fs::read(&out).unwrap();
        assert_no_secret(&out.display().to_string(), &bytes, &secrets);
        if format == "md" || format == "html" {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains("working internal password"), "{text}");
        }
    }
    assert_files_clean(&db, &secrets);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_role_retire_writes_nothing_and_the_checklist_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Tenant::generate(60, 23);
    let emu = start(config(tenant.clone(), &[])).await;
    let converted = convert_all(&emu, dir.path(), &tenant).await;
    let redeemed: Vec<&String> = converted.iter().step_by(2).collect();
    for id in &redeemed {
        assert_eq!(emu.redeem(id), Some(200));
    }
    let db = dir.path().join("q.db");

    // The dry run re-reads: only redeemed users would be written; it names what is missing.
    let dry = run(&emu, &db, &["retire", "1", "--dry-run", "--json"]).await;
    dry.assert_exit(0);
    let v: Value = serde_json::from_str(dry.stdout.trim()).unwrap();
    let admins = tenant.directory_roles.len() as u64;
    let would = v["wouldRetire"].as_u64().unwrap();
    assert!(
        would <= redeemed.len() as u64 && would + admins >= redeemed.len() as u64,
        "{v}"
    );
    assert_eq!(
        v["awaitingRedemption"],
        (converted.len() - redeemed.len()) as u64,
        "{v}"
    );
    assert!(
        v["missingPermissions"]
            .to_string()
            .contains("password reset role"),
        "{v}"
    );

    let r = run(&emu, &db, &["retire", "1", "--yes"]).await;
    r.assert_exit(4);
    r.assert_stderr_has("password reset role");
    r.assert_stderr_has("User Administrator");
    assert!(emu.secrets().is_empty());
    assert!(emu.revocations().is_empty());
    assert!(!emu
        .patches()
        .iter()
        .any(|p| p["property"] == "passwordProfile"));

    // Without --yes and without a terminal, retire refuses before anything.
    let r = run(&emu, &db, &["retire", "1"]).await;
    r.assert_exit(2);
    emu.shutdown().await;
}
