//! `emulator --tls` and the sign-in surface Microsoft's own clients (MSAL, azure-identity) use:
//! HTTPS with a generated CA, discovery documents and links built on the origin called, HTTP
//! Basic client authentication, both spellings of Graph's `.default` scope, SHA-1 certificate
//! thumbprints, and delegated answers whose `scp` is what was consented (Graph's documentation, "What
//! Microsoft's own clients expect of the service"). Every client here trusts only the CA the
//! emulator generated.

use crate::common;

use b2b_convert::emulator::{Emulator, EmulatorConfig, Tenant};
use base64::Engine;
use serde_json::{json, Value};

async fn start_tls(mut config: EmulatorConfig) -> Emulator {
    config.tls = true;
    config.device_code_interval = std::time::Duration::ZERO;
    common::start(config).await
}

/// A client that trusts the emulator's CA and nothing else.
fn trusting(emu: &Emulator) -> reqwest::Client {
    let ca =
        reqwest::Certificate::from_pem(emu.ca_pem().expect("--tls has a CA").as_bytes()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

/// `https://localhost:PORT`: the emulator called by a name other than its own base URL's.
fn localhost(emu: &Emulator) -> String {
    format!("https://localhost:{}", emu.addr().port())
}

async fn get(http: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut req = http.post(url).form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// msal-node as a public client (an id, no secret) of one token endpoint.
struct PublicClient<'a> {
    http: &'a reqwest::Client,
    token_url: &'a str,
    client_id: &'a str,
}

impl PublicClient<'_> {
    /// A `grant_type` token request as msal-node spells it: the client's id, the grant's own
    /// `fields`, then MSAL's `client_info=1`.
    async fn grant(&self, grant_type: &str, fields: &[(&str, &str)]) -> (u16, Value) {
        let mut form = vec![("grant_type", grant_type), ("client_id", self.client_id)];
        form.extend_from_slice(fields);
        form.push(("client_info", "1"));
        post_form(self.http, self.token_url, &form, None).await
    }
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn tls_serves_with_the_generated_ca_only_and_prints_it_as_ssl_cert_file() {
    let emu = start_tls(EmulatorConfig::new(Tenant::sample())).await;
    assert!(emu.base_url().starts_with("https://127.0.0.1:"));
    let ca_file = emu.ca_file().unwrap().to_path_buf();
    let env = emu.client_env();
    let printed = env.iter().find(|(k, _)| k == "SSL_CERT_FILE").unwrap();
    assert_eq!(printed.1, ca_file.display().to_string());
    assert_eq!(
        std::fs::read_to_string(&ca_file).unwrap(),
        emu.ca_pem().unwrap()
    );
    assert!(!emu.ca_pem().unwrap().contains("PRIVATE KEY"));
    let url = format!(
        "{}/{}/v2.0/.well-known/openid-configuration",
        emu.base_url(),
        emu.tenant_id()
    );
    // A client that does not trust the CA cannot even connect.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    let err = untrusting.get(&url).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let (status, _) = get(&trusting(&emu), &url, None).await;
    assert_eq!(status, 200);
    emu.shutdown().await;
    assert!(!ca_file.exists(), "the CA file goes with the emulator");
}

#[tokio::test]
async fn discovery_documents_are_built_on_the_host_called() {
    let emu = start_tls(EmulatorConfig::new(Tenant::sample())).await;
    let http = trusting(&emu);
    let tid = emu.tenant_id();
    for origin in [emu.base_url(), localhost(&emu)] {
        let (status, doc) = get(
            &http,
            &format!("{origin}/{tid}/v2.0/.well-known/openid-configuration"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["issuer"], format!("{origin}/{tid}/v2.0"));
        assert_eq!(
            doc["token_endpoint"],
            format!("{origin}/{tid}/oauth2/v2.0/token")
        );
        assert_eq!(
            doc["device_authorization_endpoint"],
            format!("{origin}/{tid}/oauth2/v2.0/devicecode")
        );
        assert_eq!(
            doc["authorization_endpoint"],
            format!("{origin}/{tid}/oauth2/v2.0/authorize")
        );
    }
    // Called by a verified domain name, the document names the tenant by its id, as Entra's do.
    let (status, doc) = get(
        &http,
        &format!(
            "{}/contoso.com/v2.0/.well-known/openid-configuration",
            emu.base_url()
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["issuer"], format!("{}/{tid}/v2.0", emu.base_url()));
    let (status, v1) = get(
        &http,
        &format!("{}/{tid}/.well-known/openid-configuration", localhost(&emu)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v1}");
    assert_eq!(
        v1["token_endpoint"],
        format!("{}/{tid}/oauth2/token", localhost(&emu))
    );
    assert_eq!(v1["issuer"], format!("https://sts.windows.net/{tid}/"));
    let (status, refused) = get(
        &http,
        &format!(
            "{}/fabrikam.example/v2.0/.well-known/openid-configuration",
            emu.base_url()
        ),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(refused["error_codes"], json!([90002]));

    // Instance discovery, as MSAL reads it before an authority it does not know.
    let here = localhost(&emu);
    let authorize = format!("{here}/{tid}/oauth2/v2.0/authorize");
    let (status, found) = discover_instance(&http, &here, &authorize).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        found["tenant_discovery_endpoint"],
        format!("{here}/{tid}/v2.0/.well-known/openid-configuration")
    );
    assert_eq!(
        found["metadata"][0]["aliases"],
        json!([here.trim_start_matches("https://")])
    );
    let elsewhere = format!("https://login.microsoftonline.com/{tid}/oauth2/v2.0/authorize");
    let (status, refused) = discover_instance(&http, &here, &elsewhere).await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"], "invalid_instance");
    assert_eq!(refused["error_codes"], json!([50049]));
    emu.shutdown().await;
}

/// MSAL's instance discovery at `origin` for an authority's `authorize` endpoint.
async fn discover_instance(http: &reqwest::Client, origin: &str, authorize: &str) -> (u16, Value) {
    let url = reqwest::Url::parse_with_params(
        &format!("{origin}/common/discovery/instance"),
        &[
            ("api-version", "1.1"),
            ("authorization_endpoint", authorize),
        ],
    )
    .unwrap();
    get(http, url.as_str(), None).await
}

#[tokio::test]
async fn tokens_by_basic_auth_either_scope_spelling_and_a_sha1_thumbprint() {
    let emu = start_tls(EmulatorConfig::new(Tenant::sample())).await;
    let http = trusting(&emu);
    let token_url = common::raw::token_url(&emu);
    let id = common::raw::env(&emu, "AZURE_CLIENT_ID");
    let secret = common::raw::env(&emu, "AZURE_CLIENT_SECRET");
    let client_credentials =
        |scope: &'static str| [("grant_type", "client_credentials"), ("scope", scope)];
    let (status, body) = post_form(
        &http,
        &token_url,
        &client_credentials("https://graph.microsoft.com/.default"),
        Some((&id, &secret)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["appid"], id);
    let (status, body) = post_form(
        &http,
        &token_url,
        &client_credentials("https://graph.microsoft.com/.default"),
        Some((&id, "not-the-secret")),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error_codes"], json!([7000215]));

    let by_app_id = [
        ("grant_type", "client_credentials"),
        ("scope", "00000003-0000-0000-c000-000000000000/.default"),
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
    ];
    let (status, body) = post_form(&http, &token_url, &by_app_id, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_form(
        &http,
        &token_url,
        &[
            ("grant_type", "client_credentials"),
            (
                "scope",
                "00000003-0000-0000-c000-000000000000/User.Read.All",
            ),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
        ],
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_codes"], json!([70011]));

    // MSAL's assertion: SHA-1 `x5t` only, audience the token URL as discovered.
    let pem_path = common::repo_path("tests/fixtures/app-cert-with-key.pem");
    let assertion = sha1_assertion(pem_path.to_str().unwrap(), &id, &token_url);
    let (status, body) = post_form(
        &http,
        &token_url,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
            ("client_id", id.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    emu.shutdown().await;
}

/// A client assertion shaped as MSAL Python makes it: the certificate named by its SHA-1
/// thumbprint only (`x5t`), `iat` and `exp` in fractional seconds, no `nbf`.
fn sha1_assertion(pem_path: &str, client_id: &str, aud: &str) -> String {
    let text = std::fs::read(pem_path).unwrap();
    let blocks = pem::parse_many(&text).unwrap();
    let key = blocks.iter().find(|b| b.tag() == "PRIVATE KEY").unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        pem::encode(&pem::Pem::new("PRIVATE KEY", key.contents())).as_bytes(),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5t = Some(
        std::fs::read_to_string(common::repo_path("tests/fixtures/app-cert.x5t.txt"))
            .unwrap()
            .trim()
            .to_string(),
    );
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let claims = json!({"aud": aud, "iss": client_id, "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(), "iat": now, "exp": now + 600.0});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test]
async fn next_and_delta_links_name_the_host_and_scheme_called() {
    let emu = start_tls(EmulatorConfig::new(Tenant::sample())).await;
    let http = trusting(&emu);
    let (status, answer) = post_form(
        &http,
        &common::raw::token_url(&emu),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
        Some((
            &common::raw::env(&emu, "AZURE_CLIENT_ID"),
            &common::raw::env(&emu, "AZURE_CLIENT_SECRET"),
        )),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let token = answer["access_token"].as_str().unwrap().to_string();
    let here = localhost(&emu);
    let (status, page) = get(&http, &format!("{here}/v1.0/users?$top=2"), Some(&token)).await;
    assert_eq!(status, 200, "{page}");
    let next = page["@odata.nextLink"].as_str().unwrap();
    assert!(next.starts_with(&format!("{here}/v1.0/users?")), "{next}");
    let (status, second) = get(&http, next, Some(&token)).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["value"].as_array().unwrap().len(), 2);

    let mut link = format!("{here}/v1.0/users/delta?$select=id");
    let mut pages = 0;
    let delta = loop {
        let (status, page) = get(&http, &link, Some(&token)).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        assert!(pages < 100, "delta never ended");
        if let Some(d) = page["@odata.deltaLink"].as_str() {
            break d.to_string();
        }
        link = page["@odata.nextLink"].as_str().unwrap().to_string();
        assert!(
            link.starts_with(&format!("{here}/v1.0/users/delta?")),
            "{link}"
        );
    };
    assert!(
        delta.starts_with(&format!("{here}/v1.0/users/delta?")),
        "{delta}"
    );

    // A `$batch` sub-answer's link names the origin the batch was sent to.
    let r = http
        .post(format!("{here}/v1.0/$batch"))
        .bearer_auth(&token)
        .json(&json!({"requests": [{"id": "1", "method": "GET", "url": "/users?$top=1"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let batch: Value = r.json().await.unwrap();
    let link = batch["responses"][0]["body"]["@odata.nextLink"]
        .as_str()
        .unwrap();
    assert!(link.starts_with(&format!("{here}/v1.0/users?")), "{link}");
    emu.shutdown().await;
}

#[tokio::test]
async fn a_delegated_token_carries_the_consented_scopes_and_msal_sign_in_answers() {
    let mut config = EmulatorConfig::new(Tenant::sample());
    config.delegated_scopes = [
        "User.Read",
        "User.Invite.All",
        "openid",
        "profile",
        "offline_access",
    ]
    .map(str::to_string)
    .to_vec();
    let emu = start_tls(config).await;
    let http = trusting(&emu);
    let here = localhost(&emu);
    let tid = emu.tenant_id();
    let client_id = common::raw::env(&emu, "AZURE_CLIENT_ID");
    let token_url = format!("{here}/{tid}/oauth2/v2.0/token");
    let scope = "https://graph.microsoft.com/.default offline_access openid profile";
    let (status, flow) = post_form(
        &http,
        &format!("{here}/{tid}/oauth2/v2.0/devicecode"),
        &[("client_id", client_id.as_str()), ("scope", scope)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{flow}");
    let msal = PublicClient {
        http: &http,
        token_url: &token_url,
        client_id: &client_id,
    };
    // msal-node's spelling of the grant, and MSAL's `client_info=1`.
    let device_code = flow["device_code"].as_str().unwrap();
    let (status, answer) = msal
        .grant("device_code", &[("device_code", device_code)])
        .await;
    assert_eq!(status, 200, "{answer}");
    let access = claims(answer["access_token"].as_str().unwrap());
    assert_eq!(
        access["scp"], "User.Read User.Invite.All",
        "consented, not the app's roles"
    );
    assert!(access.get("roles").is_none());
    let id_token = claims(answer["id_token"].as_str().unwrap());
    assert_eq!(id_token["aud"], client_id);
    assert_eq!(id_token["iss"], format!("{here}/{tid}/v2.0"));
    assert_eq!(id_token["tid"], tid);
    assert!(id_token["preferred_username"]
        .as_str()
        .unwrap()
        .starts_with("admin@"));
    let info: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(answer["client_info"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["utid"], tid);
    assert_eq!(info["uid"], id_token["oid"]);

    // Reading users needs User.Read.All, which nobody consented: Graph's 403.
    let token = answer["access_token"].as_str().unwrap();
    let (status, denied) = get(&http, &format!("{here}/v1.0/users"), Some(token)).await;
    assert_eq!(status, 403, "{denied}");
    assert_eq!(denied["error"]["code"], "Authorization_RequestDenied");

    // The refresh answer carries the same shapes.
    let refresh_token = answer["refresh_token"].as_str().unwrap();
    let fields = [("refresh_token", refresh_token), ("scope", scope)];
    let (status, renewed) = msal.grant("refresh_token", &fields).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(
        claims(renewed["access_token"].as_str().unwrap())["scp"],
        "User.Read User.Invite.All"
    );
    assert_eq!(
        claims(renewed["id_token"].as_str().unwrap())["oid"],
        id_token["oid"]
    );
    assert_eq!(renewed["client_info"], answer["client_info"]);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_converts_against_a_tls_emulator_trusting_its_ca_by_ssl_cert_file() {
    let emu = start_tls(EmulatorConfig::new(Tenant::sample())).await;
    let (dir, db) = common::temp_db();
    let csv = common::repo_path("sample-data/users.csv");
    // `common::command` passes the emulator's printed environment, SSL_CERT_FILE included.
    let out = common::run_csv(&emu, &db, &csv, "--yes").await;
    assert_eq!(
        out.code, 3,
        "blocked rows make exit 3\n{}\n{}",
        out.stdout, out.stderr
    );
    let items = common::items(&db, out.run_id());
    let converted = common::count(&items, b2b_convert::item::ItemState::Converted);
    assert!(converted > 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(emu.invitations().len(), converted);

    // Without the CA the tool refuses the emulator's certificate and sends nothing.
    let other = dir.path().join("other.db");
    let mut cmd = common::command(
        &emu,
        &other,
        &common::run_args(&csv, "--yes --unreachable-after 1"),
    );
    cmd.env_remove("SSL_CERT_FILE");
    let refused = tokio::time::timeout(common::COMMAND_TIMEOUT, cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(emu.invitations().len(), converted);
    emu.shutdown().await;
}
