//! One request to Graph: limiter, bearer token, fresh `client-request-id`, one [`RequestEvent`]
//! per attempt, renewal after a 401, and the classification of every answer or failure.
//!
//! The rules are written for exactly-once invitations. A POST is resent only when Graph said it
//! was not carried out (429), our token was refused (401), or the connection never opened (the
//! request cannot have left: [`GraphError::NotSent`] once that lasts too long). Every other doubt
//! — a timeout or a reset after sending, a 5xx — is [`GraphError::Unknown`] for a POST, so the
//! caller re-reads the user before deciding.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use url::Url;

use super::budget::Scope;
use super::config::Secret;
use super::error::{GraphError, ResponseMeta};
use super::retry::{self, Attempts, Failure, Verdict};
use super::{GraphClient, RequestEvent, DENIED_STREAK_LIMIT};
use crate::model::ErrorBody;

const BLOCKED_PREFIX: &str = "Invitations are blocked for this directory";

/// A request as `execute` sends it (possibly several times).
pub(super) struct Call {
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) headers: Vec<(&'static str, &'static str)>,
    pub(super) body: Option<Vec<u8>>,
    /// May be resent after a 5xx, a timeout or a dropped connection.
    pub(super) idempotent: bool,
    /// Which budget the request waits on.
    pub(super) spend: Spend,
}

/// What a request spends: reads wait on the read budget (resource units), writes on the write
/// limiter (and charge their resource unit to the read budget without waiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spend {
    /// A read costing this many resource units (a `$batch` of reads: their sum).
    Read(u32),
    Write,
}

impl Spend {
    /// A GET of `url`, at Graph's price.
    pub(super) fn read(url: &Url) -> Spend {
        Spend::Read(super::budget::read_cost(url))
    }

    fn is_read(self) -> bool {
        matches!(self, Spend::Read(_))
    }
}

impl Call {
    /// What the request does, for per-kind bookkeeping: method and first path segment after
    /// the version (`POST invitations`, `GET users`, `POST $batch`).
    pub(super) fn kind(&self) -> String {
        let resource = self
            .url
            .path_segments()
            .and_then(|mut segments| {
                segments
                    .by_ref()
                    .skip_while(|s| *s != "v1.0" && *s != "beta")
                    .nth(1)
            })
            .unwrap_or("");
        format!("{} {resource}", self.method)
    }

    /// `METHOD /path` (no query), as messages name the request.
    fn describe(&self) -> String {
        format!("{} {}", self.method, self.url.path())
    }

    /// The URL without its query, as messages name where we tried to go.
    fn target(&self) -> String {
        let mut url = self.url.clone();
        url.set_query(None);
        url.to_string()
    }
}

/// A 2xx answer.
pub(super) struct Answer {
    pub(super) body: Vec<u8>,
    pub(super) meta: ResponseMeta,
}

/// A request that got no answer, sorted by whether it could have reached the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Lost {
    /// The connection never opened (refused, DNS, TLS handshake, connect timeout, pool).
    NotSent(String),
    /// The request may have left: a timeout waiting for the answer, or a reset after sending.
    MaybeSent(String),
}

/// Sorts a transport error of a Graph request; the message names the request.
pub(super) fn classify(
    e: &reqwest::Error,
    call: &Call,
    timeout: Duration,
    connect_timeout: Duration,
) -> Lost {
    classify_error(
        e,
        &call.url.origin().ascii_serialization(),
        &format!("Graph's answer to {}", call.describe()),
        timeout,
        connect_timeout,
    )
}

/// Sorts any transport error by whether the request could have left, with a message saying
/// what failed or timed out: `server` is where we connect (`https://graph.microsoft.com`, "the
/// token endpoint at …"), `answer` what we wait for ("Graph's answer to POST /v1.0/invitations").
/// Public so the token endpoint's requests word their failures the same way.
pub fn classify_error(
    e: &reqwest::Error,
    server: &str,
    answer: &str,
    timeout: Duration,
    connect_timeout: Duration,
) -> Lost {
    if e.is_connect() {
        if e.is_timeout() {
            Lost::NotSent(format!(
                "connecting to {server} timed out after {} s",
                secs(connect_timeout)
            ))
        } else {
            Lost::NotSent(format!("cannot connect to {server}: {}", root_cause(e)))
        }
    } else if e.is_timeout() {
        Lost::MaybeSent(format!(
            "waiting for {answer} timed out after {} s (--http-timeout)",
            secs(timeout)
        ))
    } else {
        Lost::MaybeSent(format!(
            "the connection to {server} failed before {answer} was complete: {}",
            root_cause(e)
        ))
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

impl GraphClient {
    /// Sends `call` until it succeeds or the retry policy says stop. Returns 2xx answers only.
    pub(super) async fn execute(&self, call: &Call) -> Result<Answer, GraphError> {
        let inner = &*self.inner;
        let mut attempt = 0u32;
        let mut attempts = Attempts::default();
        let mut renewed: Option<Secret> = None;
        let mut already_renewed = false;
        loop {
            attempt += 1;
            match call.spend {
                Spend::Read(ru) => self.budget.acquire(ru).await,
                Spend::Write => {
                    inner.limiter.acquire().await;
                    self.budget.spend(1);
                }
            }
            if let Some(silent) = inner.silence.exceeded() {
                return Err(self.silenced(call, silent));
            }
            let started = Instant::now();
            let token = match renewed.take() {
                Some(t) => t,
                None => match inner.tokens.token().await {
                    Ok(t) => t,
                    Err(e) => {
                        let wait = self.token_unavailable(e, call, &mut attempts, started)?;
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                },
            };
            let client_request_id = uuid::Uuid::new_v4().to_string();
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
            if let Some(gate) = &self.gate {
                gate.may_send()
                    .map_err(|message| GraphError::NotSent { message })?;
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
                    let meta = ResponseMeta {
                        status: None,
                        client_request_id,
                        request_id: None,
                    };
                    inner.silence.unanswered(started);
                    let silent = inner.silence.exceeded();
                    match classify(&e, call, inner.timeout, inner.connect_timeout) {
                        Lost::NotSent(message) => {
                            self.report(call, attempt, &meta, started, Some(&message), false);
                            if let Some(silent) = silent {
                                return Err(self.silenced(call, silent));
                            }
                            match self
                                .retry
                                .next(&mut attempts, Failure::NotSent, call.idempotent)
                            {
                                Verdict::RetryAfter(wait) => {
                                    tokio::time::sleep(wait).await;
                                    continue;
                                }
                                Verdict::GiveUp => {
                                    return Err(GraphError::NotSent {
                                        message: format!(
                                            "{} {}: {message} (tried {} times over {} s)",
                                            call.method,
                                            call.target(),
                                            attempts.not_sent,
                                            secs(self.retry.not_sent_for)
                                        ),
                                    })
                                }
                            }
                        }
                        Lost::MaybeSent(message) => {
                            inner.sent.fetch_add(1, Ordering::Relaxed);
                            self.report(call, attempt, &meta, started, Some(&message), false);
                            match silent {
                                // An invitation that may have left stays unknown: the caller
                                // re-reads the user, and that read is refused as silenced.
                                Some(_) if !call.idempotent => {
                                    return Err(GraphError::Unknown { message, meta })
                                }
                                // A read changes nothing: whether it left does not matter.
                                Some(silent) => return Err(self.silenced(call, silent)),
                                None => {}
                            }
                            let failure = Failure::Failed { retry_after: None };
                            match self.retry.next(&mut attempts, failure, call.idempotent) {
                                Verdict::RetryAfter(wait) => {
                                    tokio::time::sleep(wait).await;
                                    continue;
                                }
                                Verdict::GiveUp if !call.idempotent => {
                                    return Err(GraphError::Unknown { message, meta })
                                }
                                Verdict::GiveUp => {
                                    return Err(GraphError::Exhausted {
                                        message: format!(
                                            "{message} (after {} attempts)",
                                            attempts.failures
                                        ),
                                        meta,
                                    })
                                }
                            }
                        }
                    }
                }
            };
            inner.sent.fetch_add(1, Ordering::Relaxed);
            inner.silence.answered();
            let meta = ResponseMeta {
                status: Some(status),
                client_request_id,
                request_id: header_str(&headers, "request-id"),
            };
            if let Some(share) = retry::limit_percentage_header(&headers) {
                if call.spend.is_read() {
                    self.budget.pressure(share);
                } else {
                    inner.limiter.pressure(share);
                }
            }
            if (200..300).contains(&status) {
                self.report(call, attempt, &meta, started, None, false);
                if call.spend.is_read() {
                    self.budget.succeeded(started.elapsed());
                } else {
                    inner.limiter.succeeded();
                }
                self.clear_denied(&call.kind());
                return Ok(Answer { body, meta });
            }
            let body_text = String::from_utf8_lossy(&body);
            let (code, message) = error_parts(status, &body_text);
            let summary = format!("HTTP {status} {code}");
            self.report(call, attempt, &meta, started, Some(&summary), status == 429);
            let retry_after = retry::retry_after_header(&headers);
            match status {
                429 => {
                    let scope = header_str(&headers, "x-ms-throttle-scope");
                    self.throttled(call.spend.is_read(), scope.as_deref(), retry_after);
                    let verdict =
                        self.retry
                            .next(&mut attempts, Failure::Throttled, call.idempotent);
                    if verdict == Verdict::GiveUp {
                        return Err(GraphError::Exhausted {
                            message: format!(
                                "still throttled after {} retries: {message}",
                                self.retry.throttled_retries
                            ),
                            meta,
                        });
                    }
                }
                401 => {
                    if !already_renewed {
                        let asked = Instant::now();
                        let fresh = match inner.tokens.renew_after_refusal(&token).await {
                            Ok(fresh) => fresh,
                            Err(e) => {
                                let wait = self.token_unavailable(e, call, &mut attempts, asked)?;
                                tokio::time::sleep(wait).await;
                                continue;
                            }
                        };
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
                    let failure = Failure::Failed { retry_after };
                    match self.retry.next(&mut attempts, failure, call.idempotent) {
                        Verdict::RetryAfter(wait) => tokio::time::sleep(wait).await,
                        Verdict::GiveUp if !call.idempotent => {
                            return Err(GraphError::Unknown {
                                message: format!("HTTP {status} {code}: {message}"),
                                meta,
                            })
                        }
                        Verdict::GiveUp => {
                            return Err(GraphError::Exhausted {
                                message: format!(
                                    "HTTP {status} {code}: {message} (after {} attempts)",
                                    attempts.failures
                                ),
                                meta,
                            })
                        }
                    }
                }
                _ => return Err(self.refusal(&call.kind(), status, &body_text, meta)),
            }
        }
    }

    /// A 429: the side the request waits on pauses, and the other side too when the answer's
    /// `x-ms-throttle-scope` names it (or names nothing): a read throttled on Graph's resource
    /// units does not hold up invitations, nor a write limit the reads.
    pub(super) fn throttled(&self, read: bool, scope: Option<&str>, retry_after: Option<Duration>) {
        let scope = Scope::parse(scope);
        if !read || scope.pauses_writes() {
            self.inner.limiter.throttled(retry_after);
        }
        if read || scope.pauses_reads() {
            self.budget.throttled(retry_after);
        }
    }

    /// A request of this kind went through: its permission-denied streak is over.
    pub(super) fn clear_denied(&self, kind: &str) {
        self.inner
            .denied_streaks
            .lock()
            .expect("denied streaks")
            .remove(kind);
    }

    /// The request could not get a token, so it never left. A refusal by the token endpoint is
    /// handled by [`GraphClient::mid_run`]; a token endpoint that does not answer (or answers
    /// only 5xx and 429) is retried like a refused connection, for the same bounded stretch and
    /// silence window, then the run stops resumable with the token endpoint named. Returns how
    /// long to wait before trying again.
    fn token_unavailable(
        &self,
        error: GraphError,
        call: &Call,
        attempts: &mut Attempts,
        started: Instant,
    ) -> Result<Duration, GraphError> {
        let GraphError::Exhausted { message, meta } = error else {
            return Err(self.mid_run(error));
        };
        let silence = &self.inner.silence;
        if meta.status.is_some() {
            silence.answered();
        } else {
            silence.unanswered(started);
        }
        if let Some(silent) = silence.exceeded() {
            return Err(GraphError::NotSent {
                message: format!(
                    "{} {} was not sent: no token, and no answer from Graph or the token endpoint for {} s (last: {message})",
                    call.method,
                    call.target(),
                    silent.as_secs()
                ),
            });
        }
        match self.retry.next(attempts, Failure::NotSent, call.idempotent) {
            Verdict::RetryAfter(wait) => Ok(wait),
            Verdict::GiveUp => Err(GraphError::NotSent {
                message: format!(
                    "{} {} was not sent: no token ({message}; tried {} times over {} s)",
                    call.method,
                    call.target(),
                    attempts.not_sent,
                    secs(self.retry.not_sent_for)
                ),
            }),
        }
    }

    /// Graph and the token endpoint have been silent for the whole window: no request starts.
    fn silenced(&self, call: &Call, silent: Duration) -> GraphError {
        GraphError::NotSent {
            message: format!(
                "{} {}: no answer of any kind from {} or the token endpoint for {} s (connections accepted but never answered, or refused); nothing more is sent",
                call.method,
                call.target(),
                self.inner.origin.ascii_serialization(),
                silent.as_secs()
            ),
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
    pub(super) fn refusal(
        &self,
        kind: &str,
        status: u16,
        body: &str,
        meta: ResponseMeta,
    ) -> GraphError {
        let (code, message) = error_parts(status, body);
        if status == 403 {
            let stop = if message.starts_with(BLOCKED_PREFIX) {
                true
            } else if code == "Authorization_RequestDenied" {
                let mut streaks = self.inner.denied_streaks.lock().expect("denied streaks");
                let streak = streaks.entry(kind.to_string()).or_insert(0);
                *streak += 1;
                *streak >= DENIED_STREAK_LIMIT
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
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(super) fn parse_answer<T: DeserializeOwned>(
    body: &[u8],
    meta: &ResponseMeta,
) -> Result<T, GraphError> {
    serde_json::from_slice(body).map_err(|e| GraphError::Api {
        status: meta.status.unwrap_or(0),
        code: "InvalidResponse".into(),
        message: format!("unreadable answer from Graph: {e}"),
        meta: meta.clone(),
    })
}

/// Graph's error code and message, or the status text when the body is not Graph's shape.
pub(super) fn error_parts(status: u16, body: &str) -> (String, String) {
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

/// The innermost cause ("Connection refused (os error 111)", "failed to lookup address
/// information: …", "invalid peer certificate: …"): the outer layers only repeat the URL.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
