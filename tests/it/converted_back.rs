//! A user converted back to an internal member cannot be invited again (Graph answers 412): a
//! run over such users blocks them `converted_back` from the one beta listing per pass, and
//! Graph never has to refuse one.

use b2b_convert::emulator::EmulatorConfig;
use b2b_convert::item::{ItemState, Reason};
use serde_json::json;

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_blocks_converted_back_users_without_a_412() {
    let dir = tempfile::tempdir().unwrap();
    let (tenant, csv) = common::generated(80, 9, dir.path());
    let emu = common::start(EmulatorConfig::new(tenant.clone())).await;
    // Three plain users an administrator converted back earlier (as the beta action leaves them).
    let back: Vec<String> = tenant
        .users
        .iter()
        .filter(|u| {
            u.external_user_state.is_none()
                && u.account_enabled == Some(true)
                && u.on_premises_sync_enabled.is_none()
        })
        .take(3)
        .map(|u| u.id.clone())
        .collect();
    for id in &back {
        let body = json!({"externalUserConvertedOn": "2026-11-20T08:00:00Z", "userType": "Member"});
        common::admin_set(&emu, id, body).await;
    }
    let db = dir.path().join("q.db");
    let r = common::run_csv(&emu, &db, &csv, "--silent --yes").await;
    r.assert_exit(3);
    let items = common::items(&db, r.run_id());
    let blocked: Vec<&str> = items
        .iter()
        .filter(|i| i.reason == Some(Reason::ConvertedBack))
        .map(|i| {
            assert_eq!(i.state, ItemState::Blocked);
            assert!(i.detail.as_deref().unwrap().contains("412"));
            i.user_id.as_deref().unwrap()
        })
        .collect();
    let mut want: Vec<&str> = back.iter().map(String::as_str).collect();
    want.sort_unstable();
    let mut got = blocked.clone();
    got.sort_unstable();
    assert_eq!(got, want);
    let stats = emu.stats();
    assert_eq!(
        stats["requests"]["POST /v1.0/invitations"]["412"],
        serde_json::Value::Null,
        "{stats}"
    );
    assert!(emu
        .invitations()
        .iter()
        .all(|i| !back.contains(&i["userId"].as_str().unwrap().to_string())));
    assert_eq!(
        stats["requests"]["GET /beta/users"]["200"], 1,
        "one beta listing per pass"
    );
    // The report's fix hint for the reason.
    let out = dir.path().join("r.md");
    let r2 = common::run(
        &emu,
        &db,
        &[
            "report",
            &r.run_id().to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    r2.assert_exit(0);
    let md = std::fs::read_to_string(out).unwrap();
    assert!(md.contains("converted_back"), "{md}");
    emu.shutdown().await;
}
