//! Request dispatch: route matching, the per-request pipeline (token → throttling → faults →
//! handler → lost response), `$batch`, bookkeeping for `/_emulator/stats` and
//! `/_emulator/requests`, and the inspection endpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use super::delta::{self, Changes};
use super::tenant::{Index, Tenant};
use super::throttle::{retry_after_secs, Bucket};
use super::EmulatorConfig;
use crate::model::{
    BatchRequest, BatchResponse, BatchResponseItem, ErrorBody, ErrorDetail, InnerError, User,
};

/// Most entries kept in the request log.
const LOG_CAP: usize = 1_000_000;
/// Most sub-requests in one `$batch`.
const MAX_BATCH: usize = 20;

/// Everything the server shares between connections.
pub struct Shared {
    pub config: EmulatorConfig,
    pub state: Mutex<State>,
    /// `scheme://address` of the listener: what links are built on before the connection layer
    /// rebases them onto the origin the client called (`server::rebase_links`).
    pub base_url: String,
    /// `http`, or `https` with `--tls`.
    pub scheme: &'static str,
    pub wall_start: DateTime<Utc>,
    /// Resource units per 10 s (0 = unlimited), after the tenant-size default.
    pub ru_limit: u64,
    /// A black hole: connections are accepted and requests read, but nothing is answered
    /// (inspection endpoints excepted), as a hung proxy or a black-holed route behaves.
    pub silent: std::sync::atomic::AtomicBool,
    /// Requests being answered now (latency included), and the most there ever were: how many
    /// requests a client keeps in flight, counted rather than timed.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

/// One request being answered; counted in [`Shared::in_flight`] until dropped (answered, or
/// its connection gone).
pub struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    pub fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct TokenInfo {
    pub app: String,
    pub expires_at: Duration,
    pub grant: super::identity::Grant,
}

/// Mutable tenant and bookkeeping, behind one lock: handlers are short and synchronous.
pub struct State {
    pub tenant: Tenant,
    pub index: Index,
    /// Every change to a user, for delta queries.
    pub changes: Changes,
    /// Positions of users deleted from the tenant (kept in `tenant.users` so positions stay
    /// valid; no look-up finds them, delta reports them `@removed`).
    pub removed: HashSet<usize>,
    /// Random per emulator start, so a delta token from another emulator is refused.
    pub instance: String,
    pub tokens: HashMap<String, TokenInfo>,
    pub buckets: HashMap<String, Bucket>,
    pub invitations: Vec<Value>,
    /// Every accepted PATCH, one entry per property: `GET /_emulator/patches`.
    pub patches: Vec<Value>,
    /// Every password the tenant was given (`passwordProfile`, conversion back):
    /// `GET /_emulator/secrets`, so tests can prove none reached the tool's files.
    pub secrets: Vec<Value>,
    /// Every accepted `revokeSignInSessions`: `GET /_emulator/revocations`.
    pub revocations: Vec<Value>,
    /// Every accepted conversion back, the body's password replaced by `"set"`:
    /// `GET /_emulator/conversions-back`.
    pub conversions_back: Vec<Value>,
    /// Users whose next single read shows them as before their last accepted invitation
    /// ([`super::EmulatorConfig::lagging_read_rate`]), by position.
    pub lagging: HashMap<usize, crate::model::User>,
    pub log: Vec<Value>,
    pub seq: u64,
    pub stats: BTreeMap<String, BTreeMap<String, u64>>,
    pub throttled: u64,
    /// Invitation requests that reached the throttle, for
    /// [`EmulatorConfig::throttle_every_nth_invitation`].
    pub invitation_requests: u64,
    pub faults: u64,
    pub lost: u64,
    pub current_second: u64,
    pub in_current_second: u64,
    pub peak_per_second: u64,
    pub rng: StdRng,
    pub identity: super::identity::IdentityState,
}

/// One request, top-level or a `$batch` sub-request.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// `scheme://host` as the client called it (a `$batch` sub-request inherits its batch's;
    /// empty only for calls made up in tests, see [`Shared::origin`]).
    pub origin: String,
    pub method: String,
    /// Percent-decoded path, e.g. `/v1.0/users/ann@contoso.com`.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Call {
    /// A query option, with or without its `$`, names case-insensitive.
    pub fn q(&self, name: &str) -> Option<&str> {
        let bare = name.trim_start_matches('$');
        self.query
            .iter()
            .find(|(k, _)| k.trim_start_matches('$').eq_ignore_ascii_case(bare))
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// An answer before it is turned into HTTP or into a `$batch` sub-response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    /// Carried out, but the connection is to be dropped without answering.
    pub lost: bool,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Some(body),
            lost: false,
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
            lost: false,
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request about the one user its path names (`/users/{id}/…`), found in the tenant.
pub struct UserCall<'a> {
    /// The user's place in `tenant.users`.
    pub pos: usize,
    pub call: &'a Call,
    pub ctx: &'a Ctx,
    pub now: Duration,
}

/// Per-request identifiers that also go into error bodies.
pub struct Ctx {
    pub request_id: String,
    /// The client's `client-request-id`, or the request id when it sent none (as Graph does).
    pub client_request_id: String,
    pub date: String,
}

impl Ctx {
    pub fn err(&self, status: u16, code: &str, message: impl Into<String>) -> Reply {
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                inner_error: Some(InnerError {
                    code: None,
                    request_id: Some(self.request_id.clone()),
                    client_request_id: Some(self.client_request_id.clone()),
                    date: Some(self.date.clone()),
                }),
            },
        };
        Reply::json(status, serde_json::to_value(body).unwrap_or(Value::Null))
    }

    /// 400 `Request_BadRequest` for an address another object already holds, with the
    /// `ObjectConflict` detail Graph adds.
    pub fn conflict(&self) -> Reply {
        const MSG: &str =
            "Another object with the same value for property proxyAddresses already exists.";
        let mut r = self.err(400, "Request_BadRequest", MSG);
        if let Some(Value::Object(e)) = r.body.as_mut().and_then(|b| b.get_mut("error")) {
            e.insert(
                "details".into(),
                json!([{"code": "ObjectConflict", "message": MSG, "target": "proxyAddresses"}]),
            );
        }
        r
    }

    pub fn not_found(&self, key: &str) -> Reply {
        self.err(
            404,
            "Request_ResourceNotFound",
            format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Token(String),
    ListUsers,
    UsersDelta,
    GetUser(String),
    PatchUser(String),
    Members {
        group: String,
        transitive: bool,
        cast: bool,
    },
    Domains,
    Invite,
    Batch,
    AuthorizationPolicy,
    /// `POST /v1.0/users/{id}/revokeSignInSessions`.
    RevokeSessions(String),
    /// `POST /beta/users/{id}/convertExternalToInternalMemberUser`.
    ConvertBack(String),
    BetaListUsers,
    BetaGetUser(String),
    EmailOtpPolicy,
    CrossTenantDefault,
    /// `GET /v1.0/directoryRoles` (`$expand=members`): who holds which activated role.
    DirectoryRoles,
}

/// What a request costs in the buckets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub ru: u64,
    pub writes: u64,
    pub invitation: bool,
}

enum NoRoute {
    Segment(String),
    Method,
}

fn route(method: &str, path: &str) -> Result<(Route, String), (NoRoute, String)> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let t = |s: &str| s.to_string();
    let unknown = |seg: &str| {
        (
            NoRoute::Segment(seg.to_string()),
            format!("{method} (unknown)"),
        )
    };
    let wrong_method = |tmpl: &str| (NoRoute::Method, tmpl.replace("{m}", method));
    // A resource that answers one method: its route, or the refusal of any other; `path` is the
    // template the request counts under.
    let only = |allowed: &str, route: Route, path: &str| {
        if method == allowed {
            Ok((route, format!("{allowed} {path}")))
        } else {
            Err((NoRoute::Method, format!("{method} {path}")))
        }
    };
    match segs.as_slice() {
        [tenant, "oauth2", "v2.0", "token"] => {
            only("POST", Route::Token(t(tenant)), "/{tenant}/oauth2/v2.0/token")
        }
        ["v1.0", "users"] => only("GET", Route::ListUsers, "/v1.0/users"),
        ["v1.0", "users", "delta" | "delta()" | "microsoft.graph.delta" | "microsoft.graph.delta()"] => {
            only("GET", Route::UsersDelta, "/v1.0/users/delta")
        }
        ["v1.0", "users", id] if !id.is_empty() => match method {
            "GET" => Ok((Route::GetUser(t(id)), t("GET /v1.0/users/{id}"))),
            "PATCH" => Ok((Route::PatchUser(t(id)), t("PATCH /v1.0/users/{id}"))),
            _ => Err(wrong_method("{m} /v1.0/users/{id}")),
        },
        ["v1.0", "groups", id, kind, rest @ ..]
            if (*kind == "members" || *kind == "transitiveMembers")
                && (rest.is_empty() || rest == ["microsoft.graph.user"]) =>
        {
            let cast = if rest.is_empty() {
                ""
            } else {
                "/microsoft.graph.user"
            };
            let members = Route::Members {
                group: t(id),
                transitive: *kind == "transitiveMembers",
                cast: !rest.is_empty(),
            };
            only("GET", members, &format!("/v1.0/groups/{{id}}/{kind}{cast}"))
        }
        ["v1.0", "domains"] => only("GET", Route::Domains, "/v1.0/domains"),
        ["v1.0", "invitations"] => only("POST", Route::Invite, "/v1.0/invitations"),
        ["v1.0", "policies", "authorizationPolicy"] => {
            only("GET", Route::AuthorizationPolicy, "/v1.0/policies/authorizationPolicy")
        }
        ["v1.0", "users", id, "revokeSignInSessions" | "microsoft.graph.revokeSignInSessions"]
            if !id.is_empty() =>
        {
            only("POST", Route::RevokeSessions(t(id)), "/v1.0/users/{id}/revokeSignInSessions")
        }
        ["v1.0", "policies", "authenticationMethodsPolicy", "authenticationMethodConfigurations", kind]
            if kind.eq_ignore_ascii_case("email") =>
        {
            only(
                "GET",
                Route::EmailOtpPolicy,
                "/v1.0/policies/authenticationMethodsPolicy/authenticationMethodConfigurations/email",
            )
        }
        ["v1.0", "policies", "crossTenantAccessPolicy", "default"] => {
            only("GET", Route::CrossTenantDefault, "/v1.0/policies/crossTenantAccessPolicy/default")
        }
        ["v1.0", "directoryRoles"] => only("GET", Route::DirectoryRoles, "/v1.0/directoryRoles"),
        ["beta", "users"] => only("GET", Route::BetaListUsers, "/beta/users"),
        ["beta", "users", id] if !id.is_empty() => {
            only("GET", Route::BetaGetUser(t(id)), "/beta/users/{id}")
        }
        ["beta", "users", id, "convertExternalToInternalMemberUser"
        | "microsoft.graph.convertExternalToInternalMemberUser"]
            if !id.is_empty() =>
        {
            only(
                "POST",
                Route::ConvertBack(t(id)),
                "/beta/users/{id}/convertExternalToInternalMemberUser",
            )
        }
        ["beta", rest @ ..] => Err(unknown(rest.last().copied().unwrap_or(""))),
        ["v1.0", "$batch"] => only("POST", Route::Batch, "/v1.0/$batch"),
        ["v1.0", rest @ ..] => Err(unknown(rest.last().copied().unwrap_or(""))),
        [first, ..] => Err(unknown(first)),
        [] => Err(unknown("")),
    }
}

fn cost_of(route: &Route, call: &Call) -> Cost {
    let select = call.q("select").is_some();
    match route {
        Route::ListUsers | Route::GetUser(_) | Route::BetaListUsers | Route::BetaGetUser(_) => {
            Cost {
                ru: if select { 1 } else { 2 },
                ..Cost::default()
            }
        }
        Route::UsersDelta => Cost {
            ru: if delta::selects(call) { 1 } else { 2 },
            ..Cost::default()
        },
        Route::Members { transitive, .. } => Cost {
            ru: if *transitive { 5 } else { 3 },
            ..Cost::default()
        },
        Route::Domains
        | Route::AuthorizationPolicy
        | Route::EmailOtpPolicy
        | Route::CrossTenantDefault
        | Route::DirectoryRoles => Cost {
            ru: 1,
            ..Cost::default()
        },
        Route::Invite => Cost {
            ru: 1,
            writes: 1,
            invitation: true,
        },
        Route::PatchUser(_) | Route::RevokeSessions(_) | Route::ConvertBack(_) => Cost {
            ru: 1,
            writes: 1,
            invitation: false,
        },
        Route::Token(_) | Route::Batch => Cost::default(),
    }
}

struct Throttled {
    wait: Duration,
    information: &'static str,
    scope: String,
    /// What the refused request would have used of its bucket (above 1.0).
    demand: f64,
}

/// `x-ms-throttle-limit-percentage` as Graph writes it: the share of the limit in use, sent
/// only above 0.8, at most 1.8.
fn limit_percentage(share: f64) -> Option<String> {
    (share > 0.8).then(|| format!("{:.2}", share.min(1.8)))
}

impl State {
    fn check_token(&self, call: &Call, now: Duration) -> Result<String, &'static str> {
        let auth = call.header("authorization").unwrap_or("");
        let token = auth
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .unwrap_or("");
        if token.is_empty() {
            return Err("Access token is empty.");
        }
        match self.tokens.get(token) {
            None => Err("Access token validation failure. Invalid audience."),
            Some(info) if now >= info.expires_at => {
                Err("Lifetime validation failed, the token is expired.")
            }
            Some(info) => Ok(info.app.clone()),
        }
    }

    /// Take `cost` from every bucket it touches, or none of them. On success, the highest share
    /// of a bucket now in use.
    fn throttle(
        &mut self,
        cfg: &EmulatorConfig,
        ru_limit: u64,
        app: &str,
        cost: Cost,
        now: Duration,
    ) -> Result<f64, Throttled> {
        let tenant = self.tenant.tenant_id.clone();
        if cost.invitation && cfg.throttle_every_nth_invitation > 0 {
            self.invitation_requests += 1;
            if self
                .invitation_requests
                .is_multiple_of(cfg.throttle_every_nth_invitation)
            {
                return Err(Throttled {
                    wait: Duration::from_secs(1),
                    information: "InvitationLimitExceeded",
                    scope: format!("Tenant/Write/{app}/{tenant}"),
                    demand: 1.0 + 1.0 / cfg.throttle_every_nth_invitation as f64,
                });
            }
        }
        let scale = cfg.bucket_scale;
        let mut wants: Vec<(String, f64, Duration, f64, &'static str, String)> = Vec::new();
        if cost.ru > 0 && ru_limit > 0 {
            // Reads and writes both spend resource units: a read refused names the Read scope
            // (a client pauses its reads, not its invitations), a write refused here both.
            let side = if cost.writes == 0 {
                "Read"
            } else {
                "ReadWrite"
            };
            wants.push((
                format!("ru:{app}"),
                ru_limit as f64 * scale,
                Duration::from_secs(10),
                cost.ru as f64,
                "ResourceUnitLimitExceeded",
                format!("Tenant_Application/{side}/{app}/{tenant}"),
            ));
        }
        if cost.writes > 0 && cfg.writes_per_150s > 0 {
            wants.push((
                format!("w:{app}"),
                cfg.writes_per_150s as f64 * scale,
                Duration::from_secs(150),
                cost.writes as f64,
                "WriteLimitExceeded",
                format!("Tenant_Application/Write/{app}/{tenant}"),
            ));
            wants.push((
                "w:tenant".into(),
                18_000.0 * scale,
                Duration::from_secs(300),
                cost.writes as f64,
                "WriteLimitExceeded",
                format!("Tenant/Write/{app}/{tenant}"),
            ));
        }
        if cost.invitation && cfg.invitations_per_5s > 0 {
            wants.push((
                "inv".into(),
                cfg.invitations_per_5s as f64 * scale,
                Duration::from_secs(5),
                1.0,
                "InvitationLimitExceeded",
                format!("Tenant/Write/{app}/{tenant}"),
            ));
        }
        let mut worst: Option<Throttled> = None;
        for (key, cap, window, c, info, scope) in &wants {
            let b = self
                .buckets
                .entry(key.clone())
                .or_insert_with(|| Bucket::new(*cap, *window, now));
            if let Err(wait) = b.check(*c, now) {
                if worst.as_ref().is_none_or(|w| wait > w.wait) {
                    worst = Some(Throttled {
                        wait,
                        information: info,
                        scope: scope.clone(),
                        demand: b.demand_share(*c),
                    });
                }
            }
        }
        if let Some(w) = worst {
            return Err(w);
        }
        let mut used: f64 = 0.0;
        for (key, _, _, c, _, _) in &wants {
            if let Some(b) = self.buckets.get_mut(key) {
                b.take(*c, now);
                used = used.max(b.used_share());
            }
        }
        Ok(used)
    }

    fn record(&mut self, template: &str, call: &Call, reply: &Reply, now: Duration) {
        *self
            .stats
            .entry(template.to_string())
            .or_default()
            .entry(reply.status.to_string())
            .or_default() += 1;
        if reply.status == 429 {
            self.throttled += 1;
        }
        let second = now.as_secs();
        if second != self.current_second {
            self.current_second = second;
            self.in_current_second = 0;
        }
        self.in_current_second += 1;
        self.peak_per_second = self.peak_per_second.max(self.in_current_second);
        self.seq += 1;
        if self.log.len() < LOG_CAP {
            let mut entry = json!({
                "seq": self.seq,
                "atMs": now.as_millis() as u64,
                "method": call.method,
                "path": call.path,
                "status": reply.status,
                "clientRequestId": call.header("client-request-id"),
            });
            if let Some(secs) = reply
                .header("retry-after")
                .and_then(|v| v.parse::<f64>().ok())
            {
                entry["retryAfterMs"] = json!((secs * 1000.0) as u64);
            }
            if reply.lost {
                entry["lost"] = json!(true);
            }
            self.log.push(entry);
        }
    }
}

impl Shared {
    /// Answers a request about the user `key` names (an object id or UPN) with `handle`, or
    /// with Graph's 404 when the tenant has no such user.
    fn about_user(
        &self,
        st: &mut State,
        key: &str,
        call: &Call,
        ctx: &Ctx,
        now: Duration,
        handle: fn(&Self, &mut State, UserCall) -> Reply,
    ) -> Reply {
        match st.index.user(key) {
            Some(pos) => handle(
                self,
                st,
                UserCall {
                    pos,
                    call,
                    ctx,
                    now,
                },
            ),
            None => ctx.not_found(key),
        }
    }

    /// Wall-clock time by the emulator's clock.
    pub fn wall(&self, now: Duration) -> DateTime<Utc> {
        self.wall_start + chrono::Duration::from_std(now).unwrap_or_default()
    }

    pub fn date(&self, now: Duration) -> String {
        self.wall(now).format("%Y-%m-%dT%H:%M:%S").to_string()
    }

    /// The root that `@odata.nextLink` and `@odata.deltaLink` are built on: the scheme this
    /// server serves and the `Host` the client called, as Graph's links name the host called
    /// (a client that reached the emulator as `localhost` is sent back to `localhost`). The
    /// listening address when the request has no usable `Host`.
    pub fn link_base(&self, call: &Call) -> String {
        let (scheme, listening) = self
            .base_url
            .split_once("://")
            .unwrap_or(("http", self.base_url.as_str()));
        let host = call
            .header("host")
            .map(str::trim)
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 255
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })
            .unwrap_or(listening);
        format!("{scheme}://{host}")
    }

    fn ctx(&self, call: &Call, now: Duration) -> Ctx {
        let request_id = uuid::Uuid::new_v4().to_string();
        Ctx {
            request_id: request_id.clone(),
            client_request_id: call
                .header("client-request-id")
                .map_or_else(|| request_id.clone(), str::to_string),
            date: self.date(now),
        }
    }

    /// Answer a top-level request.
    pub fn handle(&self, call: &Call) -> Reply {
        if call.method == "POST" && call.path.trim_end_matches('/') == "/v1.0/$batch" {
            return self.batch(call);
        }
        self.call(call, true)
    }

    /// The pipeline for one (sub-)request.
    pub fn call(&self, call: &Call, top_level: bool) -> Reply {
        let now = self.config.clock.now();
        let ctx = self.ctx(call, now);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (reply, template, ru) = self.process(&mut st, call, &ctx, now, top_level);
        let reply = finish(reply, &ctx, ru, is_graph_path(&call.path));
        st.record(&template, call, &reply, now);
        reply
    }

    fn process(
        &self,
        st: &mut State,
        call: &Call,
        ctx: &Ctx,
        now: Duration,
        top_level: bool,
    ) -> (Reply, String, Option<u64>) {
        let graph = call.path.starts_with("/v1.0/")
            || call.path == "/v1.0"
            || call.path.starts_with("/beta/");
        if let Some((reply, template)) = self.identity_endpoint(st, call, ctx, now) {
            return (reply, template, None);
        }
        let (route, template) = match route(&call.method, &call.path) {
            Ok(r) => r,
            Err((why, template)) => {
                if graph {
                    if let Err(msg) = st.check_token(call, now) {
                        return (
                            ctx.err(401, "InvalidAuthenticationToken", msg),
                            template,
                            Some(0),
                        );
                    }
                }
                let reply = match why {
                    NoRoute::Method => ctx.err(
                        405,
                        "Request_BadRequest",
                        "Specified HTTP method is not allowed for the request target.",
                    ),
                    NoRoute::Segment(seg) => ctx.err(
                        400,
                        "BadRequest",
                        format!("Resource not found for the segment '{seg}'."),
                    ),
                };
                return (reply, template, graph.then_some(0));
            }
        };
        if let Route::Token(segment) = &route {
            return (self.token(st, call, ctx, segment, now), template, None);
        }
        let app = match st.check_token(call, now) {
            Ok(app) => app,
            Err(msg) => {
                return (
                    ctx.err(401, "InvalidAuthenticationToken", msg),
                    template,
                    Some(0),
                )
            }
        };
        if let Some(refused) = unsupported_media_type(call, ctx) {
            return (refused, template, Some(0));
        }
        if let Some(denied) = self.authorize(st, &route, call, ctx) {
            return (denied, template, Some(0));
        }
        let cost = cost_of(&route, call);
        let used = match st.throttle(&self.config, self.ru_limit, &app, cost, now) {
            Ok(used) => used,
            Err(t) => {
                let secs = retry_after_value(&self.config, t.wait);
                let reply = ctx
                    .err(
                        429,
                        "TooManyRequests",
                        format!("Too many requests. The request was throttled ({}); retry after {secs} seconds.", t.information),
                    )
                    .with_header("Retry-After", secs.clone())
                    .with_header("x-ms-throttle-scope", t.scope)
                    .with_header("x-ms-throttle-information", t.information)
                    .with_header(
                        "x-ms-throttle-limit-percentage",
                        limit_percentage(t.demand).unwrap_or_else(|| "1.80".into()),
                    );
                return (reply, template, Some(cost.ru));
            }
        };
        if let Some(fault) = self.fault(st, ctx) {
            return (fault, template, Some(cost.ru));
        }
        let mut reply = match &route {
            Route::ListUsers => self.list_users(st, call, ctx),
            Route::UsersDelta => self.users_delta(st, call, ctx),
            Route::GetUser(key) => self.get_user(st, call, ctx, key),
            Route::PatchUser(key) => self.about_user(st, key, call, ctx, now, Self::patch_user),
            Route::Members {
                group,
                transitive,
                cast,
            } => self.members(st, call, ctx, group, *transitive, *cast),
            Route::Domains => self.domains(st),
            Route::Invite => self.invite(st, call, ctx, now),
            Route::AuthorizationPolicy => self.authorization_policy(st),
            Route::RevokeSessions(key) => {
                self.about_user(st, key, call, ctx, now, Self::revoke_sessions)
            }
            Route::ConvertBack(key) => self.about_user(st, key, call, ctx, now, Self::convert_back),
            Route::BetaListUsers => self.list_users(st, call, ctx),
            Route::BetaGetUser(key) => self.get_user(st, call, ctx, key),
            Route::EmailOtpPolicy => self.email_otp_policy(st),
            Route::CrossTenantDefault => self.cross_tenant_default(st),
            Route::DirectoryRoles => self.directory_roles(st, call, ctx),
            Route::Batch => ctx.err(
                400,
                "BadRequest",
                "Nested batch requests are not supported.",
            ),
            Route::Token(_) => unreachable!("answered above"),
        };
        if let Some(p) = limit_percentage(used) {
            reply = reply.with_header("x-ms-throttle-limit-percentage", p);
        }
        let write = matches!(
            route,
            Route::Invite | Route::PatchUser(_) | Route::RevokeSessions(_) | Route::ConvertBack(_)
        );
        if top_level
            && write
            && (200..300).contains(&reply.status)
            && self.config.lost_response_rate > 0.0
            && st.rng.random::<f64>() < self.config.lost_response_rate
        {
            reply.lost = true;
            st.lost += 1;
        }
        (reply, template, Some(cost.ru))
    }

    fn fault(&self, st: &mut State, ctx: &Ctx) -> Option<Reply> {
        if self.config.fault_rate <= 0.0 || st.rng.random::<f64>() >= self.config.fault_rate {
            return None;
        }
        st.faults += 1;
        Some(match st.rng.random_range(0..3u8) {
            0 => ctx.err(
                500,
                "InternalServerError",
                "An internal server error occurred. Please retry.",
            ),
            1 => {
                let r = ctx.err(
                    503,
                    "ServiceUnavailable",
                    "The service is temporarily unavailable. Please retry later.",
                );
                if st.rng.random_bool(0.5) {
                    r.with_header("Retry-After", fault_retry_after(&mut st.rng, &self.config))
                } else {
                    r
                }
            }
            _ => ctx.err(
                504,
                "GatewayTimeout",
                "The request timed out at the gateway. Please retry.",
            ),
        })
    }

    fn batch(&self, call: &Call) -> Reply {
        let now = self.config.clock.now();
        let ctx = self.ctx(call, now);
        let template = "POST /v1.0/$batch";
        let early = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let early = match st.check_token(call, now) {
                Err(msg) => Some(ctx.err(401, "InvalidAuthenticationToken", msg)),
                Ok(_) => unsupported_media_type(call, &ctx).or_else(|| self.fault(&mut st, &ctx)),
            };
            early.map(|r| {
                let r = finish(r, &ctx, Some(0), true);
                st.record(template, call, &r, now);
                r
            })
        };
        if let Some(r) = early {
            return r;
        }
        let reply = match serde_json::from_slice::<BatchRequest>(&call.body) {
            Err(e) => ctx.err(400, "BadRequest", format!("Invalid batch payload: {e}.")),
            Ok(b) if b.requests.len() > MAX_BATCH => ctx.err(
                400,
                "BadRequest",
                format!(
                    "The batch request contains {} requests; at most {MAX_BATCH} are allowed.",
                    b.requests.len()
                ),
            ),
            Ok(b) => match batch_order(&b.requests) {
                Err(msg) => ctx.err(400, "BadRequest", msg),
                Ok(order) => self.run_batch(call, &b.requests, &order, now),
            },
        };
        let reply = finish(reply, &ctx, Some(0), true);
        let now = self.config.clock.now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.record(template, call, &reply, now);
        reply
    }

    /// The sub-requests of a `$batch` in `order` (dependencies first), each through the
    /// pipeline on its own, answered in the order they were listed. Refused without being
    /// carried out, as Graph refuses them: a URL that names the version (400), a body without
    /// `Content-Type` (400), a dependency that failed (424).
    fn run_batch(
        &self,
        outer: &Call,
        items: &[crate::model::BatchRequestItem],
        order: &[usize],
        now: Duration,
    ) -> Reply {
        let mut answers: Vec<Option<BatchResponseItem>> = vec![None; items.len()];
        for &i in order {
            let item = &items[i];
            let sub = sub_call(outer, item);
            let refused = |status: u16, code: &str, msg: String| {
                let ctx = self.ctx(&sub, now);
                finish(ctx.err(status, code, msg), &ctx, None, true)
            };
            let failed_dependency = item.depends_on.iter().flatten().find(|d| {
                answers
                    .iter()
                    .flatten()
                    .any(|a| a.id.eq_ignore_ascii_case(d) && !(200..300).contains(&a.status))
            });
            let has_content_type = item
                .headers
                .iter()
                .flatten()
                .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && !v.trim().is_empty());
            let r = if let Some(d) = failed_dependency {
                refused(
                    424,
                    "FailedDependency",
                    format!("The request could not be carried out because request '{d}', on which it depends, failed."),
                )
            } else if names_version(&item.url) {
                refused(
                    400,
                    "BadRequest",
                    format!("Invalid request URL '{}': the URL of a request in a batch is relative to the batch's version, e.g. '/users/{{id}}', not '/v1.0/users/{{id}}'.", item.url.trim()),
                )
            } else if item.body.as_ref().is_some_and(|b| !b.is_null()) && !has_content_type {
                refused(
                    400,
                    "BadRequest",
                    "A request in a batch that has a body must specify its Content-Type header."
                        .into(),
                )
            } else {
                self.call(&sub, false)
            };
            answers[i] = Some(BatchResponseItem {
                id: item.id.clone(),
                status: r.status,
                headers: Some(r.headers.iter().cloned().collect()),
                body: r.body,
            });
        }
        let responses = answers.into_iter().flatten().collect();
        Reply::json(
            200,
            serde_json::to_value(BatchResponse { responses }).unwrap_or(Value::Null),
        )
    }

    /// `/_emulator/...`: inspection (GET), the partner's side of an invitation (`POST
    /// /_emulator/users/{id}/redeem`) and an administrator's changes (`POST
    /// /_emulator/users/{id}`); no token, not counted.
    pub fn inspect(&self, call: &Call) -> Reply {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let segs: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
        let not_found = |id: &str| {
            Reply::json(
                404,
                json!({"error": {"code": "Request_ResourceNotFound", "message": format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present.")}}),
            )
        };
        match (call.method.as_str(), segs.as_slice()) {
            ("POST", ["_emulator", "users", id, "redeem"]) => match st.index.user(id) {
                Some(pos) => {
                    let stamp = self
                        .wall(self.config.clock.now())
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    st.redeem(pos, &stamp)
                }
                None => not_found(id),
            },
            ("DELETE", ["_emulator", "users", id]) => match st.index.user(id) {
                Some(pos) => {
                    st.remove_user(pos);
                    Reply::empty(204)
                }
                None => not_found(id),
            },
            (_, ["_emulator", "users", _, "redeem"]) => Reply::json(
                405,
                json!({"error": {"code": "MethodNotAllowed", "message": "Redeem with POST."}}),
            ),
            ("GET", ["_emulator", "invitations"]) => Reply::json(200, json!({"value": st.invitations})),
            ("GET", ["_emulator", "patches"]) => Reply::json(200, json!({"value": st.patches})),
            ("GET", ["_emulator", "secrets"]) => Reply::json(200, json!({"value": st.secrets})),
            ("GET", ["_emulator", "revocations"]) => {
                Reply::json(200, json!({"value": st.revocations}))
            }
            ("GET", ["_emulator", "conversions-back"]) => {
                Reply::json(200, json!({"value": st.conversions_back}))
            }
            ("POST", ["_emulator", "users", id]) => match st.index.user(id) {
                Some(pos) => super::credentials::admin_set(&mut st, pos, &call.body),
                None => not_found(id),
            },
            ("GET", ["_emulator", "stats"]) => Reply::json(200, self.stats_json(&st)),
            ("GET", ["_emulator", "requests"]) => Reply::json(200, json!({"value": st.log})),
            ("GET", ["_emulator", "users", id]) => match st.index.user(id) {
                Some(pos) => Reply::json(
                    200,
                    serde_json::to_value(&st.tenant.users[pos]).unwrap_or(Value::Null),
                ),
                None => not_found(id),
            },
            ("GET", _) => Reply::json(404, json!({"error": {"code": "NotFound", "message": format!("No inspection endpoint at '{}'.", call.path)}})),
            _ => Reply::json(
                405,
                json!({"error": {"code": "MethodNotAllowed", "message": "Inspection endpoints are GET only, except POST /_emulator/users/{id} and its /redeem and DELETE /_emulator/users/{id}."}}),
            ),
        }
        .with_header("Content-Type", "application/json")
    }
}

impl State {
    /// Replace the user at `pos`, keeping the index and the change log in step.
    pub fn set_user(&mut self, pos: usize, next: User) {
        let old = std::mem::replace(&mut self.tenant.users[pos], next);
        let mask = delta::changed_mask(&old, &self.tenant.users[pos]);
        if mask != 0 {
            self.index.update_user(pos, &old, &self.tenant.users[pos]);
            self.changes.record(pos, mask);
        }
    }

    /// A new user (an invited guest); its position.
    pub fn add_user(&mut self, user: User) -> usize {
        let pos = self.tenant.users.len();
        self.index.add_user(pos, &user);
        self.tenant.users.push(user);
        self.changes.record(pos, delta::ALL);
        pos
    }

    /// Delete the user at `pos`, as an administrator would (it goes to deleted items).
    pub fn remove_user(&mut self, pos: usize) {
        if self.removed.insert(pos) {
            let u = self.tenant.users[pos].clone();
            self.index.remove_user(pos, &u);
            self.changes.record(pos, delta::ALL);
        }
    }

    /// The partner redeems: `PendingAcceptance` becomes `Accepted` with its change time; 409
    /// for a user never invited (or whose invitation was not applied). Redeeming twice keeps
    /// the first acceptance.
    pub(super) fn redeem(&mut self, pos: usize, stamp: &str) -> Reply {
        let u = &self.tenant.users[pos];
        match u.external_user_state.as_deref() {
            None => Reply::json(
                409,
                json!({"error": {"code": "Conflict", "message": format!("User '{}' has no invitation to redeem.", u.id)}}),
            ),
            Some("Accepted") => Reply::json(200, serde_json::to_value(u).unwrap_or(Value::Null)),
            Some(_) => {
                let mut next = u.clone();
                next.external_user_state = Some("Accepted".into());
                next.external_user_state_change_date_time = Some(stamp.to_string());
                self.set_user(pos, next);
                Reply::json(
                    200,
                    serde_json::to_value(&self.tenant.users[pos]).unwrap_or(Value::Null),
                )
            }
        }
    }
}

impl Shared {
    /// `/_emulator/stats`: the tenant's counters and the most requests answered at once.
    pub fn stats_json(&self, st: &State) -> Value {
        let mut stats = st.stats_json();
        stats["maxInFlight"] = json!(self.max_in_flight.load(Ordering::SeqCst));
        stats
    }
}

impl State {
    pub fn stats_json(&self) -> Value {
        json!({
            "requests": self.stats,
            "throttled": self.throttled,
            "peakRequestsPerSecond": self.peak_per_second,
            "faults": self.faults,
            "lostResponses": self.lost,
            "invitations": self.invitations.len(),
        })
    }
}

/// Graph's `Content-Type` on every answer: Microsoft's SDKs read the OData parameters.
pub const GRAPH_CONTENT_TYPE: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Graph's challenge on a 401: some clients (the SDKs' auth handlers) look for it before they
/// renew a token.
const WWW_AUTHENTICATE: &str = "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"";

/// Whether `path` is Graph's (as opposed to the token endpoint's or the managed identity's):
/// only Graph's answers carry the OData headers.
fn is_graph_path(path: &str) -> bool {
    path == "/v1.0" || path.starts_with("/v1.0/") || path.starts_with("/beta/")
}

/// Standard headers on every answer: `request-id`, `client-request-id` (the client's, or the
/// request id), and for Graph's answers the OData `Content-Type`, `OData-Version` and, on a
/// 401, `WWW-Authenticate`.
fn finish(reply: Reply, ctx: &Ctx, ru: Option<u64>, graph: bool) -> Reply {
    let content_type = if graph {
        GRAPH_CONTENT_TYPE
    } else {
        "application/json"
    };
    let mut r = reply
        .with_header("request-id", ctx.request_id.clone())
        .with_header("client-request-id", ctx.client_request_id.clone())
        .with_header("Content-Type", content_type);
    if graph {
        r = r.with_header("OData-Version", "4.0");
        if r.status == 401 {
            r = r.with_header("WWW-Authenticate", WWW_AUTHENTICATE);
        }
    }
    if let Some(ru) = ru {
        r = r.with_header("x-ms-resource-unit", ru.to_string());
    }
    r
}

/// Graph reads request bodies as JSON only: a POST, PATCH or PUT with a body and no
/// `Content-Type: application/json` is refused (415) before anything is carried out. A
/// request without a body (`revokeSignInSessions`) needs none.
fn unsupported_media_type(call: &Call, ctx: &Ctx) -> Option<Reply> {
    let with_body = matches!(call.method.as_str(), "POST" | "PATCH" | "PUT")
        && !call.body.iter().all(u8::is_ascii_whitespace);
    let json = call.header("content-type").is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    (with_body && !json).then(|| {
        ctx.err(
            415,
            "UnsupportedMediaType",
            "The request body must be sent with the header 'Content-Type: application/json'.",
        )
    })
}

/// The order a batch's sub-requests are carried out in: as listed, except that a request
/// comes after those it depends on. A batch Graph refuses as a whole (400) is the message why:
/// more than one request with the same id (compared case-insensitively), a `dependsOn` naming
/// no request of the batch, or dependencies in a cycle.
fn batch_order(items: &[crate::model::BatchRequestItem]) -> Result<Vec<usize>, String> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if ids.insert(item.id.to_lowercase(), i).is_some() {
            return Err(format!(
                "The batch request contains more than one request with the id '{}'; request ids must be unique (case-insensitive).",
                item.id
            ));
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(items.len());
    for item in items {
        let mut mine = Vec::new();
        for d in item.depends_on.iter().flatten() {
            match ids.get(&d.to_lowercase()) {
                Some(&j) => mine.push(j),
                None => {
                    return Err(format!(
                        "Request '{}' depends on '{d}', which is not a request of this batch.",
                        item.id
                    ))
                }
            }
        }
        deps.push(mine);
    }
    let mut order = Vec::with_capacity(items.len());
    let mut done = vec![false; items.len()];
    // Each pass places at least one request, or the rest depend on each other.
    while order.len() < items.len() {
        let before = order.len();
        for i in 0..items.len() {
            if !done[i] && deps[i].iter().all(|&j| done[j]) {
                done[i] = true;
                order.push(i);
            }
        }
        if order.len() == before {
            return Err("The dependsOn of the batch's requests form a cycle.".into());
        }
    }
    Ok(order)
}

/// Whether a sub-request URL names a version (`/v1.0/users`, `beta/users`) or is absolute:
/// Graph takes only URLs relative to the batch's version.
fn names_version(url: &str) -> bool {
    let rel = url.trim().trim_start_matches('/').to_ascii_lowercase();
    rel.starts_with("http:")
        || rel.starts_with("https:")
        || ["v1.0", "beta"].iter().any(|v| {
            rel == *v || rel.starts_with(&format!("{v}/")) || rel.starts_with(&format!("{v}?"))
        })
}

fn sub_call(outer: &Call, item: &crate::model::BatchRequestItem) -> Call {
    let url = item.url.trim();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let path = format!("/v1.0/{}", path.trim_start_matches('/'));
    let mut headers: HashMap<String, String> = item
        .headers
        .iter()
        .flatten()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    // The batch's own credentials and host: links in sub-responses name the host called.
    for name in ["authorization", "host"] {
        if let Some(v) = outer.header(name) {
            headers.insert(name.into(), v.to_string());
        }
    }
    Call {
        origin: outer.origin.clone(),
        method: item.method.to_ascii_uppercase(),
        path: percent_decode(&path),
        query: url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        headers,
        body: item
            .body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default(),
    }
}

/// Decode `%XX` escapes of a URL path (malformed escapes are kept as they are).
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `Retry-After` of a throttled answer: whole seconds rounded up, or with
/// [`EmulatorConfig::fractional_retry_after`] the wait in seconds to the millisecond (at least
/// `0.001`), as some of Graph's answers give it.
fn retry_after_value(config: &EmulatorConfig, wait: Duration) -> String {
    if config.fractional_retry_after {
        format!("{:.3}", wait.as_secs_f64().max(0.001))
    } else {
        retry_after_secs(wait).to_string()
    }
}

/// `Retry-After` of an injected 503: whole seconds from 1 to the configured maximum, as Graph
/// sends them; below a second (tests), a fraction of the maximum, as `$batch` answers carry.
fn fault_retry_after(rng: &mut impl Rng, config: &super::EmulatorConfig) -> String {
    let max = config.fault_retry_after_max.as_secs_f64();
    if max >= 1.0 {
        rng.random_range(1..=max as u64).to_string()
    } else {
        format!("{:.3}", rng.random_range(max / 3.0..=max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_templates() {
        let (r, t) = route("GET", "/v1.0/users/abc").ok().unwrap();
        assert_eq!(r, Route::GetUser("abc".into()));
        assert_eq!(t, "GET /v1.0/users/{id}");
        let (r, t) = route(
            "GET",
            "/v1.0/groups/g/transitiveMembers/microsoft.graph.user",
        )
        .ok()
        .unwrap();
        assert_eq!(
            r,
            Route::Members {
                group: "g".into(),
                transitive: true,
                cast: true
            }
        );
        assert_eq!(
            t,
            "GET /v1.0/groups/{id}/transitiveMembers/microsoft.graph.user"
        );
        let (_, t) = route("POST", "/tid/oauth2/v2.0/token").ok().unwrap();
        assert_eq!(t, "POST /{tenant}/oauth2/v2.0/token");
        assert!(route("DELETE", "/v1.0/users/x").is_err());
        assert!(route("GET", "/v1.0/applications").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("/v1.0/users/a%40b.com"),
            "/v1.0/users/a@b.com"
        );
        assert_eq!(percent_decode("%2"), "%2");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
