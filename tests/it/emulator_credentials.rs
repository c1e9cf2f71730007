//! The emulator's credential surface over real HTTP on loopback, refusals first: the
//! `passwordProfile` PATCH (permission, directory role in `wids`, admin targets, synced users,
//! complexity), `revokeSignInSessions`, the beta conversion back and the 412 after it, the
//! redemption policies, and the inspection endpoints `/_emulator/secrets`, `revocations`,
//! `conversions-back` and `POST /_emulator/users/{id}`.

use b2b_convert::emulator::{Emulator, EmulatorConfig, Tenant};
use b2b_convert::model::User;
use base64::Engine;
use serde_json::{json, Value};

use crate::common;

use common::raw::{assert_graph_error, invite_body, start_with_client, G};

const USER_ADMIN: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";
const PRIV_AUTH_ADMIN: &str = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13";
const STRONG: &str = "Str0ng!Passw0rd-for-a-test-only";

/// An emulator of `tenant` whose app holds the permissions `roles` and the directory roles
/// `directory_roles`, and a client signed in to it.
async fn app_holding(tenant: &Tenant, roles: &[&str], directory_roles: &[&str]) -> (Emulator, G) {
    start_with_client(EmulatorConfig {
        app_roles: roles.iter().map(|r| r.to_string()).collect(),
        app_directory_roles: directory_roles.iter().map(|r| r.to_string()).collect(),
        ..EmulatorConfig::new(tenant.clone())
    })
    .await
}

/// A generated tenant whose user 7 holds User Administrator (one in a hundred does).
fn tenant() -> Tenant {
    Tenant::generate(600, 11)
}

/// A cloud-only, enabled, not yet converted user who holds no role.
fn plain_cloud_user(t: &Tenant) -> User {
    t.users
        .iter()
        .find(|u| {
            u.on_premises_sync_enabled.is_none()
                && u.external_user_state.is_none()
                && u.account_enabled == Some(true)
                && !t.directory_roles.contains_key(&u.id)
        })
        .cloned()
        .unwrap()
}

fn denied(s: u16, v: &Value) {
    let message = "Insufficient privileges to complete the operation.";
    assert_graph_error((s, v), 403, "Authorization_RequestDenied", message);
}

fn password_body(p: &str) -> Value {
    json!({"passwordProfile": {"password": p, "forceChangePasswordNextSignIn": false}})
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// Invite `u` to its own `mail` and let the partner redeem.
async fn convert_and_redeem(g: &G, u: &User) {
    let (s, v) = g.invite(u).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(g.redeem(&u.id).await.0, 200);
}

async fn beta_post(g: &G, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = g
        .http
        .post(format!("{}/beta{path}", g.base))
        .bearer_auth(&g.token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn secrets_hold(emu: &Emulator, id: &str, password: &str) -> bool {
    emu.secrets()
        .iter()
        .any(|s| s["userId"] == id && s["password"] == password)
}

#[tokio::test]
async fn password_patch_needs_the_permission_and_the_user_administrator_role() {
    let t = tenant();
    let target = plain_cloud_user(&t);

    // The default app: User.ReadWrite.All, but its service principal holds no role.
    let (emu, g) = start_with_client(EmulatorConfig::new(t.clone())).await;
    assert!(claims(&g.token).get("wids").is_none());
    let (s, v) = g.patch(&target.id, password_body(STRONG)).await;
    denied(s, &v);
    assert!(emu.secrets().is_empty());
    assert_eq!(
        emu.user(&target.id).unwrap().last_password_change_date_time,
        None
    );
    emu.shutdown().await;

    // The role, but no permission that covers passwords.
    let (emu, g) = app_holding(&t, &["User.Read.All", "User.Invite.All"], &[USER_ADMIN]).await;
    let (s, v) = g.patch(&target.id, password_body(STRONG)).await;
    denied(s, &v);
    emu.shutdown().await;

    // Least privilege: User-PasswordProfile.ReadWrite.All and User Administrator.
    let (emu, g) = app_holding(
        &t,
        &["User.Read.All", "User-PasswordProfile.ReadWrite.All"],
        &[USER_ADMIN],
    )
    .await;
    assert_eq!(claims(&g.token)["wids"], json!([USER_ADMIN]));
    let r = g.patch_user(&target.id, password_body(STRONG)).await;
    assert_eq!(r.status(), 204);
    let after = emu.user(&target.id).unwrap();
    assert!(after.last_password_change_date_time.is_some());
    let (s, v) = g.get_user(&target.id, "lastPasswordChangeDateTime").await;
    assert_eq!(s, 200);
    assert_eq!(
        v["lastPasswordChangeDateTime"].as_str(),
        after.last_password_change_date_time.as_deref()
    );
    assert!(secrets_hold(&emu, &target.id, STRONG));
    let patches = emu.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0]["property"], "passwordProfile");
    assert_eq!(patches[0]["new"], "set");
    assert_eq!(patches[0]["old"], Value::Null);
    let inspected = g.inspect("patches").await;
    assert!(!inspected.to_string().contains(STRONG), "{inspected}");
    assert_eq!(g.inspect("secrets").await["value"][0]["password"], STRONG);
    // That permission covers the password only, not mail.
    let (s, v) = g.patch(&target.id, json!({"userType": "Guest"})).await;
    denied(s, &v);
    emu.shutdown().await;
}

#[tokio::test]
async fn password_patch_refuses_admin_targets_synced_users_and_weak_passwords() {
    let t = tenant();
    let admin = t.users[7].clone();
    assert!(t.holds_admin_role(&admin.id), "user 7 holds a role");
    let cloud = plain_cloud_user(&t);
    let synced = t
        .users
        .iter()
        .find(|u| u.on_premises_sync_enabled == Some(true))
        .cloned()
        .unwrap();

    // `--app-directory-roles` takes display names; tokens carry template ids.
    let ids = b2b_convert::emulator::directory_role_ids(
        "User Administrator, privileged authentication administrator",
    )
    .unwrap();
    assert_eq!(ids, vec![USER_ADMIN, PRIV_AUTH_ADMIN]);
    assert!(b2b_convert::emulator::directory_role_ids("Chief Wizard").is_err());

    let (emu, g) = app_holding(&t, &["User.ReadWrite.All"], &[USER_ADMIN]).await;
    let (s, v) = g.patch(&admin.id, password_body(STRONG)).await;
    denied(s, &v);
    let (s, v) = g.patch(&synced.id, password_body(STRONG)).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("on-premises mastered"),
        "{v}"
    );
    for weak in [
        "Sh0rt!",
        "alllowercaseletters",
        "NoDigitsOrSymbols",
        "Ünïcödé1!aA",
    ] {
        let (s, v) = g.patch(&cloud.id, password_body(weak)).await;
        assert_eq!(s, 400, "{weak}: {v}");
        assert_eq!(v["error"]["code"], "Request_BadRequest");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("complexity"),
            "{v}"
        );
    }
    assert!(emu.secrets().is_empty());
    assert!(emu.patches().is_empty());
    emu.shutdown().await;

    // Privileged Authentication Administrator may reset an admin's password.
    let (emu, g) = app_holding(&t, &["User.ReadWrite.All"], &[PRIV_AUTH_ADMIN]).await;
    let (s, v) = g.patch(&admin.id, password_body(STRONG)).await;
    assert_eq!(s, 204, "{v}");
    assert!(secrets_hold(&emu, &admin.id, STRONG));
    emu.shutdown().await;
}

#[tokio::test]
async fn revoke_sign_in_sessions_needs_its_permission_and_moves_the_timestamp() {
    let t = tenant();
    let u = plain_cloud_user(&t);
    let (emu, g) = app_holding(&t, &["User.Read.All"], &[]).await;
    let (s, v) = g
        .post(&format!("/users/{}/revokeSignInSessions", u.id), json!({}))
        .await;
    denied(s, &v);
    assert!(emu.revocations().is_empty());
    emu.shutdown().await;

    let (emu, g) = app_holding(&t, &["User.Read.All", "User.RevokeSessions.All"], &[]).await;
    let (s, v) = g
        .post(&format!("/users/{}/revokeSignInSessions", u.id), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["value"], true);
    let after = emu.user(&u.id).unwrap();
    assert!(after.sign_in_sessions_valid_from_date_time.is_some());
    let revocations = g.inspect("revocations").await["value"].clone();
    assert_eq!(revocations.as_array().unwrap().len(), 1);
    assert_eq!(revocations[0]["userId"], u.id.as_str());
    let (s, _) = g
        .post(
            "/users/00000000-0000-0000-0000-000000000000/revokeSignInSessions",
            json!({}),
        )
        .await;
    assert_eq!(s, 404);
    emu.shutdown().await;
}

#[tokio::test]
async fn conversion_back_rules_effects_and_the_412_after_it() {
    let mut t = tenant();
    // A synced user whose sync rule no longer writes onPremisesUserPrincipalName: convertible.
    let synced_pos = t
        .users
        .iter()
        .position(|u| {
            u.on_premises_sync_enabled == Some(true) && u.on_premises_user_principal_name.is_some()
        })
        .unwrap();
    t.users[synced_pos].on_premises_user_principal_name = None;
    let synced = t.users[synced_pos].clone();
    let cloud = plain_cloud_user(&t);
    let admin = t.users[7].clone();
    let untouched = t
        .users
        .iter()
        .filter(|u| u.id != cloud.id && u.external_user_state.is_none())
        .nth(3)
        .cloned()
        .unwrap();

    let (emu, g) = start_with_client(EmulatorConfig::new(t.clone())).await;
    let path = |u: &User| format!("/users/{}/convertExternalToInternalMemberUser", u.id);

    // Not (yet) a redeemed B2B user.
    let (s, v) = beta_post(&g, &path(&untouched), None).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["error"]["message"],
        "The user authentication is already internal and isn't eligible for conversion."
    );
    let (s, _) = g.invite(&cloud).await;
    assert_eq!(s, 201);
    let (s, _) = beta_post(&g, &path(&cloud), None).await;
    assert_eq!(s, 400, "pending acceptance: not redeemed, not eligible");
    assert_eq!(g.redeem(&cloud.id).await.0, 200);

    // Cloud users need a UPN on a verified domain and a valid password.
    let upn = cloud.user_principal_name.clone().unwrap();
    let cases = [
        (json!({}), "The provided UPN can't be empty."),
        (
            json!({"userPrincipalName": "x@fabrikam.com", "passwordProfile": {"password": STRONG}}),
            "The provided UPN doesn't have a valid domain.",
        ),
        (
            json!({"userPrincipalName": upn, "passwordProfile": {"password": "weak"}}),
            "The provided password isn't valid.",
        ),
        (
            json!({"userPrincipalName": upn}),
            "The provided password isn't valid.",
        ),
    ];
    for (body, message) in cases {
        let (s, v) = beta_post(&g, &path(&cloud), Some(body.clone())).await;
        assert_eq!(
            (s, v["error"]["message"].as_str()),
            (400, Some(message)),
            "{body}"
        );
    }
    assert!(emu.conversions_back().is_empty());

    let body = json!({
        "userPrincipalName": upn,
        "passwordProfile": {"password": STRONG, "forceChangePasswordNextSignIn": true},
    });
    let (s, v) = beta_post(&g, &path(&cloud), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["userPrincipalName"], upn.as_str());
    let on = v["convertedToInternalUserDateTime"]
        .as_str()
        .unwrap()
        .to_string();
    let after = emu.user(&cloud.id).unwrap();
    assert_eq!(after.user_type.as_deref(), Some("Member"));
    assert_eq!(after.external_user_state, None);
    assert_eq!(after.creation_type, None);
    assert_eq!(
        after.external_user_converted_on.as_deref(),
        Some(on.as_str())
    );
    assert!(after.last_password_change_date_time.is_some());
    assert!(secrets_hold(&emu, &cloud.id, STRONG));
    let back = g.inspect("conversions-back").await["value"].clone();
    assert_eq!(back[0]["userId"], cloud.id.as_str());
    assert_eq!(back[0]["body"]["passwordProfile"]["password"], "set");
    assert!(!back.to_string().contains(STRONG));

    // A second conversion back, and a new invitation: refused.
    let (s, _) = beta_post(&g, &path(&cloud), None).await;
    assert_eq!(s, 400);
    let (s, v) = g.invite(&cloud).await;
    assert_eq!(s, 412, "{v}");

    // externalUserConvertedOn is beta-only: v1.0 refuses it, beta lists who carries it.
    let (s, _) = g.get_user(&cloud.id, "id,externalUserConvertedOn").await;
    assert_eq!(s, 400);
    let (s, v) = g
        .get(&format!(
            "{}/beta/users/{}?$select=id,externalUserConvertedOn",
            g.base, cloud.id
        ))
        .await;
    assert_eq!(
        (s, v["externalUserConvertedOn"].as_str()),
        (200, Some(on.as_str()))
    );
    let (s, v) = g
        .get(&format!(
            "{}/beta/users?$filter=externalUserConvertedOn ge 1900-01-01T00:00:00Z&$select=id,externalUserConvertedOn",
            g.base
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(common::strings(&v["value"], "id"), [cloud.id.as_str()]);

    // Synced users: no UPN, no password; an empty body converts them.
    convert_and_redeem(&g, &synced).await;
    let (s, v) = beta_post(
        &g,
        &path(&synced),
        Some(json!({"userPrincipalName": synced.user_principal_name})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "For users synchronized from on-premises, userPrincipalName and passwordProfile must be empty"
    );
    let (s, v) = beta_post(&g, &path(&synced), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["userPrincipalName"],
        synced.user_principal_name.clone().unwrap().as_str()
    );
    assert!(!secrets_hold(&emu, &synced.id, STRONG));
    assert_eq!(emu.secrets().len(), 1, "only the cloud user got a password");

    // A user holding a role (the earlier documentation's rule).
    convert_and_redeem(&g, &admin).await;
    let (s, v) = beta_post(&g, &path(&admin), None).await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "A user can't be converted if they have a role assigned to them."
    );
    assert_eq!(emu.conversions_back().len(), 2);
    emu.shutdown().await;

    // Without User-ConvertToInternal.ReadWrite.All or User.ReadWrite.All: 403.
    let (emu, g) = app_holding(&t, &["User.Read.All", "User.Invite.All"], &[]).await;
    let (s, v) = beta_post(&g, &path(&untouched), None).await;
    denied(s, &v);
    emu.shutdown().await;
}

#[tokio::test]
async fn redemption_policies_need_policy_read_all() {
    let t = tenant();
    let email = "/policies/authenticationMethodsPolicy/authenticationMethodConfigurations/email";
    let cross = "/policies/crossTenantAccessPolicy/default";
    let (emu, g) = start_with_client(EmulatorConfig::new(t.clone())).await;
    for path in [email, cross] {
        let (s, v) = g.get(path).await;
        denied(s, &v);
    }
    emu.shutdown().await;

    let mut blocked = t.clone();
    blocked.policies.email_otp_state = "disabled".into();
    blocked.policies.b2b_collaboration_inbound_blocked = true;
    for (tenant, otp, access) in [(t, "enabled", "allowed"), (blocked, "disabled", "blocked")] {
        let (emu, g) = app_holding(&tenant, &["User.Read.All", "Policy.Read.All"], &[]).await;
        let (s, v) = g.get(email).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["state"], otp);
        assert_eq!(v["allowExternalIdToUseEmailOtp"], "default");
        let (s, v) = g.get(cross).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["b2bCollaborationInbound"]["usersAndGroups"]["accessType"],
            access
        );
        assert_eq!(
            v["b2bCollaborationInbound"]["applications"]["accessType"],
            access
        );
        emu.shutdown().await;
    }
}

#[tokio::test]
async fn generated_synced_users_carry_sid_and_sam_and_admins_exist() {
    let t = Tenant::generate(600, 3);
    let synced: Vec<&User> = t
        .users
        .iter()
        .filter(|u| u.on_premises_sync_enabled == Some(true))
        .collect();
    assert!(!synced.is_empty());
    for u in &synced {
        let sid = u.on_premises_security_identifier.as_deref().unwrap();
        assert!(sid.starts_with("S-1-5-21-"), "{sid}");
        let sam = u.on_premises_sam_account_name.as_deref().unwrap();
        assert!(!sam.is_empty() && sam.len() <= 20, "{sam}");
    }
    let sids: std::collections::HashSet<_> = synced
        .iter()
        .map(|u| u.on_premises_security_identifier.clone())
        .collect();
    assert_eq!(sids.len(), synced.len(), "SIDs are unique");
    assert!(t
        .users
        .iter()
        .filter(|u| u.on_premises_sync_enabled != Some(true))
        .all(|u| u.on_premises_security_identifier.is_none()));
    assert_eq!(t.directory_roles.len(), 6, "one user in a hundred");
    assert_eq!(t, Tenant::generate(600, 3), "still reproducible");
}

#[tokio::test]
async fn admin_sets_user_properties_through_the_inspection_endpoint() {
    let t = tenant();
    let u = plain_cloud_user(&t);
    let (emu, g) = start_with_client(EmulatorConfig::new(t)).await;
    let post = |body: Value| {
        g.http
            .post(format!("{}/_emulator/users/{}", g.base, u.id))
            .json(&body)
            .send()
    };
    let r = post(json!({"mail": "new.address@fabrikam.com", "externalUserConvertedOn": "2026-11-02T10:00:00Z"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = emu.user(&u.id).unwrap();
    assert_eq!(after.mail.as_deref(), Some("new.address@fabrikam.com"));
    assert_eq!(
        after.external_user_converted_on.as_deref(),
        Some("2026-11-02T10:00:00Z")
    );
    for bad in [
        json!({"id": "other"}),
        json!({"favouriteColour": "blue"}),
        json!({"accountEnabled": "yes"}),
    ] {
        let r = post(bad.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_eq!(
        emu.user(&u.id).unwrap(),
        after,
        "refused changes change nothing"
    );
    // A converted-back user set this way is refused an invitation, as Graph does.
    let (s, _) = g
        .post_invitation(invite_body(&u.id, "new.address@fabrikam.com"))
        .await;
    assert_eq!(s, 412);
    emu.shutdown().await;
}

#[tokio::test]
async fn directory_roles_list_who_holds_an_admin_role() {
    let t = tenant();
    let holders: Vec<String> = t.directory_roles.keys().cloned().collect();
    assert_eq!(holders.len(), 6);
    let (emu, g) = start_with_client(EmulatorConfig::new(t.clone())).await;
    let (s, v) = g.get("/directoryRoles?$expand=members").await;
    denied(s, &v);
    emu.shutdown().await;

    let (emu, g) = app_holding(&t, &["User.Read.All", "RoleManagement.Read.Directory"], &[]).await;
    let (s, v) = g.get("/directoryRoles?$expand=members").await;
    assert_eq!(s, 200, "{v}");
    let roles = v["value"].as_array().unwrap();
    assert_eq!(roles.len(), 1, "only activated roles: {v}");
    assert_eq!(roles[0]["roleTemplateId"], USER_ADMIN);
    assert_ne!(
        roles[0]["id"], USER_ADMIN,
        "a role's id is not its template id"
    );
    let mut members = common::strings(&roles[0]["members"], "id");
    members.sort();
    let mut want = holders;
    want.sort();
    assert_eq!(members, want);
    let (s, v) = g.get("/directoryRoles").await;
    assert_eq!(s, 200);
    assert!(v["value"][0].get("members").is_none());
    let (s, _) = g.get("/directoryRoles?$expand=owners").await;
    assert_eq!(s, 400);
    emu.shutdown().await;
}
