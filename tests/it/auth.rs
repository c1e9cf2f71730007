//! Sign-in methods and preflight against the emulator over loopback: each `--auth` method, each
//! preflight finding, and a run that stops before its first invitation when it cannot work.

use crate::common;

use std::path::Path;

use b2b_convert::emulator::{Emulator, EmulatorConfig, Tenant};
use common::Ran;

fn config(roles: &str) -> EmulatorConfig {
    let mut c = EmulatorConfig::new(Tenant::sample());
    c.app_roles = roles.split(',').map(str::to_string).collect();
    c.device_code_interval = std::time::Duration::ZERO;
    c
}

const ALL: &str =
    "User.Invite.All,User.ReadWrite.All,Domain.Read.All,GroupMember.Read.All,Policy.Read.All";

/// The binary with the emulator's environment, minus `remove`, plus `add`.
async fn run_with(
    emu: &Emulator,
    db: &Path,
    args: &[&str],
    remove: &[&str],
    add: &[(&str, String)],
) -> Ran {
    let mut cmd = common::command(emu, db, args);
    for r in remove {
        cmd.env_remove(r);
    }
    for (k, v) in add {
        cmd.env(k, v);
    }
    common::run_command(cmd).await
}

/// `preflight` with the emulator's environment plus `add`.
async fn preflight_adding(emu: &Emulator, db: &Path, add: &[(&str, String)]) -> Ran {
    run_with(emu, db, &["preflight"], &[], add).await
}

/// The app's own credentials, which the other sign-in methods must do without.
const APP_CREDENTIALS: [&str; 2] = ["AZURE_CLIENT_SECRET", "AZURE_CLIENT_ID"];

fn requests(emu: &Emulator, key: &str, status: &str) -> u64 {
    emu.stats()["requests"][key][status].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn clean_preflight_says_ready() {
    let emu = common::start(config(ALL)).await;
    let (_dir, db) = common::temp_db();
    let r = common::run(
        &emu,
        &db,
        &[
            "preflight",
            "--group",
            "7495d3fb-9db2-5dc3-aebf-373bb267b37e",
        ],
    )
    .await;
    r.assert_exit(0);
    r.assert_stdout_has("ready: the run will work");
    r.assert_stdout_has("User.Invite.All granted");
    r.assert_stdout_has("allowInvitesFrom is everyone");
    r.assert_stdout_has("drops customizedMessageBody");
}

#[tokio::test]
async fn missing_permission_is_named_exactly() {
    let emu = common::start(config("User.Read.All,Domain.Read.All")).await;
    let (_dir, db) = common::temp_db();
    let r = common::run(&emu, &db, &["preflight", "--set-mail", "--json"]).await;
    r.assert_exit(3);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["ready"], false);
    let missing = common::strings_where(&v["checks"], "detail", |c| c["status"] == "missing");
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(
        missing[0].contains("application permission User.Invite.All"),
        "{missing:?}"
    );
    assert!(missing[1].contains("User.ReadWrite.All"), "{missing:?}");
}

#[tokio::test]
async fn restrictive_invitation_policy_stops_app_only_sign_in() {
    let mut c = config(ALL);
    c.allow_invites_from = "adminsAndGuestInviters".into();
    let emu = common::start(c).await;
    let (_dir, db) = common::temp_db();
    let r = common::run(&emu, &db, &["preflight"]).await;
    r.assert_exit(3);
    r.assert_stdout_has("[FIX]  invitation policy: allowInvitesFrom is adminsAndGuestInviters: an app cannot invite");
}

#[tokio::test]
async fn bad_and_expired_secrets_are_shown_once_with_a_fix() {
    let mut tenant = Tenant::sample();
    let emu = common::start(config(ALL)).await;
    let (_dir, db) = common::temp_db();
    let r = preflight_adding(&emu, &db, &[("AZURE_CLIENT_SECRET", "wrong".into())]).await;
    r.assert_exit(3);
    assert_eq!(r.stdout.matches("AADSTS7000215").count(), 1, "{}", r.stdout);
    r.assert_stdout_has("Fix: the client secret is wrong");
    assert!(!r.stdout.contains("wrong\n") && !r.stderr.contains("AADSTS7000215"));
    emu.shutdown().await;

    let app = tenant
        .apps
        .iter_mut()
        .find(|a| a.client_secret.is_some())
        .unwrap();
    app.secret_expires = Some("2020-01-01T00:00:00Z".into());
    let mut c = config(ALL);
    c.tenant = tenant;
    let emu = common::start(c).await;
    let r = common::run(&emu, &db, &["preflight"]).await;
    r.assert_exit(3);
    r.assert_stdout_has("AADSTS7000222");
    r.assert_stdout_has("the client secret has expired: create a new one");
    // The token endpoint answers invalid_client with 401, as Entra does.
    assert_eq!(requests(&emu, "POST /{tenant}/oauth2/v2.0/token", "401"), 1);
}

#[tokio::test]
async fn run_without_invite_permission_stops_before_any_invitation() {
    let emu = common::start(config(
        "User.ReadWrite.All,Domain.Read.All,GroupMember.Read.All",
    ))
    .await;
    let (_dir, db) = common::temp_db();
    let csv = common::sample_csv();
    let r = common::run_csv(&emu, &db, &csv, "--yes").await;
    r.assert_exit(4);
    r.assert_stderr_has("grant the Microsoft Graph application permission User.Invite.All");
    assert!(emu.invitations().is_empty());
    assert_eq!(requests(&emu, "POST /v1.0/invitations", "403"), 0);
    assert!(
        !r.stdout.contains("run-id:"),
        "no run is created: nothing can end failed"
    );

    // A dry run needs only the read permissions.
    let r = common::run_csv(&emu, &db, &csv, "--dry-run").await;
    r.assert_finished();
    let items = common::items(&db, r.run_id());
    assert_eq!(
        common::count(&items, b2b_convert::item::ItemState::Failed),
        0
    );
}

#[tokio::test]
async fn device_code_sign_in_is_delegated() {
    let mut c = config(ALL);
    c.device_code_approve_after = 3;
    let emu = common::start(c).await;
    let (_dir, db) = common::temp_db();
    let r = run_with(
        &emu,
        &db,
        &["preflight", "--auth", "device-code"],
        &APP_CREDENTIALS,
        &[],
    )
    .await;
    r.assert_exit(0);
    r.assert_stderr_has("https://microsoft.com/devicelogin");
    r.assert_stdout_has("(delegated)");
    r.assert_stdout_has("User.Invite.All granted");
    assert_eq!(
        requests(&emu, "POST /{tenant}/oauth2/v2.0/devicecode", "200"),
        1
    );
    assert_eq!(
        requests(&emu, "POST /{tenant}/oauth2/v2.0/token", "400"),
        2,
        "two pending polls"
    );
    assert_eq!(requests(&emu, "POST /{tenant}/oauth2/v2.0/token", "200"), 1);
}

/// Unix only: the stand-in `az` is a shell script.
#[cfg(unix)]
#[tokio::test]
async fn azure_cli_token_and_its_error() {
    use std::os::unix::fs::PermissionsExt;
    let emu = common::start(config(ALL)).await;
    let dir = tempfile::tempdir().unwrap();
    // A token the stand-in `az` hands out, obtained the way az would: from the token endpoint.
    let answer = common::raw::token(&emu).await;
    let expires_on = chrono::Utc::now().timestamp() + 3000;
    let script = dir.path().join("az");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1 $2 $3 $4\" = \"account get-access-token --resource https://graph.microsoft.com\" ] || exit 9\necho '{{\"accessToken\":\"{}\",\"expires_on\":{expires_on},\"tokenType\":\"Bearer\"}}'\n",
            answer
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.path().join("q.db");
    let az = ("B2B_AZ_PATH", script.to_string_lossy().into_owned());
    let r = run_with(
        &emu,
        &db,
        &["preflight", "--auth", "azure-cli"],
        &["AZURE_CLIENT_SECRET"],
        std::slice::from_ref(&az),
    )
    .await;
    r.assert_exit(0);
    // Without --auth, the chain falls through to Azure CLI when nothing else is configured.
    let r = run_with(
        &emu,
        &db,
        &["preflight"],
        &["AZURE_CLIENT_SECRET"],
        std::slice::from_ref(&az),
    )
    .await;
    r.assert_exit(0);

    std::fs::write(
        &script,
        "#!/bin/sh\necho \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1\n",
    )
    .unwrap();
    let r = run_with(&emu, &db, &["preflight", "--auth", "azure-cli"], &[], &[az]).await;
    r.assert_exit(3);
    r.assert_stdout_has("ERROR: Please run 'az login' to setup account.");
}

#[tokio::test]
async fn managed_identity_app_service_and_instance_metadata() {
    let emu = common::start(config(ALL)).await;
    let (_dir, db) = common::temp_db();
    let mi = [
        ("IDENTITY_ENDPOINT", emu.identity_endpoint()),
        ("IDENTITY_HEADER", emu.identity_header()),
    ];
    // Chosen by the chain from IDENTITY_ENDPOINT alone.
    let r = run_with(&emu, &db, &["preflight"], &APP_CREDENTIALS, &mi).await;
    r.assert_exit(0);
    assert_eq!(requests(&emu, "GET /msi/token", "200"), 1);
    let wrong = [mi[0].clone(), ("IDENTITY_HEADER", "nope".to_string())];
    let r = run_with(&emu, &db, &["preflight"], &APP_CREDENTIALS, &wrong).await;
    r.assert_exit(3);
    assert_eq!(requests(&emu, "GET /msi/token", "401"), 1);

    // The instance metadata endpoint only with an explicit --auth, at B2B_IMDS_URL (loopback).
    let imds = [("B2B_IMDS_URL", emu.base_url())];
    let r = run_with(
        &emu,
        &db,
        &["preflight", "--auth", "managed-identity"],
        &APP_CREDENTIALS,
        &imds,
    )
    .await;
    r.assert_exit(0);
    assert_eq!(
        requests(&emu, "GET /metadata/identity/oauth2/token", "200"),
        1
    );
}

#[tokio::test]
async fn workload_identity_uses_the_federated_token_file() {
    let mut tenant = Tenant::sample();
    let app = tenant
        .apps
        .iter_mut()
        .find(|a| a.client_secret.is_some())
        .unwrap();
    app.federated_credentials = vec![b2b_convert::emulator::FederatedCredential {
        issuer: "https://token.actions.githubusercontent.com".into(),
        subject: "repo:contoso/migration:environment:prod".into(),
    }];
    let mut c = config(ALL);
    c.tenant = tenant;
    let emu = common::start(c).await;
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp();
    let external = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({
            "iss": "https://token.actions.githubusercontent.com",
            "sub": "repo:contoso/migration:environment:prod",
            "aud": "api://AzureADTokenExchange",
            "iat": now, "nbf": now, "exp": now + 600,
        }),
        &jsonwebtoken::EncodingKey::from_secret(b"the issuer's key"),
    )
    .unwrap();
    let file = dir.path().join("federated-token");
    std::fs::write(&file, external).unwrap();
    let db = dir.path().join("q.db");
    let env = [(
        "AZURE_FEDERATED_TOKEN_FILE",
        file.to_string_lossy().into_owned(),
    )];
    let r = run_with(&emu, &db, &["preflight"], &["AZURE_CLIENT_SECRET"], &env).await;
    r.assert_exit(0);
    r.assert_stdout_has("(app-only)");
}

#[tokio::test]
async fn device_code_endpoint_answers_pending_slow_down_and_expired() {
    let mut c = config(ALL);
    c.device_code_approve_after = 0;
    c.device_code_interval = std::time::Duration::from_secs(5);
    c.clock = b2b_convert::emulator::Clock::manual();
    let emu = common::start(c).await;
    let http = reqwest::Client::new();
    let base = format!("{}/{}/oauth2/v2.0", emu.base_url(), emu.tenant_id());
    let dc: serde_json::Value = http
        .post(format!("{base}/devicecode"))
        .form(&[
            ("client_id", "14d82eec-204b-4c2f-b7e8-296a70dab67e"),
            (
                "scope",
                "https://graph.microsoft.com/.default offline_access",
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dc["interval"], 5);
    assert_eq!(dc["verification_uri"], "https://microsoft.com/devicelogin");
    let code = dc["device_code"].as_str().unwrap().to_string();
    let poll = || async {
        let r = http
            .post(format!("{base}/token"))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", "14d82eec-204b-4c2f-b7e8-296a70dab67e"),
                ("device_code", code.as_str()),
            ])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        (status, v["error"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(poll().await, (400, "authorization_pending".into()));
    assert_eq!(poll().await, (400, "slow_down".into()));
    emu.clock().advance(std::time::Duration::from_secs(6));
    assert_eq!(poll().await, (400, "authorization_pending".into()));
    emu.clock().advance(std::time::Duration::from_secs(900));
    assert_eq!(poll().await, (400, "expired_token".into()));
}

#[tokio::test]
async fn graph_answers_403_without_the_permission_it_needs() {
    let emu = common::start(config("User.Read.All")).await;
    let env: std::collections::HashMap<_, _> = emu.client_env().into_iter().collect();
    let http = reqwest::Client::new();
    let token = common::raw::token(&emu).await;
    let token = token.as_str();
    let claims = b2b_convert::graph::jwt::claims(token).unwrap();
    assert_eq!(claims["tid"], emu.tenant_id());
    assert_eq!(claims["appid"], env["AZURE_CLIENT_ID"].as_str());
    assert_eq!(claims["roles"], serde_json::json!(["User.Read.All"]));
    let get = |path: &str| {
        http.get(format!("{}/v1.0/{path}", emu.base_url()))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(get("users?$top=1").await.unwrap().status(), 200);
    let denied = get("domains").await.unwrap();
    assert_eq!(denied.status(), 403);
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Authorization_RequestDenied");
    assert_eq!(
        get("policies/authorizationPolicy").await.unwrap().status(),
        403
    );
}

#[tokio::test]
async fn certificate_sign_in_and_its_refusals() {
    let mut tenant = Tenant::sample();
    let emu = common::start(config(ALL)).await;
    let (_dir, db) = common::temp_db();
    let cert = |name: &str| {
        (
            "AZURE_CLIENT_CERTIFICATE_PATH",
            common::repo_path(&format!("tests/fixtures/{name}"))
                .to_string_lossy()
                .into_owned(),
        )
    };
    let args = ["preflight", "--auth", "certificate"];
    let r = run_with(&emu, &db, &args, &[], &[cert("app-cert-with-key.pem")]).await;
    r.assert_exit(0);
    let r = run_with(&emu, &db, &args, &[], &[cert("wrong-cert-with-key.pem")]).await;
    r.assert_exit(3);
    r.assert_stdout_has("AADSTS700027");
    r.assert_stdout_has("Fix: the certificate is not registered on the app");
    emu.shutdown().await;

    let app = tenant
        .apps
        .iter_mut()
        .find(|a| !a.certificates.is_empty())
        .unwrap();
    app.certificates[0].expires = Some("2021-06-30T00:00:00Z".into());
    let mut c = config(ALL);
    c.tenant = tenant;
    let emu = common::start(c).await;
    let r = run_with(&emu, &db, &args, &[], &[cert("app-cert-with-key.pem")]).await;
    r.assert_exit(3);
    r.assert_stdout_has("AADSTS1000502");
    r.assert_stdout_has("Fix: the certificate has expired");
}

#[tokio::test]
async fn unknown_tenant_and_unknown_app_say_what_to_check() {
    let emu = common::start(config(ALL)).await;
    let (_dir, db) = common::temp_db();
    let r = preflight_adding(&emu, &db, &[("AZURE_TENANT_ID", "nowhere.example".into())]).await;
    r.assert_exit(3);
    assert!(
        r.stdout.contains("AADSTS90002") && r.stdout.contains("check AZURE_TENANT_ID"),
        "{}",
        r.stdout
    );
    let r = preflight_adding(
        &emu,
        &db,
        &[(
            "AZURE_CLIENT_ID",
            "00000000-0000-0000-0000-000000000001".into(),
        )],
    )
    .await;
    r.assert_exit(3);
    assert!(
        r.stdout.contains("AADSTS700016") && r.stdout.contains("the app is not in this tenant"),
        "{}",
        r.stdout
    );
    // A run refused at sign-in is a configuration error (exit 1), shown once on stderr.
    let csv = common::sample_csv();
    let r = run_with(
        &emu,
        &db,
        &common::run_args(&csv, "--dry-run"),
        &[],
        &[("AZURE_CLIENT_SECRET", "wrong".into())],
    )
    .await;
    r.assert_exit(1);
    assert_eq!(r.stderr.matches("AADSTS7000215").count(), 1, "{}", r.stderr);
}

#[tokio::test]
async fn a_ready_token_is_read_for_its_roles() {
    let emu = common::start(config("User.Read.All,Domain.Read.All")).await;
    let answer = common::raw::token(&emu).await;
    let (_dir, db) = common::temp_db();
    let token = answer.to_string();
    let r = run_with(
        &emu,
        &db,
        &["preflight", "--auth", "token"],
        &[],
        &[("B2B_ACCESS_TOKEN", token.clone())],
    )
    .await;
    r.assert_exit(3);
    r.assert_stdout_has(
        "[FIX]  send invitations: grant the Microsoft Graph application permission User.Invite.All",
    );
    assert!(
        !r.stdout.contains(&token) && !r.stderr.contains(&token),
        "the token is never printed"
    );
}
