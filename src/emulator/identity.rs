//! Who a token speaks for and what it may do: JWT access tokens carrying `tid`, `appid` and
//! `roles` (app-only) or `scp` (delegated), the device-code and refresh-token grants, the
//! managed-identity endpoints (App Service shape and instance-metadata shape), the permission
//! check every Graph endpoint goes through (403 `Authorization_RequestDenied`), and the tenant's
//! authorization policy (`allowInvitesFrom`); and the token endpoint itself, as MSAL calls it: the
//! client secret in the form body or as HTTP Basic, msal-node's `device_code` grant spelling,
//! and delegated answers carrying `id_token` and `client_info` (base64url `{"uid","utid"}`).

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use super::auth::{self, check_tenant, Refusal, TokenRequest};
use super::discovery;
use super::routes::{Call, Ctx, Reply, Route, Shared, State, TokenInfo};

/// Microsoft Graph Command Line Tools: a Microsoft public client present in every tenant.
pub const GRAPH_CLI_CLIENT_ID: &str = "14d82eec-204b-4c2f-b7e8-296a70dab67e";
/// The managed identity's client id in the emulator.
pub const MANAGED_IDENTITY_CLIENT_ID: &str = "5a1b7c3e-0000-4000-8000-00000000a11d";
/// Directory role template id of Guest Inviter, carried in `wids` of the signed-in user.
pub const GUEST_INVITER_ROLE: &str = "95e79109-95c0-4d8e-aee3-d01accf2d47b";
pub const USER_ADMINISTRATOR_ROLE: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";
pub const PRIVILEGED_AUTHENTICATION_ADMINISTRATOR_ROLE: &str =
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13";
pub const GLOBAL_ADMINISTRATOR_ROLE: &str = "62e90394-69f5-4237-9190-012177145e10";

/// Directory roles by display name and Microsoft's role template id (the id tokens carry in
/// `wids`, the same in every tenant). Holders of any of them but Guest Inviter are "admins" for
/// password resets.
pub const DIRECTORY_ROLES: &[(&str, &str)] = &[
    ("Global Administrator", GLOBAL_ADMINISTRATOR_ROLE),
    ("User Administrator", USER_ADMINISTRATOR_ROLE),
    (
        "Privileged Authentication Administrator",
        PRIVILEGED_AUTHENTICATION_ADMINISTRATOR_ROLE,
    ),
    (
        "Authentication Administrator",
        "c4e39bd9-1100-46d3-8c65-fb160da0071f",
    ),
    (
        "Helpdesk Administrator",
        "729827e3-9c14-49f7-bb1b-9608f156bbb8",
    ),
    ("Guest Inviter", GUEST_INVITER_ROLE),
];

/// The template id of a directory role named by its display name (case-insensitive), or given
/// as a template id already.
pub fn role_template_id(name: &str) -> Option<&'static str> {
    let name = name.trim();
    DIRECTORY_ROLES
        .iter()
        .find(|(n, id)| n.eq_ignore_ascii_case(name) || id.eq_ignore_ascii_case(name))
        .map(|(_, id)| *id)
}
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// msal-node's spelling of the same grant (`GrantType.DEVICE_CODE_GRANT`), which Entra accepts.
const DEVICE_CODE_GRANT_SHORT: &str = "device_code";
/// Scopes that ask for a sign-in, not for an API: never carried in an access token's `scp`.
const OIDC_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];
const DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(900);
const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

/// What one access token was issued for.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub app_id: String,
    /// Application permissions (`roles`) or delegated scopes (`scp`).
    pub permissions: Vec<String>,
    /// The signed-in user's UPN for a delegated token.
    pub user: Option<String>,
    /// Directory role template ids the caller holds (`wids`): the app's service principal's
    /// for app-only tokens, the signed-in user's for delegated ones.
    pub wids: Vec<String>,
}

impl Grant {
    pub(super) fn has_any(&self, wanted: &[&str]) -> bool {
        self.permissions
            .iter()
            .any(|p| wanted.iter().any(|w| p.eq_ignore_ascii_case(w)))
    }

    pub(super) fn holds_role(&self, wanted: &[&str]) -> bool {
        self.wids
            .iter()
            .any(|r| wanted.iter().any(|w| r.eq_ignore_ascii_case(w)))
    }
}

struct DeviceCode {
    tenant: String,
    client_id: String,
    /// The scopes asked for at the device-code request (`openid` there earns an `id_token`).
    scope: String,
    polls: u32,
    issued_at: Duration,
    last_poll: Option<Duration>,
}

/// The identity side of the emulator's mutable state.
pub struct IdentityState {
    key: EncodingKey,
    /// Object id of the person the device-code flow signs in (stable for the emulator's life:
    /// MSAL keys its account cache on it through `client_info`).
    admin_oid: String,
    device_codes: HashMap<String, DeviceCode>,
    /// Refresh token → the grant it renews (rotated on each use, as Entra does).
    refresh_tokens: HashMap<String, Grant>,
}

impl Default for IdentityState {
    fn default() -> Self {
        let secret: [u8; 32] = rand::random();
        IdentityState {
            key: EncodingKey::from_secret(&secret),
            admin_oid: uuid::Uuid::new_v4().to_string(),
            device_codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
        }
    }
}

fn random_token(bytes: usize) -> String {
    use base64::Engine;
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

impl Shared {
    /// The permissions consented for `client_id`: the tenant file's, else `--app-roles`.
    pub(super) fn granted(&self, st: &State, client_id: &str) -> Vec<String> {
        st.tenant
            .apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
            .and_then(|a| a.roles.clone())
            .unwrap_or_else(|| self.config.app_roles.clone())
    }

    /// A signed JWT for `grant`, remembered so Graph endpoints can check it.
    pub(super) fn issue(&self, st: &mut State, grant: Grant, now: Duration) -> (String, u64) {
        let lifetime = self.config.token_lifetime;
        let iat = self.wall(now).timestamp();
        let tid = st.tenant.tenant_id.clone();
        let mut claims = json!({
            "aud": GRAPH_RESOURCE,
            "iss": format!("https://sts.windows.net/{tid}/"),
            "iat": iat,
            "nbf": iat,
            "exp": iat + lifetime.as_secs() as i64,
            "tid": tid,
            "appid": grant.app_id,
            "oid": uuid::Uuid::new_v4().to_string(),
            "uti": random_token(12),
            "ver": "1.0",
        });
        match &grant.user {
            Some(upn) => {
                claims["scp"] = Value::String(grant.permissions.join(" "));
                claims["upn"] = Value::String(upn.clone());
                claims["idtyp"] = Value::String("user".into());
                claims["wids"] = json!(grant.wids);
            }
            None => {
                claims["roles"] = json!(grant.permissions);
                claims["idtyp"] = Value::String("app".into());
                if !grant.wids.is_empty() {
                    claims["wids"] = json!(grant.wids);
                }
            }
        }
        let token = jsonwebtoken::encode(&Header::default(), &claims, &st.identity.key)
            .expect("HS256 signing cannot fail");
        st.tokens.insert(
            token.clone(),
            TokenInfo {
                app: grant.app_id.clone(),
                expires_at: now + lifetime,
                grant,
            },
        );
        (token, lifetime.as_secs())
    }

    /// Token endpoint answer for an app-only grant.
    pub(super) fn app_token_reply(
        &self,
        st: &mut State,
        client_id: String,
        now: Duration,
    ) -> Reply {
        let grant = Grant {
            permissions: self.granted(st, &client_id),
            app_id: client_id,
            user: None,
            wids: self.config.app_directory_roles.clone(),
        };
        let (token, lifetime) = self.issue(st, grant, now);
        Reply::json(
            200,
            json!({
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }),
        )
    }

    /// A delegated answer. `asked` is what the client asked for (its `scope`, and whether it
    /// sent `client_info=1`): `openid` earns an `id_token`, and either earns `client_info`, as
    /// Entra answers MSAL.
    fn delegated_reply(
        &self,
        st: &mut State,
        grant: Grant,
        asked: &Asked,
        origin: &str,
        now: Duration,
    ) -> Reply {
        let refresh = random_token(48);
        st.identity
            .refresh_tokens
            .insert(refresh.clone(), grant.clone());
        let mut scope: Vec<String> = grant.permissions.clone();
        if asked.wants("offline_access") {
            scope.push("offline_access".into());
        }
        let user = grant.user.clone().unwrap_or_default();
        let client_id = grant.app_id.clone();
        let (token, lifetime) = self.issue(st, grant, now);
        let mut body = json!({
            "token_type": "Bearer",
            "scope": scope.join(" "),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
            "refresh_token": refresh,
        });
        let tid = st.tenant.tenant_id.clone();
        let oid = st.identity.admin_oid.clone();
        if asked.wants("openid") {
            let iat = self.wall(now).timestamp();
            let claims = json!({
                "aud": client_id,
                "iss": format!("{origin}/{tid}/v2.0"),
                "iat": iat,
                "nbf": iat,
                "exp": iat + lifetime as i64,
                "name": "Emulator Administrator",
                "oid": oid,
                "preferred_username": user,
                "sub": random_token(24),
                "tid": tid,
                "ver": "2.0",
            });
            body["id_token"] = Value::String(
                jsonwebtoken::encode(&Header::default(), &claims, &st.identity.key)
                    .expect("HS256 signing cannot fail"),
            );
        }
        if asked.client_info || asked.wants("openid") {
            use base64::Engine;
            let info = json!({"uid": oid, "utid": tid}).to_string();
            body["client_info"] = Value::String(
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(info.as_bytes()),
            );
        }
        Reply::json(200, body)
    }

    /// The delegated permissions consented for the app (`--delegated-scopes`), as `scp` carries
    /// them: without the sign-in scopes.
    fn consented_delegated(&self) -> Vec<String> {
        self.config
            .delegated_scopes
            .iter()
            .filter(|s| !OIDC_SCOPES.iter().any(|o| o.eq_ignore_ascii_case(s)))
            .cloned()
            .collect()
    }

    /// The device-code and refresh-token grants of the token endpoint; `None` for other grants.
    fn other_grant(
        &self,
        st: &mut State,
        form: &HashMap<String, String>,
        ctx: &Ctx,
        origin: &str,
        now: Duration,
    ) -> Option<Reply> {
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let refuse = |r: Refusal| {
            Reply::json(
                r.status,
                serde_json::to_value(r.body(&ctx.date)).unwrap_or(Value::Null),
            )
        };
        match field("grant_type") {
            DEVICE_CODE_GRANT | DEVICE_CODE_GRANT_SHORT => {
                let code = field("device_code").to_string();
                let interval = self.config.device_code_interval;
                let approve_after = self.config.device_code_approve_after;
                let Some(dc) = st.identity.device_codes.get_mut(&code) else {
                    return Some(refuse(Refusal::new(
                        400,
                        "invalid_grant",
                        70000,
                        "The provided value for the input parameter 'device_code' is not valid.",
                    )));
                };
                if now >= dc.issued_at + DEVICE_CODE_LIFETIME {
                    st.identity.device_codes.remove(&code);
                    return Some(refuse(Refusal::new(
                        400,
                        "expired_token",
                        70020,
                        "The provided value for the input parameter 'device_code' is expired.",
                    )));
                }
                let too_soon = dc.last_poll.is_some_and(|last| now < last + interval);
                dc.last_poll = Some(now);
                if too_soon {
                    return Some(refuse(Refusal::new(
                        400,
                        "slow_down",
                        70016,
                        "Polling too often: wait the interval between polls, plus 5 seconds.",
                    )));
                }
                dc.polls += 1;
                if approve_after == 0 || dc.polls < approve_after {
                    return Some(refuse(Refusal::new(
                        400,
                        "authorization_pending",
                        70016,
                        "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                    )));
                }
                let dc = st.identity.device_codes.remove(&code).expect("present");
                let user = self.signed_in_user(st);
                let grant = Grant {
                    permissions: self.consented_delegated(),
                    app_id: dc.client_id,
                    user: Some(user),
                    wids: vec![GUEST_INVITER_ROLE.to_string()],
                };
                let _ = dc.tenant;
                let asked = Asked::new(&format!("{} {}", dc.scope, field("scope")), form);
                Some(self.delegated_reply(st, grant, &asked, origin, now))
            }
            "refresh_token" => {
                let grant = st.identity.refresh_tokens.remove(field("refresh_token"));
                let asked = Asked::new(field("scope"), form);
                Some(match grant {
                    Some(g) if g.app_id.eq_ignore_ascii_case(field("client_id")) => {
                        self.delegated_reply(st, g, &asked, origin, now)
                    }
                    _ => refuse(Refusal::new(
                        400,
                        "invalid_grant",
                        9002313,
                        "Invalid request. Request is malformed or invalid: the refresh token is unknown or was already used.",
                    )),
                })
            }
            _ => None,
        }
    }

    /// The person the device-code flow signs in: the tenant's administrator.
    fn signed_in_user(&self, st: &State) -> String {
        let domain = st
            .tenant
            .domains
            .iter()
            .find(|d| d.is_verified)
            .map(|d| d.id.clone())
            .unwrap_or_else(|| "contoso.onmicrosoft.com".into());
        format!("admin@{domain}")
    }

    /// The non-Graph identity endpoints; `None` for any other request. Template for the stats.
    pub(super) fn identity_endpoint(
        &self,
        st: &mut State,
        call: &Call,
        ctx: &Ctx,
        now: Duration,
    ) -> Option<(Reply, String)> {
        let segs: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
        let origin = self.origin(call);
        match (call.method.as_str(), segs.as_slice()) {
            ("GET", [tenant, "v2.0", ".well-known", "openid-configuration"]) => Some((
                discovery::openid_configuration(st, &origin, tenant, true, &ctx.date),
                "GET /{tenant}/v2.0/.well-known/openid-configuration".into(),
            )),
            ("GET", [tenant, ".well-known", "openid-configuration"]) => Some((
                discovery::openid_configuration(st, &origin, tenant, false, &ctx.date),
                "GET /{tenant}/.well-known/openid-configuration".into(),
            )),
            ("GET", ["common", "discovery", "instance"]) => Some((
                discovery::instance_discovery(&origin, call.q("authorization_endpoint"), &ctx.date),
                "GET /common/discovery/instance".into(),
            )),
            ("POST", [tenant, "oauth2", "v2.0", "devicecode"]) => Some((
                self.device_code(st, call, ctx, tenant, now),
                "POST /{tenant}/oauth2/v2.0/devicecode".into(),
            )),
            ("GET", ["msi", "token"]) => Some((
                self.app_service_identity(st, call, now),
                "GET /msi/token".into(),
            )),
            ("GET", ["metadata", "identity", "oauth2", "token"]) => Some((
                self.instance_metadata_identity(st, call, now),
                "GET /metadata/identity/oauth2/token".into(),
            )),
            _ => None,
        }
    }

    fn device_code(
        &self,
        st: &mut State,
        call: &Call,
        ctx: &Ctx,
        tenant: &str,
        now: Duration,
    ) -> Reply {
        let form: HashMap<String, String> = url::form_urlencoded::parse(&call.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let refuse = |r: Refusal| {
            Reply::json(
                r.status,
                serde_json::to_value(r.body(&ctx.date)).unwrap_or(Value::Null),
            )
        };
        if let Err(r) = check_tenant(&st.tenant, tenant) {
            return refuse(r);
        }
        let client_id = form.get("client_id").cloned().unwrap_or_default();
        let known = client_id.eq_ignore_ascii_case(GRAPH_CLI_CLIENT_ID)
            || st
                .tenant
                .apps
                .iter()
                .any(|a| a.client_id.eq_ignore_ascii_case(&client_id));
        if !known {
            return refuse(Refusal::new(
                400,
                "unauthorized_client",
                700016,
                format!("Application with identifier '{client_id}' was not found in the directory '{}'.", st.tenant.display_name),
            ));
        }
        let device_code = random_token(48);
        let user_code: String = (0..9)
            .map(|_| char::from(b'A' + rand::random::<u8>() % 26))
            .collect();
        st.identity.device_codes.insert(
            device_code.clone(),
            DeviceCode {
                tenant: tenant.to_string(),
                client_id,
                scope: form.get("scope").cloned().unwrap_or_default(),
                polls: 0,
                issued_at: now,
                last_poll: None,
            },
        );
        let verification_uri = "https://microsoft.com/devicelogin";
        Reply::json(
            200,
            json!({
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": verification_uri,
                "expires_in": DEVICE_CODE_LIFETIME.as_secs(),
                "interval": self.config.device_code_interval.as_secs(),
                "message": format!("To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."),
            }),
        )
    }

    /// The answer of a managed-identity endpoint: the refusal of a resource other than Graph, or
    /// a token of the managed identity spelled by `answer` from the token, its lifetime in
    /// seconds and when it expires (Unix seconds).
    fn managed_identity_answer(
        &self,
        st: &mut State,
        call: &Call,
        now: Duration,
        answer: impl FnOnce(String, u64, i64) -> Value,
    ) -> Reply {
        if let Some(bad) = bad_resource(call) {
            return bad;
        }
        let grant = Grant {
            app_id: MANAGED_IDENTITY_CLIENT_ID.into(),
            permissions: self.granted(st, MANAGED_IDENTITY_CLIENT_ID),
            user: None,
            wids: self.config.app_directory_roles.clone(),
        };
        let (token, lifetime) = self.issue(st, grant, now);
        let expires_on = self.wall(now).timestamp() + lifetime as i64;
        Reply::json(200, answer(token, lifetime, expires_on))
    }

    /// App Service / Automation: `GET {IDENTITY_ENDPOINT}?resource=…&api-version=2019-08-01`
    /// with the `X-IDENTITY-HEADER` secret.
    fn app_service_identity(&self, st: &mut State, call: &Call, now: Duration) -> Reply {
        if call.header("x-identity-header") != Some(self.config.identity_header.as_str()) {
            return Reply::json(
                401,
                json!({"statusCode": 401, "message": "Unauthorized: the X-IDENTITY-HEADER header is missing or wrong."}),
            );
        }
        self.managed_identity_answer(st, call, now, |token, _, expires_on| {
            json!({
                "access_token": token,
                "expires_on": expires_on.to_string(),
                "resource": GRAPH_RESOURCE,
                "token_type": "Bearer",
                "client_id": MANAGED_IDENTITY_CLIENT_ID,
            })
        })
    }

    /// Virtual machines: `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…`
    /// with `Metadata: true`.
    fn instance_metadata_identity(&self, st: &mut State, call: &Call, now: Duration) -> Reply {
        if call.header("metadata") != Some("true") {
            return Reply::json(
                400,
                json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
            );
        }
        self.managed_identity_answer(st, call, now, |token, lifetime, expires_on| {
            json!({
                "access_token": token,
                "refresh_token": "",
                "expires_in": lifetime.to_string(),
                "expires_on": expires_on.to_string(),
                "not_before": (expires_on - lifetime as i64).to_string(),
                "resource": GRAPH_RESOURCE,
                "token_type": "Bearer",
                "client_id": MANAGED_IDENTITY_CLIENT_ID,
            })
        })
    }

    /// The permission check in front of every Graph endpoint, and the invitation policy.
    pub(super) fn authorize(
        &self,
        st: &State,
        route: &Route,
        call: &Call,
        ctx: &Ctx,
    ) -> Option<Reply> {
        let token = call
            .header("authorization")
            .and_then(|a| a.split_once(' '))
            .map(|(_, t)| t.trim())
            .unwrap_or("");
        let grant = &st.tokens.get(token)?.grant;
        let denied = || {
            Some(ctx.err(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ))
        };
        let needed: &[&str] = match route {
            Route::ListUsers | Route::UsersDelta | Route::GetUser(_) => &[
                "User.Read.All",
                "User.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            Route::PatchUser(key) => return self.authorize_patch(st, grant, call, ctx, key),
            Route::RevokeSessions(_) => &[
                "User.RevokeSessions.All",
                "User.ReadWrite.All",
                "Directory.ReadWrite.All",
            ],
            Route::ConvertBack(_) => {
                // Delegated callers need at least User Administrator (Graph's documentation); the
                // emulator's signed-in user holds Guest Inviter only.
                if grant.user.is_some()
                    && !grant.holds_role(&[USER_ADMINISTRATOR_ROLE, GLOBAL_ADMINISTRATOR_ROLE])
                {
                    return denied();
                }
                &["User-ConvertToInternal.ReadWrite.All", "User.ReadWrite.All"]
            }
            Route::BetaListUsers | Route::BetaGetUser(_) => &[
                "User.Read.All",
                "User.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            Route::EmailOtpPolicy => &["Policy.Read.All", "Policy.ReadWrite.AuthenticationMethod"],
            Route::DirectoryRoles => &[
                "RoleManagement.Read.Directory",
                "RoleManagement.ReadWrite.Directory",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            Route::CrossTenantDefault => &["Policy.Read.All", "Policy.ReadWrite.CrossTenantAccess"],
            Route::Members { .. } => &[
                "GroupMember.Read.All",
                "Group.Read.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            Route::Domains => &[
                "Domain.Read.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            Route::Invite => &["User.Invite.All", "Directory.ReadWrite.All"],
            Route::AuthorizationPolicy => &["Policy.Read.All", "Policy.ReadWrite.Authorization"],
            Route::Token(_) | Route::Batch => return None,
        };
        if !grant.has_any(needed) {
            return denied();
        }
        if matches!(route, Route::Invite)
            && !invites_allowed(&self.config.allow_invites_from, grant)
        {
            return Some(ctx.err(
                403,
                "Authorization_RequestDenied",
                "Guest invitations not allowed for your company. Contact your company administrator for more details.",
            ));
        }
        None
    }

    /// `GET /v1.0/policies/authorizationPolicy`.
    pub(super) fn authorization_policy(&self, st: &State) -> Reply {
        Reply::json(
            200,
            json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#policies/authorizationPolicy/$entity",
                "id": "authorizationPolicy",
                "displayName": "Authorization Policy",
                "description": "Used to manage authorization related settings across the company.",
                "allowInvitesFrom": self.config.allow_invites_from,
                "allowedToSignUpEmailBasedSubscriptions": true,
                "allowEmailVerifiedUsersToJoinOrganization": false,
                "blockMsolPowerShell": false,
                "guestUserRoleId": "10dae51f-b6af-4016-8d66-8c2a99b929b3",
                "defaultUserRolePermissions": {
                    "allowedToCreateApps": true,
                    "allowedToCreateSecurityGroups": true,
                    "allowedToReadOtherUsers": true
                },
                "tenantId": st.tenant.tenant_id,
            }),
        )
    }

    /// `scheme://host` the client called: links and token audiences are built on it.
    pub(super) fn origin(&self, call: &Call) -> String {
        if call.origin.is_empty() {
            self.base_url.clone()
        } else {
            call.origin.clone()
        }
    }

    /// `POST /{tenant}/oauth2/v2.0/token`: every grant the emulator serves.
    pub(super) fn token(
        &self,
        st: &mut State,
        call: &Call,
        ctx: &Ctx,
        segment: &str,
        now: Duration,
    ) -> Reply {
        let mut form: HashMap<String, String> = url::form_urlencoded::parse(&call.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some(refusal) = basic_credentials(call, &mut form) {
            return Reply::json(
                refusal.status,
                serde_json::to_value(refusal.body(&ctx.date)).unwrap_or(Value::Null),
            );
        }
        let origin = self.origin(call);
        let mut audiences = Vec::new();
        for base in [&self.base_url, &origin] {
            audiences.push(format!("{base}/{segment}/oauth2/v2.0/token"));
            audiences.push(format!("{base}/{}/oauth2/v2.0/token", st.tenant.tenant_id));
        }
        let req = TokenRequest {
            tenant_segment: segment,
            form: &form,
            audiences,
            unix_now: self.wall(now).timestamp(),
        };
        if let Some(reply) = self.other_grant(st, &form, ctx, &origin, now) {
            return reply;
        }
        match auth::authenticate(&st.tenant, &req) {
            Ok(app) => self.app_token_reply(st, app, now),
            Err(refusal) => {
                let body = refusal.body(&ctx.date);
                Reply::json(
                    refusal.status,
                    serde_json::to_value(body).unwrap_or(Value::Null),
                )
            }
        }
    }
}

/// Whether the tenant's `allowInvitesFrom` lets this token invite. Apps invite only when members
/// may; the emulator's signed-in user holds the Guest Inviter role.
pub fn invites_allowed(allow_invites_from: &str, grant: &Grant) -> bool {
    match allow_invites_from {
        "none" => false,
        "adminsAndGuestInviters" => grant.user.is_some(),
        _ => true,
    }
}

fn bad_resource(call: &Call) -> Option<Reply> {
    let resource = call.q("resource").unwrap_or("").trim_end_matches('/');
    (resource != GRAPH_RESOURCE).then(|| {
        Reply::json(
            400,
            json!({"error": "invalid_resource", "error_description": format!("AADSTS500011: The resource principal named {resource} was not found in the tenant.")}),
        )
    })
}

/// What a delegated sign-in asked for: its scopes, and MSAL's `client_info=1`.
struct Asked {
    scopes: Vec<String>,
    client_info: bool,
}

impl Asked {
    fn new(scope: &str, form: &HashMap<String, String>) -> Asked {
        Asked {
            scopes: scope.split_whitespace().map(str::to_string).collect(),
            client_info: form.get("client_info").is_some_and(|v| v == "1"),
        }
    }

    fn wants(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s.eq_ignore_ascii_case(scope))
    }
}

/// HTTP Basic client authentication (RFC 6749 §2.3.1: `client_id:client_secret`, each
/// form-encoded, then base64), which MSAL and other OAuth clients may send instead of form
/// fields: folded into the form. A client id in both places that differ is refused as Entra does.
fn basic_credentials(call: &Call, form: &mut HashMap<String, String>) -> Option<Refusal> {
    use base64::Engine;
    let value = call.header("authorization")?;
    let (kind, encoded) = value.trim().split_once(' ')?;
    if !kind.eq_ignore_ascii_case("basic") {
        return None;
    }
    let malformed = || {
        Refusal::new(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided: the Authorization header is not valid HTTP Basic credentials.",
        )
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Some(malformed());
    };
    let unform = |s: &str| -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (id, secret) = (unform(id), unform(secret));
    if let Some(body_id) = form.get("client_id") {
        if !body_id.eq_ignore_ascii_case(&id) {
            return Some(Refusal::new(
                400,
                "invalid_request",
                50148,
                "The client_id in the Authorization header does not match the client_id in the request body.",
            ));
        }
    }
    form.insert("client_id".into(), id);
    form.entry("client_secret".into()).or_insert(secret);
    None
}
