//! The emulator over real HTTP on loopback: paging, filters, invitation rules, throttling with a
//! manual clock, `$batch`, faults, lost responses, tokens.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use b2b_convert::emulator::{self, Clock, Emulator, EmulatorConfig, Tenant};
use base64::Engine;
use serde_json::{json, Value};

use crate::common;

use common::raw::{
    env, invite_body, keys, manual_clock_emulator, sample_emulator, sample_emulator_with,
    sample_user, start_with_client, token, token_url, G,
};
use common::start;

async fn all_ids(g: &G, first: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(url) = next {
        let (s, v) = g.get(&url).await;
        assert_eq!(s, 200, "{v}");
        for u in v["value"].as_array().unwrap() {
            ids.push(u["id"].as_str().unwrap().to_string());
        }
        next = v["@odata.nextLink"].as_str().map(str::to_string);
    }
    ids
}

#[tokio::test]
async fn paging_returns_every_user_exactly_once() {
    let tenant = Tenant::generate(2500, 3);
    let expected: HashSet<String> = tenant.users.iter().map(|u| u.id.clone()).collect();
    let (emu, g) = start_with_client(EmulatorConfig::new(tenant)).await;
    for first in ["/users?$top=999&$select=id,mail", "/users"] {
        let ids = all_ids(&g, first).await;
        assert_eq!(ids.len(), 2500, "{first}");
        assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), expected);
    }
    let (s, v) = g.get_eventual("/users?$top=5&$count=true").await;
    assert_eq!(s, 200);
    assert_eq!(v["@odata.count"], 2500);
    assert_eq!(v["value"].as_array().unwrap().len(), 5);
    assert_eq!(
        keys(&v["value"][0]),
        ["id", "displayName", "mail", "userPrincipalName"]
            .map(String::from)
            .into()
    );
    let (s, v) = g.get("/users?$top=1000").await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = g.get("/users?$select=favouriteColour").await;
    assert_eq!(s, 400);
    emu.shutdown().await;
}

#[tokio::test]
async fn filters() {
    let tenant = Tenant::sample();
    let count = |f: &dyn Fn(&b2b_convert::model::User) -> bool| {
        tenant.users.iter().filter(|u| f(u)).count()
    };
    let guests = count(&|u| u.user_type.as_deref() == Some("Guest"));
    let disabled = count(&|u| u.account_enabled == Some(false));
    let (emu, g) = start_with_client(EmulatorConfig::new(tenant.clone())).await;
    let n = |v: &Value| v["value"].as_array().unwrap().len();

    let (s, v) = g.get("/users?$top=999&$filter=userType eq 'guest'").await;
    assert_eq!((s, n(&v)), (200, guests));
    let (_, v) = g
        .get("/users?$top=999&$filter=accountEnabled eq false")
        .await;
    assert_eq!(n(&v), disabled);
    let a = &tenant.users[0];
    let b = &tenant.users[1];
    let (_, v) = g
        .get(&format!(
            "/users?$filter=id in ('{}','{}','nope')",
            a.id, b.id
        ))
        .await;
    assert_eq!(n(&v), 2);
    let (_, v) = g
        .get(&format!(
            "/users?$filter=id eq '{}' and userType eq '{}'",
            a.id,
            a.user_type.clone().unwrap()
        ))
        .await;
    assert_eq!(n(&v), 1);
    let (_, v) = g
        .get(&format!(
            "/users?$filter=(mail eq '{}' or mail eq '{}') and accountEnabled eq true",
            a.mail.clone().unwrap().to_uppercase(),
            b.mail.clone().unwrap()
        ))
        .await;
    assert_eq!(n(&v), 2);
    let (_, v) = g
        .get("/users?$filter=otherMails/any(x:x eq 'liam.murphy@fourthcoffee.example')&$select=displayName")
        .await;
    assert_eq!(v["value"][0]["displayName"], "Megan Bowen");
    let (_, v) = g
        .get("/users?$filter=proxyAddresses/any(p:p in ('smtp:alex.wilber@contoso.com','x'))")
        .await;
    assert_eq!(n(&v), 1);

    // Advanced queries need ConsistencyLevel: eventual and $count=true.
    for f in [
        "userType ne 'Member'",
        "not (userType eq 'Member')",
        "endsWith(mail,'@contoso.com')",
        "externalUserState eq null",
    ] {
        let (s, v) = g.get(&format!("/users?$filter={f}")).await;
        assert_eq!(s, 400, "{f}");
        assert_eq!(v["error"]["code"], "Request_UnsupportedQuery", "{f}");
        let (s, v) = g
            .get_eventual(&format!("/users?$filter={f}&$count=true"))
            .await;
        assert_eq!(s, 200, "{f}: {v}");
    }
    let (_, v) = g
        .get_eventual("/users?$top=999&$filter=userType ne 'Member'&$count=true")
        .await;
    assert_eq!(v["@odata.count"], guests);

    let many: Vec<String> = (0..16).map(|i| format!("'{i}'")).collect();
    let (s, _) = g
        .get(&format!("/users?$filter=id in ({})", many.join(",")))
        .await;
    assert_eq!(s, 400);
    let (s, v) = g.get("/users?$filter=shoeSize eq 'x'").await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("shoeSize"));
    let (s, _) = g.get("/users?$filter=userType eq 'Guest' and").await;
    assert_eq!(s, 400);
    emu.shutdown().await;
}

#[tokio::test]
async fn single_user_groups_and_domains() {
    let (emu, g) = sample_emulator().await;
    let u = sample_user("Aisha");
    // A user is addressed by its UPN as well as by its id.
    let upn = u.user_principal_name.as_deref().unwrap();
    let (s, v) = g.get_user(upn, "accountEnabled").await;
    assert_eq!(s, 200);
    assert_eq!(v["id"], u.id);
    assert_eq!(v["accountEnabled"], true);
    assert!(v.get("mail").is_none());
    let (s, v) = g.get("/users/nobody@contoso.com").await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "Request_ResourceNotFound");

    let t = Tenant::sample();
    let vendors = t
        .groups
        .iter()
        .find(|g| g.display_name == "Vendors")
        .unwrap();
    let (_, v) = g.get(&format!("/groups/{}/members", vendors.id)).await;
    let vals = v["value"].as_array().unwrap();
    assert!(vals
        .iter()
        .any(|m| m["@odata.type"] == "#microsoft.graph.group"));
    let direct_users = vendors.members.len() - 1;
    let (_, v) = g
        .get(&format!(
            "/groups/{}/members/microsoft.graph.user",
            vendors.id
        ))
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), direct_users);
    let ids = all_ids(
        &g,
        &format!(
            "/groups/{}/transitiveMembers/microsoft.graph.user?$top=5",
            vendors.id
        ),
    )
    .await;
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "each user once");
    let emea = t
        .groups
        .iter()
        .find(|g| g.display_name == "Vendors-EMEA")
        .unwrap();
    let expected: HashSet<&String> = vendors
        .members
        .iter()
        .chain(&emea.members)
        .filter(|m| **m != emea.id)
        .collect();
    assert_eq!(unique, expected.into_iter().collect());
    let (s, _) = g
        .get("/groups/00000000-0000-0000-0000-000000000000/members")
        .await;
    assert_eq!(s, 404);

    let (s, v) = g.get("/domains").await;
    assert_eq!(s, 200);
    assert!(common::elements(&v["value"])
        .iter()
        .any(|d| d["id"] == "contoso.com" && d["isVerified"] == true && d["isDefault"] == true));
    emu.shutdown().await;
}

#[tokio::test]
async fn group_cycles_are_safe() {
    let mut t = Tenant::generate(30, 2);
    let (a, b) = (t.groups[0].id.clone(), t.groups[1].id.clone());
    t.groups[1].members.push(a.clone());
    assert!(t.groups[0].members.contains(&b));
    let (emu, g) = start_with_client(EmulatorConfig::new(t.clone())).await;
    let ids = all_ids(&g, &format!("/groups/{a}/transitiveMembers")).await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert!(ids.contains(&b) && !ids.contains(&a));
    emu.shutdown().await;
}

#[tokio::test]
async fn invitation_rules() {
    let (emu, g) = sample_emulator().await;
    let ok = sample_user("Bruno");
    let ok_mail = ok.mail.clone().unwrap();
    let mut cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            {
                let mut b = invite_body(&ok.id, &ok_mail);
                b["bogus"] = json!(1);
                b
            },
            400,
            "BadRequest",
            "Invalid property 'bogus'",
        ),
        (
            invite_body(&ok.id, "bruno(costa)@northwind.example"),
            400,
            "BadRequest",
            "is not valid",
        ),
        (
            invite_body(&ok.id, ".bruno@northwind.example"),
            400,
            "BadRequest",
            "is not valid",
        ),
        (
            {
                let mut b = invite_body(&ok.id, &ok_mail);
                b["inviteRedirectUrl"] = json!("ftp://x");
                b
            },
            400,
            "BadRequest",
            "inviteRedirectUrl",
        ),
        (
            invite_body("7d4a3c1e-0000-4000-8000-000000000000", &ok_mail),
            404,
            "Request_ResourceNotFound",
            "does not exist",
        ),
        (
            invite_body(&ok.id, "someone.else@northwind.example"),
            400,
            "BadRequest",
            "must match the user's mail",
        ),
        (
            invite_body(
                &sample_user("Helena").id,
                "helena.brandt@litware-partners.example",
            ),
            400,
            "BadRequest",
            "must match",
        ),
        (
            invite_body(&sample_user("Kofi").id, "kofi@adatum.example"),
            400,
            "BadRequest",
            "must match",
        ),
    ];
    // Users invited to their own mail, and why Graph refuses each.
    let own_mail = [
        (
            "Peter Lindberg",
            "BadRequest",
            "User's email address cannot be in a verified domain",
        ),
        (
            "Samuel",
            "BadRequest",
            "User invitation failed. Invalid request input.",
        ),
        (
            "Anna",
            "BadRequest",
            "B2B users having a mailbox is not supported",
        ),
        ("Marta", "BadRequest", "already a B2B collaboration user"),
        ("Diego", "BadRequest", "already a B2B collaboration user"),
        (
            "Liam",
            "Request_BadRequest",
            "Another object with the same value",
        ),
    ];
    cases.extend(own_mail.map(|(name, code, msg)| {
        let u = sample_user(name);
        (
            invite_body(&u.id, u.mail.as_deref().unwrap()),
            400,
            code,
            msg,
        )
    }));
    for (body, status, code, msg) in cases {
        let (s, v) = g.post_invitation(body.clone()).await;
        assert_eq!(s, status, "{body} → {v}");
        assert_eq!(v["error"]["code"], code, "{body} → {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(msg),
            "{body} → {v}"
        );
        assert!(v["error"]["innerError"]["request-id"].is_string());
    }
    assert!(g.inspect("invitations").await["value"]
        .as_array()
        .unwrap()
        .is_empty());
    // resetRedemption re-invites an already converted user.
    let marta = sample_user("Marta");
    let mut body = invite_body(&marta.id, marta.mail.as_deref().unwrap());
    body["resetRedemption"] = json!(true);
    let (s, _) = g.post_invitation(body).await;
    assert_eq!(s, 201);
    emu.shutdown().await;
}

#[tokio::test]
async fn conversion_changes_the_user_and_is_recorded() {
    let (emu, g) = sample_emulator().await;
    let u = sample_user("Chen");
    let mail = u.mail.clone().unwrap();
    let r = g
        .http
        .post(g.url("/invitations"))
        .bearer_auth(&g.token)
        .header("client-request-id", "11111111-2222-3333-4444-555555555555")
        .json(&invite_body(&u.id, &mail.to_uppercase()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["client-request-id"],
        "11111111-2222-3333-4444-555555555555"
    );
    assert!(r.headers().contains_key("request-id"));
    assert_eq!(r.headers()["x-ms-resource-unit"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "PendingAcceptance");
    assert_eq!(v["invitedUser"]["id"], u.id);
    assert!(v["inviteRedeemUrl"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    let after = g.inspect(&format!("users/{}", u.id)).await;
    assert_eq!(after["externalUserState"], "PendingAcceptance");
    assert!(after["externalUserStateChangeDateTime"].is_string());
    assert_eq!(after["userType"], json!(u.user_type));
    assert_eq!(
        emu.user(&u.id).unwrap().external_user_state.as_deref(),
        Some("PendingAcceptance")
    );
    let inv = g.inspect("invitations").await;
    assert_eq!(inv["value"][0]["userId"], u.id);
    assert_eq!(inv["value"][0]["sendInvitationMessage"], false);
    assert_eq!(emu.invitations().len(), 1);
    // A second invitation without resetRedemption is refused.
    let (s, _) = g.post_invitation(invite_body(&u.id, &mail)).await;
    assert_eq!(s, 400);
    // PATCH
    let r = g
        .patch_user(
            &u.id,
            json!({"userType": "Guest", "displayName": "Chen Wei"}),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(emu.user(&u.id).unwrap().user_type.as_deref(), Some("Guest"));
    let r = g.patch_user(&u.id, json!({"shoeSize": 9})).await;
    assert_eq!(r.status(), 400);
    let stats = g.inspect("stats").await;
    assert_eq!(stats["requests"]["POST /v1.0/invitations"]["201"], 1);
    assert_eq!(stats["requests"]["POST /v1.0/invitations"]["400"], 1);
    assert_eq!(stats["requests"]["PATCH /v1.0/users/{id}"]["204"], 1);
    assert_eq!(
        stats["requests"]["POST /{tenant}/oauth2/v2.0/token"]["200"],
        1
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn write_bucket_answers_429_then_recovers_after_retry_after() {
    let (emu, g) = manual_clock_emulator(|c| c.writes_per_150s = 3).await;
    let id = sample_user("Dana").id;
    let patch = || g.patch_user(&id, json!({"displayName": "Dana W."}));
    for _ in 0..3 {
        assert_eq!(patch().await.status(), 204);
    }
    let r = patch().await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 50);
    assert!(r.headers().contains_key("x-ms-throttle-scope"));
    assert!(r.headers().contains_key("x-ms-throttle-information"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "TooManyRequests");
    emu.clock().advance(Duration::from_secs(retry - 1));
    assert_eq!(patch().await.status(), 429);
    emu.clock().advance(Duration::from_secs(1));
    assert_eq!(patch().await.status(), 204);
    assert_eq!(emu.stats()["throttled"], 2);
    let log = g.inspect("requests").await;
    let throttled: Vec<&Value> = common::elements(&log["value"])
        .iter()
        .filter(|e| e["status"] == 429)
        .collect();
    assert_eq!(throttled[0]["retryAfterMs"], 50_000);
    assert_eq!(throttled[1]["atMs"], 49_000);
    emu.shutdown().await;
}

#[tokio::test]
async fn pacing_at_the_refill_rate_is_never_throttled() {
    let (emu, g) = manual_clock_emulator(|c| c.writes_per_150s = 3).await;
    let users: Vec<_> = Tenant::sample()
        .users
        .into_iter()
        .filter(|u| u.display_name.as_deref().unwrap().contains("("))
        .take(20)
        .collect();
    for (i, u) in users.iter().enumerate() {
        emu.clock().advance(Duration::from_secs(50));
        let r = g.patch_user(&u.id, json!({"accountEnabled": true})).await;
        assert_eq!(r.status(), 204, "request {i}");
    }
    assert_eq!(emu.stats()["throttled"], 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn invitation_bucket_is_per_tenant() {
    let (emu, g) = manual_clock_emulator(|c| c.invitations_per_5s = 2).await;
    let users: Vec<_> = ["Elif", "Farid", "Greta"]
        .iter()
        .map(|n| sample_user(n))
        .collect();
    let mut statuses = Vec::new();
    for u in &users {
        statuses.push(g.invite(u).await.0);
    }
    assert_eq!(statuses, [201, 201, 429]);
    assert!(
        emu.user(&users[2].id)
            .unwrap()
            .external_user_state
            .is_none(),
        "a throttled request is not carried out"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn batch_sub_requests_are_throttled_individually() {
    let (emu, g) = manual_clock_emulator(|c| c.ru_per_10s = Some(4)).await;
    let t = Tenant::sample();
    let requests: Vec<Value> = t.users[..5]
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{}", u.id)}))
        .collect();
    let (s, v) = g.post("/$batch", json!({"requests": requests})).await;
    assert_eq!(s, 200);
    assert_eq!(
        common::numbers(&v["responses"], "status"),
        [200, 200, 429, 429, 429]
    );
    assert_eq!(v["responses"][0]["body"]["id"], t.users[0].id);
    assert_eq!(v["responses"][2]["headers"]["Retry-After"], "5");
    let stats = emu.stats();
    assert_eq!(stats["requests"]["POST /v1.0/$batch"]["200"], 1);
    assert_eq!(stats["requests"]["GET /v1.0/users/{id}"]["200"], 2);
    assert_eq!(stats["requests"]["GET /v1.0/users/{id}"]["429"], 3);
    let too_many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/domains"}))
        .collect();
    let (s, _) = g.post("/$batch", json!({"requests": too_many})).await;
    assert_eq!(s, 400);
    emu.shutdown().await;
}

#[tokio::test]
async fn lost_response_still_records_the_invitation() {
    let (emu, g) = sample_emulator_with(|c| c.lost_response_rate = 1.0).await;
    let u = sample_user("Hiroshi");
    let body = invite_body(&u.id, u.mail.as_deref().unwrap());
    let r = g
        .try_send(reqwest::Method::POST, "/invitations", body)
        .await;
    assert!(r.is_err(), "the client sees no answer: {r:?}");
    let inv = g.inspect("invitations").await;
    assert_eq!(inv["value"][0]["userId"], u.id);
    assert_eq!(
        emu.user(&u.id).unwrap().external_user_state.as_deref(),
        Some("PendingAcceptance")
    );
    // Reads are not affected.
    assert_eq!(g.get("/domains").await.0, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn faults_are_not_carried_out() {
    let (emu, g) = sample_emulator_with(|c| c.fault_rate = 1.0).await;
    let u = sample_user("Ines");
    let (s, v) = g.invite(&u).await;
    assert!([500, 503, 504].contains(&s), "{s} {v}");
    assert!(emu.invitations().is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn block_invitations_answers_403() {
    let (emu, g) = sample_emulator_with(|c| c.block_invitations = true).await;
    let u = sample_user("Jonas");
    let (s, v) = g.invite(&u).await;
    assert_eq!(s, 403);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Invitations are blocked for this directory"));
    emu.shutdown().await;
}

#[tokio::test]
async fn missing_unknown_and_expired_tokens_are_401() {
    let emu = start(EmulatorConfig {
        clock: Clock::manual(),
        ..EmulatorConfig::new(Tenant::sample())
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1.0/users", emu.base_url());
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    let r = http.get(&url).bearer_auth("made-up").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let t = token(&emu).await;
    assert_eq!(
        http.get(&url)
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    emu.clock().advance(Duration::from_secs(3599));
    let r = http.get(&url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "Lifetime validation failed, the token is expired."
    );
    emu.shutdown().await;
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A client assertion signed with the key in `pem_path`, naming its certificate's thumbprint.
fn assertion(pem_path: &str, client_id: &str, aud: &str, alg: &str) -> String {
    use sha2::{Digest, Sha256};
    let text = std::fs::read(pem_path).unwrap();
    let blocks = pem::parse_many(&text).unwrap();
    let cert = blocks.iter().find(|b| b.tag() == "CERTIFICATE").unwrap();
    let key = blocks.iter().find(|b| b.tag() == "PRIVATE KEY").unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        pem::encode(&pem::Pem::new("PRIVATE KEY", key.contents())).as_bytes(),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(if alg == "PS256" {
        jsonwebtoken::Algorithm::PS256
    } else {
        jsonwebtoken::Algorithm::RS256
    });
    header.typ = Some("JWT".into());
    header.x5t_s256 = Some(b64(&Sha256::digest(cert.contents())));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"aud": aud, "iss": client_id, "sub": client_id, "jti": uuid::Uuid::new_v4().to_string(), "nbf": now - 5, "iat": now - 5, "exp": now + 300});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

async fn token_with(emu: &Emulator, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(token_url(emu))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The token endpoint's answer to a client credentials grant signed in with `assertion`.
async fn token_by_assertion(emu: &Emulator, client_id: &str, assertion: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", "https://graph.microsoft.com/.default"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    token_with(emu, &form).await
}

#[tokio::test]
async fn token_endpoint_secrets_and_certificates() {
    let emu = start(EmulatorConfig::new(Tenant::sample())).await;
    let client_id = env(&emu, "AZURE_CLIENT_ID");
    let scope = "https://graph.microsoft.com/.default";
    let base = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id.as_str()),
        ("scope", scope),
    ];

    let (s, v) = token_with(&emu, &[&base[..], &[("client_secret", "wrong")]].concat()).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"], "invalid_client");
    assert_eq!(v["error_codes"][0], 7000215);
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS7000215"));

    let (s, v) = token_with(
        &emu,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "00000000-0000-0000-0000-000000000001"),
            ("scope", scope),
            ("client_secret", "x"),
        ],
    )
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (400, Some(700016)));

    let r = reqwest::Client::new()
        .post(format!(
            "{}/contoso.example/oauth2/v2.0/token",
            emu.base_url()
        ))
        .form(&base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let aud = token_url(&emu);
    for alg in ["RS256", "PS256"] {
        let jwt = assertion(
            "tests/fixtures/app-cert-with-key.pem",
            &client_id,
            &aud,
            alg,
        );
        let (s, v) = token_by_assertion(&emu, &client_id, &jwt).await;
        assert_eq!(s, 200, "{alg}: {v}");
        assert_eq!(v["expires_in"], 3599);
        let t = v["access_token"].as_str().unwrap();
        let r = reqwest::Client::new()
            .get(format!("{}/v1.0/domains", emu.base_url()))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let wrong = assertion(
        "tests/fixtures/wrong-cert-with-key.pem",
        &client_id,
        &aud,
        "RS256",
    );
    let (s, v) = token_by_assertion(&emu, &client_id, &wrong).await;
    assert_eq!(s, 401);
    assert_eq!(v["error_codes"][0], 700027);

    // Right certificate, tampered claims: the signature no longer matches.
    let good = assertion(
        "tests/fixtures/app-cert-with-key.pem",
        &client_id,
        &aud,
        "RS256",
    );
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = b64(json!({"aud": aud, "iss": "x", "sub": "x", "jti": "1", "nbf": 0, "iat": 0, "exp": 9_999_999_999u64}).to_string().as_bytes());
    let (s, v) = token_by_assertion(&emu, &client_id, &parts.join(".")).await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (401, Some(700027)));

    // Wrong audience.
    let jwt = assertion(
        "tests/fixtures/app-cert-with-key.pem",
        &client_id,
        "https://login.microsoftonline.com/x/oauth2/v2.0/token",
        "RS256",
    );
    let (s, _) = token_by_assertion(&emu, &client_id, &jwt).await;
    assert_eq!(s, 401);
    emu.shutdown().await;
}

#[tokio::test]
async fn refuses_non_loopback_addresses() {
    let r = emulator::start(
        EmulatorConfig::new(Tenant::sample()),
        "0.0.0.0:0".parse().unwrap(),
    )
    .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn sample_csv_rows_name_sample_users() {
    // The expected dry-run file covers every data row of users.csv, and its keys exist where the
    // expectation says the user is found.
    let csv = std::fs::read_to_string("sample-data/users.csv").unwrap();
    let expected = std::fs::read_to_string("tests/fixtures/sample-expected.csv").unwrap();
    assert_eq!(csv.lines().count(), expected.lines().count());
    let t = Tenant::sample();
    for line in expected.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let (key, reason) = (cols[1], cols[3]);
        let found = t
            .users
            .iter()
            .any(|u| u.id == key || u.user_principal_name.as_deref() == Some(key));
        match reason {
            "user_not_found" => assert!(!found, "{line}"),
            "bad_input" => {}
            _ => assert!(found, "{line}"),
        }
    }
}

/// A hostile client cannot make the emulator buffer without limit or recurse without limit:
/// both are Graph's 400/413 answers, and the emulator keeps serving afterwards.
#[tokio::test]
async fn oversized_bodies_and_deep_filters_are_refused_like_graph() {
    let (_emu, g) = sample_emulator().await;
    let big = "x".repeat(emulator::BODY_LIMIT + 1);
    let r = g.post_raw("/invitations", "application/json", big).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "RequestEntityTooLarge");

    let deep = format!("{}id eq 'a'{}", "(".repeat(5_000), ")".repeat(5_000));
    let (s, v) = g.get(&format!("/users?$filter={deep}")).await;
    assert_eq!(s, 400, "{v}");
    let deep = format!("{}id eq 'a'{}", "(".repeat(1_000), ")".repeat(1_000));
    let (s, _) = g.get(&format!("/users?$filter={deep}")).await;
    assert_eq!(s, 400);
    let (s, _) = g.get("/users?$top=1").await;
    assert_eq!(s, 200, "the emulator still serves");
}

#[tokio::test]
async fn reads_spend_resource_units_and_a_refused_read_names_the_read_scope() {
    let (emu, g) = manual_clock_emulator(|c| c.ru_per_10s = Some(10)).await;
    let dana = sample_user("Dana").id;
    let read = |select: bool| {
        let path = if select {
            format!("/users/{dana}?$select=id,mail")
        } else {
            format!("/users/{dana}")
        };
        g.http.get(g.url(&path)).bearer_auth(&g.token).send()
    };
    // 1 RU with $select: ten reads spend the bucket of 10.
    for i in 0..10 {
        let r = read(true).await.unwrap();
        assert_eq!(r.status(), 200, "read {i}");
        assert_eq!(r.headers()["x-ms-resource-unit"], "1");
    }
    let r = read(true).await.unwrap();
    assert_eq!(r.status(), 429);
    let header =
        |r: &reqwest::Response, name: &str| r.headers()[name].to_str().unwrap().to_string();
    let scope = header(&r, "x-ms-throttle-scope");
    assert!(scope.starts_with("Tenant_Application/Read/"), "{scope}");
    assert_eq!(
        header(&r, "x-ms-throttle-information"),
        "ResourceUnitLimitExceeded"
    );
    assert_eq!(header(&r, "retry-after"), "1");
    // One second refills 1 RU: a read without $select (2 RU) is refused, one with it goes.
    emu.clock().advance(Duration::from_secs(1));
    let r = read(false).await.unwrap();
    assert_eq!(r.status(), 429, "2 RU without $select");
    assert_eq!(header(&r, "x-ms-resource-unit"), "2");
    assert_eq!(read(true).await.unwrap().status(), 200);
    // A write spends a resource unit too: refused on them, it names both sides.
    let elif = sample_user("Elif");
    let r = g
        .send(
            reqwest::Method::POST,
            "/invitations",
            invite_body(&elif.id, elif.mail.as_deref().unwrap()),
        )
        .await;
    assert_eq!(r.status(), 429);
    let scope = header(&r, "x-ms-throttle-scope");
    assert!(
        scope.starts_with("Tenant_Application/ReadWrite/"),
        "{scope}"
    );
    // A `$batch` costs its sub-requests: 3 s refill 3 RU, so 3 of 4 go through.
    emu.clock().advance(Duration::from_secs(3));
    let requests: Vec<Value> = (0..4)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{dana}?$select=id")}))
        .collect();
    let (s, v) = g.post("/$batch", json!({"requests": requests})).await;
    assert_eq!(s, 200);
    assert_eq!(
        common::numbers(&v["responses"], "status"),
        [200, 200, 200, 429]
    );
    let sub_scope = v["responses"][3]["headers"]["x-ms-throttle-scope"]
        .as_str()
        .unwrap();
    assert!(
        sub_scope.starts_with("Tenant_Application/Read/"),
        "{sub_scope}"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn counting_users_needs_consistency_level_eventual() {
    let (emu, g) = sample_emulator().await;
    let (s, v) = g.get("/users?$count=true&$top=1&$select=id").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "Request_BadRequest");
    let (s, v) = g.get_eventual("/users?$count=true&$top=1&$select=id").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["@odata.count"].as_u64().unwrap() as usize,
        Tenant::sample().users.len()
    );
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    emu.shutdown().await;
}
