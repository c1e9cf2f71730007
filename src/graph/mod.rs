//! The Graph client: HTTP, authentication, retries and throttling. Nothing else builds URLs.
//!
//! Every request goes through [`GraphClient::execute`]: shared rate limiter, bearer token,
//! fresh `client-request-id`, one [`RequestEvent`] per attempt, and the retry rules. Those
//! rules are written for exactly-once invitations: a POST is resent only when Graph said it was
//! not carried out (429) or our token was refused (401); every other doubt is reported as
//! [`GraphError::Unknown`] so the caller re-reads the user before deciding.

pub mod auth;
pub mod config;
pub mod error;
pub mod jwt;
pub mod limiter;
pub mod retry;
mod signin;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use url::Url;

pub use auth::TokenProvider;
pub use config::{
    check_endpoint, AuthMethod, Credentials, GraphConfig, Secret, DEFAULT_GRAPH_URL,
    DEFAULT_LOGIN_URL, DEFAULT_MAX_ATTEMPTS, DEFAULT_REQUEST_TIMEOUT,
};
pub use error::{GraphError, ResponseMeta, Traced};
pub use limiter::Limiter;
pub use retry::Backoff;

use crate::model::{
    BatchRequest, BatchRequestItem, BatchResponse, Domain, ErrorBody, Invitation,
    InvitationRequest, Page, User, VALIDATION_SELECT,
};

/// Graph's limit for `id in (…)` style filters.
pub const VALUES_PER_FILTER: usize = 15;
/// Graph's limit of sub-requests in one `$batch`.
pub const REQUESTS_PER_BATCH: usize = 20;
/// 429s do not use up attempts (the request was not carried out), but a request throttled this
/// many times in a row is given up, so a run cannot spin forever.
pub const MAX_THROTTLED_RETRIES: u32 = 50;
/// `Authorization_RequestDenied` can concern one target (e.g. a privileged admin account); when
/// this many requests in a row get it, the app itself lacks permission and the run must stop.
pub const DENIED_STREAK_LIMIT: u32 = 3;
const BLOCKED_PREFIX: &str = "Invitations are blocked for this directory";

/// Receives one event per HTTP attempt (for the request journal and progress statistics).
pub trait RequestObserver: Send + Sync {
    fn on_request(&self, event: &RequestEvent);
}

/// One HTTP attempt, as the journal records it. Never holds a token or request body.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestEvent {
    pub method: String,
    /// Path and query (e.g. `/v1.0/users?$filter=…`).
    pub path: String,
    pub status: Option<u16>,
    pub client_request_id: String,
    pub request_id: Option<String>,
    pub duration: Duration,
    pub error: Option<String>,
    pub throttled: bool,
    /// 1 for the first attempt of a request, counting every resend.
    pub attempt: u32,
}

/// Cheap to clone: every worker holds one, all share the connection pool, token and limiter.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
    observer: Option<Arc<dyn RequestObserver>>,
    backoff: Backoff,
    /// Bulk reads go through `$batch` (a POST) unless the run is a dry run, which must send
    /// nothing but GETs.
    batching: bool,
}

struct Inner {
    /// Graph's root without the version, e.g. `https://graph.microsoft.com`.
    root: String,
    origin: url::Origin,
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    limiter: Arc<Limiter>,
    timeout: Duration,
    max_attempts: u32,
    sent: AtomicU64,
    /// `Authorization_RequestDenied` answers in a row, per kind of request (`POST invitations`,
    /// `GET users`, …): reads succeeding must not hide that every invitation is refused.
    denied_streaks: std::sync::Mutex<HashMap<String, u32>>,
}

/// A request as `execute` sends it (possibly several times).
struct Call {
    method: Method,
    url: Url,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<Vec<u8>>,
    /// May be resent after a 5xx or a connection failure.
    idempotent: bool,
}

impl Call {
    /// What the request does, for per-kind bookkeeping: method and first path segment after
    /// the version (`POST invitations`, `GET users`, `POST $batch`).
    fn kind(&self) -> String {
        let resource = self
            .url
            .path_segments()
            .and_then(|mut segments| segments.by_ref().skip_while(|s| *s != "v1.0").nth(1))
            .unwrap_or("");
        format!("{} {resource}", self.method)
    }
}

/// A 2xx answer.
struct Answer {
    body: Vec<u8>,
    meta: ResponseMeta,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// Checks both endpoints and loads the credentials (a certificate is read here); no request
    /// is sent yet — [`GraphClient::authenticate`] does that.
    pub fn new(config: GraphConfig, limiter: Arc<Limiter>) -> Result<GraphClient, GraphError> {
        let graph = check_endpoint(&config.graph_url)?;
        let root = graph
            .as_str()
            .trim_end_matches('/')
            .trim_end_matches("/v1.0")
            .trim_end_matches('/')
            .to_string();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("b2b-convert/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(30)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GraphError::Config(format!("cannot build the HTTP client: {e}")))?;
        let tokens = TokenProvider::new(&config, http.clone())?;
        Ok(GraphClient {
            inner: Arc::new(Inner {
                root,
                origin: graph.origin(),
                http,
                tokens,
                limiter,
                timeout: config.request_timeout,
                max_attempts: config.max_attempts.max(1),
                sent: AtomicU64::new(0),
                denied_streaks: std::sync::Mutex::new(HashMap::new()),
            }),
            observer: None,
            backoff: Backoff::default(),
            batching: true,
        })
    }

    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// With `false`, bulk reads are sent as plain GETs (15 values each) instead of `$batch`:
    /// more requests, but not a single POST — what a dry run promises.
    pub fn with_batching(mut self, batching: bool) -> Self {
        self.batching = batching;
        self
    }

    /// Changes the backoff between retries of failed idempotent requests (tests, rehearsals).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The run's shared limiter.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.inner.limiter
    }

    /// Gets a token now, so refused credentials stop the run before any work (exit 1).
    pub async fn authenticate(&self) -> Result<(), GraphError> {
        self.inner.tokens.token().await.map(|_| ())
    }

    /// HTTP requests sent to Graph (a `$batch` counts 1; token requests are not counted).
    pub fn requests_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// The tenant's verified domains (`GET /v1.0/domains`, every page).
    pub async fn verified_domains(&self) -> Result<Vec<Domain>, GraphError> {
        let mut url = self.api_url(&["domains"], &[]);
        let mut out = Vec::new();
        loop {
            let page: Page<Domain> = self.get_json(url, false).await?;
            out.extend(page.value.into_iter().filter(|d| d.is_verified));
            match page.next_link {
                Some(link) => url = self.next_link_url(&link, false)?,
                None => return Ok(out),
            }
        }
    }

    /// One user by object id or UPN with everything validation needs; `None` when absent.
    pub async fn get_user(&self, id_or_upn: &str) -> Result<Option<User>, GraphError> {
        let url = self.api_url(&["users", id_or_upn], &[("$select", VALIDATION_SELECT)]);
        match self.get_json(url, false).await {
            Ok(user) => Ok(Some(user)),
            Err(GraphError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Users by object id (any number; absent ids are simply missing from the answer).
    pub async fn users_by_ids(&self, ids: &[String]) -> Result<Vec<User>, GraphError> {
        self.users_where_in("id", ids).await
    }

    /// Users by user principal name (any number; absent ones are missing from the answer).
    pub async fn users_by_upns(&self, upns: &[String]) -> Result<Vec<User>, GraphError> {
        self.users_where_in("userPrincipalName", upns).await
    }

    /// Users whose `property` is one of `values`: 15 values per `in (…)`, as Graph allows.
    async fn users_where_in(
        &self,
        property: &str,
        values: &[String],
    ) -> Result<Vec<User>, GraphError> {
        let urls = values
            .chunks(VALUES_PER_FILTER)
            .map(|chunk| {
                self.batch_url(
                    &["users"],
                    &format!("{property} in ({})", odata_list(chunk)),
                    VALIDATION_SELECT,
                )
            })
            .collect();
        self.batch_users(urls).await
    }

    /// One page of every user's addresses (`id,mail,otherMails`, 999 a page): the tenant-wide
    /// index the `mail_conflict` check reads, built with one request per 999 users instead of
    /// one per 15 checked addresses.
    pub async fn list_user_addresses_page(
        &self,
        next_link: Option<&str>,
    ) -> Result<Page<User>, GraphError> {
        let url = match next_link {
            Some(link) => self.next_link_url(link, false)?,
            None => self.api_url(
                &["users"],
                &[("$select", "id,mail,otherMails"), ("$top", "999")],
            ),
        };
        self.get_json(url, false).await
    }

    /// One page of `GET /v1.0/users?$filter=…`. Pass the previous page's `next_link` to go on.
    /// Filters needing Graph's advanced queries get `ConsistencyLevel: eventual` and
    /// `$count=true` on every page.
    pub async fn list_users_page(
        &self,
        filter: &str,
        next_link: Option<&str>,
    ) -> Result<Page<User>, GraphError> {
        let advanced = needs_advanced_query(filter);
        let url = match next_link {
            Some(link) => self.next_link_url(link, advanced)?,
            None => {
                let mut query = Vec::new();
                if !filter.trim().is_empty() {
                    query.push(("$filter", filter));
                }
                query.push(("$select", VALIDATION_SELECT));
                query.push(("$top", "999"));
                if advanced {
                    query.push(("$count", "true"));
                }
                self.api_url(&["users"], &query)
            }
        };
        self.get_json(url, advanced).await
    }

    /// One page of a group's user members (direct, or nested with `transitive`).
    pub async fn group_members_page(
        &self,
        group_id: &str,
        transitive: bool,
        next_link: Option<&str>,
    ) -> Result<Page<User>, GraphError> {
        let url = match next_link {
            Some(link) => self.next_link_url(link, false)?,
            None => {
                let relation = if transitive {
                    "transitiveMembers"
                } else {
                    "members"
                };
                self.api_url(
                    &["groups", group_id, relation, "microsoft.graph.user"],
                    &[("$select", VALIDATION_SELECT), ("$top", "999")],
                )
            }
        };
        self.get_json(url, false).await
    }

    /// `POST /v1.0/invitations`. Resent only after a 429 or a 401 renewal; a 5xx, timeout or
    /// dropped connection gives [`GraphError::Unknown`]: the invitation may exist.
    pub async fn invite(&self, req: &InvitationRequest) -> Result<Traced<Invitation>, GraphError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| GraphError::Config(format!("cannot encode the invitation: {e}")))?;
        let answer = self
            .execute(&Call {
                method: Method::POST,
                url: self.api_url(&["invitations"], &[]),
                headers: Vec::new(),
                body: Some(body),
                idempotent: false,
            })
            .await?;
        match serde_json::from_slice::<Invitation>(&answer.body) {
            Ok(value) => Ok(Traced {
                value,
                meta: answer.meta,
            }),
            Err(e) => Err(GraphError::Unknown {
                message: format!("invitation accepted but its answer is unreadable: {e}"),
                meta: answer.meta,
            }),
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
        eventual: bool,
    ) -> Result<T, GraphError> {
        let headers = if eventual {
            vec![("ConsistencyLevel", "eventual")]
        } else {
            Vec::new()
        };
        let answer = self
            .execute(&Call {
                method: Method::GET,
                url,
                headers,
                body: None,
                idempotent: true,
            })
            .await?;
        parse_answer(&answer.body, &answer.meta)
    }

    /// Runs GET sub-requests (URLs relative to the version root) through `$batch`, 20 at a time,
    /// resending throttled and failed ones on their own.
    async fn batch_users(&self, urls: Vec<String>) -> Result<Vec<User>, GraphError> {
        if !self.batching {
            return self.get_users_one_by_one(urls).await;
        }
        struct Pending {
            id: String,
            url: String,
            failures: u32,
            throttles: u32,
        }
        let mut queue: VecDeque<Pending> = urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| Pending {
                id: (i + 1).to_string(),
                url,
                failures: 0,
                throttles: 0,
            })
            .collect();
        let batch_url = self.api_url(&["$batch"], &[]);
        let mut users = Vec::new();
        let mut more_pages = Vec::new();
        while !queue.is_empty() {
            let take = queue.len().min(REQUESTS_PER_BATCH);
            let round: Vec<Pending> = queue.drain(..take).collect();
            let body = BatchRequest {
                requests: round
                    .iter()
                    .map(|p| BatchRequestItem {
                        id: p.id.clone(),
                        method: "GET".into(),
                        url: p.url.clone(),
                        headers: None,
                        body: None,
                    })
                    .collect(),
            };
            let answer = self
                .execute(&Call {
                    method: Method::POST,
                    url: batch_url.clone(),
                    headers: Vec::new(),
                    body: Some(serde_json::to_vec(&body).expect("batch encodes")),
                    idempotent: true,
                })
                .await?;
            let parsed: BatchResponse = parse_answer(&answer.body, &answer.meta)?;
            let mut by_id: HashMap<String, _> = parsed
                .responses
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect();
            let mut wait = Duration::ZERO;
            for mut p in round {
                let Some(item) = by_id.remove(&p.id) else {
                    p.failures += 1;
                    if p.failures >= self.inner.max_attempts {
                        return Err(GraphError::Exhausted {
                            message: format!("$batch kept omitting the answer to {}", p.url),
                            meta: answer.meta.clone(),
                        });
                    }
                    wait = wait.max(self.backoff.delay(p.failures));
                    queue.push_back(p);
                    continue;
                };
                let headers = item.headers.unwrap_or_default();
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_str())
                };
                let retry_after =
                    header("Retry-After").and_then(|v| retry::parse_retry_after(v, now_wall()));
                let meta = ResponseMeta {
                    status: Some(item.status),
                    client_request_id: answer.meta.client_request_id.clone(),
                    request_id: header("request-id")
                        .map(str::to_string)
                        .or_else(|| answer.meta.request_id.clone()),
                };
                let body = item.body.unwrap_or(serde_json::Value::Null);
                match item.status {
                    200..=299 => {
                        let page: Page<User> =
                            serde_json::from_value(body).map_err(|e| GraphError::Api {
                                status: item.status,
                                code: "InvalidResponse".into(),
                                message: format!("unreadable $batch sub-response: {e}"),
                                meta: meta.clone(),
                            })?;
                        users.extend(page.value);
                        more_pages.extend(page.next_link);
                        self.inner
                            .denied_streaks
                            .lock()
                            .expect("denied streaks")
                            .remove("GET users");
                    }
                    429 => {
                        tracing::debug!(sub_request = %p.id, "$batch sub-request throttled");
                        self.inner.limiter.throttled(retry_after);
                        p.throttles += 1;
                        if p.throttles > MAX_THROTTLED_RETRIES {
                            return Err(GraphError::Exhausted {
                                message: format!(
                                    "still throttled after {MAX_THROTTLED_RETRIES} retries"
                                ),
                                meta,
                            });
                        }
                        queue.push_back(p);
                    }
                    500 | 502 | 503 | 504 => {
                        p.failures += 1;
                        if p.failures >= self.inner.max_attempts {
                            let (code, message) = error_parts(item.status, &body.to_string());
                            return Err(GraphError::Exhausted {
                                message: format!(
                                    "HTTP {} {code}: {message} (after {} attempts)",
                                    item.status, p.failures
                                ),
                                meta,
                            });
                        }
                        wait =
                            wait.max(retry_after.unwrap_or_else(|| self.backoff.delay(p.failures)));
                        queue.push_back(p);
                    }
                    status => {
                        return Err(self.refusal("GET users", status, &body.to_string(), meta))
                    }
                }
            }
            if !wait.is_zero() && !queue.is_empty() {
                tokio::time::sleep(wait).await;
            }
        }
        for link in more_pages {
            let mut url = self.next_link_url(&link, false)?;
            loop {
                let page: Page<User> = self.get_json(url, false).await?;
                users.extend(page.value);
                match page.next_link {
                    Some(next) => url = self.next_link_url(&next, false)?,
                    None => break,
                }
            }
        }
        Ok(users)
    }

    /// Sends `call` until it succeeds or a rule says stop. Returns 2xx answers only.
    async fn execute(&self, call: &Call) -> Result<Answer, GraphError> {
        let inner = &*self.inner;
        let mut attempt = 0u32;
        let mut failures = 0u32;
        let mut throttles = 0u32;
        let mut renewed: Option<Secret> = None;
        let mut already_renewed = false;
        loop {
            attempt += 1;
            inner.limiter.acquire().await;
            let token = match renewed.take() {
                Some(t) => t,
                None => inner.tokens.token().await.map_err(|e| self.mid_run(e))?,
            };
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let started = Instant::now();
            inner.sent.fetch_add(1, Ordering::Relaxed);
            let mut builder = inner
                .http
                .request(call.method.clone(), call.url.clone())
                .bearer_auth(token.expose())
                .header("client-request-id", &client_request_id)
                .header("return-client-request-id", "true")
                .timeout(inner.timeout);
            for (name, value) in &call.headers {
                builder = builder.header(*name, *value);
            }
            if let Some(body) = &call.body {
                builder = builder
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let outcome = async {
                let resp = builder.send().await?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.bytes().await?.to_vec();
                Ok::<_, reqwest::Error>((status, headers, body))
            }
            .await;

            let (status, headers, body) = match outcome {
                Ok(parts) => parts,
                Err(e) => {
                    let message = describe_transport_error(&e, inner.timeout);
                    let meta = ResponseMeta {
                        status: None,
                        client_request_id,
                        request_id: None,
                    };
                    self.report(call, attempt, &meta, started, Some(&message), false);
                    if !call.idempotent {
                        return Err(GraphError::Unknown { message, meta });
                    }
                    failures += 1;
                    if failures >= inner.max_attempts {
                        return Err(GraphError::Exhausted {
                            message: format!("{message} (after {failures} attempts)"),
                            meta,
                        });
                    }
                    tokio::time::sleep(self.backoff.delay(failures)).await;
                    continue;
                }
            };
            let meta = ResponseMeta {
                status: Some(status),
                client_request_id,
                request_id: header_str(&headers, "request-id"),
            };
            if (200..300).contains(&status) {
                self.report(call, attempt, &meta, started, None, false);
                inner.limiter.succeeded();
                inner
                    .denied_streaks
                    .lock()
                    .expect("denied streaks")
                    .remove(&call.kind());
                return Ok(Answer { body, meta });
            }
            let body_text = String::from_utf8_lossy(&body);
            let (code, message) = error_parts(status, &body_text);
            let summary = format!("HTTP {status} {code}");
            self.report(call, attempt, &meta, started, Some(&summary), status == 429);
            let retry_after = retry::retry_after_header(&headers);
            match status {
                429 => {
                    inner.limiter.throttled(retry_after);
                    throttles += 1;
                    if throttles > MAX_THROTTLED_RETRIES {
                        return Err(GraphError::Exhausted {
                            message: format!(
                                "still throttled after {MAX_THROTTLED_RETRIES} retries: {message}"
                            ),
                            meta,
                        });
                    }
                }
                401 => {
                    if !already_renewed {
                        let fresh = inner
                            .tokens
                            .renew_after_refusal(&token)
                            .await
                            .map_err(|e| self.mid_run(e))?;
                        if let Some(fresh) = fresh {
                            already_renewed = true;
                            renewed = Some(fresh);
                            continue;
                        }
                    }
                    let why = if inner.tokens.is_renewable() {
                        "the token was refused again after renewal (consent revoked?)"
                    } else {
                        "the access token was refused (B2B_ACCESS_TOKEN expired or revoked?)"
                    };
                    return Err(GraphError::TenantRefused {
                        status,
                        code,
                        message: format!("{why}: {message}"),
                        meta,
                    });
                }
                500 | 502 | 503 | 504 => {
                    if !call.idempotent {
                        return Err(GraphError::Unknown {
                            message: format!("HTTP {status} {code}: {message}"),
                            meta,
                        });
                    }
                    failures += 1;
                    if failures >= inner.max_attempts {
                        return Err(GraphError::Exhausted {
                            message: format!(
                                "HTTP {status} {code}: {message} (after {failures} attempts)"
                            ),
                            meta,
                        });
                    }
                    let wait = retry_after.unwrap_or_else(|| self.backoff.delay(failures));
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(self.refusal(&call.kind(), status, &body_text, meta)),
            }
        }
    }

    /// A token refusal after the run got going is the tenant withdrawing access (revoked
    /// consent, deleted secret): stop the run resumably rather than fail like a bad config.
    fn mid_run(&self, error: GraphError) -> GraphError {
        match error {
            GraphError::Auth { code, message } if self.inner.tokens.obtained_once() => {
                GraphError::TenantRefused {
                    status: 401,
                    code,
                    message: format!("the token endpoint refused to renew the token: {message}"),
                    meta: ResponseMeta::default(),
                }
            }
            other => other,
        }
    }

    /// A non-retryable answer: the tenant refusing the whole run, or this one request.
    fn refusal(&self, kind: &str, status: u16, body: &str, meta: ResponseMeta) -> GraphError {
        let (code, message) = error_parts(status, body);
        if status == 403 {
            let stop = if message.starts_with(BLOCKED_PREFIX) {
                true
            } else if code == "Authorization_RequestDenied" {
                let mut streaks = self.inner.denied_streaks.lock().expect("denied streaks");
                let streak = streaks.entry(kind.to_string()).or_insert(0);
                *streak += 1;
                let streak = *streak;
                streak >= DENIED_STREAK_LIMIT
            } else {
                false
            };
            if stop {
                return GraphError::TenantRefused {
                    status,
                    code,
                    message,
                    meta,
                };
            }
        }
        GraphError::Api {
            status,
            code,
            message,
            meta,
        }
    }

    fn report(
        &self,
        call: &Call,
        attempt: u32,
        meta: &ResponseMeta,
        started: Instant,
        error: Option<&str>,
        throttled: bool,
    ) {
        let path = match call.url.query() {
            Some(q) => format!("{}?{q}", call.url.path()),
            None => call.url.path().to_string(),
        };
        tracing::debug!(
            method = %call.method,
            path,
            status = meta.status,
            client_request_id = meta.client_request_id,
            request_id = meta.request_id,
            attempt,
            error,
            "graph request"
        );
        if let Some(observer) = &self.observer {
            observer.on_request(&RequestEvent {
                method: call.method.to_string(),
                path,
                status: meta.status,
                client_request_id: meta.client_request_id.clone(),
                request_id: meta.request_id.clone(),
                duration: started.elapsed(),
                error: error.map(str::to_string),
                throttled,
                attempt,
            });
        }
    }

    /// `{root}/v1.0/{segments…}?{query}`, each segment and value percent-encoded.
    fn api_url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = Url::parse(&format!("{}/v1.0", self.inner.root)).expect("root was checked");
        url.path_segments_mut()
            .expect("http(s) URLs have paths")
            .extend(segments);
        if !query.is_empty() {
            url.set_query(Some(&encode_query(query)));
        }
        url
    }

    /// The same sub-requests as `batch_users`, each as its own GET (every page followed).
    async fn get_users_one_by_one(&self, urls: Vec<String>) -> Result<Vec<User>, GraphError> {
        let mut users = Vec::new();
        for relative in urls {
            let mut url = Url::parse(&format!("{}/v1.0{relative}", self.inner.root))
                .map_err(|e| GraphError::Config(format!("bad request URL {relative}: {e}")))?;
            loop {
                let page: Page<User> = self.get_json(url, false).await?;
                users.extend(page.value);
                match page.next_link {
                    Some(next) => url = self.next_link_url(&next, false)?,
                    None => break,
                }
            }
        }
        Ok(users)
    }

    /// A `$batch` sub-request URL: relative to the version root.
    fn batch_url(&self, segments: &[&str], filter: &str, select: &str) -> String {
        let url = self.api_url(
            segments,
            &[("$filter", filter), ("$select", select), ("$top", "999")],
        );
        let path = url.path();
        let relative = path
            .strip_prefix(self.version_path().as_str())
            .unwrap_or(path);
        format!("{relative}?{}", url.query().unwrap_or(""))
    }

    fn version_path(&self) -> String {
        let url = Url::parse(&format!("{}/v1.0", self.inner.root)).expect("root was checked");
        url.path().to_string()
    }

    /// A page link from Graph, refused unless it points back at Graph (our token goes with it).
    fn next_link_url(&self, link: &str, count: bool) -> Result<Url, GraphError> {
        let mut url = Url::parse(link)
            .map_err(|e| GraphError::Config(format!("unreadable @odata.nextLink {link:?}: {e}")))?;
        if url.origin() != self.inner.origin {
            return Err(GraphError::Config(format!(
                "@odata.nextLink points outside {}: {}",
                self.inner.root,
                url.origin().ascii_serialization()
            )));
        }
        if count && !url.query_pairs().any(|(k, _)| k == "$count") {
            let query = match url.query() {
                Some(q) if !q.is_empty() => format!("{q}&$count=true"),
                _ => "$count=true".to_string(),
            };
            url.set_query(Some(&query));
        }
        Ok(url)
    }
}

fn now_wall() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn parse_answer<T: DeserializeOwned>(body: &[u8], meta: &ResponseMeta) -> Result<T, GraphError> {
    serde_json::from_slice(body).map_err(|e| GraphError::Api {
        status: meta.status.unwrap_or(0),
        code: "InvalidResponse".into(),
        message: format!("unreadable answer from Graph: {e}"),
        meta: meta.clone(),
    })
}

/// Graph's error code and message, or the status text when the body is not Graph's shape.
fn error_parts(status: u16, body: &str) -> (String, String) {
    if let Ok(e) = serde_json::from_str::<ErrorBody>(body) {
        return (e.error.code, e.error.message);
    }
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown status")
        .to_string();
    let snippet: String = body.trim().chars().take(200).collect();
    let message = if snippet.is_empty() {
        reason.clone()
    } else {
        snippet
    };
    (reason, message)
}

fn describe_transport_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {}s", timeout.as_secs_f64())
    } else if e.is_connect() {
        format!("cannot connect: {}", error_chain(e))
    } else {
        format!(
            "connection failed before a complete answer: {}",
            error_chain(e)
        )
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// True when the filter uses operators Graph only supports as an advanced query.
pub fn needs_advanced_query(filter: &str) -> bool {
    let f = format!(" {} ", filter.to_ascii_lowercase());
    [
        " ne ",
        "not(",
        " not ",
        "(not ",
        "endswith(",
        " eq null",
        " ne null",
    ]
    .iter()
    .any(|needle| f.contains(needle))
}

/// An OData string literal: quoted, with `'` doubled.
pub fn odata_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn odata_list(values: &[String]) -> String {
    values
        .iter()
        .map(|v| odata_quote(v))
        .collect::<Vec<_>>()
        .join(",")
}

/// `k=v&…` with everything outside a conservative safe set percent-encoded (spaces as `%20`,
/// never `+`, which Graph could read as a literal plus in an address; `'` as `%27`, as the URL
/// standard does for queries anyway).
fn encode_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let safe = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'$' | b'(' | b')' | b',' | b':' | b'/' | b'@'
            );
        if safe {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
