//! The simulated tenant: a loopback HTTP server that behaves like Microsoft Graph and the token
//! endpoint for the calls this tool makes (docs/emulator.md), with Graph-shaped throttling
//! and injectable faults. It shares only `model` with the rest of the crate: its settings are the
//! plain [`EmulatorConfig`], which the commands fill from their command-line flags.
//!
//! Files: `tenant` (data and tenant files), `generate` (synthetic tenants), `filter` (OData
//! `$filter`), `delta` (change tracking, `users/delta`), `throttle` (clock and token buckets),
//! `auth` (token endpoint decisions), `identity` (JWT access tokens, permissions, device code,
//! managed identity, invitation policy, directory roles in `wids`), `credentials` (password
//! resets, `revokeSignInSessions`, the beta conversion back, the redemption policies),
//! `routes` (pipeline, `$batch`, inspection), `handlers` (endpoints), `server` (connections),
//! `tls` (`--tls`: the generated CA and certificate), `discovery` (OpenID and instance discovery).
//!
//! Per request: token (401) → permission (403) → throttling (429, nothing carried out) →
//! injected fault (500/503/504, nothing carried out) → handler → for writes, maybe a lost response
//! (carried out, connection dropped). Faults are not injected on the token endpoint, which is not throttled either.

mod auth;
mod credentials;
mod delta;
mod discovery;
mod filter;
mod generate;
mod handlers;
mod identity;
mod routes;
mod server;
mod tenant;
mod throttle;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::SeedableRng;

pub use server::BODY_LIMIT;
pub use tenant::{App, AppCertificate, FederatedCredential, Tenant, TenantGroup};
pub use throttle::Clock;

use routes::{Shared, State};

/// Limits and faults of an emulator run. [`EmulatorConfig::new`] gives Graph's documented figures
/// and no faults.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub tenant: Tenant,
    /// Added before each answer.
    pub latency: Duration,
    /// Resource units per 10 s per app+tenant. `None`: by tenant size (<50 users 3,500, 50–500
    /// 5,000, >500 8,000); `Some(0)`: unlimited.
    pub ru_per_10s: Option<u64>,
    /// Writes per 150 s per app+tenant (0 = unlimited).
    pub writes_per_150s: u64,
    /// Invitations per 5 s per tenant (0 = unlimited).
    pub invitations_per_5s: u64,
    /// Share of requests answered 500/503/504 without being carried out.
    pub fault_rate: f64,
    /// Share of writes carried out whose connection is then dropped before the answer.
    pub lost_response_rate: f64,
    /// The longest `Retry-After` an injected 503 asks for (Graph's are seconds: 1 to 3 s by
    /// default). Lowered by tests so a run under 20% faults is not mostly asleep.
    pub fault_retry_after_max: Duration,
    /// Share of accepted invitations answered 201 whose change never reaches the user (as
    /// reported of the real service); `/_emulator/invitations` marks them `applied: false`.
    pub not_applied_rate: f64,
    /// Share of accepted invitations that the next read of the user (`GET /users/{id}`) does not
    /// show yet: Graph's directory replicates, and a read served by a replica behind the write
    /// sees the user as it was. The invitation has taken effect: inviting the user again is
    /// refused "already a B2B collaboration user", and the read after that shows it.
    pub lagging_read_rate: f64,
    /// Every invitation answers 403 "Invitations are blocked for this directory…".
    pub block_invitations: bool,
    pub token_lifetime: Duration,
    /// Seed of the fault RNG.
    pub seed: u64,
    pub clock: Clock,
    /// Multiplies every bucket's size and refill rate.
    pub bucket_scale: f64,
    /// Every Nth invitation request is answered 429 `InvitationLimitExceeded` with
    /// `Retry-After: 1`, whatever the buckets hold (0 = never). Throttling by count, on top of
    /// the buckets: a test with scaled buckets still sees a known number of 429s however fast or
    /// slow the machine is, without waiting on Graph's real refill.
    pub throttle_every_nth_invitation: u64,
    /// Application permissions of apps whose tenant-file entry names none, and of the managed
    /// identity (delegated tokens carry [`EmulatorConfig::delegated_scopes`] instead).
    pub app_roles: Vec<String>,
    /// The authorization policy's `allowInvitesFrom`.
    pub allow_invites_from: String,
    /// The device code is approved at this poll (0 = never).
    pub device_code_approve_after: u32,
    /// Least wait between device-code polls (`interval` of the device-code answer).
    pub device_code_interval: Duration,
    /// The `X-IDENTITY-HEADER` secret of the App Service managed-identity endpoint.
    pub identity_header: String,
    /// Directory role template ids the app's service principal holds (`--app-directory-roles`
    /// by display name, see [`directory_role_ids`]): carried in app-only tokens' `wids`.
    pub app_directory_roles: Vec<String>,
    /// A throttled answer's `Retry-After` is the wait to the millisecond (`0.249`), as Graph's
    /// sometimes is, instead of whole seconds rounded up: clients must read both forms.
    pub fractional_retry_after: bool,
    /// Delegated permissions consented for every app (`--delegated-scopes`): a delegated token's
    /// `scp` is this set whatever the client asked, as Entra's tokens carry every consented scope
    /// of the resource, so a scope nobody consented shows as Graph's 403.
    pub delegated_scopes: Vec<String>,
    /// Serve HTTPS with a CA and certificate generated at start (`--tls`).
    pub tls: bool,
}

/// The template ids of directory roles named by display name (comma-separated, as
/// `--app-directory-roles` takes them); an unknown name is an error naming the known ones.
pub fn directory_role_ids(list: &str) -> anyhow::Result<Vec<String>> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|name| {
            identity::role_template_id(name)
                .map(str::to_string)
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        identity::DIRECTORY_ROLES.iter().map(|(n, _)| *n).collect();
                    anyhow::anyhow!(
                        "unknown directory role `{name}`: the emulator knows {}",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// Delegated permissions consented when nothing else is said: what the tool's device-code
/// sign-in needs (docs/usage.md, permissions), plus the sign-in scopes every delegated client gets.
pub const DEFAULT_DELEGATED_SCOPES: &str =
    "User.Read,User.Invite.All,User.ReadWrite.All,Domain.Read.All,GroupMember.Read.All,openid,profile,offline_access";

/// Application permissions the emulator grants when nothing else is said.
pub const DEFAULT_APP_ROLES: &str =
    "User.Invite.All,User.ReadWrite.All,Domain.Read.All,GroupMember.Read.All";

impl EmulatorConfig {
    pub fn new(tenant: Tenant) -> Self {
        EmulatorConfig {
            tenant,
            latency: Duration::ZERO,
            ru_per_10s: None,
            writes_per_150s: 3000,
            invitations_per_5s: 150,
            fault_rate: 0.0,
            lost_response_rate: 0.0,
            not_applied_rate: 0.0,
            lagging_read_rate: 0.0,
            block_invitations: false,
            token_lifetime: Duration::from_secs(3599),
            seed: 1,
            clock: Clock::system(),
            bucket_scale: 1.0,
            throttle_every_nth_invitation: 0,
            fault_retry_after_max: Duration::from_secs(3),
            app_roles: DEFAULT_APP_ROLES.split(',').map(str::to_string).collect(),
            allow_invites_from: "everyone".into(),
            device_code_approve_after: 1,
            device_code_interval: Duration::from_secs(5),
            identity_header: uuid::Uuid::new_v4().to_string(),
            app_directory_roles: Vec::new(),
            fractional_retry_after: false,
            delegated_scopes: DEFAULT_DELEGATED_SCOPES
                .split(',')
                .map(str::to_string)
                .collect(),
            tls: false,
        }
    }

    /// Resource units per 10 s after the tenant-size default (0 = unlimited).
    fn ru_limit(&self) -> u64 {
        self.ru_per_10s.unwrap_or(match self.tenant.users.len() {
            0..50 => 3500,
            50..=500 => 5000,
            _ => 8000,
        })
    }
}

/// A running emulator.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// With `--tls`: the generated CA and where its file was written.
    tls: Option<(tls::Tls, std::path::PathBuf)>,
    shutdown: tokio::sync::watch::Sender<server::Stop>,
    task: tokio::task::JoinHandle<()>,
}

/// Serve `config.tenant` on `listen` (a loopback address; port 0 picks a free one).
pub async fn start(mut config: EmulatorConfig, listen: SocketAddr) -> anyhow::Result<Emulator> {
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "the emulator listens on loopback addresses only, not {listen}"
    );
    config.tenant.check().context("the emulator's tenant")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let tls = match config.tls {
        true => {
            let made = tls::Tls::generate()?;
            let path = tls::ca_file_path(addr.port());
            tls::write_ca(&path, &made.ca_pem)?;
            Some((made, path))
        }
        false => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ru_limit = config.ru_limit();
    let tenant = std::mem::take(&mut config.tenant);
    let state = State {
        index: tenant::Index::build(&tenant),
        changes: delta::Changes::new(tenant.users.len()),
        removed: std::collections::HashSet::new(),
        instance: uuid::Uuid::new_v4().simple().to_string(),
        tenant,
        tokens: HashMap::new(),
        buckets: HashMap::new(),
        invitations: Vec::new(),
        patches: Vec::new(),
        secrets: Vec::new(),
        revocations: Vec::new(),
        conversions_back: Vec::new(),
        lagging: HashMap::new(),
        log: Vec::new(),
        seq: 0,
        stats: BTreeMap::new(),
        throttled: 0,
        invitation_requests: 0,
        faults: 0,
        lost: 0,
        current_second: 0,
        in_current_second: 0,
        peak_per_second: 0,
        rng: rand::rngs::StdRng::seed_from_u64(config.seed),
        identity: Default::default(),
    };
    let shared = Arc::new(Shared {
        config,
        state: Mutex::new(state),
        base_url: format!("{scheme}://{addr}"),
        scheme,
        wall_start: chrono::Utc::now(),
        ru_limit,
        silent: std::sync::atomic::AtomicBool::new(false),
        in_flight: std::sync::atomic::AtomicU64::new(0),
        max_in_flight: std::sync::atomic::AtomicU64::new(0),
    });
    let (tx, rx) = tokio::sync::watch::channel(server::Stop::No);
    let task = tokio::spawn(server::serve(
        listener,
        server::router(Arc::clone(&shared)),
        tls.as_ref().map(|(t, _)| t.acceptor.clone()),
        rx,
    ));
    tracing::info!(%addr, scheme, "emulator listening");
    Ok(Emulator {
        addr,
        shared,
        tls,
        shutdown: tx,
        task,
    })
}

impl Emulator {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Both the Graph URL and the login URL (`https://…` with `--tls`).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// With `--tls`, the generated CA (PEM) a client must trust.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|(t, _)| t.ca_pem.as_str())
    }

    /// With `--tls`, the file holding [`Emulator::ca_pem`] (`SSL_CERT_FILE`); removed by
    /// [`Emulator::shutdown`].
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|(_, p)| p.as_path())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tenant_id(&self) -> String {
        self.state().tenant.tenant_id.clone()
    }

    /// `B2B_GRAPH_URL`, `B2B_LOGIN_URL`, `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
    /// `AZURE_CLIENT_SECRET` of the first app with a secret; with `--tls`, `SSL_CERT_FILE`.
    pub fn client_env(&self) -> Vec<(String, String)> {
        let st = self.state();
        let base = self.base_url();
        let mut env = vec![
            ("B2B_GRAPH_URL".to_string(), base.clone()),
            ("B2B_LOGIN_URL".to_string(), base),
            ("AZURE_TENANT_ID".to_string(), st.tenant.tenant_id.clone()),
        ];
        if let Some(path) = self.ca_file() {
            env.push(("SSL_CERT_FILE".into(), path.display().to_string()));
        }
        let app = st
            .tenant
            .apps
            .iter()
            .find(|a| a.client_secret.is_some())
            .or(st.tenant.apps.first());
        if let Some(app) = app {
            env.push(("AZURE_CLIENT_ID".into(), app.client_id.clone()));
            if let Some(s) = &app.client_secret {
                env.push(("AZURE_CLIENT_SECRET".into(), s.clone()));
            }
        }
        env
    }

    /// Same items as `GET /_emulator/invitations`.
    pub fn invitations(&self) -> Vec<serde_json::Value> {
        self.state().invitations.clone()
    }

    /// The user redeems its invitation, as `POST /_emulator/users/{id}/redeem` does: `None`
    /// for an unknown user, else the HTTP status (200, or 409 when there is nothing to redeem).
    pub fn redeem(&self, id: &str) -> Option<u16> {
        let stamp = self
            .shared
            .wall(self.shared.config.clock.now())
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut st = self.state();
        let pos = st.index.user(id)?;
        Some(st.redeem(pos, &stamp).status)
    }

    /// Delete a user, as `DELETE /_emulator/users/{id}` does (an administrator's deletion: delta
    /// queries then report it `@removed`); false for an unknown user.
    pub fn delete_user(&self, id: &str) -> bool {
        let mut st = self.state();
        match st.index.user(id) {
            Some(pos) => {
                st.remove_user(pos);
                true
            }
            None => false,
        }
    }

    /// Same items as `GET /_emulator/secrets`.
    pub fn secrets(&self) -> Vec<serde_json::Value> {
        self.state().secrets.clone()
    }

    /// Same items as `GET /_emulator/revocations`.
    pub fn revocations(&self) -> Vec<serde_json::Value> {
        self.state().revocations.clone()
    }

    /// Same items as `GET /_emulator/conversions-back`.
    pub fn conversions_back(&self) -> Vec<serde_json::Value> {
        self.state().conversions_back.clone()
    }

    /// Same items as `GET /_emulator/patches`.
    pub fn patches(&self) -> Vec<serde_json::Value> {
        self.state().patches.clone()
    }

    /// The most requests answered at once since the start or the last call (`maxInFlight` of
    /// `/_emulator/stats`), which then starts again from the requests being answered now: a
    /// test measures one command's concurrency after another's.
    pub fn take_max_in_flight(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now = self.shared.in_flight.load(Ordering::SeqCst);
        self.shared.max_in_flight.swap(now, Ordering::SeqCst)
    }

    /// Same as `GET /_emulator/stats`.
    pub fn stats(&self) -> serde_json::Value {
        self.shared.stats_json(&self.state())
    }

    /// The user as the tenant holds it now.
    pub fn user(&self, id: &str) -> Option<crate::model::User> {
        let st = self.state();
        st.index.user(id).map(|pos| st.tenant.users[pos].clone())
    }

    /// `IDENTITY_ENDPOINT`'s value for the App Service managed-identity shape.
    pub fn identity_endpoint(&self) -> String {
        format!("{}/msi/token", self.base_url())
    }

    /// `IDENTITY_HEADER`'s value: the secret the managed-identity endpoint expects.
    pub fn identity_header(&self) -> String {
        self.shared.config.identity_header.clone()
    }

    pub fn clock(&self) -> Clock {
        self.shared.config.clock.clone()
    }

    /// Makes the tenant a black hole (`true`) or answer again (`false`): while silent, Graph
    /// and the token endpoint accept connections and read requests but answer nothing, not even
    /// requests already being handled; inspection endpoints still answer.
    pub fn set_silent(&self, silent: bool) {
        self.shared
            .silent
            .store(silent, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stop accepting and close every connection (and remove the CA file of `--tls`).
    pub async fn shutdown(self) {
        let ca_file = self.ca_file().map(std::path::Path::to_path_buf);
        let _ = self.shutdown.send(server::Stop::Now);
        let _ = self.task.await;
        if let Some(path) = ca_file {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Close the port: stop accepting at once, answer the requests already received, then close
    /// every connection (idle ones at once). Graph going away between two requests: every later
    /// request is refused before it leaves the client. As with any server going away, a request
    /// the client writes on a kept-alive connection in the instant it closes is never read and
    /// never answered: the client cannot tell it from an answer cut off. The tenant and every
    /// record are kept for [`Emulator::reopen_port`].
    pub async fn close_port(&mut self) {
        self.close(server::Stop::Drain).await;
    }

    /// Close the port and cut off every answer in progress (a crash, a network cut): requests
    /// Graph already carried out lose their answer. Kept for [`Emulator::reopen_port`] like
    /// [`Emulator::close_port`].
    pub async fn cut_port(&mut self) {
        self.close(server::Stop::Now).await;
    }

    async fn close(&mut self, how: server::Stop) {
        let _ = self.shutdown.send(how);
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }

    /// Serve again on the same address after [`Emulator::close_port`], with the same tenant,
    /// tokens and records: Graph back after an outage.
    pub async fn reopen_port(&mut self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("binding {} again", self.addr))?;
        let (tx, rx) = tokio::sync::watch::channel(server::Stop::No);
        self.shutdown = tx;
        self.task = tokio::spawn(server::serve(
            listener,
            server::router(Arc::clone(&self.shared)),
            self.tls.as_ref().map(|(t, _)| t.acceptor.clone()),
            rx,
        ));
        tracing::info!(addr = %self.addr, "emulator listening again");
        Ok(())
    }
}
