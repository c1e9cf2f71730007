//! The token endpoint's decision: which app a client-credentials request authenticates, by client
//! secret or by a certificate-signed JWT assertion (verified for real with the registered public
//! key), and the AADSTS-style refusals of the real service.
//!
//! A thumbprint is accepted as SHA-1 (`x5t`, what MSAL sends) or SHA-256 (`x5t#S256`); the scope
//! as `https://graph.microsoft.com/.default` or `00000003-0000-0000-c000-000000000000/.default`.
//!
//! Refusals used: AADSTS90002 (unknown tenant, 400), AADSTS700016 (unknown app, 400),
//! AADSTS7000215 (wrong secret, 401), AADSTS7000216 (no credential, 400), AADSTS700027 (assertion
//! signature, thumbprint, audience or issuer invalid, 401), AADSTS700024 (assertion outside its
//! validity window, 401), AADSTS70011 (scope, 400), AADSTS70003 (grant type, 400).

use std::collections::HashMap;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::tenant::{App, Tenant};
use crate::model::TokenError;

pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// The same scope named by Microsoft Graph's application id, as some SDKs spell it.
pub const GRAPH_SCOPE_BY_APP_ID: &str = "00000003-0000-0000-c000-000000000000/.default";

/// Whether `scope` names Graph's `.default` scope in either spelling Entra accepts.
pub fn is_graph_default(scope: &str) -> bool {
    let scope = scope.trim();
    scope.eq_ignore_ascii_case(GRAPH_SCOPE) || scope.eq_ignore_ascii_case(GRAPH_SCOPE_BY_APP_ID)
}
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest assertion lifetime accepted (`exp - nbf`).
const MAX_ASSERTION_LIFETIME_S: i64 = 600;
/// Clock skew tolerated on `nbf`.
const SKEW_S: i64 = 300;

/// A refusal: HTTP status, OAuth `error`, AADSTS number, description.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub error: &'static str,
    pub code: u64,
    pub description: String,
}

impl Refusal {
    pub(super) fn new(
        status: u16,
        error: &'static str,
        code: u64,
        description: impl Into<String>,
    ) -> Self {
        Refusal {
            status,
            error,
            code,
            description: description.into(),
        }
    }

    /// The answer body, with fresh trace and correlation ids.
    pub fn body(&self, timestamp: &str) -> TokenError {
        let trace = uuid::Uuid::new_v4().to_string();
        let correlation = uuid::Uuid::new_v4().to_string();
        TokenError {
            error: self.error.into(),
            error_description: format!(
                "AADSTS{}: {} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {timestamp}",
                self.code, self.description
            ),
            error_codes: vec![self.code],
            trace_id: Some(trace),
            correlation_id: Some(correlation),
            timestamp: Some(timestamp.into()),
        }
    }
}

/// What the token endpoint needs to know about the request.
pub struct TokenRequest<'a> {
    /// The `{tenant}` path segment (id or a verified domain name).
    pub tenant_segment: &'a str,
    pub form: &'a HashMap<String, String>,
    /// Acceptable `aud` values of an assertion (the token URL as the client may spell it).
    pub audiences: Vec<String>,
    /// Unix seconds by the emulator's clock.
    pub unix_now: i64,
}

/// AADSTS90002 unless `segment` is the tenant's id or one of its verified domains.
pub fn check_tenant(tenant: &Tenant, segment: &str) -> Result<(), Refusal> {
    let seg = segment.to_lowercase();
    let known_tenant = seg == tenant.tenant_id.to_lowercase()
        || tenant
            .domains
            .iter()
            .any(|d| d.is_verified && d.id.to_lowercase() == seg);
    if known_tenant {
        return Ok(());
    }
    Err(Refusal::new(
        400,
        "invalid_request",
        90002,
        format!("Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
    ))
}

/// Authenticate a client-credentials request; on success the app's client id.
pub fn authenticate(tenant: &Tenant, req: &TokenRequest<'_>) -> Result<String, Refusal> {
    check_tenant(tenant, req.tenant_segment)?;
    let field = |k: &str| req.form.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "client_credentials" {
        return Err(Refusal::new(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        ));
    }
    let client_id = field("client_id");
    let app = tenant
        .apps
        .iter()
        .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
        .ok_or_else(|| {
            Refusal::new(
                400,
                "unauthorized_client",
                700016,
                format!("Application with identifier '{client_id}' was not found in the directory '{}'.", tenant.display_name),
            )
        })?;
    if !is_graph_default(field("scope")) {
        return Err(Refusal::new(
            400,
            "invalid_scope",
            70011,
            format!("The provided value for the input parameter 'scope' is not valid. The scope {} is not valid.", field("scope")),
        ));
    }
    if let Some(secret) = req.form.get("client_secret") {
        return match &app.client_secret {
            Some(s) if s == secret => match &app.secret_expires {
                Some(at) if past(at, req.unix_now) => Err(Refusal::new(
                    401,
                    "invalid_client",
                    7000222,
                    format!("The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret", app.client_id),
                )),
                _ => Ok(app.client_id.clone()),
            },
            _ => Err(Refusal::new(
                401,
                "invalid_client",
                7000215,
                format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.", app.client_id),
            )),
        };
    }
    if let Some(assertion) = req.form.get("client_assertion") {
        if field("client_assertion_type") != JWT_BEARER {
            return Err(Refusal::new(
                400,
                "invalid_request",
                50027,
                "Invalid client_assertion_type.",
            ));
        }
        let federated = jsonwebtoken::decode_header(assertion)
            .is_ok_and(|h| h.x5t_s256.is_none() && h.x5t.is_none());
        if federated && !app.federated_credentials.is_empty() {
            verify_federated(app, assertion, req)?;
        } else {
            verify_assertion(app, assertion, req)?;
        }
        return Ok(app.client_id.clone());
    }
    Err(Refusal::new(
        400,
        "invalid_client",
        7000216,
        "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
    ))
}

fn bad_assertion(description: impl Into<String>) -> Refusal {
    Refusal::new(401, "invalid_client", 700027, description)
}

fn verify_assertion(app: &App, jwt: &str, req: &TokenRequest<'_>) -> Result<(), Refusal> {
    let not_a_jwt = || bad_assertion("Client assertion is not a valid JWT.");
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| not_a_jwt())?;
    // MSAL signs with the SHA-1 `x5t` (sometimes `x5t#S256` as well): either identifies the
    // certificate, the SHA-256 one first when both are sent.
    let same = |a: &str, b: &str| a.trim_end_matches('=') == b.trim_end_matches('=');
    let (thumb, cert) = match (header.x5t_s256.as_deref(), header.x5t.as_deref()) {
        (Some(t), _) => (
            t,
            app.certificates
                .iter()
                .find(|c| same(&c.thumbprint_sha256, t)),
        ),
        (None, Some(t)) => (
            t,
            app.certificates
                .iter()
                .find(|c| c.thumbprint_sha1.as_deref().is_some_and(|s| same(s, t))),
        ),
        (None, None) => {
            return Err(bad_assertion(
                "Client assertion has no x5t or x5t#S256 thumbprint of its certificate.",
            ))
        }
    };
    let cert = cert
        .ok_or_else(|| {
            bad_assertion(format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumb}']"
            ))
        })?;
    if let Some(expired) = &cert.expires {
        if past(expired, req.unix_now) {
            return Err(Refusal::new(
                401,
                "invalid_client",
                1000502,
                format!("The provided client certificate has expired ({expired}). Upload a new certificate to the application."),
            ));
        }
    }
    let alg = header.alg;
    if !matches!(alg, Algorithm::RS256 | Algorithm::PS256) {
        return Err(bad_assertion(format!(
            "Client assertion algorithm {alg:?} is not supported; use RS256 or PS256."
        )));
    }
    let key = DecodingKey::from_rsa_pem(cert.public_key_pem.as_bytes())
        .map_err(|_| bad_assertion("The registered certificate key cannot be read."))?;
    // Time and audience are checked below, with Entra's own codes and words.
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = match jsonwebtoken::decode::<Value>(jwt, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
            return Err(bad_assertion(
                "Client assertion failed signature validation.",
            ))
        }
        Err(_) => return Err(not_a_jwt()),
    };
    let claim = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or("");
    let aud = claim("aud");
    if !req.audiences.iter().any(|a| a.eq_ignore_ascii_case(aud)) {
        return Err(bad_assertion(format!(
            "Client assertion audience claim does not match Realm issuer. Expected one of {:?}, found '{aud}'.",
            req.audiences
        )));
    }
    if !claim("iss").eq_ignore_ascii_case(&app.client_id)
        || !claim("sub").eq_ignore_ascii_case(&app.client_id)
    {
        return Err(Refusal::new(
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    if claim("jti").is_empty() {
        return Err(bad_assertion("Client assertion has no jti claim."));
    }
    // MSAL Python writes `iat` and `exp` as fractional seconds and no `nbf`; Entra accepts its
    // assertions, so the window starts at `nbf`, else at `iat`.
    let num = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_f64)
            .map(|f| f.floor() as i64)
    };
    let (Some(start), Some(exp)) = (num("nbf").or(num("iat")), num("exp")) else {
        return Err(Refusal::new(
            401,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range (exp and nbf or iat are required).",
        ));
    };
    if exp <= req.unix_now
        || start > req.unix_now + SKEW_S
        || exp - start > MAX_ASSERTION_LIFETIME_S
    {
        return Err(Refusal::new(
            401,
            "invalid_client",
            700024,
            format!("Client assertion is not within its valid time range. Current time: {}, assertion valid from {start} to {exp} (at most {MAX_ASSERTION_LIFETIME_S} s).", req.unix_now),
        ));
    }
    Ok(())
}

/// True when the RFC 3339 instant `at` is at or before `unix_now`.
fn past(at: &str, unix_now: i64) -> bool {
    chrono::DateTime::parse_from_rfc3339(at).is_ok_and(|t| t.timestamp() <= unix_now)
}

/// Audience of the external tokens Entra accepts for workload identity federation.
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

/// A workload identity's external token: issuer and subject must match a federated credential of
/// the app, the audience must be Entra's exchange audience, and it must be within its lifetime.
/// The emulator cannot fetch the issuer's signing keys, so the signature is not checked.
fn verify_federated(app: &App, jwt: &str, req: &TokenRequest<'_>) -> Result<(), Refusal> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_secret(&[]), &validation)
        .map(|d| d.claims)
        .map_err(|_| bad_assertion("Client assertion is not a valid JWT."))?;
    let claim = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (iss, sub) = (claim("iss"), claim("sub"));
    if !app
        .federated_credentials
        .iter()
        .any(|f| f.issuer == iss && f.subject == sub)
    {
        return Err(Refusal::new(
            400,
            "invalid_request",
            70021,
            format!("No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'."),
        ));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == FEDERATION_AUDIENCE,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(FEDERATION_AUDIENCE)),
        _ => false,
    };
    if !aud_ok {
        return Err(Refusal::new(
            400,
            "invalid_request",
            700212,
            format!("No matching federated identity record found for presented assertion audience. The audience must be '{FEDERATION_AUDIENCE}'."),
        ));
    }
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > req.unix_now => Ok(()),
        _ => Err(Refusal::new(
            400,
            "invalid_request",
            700024,
            "Client assertion is not within its valid time range.",
        )),
    }
}
