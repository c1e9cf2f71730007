//! Client settings: endpoints, credentials (from the environment, by the Azure SDK conventions)
//! and the rule that plain HTTP is only for loopback.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::GraphError;

/// Where Graph lives when nothing else is said.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// Where the token endpoint lives when nothing else is said.
pub const DEFAULT_LOGIN_URL: &str = "https://login.microsoftonline.com";
/// Resends of an idempotent request after a 5xx, a timeout or a reset (see `crate::config`).
pub const DEFAULT_HTTP_RETRIES: u32 = crate::config::DEFAULT_HTTP_RETRIES;
/// Per-request timeout when nothing else is said (see `crate::config`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = crate::config::DEFAULT_HTTP_TIMEOUT;
/// How long a request that cannot even connect is retried before Graph counts as unreachable.
pub const DEFAULT_NOT_SENT_RETRY_FOR: Duration = crate::config::DEFAULT_NOT_SENT_RETRY_FOR;

/// Everything the client needs to talk to one tenant.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// Graph's origin, e.g. `https://graph.microsoft.com` (a trailing `/v1.0` is tolerated).
    pub graph_url: String,
    /// The token endpoint's origin, e.g. `https://login.microsoftonline.com`.
    pub login_url: String,
    pub credentials: Credentials,
    /// Applies to one HTTP attempt, body included.
    pub request_timeout: Duration,
    /// Resends of an idempotent Graph request after a 5xx, a timeout or a reset (429s and
    /// connections that never opened do not count), and of a token request. Not the attempts
    /// per user (`--max-attempts`), which are the workers' business.
    pub http_retries: u32,
    /// How long a request that could not leave (connection refused, DNS, TLS) is retried.
    pub not_sent_retry_for: Duration,
}

impl GraphConfig {
    /// A configuration with the default timeout and attempts.
    pub fn new(
        graph_url: impl Into<String>,
        login_url: impl Into<String>,
        credentials: Credentials,
    ) -> GraphConfig {
        GraphConfig {
            graph_url: graph_url.into(),
            login_url: login_url.into(),
            credentials,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            http_retries: DEFAULT_HTTP_RETRIES,
            not_sent_retry_for: DEFAULT_NOT_SENT_RETRY_FOR,
        }
    }
}

/// How the client gets its bearer token.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A ready token (`B2B_ACCESS_TOKEN`); it cannot be renewed.
    Token(Secret),
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: Secret,
    },
    /// PEM file holding the certificate and its unencrypted private key (PKCS#8 or PKCS#1).
    Certificate {
        tenant_id: String,
        client_id: String,
        pem_path: PathBuf,
    },
}

impl Credentials {
    /// Reads the credentials from the process environment.
    pub fn from_env() -> Result<Credentials, GraphError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `from_env` over any lookup, so the rules are testable without touching the environment.
    /// Empty values count as absent.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Credentials, GraphError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(token) = get("B2B_ACCESS_TOKEN") {
            return Ok(Credentials::Token(Secret::new(token.trim())));
        }
        let missing = |name: &str| {
            GraphError::Config(format!(
                "{name} is not set: set B2B_ACCESS_TOKEN, or AZURE_TENANT_ID, AZURE_CLIENT_ID and \
                 AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH"
            ))
        };
        let tenant_id = get("AZURE_TENANT_ID").ok_or_else(|| missing("AZURE_TENANT_ID"))?;
        let client_id = get("AZURE_CLIENT_ID").ok_or_else(|| missing("AZURE_CLIENT_ID"))?;
        if let Some(secret) = get("AZURE_CLIENT_SECRET") {
            return Ok(Credentials::ClientSecret {
                tenant_id,
                client_id,
                secret: Secret::new(secret),
            });
        }
        if let Some(path) = get("AZURE_CLIENT_CERTIFICATE_PATH") {
            return Ok(Credentials::Certificate {
                tenant_id,
                client_id,
                pem_path: PathBuf::from(path),
            });
        }
        Err(GraphError::Config(
            "neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set: set one of \
             them (or B2B_ACCESS_TOKEN)"
                .into(),
        ))
    }

    /// The tenant, when the credentials name one (a bare token does not).
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Credentials::Token(_) => None,
            Credentials::ClientSecret { tenant_id, .. }
            | Credentials::Certificate { tenant_id, .. } => Some(tenant_id),
        }
    }
}

/// A credential that must never reach a log, a report or the database.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Accepts `https` anywhere and plain `http` only on loopback, so a token never crosses a
/// network in clear text.
pub fn check_endpoint(url: &str) -> Result<url::Url, GraphError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| GraphError::Config(format!("invalid URL {url:?}: {e}")))?;
    let host = parsed
        .host()
        .ok_or_else(|| GraphError::Config(format!("URL {url:?} has no host")))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&host) => Ok(parsed),
        "http" => Err(GraphError::Config(format!(
            "plain http is only allowed for loopback addresses, not {url:?}: use https"
        ))),
        other => Err(GraphError::Config(format!(
            "unsupported scheme {other:?} in {url:?}: use https"
        ))),
    }
}

pub(crate) fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn endpoint_check_allows_https_and_loopback_http_only() {
        assert!(check_endpoint("https://graph.microsoft.com").is_ok());
        assert!(check_endpoint("https://example.org:8443/x").is_ok());
        assert!(check_endpoint("http://127.0.0.1:8080").is_ok());
        assert!(check_endpoint("http://127.8.9.10").is_ok());
        assert!(check_endpoint("http://[::1]:3000").is_ok());
        assert!(check_endpoint("http://localhost:3000").is_ok());
        assert!(check_endpoint("http://LOCALHOST").is_ok());
        for bad in [
            "http://graph.microsoft.com",
            "http://10.0.0.1",
            "http://[::2]",
            "http://localhost.evil.com",
            "ftp://127.0.0.1",
            "not a url",
        ] {
            assert!(
                matches!(check_endpoint(bad), Err(GraphError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn secret_is_never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        let creds = Credentials::ClientSecret {
            tenant_id: "t".into(),
            client_id: "c".into(),
            secret: s.clone(),
        };
        assert!(!format!("{creds:?}").contains("hunter2"));
        let cfg = GraphConfig::new("https://g", "https://l", Credentials::Token(s.clone()));
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn credentials_from_env_rules() {
        let c = Credentials::from_lookup(lookup(&[
            ("B2B_ACCESS_TOKEN", "tok"),
            ("AZURE_TENANT_ID", "t"),
        ]))
        .unwrap();
        assert!(matches!(c, Credentials::Token(ref s) if s.expose() == "tok"));
        assert_eq!(c.tenant_id(), None);

        let c = Credentials::from_lookup(lookup(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/x.pem"),
        ]))
        .unwrap();
        assert!(matches!(c, Credentials::ClientSecret { .. }));
        assert_eq!(c.tenant_id(), Some("t"));

        let c = Credentials::from_lookup(lookup(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/x.pem"),
        ]))
        .unwrap();
        assert!(
            matches!(c, Credentials::Certificate { ref pem_path, .. } if pem_path == &PathBuf::from("/x.pem"))
        );

        let err = Credentials::from_lookup(lookup(&[("AZURE_CLIENT_ID", "c")])).unwrap_err();
        assert!(err.to_string().contains("AZURE_TENANT_ID"), "{err}");
        let err = Credentials::from_lookup(lookup(&[("AZURE_TENANT_ID", "t")])).unwrap_err();
        assert!(err.to_string().contains("AZURE_CLIENT_ID"), "{err}");
        let err = Credentials::from_lookup(lookup(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", ""),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("AZURE_CLIENT_SECRET"), "{err}");
    }
}
