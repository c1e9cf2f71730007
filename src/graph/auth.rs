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

use super::config::{is_loopback, Credentials, GraphConfig, ManagedIdentityEndpoint, Secret};
use super::error::{GraphError, ResponseMeta};
use super::jwt::ClientCertificate;
use super::retry::{retry_after_header, Backoff};
use super::signin;
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
    /// A person; after the first sign-in, renewed with the refresh token (memory only).
    DeviceCode {
        client_id: String,
        devicecode_url: String,
        refresh: Mutex<Option<Secret>>,
    },
    AzureCli {
        program: std::path::PathBuf,
        tenant_id: Option<String>,
    },
    ManagedIdentity {
        endpoint: ManagedIdentityEndpoint,
        client_id: Option<String>,
    },
    Workload {
        client_id: String,
        token_file: std::path::PathBuf,
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
            Credentials::DeviceCode {
                tenant_id,
                client_id,
            } => (
                Source::DeviceCode {
                    client_id: client_id.clone(),
                    devicecode_url: String::new(),
                    refresh: Mutex::new(None),
                },
                Some(tenant_id),
            ),
            Credentials::AzureCli { tenant_id, program } => (
                Source::AzureCli {
                    program: program.clone(),
                    tenant_id: tenant_id.clone(),
                },
                None,
            ),
            Credentials::ManagedIdentity {
                endpoint,
                client_id,
            } => {
                match endpoint {
                    ManagedIdentityEndpoint::AppService { url, .. } => {
                        super::config::check_endpoint(url)?;
                    }
                    // The link-local default never leaves the host; an override must be
                    // https or loopback like every other endpoint.
                    ManagedIdentityEndpoint::InstanceMetadata { base_url }
                        if base_url != super::config::DEFAULT_IMDS_URL =>
                    {
                        super::config::check_endpoint(base_url)?;
                    }
                    ManagedIdentityEndpoint::InstanceMetadata { .. } => {}
                }
                (
                    Source::ManagedIdentity {
                        endpoint: endpoint.clone(),
                        client_id: client_id.clone(),
                    },
                    None,
                )
            }
            Credentials::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => (
                Source::Workload {
                    client_id: client_id.clone(),
                    token_file: token_file.clone(),
                },
                Some(tenant_id),
            ),
        };
        let mut source = source;
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
        if let Source::DeviceCode { devicecode_url, .. } = &mut source {
            *devicecode_url = token_url.replace("/oauth2/v2.0/token", "/oauth2/v2.0/devicecode");
        }
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
        let resource = self.scope.trim_end_matches("/.default").to_string();
        let sent_at = Instant::now();
        let obtained = match &self.source {
            Source::AzureCli { program, tenant_id } => {
                Some(signin::azure_cli(program, tenant_id.as_deref(), &resource).await?)
            }
            Source::ManagedIdentity {
                endpoint,
                client_id,
            } => Some(
                signin::managed_identity(&self.http, endpoint, client_id.as_deref(), &resource)
                    .await?,
            ),
            Source::DeviceCode {
                client_id,
                devicecode_url,
                refresh,
            } if refresh.lock().expect("refresh token").is_none() => {
                Some(self.device_code(client_id, devicecode_url).await?)
            }
            _ => None,
        };
        if let Some(o) = obtained {
            return Ok(self.obtained(o, sent_at));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut form: Vec<(&str, String)> = vec![
                ("grant_type", "client_credentials".into()),
                ("scope", self.scope.clone()),
            ];
            match &self.source {
                Source::Fixed(_) | Source::AzureCli { .. } | Source::ManagedIdentity { .. } => {
                    unreachable!("fetched above")
                }
                Source::DeviceCode {
                    client_id, refresh, ..
                } => {
                    let token = refresh.lock().expect("refresh token").clone();
                    let token = token.expect("a refresh token after the first sign-in");
                    form = vec![
                        ("grant_type", "refresh_token".into()),
                        ("scope", delegated_scope(&self.scope)),
                        ("client_id", client_id.clone()),
                        ("refresh_token", token.expose().to_string()),
                    ];
                }
                Source::Workload {
                    client_id,
                    token_file,
                } => {
                    let assertion = std::fs::read_to_string(token_file).map_err(|e| {
                        GraphError::Config(format!(
                            "cannot read AZURE_FEDERATED_TOKEN_FILE {}: {e}",
                            token_file.display()
                        ))
                    })?;
                    form.push(("client_id", client_id.clone()));
                    form.push(("client_assertion_type", ASSERTION_TYPE.into()));
                    form.push(("client_assertion", assertion.trim().to_string()));
                }
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
                    self.keep_refresh_token(&body);
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

impl TokenProvider {
    fn obtained(&self, o: signin::Obtained, sent_at: Instant) -> Cached {
        if let (Some(r), Source::DeviceCode { refresh, .. }) = (&o.refresh_token, &self.source) {
            *refresh.lock().expect("refresh token") = Some(Secret::new(r.clone()));
        }
        self.obtained_once.store(true, Ordering::Relaxed);
        cache_entry(
            TokenResponse {
                token_type: "Bearer".into(),
                expires_in: o.expires_in,
                ext_expires_in: None,
                access_token: o.token,
            },
            sent_at,
        )
    }

    /// A delegated answer carries a (rotated) refresh token: keep the newest, in memory only.
    fn keep_refresh_token(&self, body: &[u8]) {
        if let Source::DeviceCode { refresh, .. } = &self.source {
            #[derive(serde::Deserialize)]
            struct Refresh {
                refresh_token: Option<String>,
            }
            if let Ok(Refresh {
                refresh_token: Some(r),
            }) = serde_json::from_slice(body)
            {
                *refresh.lock().expect("refresh token") = Some(Secret::new(r));
            }
        }
    }

    /// The device-code flow: show the code on stderr, then poll as the server asks.
    async fn device_code(
        &self,
        client_id: &str,
        devicecode_url: &str,
    ) -> Result<signin::Obtained, GraphError> {
        let scope = delegated_scope(&self.scope);
        let resp = self
            .http
            .post(devicecode_url)
            .form(&[("client_id", client_id), ("scope", scope.as_str())])
            .send()
            .await
            .map_err(|e| GraphError::Auth {
                code: "device_code".into(),
                message: format!("cannot reach {devicecode_url}: {e}"),
            })?;
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            return Err(auth_error(status.as_u16(), &body));
        }
        let answer: signin::DeviceCodeAnswer =
            serde_json::from_slice(&body).map_err(|e| GraphError::Auth {
                code: "invalid_response".into(),
                message: format!("unreadable device-code answer: {e}"),
            })?;
        eprintln!("{}", answer.instructions());
        let deadline = Instant::now() + Duration::from_secs(answer.expires_in);
        let mut interval = answer.interval();
        loop {
            tokio::time::sleep(interval).await;
            if Instant::now() >= deadline {
                return Err(GraphError::Auth {
                    code: "expired_token".into(),
                    message: "the code expired before anyone signed in: run the command again and sign in within the time shown".into(),
                });
            }
            let resp = self
                .http
                .post(&self.token_url)
                .form(&[
                    ("grant_type", signin::DEVICE_CODE_GRANT),
                    ("client_id", client_id),
                    ("device_code", answer.device_code.as_str()),
                ])
                .send()
                .await;
            let Ok(resp) = resp else {
                continue; // a lost poll is simply repeated at the next interval
            };
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            if status.is_success() {
                let t: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| GraphError::Auth {
                        code: "invalid_response".into(),
                        message: format!("unreadable token endpoint answer: {e}"),
                    })?;
                let refresh = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("refresh_token")?.as_str().map(str::to_string));
                return Ok(signin::Obtained {
                    token: t.access_token,
                    expires_in: t.expires_in,
                    refresh_token: refresh,
                });
            }
            let error = serde_json::from_slice::<TokenError>(&body)
                .map(|e| e.error)
                .unwrap_or_default();
            let (next, new_interval) = signin::after_poll(&error, interval);
            interval = new_interval;
            match next {
                signin::Poll::Again(_) => {}
                signin::Poll::GiveUp(why) => {
                    return Err(GraphError::Auth {
                        code: error,
                        message: why.into(),
                    })
                }
                signin::Poll::Refused => return Err(auth_error(status.as_u16(), &body)),
            }
        }
    }
}

/// Delegated sign-in asks for Graph's consented permissions and a refresh token.
fn delegated_scope(scope: &str) -> String {
    format!("{scope} offline_access")
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

    /// Waits until no renewal is running: a background renewal holds `renewing` until it has
    /// stored its token (or given up), so taking the lock once is the end of it.
    pub(crate) async fn renewal_settled_for_test(&self) {
        drop(self.renewing.lock().await);
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
            // Entra puts trace ids after the sentence on the same line: keep the sentence.
            let first_line = first_line.split(" Trace ID:").next().unwrap_or("").trim();
            let mut message = if first_line.is_empty() {
                e.error
            } else {
                first_line.to_string()
            };
            if let Some(fix) = fix_for(&code) {
                message = format!("{message} Fix: {fix}");
            }
            GraphError::Auth { code, message }
        }
        Err(_) => GraphError::Auth {
            code: format!("http_{status}"),
            message: String::from_utf8_lossy(body).chars().take(200).collect(),
        },
    }
}

/// What an administrator does about a token refusal, in plain words.
pub fn fix_for(code: &str) -> Option<&'static str> {
    Some(match code {
        "AADSTS7000215" => "the client secret is wrong: set AZURE_CLIENT_SECRET to the secret's Value (not its Secret ID) from the app registration's Certificates & secrets",
        "AADSTS7000222" => "the client secret has expired: create a new one under the app registration's Certificates & secrets and set AZURE_CLIENT_SECRET to it",
        "AADSTS700027" => "the certificate is not registered on the app (or the key does not match it): upload the certificate's public part under the app registration's Certificates & secrets",
        "AADSTS1000502" => "the certificate has expired: create a new one and upload it under the app registration's Certificates & secrets",
        "AADSTS700016" => "the app is not in this tenant: check AZURE_CLIENT_ID and AZURE_TENANT_ID, and that an administrator consented to the app in this tenant",
        "AADSTS90002" => "the tenant does not exist: check AZURE_TENANT_ID (the Directory (tenant) ID or a verified domain) and --cloud",
        "AADSTS700024" => "the client assertion is outside its validity: check this machine's clock",
        "AADSTS70021" | "AADSTS700212" => "no federated credential of the app matches the token: check the issuer, subject and audience (api://AzureADTokenExchange) under Certificates & secrets > Federated credentials",
        _ => return None,
    })
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
                assert!(
                    message.starts_with(
                        "AADSTS7000215: Invalid client secret provided. Fix: the client secret is wrong"
                    ),
                    "{message}"
                );
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

    #[tokio::test]
    async fn device_code_renews_with_the_refresh_token_without_asking_again() {
        let mut c = crate::emulator::EmulatorConfig::new(crate::emulator::Tenant::sample());
        c.device_code_interval = Duration::ZERO;
        let emu = crate::emulator::start(c, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let creds = Credentials::DeviceCode {
            tenant_id: emu.tenant_id(),
            client_id: super::super::config::GRAPH_CLI_CLIENT_ID.into(),
        };
        let cfg = GraphConfig::new(emu.base_url(), emu.base_url(), creds);
        let p = TokenProvider::new(&cfg, reqwest::Client::new()).unwrap();
        let first = p.token().await.unwrap();
        p.force_window_for_test(true);
        let second = p.token().await.unwrap();
        assert_ne!(first, second);
        let claims = super::super::jwt::claims(second.expose()).unwrap();
        assert!(claims["scp"].as_str().unwrap().contains("User.Invite.All"));
        let stats = emu.stats();
        let n = |k: &str| stats["requests"][k]["200"].as_u64().unwrap_or(0);
        assert_eq!(n("POST /{tenant}/oauth2/v2.0/devicecode"), 1, "asked once");
        assert_eq!(
            n("POST /{tenant}/oauth2/v2.0/token"),
            2,
            "sign-in, then refresh"
        );
        emu.shutdown().await;
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
        let expiring_in = |expires_in| {
            let token = TokenResponse {
                token_type: "Bearer".into(),
                expires_in,
                ext_expires_in: None,
                access_token: "a".into(),
            };
            cache_entry(token, at)
        };
        let c = expiring_in(3600);
        assert_eq!(c.renew_at, at + Duration::from_secs(3300));
        assert_eq!(c.expires_at, at + Duration::from_secs(3590));
        let c = expiring_in(600);
        assert_eq!(c.renew_at, at + Duration::from_secs(540));
        assert_eq!(c.expires_at, at + Duration::from_secs(590));
    }
}
