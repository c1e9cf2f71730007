//! Client settings: endpoints, credentials (from the environment, by the Azure SDK conventions)
//! and the rule that plain HTTP is only for loopback.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
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
    /// A PEM file of certificate authorities trusted on top of the built-in roots
    /// (`SSL_CERT_FILE`, see [`ca_file_from_env`]): a TLS-inspecting proxy's CA, or the CA
    /// `emulator --tls` generated.
    pub ca_file: Option<PathBuf>,
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
            ca_file: None,
        }
    }
}

/// The environment variable naming extra trusted certificate authorities: the OpenSSL name the
/// emulator prints and Python's and Node's HTTP stacks read, so one line serves every client.
pub const CA_FILE_ENV: &str = "SSL_CERT_FILE";

/// `SSL_CERT_FILE`, when set and not empty.
pub fn ca_file_from_env() -> Option<PathBuf> {
    std::env::var_os(CA_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Microsoft Graph Command Line Tools: the public client the device-code sign-in uses when
/// `AZURE_CLIENT_ID` names none (it exists in every tenant, as for `Connect-MgGraph`).
pub const GRAPH_CLI_CLIENT_ID: &str = "14d82eec-204b-4c2f-b7e8-296a70dab67e";
/// The instance metadata endpoint of Azure virtual machines (link-local, never leaves the host).
pub const DEFAULT_IMDS_URL: &str = "http://169.254.169.254";

/// `--auth`: how to sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMethod {
    /// App registration with AZURE_CLIENT_SECRET.
    Secret,
    /// App registration with AZURE_CLIENT_CERTIFICATE_PATH (PEM with its key).
    Certificate,
    /// A person signs in in a browser (delegated: custom messages are delivered).
    DeviceCode,
    /// The account `az login` signed in.
    AzureCli,
    /// The managed identity of App Service, Automation or a virtual machine.
    ManagedIdentity,
    /// A federated token in AZURE_FEDERATED_TOKEN_FILE (Kubernetes, GitHub Actions).
    WorkloadIdentity,
    /// A ready bearer token in B2B_ACCESS_TOKEN.
    Token,
}

/// Where a managed identity gets its token.
#[derive(Debug, Clone)]
pub enum ManagedIdentityEndpoint {
    /// App Service and Automation: `IDENTITY_ENDPOINT` with the `IDENTITY_HEADER` secret.
    AppService { url: String, header: Secret },
    /// Virtual machines: the instance metadata endpoint (or `B2B_IMDS_URL`).
    InstanceMetadata { base_url: String },
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
    /// A person signs in with a device code; renewed with the refresh token held in memory.
    DeviceCode {
        tenant_id: String,
        client_id: String,
    },
    /// `az account get-access-token`; `program` is `az` unless `B2B_AZ_PATH` says otherwise.
    AzureCli {
        tenant_id: Option<String>,
        program: PathBuf,
    },
    ManagedIdentity {
        endpoint: ManagedIdentityEndpoint,
        /// A user-assigned identity's client id (`AZURE_CLIENT_ID`); `None`: system-assigned.
        client_id: Option<String>,
    },
    /// Workload identity federation: the file's token is the client assertion (re-read at each
    /// renewal, since the platform rotates it).
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
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
                 AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH, or choose another sign-in \
                 with --auth (device-code, azure-cli, managed-identity, workload-identity)"
            ))
        };
        let tenant_id = get("AZURE_TENANT_ID").ok_or_else(|| missing("AZURE_TENANT_ID"))?;
        let client_id = get("AZURE_CLIENT_ID").ok_or_else(|| missing("AZURE_CLIENT_ID"))?;
        let Some((key, value)) = [AppKey::Secret, AppKey::Certificate]
            .into_iter()
            .find_map(|key| Some((key, get(key.variable())?)))
        else {
            return Err(GraphError::Config(
                "neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set: set one of \
                 them (or B2B_ACCESS_TOKEN)"
                    .into(),
            ));
        };
        Ok(key.credentials(tenant_id, client_id, value))
    }

    /// The tenant, when the credentials name one (a bare token does not).
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Credentials::Token(_) | Credentials::ManagedIdentity { .. } => None,
            Credentials::AzureCli { tenant_id, .. } => tenant_id.as_deref(),
            Credentials::ClientSecret { tenant_id, .. }
            | Credentials::Certificate { tenant_id, .. }
            | Credentials::DeviceCode { tenant_id, .. }
            | Credentials::WorkloadIdentity { tenant_id, .. } => Some(tenant_id),
        }
    }

    /// Credentials for `--auth`, or without it the first configured one in the Azure SDK's
    /// order: environment (token, secret, certificate), workload identity, managed identity via
    /// `IDENTITY_ENDPOINT`, Azure CLI when `az` is installed. The automatic chain never probes
    /// the network: the instance metadata endpoint needs an explicit `--auth managed-identity`.
    pub fn resolve(method: Option<AuthMethod>) -> Result<Credentials, GraphError> {
        Self::resolve_with(method, |name| std::env::var(name).ok())
    }

    /// `resolve` over any lookup, so the rules are testable without touching the environment.
    pub fn resolve_with(
        method: Option<AuthMethod>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, GraphError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let need = |name: &str, why: &str| {
            get(name).ok_or_else(|| GraphError::Config(format!("{name} is not set: {why}")))
        };
        let tenant = || need("AZURE_TENANT_ID", "the tenant to sign in to (id or domain)");
        let app = || {
            need(
                "AZURE_CLIENT_ID",
                "the app registration's application (client) id",
            )
        };
        let app_key = |key: AppKey| -> Result<Credentials, GraphError> {
            let (tenant_id, client_id) = (tenant()?, app()?);
            let value = need(key.variable(), key.what())?;
            Ok(key.credentials(tenant_id, client_id, value))
        };
        let az = || Credentials::AzureCli {
            tenant_id: get("AZURE_TENANT_ID"),
            program: PathBuf::from(get("B2B_AZ_PATH").unwrap_or_else(|| "az".into())),
        };
        let workload = || -> Result<Credentials, GraphError> {
            Ok(Credentials::WorkloadIdentity {
                token_file: PathBuf::from(need(
                    "AZURE_FEDERATED_TOKEN_FILE",
                    "the file holding the federated token",
                )?),
                tenant_id: tenant()?,
                client_id: app()?,
            })
        };
        let app_service = || match (get("IDENTITY_ENDPOINT"), get("IDENTITY_HEADER")) {
            (Some(url), Some(header)) => Some(Credentials::ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::AppService {
                    url,
                    header: Secret::new(header),
                },
                client_id: get("AZURE_CLIENT_ID"),
            }),
            _ => None,
        };
        match method {
            Some(AuthMethod::Token) => Ok(Credentials::Token(Secret::new(
                need("B2B_ACCESS_TOKEN", "the bearer token to use")?.trim(),
            ))),
            Some(AuthMethod::Secret) => app_key(AppKey::Secret),
            Some(AuthMethod::Certificate) => app_key(AppKey::Certificate),
            Some(AuthMethod::DeviceCode) => Ok(Credentials::DeviceCode {
                tenant_id: get("AZURE_TENANT_ID").unwrap_or_else(|| "organizations".into()),
                client_id: get("AZURE_CLIENT_ID").unwrap_or_else(|| GRAPH_CLI_CLIENT_ID.into()),
            }),
            Some(AuthMethod::AzureCli) => Ok(az()),
            Some(AuthMethod::WorkloadIdentity) => workload(),
            Some(AuthMethod::ManagedIdentity) => {
                Ok(
                    app_service().unwrap_or_else(|| Credentials::ManagedIdentity {
                        endpoint: ManagedIdentityEndpoint::InstanceMetadata {
                            base_url: get("B2B_IMDS_URL")
                                .unwrap_or_else(|| DEFAULT_IMDS_URL.into()),
                        },
                        client_id: get("AZURE_CLIENT_ID"),
                    }),
                )
            }
            None => {
                let environment = get("B2B_ACCESS_TOKEN").is_some()
                    || get(AppKey::Secret.variable()).is_some()
                    || get(AppKey::Certificate.variable()).is_some();
                if !environment {
                    if get("AZURE_FEDERATED_TOKEN_FILE").is_some() {
                        return workload();
                    }
                    if let Some(mi) = app_service() {
                        return Ok(mi);
                    }
                    if let Some(program) = find_program(&get("B2B_AZ_PATH"), &get("PATH")) {
                        return Ok(Credentials::AzureCli {
                            tenant_id: get("AZURE_TENANT_ID"),
                            program,
                        });
                    }
                }
                Self::from_lookup(lookup)
            }
        }
    }
}

/// The app registration's own credential, named by one environment variable.
#[derive(Debug, Clone, Copy)]
enum AppKey {
    Secret,
    Certificate,
}

impl AppKey {
    /// The environment variable that holds it.
    fn variable(self) -> &'static str {
        match self {
            AppKey::Secret => "AZURE_CLIENT_SECRET",
            AppKey::Certificate => "AZURE_CLIENT_CERTIFICATE_PATH",
        }
    }

    /// What that variable holds, for the message when it is not set.
    fn what(self) -> &'static str {
        match self {
            AppKey::Secret => "the app's client secret value",
            AppKey::Certificate => "the PEM file with the certificate and its key",
        }
    }

    /// The credentials of the app `client_id` in `tenant_id` with this key's `value`.
    fn credentials(self, tenant_id: String, client_id: String, value: String) -> Credentials {
        match self {
            AppKey::Secret => Credentials::ClientSecret {
                tenant_id,
                client_id,
                secret: Secret::new(value),
            },
            AppKey::Certificate => Credentials::Certificate {
                tenant_id,
                client_id,
                pem_path: PathBuf::from(value),
            },
        }
    }
}

/// The Azure CLI program when it is installed: `B2B_AZ_PATH` if that file exists, else `az` on
/// `PATH`.
fn find_program(explicit: &Option<String>, path: &Option<String>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Path::new(p).is_file().then(|| PathBuf::from(p));
    }
    std::env::split_paths(path.as_deref()?)
        .map(|dir| dir.join("az"))
        .find(|p| p.is_file())
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
    fn sign_in_chain_follows_the_azure_sdk_order_without_probing() {
        let resolve = |m, pairs: &[(&str, &str)]| Credentials::resolve_with(m, lookup(pairs));
        let fed = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/f"),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ];
        assert!(matches!(
            resolve(None, &fed).unwrap(),
            Credentials::WorkloadIdentity { .. }
        ));
        let mut with_secret = fed.to_vec();
        with_secret.push(("AZURE_CLIENT_SECRET", "s"));
        assert!(matches!(
            resolve(None, &with_secret).unwrap(),
            Credentials::ClientSecret { .. }
        ));
        assert!(matches!(
            resolve(None, &fed[3..]).unwrap(),
            Credentials::ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::AppService { .. },
                ..
            }
        ));
        // No automatic instance-metadata probe: nothing configured is an error.
        assert!(resolve(None, &[]).is_err());
        match resolve(Some(AuthMethod::ManagedIdentity), &[]).unwrap() {
            Credentials::ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::InstanceMetadata { base_url },
                client_id: None,
            } => assert_eq!(base_url, DEFAULT_IMDS_URL),
            other => panic!("{other:?}"),
        }
        match resolve(Some(AuthMethod::DeviceCode), &[]).unwrap() {
            Credentials::DeviceCode { client_id, .. } => {
                assert_eq!(client_id, GRAPH_CLI_CLIENT_ID)
            }
            other => panic!("{other:?}"),
        }
        let err = resolve(Some(AuthMethod::Secret), &[("AZURE_TENANT_ID", "t")]).unwrap_err();
        assert!(err.to_string().contains("AZURE_CLIENT_ID"), "{err}");
        assert!(matches!(
            resolve(
                Some(AuthMethod::AzureCli),
                &[("B2B_AZ_PATH", "/opt/az"), ("AZURE_TENANT_ID", "t")]
            )
            .unwrap(),
            Credentials::AzureCli { ref program, tenant_id: Some(_) } if program == &PathBuf::from("/opt/az")
        ));
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
