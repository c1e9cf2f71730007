//! [`GraphClient`] and the resources it reads and writes: users, domains, group members and
//! invitations. Each method builds its URL here and hands the request to the transport.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use url::Url;

use super::auth::TokenProvider;
use super::budget::ReadBudget;
use super::config::{check_endpoint, GraphConfig};
use super::error::{GraphError, Traced};
use super::limiter::Limiter;
use super::odata::{encode_query, in_filters, needs_advanced_query};
use super::paging::Pager;
use super::retry::{Backoff, RetryPolicy, Silence};
use super::transport::{parse_answer, Call, Spend};
use super::RequestObserver;
use crate::model::{
    DeltaPage, Domain, Invitation, InvitationRequest, Page, User, CONVERTED_BACK_FILTER,
    VALIDATION_SELECT,
};

/// The longest we wait for a TCP (and TLS) connection, whatever the request timeout: a host
/// that does not accept within this is down or filtered.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the tenant's address index reads of each user (listing and delta query alike).
const ADDRESS_SELECT: &str = "id,mail,otherMails,proxyAddresses";

/// Cheap to clone: every worker holds one, all share the connection pool, token and limiter.
#[derive(Clone)]
pub struct GraphClient {
    pub(super) inner: Arc<Inner>,
    pub(super) observer: Option<Arc<dyn RequestObserver>>,
    pub(super) gate: Option<Arc<dyn super::SendGate>>,
    pub(super) retry: RetryPolicy,
    /// Bulk reads go through `$batch` (a POST) unless the run is a dry run, which must send
    /// nothing but GETs.
    pub(super) batching: bool,
    /// The resource units every read waits on (writes wait on the limiter).
    pub(super) budget: Arc<ReadBudget>,
}

pub(super) struct Inner {
    /// Graph's root without the version, e.g. `https://graph.microsoft.com`.
    pub(super) root: String,
    pub(super) origin: url::Origin,
    pub(super) http: reqwest::Client,
    pub(super) tokens: Arc<TokenProvider>,
    pub(super) limiter: Arc<Limiter>,
    /// One attempt, connection and answer included.
    pub(super) timeout: Duration,
    /// Opening the connection (TCP and TLS).
    pub(super) connect_timeout: Duration,
    /// Requests that may have reached Graph.
    pub(super) sent: AtomicU64,
    /// `Authorization_RequestDenied` answers in a row, per kind of request (`POST invitations`,
    /// `GET users`, …): reads succeeding must not hide that every invitation is refused.
    pub(super) denied_streaks: std::sync::Mutex<HashMap<String, u32>>,
    /// No answer of any kind from Graph or the token endpoint for this long stops the run.
    pub(super) silence: Silence,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// The certificate authorities of a PEM file, for [`GraphConfig::ca_file`]: a file that cannot be
/// read or holds no certificate is a configuration error, never silently the built-in roots only.
fn extra_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, GraphError> {
    let bad = |why: String| {
        GraphError::Config(format!(
            "{} ({}): {why}",
            path.display(),
            super::config::CA_FILE_ENV
        ))
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(bad("it holds no PEM certificate".into()));
    }
    Ok(certs)
}

impl GraphClient {
    /// Checks both endpoints and loads the credentials (a certificate is read here); no request
    /// is sent yet — [`GraphClient::authenticate`] does that.
    pub fn new(config: GraphConfig, limiter: Arc<Limiter>) -> Result<GraphClient, GraphError> {
        let graph = check_endpoint(&config.graph_url)?;
        let root = graph
            .as_str()
            .trim_end_matches('/')
            .trim_end_matches("/v1.0")
            .trim_end_matches('/')
            .to_string();
        let connect_timeout = config.request_timeout.min(MAX_CONNECT_TIMEOUT);
        let mut builder = reqwest::Client::builder().use_rustls_tls();
        if let Some(path) = &config.ca_file {
            for cert in extra_roots(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .user_agent(concat!("b2b-convert/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GraphError::Config(format!("cannot build the HTTP client: {e}")))?;
        let tokens = TokenProvider::new(&config, http.clone())?;
        Ok(GraphClient {
            inner: Arc::new(Inner {
                root,
                origin: graph.origin(),
                http,
                tokens,
                limiter,
                timeout: config.request_timeout,
                connect_timeout,
                sent: AtomicU64::new(0),
                denied_streaks: std::sync::Mutex::new(HashMap::new()),
                silence: Silence::new(config.not_sent_retry_for),
            }),
            observer: None,
            gate: None,
            retry: RetryPolicy {
                http_retries: config.http_retries,
                not_sent_for: config.not_sent_retry_for,
                ..RetryPolicy::default()
            },
            batching: true,
            budget: ReadBudget::new(crate::config::DEFAULT_READ_BUDGET),
        })
    }

    /// Reads spend `budget`'s resource units (by default Graph's 8,000 per 10 s of a tenant
    /// above 500 users).
    pub fn with_read_budget(mut self, budget: Arc<ReadBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The run's shared read budget.
    pub fn read_budget(&self) -> &Arc<ReadBudget> {
        &self.budget
    }

    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Every request first asks `gate` whether it may leave (the run's lease).
    pub fn with_gate(mut self, gate: Arc<dyn super::SendGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// With `false`, bulk reads are sent as plain GETs (15 values each) instead of `$batch`:
    /// more requests, but not a single POST — what a dry run promises.
    pub fn with_batching(mut self, batching: bool) -> Self {
        self.batching = batching;
        self
    }

    /// Changes the backoff between retries of failed requests (tests, rehearsals).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.retry.backoff = backoff;
        self
    }

    /// Graph's root without the version (e.g. `https://graph.microsoft.com`): part of what names
    /// a tenant's stored facts, so an index built against one endpoint is never used for another.
    pub fn root(&self) -> &str {
        &self.inner.root
    }

    /// The run's shared limiter.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.inner.limiter
    }

    /// Gets a token now, so refused credentials stop the run before any work (exit 1).
    pub async fn authenticate(&self) -> Result<(), GraphError> {
        self.inner.tokens.token().await.map(|_| ())
    }

    /// HTTP requests that may have reached Graph (a `$batch` counts 1; token requests and
    /// connections that never opened are not counted).
    pub fn requests_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// Every domain of the tenant (`GET /v1.0/domains`, every page): the initial and default
    /// ones name the tenant for people.
    pub async fn domains(&self) -> Result<Vec<Domain>, GraphError> {
        self.get_all(self.api_url(&["domains"], &[]), false).await
    }

    /// The tenant's verified domains (`GET /v1.0/domains`, every page).
    pub async fn verified_domains(&self) -> Result<Vec<Domain>, GraphError> {
        let domains: Vec<Domain> = self.get_all(self.api_url(&["domains"], &[]), false).await?;
        Ok(domains.into_iter().filter(|d| d.is_verified).collect())
    }

    /// Every user converted back to an internal member (`id`, `externalUserConvertedOn`): the
    /// property is beta-only, so one beta listing per pass replaces reading it with each user.
    pub async fn converted_back_users(&self) -> Result<Vec<User>, GraphError> {
        let url = self.beta_url(
            &["users"],
            &[
                ("$filter", CONVERTED_BACK_FILTER),
                ("$select", "id,externalUserConvertedOn"),
                ("$top", "999"),
            ],
        );
        self.get_all(url, false).await
    }

    /// How many users the tenant holds: `@odata.count` of a one-user page (`$count=true`, which
    /// Graph serves on users only with `ConsistencyLevel: eventual`), one read of 1 RU. `None`
    /// when the answer carries no count.
    pub async fn count_users(&self) -> Result<Option<u64>, GraphError> {
        let url = self.api_url(
            &["users"],
            &[("$count", "true"), ("$top", "1"), ("$select", "id")],
        );
        let page: Page<User> = self.get_json(url, true).await?;
        Ok(page.count)
    }

    /// One user by object id or UPN with everything validation needs; `None` when absent.
    pub async fn get_user(&self, id_or_upn: &str) -> Result<Option<User>, GraphError> {
        let url = self.api_url(&["users", id_or_upn], &[("$select", VALIDATION_SELECT)]);
        match self.get_json(url, false).await {
            Ok(user) => Ok(Some(user)),
            Err(GraphError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Users by object id (any number; absent ids are simply missing from the answer).
    pub async fn users_by_ids(&self, ids: &[String]) -> Result<Vec<User>, GraphError> {
        self.users_where_in("id", ids).await
    }

    /// Users by user principal name (any number; absent ones are missing from the answer).
    pub async fn users_by_upns(&self, upns: &[String]) -> Result<Vec<User>, GraphError> {
        self.users_where_in("userPrincipalName", upns).await
    }

    /// Users whose `property` is one of `values`: 15 values per `in (…)`, as Graph allows.
    async fn users_where_in(
        &self,
        property: &str,
        values: &[String],
    ) -> Result<Vec<User>, GraphError> {
        let urls = in_filters(property, values)
            .iter()
            .map(|filter| self.batch_url(&["users"], filter, VALIDATION_SELECT))
            .collect();
        self.batch_users(urls).await
    }

    /// One page of every user's addresses (`id,mail,otherMails,proxyAddresses`, 999 a page): the tenant-wide
    /// index the `mail_conflict` check reads, built with one request per 999 users instead of
    /// one per 15 checked addresses.
    pub async fn list_user_addresses_page(
        &self,
        next_link: Option<&str>,
    ) -> Result<Page<User>, GraphError> {
        self.get_json(self.addresses_page_url(next_link)?, false)
            .await
    }

    /// One page of the address delta query: `GET /v1.0/users/delta` selecting
    /// `id,mail,otherMails,proxyAddresses` for a new round, or the stored `@odata.nextLink` /
    /// `@odata.deltaLink` (which carry the selection) to go on. An expired link answers 410
    /// (`syncStateNotFound`), surfaced as [`GraphError::Api`].
    pub async fn users_delta_page(&self, link: Option<&str>) -> Result<DeltaPage, GraphError> {
        let url = match link {
            Some(link) => self.next_link_url(link, false)?,
            None => self.api_url(&["users", "delta"], &[("$select", ADDRESS_SELECT)]),
        };
        let answer = self
            .execute(&Call {
                method: Method::GET,
                spend: Spend::read(&url),
                url,
                headers: vec![("Prefer", "odata.maxpagesize=999")],
                body: None,
                idempotent: true,
            })
            .await?;
        parse_answer(&answer.body, &answer.meta)
    }

    /// A delta link that starts tracking now without reading the tenant
    /// (`GET /v1.0/users/delta?$select=…&$deltatoken=latest`): taken just before a full listing,
    /// its next round returns whatever changed during and after the listing.
    pub async fn users_delta_latest(&self) -> Result<DeltaPage, GraphError> {
        let url = self.api_url(
            &["users", "delta"],
            &[("$select", ADDRESS_SELECT), ("$deltatoken", "latest")],
        );
        self.get_json(url, false).await
    }

    /// One page of every user's addresses (`id,mail,otherMails,proxyAddresses`, 999 a page) as
    /// raw entries, the way a delta page carries them: a full round of the address index by
    /// listing, a fifth of the pages of a delta round (200 a page).
    pub async fn users_addresses_page(&self, link: Option<&str>) -> Result<DeltaPage, GraphError> {
        self.get_json(self.addresses_page_url(link)?, false).await
    }

    /// The page of every user's addresses after `link`, or the first (999 a page).
    fn addresses_page_url(&self, link: Option<&str>) -> Result<Url, GraphError> {
        Ok(match link {
            Some(link) => self.next_link_url(link, false)?,
            None => self.api_url(&["users"], &[("$select", ADDRESS_SELECT), ("$top", "999")]),
        })
    }

    /// One page of `GET /v1.0/users?$filter=…`. Pass the previous page's `next_link` to go on.
    /// Filters needing Graph's advanced queries get `ConsistencyLevel: eventual` and
    /// `$count=true` on every page.
    pub async fn list_users_page(
        &self,
        filter: &str,
        next_link: Option<&str>,
    ) -> Result<Page<User>, GraphError> {
        let advanced = needs_advanced_query(filter);
        let url = match next_link {
            Some(link) => self.next_link_url(link, advanced)?,
            None => {
                let mut query = Vec::new();
                if !filter.trim().is_empty() {
                    query.push(("$filter", filter));
                }
                query.push(("$select", VALIDATION_SELECT));
                query.push(("$top", "999"));
                if advanced {
                    query.push(("$count", "true"));
                }
                self.api_url(&["users"], &query)
            }
        };
        self.get_json(url, advanced).await
    }

    /// One page of a group's user members (direct, or nested with `transitive`).
    pub async fn group_members_page(
        &self,
        group_id: &str,
        transitive: bool,
        next_link: Option<&str>,
    ) -> Result<Page<User>, GraphError> {
        let url = match next_link {
            Some(link) => self.next_link_url(link, false)?,
            None => {
                let relation = if transitive {
                    "transitiveMembers"
                } else {
                    "members"
                };
                self.api_url(
                    &["groups", group_id, relation, "microsoft.graph.user"],
                    &[("$select", VALIDATION_SELECT), ("$top", "999")],
                )
            }
        };
        self.get_json(url, false).await
    }

    /// `POST /v1.0/invitations`. Resent only after a 429, a 401 renewal or a connection that
    /// never opened; a 5xx, timeout or dropped connection gives [`GraphError::Unknown`]: the
    /// invitation may exist.
    pub async fn invite(&self, req: &InvitationRequest) -> Result<Traced<Invitation>, GraphError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| GraphError::Config(format!("cannot encode the invitation: {e}")))?;
        let answer = self
            .execute(&Call {
                method: Method::POST,
                url: self.api_url(&["invitations"], &[]),
                headers: Vec::new(),
                body: Some(body),
                idempotent: false,
                spend: Spend::Write,
            })
            .await?;
        match serde_json::from_slice::<Invitation>(&answer.body) {
            Ok(value) => Ok(Traced {
                value,
                meta: answer.meta,
            }),
            Err(e) => Err(GraphError::Unknown {
                message: format!("invitation accepted but its answer is unreadable: {e}"),
                meta: answer.meta,
            }),
        }
    }

    pub(super) async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
        eventual: bool,
    ) -> Result<T, GraphError> {
        let headers = if eventual {
            vec![("ConsistencyLevel", "eventual")]
        } else {
            Vec::new()
        };
        let answer = self
            .execute(&Call {
                method: Method::GET,
                spend: Spend::read(&url),
                url,
                headers,
                body: None,
                idempotent: true,
            })
            .await?;
        parse_answer(&answer.body, &answer.meta)
    }

    /// Every item of the listing whose first page is `first`, following each next link.
    pub(super) async fn get_all<T: DeserializeOwned>(
        &self,
        first: Url,
        eventual: bool,
    ) -> Result<Vec<T>, GraphError> {
        Pager::new(|link: Option<String>| {
            let first = first.clone();
            async move {
                let url = match link {
                    Some(link) => self.next_link_url(&link, eventual)?,
                    None => first,
                };
                self.get_json::<Page<T>>(url, eventual).await
            }
        })
        .collect_all()
        .await
    }

    /// `{root}/v1.0/{segments…}?{query}`, each segment and value percent-encoded.
    pub(super) fn api_url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        with_path_and_query(self.version_root(), segments, query)
    }

    /// A URL relative to the version root (as `$batch` sub-requests are written), made absolute.
    pub(super) fn relative_url(&self, relative: &str) -> Result<Url, GraphError> {
        Url::parse(&format!("{}/v1.0{relative}", self.inner.root))
            .map_err(|e| GraphError::Config(format!("bad request URL {relative}: {e}")))
    }

    /// A `$batch` sub-request URL: relative to the version root.
    fn batch_url(&self, segments: &[&str], filter: &str, select: &str) -> String {
        let url = self.api_url(
            segments,
            &[("$filter", filter), ("$select", select), ("$top", "999")],
        );
        let version = self.version_root();
        let path = url.path();
        let relative = path.strip_prefix(version.path()).unwrap_or(path);
        format!("{relative}?{}", url.query().unwrap_or(""))
    }

    fn version_root(&self) -> Url {
        Url::parse(&format!("{}/v1.0", self.inner.root)).expect("root was checked")
    }

    /// `{root}/beta/{segments…}?{query}`: only for what v1.0 does not have (converting back,
    /// `externalUserConvertedOn`); Microsoft does not support beta in production.
    pub(super) fn beta_url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let beta = Url::parse(&format!("{}/beta", self.inner.root)).expect("root was checked");
        with_path_and_query(beta, segments, query)
    }

    /// A page link from Graph, refused unless it points back at Graph (our token goes with it).
    pub(super) fn next_link_url(&self, link: &str, count: bool) -> Result<Url, GraphError> {
        let mut url = Url::parse(link)
            .map_err(|e| GraphError::Config(format!("unreadable @odata.nextLink {link:?}: {e}")))?;
        if url.origin() != self.inner.origin {
            return Err(GraphError::Config(format!(
                "@odata.nextLink points outside {}: {}",
                self.inner.root,
                url.origin().ascii_serialization()
            )));
        }
        if count && !url.query_pairs().any(|(k, _)| k == "$count") {
            let query = match url.query() {
                Some(q) if !q.is_empty() => format!("{q}&$count=true"),
                _ => "$count=true".to_string(),
            };
            url.set_query(Some(&query));
        }
        Ok(url)
    }
}

/// `base/{segments…}?{query}`, each segment and value percent-encoded.
fn with_path_and_query(mut base: Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    base.path_segments_mut()
        .expect("http(s) URLs have paths")
        .extend(segments);
    if !query.is_empty() {
        base.set_query(Some(&encode_query(query)));
    }
    base
}
