//! The emulator's write-side behaviour over real HTTP on loopback: `PATCH /v1.0/users/{id}` and
//! its refusals, `/_emulator/patches`, redemption, `resetRedemption`, not-applied invitations,
//! delta queries and the throttling headers.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use b2b_convert::emulator::{EmulatorConfig, Tenant};
use serde_json::{json, Value};

use crate::common;

use common::raw::{
    assert_graph_error, env, invite_body, keys, manual_clock_emulator, sample_emulator,
    sample_emulator_with, sample_user, start_with_client, G,
};
use common::start;
fn assert_conflict(s: u16, v: &Value) {
    let message = "Another object with the same value for property proxyAddresses already exists.";
    assert_graph_error((s, v), 400, "Request_BadRequest", message);
    assert_eq!(v["error"]["details"][0]["code"], "ObjectConflict", "{v}");
}

/// A `PATCH /users/{id}` that Graph accepts (204).
async fn assert_patched(g: &G, id: &str, body: Value) {
    let (s, v) = g.patch(id, body.clone()).await;
    assert_eq!(s, 204, "{body}: {v}");
}

#[tokio::test]
async fn patch_sets_mail_and_user_type_with_graphs_refusals() {
    let (emu, g) = sample_emulator().await;
    let kofi = sample_user("Kofi"); // cloud-only, no mailbox, no mail
    let r = g
        .patch_user(&kofi.id, json!({"mail": "kofi.asante@adatum.example"}))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["x-ms-resource-unit"], "1");
    assert!(r.bytes().await.unwrap().is_empty(), "204 has no body");
    let (s, v) = g.get_user(&kofi.id, "mail,proxyAddresses").await;
    assert_eq!((s, &v["mail"]), (200, &json!("kofi.asante@adatum.example")));
    let after = emu.user(&kofi.id).unwrap();
    assert_eq!(after.mail.as_deref(), Some("kofi.asante@adatum.example"));
    assert_eq!(
        after.proxy_addresses,
        Some(vec!["SMTP:kofi.asante@adatum.example".to_string()])
    );
    // The new address is now taken, in any case, by mail and by proxy address.
    let helena = sample_user("Helena");
    let (s, v) = g
        .patch(&helena.id, json!({"mail": "KOFI.ASANTE@adatum.example"}))
        .await;
    assert_conflict(s, &v);
    // Held in another user's otherMails, and in another user's mail + proxyAddresses.
    for taken in [
        "liam.murphy@fourthcoffee.example",
        "alex.wilber@contoso.com",
    ] {
        let (s, v) = g.patch(&helena.id, json!({"mail": taken})).await;
        assert_conflict(s, &v);
    }
    // A mailbox user's mail belongs to Exchange; a synced user's to on-premises.
    let anna = sample_user("Anna");
    let (s, v) = g
        .patch(&anna.id, json!({"mail": "anna@woodgrove.example"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("Request_BadRequest"))
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("originated within an external service"));
    let samuel = sample_user("Samuel");
    let (s, v) = g
        .patch(&samuel.id, json!({"mail": "samuel@proseware-new.example"}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("on-premises mastered"));
    // A refusal changes nothing, even the properties beside the refused one.
    let (s, _) = g
        .patch(
            &anna.id,
            json!({"userType": "Guest", "mail": "anna@woodgrove.example"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(emu.user(&anna.id).unwrap(), sample_user("Anna"));
    // userType: Member or Guest only.
    let (s, _) = g.patch(&anna.id, json!({"userType": "Admin"})).await;
    assert_eq!(s, 400);
    let (s, _) = g.patch(&samuel.id, json!({"userType": "Guest"})).await;
    assert_eq!(s, 204);
    assert_eq!(
        emu.user(&samuel.id).unwrap().user_type.as_deref(),
        Some("Guest")
    );
    // Unknown user.
    let (s, v) = g
        .patch(
            "7d4a3c1e-0000-4000-8000-000000000000",
            json!({"userType": "Guest"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );

    let patches = g.inspect("patches").await;
    let patches = patches["value"].as_array().unwrap();
    assert_eq!(patches.len(), 2, "only accepted PATCHes: {patches:?}");
    assert_eq!(patches[0]["userId"], kofi.id.as_str());
    assert_eq!(patches[0]["property"], "mail");
    assert_eq!(patches[0]["old"], Value::Null);
    assert_eq!(patches[0]["new"], "kofi.asante@adatum.example");
    assert!(patches[0]["at"].as_str().unwrap().contains('T'));
    assert_eq!(
        (
            &patches[1]["property"],
            &patches[1]["old"],
            &patches[1]["new"]
        ),
        (
            &json!("userType"),
            &json!(samuel.user_type),
            &json!("Guest")
        )
    );
    assert_eq!(emu.patches().len(), 2);
    // After its mail was set, Kofi converts.
    let (s, v) = g
        .post_invitation(invite_body(&kofi.id, "kofi.asante@adatum.example"))
        .await;
    assert_eq!(s, 201, "{v}");
    emu.shutdown().await;
}

#[tokio::test]
async fn invitation_clash_carries_object_conflict() {
    let (emu, g) = sample_emulator().await;
    let liam = sample_user("Liam");
    let (s, v) = g.invite(&liam).await;
    assert_conflict(s, &v);
    // Once Megan no longer lists the address, Liam converts.
    let megan = sample_user("Megan");
    let (s, _) = g.patch(&megan.id, json!({"otherMails": []})).await;
    assert_eq!(s, 204);
    let (s, v) = g.invite(&liam).await;
    assert_eq!(s, 201, "{v}");
    emu.shutdown().await;
}

#[tokio::test]
async fn patch_is_a_write_with_faults_and_lost_answers() {
    let (emu, g) = sample_emulator_with(|c| c.lost_response_rate = 1.0).await;
    let kofi = sample_user("Kofi");
    let path = format!("/users/{}", kofi.id);
    let body = json!({"mail": "kofi.asante@adatum.example"});
    let r = g.try_send(reqwest::Method::PATCH, &path, body).await;
    assert!(r.is_err(), "the answer is lost: {r:?}");
    assert_eq!(
        emu.user(&kofi.id).unwrap().mail.as_deref(),
        Some("kofi.asante@adatum.example"),
        "carried out"
    );
    assert_eq!(emu.patches().len(), 1);
    emu.shutdown().await;

    let (emu, g) = sample_emulator_with(|c| c.fault_rate = 1.0).await;
    let (s, _) = g
        .patch(&kofi.id, json!({"mail": "kofi.asante@adatum.example"}))
        .await;
    assert!([500, 503, 504].contains(&s));
    assert_eq!(emu.user(&kofi.id).unwrap().mail, None, "not carried out");
    assert!(emu.patches().is_empty());
    emu.shutdown().await;

    // Same write buckets as invitations: 2 writes, then a PATCH and an invitation are refused.
    let (emu, g) = manual_clock_emulator(|c| c.writes_per_150s = 2).await;
    let bruno = sample_user("Bruno");
    assert_patched(&g, &kofi.id, json!({"userType": "Guest"})).await;
    let (s, _) = g.invite(&bruno).await;
    assert_eq!(s, 201);
    let r = g.patch_user(&bruno.id, json!({"userType": "Guest"})).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["x-ms-throttle-information"],
        "WriteLimitExceeded"
    );
    assert_eq!(
        emu.patches().len(),
        1,
        "a throttled PATCH is not carried out"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn generated_tenant_has_users_set_mail_can_and_cannot_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (tenant, csv) = common::generated(3000, 9, dir.path());
    let rows: HashMap<String, String> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (c[0].to_string(), c[2].to_string())
        })
        .collect();
    let verified: HashSet<String> = tenant
        .domains
        .iter()
        .filter(|d| d.is_verified)
        .map(|d| d.id.to_lowercase())
        .collect();
    let (emu, g) = start_with_client(EmulatorConfig {
        writes_per_150s: 0,
        invitations_per_5s: 0,
        ru_per_10s: Some(0),
        ..EmulatorConfig::new(tenant.clone())
    })
    .await;
    let (mut fixable, mut synced, mut mailbox) = (0, 0, 0);
    for u in &tenant.users {
        let external = &rows[&u.id];
        let mismatch = !u
            .mail
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case(external));
        if !mismatch || external.is_empty() {
            continue;
        }
        assert_eq!(tenant.external_emails.get(&u.id), Some(external));
        let domain = external.rsplit('@').next().unwrap().to_lowercase();
        assert!(!verified.contains(&domain), "{external}");
        let (s, v) = g.patch(&u.id, json!({"mail": external})).await;
        if u.on_premises_sync_enabled == Some(true) {
            assert_eq!(s, 400, "{v}");
            synced += 1;
        } else if u.has_enabled_exchange_plan() {
            assert_eq!(s, 400, "{v}");
            mailbox += 1;
        } else {
            assert_eq!(s, 204, "{} {external}: {v}", u.id);
            let (s, v) = g.post_invitation(invite_body(&u.id, external)).await;
            assert_eq!(s, 201, "{v}");
            fixable += 1;
        }
    }
    assert!(
        fixable >= 30 && synced >= 15 && mailbox >= 15,
        "{fixable} {synced} {mailbox}"
    );
    assert!(
        tenant
            .users
            .iter()
            .any(|u| u.mail.is_none() && tenant.external_emails.contains_key(&u.id)),
        "some fixable users have no mail at all"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn redeem_turns_pending_into_accepted() {
    let (emu, g) = manual_clock_emulator(|_| {}).await;
    let bruno = sample_user("Bruno");
    // Not invited yet: nothing to redeem.
    assert_eq!(g.redeem(&bruno.id).await.0, 409);
    assert_eq!(
        g.redeem("7d4a3c1e-0000-4000-8000-000000000000").await.0,
        404
    );
    let (s, _) = g.invite(&bruno).await;
    assert_eq!(s, 201);
    let invited_at = emu
        .user(&bruno.id)
        .unwrap()
        .external_user_state_change_date_time
        .unwrap();
    emu.clock().advance(Duration::from_secs(600));
    let (s, v) = g.redeem(&bruno.id).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["externalUserState"], "Accepted");
    let after = emu.user(&bruno.id).unwrap();
    assert_eq!(after.external_user_state.as_deref(), Some("Accepted"));
    let accepted_at = after.external_user_state_change_date_time.unwrap();
    assert_ne!(accepted_at, invited_at, "the change time moves");
    // Graph shows it to the tool.
    let (_, v) = g
        .get_user(
            &bruno.id,
            "externalUserState,externalUserStateChangeDateTime",
        )
        .await;
    assert_eq!(v["externalUserState"], "Accepted");
    assert_eq!(v["externalUserStateChangeDateTime"], accepted_at.as_str());
    // Redeeming twice keeps the first acceptance; the in-process API agrees.
    emu.clock().advance(Duration::from_secs(60));
    assert_eq!(emu.redeem(&bruno.id), Some(200));
    assert_eq!(
        emu.user(&bruno.id)
            .unwrap()
            .external_user_state_change_date_time
            .unwrap(),
        accepted_at
    );
    assert_eq!(emu.redeem("no-such-user"), None);
    emu.shutdown().await;
}

#[tokio::test]
async fn not_applied_invitations_answer_201_and_change_nothing() {
    let (emu, g) = sample_emulator_with(|c| c.not_applied_rate = 1.0).await;
    let chen = sample_user("Chen");
    let (s, v) = g.invite(&chen).await;
    assert_eq!(s, 201);
    assert_eq!(
        v["status"], "PendingAcceptance",
        "the answer looks like success"
    );
    assert_eq!(emu.user(&chen.id).unwrap(), chen, "the user never changed");
    let inv = g.inspect("invitations").await;
    assert_eq!(inv["value"][0]["applied"], false);
    assert_eq!(inv["value"][0]["resetRedemption"], false);
    assert_eq!(g.redeem(&chen.id).await.0, 409, "nothing reached the user");
    emu.shutdown().await;

    // A share of them: every invitation is logged, the dropped ones marked, the rest applied.
    let (emu, g) = start_with_client(EmulatorConfig {
        not_applied_rate: 0.5,
        seed: 5,
        ..EmulatorConfig::new(Tenant::generate(200, 3))
    })
    .await;
    let t = Tenant::generate(200, 3);
    let mut sent = 0;
    for u in &t.users {
        let Some(mail) = &u.mail else { continue };
        if g.post_invitation(invite_body(&u.id, mail)).await.0 == 201 {
            sent += 1;
        }
    }
    let inv = emu.invitations();
    assert_eq!(inv.len(), sent);
    let dropped: Vec<&Value> = inv.iter().filter(|i| i["applied"] == false).collect();
    assert!(
        !dropped.is_empty() && dropped.len() < sent,
        "{} of {sent}",
        dropped.len()
    );
    for i in &inv {
        let state = emu
            .user(i["userId"].as_str().unwrap())
            .unwrap()
            .external_user_state;
        assert_eq!(state.is_some(), i["applied"] == true, "{i}");
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn reset_redemption_rules() {
    let (emu, g) = sample_emulator().await;
    let reset = |id: &str, email: &str| {
        let mut b = invite_body(id, email);
        b["resetRedemption"] = json!(true);
        b
    };
    let dana = sample_user("Dana");
    let mail = dana.mail.clone().unwrap();
    // Never invited: refused.
    let (s, v) = g.post_invitation(reset(&dana.id, &mail)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invited before"));
    // Without invitedUser: refused.
    let mut b = reset(&dana.id, &mail);
    b.as_object_mut().unwrap().remove("invitedUser");
    let (s, v) = g.post_invitation(b).await;
    assert_eq!(s, 400, "{v}");
    // Invited, redeemed, then reset: back to PendingAcceptance.
    assert_eq!(g.post_invitation(invite_body(&dana.id, &mail)).await.0, 201);
    assert_eq!(g.redeem(&dana.id).await.0, 200);
    let (s, v) = g
        .post_invitation(reset(&dana.id, "someone.else@tailspintoys.example"))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with(
        "The email you're using to invite this user doesn't match any emails on the user object"
    ));
    let (s, v) = g
        .post_invitation(reset(&dana.id, &mail.to_uppercase()))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["resetRedemption"], true);
    assert_eq!(
        emu.user(&dana.id).unwrap().external_user_state.as_deref(),
        Some("PendingAcceptance")
    );
    // An address in otherMails is accepted too.
    assert_patched(
        &g,
        &dana.id,
        json!({"otherMails": ["dana.w@tailspintoys.example"]}),
    )
    .await;
    let (s, v) = g
        .post_invitation(reset(&dana.id, "dana.w@tailspintoys.example"))
        .await;
    assert_eq!(s, 201, "{v}");
    let inv = emu.invitations();
    let flags: Vec<bool> = inv
        .iter()
        .map(|i| i["resetRedemption"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, [false, true, true]);
    assert!(inv.iter().all(|i| i["applied"] == true));
    emu.shutdown().await;
}

/// Every page of a delta round from `first`: the ids (removed ones prefixed `-`), the pages'
/// sizes, and the round's deltaLink.
async fn delta_round(
    g: &G,
    first: &str,
    prefer: Option<&str>,
) -> (Vec<String>, Vec<usize>, String) {
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut url = first.to_string();
    for _ in 0..1000 {
        let mut rb = g.http.get(g.url(&url)).bearer_auth(&g.token);
        if let Some(p) = prefer {
            rb = rb.header("Prefer", p);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let page = v["value"].as_array().unwrap();
        sizes.push(page.len());
        for u in page {
            let id = u["id"].as_str().unwrap();
            ids.push(if u.get("@removed").is_some() {
                assert_eq!(u["@removed"]["reason"], "changed");
                format!("-{id}")
            } else {
                id.to_string()
            });
        }
        assert!(
            v.get("@odata.nextLink").is_none() || v.get("@odata.deltaLink").is_none(),
            "never both links"
        );
        if let Some(d) = v["@odata.deltaLink"].as_str() {
            return (ids, sizes, d.to_string());
        }
        url = v["@odata.nextLink"]
            .as_str()
            .expect("a next or delta link")
            .to_string();
        assert!(url.contains("/v1.0/users/delta?$skiptoken="), "{url}");
        assert!(
            !url.contains("select"),
            "the options live in the opaque token: {url}"
        );
    }
    panic!("the round never ended");
}

#[tokio::test]
async fn users_delta_pages_then_reports_only_changes() {
    let tenant = Tenant::sample();
    let (emu, g) = start_with_client(EmulatorConfig::new(tenant.clone())).await;
    let select = "/users/delta?$select=id,mail,otherMails,proxyAddresses";

    // First round: every user once, in pages of at most the preferred size.
    let r = g
        .http
        .get(g.url(select))
        .bearer_auth(&g.token)
        .header("Prefer", "odata.maxpagesize=20")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["preference-applied"], "odata.maxpagesize=20");
    assert_eq!(
        r.headers()["x-ms-resource-unit"],
        "1",
        "$select costs one unit less"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        keys(&v["value"][0]),
        ["id", "mail", "otherMails", "proxyAddresses"]
            .map(String::from)
            .into()
    );
    assert!(v["@odata.context"]
        .as_str()
        .unwrap()
        .contains("users(id,mail,otherMails,proxyAddresses)"));
    let (ids, sizes, link) = delta_round(&g, select, Some("odata.maxpagesize=20")).await;
    assert_eq!(sizes, [20, 20, 20, 3]);
    let all: HashSet<String> = tenant.users.iter().map(|u| u.id.clone()).collect();
    assert_eq!(ids.len(), all.len());
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), all);
    assert!(link.contains("/v1.0/users/delta?$deltatoken="), "{link}");

    // Nothing changed: an empty round and a fresh link.
    let (ids, _, link) = delta_round(&g, &link, None).await;
    assert!(ids.is_empty(), "{ids:?}");

    // Changes: a tracked property twice, an untracked one, a new guest, a deletion.
    let kofi = sample_user("Kofi");
    let dana = sample_user("Dana");
    let bruno = sample_user("Bruno");
    let ines = sample_user("Ines");
    assert_patched(&g, &kofi.id, json!({"mail": "kofi@adatum.example"})).await;
    assert_patched(&g, &dana.id, json!({"displayName": "Dana W."})).await;
    assert_eq!(g.invite(&bruno).await.0, 201);
    assert_patched(&g, &kofi.id, json!({"mail": "kofi.asante@adatum.example"})).await;
    let guest_id = g.invite_new_guest().await;
    let r = g
        .http
        .delete(format!("{}/_emulator/users/{}", g.base, ines.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        g.get(&format!("/users/{}", ines.id)).await.0,
        404,
        "deleted"
    );
    let (ids, _, link2) = delta_round(&g, &link, None).await;
    assert_eq!(
        ids,
        [kofi.id.clone(), guest_id.clone(), format!("-{}", ines.id)]
    );
    let (_, v) = g.get(&link).await;
    assert_eq!(
        v["value"][0]["mail"], "kofi.asante@adatum.example",
        "its state now"
    );
    assert_eq!(
        v["value"][0]["proxyAddresses"][0],
        "SMTP:kofi.asante@adatum.example"
    );
    // The next round starts where this one ended.
    let (ids, _, _) = delta_round(&g, &link2, None).await;
    assert!(ids.is_empty(), "{ids:?}");

    // Without $select every property is tracked: Bruno's invitation and Dana's name count.
    let (_, _, everything) = delta_round(&g, "/users/delta", None).await;
    assert_eq!(emu.redeem(&bruno.id), Some(200));
    assert_patched(&g, &dana.id, json!({"displayName": "Dana Whitfield"})).await;
    let (ids, _, _) = delta_round(&g, &everything, None).await;
    assert_eq!(ids, [bruno.id.clone(), dana.id.clone()]);
    emu.shutdown().await;
}

#[tokio::test]
async fn users_delta_refusals_and_latest() {
    let (emu, g) = sample_emulator().await;
    let (_, _, link) = delta_round(&g, "/users/delta?$select=id,mail", None).await;
    // Options belong to the first request only.
    let (s, v) = g.get(&format!("{link}&$select=id")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("Request_BadRequest")),
        "{v}"
    );
    let (s, v) = g.get("/users/delta?$orderby=displayName").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("Request_UnsupportedQuery")),
        "{v}"
    );
    let (s, _) = g.get("/users/delta?$select=shoeSize").await;
    assert_eq!(s, 400);
    // A token this tenant never issued.
    let (s, v) = g.get("/users/delta?$deltatoken=bm90LWEtdG9rZW4").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (410, Some("syncStateNotFound")),
        "{v}"
    );
    let other = start(EmulatorConfig::new(Tenant::sample())).await;
    let g2 = G::new(&other).await;
    let foreign = link.replace(&emu.base_url(), &other.base_url());
    assert_eq!(
        g2.get(&foreign).await.0,
        410,
        "a token from another emulator"
    );
    other.shutdown().await;
    // $deltatoken=latest starts tracking from now without reading the tenant.
    let (s, v) = g
        .get("/users/delta?$select=id,mail&$deltatoken=latest")
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["value"].as_array().unwrap().is_empty());
    let latest = v["@odata.deltaLink"].as_str().unwrap().to_string();
    let kofi = sample_user("Kofi");
    assert_patched(&g, &kofi.id, json!({"mail": "kofi@adatum.example"})).await;
    let (ids, _, _) = delta_round(&g, &latest, None).await;
    assert_eq!(ids, vec![kofi.id]);
    let stats = emu.stats();
    assert!(
        stats["requests"]["GET /v1.0/users/delta"]["200"]
            .as_u64()
            .unwrap()
            >= 3
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn throttle_headers_in_graphs_formats() {
    let (emu, g) = manual_clock_emulator(|c| c.writes_per_150s = 10).await;
    let (app, tenant) = (env(&emu, "AZURE_CLIENT_ID"), emu.tenant_id());
    let dana = sample_user("Dana");
    let mut percentages = Vec::new();
    for _ in 0..10 {
        let r = g
            .patch_user(&dana.id, json!({"accountEnabled": true}))
            .await;
        assert_eq!(r.status(), 204);
        assert!(
            r.headers().get("x-ms-throttle-scope").is_none(),
            "only on 429"
        );
        percentages.push(
            r.headers()
                .get("x-ms-throttle-limit-percentage")
                .map(|v| v.to_str().unwrap().to_string()),
        );
    }
    // Sent only once more than 80% of the write bucket is used.
    let expected: Vec<Option<String>> = (1..=10)
        .map(|k| (k > 8).then(|| format!("{:.2}", k as f64 / 10.0)))
        .collect();
    assert_eq!(percentages, expected);
    let r = g
        .patch_user(&dana.id, json!({"accountEnabled": true}))
        .await;
    assert_eq!(r.status(), 429);
    let h = |n: &str| r.headers()[n].to_str().unwrap().to_string();
    assert_eq!(
        h("x-ms-throttle-scope"),
        format!("Tenant_Application/Write/{app}/{tenant}")
    );
    assert_eq!(h("x-ms-throttle-information"), "WriteLimitExceeded");
    assert_eq!(h("x-ms-throttle-limit-percentage"), "1.10");
    // Reads draw on the resource-unit bucket only, far from its limit: no header.
    let (s, _) = g.get(&format!("/users/{}", dana.id)).await;
    assert_eq!(s, 200);
    let r = g.get_response("/domains").await;
    assert!(r.headers().get("x-ms-throttle-limit-percentage").is_none());
    emu.shutdown().await;
}
