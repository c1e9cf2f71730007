//! HTTP-level tests of the client against small mock servers on loopback.

use std::sync::Mutex;

use axum::extract::State;
use serde_json::json;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::transport::Call;
use super::*;
use crate::model::{BatchRequest, InvitationRequest, InvitedUserRef};
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
    /// `path` on the server this request reached (its `Host`): a next link to serve.
    fn link_to(&self, path: &str) -> String {
        format!("http://{}{path}", self.header("host").unwrap())
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, body: serde_json::Value) -> Reply {
    Reply {
        status,
        headers: vec![("request-id", format!("req-{status}"))],
        body: body.to_string(),
    }
}

fn graph_error(status: u16, code: &str, message: &str) -> Reply {
    reply(status, json!({"error": {"code": code, "message": message}}))
}

fn token_ok(n: usize) -> Reply {
    reply(
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "access_token": format!("tok-{}", n + 1)}),
    )
}

type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

struct MockState {
    seen: Mutex<Vec<Seen>>,
    graph: Box<Script>,
    token: Box<Script>,
}

/// A loopback server: token requests go to `token`, everything else to `graph`; both get the
/// request and how many earlier requests had the same path.
struct Mock {
    url: String,
    state: Arc<MockState>,
}

impl Mock {
    async fn start(graph: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Mock {
        Self::start_with(graph, |_, n| token_ok(n)).await
    }

    async fn start_with(
        graph: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
        token: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    ) -> Mock {
        let state = Arc::new(MockState {
            seen: Mutex::new(Vec::new()),
            graph: Box::new(graph),
            token: Box::new(token),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Mock { url, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn graph_hits(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path().starts_with("/v1.0"))
            .collect()
    }

    fn token_hits(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path().ends_with("/oauth2/v2.0/token"))
            .collect()
    }

    fn config(&self, credentials: Credentials) -> GraphConfig {
        GraphConfig {
            http_retries: 2,
            request_timeout: Duration::from_secs(5),
            ..GraphConfig::new(&self.url, &self.url, credentials)
        }
    }

    fn client(&self) -> GraphClient {
        self.client_with(Credentials::Token(Secret::new("static-token")))
    }

    fn client_with(&self, credentials: Credentials) -> GraphClient {
        GraphClient::new(self.config(credentials), Limiter::new(1000.0))
            .unwrap()
            .with_backoff(fast_backoff())
    }
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
    }
}

fn secret_credentials() -> Credentials {
    Credentials::ClientSecret {
        tenant_id: "contoso-tenant".into(),
        client_id: "app-1".into(),
        secret: Secret::new("s3cret"),
    }
}

async fn handle(
    State(state): State<Arc<MockState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    let n = {
        let mut all = state.seen.lock().unwrap();
        let n = all.iter().filter(|s| s.path() == seen.path()).count();
        all.push(seen.clone());
        n
    };
    let reply = if seen.path().ends_with("/oauth2/v2.0/token") {
        (state.token)(&seen, n)
    } else {
        (state.graph)(&seen, n)
    };
    let mut builder = axum::response::Response::builder()
        .status(reply.status)
        .header("content-type", "application/json");
    for (k, v) in reply.headers {
        builder = builder.header(k, v);
    }
    builder.body(axum::body::Body::from(reply.body)).unwrap()
}

#[derive(Default)]
struct Recorder(Mutex<Vec<RequestEvent>>);

impl RequestObserver for Recorder {
    fn on_request(&self, event: &RequestEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

fn invitation_request() -> InvitationRequest {
    InvitationRequest {
        invited_user_email_address: "ann@fabrikam.com".into(),
        invite_redirect_url: "https://myapplications.microsoft.com".into(),
        send_invitation_message: Some(false),
        invited_user: Some(InvitedUserRef { id: "u1".into() }),
        ..Default::default()
    }
}

/// The error `client` meets inviting [`invitation_request`].
async fn invite_error(client: &GraphClient) -> GraphError {
    client.invite(&invitation_request()).await.unwrap_err()
}

/// Graph's 429 with `Retry-After: retry_after`.
fn throttled(message: &str, retry_after: &str) -> Reply {
    let mut r = graph_error(429, "TooManyRequests", message);
    r.headers.push(("Retry-After", retry_after.into()));
    r
}

/// A 200 page holding the user `id`, whose `@odata.nextLink` is `next` on the server `seen`
/// reached.
fn page_then(seen: &Seen, id: &str, next: &str) -> Reply {
    reply(
        200,
        json!({"@odata.nextLink": seen.link_to(next), "value": [user_json(id)]}),
    )
}

/// The last 200 page: the user `id`, no next link.
fn last_page(id: &str) -> Reply {
    reply(200, json!({"value": [user_json(id)]}))
}

fn user_json(id: &str) -> serde_json::Value {
    json!({"id": id, "userPrincipalName": format!("{id}@contoso.com")})
}

#[tokio::test]
async fn requests_carry_ids_and_bearer_and_report_events() {
    let mock = Mock::start(|_, _| reply(200, user_json("u1"))).await;
    let recorder = Arc::new(Recorder::default());
    let client = mock.client().with_observer(recorder.clone());
    let user = client
        .get_user("ann#EXT#@contoso.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.id, "u1");
    let hits = mock.graph_hits();
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_eq!(hit.path(), "/v1.0/users/ann%23EXT%23@contoso.com");
    assert!(hit.uri.contains("$select=id,displayName,"), "{}", hit.uri);
    assert_eq!(hit.header("authorization"), Some("Bearer static-token"));
    assert_eq!(hit.header("return-client-request-id"), Some("true"));
    let crid = hit.header("client-request-id").unwrap();
    assert!(uuid::Uuid::parse_str(crid).is_ok());

    let events = recorder.0.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].client_request_id, crid);
    assert_eq!(events[0].request_id.as_deref(), Some("req-200"));
    assert_eq!(events[0].status, Some(200));
    assert_eq!(events[0].attempt, 1);
    assert!(events[0].path.starts_with("/v1.0/users/"));
    assert!(!format!("{events:?}").contains("static-token"));
    assert_eq!(client.requests_sent(), 1);
}

#[tokio::test]
async fn missing_user_is_none() {
    let mock = Mock::start(|_, _| graph_error(404, "Request_ResourceNotFound", "gone")).await;
    assert!(mock.client().get_user("nobody").await.unwrap().is_none());
}

#[tokio::test]
async fn throttled_request_waits_retry_after_and_is_retried() {
    let mock = Mock::start(|_, n| match n {
        0 => throttled("slow down", "0.3"),
        _ => reply(200, user_json("u1")),
    })
    .await;
    let recorder = Arc::new(Recorder::default());
    let client = mock.client().with_observer(recorder.clone());
    let started = std::time::Instant::now();
    let user = client.get_user("u1").await.unwrap();
    assert!(user.is_some());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(mock.graph_hits().len(), 2);
    assert_eq!(client.requests_sent(), 2);
    let events = recorder.0.lock().unwrap().clone();
    assert_eq!(events.len(), 2);
    assert!(events[0].throttled && !events[1].throttled);
    assert_eq!((events[0].attempt, events[1].attempt), (1, 2));
    assert_ne!(events[0].client_request_id, events[1].client_request_id);
    assert_eq!(client.limiter().current_rate(), 500.0);
}

#[tokio::test]
async fn server_errors_are_retried_until_exhausted() {
    let mock = Mock::start(|_, _| graph_error(503, "ServiceUnavailable", "busy")).await;
    let err = mock.client().get_user("u1").await.unwrap_err();
    assert!(matches!(err, GraphError::Exhausted { .. }), "{err:?}");
    assert_eq!(err.meta().unwrap().status, Some(503));
    assert_eq!(
        mock.graph_hits().len(),
        3,
        "http_retries = 2: three attempts"
    );

    let mock = Mock::start(|_, n| {
        if n < 2 {
            graph_error(504, "GatewayTimeout", "slow")
        } else {
            reply(200, user_json("u1"))
        }
    })
    .await;
    assert!(mock.client().get_user("u1").await.unwrap().is_some());
    assert_eq!(mock.graph_hits().len(), 3);
}

#[tokio::test]
async fn invite_success_is_traced() {
    let mock = Mock::start(|seen, _| {
        let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(body["invitedUser"]["id"], "u1");
        assert_eq!(seen.header("content-type"), Some("application/json"));
        reply(
            201,
            json!({"id": "inv-1", "status": "PendingAcceptance", "inviteRedeemUrl": "https://secret",
                   "invitedUserEmailAddress": "ann@fabrikam.com", "invitedUser": {"id": "u1"}}),
        )
    })
    .await;
    let traced = mock.client().invite(&invitation_request()).await.unwrap();
    assert_eq!(traced.value.id, "inv-1");
    assert_eq!(traced.meta.status, Some(201));
    assert_eq!(traced.meta.request_id.as_deref(), Some("req-201"));
    assert_eq!(mock.graph_hits()[0].method, "POST");
    assert_eq!(mock.graph_hits()[0].path(), "/v1.0/invitations");
}

#[tokio::test]
async fn invite_is_never_resent_after_a_server_error() {
    let mock = Mock::start(|_, _| graph_error(502, "BadGateway", "oops")).await;
    let err = invite_error(&mock.client()).await;
    assert!(matches!(err, GraphError::Unknown { .. }), "{err:?}");
    assert_eq!(mock.graph_hits().len(), 1);
}

#[tokio::test]
async fn invite_is_resent_after_429() {
    let mock = Mock::start(|_, n| match n {
        0 => throttled("later", "0"),
        _ => reply(201, json!({"id": "inv-1", "status": "PendingAcceptance"})),
    })
    .await;
    let traced = mock.client().invite(&invitation_request()).await.unwrap();
    assert_eq!(traced.value.id, "inv-1");
    assert_eq!(mock.graph_hits().len(), 2);
}

#[tokio::test]
async fn invite_on_dropped_connection_is_unknown() {
    use tokio::io::AsyncReadExt;
    let (url, accepted) = counting_server(|mut socket| async move {
        // Read the request (headers and body), "carry it out", then drop the connection.
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        loop {
            let n = socket.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    break;
                }
            }
        }
        drop(socket);
    })
    .await;
    let client = GraphClient::new(
        token_config(&url, 2, Duration::from_secs(5)),
        Limiter::new(1000.0),
    )
    .unwrap();
    let err = invite_error(&client).await;
    assert!(matches!(err, GraphError::Unknown { .. }), "{err:?}");
    assert_eq!(err.meta().unwrap().status, None);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "never resent");

    // The same failure on a GET is retried, then given up.
    let err = client.get_user("u1").await.unwrap_err();
    assert!(matches!(err, GraphError::Exhausted { .. }), "{err:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn blocked_directory_stops_the_run() {
    let mock = Mock::start(|_, _| {
        graph_error(
            403,
            "Forbidden",
            "Invitations are blocked for this directory due to suspicious activity",
        )
    })
    .await;
    let err = invite_error(&mock.client()).await;
    assert!(
        matches!(err, GraphError::TenantRefused { status: 403, .. }),
        "{err:?}"
    );
    assert_eq!(mock.graph_hits().len(), 1);
}

#[tokio::test]
async fn bad_request_is_an_api_error_with_graphs_words() {
    let mock = Mock::start(|_, _| graph_error(400, "BadRequest", "Invalid request input.")).await;
    let err = invite_error(&mock.client()).await;
    match err {
        GraphError::Api {
            status,
            code,
            message,
            meta,
        } => {
            assert_eq!((status, code.as_str()), (400, "BadRequest"));
            assert_eq!(message, "Invalid request input.");
            assert_eq!(meta.request_id.as_deref(), Some("req-400"));
        }
        other => panic!("{other:?}"),
    }
    let mock = Mock::start(|_, _| Reply {
        status: 400,
        headers: vec![],
        body: String::new(),
    })
    .await;
    let err = invite_error(&mock.client()).await;
    assert_eq!(err.code(), Some("Bad Request"));
}

#[tokio::test]
async fn repeated_permission_denials_stop_the_run() {
    let mock = Mock::start(|seen, _| {
        if seen.method == "GET" {
            return reply(200, user_json("u1"));
        }
        graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    })
    .await;
    let client = mock.client();
    for _ in 1..DENIED_STREAK_LIMIT {
        let err = invite_error(&client).await;
        assert!(
            matches!(err, GraphError::Api { status: 403, .. }),
            "{err:?}"
        );
        // Reads going through do not hide that every invitation is refused.
        assert!(client.get_user("u1").await.unwrap().is_some());
    }
    let err = invite_error(&client).await;
    assert!(err.is_tenant_refusal(), "{err:?}");
}

#[tokio::test]
async fn unauthorized_renews_the_token_once() {
    let mock = Mock::start(|seen, _| {
        if seen.header("authorization") == Some("Bearer tok-1") {
            graph_error(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired.",
            )
        } else {
            reply(200, user_json("u1"))
        }
    })
    .await;
    let client = mock.client_with(secret_credentials());
    assert!(client.get_user("u1").await.unwrap().is_some());
    assert_eq!(mock.token_hits().len(), 2);
    assert_eq!(mock.graph_hits().len(), 2);
    assert_eq!(
        mock.graph_hits()[1].header("authorization"),
        Some("Bearer tok-2")
    );
    // The renewed token is cached.
    assert!(client.get_user("u1").await.unwrap().is_some());
    assert_eq!(mock.token_hits().len(), 2);
}

#[tokio::test]
async fn unauthorized_after_renewal_stops_the_run() {
    let mock =
        Mock::start(|_, _| graph_error(401, "InvalidAuthenticationToken", "Consent revoked")).await;
    let err = invite_error(&mock.client_with(secret_credentials())).await;
    assert!(
        matches!(err, GraphError::TenantRefused { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(mock.token_hits().len(), 2);
    assert_eq!(mock.graph_hits().len(), 2);

    // A fixed token cannot be renewed: stop at once.
    let err = mock.client().get_user("u1").await.unwrap_err();
    assert!(err.is_tenant_refusal(), "{err:?}");
}

#[tokio::test]
async fn token_refused_mid_run_stops_the_run() {
    let mock = Mock::start_with(
        |_, _| {
            graph_error(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired.",
            )
        },
        |_, n| {
            if n == 0 {
                token_ok(n)
            } else {
                reply(
                    400,
                    json!({"error": "unauthorized_client",
                           "error_description": "AADSTS700016: Application not found.",
                           "error_codes": [700016]}),
                )
            }
        },
    )
    .await;
    let client = mock.client_with(secret_credentials());
    client.authenticate().await.unwrap();
    let err = client.get_user("u1").await.unwrap_err();
    assert!(err.is_tenant_refusal(), "{err:?}");
    assert_eq!(err.code(), Some("AADSTS700016"));
}

#[tokio::test]
async fn token_request_shapes_and_refusals() {
    let mock = Mock::start_with(
        |_, _| reply(200, user_json("u1")),
        |seen, n| {
            if n == 0 {
                return reply(
                    400,
                    json!({"error": "invalid_client",
                           "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1",
                           "error_codes": [7000215]}),
                );
            }
            let form: HashMap<String, String> = url::form_urlencoded::parse(seen.body.as_bytes())
                .into_owned()
                .collect();
            assert_eq!(form["grant_type"], "client_credentials");
            assert_eq!(form["scope"], "https://graph.microsoft.com/.default");
            assert_eq!(form["client_id"], "app-1");
            assert_eq!(
                form["client_assertion_type"],
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            );
            let jwt = &form["client_assertion"];
            let claims = jwt.split('.').nth(1).unwrap();
            use base64::Engine as _;
            let claims: serde_json::Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(claims)
                    .unwrap(),
            )
            .unwrap();
            assert!(claims["aud"]
                .as_str()
                .unwrap()
                .ends_with("/contoso-tenant/oauth2/v2.0/token"));
            token_ok(n)
        },
    )
    .await;
    let err = mock
        .client_with(secret_credentials())
        .authenticate()
        .await
        .unwrap_err();
    match err {
        GraphError::Auth { code, message } => {
            assert_eq!(code, "AADSTS7000215");
            assert_eq!(
                message,
                format!(
                    "AADSTS7000215: Invalid client secret provided. Fix: {}",
                    super::auth::fix_for("AADSTS7000215").unwrap()
                )
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        mock.token_hits()[0].path(),
        "/contoso-tenant/oauth2/v2.0/token"
    );
    assert!(mock.token_hits()[0].body.contains("client_secret=s3cret"));

    let pem =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app-cert-with-key.pem");
    let client = mock.client_with(Credentials::Certificate {
        tenant_id: "contoso-tenant".into(),
        client_id: "app-1".into(),
        pem_path: pem,
    });
    assert!(client.get_user("u1").await.unwrap().is_some());
    assert_eq!(
        mock.graph_hits()[0].header("authorization"),
        Some("Bearer tok-2")
    );
}

#[tokio::test]
async fn token_is_renewed_ahead_of_expiry_without_blocking() {
    let mock = Mock::start(|_, _| reply(200, json!({}))).await;
    let client = mock.client_with(secret_credentials());
    let tokens = client.inner.tokens.clone();
    assert_eq!(tokens.token().await.unwrap().expose(), "tok-1");
    assert_eq!(tokens.token().await.unwrap().expose(), "tok-1");
    assert_eq!(mock.token_hits().len(), 1);

    // Enter the renewal window: callers keep getting the valid token while one task renews.
    tokens.force_window_for_test(false);
    assert_eq!(tokens_of_ten_callers(&tokens).await, ["tok-1"; 10]);
    // No clock: the background renewal holds the renewal lock until the new token is stored.
    tokens.renewal_settled_for_test().await;
    assert_eq!(
        tokens.cached_for_test().as_deref(),
        Some("tok-2"),
        "renewal never landed"
    );
    assert_eq!(tokens.token().await.unwrap().expose(), "tok-2");
    assert_eq!(mock.token_hits().len(), 2, "single-flight renewal");

    // Expired: callers wait for one renewal.
    tokens.force_window_for_test(true);
    assert_eq!(tokens_of_ten_callers(&tokens).await, ["tok-3"; 10]);
    assert_eq!(mock.token_hits().len(), 3);
}

/// The tokens ten tasks asking `tokens` at once get.
async fn tokens_of_ten_callers(tokens: &Arc<super::auth::TokenProvider>) -> Vec<String> {
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let t = tokens.clone();
            tokio::spawn(async move { t.token().await.unwrap() })
        })
        .collect();
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.unwrap().expose().to_string());
    }
    got
}

#[tokio::test]
async fn batch_resends_only_the_throttled_sub_request() {
    let mock = Mock::start(|seen, n| {
        assert_eq!(seen.path(), "/v1.0/$batch");
        let batch: BatchRequest = serde_json::from_str(&seen.body).unwrap();
        let responses: Vec<_> = batch
            .requests
            .iter()
            .map(|r| {
                if n == 0 && r.id == "2" {
                    json!({"id": r.id, "status": 429, "headers": {"Retry-After": "0.1"},
                           "body": {"error": {"code": "TooManyRequests", "message": "later"}}})
                } else {
                    json!({"id": r.id, "status": 200,
                           "body": {"value": [user_json(&format!("user-{}", r.id))]}})
                }
            })
            .collect();
        reply(200, json!({ "responses": responses }))
    })
    .await;
    let client = mock.client();
    let mut ids: Vec<String> = (0..29).map(|i| format!("a{i}")).collect();
    ids.push("o'brien".into());
    let users = client.users_by_ids(&ids).await.unwrap();
    let mut got: Vec<_> = users.iter().map(|u| u.id.as_str()).collect();
    got.sort();
    assert_eq!(got, ["user-1", "user-2"]);

    let hits = mock.graph_hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(client.requests_sent(), 2);
    let first: BatchRequest = serde_json::from_str(&hits[0].body).unwrap();
    assert_eq!(first.requests.len(), 2);
    assert_eq!(first.requests[0].method, "GET");
    let urls: Vec<&str> = first.requests.iter().map(|r| r.url.as_str()).collect();
    assert!(
        urls[0].starts_with("/users?$filter=id%20in%20(%27a0%27,%27a1%27,"),
        "{urls:?}"
    );
    assert!(
        urls[1].contains(",%27o%27%27brien%27)&$select="),
        "{urls:?}"
    );
    let second: BatchRequest = serde_json::from_str(&hits[1].body).unwrap();
    let second_ids: Vec<_> = second.requests.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(second_ids, ["2"]);
}

#[tokio::test]
async fn batch_splits_into_twenty_sub_requests_and_fails_on_refusals() {
    let mock = Mock::start(|seen, _| {
        let batch: BatchRequest = serde_json::from_str(&seen.body).unwrap();
        let responses: Vec<_> = batch
            .requests
            .iter()
            .map(|r| json!({"id": r.id, "status": 200, "body": {"value": []}}))
            .collect();
        reply(200, json!({ "responses": responses }))
    })
    .await;
    let client = mock.client();
    let upns: Vec<String> = (0..(15 * 25))
        .map(|i| format!("u{i}@contoso.com"))
        .collect();
    assert!(client.users_by_upns(&upns).await.unwrap().is_empty());
    let sizes: Vec<usize> = mock
        .graph_hits()
        .iter()
        .map(|h| {
            serde_json::from_str::<BatchRequest>(&h.body)
                .unwrap()
                .requests
                .len()
        })
        .collect();
    assert_eq!(sizes, [20, 5]);
    assert!(client.users_by_ids(&[]).await.unwrap().is_empty());
    assert_eq!(mock.graph_hits().len(), 2, "nothing to ask, nothing sent");

    let mock = Mock::start(|seen, _| {
        let batch: BatchRequest = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(batch.requests.len(), 2, "16 ids make two sub-requests");
        reply(
            200,
            json!({"responses": [
                {"id": "1", "status": 200, "body": {"value": []}},
                {"id": "2", "status": 400, "body": {"error": {"code": "BadRequest", "message": "Unsupported query."}}}
            ]}),
        )
    })
    .await;
    let err = mock
        .client()
        .users_by_ids(&(0..16).map(|i| format!("u{i}")).collect::<Vec<_>>())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("BadRequest"));
}

#[tokio::test]
async fn batch_sub_request_server_errors_are_retried() {
    let mock = Mock::start(|seen, n| {
        let batch: BatchRequest = serde_json::from_str(&seen.body).unwrap();
        let r = &batch.requests[0];
        if n < 2 {
            reply(200, json!({"responses": [{"id": r.id, "status": 503, "body": {}}]}))
        } else {
            reply(
                200,
                json!({"responses": [{"id": r.id, "status": 200, "body": {"value": [user_json("u1")]}}]}),
            )
        }
    })
    .await;
    let users = mock.client().users_by_ids(&["u1".into()]).await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(mock.graph_hits().len(), 3);
}

#[tokio::test]
async fn advanced_filter_pages_send_consistency_level_every_time() {
    let server = Mock::start(|seen, n| {
        if n == 0 {
            page_then(seen, "u1", "/v1.0/users?$skiptoken=abc")
        } else {
            last_page("u2")
        }
    })
    .await;
    let client = server.client();
    let filter = "userType eq 'Guest' and onPremisesUserPrincipalName ne null";
    let first = client.list_users_page(filter, None).await.unwrap();
    let next = first.next_link.clone().unwrap();
    let second = client.list_users_page(filter, Some(&next)).await.unwrap();
    assert_eq!(second.value[0].id, "u2");
    assert!(second.next_link.is_none());

    let hits = server.graph_hits();
    assert_eq!(hits.len(), 2);
    for hit in &hits {
        assert_eq!(
            hit.header("consistencylevel"),
            Some("eventual"),
            "{}",
            hit.uri
        );
        assert!(hit.uri.contains("$count=true"), "{}", hit.uri);
    }
    assert!(hits[0].uri.contains(
        "$filter=userType%20eq%20%27Guest%27%20and%20onPremisesUserPrincipalName%20ne%20null"
    ));
    assert!(hits[0].uri.contains("$top=999"));
    assert!(hits[1].uri.starts_with("/v1.0/users?$skiptoken=abc"));

    // A simple filter needs no advanced query.
    client
        .list_users_page("userType eq 'Member'", None)
        .await
        .unwrap();
    let hit = server.graph_hits().pop().unwrap();
    assert_eq!(hit.header("consistencylevel"), None);
    assert!(!hit.uri.contains("$count"));

    // A page link elsewhere would carry our token there: refused.
    let err = client
        .list_users_page(filter, Some("https://evil.example/v1.0/users?$skiptoken=x"))
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn domains_and_group_members() {
    let mock = Mock::start(|seen, _| {
        if seen.path() == "/v1.0/domains" {
            reply(
                200,
                json!({"value": [
                    {"id": "contoso.com", "isVerified": true, "isDefault": true},
                    {"id": "pending.com", "isVerified": false}
                ]}),
            )
        } else {
            reply(200, json!({"value": [user_json("m1")]}))
        }
    })
    .await;
    let client = mock.client();
    let domains = client.verified_domains().await.unwrap();
    assert_eq!(domains.len(), 1);
    assert_eq!(domains[0].id, "contoso.com");
    let page = client.group_members_page("g1", true, None).await.unwrap();
    assert_eq!(page.value[0].id, "m1");
    client.group_members_page("g1", false, None).await.unwrap();
    let hits = mock.graph_hits();
    assert_eq!(
        hits[1].path(),
        "/v1.0/groups/g1/transitiveMembers/microsoft.graph.user"
    );
    assert_eq!(
        hits[2].path(),
        "/v1.0/groups/g1/members/microsoft.graph.user"
    );
    assert!(hits[2].uri.contains("$top=999"));
}

#[test]
fn client_refuses_plain_http_to_public_hosts() {
    let config = GraphConfig::new(
        "http://graph.microsoft.com",
        DEFAULT_LOGIN_URL,
        Credentials::Token(Secret::new("t")),
    );
    let err = GraphClient::new(config, Limiter::new(1.0)).unwrap_err();
    assert!(matches!(err, GraphError::Config(_)));
}

/// A loopback port nothing listens on: bound, then released.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(start_paused = true)]
async fn closed_port_is_not_sent_and_retried_for_a_bounded_stretch() {
    let url = closed_port_url();
    let config = GraphConfig {
        request_timeout: Duration::from_secs(5),
        ..GraphConfig::new(&url, &url, Credentials::Token(Secret::new("t")))
    };
    let window = config.not_sent_retry_for;
    let recorder = Arc::new(Recorder::default());
    let client = GraphClient::new(config, Limiter::new(1000.0))
        .unwrap()
        .with_observer(recorder.clone());
    let started = tokio::time::Instant::now();
    // Even an invitation is resent: a connection that never opened carried nothing.
    let err = invite_error(&client).await;
    let elapsed = started.elapsed();
    let GraphError::NotSent { message } = &err else {
        panic!("expected NotSent, got {err:?}");
    };
    assert!(
        message.contains(&format!("{url}/v1.0/invitations")),
        "{message}"
    );
    assert!(message.contains("POST"), "{message}");
    assert!(err.meta().is_none());
    assert_eq!(client.requests_sent(), 0, "nothing may have reached Graph");
    let events = recorder.0.lock().unwrap().clone();
    assert!(events.len() > 1, "retried: {events:?}");
    assert!(events
        .iter()
        .all(|e| e.status.is_none() && e.error.is_some()));
    // On tokio's (virtual) clock: retried for the whole stretch, and not much longer.
    assert!(elapsed >= window, "{elapsed:?}");
    assert!(elapsed <= window + Duration::from_secs(6), "{elapsed:?}");
}

#[tokio::test]
async fn silent_server_times_out_as_unknown_naming_what_timed_out() {
    use tokio::io::AsyncReadExt;
    // Reads whatever comes, never answers; holds every connection open.
    let (url, accepted) = counting_server(|mut socket| async move {
        let mut buf = vec![0u8; 16 * 1024];
        while socket.read(&mut buf).await.unwrap_or(0) > 0 {}
    })
    .await;
    let client = GraphClient::new(
        token_config(&url, 1, Duration::from_millis(300)),
        Limiter::new(1000.0),
    )
    .unwrap()
    .with_backoff(fast_backoff());
    let err = invite_error(&client).await;
    let GraphError::Unknown { message, meta } = &err else {
        panic!("expected Unknown, got {err:?}");
    };
    assert!(
        message.contains("POST /v1.0/invitations") && message.contains("timed out after 0.3 s"),
        "{message}"
    );
    assert_eq!(meta.status, None);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "an invitation is never resent"
    );
    assert_eq!(client.requests_sent(), 1);

    let err = client.get_user("u1").await.unwrap_err();
    assert!(matches!(err, GraphError::Exhausted { .. }), "{err:?}");
    assert!(
        err.to_string().contains("GET /v1.0/users/u1") && err.to_string().contains("timed out"),
        "{err}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "a read is retried http_retries times"
    );
}

/// A loopback server that counts the connections it accepts and hands each to `serve` on a
/// task of its own: its URL and the count.
async fn counting_server<F, Fut>(serve: F) -> (String, Arc<AtomicU32>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicU32::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket));
        }
    });
    (url, accepted)
}

/// Graph and the token endpoint at `url`, a fixed token, `http_retries` and `request_timeout`.
fn token_config(url: &str, http_retries: u32, request_timeout: Duration) -> GraphConfig {
    GraphConfig {
        http_retries,
        request_timeout,
        ..GraphConfig::new(url, url, Credentials::Token(Secret::new("t")))
    }
}

#[tokio::test]
async fn transport_errors_are_sorted_by_whether_the_request_could_have_left() {
    let url = closed_port_url();
    let http = reqwest::Client::new();
    let e = http
        .get(format!("{url}/v1.0/users"))
        .send()
        .await
        .unwrap_err();
    let call = Call {
        method: reqwest::Method::GET,
        url: url::Url::parse(&format!("{url}/v1.0/users?$top=1")).unwrap(),
        headers: Vec::new(),
        body: None,
        idempotent: true,
        spend: transport::Spend::Read(1),
    };
    let lost = transport::classify(&e, &call, Duration::from_secs(7), Duration::from_secs(3));
    match lost {
        transport::Lost::NotSent(message) => {
            assert!(
                message.contains(&format!("cannot connect to {url}: "))
                    && message.contains("refused"),
                "{message}"
            )
        }
        other => panic!("a refused connection is not sent: {other:?}"),
    }
}

#[tokio::test]
async fn batch_retries_424_and_fractional_retry_after_sub_responses() {
    let mock = Mock::start(|seen, n| {
        let batch: BatchRequest = serde_json::from_str(&seen.body).unwrap();
        let mut ids: Vec<String> = batch
            .requests
            .iter()
            .map(|r| r.id.to_ascii_lowercase())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            batch.requests.len(),
            "sub-request ids are unique"
        );
        let responses: Vec<_> = batch
            .requests
            .iter()
            .map(|r| match (n, r.id.as_str()) {
                (0, "1") => json!({"id": r.id, "status": 424, "body": {"error":
                    {"code": "FailedDependency", "message": "dependency failed"}}}),
                (0, "2") => json!({"id": r.id, "status": 429, "headers": {"retry-after": "0.249"},
                    "body": {"error": {"code": "TooManyRequests", "message": "later"}}}),
                _ => json!({"id": r.id, "status": 200,
                    "body": {"value": [user_json(&format!("user-{}", r.id))]}}),
            })
            .collect();
        reply(200, json!({ "responses": responses }))
    })
    .await;
    let client = mock.client();
    let ids: Vec<String> = (0..45).map(|i| format!("a{i}")).collect();
    let users = client.users_by_ids(&ids).await.unwrap();
    let mut got: Vec<_> = users.iter().map(|u| u.id.as_str()).collect();
    got.sort();
    assert_eq!(got, ["user-1", "user-2", "user-3"]);
    let hits = mock.graph_hits();
    assert_eq!(hits.len(), 2);
    let second: BatchRequest = serde_json::from_str(&hits[1].body).unwrap();
    let mut again: Vec<_> = second.requests.iter().map(|r| r.id.as_str()).collect();
    again.sort();
    assert_eq!(
        again,
        ["1", "2"],
        "only the failed and throttled sub-requests"
    );
}

#[tokio::test]
async fn pager_walks_every_page_of_an_emulator_listing() {
    use crate::emulator::{EmulatorConfig, Tenant};
    let tenant = Tenant::generate(2_100, 7);
    let total = tenant.users.len();
    let emu = crate::emulator::start(EmulatorConfig::new(tenant), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = client_of(&emu);
    let fetch = |link: Option<String>| {
        let client = client.clone();
        async move { client.list_user_addresses_page(link.as_deref()).await }
    };

    let mut pages = Pager::new(fetch);
    let mut sizes = Vec::new();
    let mut links = Vec::new();
    let mut ids = std::collections::HashSet::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        sizes.push(page.value.len());
        links.extend(page.next_link.clone());
        ids.extend(page.value.into_iter().map(|u| u.id));
    }
    assert_eq!(sizes.len(), total.div_ceil(999), "{sizes:?}");
    assert!(
        sizes[..sizes.len() - 1].iter().all(|s| *s == 999),
        "{sizes:?}"
    );
    assert_eq!(ids.len(), total, "every user once");
    assert!(pages.next_page().await.unwrap().is_none(), "stays finished");

    // Resumed from a stored link: only the rest; a served first page is not fetched again.
    let rest = Pager::resume(Some(links[0].clone()), fetch)
        .collect_all()
        .await
        .unwrap();
    assert_eq!(rest.len(), total - 999);
    let first = client.list_user_addresses_page(None).await.unwrap();
    let sent = client.requests_sent();
    let all = Pager::new(fetch)
        .with_first_page(Some(first))
        .collect_all()
        .await
        .unwrap();
    assert_eq!(all.len(), total);
    assert_eq!(client.requests_sent(), sent + sizes.len() as u64 - 1);
    assert!(Pager::finished(fetch).next_page().await.unwrap().is_none());
}

#[tokio::test]
async fn batch_sub_responses_with_more_pages_are_followed() {
    let mock = Mock::start(|seen, n| {
        if seen.path() == "/v1.0/$batch" {
            let batch: BatchRequest = serde_json::from_str(&seen.body).unwrap();
            let next = seen.link_to("/v1.0/users?$skiptoken=p2");
            let r = &batch.requests[0];
            reply(
                200,
                json!({"responses": [{"id": r.id, "status": 200,
                    "body": {"@odata.nextLink": next, "value": [user_json("u1")]}}]}),
            )
        } else if n == 0 {
            assert!(seen.uri.contains("$skiptoken=p2"), "{}", seen.uri);
            page_then(seen, "u2", "/v1.0/users?$skiptoken=p3")
        } else {
            last_page("u3")
        }
    })
    .await;
    let users = mock.client().users_by_ids(&["u1".into()]).await.unwrap();
    let ids: Vec<_> = users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["u1", "u2", "u3"]);
    assert_eq!(mock.graph_hits().len(), 3);
}

/// A client of an emulator whose app holds `roles` and the directory roles `wids`.
async fn emulator_client(
    tenant: crate::emulator::Tenant,
    roles: &[&str],
    wids: &[&str],
) -> (crate::emulator::Emulator, GraphClient) {
    use crate::emulator::EmulatorConfig;
    let config = EmulatorConfig {
        app_roles: roles.iter().map(|r| r.to_string()).collect(),
        app_directory_roles: crate::emulator::directory_role_ids(&wids.join(",")).unwrap(),
        ..EmulatorConfig::new(tenant)
    };
    let emu = crate::emulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = client_of(&emu).with_backoff(fast_backoff());
    (emu, client)
}

/// A client signed in to `emu` as its [`client_env`](crate::emulator::Emulator::client_env)
/// says.
/// A client of `emu` with its client environment, unthrottled on our side (1,000 writes/s).
pub(crate) fn client_of(emu: &crate::emulator::Emulator) -> GraphClient {
    let env: HashMap<String, String> = emu.client_env().into_iter().collect();
    let credentials = Credentials::from_lookup(|k| env.get(k).cloned()).unwrap();
    let base = emu.base_url();
    GraphClient::new(
        GraphConfig::new(&base, &base, credentials),
        Limiter::new(1000.0),
    )
    .unwrap()
}

/// Invite `u` through the client and let the partner redeem.
async fn invite_and_redeem(
    emu: &crate::emulator::Emulator,
    client: &GraphClient,
    u: &crate::model::User,
) {
    client
        .invite(&InvitationRequest {
            invited_user_email_address: u.mail.clone().unwrap(),
            invite_redirect_url: "https://myapplications.microsoft.com".into(),
            send_invitation_message: Some(false),
            invited_user: Some(InvitedUserRef { id: u.id.clone() }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(emu.redeem(&u.id), Some(200));
}

/// Retiring credentials end to end through the real client: the password reaches Graph (and
/// only `/_emulator/secrets`), the two timestamps come back in the validation `$select`, and the
/// conversion back is read in Graph's answer and found again by the beta listing.
#[tokio::test]
async fn credential_writes_against_the_emulator() {
    use crate::emulator::Tenant;
    let mut tenant = Tenant::generate(600, 11);
    let cloud = tenant
        .users
        .iter()
        .find(|u| {
            u.on_premises_sync_enabled.is_none()
                && u.external_user_state.is_none()
                && u.account_enabled == Some(true)
                && !tenant.holds_admin_role(&u.id)
                && u.mail
                    .as_deref()
                    .is_some_and(|m| !m.ends_with("@contoso.com"))
                && !u.has_enabled_exchange_plan()
        })
        .cloned()
        .unwrap();
    let synced_pos = tenant
        .users
        .iter()
        .position(|u| u.on_premises_user_principal_name.is_some())
        .unwrap();
    tenant.users[synced_pos].on_premises_user_principal_name = None;
    let synced = tenant.users[synced_pos].clone();
    let (emu, client) = emulator_client(
        tenant,
        &[
            "User.Invite.All",
            "User.ReadWrite.All",
            "User.RevokeSessions.All",
            "Domain.Read.All",
        ],
        &["User Administrator"],
    )
    .await;
    invite_and_redeem(&emu, &client, &cloud).await;
    invite_and_redeem(&emu, &client, &synced).await;

    let before = client.get_user(&cloud.id).await.unwrap().unwrap();
    assert_eq!(before.last_password_change_date_time, None);
    let password = Password::generate().unwrap();
    client.set_password(&cloud.id, &password).await.unwrap();
    let secrets = emu.secrets();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["password"], password.reveal());
    assert!(client.revoke_sessions(&cloud.id).await.unwrap().value);
    let after = client.get_user(&cloud.id).await.unwrap().unwrap();
    assert!(after.last_password_change_date_time.is_some());
    assert!(after.sign_in_sessions_valid_from_date_time.is_some());
    assert_eq!(emu.revocations().len(), 1);

    // The synced user's on-premises identifiers come with the validation read.
    let s = client.get_user(&synced.id).await.unwrap().unwrap();
    assert!(s.on_premises_security_identifier.is_some());
    assert_eq!(
        s.on_premises_sam_account_name,
        synced.on_premises_sam_account_name
    );
    // Graph cannot write a synced user's password: refused, nothing handed over.
    let err = client
        .set_password(&synced.id, &Password::generate().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, GraphError::Api { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(emu.secrets().len(), 1);

    assert!(client.converted_back_users().await.unwrap().is_empty());
    let upn = cloud.user_principal_name.clone().unwrap();
    let back_password = Password::generate().unwrap();
    let answer = client
        .convert_back(
            &cloud.id,
            &ConvertBack::Cloud {
                user_principal_name: &upn,
                password: &back_password,
                mail: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        answer.value.user_principal_name.as_deref(),
        Some(upn.as_str())
    );
    let on = answer
        .value
        .converted_to_internal_user_date_time
        .clone()
        .unwrap();
    let synced_answer = client
        .convert_back(&synced.id, &ConvertBack::Synced)
        .await
        .unwrap();
    assert!(synced_answer
        .value
        .converted_to_internal_user_date_time
        .is_some());
    let back = emu.conversions_back();
    assert_eq!(back[1]["body"], json!({}), "synced users send no body");
    let listed = client.converted_back_users().await.unwrap();
    let mut ids: Vec<&str> = listed.iter().map(|u| u.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![cloud.id.as_str(), synced.id.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(listed
        .iter()
        .any(|u| u.external_user_converted_on.as_deref() == Some(on.as_str())));
    emu.shutdown().await;
}

/// Who holds an admin role, known before any password write: one request.
#[tokio::test]
async fn directory_role_holders_from_the_emulator() {
    let tenant = crate::emulator::Tenant::generate(600, 11);
    let admin = tenant.users[7].id.clone();
    let (emu, client) =
        emulator_client(tenant, &["User.Read.All", "Directory.Read.All"], &[]).await;
    let sent = client.requests_sent();
    let holders = client.directory_role_holders().await.unwrap();
    assert_eq!(client.requests_sent(), sent + 1);
    assert_eq!(holders.len(), 6);
    assert_eq!(
        holders[&admin.to_lowercase()],
        vec!["User Administrator".to_string()]
    );
    emu.shutdown().await;
}

/// The password is in no log line, at the most verbose level of every target, in either log
/// format: the transport logs method, path, status and ids, never a body.
#[tokio::test(flavor = "current_thread")]
async fn no_password_in_any_log_format_at_trace() {
    use crate::emulator::Tenant;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    let tenant = Tenant::generate(600, 11);
    let user = tenant
        .users
        .iter()
        .find(|u| u.on_premises_sync_enabled.is_none() && !tenant.holds_admin_role(&u.id))
        .cloned()
        .unwrap();
    let (emu, client) =
        emulator_client(tenant, &["User.ReadWrite.All"], &["User Administrator"]).await;
    for json_format in [false, true] {
        let buf = Buf::default();
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(buf.clone());
        let _guard = if json_format {
            tracing::subscriber::set_default(builder.json().finish())
        } else {
            tracing::subscriber::set_default(builder.finish())
        };
        let password = Password::generate().unwrap();
        client.set_password(&user.id, &password).await.unwrap();
        let logged = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains("graph request"),
            "the request was logged: {logged}"
        );
        assert!(!logged.contains(password.reveal()), "json={json_format}");
        assert!(
            !logged.contains("passwordProfile"),
            "json={json_format}: {logged}"
        );
        assert!(emu
            .secrets()
            .iter()
            .any(|s| s["password"] == password.reveal()));
    }
    emu.shutdown().await;
}
