//! What can go wrong talking to Graph, sorted by what the caller must do about it.

/// Diagnostics of one HTTP exchange: what Microsoft support asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    /// `None` when no answer arrived (timeout, dropped connection).
    pub status: Option<u16>,
    /// The GUID we sent in `client-request-id`.
    pub client_request_id: String,
    /// The `request-id` Graph answered with.
    pub request_id: Option<String>,
}

/// A value together with the diagnostics of the exchange that produced it.
#[derive(Debug, Clone)]
pub struct Traced<T> {
    pub value: T,
    pub meta: ResponseMeta,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Bad environment, URL or credentials file: fix the configuration (exit 1).
    #[error("configuration: {0}")]
    Config(String),
    /// The token endpoint refused the credentials (exit 1 at start).
    #[error("the token endpoint refused the sign-in: {}", auth_text(.code, .message))]
    Auth { code: String, message: String },
    /// The tenant refuses to go on (blocked invitations, revoked consent, repeated 401): the run
    /// must stop and stay resumable (exit 4).
    #[error("the tenant refused the request (HTTP {status} {code}): {message}")]
    TenantRefused {
        status: u16,
        code: String,
        message: String,
        meta: ResponseMeta,
    },
    /// A permanent refusal of this one request: the item ends failed with Graph's code and message.
    #[error("HTTP {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        meta: ResponseMeta,
    },
    /// The request could not have left the process (connection refused, DNS failure, TLS
    /// handshake failure, no connection from the pool, no token to send it with), or the client
    /// started no more requests because Graph and the token endpoint have answered nothing for
    /// the whole silence window (a read that timed out then is reported so too: it changes
    /// nothing). The client has already retried for its bounded stretch; the message names the
    /// URL.
    #[error("Graph could not be reached: {message}")]
    NotSent { message: String },
    /// A non-idempotent request may or may not have been carried out: re-read before resending.
    #[error("outcome unknown: {message}")]
    Unknown { message: String, meta: ResponseMeta },
    /// An idempotent request kept failing until the attempts ran out.
    #[error("gave up after repeated failures: {message}")]
    Exhausted { message: String, meta: ResponseMeta },
}

impl GraphError {
    /// Diagnostics of the last exchange, when there was one.
    pub fn meta(&self) -> Option<&ResponseMeta> {
        match self {
            GraphError::Config(_) | GraphError::Auth { .. } | GraphError::NotSent { .. } => None,
            GraphError::TenantRefused { meta, .. }
            | GraphError::Api { meta, .. }
            | GraphError::Unknown { meta, .. }
            | GraphError::Exhausted { meta, .. } => Some(meta),
        }
    }

    /// Graph's (or the token endpoint's) error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            GraphError::Auth { code, .. }
            | GraphError::TenantRefused { code, .. }
            | GraphError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the whole run must stop (exit 4).
    pub fn is_tenant_refusal(&self) -> bool {
        matches!(self, GraphError::TenantRefused { .. })
    }
}

/// `code: message`, without repeating an AADSTS code the message already starts with.
fn auth_text(code: &str, message: &str) -> String {
    if message.starts_with(code) {
        message.to_string()
    } else {
        format!("{code}: {message}")
    }
}
