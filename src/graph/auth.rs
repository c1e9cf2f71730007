//! Bearer tokens: a fixed one, or client credentials (secret or certificate) renewed ahead of
//! expiry without stopping the workers.
//!
//! Renewal is single-flight: inside the renewal window one background task fetches a new token
//! while every caller keeps using the still-valid one; only when the token has really expired do
//! callers wait, and then for that one fetch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::config::{is_loopback, Credentials, GraphConfig, Secret};
use super::error::{GraphError, ResponseMeta};
use super::jwt::ClientCertificate;
use super::retry::{retry_after_header, Backoff};
use crate::model::{TokenError, TokenResponse};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Renew when less than this (or 10 % of the lifetime, whichever is less) remains.
const MAX_RENEW_MARGIN: Duration = Duration::from_secs(5 * 60);
/// After a failed background renewal, wait this long before the next try.
const BACKGROUND_RETRY: Duration = Duration::from_secs(10);

enum Source {
    Fixed(Secret),
    Secret {
        client_id: String,
        secret: Secret,
    },
    Certificate {
        client_id: String,
        cert: Box<ClientCertificate>,
    },
}

#[derive(Clone)]
struct Cached {
    token: Secret,
    /// From here on the token is not used any more (a little before its real expiry).
    expires_at: Instant,
    /// From here on a background renewal is started.
    renew_at: Instant,
}

pub struct TokenProvider {
    source: Source,
    http: reqwest::Client,
    token_url: String,
    scope: String,
    max_attempts: u32,
    backoff: Backoff,
    cache: Mutex<Option<Cached>>,
    renewing: Arc<tokio::sync::Mutex<()>>,
    /// Set by the first token obtained: later refusals mean the tenant withdrew its consent.
    obtained_once: AtomicBool,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("token_url", &self.token_url)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    /// Checks the endpoints and loads the certificate, so configuration mistakes show at start.
    pub fn new(
        config: &GraphConfig,
        http: reqwest::Client,
    ) -> Result<Arc<TokenProvider>, GraphError> {
        let graph = super::config::check_endpoint(&config.graph_url)?;
        let (source, tenant) = match &config.credentials {
            Credentials::Token(t) => (Source::Fixed(t.clone()), None),
            Credentials::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => (
                Source::Secret {
                    client_id: client_id.clone(),
                    secret: secret.clone(),
                },
                Some(tenant_id),
            ),
            Credentials::Certificate {
                tenant_id,
                client_id,
                pem_path,
            } => (
                Source::Certificate {
                    client_id: client_id.clone(),
                    cert: Box::new(ClientCertificate::from_pem_file(pem_path)?),
                },
                Some(tenant_id),
            ),
        };
        let token_url = match tenant {
            Some(tenant) => {
                if tenant.is_empty() || tenant.contains(['/', '?', '#']) {
                    return Err(GraphError::Config(format!("invalid tenant id {tenant:?}")));
                }
                let login = super::config::check_endpoint(&config.login_url)?;
                format!(
                    "{}/{tenant}/oauth2/v2.0/token",
                    login.as_str().trim_end_matches('/')
                )
            }
            None => String::new(),
        };
        Ok(Arc::new(TokenProvider {
            source,
            http,
            token_url,
            scope: scope_for(&graph),
            max_attempts: config.http_retries.saturating_add(1),
            backoff: Backoff::default(),
            cache: Mutex::new(None),
            renewing: Arc::new(tokio::sync::Mutex::new(())),
            obtained_once: AtomicBool::new(false),
        }))
    }

    /// False for a fixed token: a 401 cannot be cured by renewing it.
    pub fn is_renewable(&self) -> bool {
        !matches!(self.source, Source::Fixed(_))
    }

    /// True once a token was obtained (or for a fixed token): from then on a refusal by the
    /// token endpoint is the tenant withdrawing access mid-run, not a configuration mistake.
    pub fn obtained_once(&self) -> bool {
        !self.is_renewable() || self.obtained_once.load(Ordering::Relaxed)
    }

    /// The scope requested from the token endpoint.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// A token to send now.
    pub async fn token(self: &Arc<Self>) -> Result<Secret, GraphError> {
        if let Source::Fixed(t) = &self.source {
            return Ok(t.clone());
        }
        let now = Instant::now();
        let current = self.cache.lock().expect("token cache").clone();
        if let Some(c) = current {
            if now < c.renew_at {
                return Ok(c.token);
            }
            if now < c.expires_at {
                self.renew_in_background();
                return Ok(c.token);
            }
        }
        let _guard = self.renewing.lock().await;
        if let Some(c) = self.cache.lock().expect("token cache").clone() {
            if Instant::now() < c.expires_at {
                return Ok(c.token);
            }
        }
        let fresh = self.fetch().await?;
        *self.cache.lock().expect("token cache") = Some(fresh.clone());
        Ok(fresh.token)
    }

    /// Graph refused `refused` with a 401: get a new token unless another task already did.
    /// `None` for a fixed token, which cannot be renewed.
    pub async fn renew_after_refusal(
        &self,
        refused: &Secret,
    ) -> Result<Option<Secret>, GraphError> {
        if !self.is_renewable() {
            return Ok(None);
        }
        let _guard = self.renewing.lock().await;
        if let Some(c) = self.cache.lock().expect("token cache").clone() {
            if &c.token != refused && Instant::now() < c.expires_at {
                return Ok(Some(c.token));
            }
        }
        let fresh = self.fetch().await?;
        *self.cache.lock().expect("token cache") = Some(fresh.clone());
        Ok(Some(fresh.token))
    }

    fn renew_in_background(self: &Arc<Self>) {
        let Ok(guard) = self.renewing.clone().try_lock_owned() else {
            return; // someone is renewing already
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let still_due = this
                .cache
                .lock()
                .expect("token cache")
                .as_ref()
                .is_none_or(|c| Instant::now() >= c.renew_at);
            if !still_due {
                return;
            }
            match this.fetch().await {
                Ok(fresh) => *this.cache.lock().expect("token cache") = Some(fresh),
                Err(e) => {
                    tracing::warn!(error = %e, "token renewal failed; retrying shortly");
                    if let Some(c) = this.cache.lock().expect("token cache").as_mut() {
                        c.renew_at = (Instant::now() + BACKGROUND_RETRY).min(c.expires_at);
                    }
                }
            }
        });
    }

    async fn fetch(&self) -> Result<Cached, GraphError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut form: Vec<(&str, String)> = vec![
                ("grant_type", "client_credentials".into()),
                ("scope", self.scope.clone()),
            ];
            match &self.source {
                Source::Fixed(_) => unreachable!("fixed tokens are never fetched"),
                Source::Secret { client_id, secret } => {
                    form.push(("client_id", client_id.clone()));
                    form.push(("client_secret", secret.expose().to_string()));
                }
                Source::Certificate { client_id, cert } => {
                    form.push(("client_id", client_id.clone()));
                    form.push(("client_assertion_type", ASSERTION_TYPE.into()));
                    let now = chrono::Utc::now().timestamp();
                    form.push((
                        "client_assertion",
                        cert.assertion(client_id, &self.token_url, now),
                    ));
                }
            }
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let sent_at = Instant::now();
            let result = self
                .http
                .post(&self.token_url)
                .header("client-request-id", &client_request_id)
                .form(&form)
                .send()
                .await;
            let (status, retry_after, body) = match result {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after_header(resp.headers());
                    match resp.bytes().await {
                        Ok(b) => (Some(status), retry_after, b),
                        Err(e) => (None, None, e.to_string().into_bytes().into()),
                    }
                }
                Err(e) => (None, None, e.to_string().into_bytes().into()),
            };
            tracing::debug!(
                status = status.map(|s| s.as_u16()),
                client_request_id,
                "token request"
            );
            let meta = ResponseMeta {
                status: status.map(|s| s.as_u16()),
                client_request_id,
                request_id: None,
            };
            match status {
                Some(s) if s.is_success() => {
                    let t: TokenResponse =
                        serde_json::from_slice(&body).map_err(|e| GraphError::Auth {
                            code: "invalid_response".into(),
                            message: format!("unreadable token endpoint answer: {e}"),
                        })?;
                    self.obtained_once.store(true, Ordering::Relaxed);
                    return Ok(cache_entry(t, sent_at));
                }
                Some(s) if s.is_client_error() && s.as_u16() != 429 => {
                    return Err(auth_error(s.as_u16(), &body));
                }
                _ if attempt >= self.max_attempts => {
                    let what = match status {
                        Some(s) => format!("HTTP {s}"),
                        None => String::from_utf8_lossy(&body).into_owned(),
                    };
                    return Err(GraphError::Exhausted {
                        message: format!("token endpoint {}: {what}", self.token_url),
                        meta,
                    });
                }
                _ => {
                    let wait = retry_after.unwrap_or_else(|| self.backoff.delay(attempt));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
impl TokenProvider {
    /// Moves the cached token into its renewal window (or past its expiry).
    pub(crate) fn force_window_for_test(&self, expired: bool) {
        if let Some(c) = self.cache.lock().expect("token cache").as_mut() {
            let now = Instant::now();
            c.renew_at = now;
            if expired {
                c.expires_at = now;
            }
        }
    }

    pub(crate) fn cached_for_test(&self) -> Option<String> {
        self.cache
            .lock()
            .expect("token cache")
            .as_ref()
            .map(|c| c.token.expose().to_string())
    }
}

/// Graph's scope: `/.default` of the Graph origin, so national clouds work. A loopback Graph is
/// an emulator standing in for the public cloud, so it gets the public scope.
fn scope_for(graph: &url::Url) -> String {
    match graph.host() {
        Some(h) if !is_loopback(&h) => {
            format!("{}/.default", graph.origin().ascii_serialization())
        }
        _ => "https://graph.microsoft.com/.default".into(),
    }
}

fn cache_entry(t: TokenResponse, sent_at: Instant) -> Cached {
    let lifetime = Duration::from_secs(t.expires_in);
    let margin = MAX_RENEW_MARGIN.min(lifetime / 10);
    let skew = Duration::from_secs(10).min(margin / 2);
    let end = sent_at + lifetime;
    Cached {
        token: Secret::new(t.access_token),
        expires_at: end - skew,
        renew_at: end - margin,
    }
}

/// `AADSTS…` code and first line of the description of a token endpoint refusal.
fn auth_error(status: u16, body: &[u8]) -> GraphError {
    match serde_json::from_slice::<TokenError>(body) {
        Ok(e) => {
            let code = aadsts_code(&e.error_description)
                .or_else(|| e.error_codes.first().map(|c| format!("AADSTS{c}")))
                .unwrap_or(e.error.clone());
            let first_line = e.error_description.lines().next().unwrap_or("").trim();
            let message = if first_line.is_empty() {
                e.error
            } else {
                first_line.to_string()
            };
            GraphError::Auth { code, message }
        }
        Err(_) => GraphError::Auth {
            code: format!("http_{status}"),
            message: String::from_utf8_lossy(body).chars().take(200).collect(),
        },
    }
}

fn aadsts_code(text: &str) -> Option<String> {
    let start = text.find("AADSTS")?;
    let digits: String = text[start + 6..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (!digits.is_empty()).then(|| format!("AADSTS{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_give_aadsts_code_and_first_line() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x\r\nCorrelation ID: y","error_codes":[7000215]}"#;
        match auth_error(400, body) {
            GraphError::Auth { code, message } => {
                assert_eq!(code, "AADSTS7000215");
                assert_eq!(message, "AADSTS7000215: Invalid client secret provided.");
            }
            other => panic!("{other:?}"),
        }
        let body =
            br#"{"error":"unauthorized_client","error_description":"","error_codes":[700016]}"#;
        assert_eq!(auth_error(400, body).code(), Some("AADSTS700016"));
        let body = br#"{"error":"invalid_request","error_description":"bad"}"#;
        assert_eq!(auth_error(400, body).code(), Some("invalid_request"));
        assert_eq!(auth_error(400, b"<html>").code(), Some("http_400"));
    }

    #[test]
    fn scope_follows_the_graph_cloud() {
        let s = |u: &str| scope_for(&url::Url::parse(u).unwrap());
        assert_eq!(
            s("https://graph.microsoft.com"),
            "https://graph.microsoft.com/.default"
        );
        assert_eq!(
            s("https://graph.microsoft.us/"),
            "https://graph.microsoft.us/.default"
        );
        assert_eq!(
            s("https://microsoftgraph.chinacloudapi.cn/v1.0"),
            "https://microsoftgraph.chinacloudapi.cn/.default"
        );
        assert_eq!(
            s("http://127.0.0.1:8080"),
            "https://graph.microsoft.com/.default"
        );
    }

    #[test]
    fn renewal_window_is_min_of_five_minutes_and_ten_percent() {
        let at = Instant::now();
        let c = cache_entry(
            TokenResponse {
                token_type: "Bearer".into(),
                expires_in: 3600,
                ext_expires_in: None,
                access_token: "a".into(),
            },
            at,
        );
        assert_eq!(c.renew_at, at + Duration::from_secs(3300));
        assert_eq!(c.expires_at, at + Duration::from_secs(3590));
        let c = cache_entry(
            TokenResponse {
                token_type: "Bearer".into(),
                expires_in: 600,
                ext_expires_in: None,
                access_token: "a".into(),
            },
            at,
        );
        assert_eq!(c.renew_at, at + Duration::from_secs(540));
        assert_eq!(c.expires_at, at + Duration::from_secs(590));
    }
}
