//! The Graph client: HTTP, authentication, retries and throttling. Nothing else builds URLs.
//!
//! - `client`: [`GraphClient`] and the resources it reads and writes;
//! - `transport`: one request — headers, `client-request-id`, events, renewal after a 401, and
//!   what each answer or failure means (sent or not, retryable or not);
//! - `batch`: `$batch` with per-sub-request retries;
//! - `retry`: the one retry policy every resend goes through;
//! - `paging`: the one `@odata.nextLink` loop;
//! - `odata`: literals, `in (…)` lists and query encoding;
//! - `auth`, `config`, `jwt`, `limiter`, `error`: tokens, settings, assertions, pace, errors;
//! - `budget`: the read budget (Graph's resource units), apart from the write pace.

pub mod auth;
mod batch;
pub mod budget;
mod client;
pub mod config;
pub mod error;
pub mod jwt;
pub mod limiter;
pub mod odata;
pub mod paging;
pub mod retry;
mod signin;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use tests::client_of as test_client;
mod transport;
mod writes;

use std::time::Duration;

pub use auth::TokenProvider;
pub use budget::ReadBudget;
pub use client::GraphClient;
pub use config::{
    ca_file_from_env, check_endpoint, AuthMethod, Credentials, GraphConfig, Secret,
    DEFAULT_GRAPH_URL, DEFAULT_HTTP_RETRIES, DEFAULT_LOGIN_URL, DEFAULT_NOT_SENT_RETRY_FOR,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use error::{GraphError, ResponseMeta, Traced};
pub use limiter::Limiter;
pub use odata::{needs_advanced_query, odata_quote, VALUES_PER_FILTER};
pub use paging::Pager;
pub use retry::{Backoff, RetryPolicy, MAX_THROTTLED_RETRIES};
pub use transport::{classify_error, Lost};
pub use writes::{ConvertBack, Password, PASSWORD_LEN};

/// Graph's limit of sub-requests in one `$batch`.
pub const REQUESTS_PER_BATCH: usize = 20;
/// `Authorization_RequestDenied` can concern one target (e.g. a privileged admin account); when
/// this many requests in a row get it, the app itself lacks permission and the run must stop.
pub const DENIED_STREAK_LIMIT: u32 = 3;

/// Asked just before each request leaves the process (after the limiter's wait and the token):
/// an `Err` stops the request as never sent, naming why. The run's lease answers it, so a holder
/// that was frozen past its lease and taken over sends nothing more, even a request it had
/// checkpointed before it froze.
pub trait SendGate: Send + Sync {
    fn may_send(&self) -> Result<(), String>;
}

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
