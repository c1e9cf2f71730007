//! `preflight --retire` and the redemption context against the emulator over loopback: what
//! retiring needs is read from the token (`roles`, `wids`) and named when missing (exit 3); the
//! email one-time passcode and cross-tenant policies are read where Policy.Read.All allows and
//! listed "not checked" where it does not; and the emulator command's `--app-directory-roles`
//! and `--tenant-id`.

use b2b_convert::emulator::{EmulatorConfig, Tenant};
use serde_json::Value;

use crate::common;

use common::{Ran, BIN};

const USER_ADMIN: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";

fn config(tenant: Tenant, roles: &str, wids: &[&str]) -> EmulatorConfig {
    EmulatorConfig {
        app_roles: roles.split(',').map(str::to_string).collect(),
        app_directory_roles: wids.iter().map(|w| w.to_string()).collect(),
        ..EmulatorConfig::new(tenant)
    }
}

fn checks(r: &Ran) -> Vec<Value> {
    r.json()["checks"].as_array().unwrap().clone()
}

fn finding<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_preflight_names_every_missing_permission_and_the_role() {
    let emu = common::start(config(
        Tenant::sample(),
        "User.Invite.All,User.Read.All,Domain.Read.All",
        &[],
    ))
    .await;
    let (_dir, db) = common::temp_db();
    let r = common::run(&emu, &db, &["preflight", "--retire", "--json"]).await;
    r.assert_exit(3);
    let c = checks(&r);
    for (name, needed) in [
        ("set passwords", "User-PasswordProfile.ReadWrite.All"),
        ("revoke sessions", "User.RevokeSessions.All"),
        ("password reset role", "User Administrator"),
    ] {
        let f = finding(&c, name);
        assert_eq!(f["status"], "missing", "{f}");
        assert!(f["detail"].as_str().unwrap().contains(needed), "{f}");
    }
    // Without Policy.Read.All the redemption context is listed, not guessed.
    for name in ["email one-time passcode", "inbound B2B collaboration"] {
        let f = finding(&c, name);
        assert_eq!(f["status"], "warning");
        assert!(
            f["detail"].as_str().unwrap().starts_with("not checked"),
            "{f}"
        );
    }
    // Nothing was written, and the policies were not read without the permission.
    let stats = emu.stats();
    for key in stats["requests"].as_object().unwrap().keys() {
        assert!(
            !key.starts_with("PATCH") && !key.contains("policies/"),
            "{key}"
        );
    }
    assert!(emu.secrets().is_empty());

    // Without --retire, the same token is ready for a conversion.
    let r = common::run(&emu, &db, &["preflight"]).await;
    r.assert_exit(0);
    assert!(!r.stdout.contains("set passwords"), "{}", r.stdout);
    assert!(
        r.stdout.contains("ready, 3 checks not made"),
        "policy, passcode and cross-tenant unread: never \"will work\": {}",
        r.stdout
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_preflight_is_ready_with_least_privilege_and_reads_the_redemption_context() {
    let roles = "User.Invite.All,User.Read.All,Domain.Read.All,Policy.Read.All,User-PasswordProfile.ReadWrite.All,User.RevokeSessions.All";
    let emu = common::start(config(Tenant::sample(), roles, &[USER_ADMIN])).await;
    let (_dir, db) = common::temp_db();
    let r = common::run(&emu, &db, &["preflight", "--retire"]).await;
    r.assert_exit(0);
    r.assert_stdout_has("[ok]   set passwords: User-PasswordProfile.ReadWrite.All granted");
    r.assert_stdout_has("[ok]   revoke sessions: User.RevokeSessions.All granted");
    r.assert_stdout_has("[warn] password reset role: the app's service principal holds User Administrator: users holding an admin role need Privileged Authentication Administrator");
    r.assert_stdout_has("[ok]   email one-time passcode: on:");
    r.assert_stdout_has("[ok]   inbound B2B collaboration:");
    emu.shutdown().await;

    // A tenant that turned the passcode off and blocks inbound B2B by default: warned, with
    // what it means for partners.
    let mut tenant = Tenant::sample();
    tenant.policies.email_otp_state = "disabled".into();
    tenant.policies.b2b_collaboration_inbound_blocked = true;
    let emu = common::start(config(tenant, roles, &[USER_ADMIN])).await;
    let r = common::run(&emu, &db, &["preflight", "--json"]).await;
    r.assert_exit(0);
    let c = checks(&r);
    let otp = finding(&c, "email one-time passcode");
    assert_eq!(otp["status"], "warning");
    assert!(
        otp["detail"].as_str().unwrap().contains("cannot redeem"),
        "{otp}"
    );
    let inbound = finding(&c, "inbound B2B collaboration");
    assert_eq!(inbound["status"], "warning");
    assert!(
        inbound["detail"].as_str().unwrap().contains("AADSTS500213"),
        "{inbound}"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_command_takes_directory_roles_and_a_tenant_id() {
    let tid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let (mut emu, env) = common::spawn_emulator_command(&[
        "--generate",
        "20",
        "--tenant-id",
        tid,
        "--app-directory-roles",
        "User Administrator",
        "--app-roles",
        "User.Read.All,Domain.Read.All,User-PasswordProfile.ReadWrite.All,User.RevokeSessions.All",
    ])
    .await;
    assert!(
        env.contains(&("AZURE_TENANT_ID".to_string(), tid.to_string())),
        "{env:?}"
    );
    let (_dir, db) = common::temp_db();
    let args = ["preflight", "--retire", "--json"];
    let out = common::run_command(common::command_with_env(&env, &db, &args)).await;
    let v = out.json();
    let c = v["checks"].as_array().unwrap();
    assert_eq!(
        finding(c, "password reset role")["status"],
        "warning",
        "{v}"
    );
    assert_eq!(finding(c, "set passwords")["status"], "ok", "{v}");
    emu.kill().await.unwrap();

    // An unknown role name is a usage error naming the known ones.
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["emulator", "--app-directory-roles", "Chief Wizard"])
        .stdin(std::process::Stdio::null());
    let out = common::run_command(cmd).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("User Administrator"));
}
