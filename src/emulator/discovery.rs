//! The discovery documents MSAL (azure-identity, msal-node, MSAL Python) reads before it signs in:
//! OpenID configuration (`/{tenant}/v2.0/.well-known/openid-configuration` and the v1
//! `/{tenant}/.well-known/openid-configuration`) and instance discovery
//! (`/common/discovery/instance`). Every endpoint in them is built on the origin the client
//! called, so a client that discovers through `https://localhost:PORT` keeps talking to it.
//! Entra names the tenant by its id in these documents whatever the client called it by.

use serde_json::{json, Value};

use super::auth::{check_tenant, Refusal};
use super::routes::{Reply, State};

/// The tenant segments that stand for "any tenant": their documents carry `{tenantid}`.
const MULTI_TENANT: &[&str] = &["common", "organizations", "consumers"];

/// OpenID configuration for `segment` (v2.0 or v1), or Entra's refusal of an unknown tenant.
pub fn openid_configuration(
    st: &State,
    origin: &str,
    segment: &str,
    v2: bool,
    date: &str,
) -> Reply {
    let tenant = if MULTI_TENANT.iter().any(|m| m.eq_ignore_ascii_case(segment)) {
        "{tenantid}".to_string()
    } else {
        if let Err(r) = check_tenant(&st.tenant, segment) {
            return refusal(&r, date);
        }
        st.tenant.tenant_id.clone()
    };
    // A multi-tenant document's endpoints keep the segment called; the issuer is the template.
    let path = if tenant == "{tenantid}" {
        segment.to_ascii_lowercase()
    } else {
        tenant.clone()
    };
    let base = format!("{origin}/{path}");
    // What the v1 and v2 documents say alike, then each version's own keys.
    let mut body = json!({
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "kerberos_endpoint": format!("{base}/kerberos"),
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    });
    let own = if v2 {
        json!({
            "token_endpoint": format!("{base}/oauth2/v2.0/token"),
            "jwks_uri": format!("{base}/discovery/v2.0/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("{origin}/{tenant}/v2.0"),
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
            "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        })
    } else {
        json!({
            "token_endpoint": format!("{base}/oauth2/token"),
            "jwks_uri": format!("{origin}/common/discovery/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": format!("https://sts.windows.net/{tenant}/"),
            "microsoft_multi_refresh_token": true,
            "authorization_endpoint": format!("{base}/oauth2/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/devicecode"),
            "end_session_endpoint": format!("{base}/oauth2/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email", "given_name", "family_name", "nickname"],
            "check_session_iframe": format!("{base}/oauth2/checksession"),
            "userinfo_endpoint": format!("{base}/openid/userinfo"),
        })
    };
    if let (Some(body), Value::Object(own)) = (body.as_object_mut(), own) {
        body.extend(own);
    }
    Reply::json(200, body)
}

/// `GET /common/discovery/instance?api-version=1.1&authorization_endpoint=…`: the emulator is
/// an instance of its own, known by the host called and nothing else, so an authority on
/// another host is refused `invalid_instance` as Entra refuses hosts it does not know.
pub fn instance_discovery(origin: &str, authorization_endpoint: Option<&str>, date: &str) -> Reply {
    let (scheme, host) = origin.split_once("://").unwrap_or(("https", origin));
    let Some(endpoint) = authorization_endpoint.filter(|e| !e.is_empty()) else {
        return refusal(
            &Refusal::new(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'authorization_endpoint'.",
            ),
            date,
        );
    };
    let parsed = url::Url::parse(endpoint).ok();
    let same_host = parsed.as_ref().is_some_and(|u| {
        let called = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or("")),
            None => u.host_str().unwrap_or("").to_string(),
        };
        u.scheme() == scheme && called.eq_ignore_ascii_case(host)
    });
    let tenant = parsed
        .as_ref()
        .and_then(|u| u.path_segments()?.next().map(str::to_string))
        .filter(|t| !t.is_empty());
    let (true, Some(tenant)) = (same_host, tenant) else {
        return refusal(
            &Refusal::new(
                400,
                "invalid_instance",
                50049,
                "Unknown or invalid instance.",
            ),
            date,
        );
    };
    Reply::json(
        200,
        json!({
            "tenant_discovery_endpoint": format!("{origin}/{tenant}/v2.0/.well-known/openid-configuration"),
            "api-version": "1.1",
            "metadata": [{
                "preferred_network": host,
                "preferred_cache": host,
                "aliases": [host],
            }],
        }),
    )
}

fn refusal(r: &Refusal, date: &str) -> Reply {
    Reply::json(
        r.status,
        serde_json::to_value(r.body(date)).unwrap_or(Value::Null),
    )
}
