//! The emulator refuses and shapes answers as Microsoft Graph does where Microsoft's own clients
//! and the usual conversion mistakes meet it (docs/emulator.md, "Refused like Graph"): an
//! invitation without `invitedUser.id` to a held address, `$batch`'s rules, `$count` without
//! `ConsistencyLevel`, bodies without `Content-Type`, the SDKs' `@odata.type` and writable
//! properties, delta's spellings, non-nullable collections, the diagnostic headers, links built
//! from the host called, and fractional `Retry-After`. Raw HTTP on loopback, no retries.

use b2b_convert::emulator::{EmulatorConfig, Tenant};
use serde_json::{json, Value};

use crate::common;

use common::raw::{
    invite_body, json_of, manual_clock_emulator, sample_emulator, sample_user, start_with_client,
};

const ODATA_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

fn error_of(v: &Value) -> (&str, &str) {
    (
        v["error"]["code"].as_str().unwrap_or(""),
        v["error"]["message"].as_str().unwrap_or(""),
    )
}

/// The sample tenant with Kofi holding an `otherMails` and an `smtp:` proxy address of his own.
fn tenant_with_kofi_addresses() -> Tenant {
    let mut t = Tenant::sample();
    let kofi = t
        .users
        .iter_mut()
        .find(|u| u.display_name.as_deref() == Some("Kofi Asante (Adatum)"))
        .unwrap();
    kofi.other_mails = Some(vec!["kofi.other@adatum.example".into()]);
    kofi.proxy_addresses = Some(vec!["smtp:kofi.proxy@adatum.example".into()]);
    t
}

#[tokio::test]
async fn invitation_without_invited_user_id_to_a_held_address_converts_nobody() {
    let tenant = tenant_with_kofi_addresses();
    let before = tenant.users.clone();
    let (emu, g) = start_with_client(EmulatorConfig::new(tenant)).await;
    let (bruno, kofi, chen) = (
        sample_user("Bruno"),
        sample_user("Kofi"),
        sample_user("Chen"),
    );
    for (address, holder) in [
        ("bruno.costa@northwind.example", &bruno.id), // mail
        ("BRUNO.COSTA@Northwind.example", &bruno.id), // mail, any case
        ("kofi.other@adatum.example", &kofi.id),      // otherMails
        ("kofi.proxy@adatum.example", &kofi.id),      // proxyAddresses
        ("chen.wei@contoso.com", &chen.id),           // userPrincipalName
    ] {
        let body = json!({
            "invitedUserEmailAddress": address,
            "inviteRedirectUrl": "https://myapplications.microsoft.com",
            "sendInvitationMessage": false,
        });
        let (s, v) = g.post_invitation(body).await;
        assert_eq!(s, 400, "{address}: {v}");
        assert_eq!(
            error_of(&v),
            (
                "BadRequest",
                format!("The invited user already exists in the directory as objectID: {holder}")
                    .as_str()
            ),
            "{address}"
        );
    }
    assert!(emu.invitations().is_empty(), "nobody invited");
    for u in &before {
        assert_eq!(emu.user(&u.id).as_ref(), Some(u), "{} unchanged", u.id);
    }
    // The same user named by `invitedUser.id` converts.
    let (s, v) = g
        .post_invitation(invite_body(&bruno.id, "bruno.costa@northwind.example"))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        emu.user(&bruno.id).unwrap().external_user_state.as_deref(),
        Some("PendingAcceptance")
    );
    emu.shutdown().await;
}

fn sub(id: &str, method: &str, url: &str) -> Value {
    json!({"id": id, "method": method, "url": url})
}

fn statuses(v: &Value) -> Vec<(String, u64)> {
    common::elements(&v["responses"])
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn batch_refuses_like_graph() {
    let (emu, g) = sample_emulator().await;
    let (dana, elif) = (sample_user("Dana"), sample_user("Elif"));
    let patch_dana = json!({"id": "p", "method": "PATCH", "url": format!("/users/{}", dana.id),
        "headers": {"Content-Type": "application/json"}, "body": {"jobTitle": "Partner"}});

    // Ids are unique case-insensitively, else the whole batch is refused: nothing carried out.
    let dup =
        json!({"requests": [sub("a", "GET", "/domains"), patch_dana, sub("A", "GET", "/domains")]});
    let (s, v) = g.post("/$batch", dup).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(error_of(&v).0, "BadRequest");
    assert!(error_of(&v).1.contains("'A'"), "{v}");
    // A dependsOn naming no request of the batch, and a cycle, are refused as a whole too.
    for requests in [
        json!([{"id": "1", "method": "GET", "url": "/domains", "dependsOn": ["9"]}]),
        json!([{"id": "1", "method": "GET", "url": "/domains", "dependsOn": ["2"]},
               {"id": "2", "method": "GET", "url": "/domains", "dependsOn": ["1"]}]),
    ] {
        let (s, v) = g.post("/$batch", json!({ "requests": requests })).await;
        assert_eq!(s, 400, "{v}");
    }
    // More than 20 sub-requests.
    let many: Vec<Value> = (0..21)
        .map(|i| sub(&i.to_string(), "GET", "/domains"))
        .collect();
    assert_eq!(g.post("/$batch", json!({ "requests": many })).await.0, 400);
    assert!(emu.patches().is_empty());

    let requests = json!([
        // A URL naming the version, or absolute: 400 for that sub-request.
        sub("v", "GET", &format!("/v1.0/users/{}", dana.id)),
        sub("abs", "GET", "https://graph.microsoft.com/v1.0/domains"),
        // A body without Content-Type: 400, not carried out.
        {"id": "nct", "method": "PATCH", "url": format!("/users/{}", elif.id), "body": {"jobTitle": "Lost"}},
        // A failed request, and one depending on it: 424, not carried out.
        sub("missing", "GET", "/users/7d4a3c1e-0000-4000-8000-000000000000"),
        {"id": "dep", "method": "PATCH", "url": format!("/users/{}", dana.id), "dependsOn": ["missing"],
         "headers": {"Content-Type": "application/json"}, "body": {"jobTitle": "Never"}},
        // Depends on a later request that succeeds: carried out after it.
        {"id": "after", "method": "GET", "url": format!("/users/{}?$select=jobTitle", dana.id), "dependsOn": ["set"]},
        {"id": "set", "method": "PATCH", "url": format!("/users/{}", dana.id),
         "headers": {"content-type": "application/json"}, "body": {"jobTitle": "Partner"}},
    ]);
    let (s, v) = g.post("/$batch", json!({ "requests": requests })).await;
    assert_eq!(s, 200, "{v}");
    let got = statuses(&v);
    let want: Vec<(String, u64)> = [
        ("v", 400),
        ("abs", 400),
        ("nct", 400),
        ("missing", 404),
        ("dep", 424),
        ("after", 200),
        ("set", 204),
    ]
    .iter()
    .map(|(i, s)| (i.to_string(), *s))
    .collect();
    assert_eq!(got, want, "{v}");
    let by_id = |id: &str| {
        common::elements(&v["responses"])
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("dep")["body"]["error"]["code"], "FailedDependency");
    assert!(by_id("nct")["body"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Content-Type"));
    assert!(by_id("v")["body"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("relative"));
    assert_eq!(
        by_id("after")["body"]["jobTitle"],
        "Partner",
        "ran after 'set'"
    );
    let patched: Vec<(String, String)> = emu
        .patches()
        .iter()
        .map(|p| {
            (
                p["userId"].as_str().unwrap().to_string(),
                p["new"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(patched, [(dana.id.clone(), "Partner".to_string())]);
    assert_eq!(emu.user(&elif.id).unwrap().job_title, None);
    emu.shutdown().await;
}

#[tokio::test]
async fn count_needs_consistency_level_and_bodies_need_content_type() {
    let (emu, g) = sample_emulator().await;
    let users = Tenant::sample().users.len();
    let (s, v) = g.get("/users?$top=5&$count=true").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        error_of(&v),
        ("Request_BadRequest", "$count is not currently supported.")
    );
    let (s, v) = g.get_eventual("/users?$top=5&$count=true").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["@odata.count"], users);

    let bruno = sample_user("Bruno");
    let body = serde_json::to_vec(&invite_body(&bruno.id, bruno.mail.as_deref().unwrap())).unwrap();
    for content_type in [None, Some("text/plain")] {
        for (method, path) in [
            (reqwest::Method::POST, "/invitations".to_string()),
            (reqwest::Method::PATCH, format!("/users/{}", bruno.id)),
            (reqwest::Method::POST, "/$batch".to_string()),
        ] {
            let mut rb = g
                .http
                .request(method.clone(), g.url(&path))
                .bearer_auth(&g.token)
                .body(body.clone());
            if let Some(ct) = content_type {
                rb = rb.header("Content-Type", ct);
            }
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), 415, "{method} {path} {content_type:?}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(error_of(&v).0, "UnsupportedMediaType", "{v}");
        }
    }
    assert!(emu.invitations().is_empty());
    assert!(emu.patches().is_empty());
    // With its parameters, application/json is accepted; a POST without a body needs none.
    let r = g
        .post_raw("/invitations", "application/json; charset=utf-8", body)
        .await;
    assert_eq!(r.status(), 201);
    let r = g
        .http
        .post(g.url(&format!("/users/{}/revokeSignInSessions", bruno.id)))
        .bearer_auth(&g.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn sdk_shapes_are_accepted() {
    let (emu, g) = sample_emulator().await;
    let dana = sample_user("Dana");
    let (s, v) = g
        .patch(
            &dana.id,
            json!({
                "@odata.type": "#microsoft.graph.user",
                "jobTitle": "Partner manager",
                "department": "Alliances",
                "givenName": "Dana",
                "surname": "Whitfield",
                "companyName": "Tailspin Toys",
                "businessPhones": ["+1 425 555 0100"],
                "mobilePhone": "+1 425 555 0101",
                "officeLocation": "18/2111",
                "preferredLanguage": "en-US",
                "usageLocation": "US",
                "displayName": "Dana W.",
            }),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = g
        .get_user(
            &dana.id,
            "jobTitle,department,businessPhones,usageLocation,displayName",
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["jobTitle"], "Partner manager");
    assert_eq!(v["department"], "Alliances");
    assert_eq!(v["businessPhones"], json!(["+1 425 555 0100"]));
    assert_eq!(v["usageLocation"], "US");
    assert_eq!(v["displayName"], "Dana W.");
    // Unknown properties and foreign types are refused, nothing changed.
    for (body, code, msg) in [
        (
            json!({"shoeSize": 9, "jobTitle": "x"}),
            "BadRequest",
            "Invalid property 'shoeSize'.",
        ),
        (
            json!({"@odata.type": "#microsoft.graph.group", "jobTitle": "x"}),
            "BadRequest",
            "#microsoft.graph.group",
        ),
        (
            json!({"businessPhones": ["1", "2"]}),
            "Request_BadRequest",
            "businessPhones",
        ),
    ] {
        let (s, v) = g.patch(&dana.id, body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(error_of(&v).0, code, "{body}: {v}");
        assert!(error_of(&v).1.contains(msg), "{body}: {v}");
    }
    assert_eq!(
        emu.user(&dana.id).unwrap().job_title.as_deref(),
        Some("Partner manager")
    );
    // An SDK's invitation: typed objects throughout.
    let bruno = sample_user("Bruno");
    let (s, v) = g.post_invitation(json!({
                "@odata.type": "#microsoft.graph.invitation",
                "invitedUserEmailAddress": bruno.mail,
                "inviteRedirectUrl": "https://myapplications.microsoft.com",
                "sendInvitationMessage": false,
                "invitedUser": {"@odata.type": "#microsoft.graph.user", "id": bruno.id},
                "invitedUserMessageInfo": {
                    "@odata.type": "#microsoft.graph.invitedUserMessageInfo",
                    "ccRecipients": [{"@odata.type": "#microsoft.graph.recipient",
                        "emailAddress": {"@odata.type": "#microsoft.graph.emailAddress", "address": "sponsor@contoso.com"}}],
                },
            }),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["invitedUser"]["id"], json!(bruno.id));

    // Delta's three spellings are one function; `$top` is ignored, the page size is Prefer's.
    let prefer = [("Prefer", "odata.maxpagesize=7")];
    let mut firsts = Vec::new();
    for path in [
        "/users/delta?$select=id,mail",
        "/users/delta()?$select=id,mail",
        "/users/microsoft.graph.delta()?$select=id,mail&$top=5",
        "/users/microsoft.graph.delta?$top=50&$select=id,mail",
    ] {
        let (s, v) = g.get_with(path, &prefer).await;
        assert_eq!(s, 200, "{path}: {v}");
        let ids = common::strings(&v["value"], "id");
        assert_eq!(ids.len(), 7, "{path}");
        let next = v["@odata.nextLink"].as_str().unwrap();
        assert!(next.contains("/v1.0/users/delta?$skiptoken="), "{next}");
        let (s, page2) = g.get_with(next, &prefer).await;
        assert_eq!(s, 200, "{path}: {page2}");
        firsts.push(ids);
    }
    assert!(firsts.windows(2).all(|w| w[0] == w[1]), "{firsts:?}");
    emu.shutdown().await;
}

#[tokio::test]
async fn non_nullable_collections_are_empty_and_every_user_has_created_date_time() {
    let mut tenant = Tenant::sample();
    let aisha_id = tenant.users[0].id.clone();
    let u = &mut tenant.users[0];
    u.other_mails = None;
    u.proxy_addresses = None;
    u.assigned_plans = None;
    u.identities = None;
    u.created_date_time = None;
    let (emu, g) = start_with_client(EmulatorConfig::new(tenant)).await;
    const SELECT: &str = "otherMails,proxyAddresses,assignedPlans,identities,businessPhones,createdDateTime,jobTitle";
    let (s, v) = g.get(&format!("/users/{aisha_id}?$select={SELECT}")).await;
    assert_eq!(s, 200);
    for p in [
        "otherMails",
        "proxyAddresses",
        "assignedPlans",
        "identities",
        "businessPhones",
    ] {
        assert_eq!(v[p], json!([]), "{p}: {v}");
    }
    assert!(v["createdDateTime"].is_string(), "{v}");
    assert!(v["jobTitle"].is_null(), "a nullable property stays null");
    // Every user of a list and of delta, and a new guest created now.
    let guest_id = g.invite_new_guest().await;
    let (_, list) = g.get(&format!("/users?$top=999&$select={SELECT}")).await;
    let (_, delta) = g
        .get_with(
            &format!("/users/delta?$select={SELECT}"),
            &[("Prefer", "odata.maxpagesize=200")],
        )
        .await;
    for page in [&list, &delta] {
        let users = page["value"].as_array().unwrap();
        assert!(users.len() > 50);
        for u in users {
            assert!(u["createdDateTime"].is_string(), "{u}");
            assert!(u["businessPhones"].is_array(), "{u}");
            assert!(u["identities"].is_array(), "{u}");
        }
    }
    let (_, g_user) = g
        .get(&format!("/users/{guest_id}?$select=createdDateTime"))
        .await;
    assert_eq!(
        g_user["createdDateTime"],
        emu.invitations()[0]["createdDateTime"],
        "created by the invitation"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn diagnostic_and_odata_headers_on_every_answer() {
    let (emu, g) = sample_emulator().await;
    let client_id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    // The client's own client-request-id comes back, in the header and in error bodies.
    let r = g
        .http
        .get(g.url("/users/nobody@contoso.com"))
        .bearer_auth(&g.token)
        .header("client-request-id", client_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["client-request-id"], client_id);
    assert_eq!(r.headers()["content-type"], ODATA_JSON);
    assert_eq!(r.headers()["odata-version"], "4.0");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["innerError"]["client-request-id"], client_id);
    // Without one, a generated one equal to request-id.
    for (path, token) in [
        ("/users?$top=1", true),
        ("/domains", true),
        ("/users", false),
    ] {
        let mut rb = g.http.get(g.url(path));
        if token {
            rb = rb.bearer_auth(&g.token);
        }
        let r = rb.send().await.unwrap();
        let h = r.headers();
        let request_id = h["request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
        assert_eq!(h["client-request-id"], request_id, "{path}");
        assert_eq!(h["content-type"], ODATA_JSON, "{path}");
        assert_eq!(h["odata-version"], "4.0", "{path}");
        if token {
            assert_eq!(r.status(), 200, "{path}");
            assert!(h.get("www-authenticate").is_none());
        } else {
            assert_eq!(r.status(), 401);
            let challenge = h["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
        }
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn links_name_the_host_the_client_called() {
    let (emu, g) = sample_emulator().await;
    // The request goes to 127.0.0.1; its Host header names another name for it.
    let host = format!("graph.emulator.test:{}", emu.addr().port());
    let get = |path: &str| {
        let request = g
            .http
            .get(g.url(path))
            .bearer_auth(&g.token)
            .header("Host", host.clone())
            .header("Prefer", "odata.maxpagesize=10");
        json_of(request)
    };
    let assert_on_host = |link: &str, path: &str| {
        assert!(
            link.starts_with(&format!("http://{host}/v1.0/{path}")),
            "{link}"
        );
    };
    let v = get("/users?$top=5").await;
    assert_on_host(v["@odata.nextLink"].as_str().unwrap(), "users?");
    let v = get("/users/delta?$select=id").await;
    let next = v["@odata.nextLink"].as_str().unwrap();
    assert_on_host(next, "users/delta?");
    // Following the link to the address actually listened on gives the deltaLink, named
    // after the host called as well.
    let mut link = next.replace(&host, &emu.addr().to_string());
    let mut delta_link = None;
    for _ in 0..100 {
        let request = g
            .http
            .get(&link)
            .bearer_auth(&g.token)
            .header("Host", host.clone());
        let v = json_of(request).await;
        if let Some(d) = v["@odata.deltaLink"].as_str() {
            delta_link = Some(d.to_string());
            break;
        }
        link = v["@odata.nextLink"]
            .as_str()
            .unwrap()
            .replace(&host, &emu.addr().to_string());
    }
    let delta_link = delta_link.expect("a deltaLink within 100 pages");
    assert_on_host(&delta_link, "users/delta?$deltatoken=");
    // Inside a batch, the batch's host.
    let request = g
        .http
        .post(g.url("/$batch"))
        .bearer_auth(&g.token)
        .header("Host", host.clone())
        .json(&json!({"requests": [sub("1", "GET", "/users?$top=3")]}));
    let v = json_of(request).await;
    assert_on_host(
        v["responses"][0]["body"]["@odata.nextLink"]
            .as_str()
            .unwrap(),
        "users?",
    );
    // Without a Host the client's own address is used: the tool's links are unchanged.
    let (_, v) = g.get("/users?$top=5").await;
    assert!(v["@odata.nextLink"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/v1.0/users?", emu.base_url())));
    emu.shutdown().await;
}

#[tokio::test]
async fn retry_after_can_be_fractional() {
    for (fractional, want) in [(false, "3"), (true, "2.500")] {
        let (emu, g) = manual_clock_emulator(|c| {
            c.ru_per_10s = Some(4);
            c.fractional_retry_after = fractional;
        })
        .await;
        let mut throttled = None;
        for _ in 0..10 {
            let r = g.get_response("/users?$select=id&$top=1").await;
            if r.status() == 429 {
                throttled = Some(r.headers()["retry-after"].to_str().unwrap().to_string());
                break;
            }
        }
        assert_eq!(throttled.as_deref(), Some(want), "fractional: {fractional}");
        // A batch's sub-request says the same.
        let (_, v) = g
            .post(
                "/$batch",
                json!({"requests": [sub("1", "GET", "/users?$select=id&$top=1")]}),
            )
            .await;
        assert_eq!(v["responses"][0]["status"], 429, "{v}");
        assert_eq!(v["responses"][0]["headers"]["Retry-After"], want);
        emu.shutdown().await;
    }
}
