//! The sign-ins that are not a client-credentials form post: the device-code flow (a person),
//! Azure CLI (`az account get-access-token`) and managed identity (App Service / Automation
//! shape, or the instance metadata endpoint). Each returns a token and its lifetime; the
//! renewal policy stays in `auth`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::config::{ManagedIdentityEndpoint, Secret};
use super::error::GraphError;

/// `az` gets a token from its own cache or the token endpoint; a minute is generous.
const AZ_TIMEOUT: Duration = Duration::from_secs(60);
/// Managed-identity endpoints answer locally; this bounds a hung one.
const MI_TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 8628: after `slow_down`, poll this much less often.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
pub(super) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A token with its lifetime in seconds from now.
pub(super) struct Obtained {
    pub token: String,
    pub expires_in: u64,
    pub refresh_token: Option<String>,
}

/// What to do after one device-code poll was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Poll {
    /// Poll again after this long.
    Again(Duration),
    /// Stop: the sign-in cannot succeed any more.
    GiveUp(&'static str),
    /// Not a device-flow answer: the token endpoint's ordinary refusal.
    Refused,
}

/// The device flow's answers (RFC 8628 §3.5), as a decision on the next poll.
pub(super) fn after_poll(error: &str, interval: Duration) -> (Poll, Duration) {
    match error {
        "authorization_pending" => (Poll::Again(interval), interval),
        "slow_down" => {
            let slower = interval + SLOW_DOWN_STEP;
            (Poll::Again(slower), slower)
        }
        "expired_token" | "code_expired" => (
            Poll::GiveUp("the code expired before anyone signed in: run the command again and sign in within the time shown"),
            interval,
        ),
        "authorization_declined" | "access_denied" => (
            Poll::GiveUp("the sign-in was declined in the browser"),
            interval,
        ),
        _ => (Poll::Refused, interval),
    }
}

#[derive(Deserialize)]
pub(super) struct DeviceCodeAnswer {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub expires_in: u64,
    pub interval: Option<u64>,
    pub message: Option<String>,
}

impl DeviceCodeAnswer {
    /// The line a person reads: where to go and which code to type.
    pub fn instructions(&self) -> String {
        self.message.clone().unwrap_or_else(|| {
            format!(
                "To sign in, use a web browser to open the page {} and enter the code {} to authenticate.",
                self.verification_uri, self.user_code
            )
        })
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval.unwrap_or(5))
    }
}

/// A number or a string holding one (managed-identity answers use both).
fn number(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Seconds from now until `expires_on` (unix seconds), at least one.
fn until(expires_on: i64) -> u64 {
    (expires_on - chrono::Utc::now().timestamp()).max(1) as u64
}

/// `az account get-access-token --resource …`, time-boxed; `az`'s own error is shown as is.
pub(super) async fn azure_cli(
    program: &Path,
    tenant_id: Option<&str>,
    resource: &str,
) -> Result<Obtained, GraphError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args([
        "account",
        "get-access-token",
        "--resource",
        resource,
        "--output",
        "json",
    ]);
    if let Some(t) = tenant_id {
        cmd.args(["--tenant", t]);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        GraphError::Config(format!(
            "cannot start the Azure CLI ({}): {e}; install it and run `az login`, or choose another --auth",
            program.display()
        ))
    })?;
    let out = tokio::time::timeout(AZ_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| GraphError::Auth {
            code: "azure_cli".into(),
            message: format!(
                "`az account get-access-token` gave no answer within {} s",
                AZ_TIMEOUT.as_secs()
            ),
        })?
        .map_err(|e| GraphError::Config(format!("running the Azure CLI: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(3)
            .collect();
        return Err(GraphError::Auth {
            code: "azure_cli".into(),
            message: format!(
                "`az account get-access-token` failed ({}): {}",
                out.status,
                text.join(" ")
            ),
        });
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| GraphError::Auth {
        code: "azure_cli".into(),
        message: format!("unreadable answer of `az account get-access-token`: {e}"),
    })?;
    let token = v
        .get("accessToken")
        .and_then(Value::as_str)
        .ok_or_else(|| GraphError::Auth {
            code: "azure_cli".into(),
            message: "`az account get-access-token` answered without accessToken".into(),
        })?;
    // `expires_on` (unix seconds) since Azure CLI 2.54; older versions: assume five minutes.
    let expires_in = number(v.get("expires_on")).map(until).unwrap_or(300);
    Ok(Obtained {
        token: token.to_string(),
        expires_in,
        refresh_token: None,
    })
}

/// A managed identity's token for `resource`.
pub(super) async fn managed_identity(
    http: &reqwest::Client,
    endpoint: &ManagedIdentityEndpoint,
    client_id: Option<&str>,
    resource: &str,
) -> Result<Obtained, GraphError> {
    let (url, request) = match endpoint {
        ManagedIdentityEndpoint::AppService { url, header } => {
            let mut query = vec![("resource", resource), ("api-version", "2019-08-01")];
            if let Some(c) = client_id {
                query.push(("client_id", c));
            }
            (
                url.clone(),
                http.get(url)
                    .query(&query)
                    .header("X-IDENTITY-HEADER", Secret::expose(header)),
            )
        }
        ManagedIdentityEndpoint::InstanceMetadata { base_url } => {
            let url = format!(
                "{}/metadata/identity/oauth2/token",
                base_url.trim_end_matches('/')
            );
            let mut query = vec![("resource", resource), ("api-version", "2018-02-01")];
            if let Some(c) = client_id {
                query.push(("client_id", c));
            }
            (
                url.clone(),
                http.get(&url).query(&query).header("Metadata", "true"),
            )
        }
    };
    let failed = |message: String| GraphError::Auth {
        code: "managed_identity".into(),
        message,
    };
    let resp = request
        .timeout(MI_TIMEOUT)
        .send()
        .await
        .map_err(|e| failed(format!("no managed identity answered at {url}: {e}")))?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        return Err(failed(format!(
            "the managed identity endpoint {url} answered {status}: {text}"
        )));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| failed(format!("unreadable managed identity answer: {e}")))?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| failed("the managed identity answered without access_token".into()))?;
    let expires_in = number(v.get("expires_in"))
        .map(|s| s.max(1) as u64)
        .or_else(|| number(v.get("expires_on")).map(until))
        .unwrap_or(300);
    Ok(Obtained {
        token: token.to_string(),
        expires_in,
        refresh_token: None,
    })
}

impl super::GraphClient {
    /// The claims of the access token in use (not verified: the token is Graph's to check);
    /// `Null` for a token that is not a JWT.
    pub async fn token_claims(&self) -> Result<Value, GraphError> {
        let token = self.inner.tokens.token().await?;
        Ok(super::jwt::claims(token.expose()).unwrap_or(Value::Null))
    }

    /// `GET /v1.0/policies/authorizationPolicy` (needs Policy.Read.All).
    pub async fn authorization_policy(&self) -> Result<Value, GraphError> {
        let url = self.api_url(&["policies", "authorizationPolicy"], &[]);
        self.get_json(url, false).await
    }

    /// The email one-time passcode method's configuration
    /// (`GET /v1.0/policies/authenticationMethodsPolicy/authenticationMethodConfigurations/email`,
    /// needs Policy.Read.All): how partners without an account of their own redeem.
    pub async fn email_otp_policy(&self) -> Result<Value, GraphError> {
        let url = self.api_url(
            &[
                "policies",
                "authenticationMethodsPolicy",
                "authenticationMethodConfigurations",
                "email",
            ],
            &[],
        );
        self.get_json(url, false).await
    }

    /// Lowercase user id → the directory roles (display names) the user holds, from the
    /// activated roles and their members (`GET /v1.0/directoryRoles?$expand=members`, one
    /// request; needs RoleManagement.Read.Directory or Directory.Read.All): who needs
    /// Privileged Authentication Administrator for a password reset, known before any write.
    pub async fn directory_role_holders(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<String>>, GraphError> {
        let url = self.api_url(&["directoryRoles"], &[("$expand", "members")]);
        let roles: Vec<Value> = self.get_all(url, false).await?;
        let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
        for role in &roles {
            let name = role["displayName"].as_str().unwrap_or("a directory role");
            for member in role["members"].as_array().into_iter().flatten() {
                if let Some(id) = member["id"].as_str() {
                    out.entry(id.to_lowercase())
                        .or_default()
                        .push(name.to_string());
                }
            }
        }
        Ok(out)
    }

    /// The default cross-tenant access policy (`GET /v1.0/policies/crossTenantAccessPolicy/default`,
    /// needs Policy.Read.All): whether inbound B2B collaboration lets partners in at all.
    pub async fn cross_tenant_default_policy(&self) -> Result<Value, GraphError> {
        let url = self.api_url(&["policies", "crossTenantAccessPolicy", "default"], &[]);
        self.get_json(url, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_flow_answers_decide_the_next_poll() {
        let five = Duration::from_secs(5);
        assert_eq!(
            after_poll("authorization_pending", five),
            (Poll::Again(five), five)
        );
        let ten = Duration::from_secs(10);
        assert_eq!(after_poll("slow_down", five), (Poll::Again(ten), ten));
        assert!(matches!(
            after_poll("expired_token", five).0,
            Poll::GiveUp(m) if m.contains("expired")
        ));
        assert!(matches!(
            after_poll("authorization_declined", five).0,
            Poll::GiveUp(_)
        ));
        assert_eq!(after_poll("invalid_client", five).0, Poll::Refused);
    }

    #[test]
    fn lifetimes_from_numbers_or_strings() {
        assert_eq!(number(Some(&Value::String("3599".into()))), Some(3599));
        assert_eq!(number(Some(&serde_json::json!(12))), Some(12));
        assert_eq!(number(None), None);
        let soon = chrono::Utc::now().timestamp() + 100;
        let left = until(soon);
        assert!((98..=100).contains(&left), "{left}");
        assert_eq!(until(0), 1);
    }
}
