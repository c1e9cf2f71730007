//! `scripts RUN_ID --out DIR` through the real binary after a live run against the emulator:
//! each script names exactly the users the contract gives it (checked against the tenant, not
//! against the tool's own sorting), accounts are found by SID, the redeemed ones are marked, the
//! directory is never reused and every file is 0600. No `pwsh` is on the registries this project
//! reaches, so the scripts are checked as text.

use std::collections::BTreeSet;

use b2b_convert::emulator::{EmulatorConfig, Tenant};

use crate::common;

/// The UPNs of a script's user table, in order.
fn table_upns(script: &str) -> Vec<String> {
    script
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("[pscustomobject]@{ UserPrincipalName = '")
        })
        .map(|rest| rest.split_once("';").unwrap().0.replace("''", "'"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_name_exactly_the_right_users() {
    let mut tenant = Tenant::generate(600, 5);
    // Synced users whose sync rule no longer writes onPremisesUserPrincipalName: they convert,
    // and only AD can retire their password.
    for u in tenant.users.iter_mut() {
        if u.on_premises_user_principal_name.is_some() {
            u.on_premises_user_principal_name = None;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("users.csv");
    tenant.write_csv(&csv).unwrap();
    let emu = common::start(EmulatorConfig::new(tenant.clone())).await;
    let db = dir.path().join("q.db");
    let r = common::run_csv(&emu, &db, &csv, "--silent --yes").await;
    r.assert_finished();
    let run_id = r.run_id().to_string();

    // The tenant says who is who.
    let synced = |id: &str| {
        tenant
            .users
            .iter()
            .any(|u| u.id == id && u.on_premises_sync_enabled == Some(true))
    };
    let converted_synced: Vec<_> = tenant
        .users
        .iter()
        .filter(|u| synced(&u.id))
        .filter(|u| {
            let now = emu.user(&u.id).unwrap();
            now.external_user_state.is_some() && u.external_user_state.is_none()
        })
        .collect();
    assert!(
        converted_synced.len() >= 2,
        "the tenant converts some synced users"
    );
    // Half of them redeem before the scripts are written.
    let redeemed: BTreeSet<String> = converted_synced
        .iter()
        .step_by(2)
        .map(|u| {
            assert_eq!(emu.redeem(&u.id), Some(200));
            u.user_principal_name.clone().unwrap()
        })
        .collect();
    let r = common::run(&emu, &db, &["track", &run_id]).await;
    r.assert_exit(0);
    let want_retire: BTreeSet<String> = converted_synced
        .iter()
        .map(|u| u.user_principal_name.clone().unwrap())
        .collect();
    let want_mail: BTreeSet<String> = tenant
        .users
        .iter()
        .filter(|u| synced(&u.id) && tenant.external_emails.contains_key(&u.id))
        .map(|u| u.user_principal_name.clone().unwrap())
        .collect();
    let want_exchange: BTreeSet<String> = tenant
        .users
        .iter()
        .filter(|u| {
            u.has_enabled_exchange_plan()
                && u.external_user_state.is_none()
                && u.account_enabled == Some(true)
        })
        .map(|u| u.user_principal_name.clone().unwrap())
        .collect();
    assert!(!want_mail.is_empty() && !want_exchange.is_empty());

    let before = emu.stats()["requests"].clone();
    let out = dir.path().join("scripts");
    let write_scripts = ["scripts", &run_id, "--out", out.to_str().unwrap()];
    let r = common::run(&emu, &db, &write_scripts).await;
    r.assert_exit(0);
    assert_eq!(
        emu.stats()["requests"],
        before,
        "scripts reads the database only"
    );
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();

    let retire = read("ad-retire-passwords.ps1");
    let got: BTreeSet<String> = table_upns(&retire).into_iter().collect();
    assert_eq!(
        got, want_retire,
        "ad-retire-passwords names exactly the converted synced users"
    );
    for u in &converted_synced {
        let upn = u.user_principal_name.as_deref().unwrap();
        let sid = u.on_premises_security_identifier.as_deref().unwrap();
        let mark = if redeemed.contains(upn) {
            "$true"
        } else {
            "$false"
        };
        let line = format!(
            "UserPrincipalName = '{upn}'; By = 'sid'; Identity = '{sid}'; Redeemed = {mark} }}"
        );
        assert!(retire.contains(&line), "{line}\n{retire}");
    }
    let mail = read("ad-set-mail.ps1");
    let got: BTreeSet<String> = table_upns(&mail).into_iter().collect();
    assert_eq!(got, want_mail);
    for upn in &want_mail {
        let u = tenant
            .users
            .iter()
            .find(|u| u.user_principal_name.as_deref() == Some(upn.as_str()))
            .unwrap();
        assert!(
            mail.contains(&format!("Mail = '{}'", tenant.external_emails[&u.id])),
            "{upn}"
        );
    }
    let exchange = read("exchange-mailbox-users.ps1");
    let got: BTreeSet<String> = exchange
        .lines()
        .filter_map(|l| l.strip_prefix("$Upn = '"))
        .map(|r| r.trim_end_matches('\'').to_string())
        .collect();
    assert_eq!(got, want_exchange);
    let readme = read("README.txt");
    for upn in want_retire.iter().chain(&want_mail).chain(&want_exchange) {
        assert!(readme.contains(&format!("  {upn}\n")), "README lists {upn}");
    }
    assert!(readme.contains(&format!(
        "ad-retire-passwords.ps1 covers {}:",
        want_retire.len()
    )));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for name in [
            "README.txt",
            "ad-retire-passwords.ps1",
            "ad-set-mail.ps1",
            "exchange-mailbox-users.ps1",
        ] {
            let mode = std::fs::metadata(out.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4);
    }
    // Never into an existing directory.
    let r = common::run(&emu, &db, &write_scripts).await;
    r.assert_exit(2);
    r.assert_stderr_has("exists");
    emu.shutdown().await;
}
