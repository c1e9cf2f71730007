//! Graph and token endpoint handlers. Each runs under the state lock, after the token,
//! throttling and fault checks of `routes`.
//!
//! Invitation refusals (all `400` unless said otherwise), in the order they are checked:
//! - directory flagged (`block_invitations`): `403 Authorization_RequestDenied` "Invitations are
//!   blocked for this directory due to suspicious activity. …";
//! - unknown property in the body: `BadRequest` "Invalid property 'x'."; missing required
//!   property: `BadRequest` "Property 'x' is required.";
//! - `inviteRedirectUrl` missing or not an absolute http(s) URL: `BadRequest`;
//! - invalid email syntax (Graph's documented local-part rules): `BadRequest` "The email address 'x' is
//!   not valid.";
//! - `@odata.type` naming another type than the object's: `BadRequest` (the SDKs' own
//!   `#microsoft.graph.invitation`, `#microsoft.graph.user` in `invitedUser`, … are accepted);
//! - `resetRedemption` without `invitedUser`: `BadRequest`;
//! - without `invitedUser`, an address a user already holds (mail, otherMails, proxyAddresses or
//!   UPN): `BadRequest` "The invited user already exists in the directory as objectID: {id}" —
//!   only `invitedUser.id` converts, and nobody changes;
//! - `invitedUser.id` unknown: `404 Request_ResourceNotFound`;
//! - already converted (`externalUserState` set or `creationType` Invitation) without
//!   `resetRedemption: true`: `BadRequest` "User invitation failed. The user is already a B2B
//!   collaboration user. …";
//! - `resetRedemption: true` for a user never invited: `BadRequest`; with an address that is
//!   neither the user's `mail` nor in its `otherMails`: `BadRequest` "The email you're using to
//!   invite this user doesn't match any emails on the user object. …"; then only the
//!   verified-domain and address-conflict rules below apply;
//! - `onPremisesUserPrincipalName` set: `BadRequest` "User invitation failed. Invalid request
//!   input.";
//! - enabled Exchange plan: `BadRequest` "B2B users having a mailbox is not supported. …";
//! - `mail` ≠ `invitedUserEmailAddress` (case-insensitive): `BadRequest` "User invitation failed.
//!   The invited user email address must match the user's mail property. …";
//! - email in a verified domain: `BadRequest` "User's email address cannot be in a verified
//!   domain. Please change the user's email to enable conversion to a B2B user.";
//! - another object already has the address (mail, otherMails or proxyAddresses):
//!   `Request_BadRequest` "Another object with the same value for property proxyAddresses
//!   already exists." (details `ObjectConflict`).
//!
//! An accepted invitation answers 201; with `not_applied_rate` a share of them never reaches the
//! user (logged with `applied: false`), as has been reported of the real service.
//!
//! A user converted back to an internal member (`externalUserConvertedOn` set) is refused
//! before any other check with `412 PreconditionFailed`: Graph never converts such a user again.
//!
//! PATCH of a user's `mail` is refused for a mailbox user ("…originated within an external
//! service."), for a synced user ("…on-premises mastered Directory Sync objects…") and, with the
//! same conflict answer as invitations, for an address another object holds.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use rand::{Rng, RngCore};
use serde_json::{json, Map, Value};

use super::filter;
use super::routes::{Call, Ctx, Reply, Shared, State, UserCall};
use crate::model::{Invitation, InvitationRequest, InvitedUserMessageInfo, InvitedUserRef, User};

/// Properties `$select` accepts: the modelled ones, then Graph properties the emulator does not
/// hold (answered `null`).
pub(super) const USER_PROPS: &[&str] = &[
    "id",
    "displayName",
    "userPrincipalName",
    "mail",
    "otherMails",
    "proxyAddresses",
    "accountEnabled",
    "userType",
    "externalUserState",
    "externalUserStateChangeDateTime",
    "creationType",
    "onPremisesSyncEnabled",
    "onPremisesUserPrincipalName",
    "assignedPlans",
    "identities",
    "lastPasswordChangeDateTime",
    "signInSessionsValidFromDateTime",
    "externalUserConvertedOn",
    "onPremisesSecurityIdentifier",
    "onPremisesSamAccountName",
    "givenName",
    "surname",
    "jobTitle",
    "department",
    "companyName",
    "businessPhones",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "usageLocation",
    "createdDateTime",
];
/// Properties only the beta endpoint knows: v1.0 refuses them in `$select` as Graph does.
const BETA_ONLY_PROPS: &[&str] = &["externalUserConvertedOn"];
const DEFAULT_SELECT: &[&str] = &["id", "displayName", "mail", "userPrincipalName"];
const DEFAULT_TOP: usize = 100;
const MAX_TOP: usize = 999;
const SKIP_PREFIX: &str = "emu1:";

fn random_b64(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Parse `$select` into canonical property names.
fn parse_select(call: &Call, ctx: &Ctx) -> Result<Vec<&'static str>, Reply> {
    let Some(sel) = call.q("select") else {
        return Ok(DEFAULT_SELECT.to_vec());
    };
    let mut out = vec!["id"];
    let beta = call.path.starts_with("/beta/");
    for name in sel.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let known = USER_PROPS
            .iter()
            .find(|p| p.eq_ignore_ascii_case(name))
            .filter(|p| beta || !BETA_ONLY_PROPS.contains(p));
        match known {
            Some(p) if !out.contains(p) => out.push(p),
            Some(_) => {}
            None => {
                return Err(ctx.err(
                    400,
                    "BadRequest",
                    format!(
                        "Could not find a property named '{name}' on type 'microsoft.graph.user'."
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// Collections Graph's schema declares non-nullable: an unset one is `[]`, never `null`
/// (Microsoft's SDKs model them as lists and fail on `null`).
const NON_NULLABLE: &[&str] = &[
    "otherMails",
    "proxyAddresses",
    "assignedPlans",
    "identities",
    "businessPhones",
];
/// `createdDateTime` of a user whose tenant file gives none: Graph sets it on every user.
const TENANT_FILE_CREATED: &str = "2021-01-04T08:00:00Z";

pub(super) fn project(u: &User, select: &[&str]) -> Value {
    let full = serde_json::to_value(u).unwrap_or(Value::Null);
    let mut out = Map::new();
    for p in select {
        let v = match full.get(*p) {
            Some(v) if !v.is_null() => v.clone(),
            _ if NON_NULLABLE.contains(p) => json!([]),
            _ if *p == "createdDateTime" => json!(TENANT_FILE_CREATED),
            _ => Value::Null,
        };
        out.insert((*p).to_string(), v);
    }
    Value::Object(out)
}

/// A listing's `$select`, `$top` and `$skiptoken` offset, or the 400 for the first one that is
/// wrong.
fn parse_listing(call: &Call, ctx: &Ctx) -> Result<(Vec<&'static str>, usize, usize), Reply> {
    Ok((
        parse_select(call, ctx)?,
        parse_top(call, ctx)?,
        parse_skip(call, ctx)?,
    ))
}

fn parse_top(call: &Call, ctx: &Ctx) -> Result<usize, Reply> {
    match call.q("top") {
        None => Ok(DEFAULT_TOP),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => Ok(n),
            _ => Err(ctx.err(
                400,
                "Request_BadRequest",
                format!("Invalid page size specified: '{v}'. Must be between 1 and {MAX_TOP} inclusive."),
            )),
        },
    }
}

fn parse_skip(call: &Call, ctx: &Ctx) -> Result<usize, Reply> {
    if call.q("skip").is_some() {
        return Err(ctx.err(
            400,
            "Request_BadRequest",
            "'$skip' is not supported by the service.",
        ));
    }
    let Some(tok) = call.q("skiptoken") else {
        return Ok(0);
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tok)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix(SKIP_PREFIX).and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            ctx.err(
                400,
                "Request_BadRequest",
                "The specified page token value has expired or is invalid.",
            )
        })
}

fn wants_count(call: &Call) -> bool {
    call.q("count")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

impl Shared {
    /// One page of `items` (already filtered), with `@odata.nextLink` and `@odata.count`.
    fn page(
        &self,
        call: &Call,
        context: &str,
        items: Vec<Value>,
        offset: usize,
        top: usize,
    ) -> Reply {
        let total = items.len();
        let value: Vec<Value> = items.into_iter().skip(offset).take(top).collect();
        self.page_window(call, context, total, offset, value)
    }

    /// A page whose `value` is already the window `[offset, offset + value.len())` of `total`
    /// items, so large collections are serialised one page at a time.
    fn page_window(
        &self,
        call: &Call,
        context: &str,
        total: usize,
        offset: usize,
        value: Vec<Value>,
    ) -> Reply {
        let end = offset + value.len();
        let mut body = Map::new();
        body.insert(
            "@odata.context".into(),
            json!(format!(
                "https://graph.microsoft.com/v1.0/$metadata#{context}"
            )),
        );
        if wants_count(call) {
            body.insert("@odata.count".into(), json!(total));
        }
        if end < total {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("{SKIP_PREFIX}{end}"));
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &call.query {
                if !k.trim_start_matches('$').eq_ignore_ascii_case("skiptoken") {
                    ser.append_pair(k, v);
                }
            }
            ser.append_pair("$skiptoken", &token);
            body.insert(
                "@odata.nextLink".into(),
                json!(format!(
                    "{}{}?{}",
                    self.link_base(call),
                    call.path,
                    ser.finish()
                )),
            );
        }
        body.insert("value".into(), Value::Array(value));
        Reply::json(200, Value::Object(body))
    }

    pub(super) fn list_users(&self, st: &State, call: &Call, ctx: &Ctx) -> Reply {
        let (select, top, offset) = match parse_listing(call, ctx) {
            Ok(listing) => listing,
            Err(r) => return r,
        };
        // Beta lists the users converted back with `externalUserConvertedOn ge <instant>`, the
        // one filter the emulator serves on that (beta-only) property.
        let converted_since = call
            .path
            .starts_with("/beta/")
            .then(|| call.q("filter").and_then(converted_back_since))
            .flatten();
        let filter = match call
            .q("filter")
            .filter(|_| converted_since.is_none())
            .map(filter::parse)
        {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => return ctx.err(400, e.code, e.message),
        };
        let eventual = call
            .header("consistencylevel")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("eventual"));
        // Counting users is an advanced query: Graph refuses `$count=true` without the header.
        if wants_count(call) && !eventual {
            return ctx.err(
                400,
                "Request_BadRequest",
                "$count is not currently supported.",
            );
        }
        if let Some(f) = &filter {
            if f.advanced && !(eventual && wants_count(call)) {
                return ctx.err(
                    400,
                    "Request_UnsupportedQuery",
                    "Unsupported Query. This $filter uses an advanced query operator (ne, not, endsWith, or a null check): send the header 'ConsistencyLevel: eventual' and '$count=true'.",
                );
            }
        }
        let users = &st.tenant.users;
        // Look-ups by id or UPN go through the index instead of scanning the tenant; the
        // whole filter is still applied to every candidate.
        let candidates = filter
            .as_ref()
            .and_then(|f| filter::candidates(&f.expr, &st.index))
            .unwrap_or_else(|| (0..users.len()).collect());
        let matching: Vec<usize> = candidates
            .into_iter()
            .filter(|i| !st.removed.contains(i))
            .filter(|&i| filter.as_ref().is_none_or(|f| f.matches(&users[i])))
            .filter(|&i| {
                converted_since.is_none_or(|since| {
                    users[i]
                        .external_user_converted_on
                        .as_deref()
                        .and_then(|on| chrono::DateTime::parse_from_rfc3339(on).ok())
                        .is_some_and(|on| on >= since)
                })
            })
            .collect();
        let value = matching
            .iter()
            .skip(offset)
            .take(top)
            .map(|&i| project(&users[i], &select))
            .collect();
        self.page_window(call, "users", matching.len(), offset, value)
    }

    pub(super) fn get_user(&self, st: &mut State, call: &Call, ctx: &Ctx, key: &str) -> Reply {
        let select = match parse_select(call, ctx) {
            Ok(s) => s,
            Err(r) => return r,
        };
        match st.index.user(key) {
            Some(pos) => {
                // A replica behind the last invitation answers once with the user as it was.
                let behind = st.lagging.remove(&pos);
                let mut v = project(behind.as_ref().unwrap_or(&st.tenant.users[pos]), &select);
                if let Value::Object(m) = &mut v {
                    m.insert(
                        "@odata.context".into(),
                        json!("https://graph.microsoft.com/v1.0/$metadata#users/$entity"),
                    );
                }
                Reply::json(200, v)
            }
            None => ctx.not_found(key),
        }
    }

    pub(super) fn members(
        &self,
        st: &State,
        call: &Call,
        ctx: &Ctx,
        group: &str,
        transitive: bool,
        cast: bool,
    ) -> Reply {
        let Some(&gpos) = st.index.groups.get(&group.to_lowercase()) else {
            return ctx.not_found(group);
        };
        let (select, top, offset) = match parse_listing(call, ctx) {
            Ok(listing) => listing,
            Err(r) => return r,
        };
        // Depth-first over nested groups; each object once, cycles safe.
        let mut seen: HashSet<String> = HashSet::new();
        seen.insert(st.tenant.groups[gpos].id.to_lowercase());
        let mut items = Vec::new();
        let mut stack: Vec<(usize, usize)> = vec![(gpos, 0)];
        while let Some((g, i)) = stack.pop() {
            let members = &st.tenant.groups[g].members;
            let Some(member) = members.get(i) else {
                continue;
            };
            stack.push((g, i + 1));
            let key = member.to_lowercase();
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Some(&upos) = st.index.by_id.get(&key) {
                let mut v = project(&st.tenant.users[upos], &select);
                if !cast {
                    if let Value::Object(m) = &mut v {
                        m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
                    }
                }
                items.push(v);
            } else if let Some(&sub) = st.index.groups.get(&key) {
                if !cast {
                    let grp = &st.tenant.groups[sub];
                    items.push(json!({
                        "@odata.type": "#microsoft.graph.group",
                        "id": grp.id,
                        "displayName": grp.display_name,
                    }));
                }
                if transitive {
                    stack.push((sub, 0));
                }
            }
        }
        let context = if cast { "users" } else { "directoryObjects" };
        self.page(call, context, items, offset, top)
    }

    /// `GET /v1.0/domains`. Graph marks exactly one domain `isInitial` (the `*.onmicrosoft.com`
    /// one the tenant was created with); a tenant file that marks none gets its first such
    /// domain marked.
    pub(super) fn domains(&self, st: &State) -> Reply {
        let mut domains = st.tenant.domains.clone();
        if !domains.iter().any(|d| d.is_initial) {
            if let Some(d) = domains
                .iter_mut()
                .find(|d| d.id.to_lowercase().ends_with(".onmicrosoft.com"))
            {
                d.is_initial = true;
            }
        }
        Reply::json(
            200,
            json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#domains",
                "value": domains,
            }),
        )
    }

    /// `PATCH /v1.0/users/{id}`. `mail` is refused for a mailbox user (Exchange owns it), for a
    /// user synced from on-premises (mastered there), and for an address another object holds.
    /// Every property is checked before anything changes; an accepted PATCH is recorded per
    /// property for `GET /_emulator/patches`.
    pub(super) fn patch_user(&self, st: &mut State, req: UserCall) -> Reply {
        let (pos, ctx) = (req.pos, req.ctx);
        let mut body: Map<String, Value> = match serde_json::from_slice(&req.call.body) {
            Ok(Value::Object(m)) => m,
            _ => return ctx.err(400, "BadRequest", "Empty Payload. JSON content expected."),
        };
        if let Err(msg) = take_odata_type(&mut body, "user") {
            return ctx.err(400, "BadRequest", msg);
        }
        let old = st.tenant.users[pos].clone();
        let mut next = old.clone();
        let mut password: Option<String> = None;
        for (k, v) in &body {
            let bad = || {
                ctx.err(
                    400,
                    "Request_BadRequest",
                    format!("Invalid value specified for property '{k}' of resource 'User'."),
                )
            };
            match k.as_str() {
                "userType" => match v.as_str() {
                    Some(t @ ("Member" | "Guest")) => next.user_type = Some(t.into()),
                    _ => return bad(),
                },
                "mail" => {
                    if old.has_enabled_exchange_plan() {
                        return ctx.err(
                            400,
                            "Request_BadRequest",
                            "Unable to update the specified properties for objects that have originated within an external service.",
                        );
                    }
                    if old.on_premises_sync_enabled == Some(true) {
                        return ctx.err(
                            400,
                            "Request_BadRequest",
                            "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.",
                        );
                    }
                    match v {
                        Value::Null => next.mail = None,
                        Value::String(s) if s.is_empty() => next.mail = None,
                        Value::String(s) if valid_email(s) => {
                            if st.index.address_owner(s, Some(pos)).is_some() {
                                return ctx.conflict();
                            }
                            set_mail(&mut next, old.mail.as_deref(), s);
                        }
                        _ => return bad(),
                    }
                }
                "otherMails" => match serde_json::from_value::<Vec<String>>(v.clone()) {
                    Ok(list) if list.iter().all(|m| valid_email(m)) => {
                        next.other_mails = Some(list)
                    }
                    _ => return bad(),
                },
                "accountEnabled" => match v.as_bool() {
                    Some(b) => next.account_enabled = Some(b),
                    None => return bad(),
                },
                "displayName" => match v.as_str() {
                    Some(s) if !s.trim().is_empty() => next.display_name = Some(s.into()),
                    _ => return bad(),
                },
                "givenName" | "surname" | "jobTitle" | "department" | "companyName"
                | "mobilePhone" | "officeLocation" | "preferredLanguage" | "usageLocation" => {
                    let value = match v {
                        Value::Null => None,
                        Value::String(s) if s.is_empty() => None,
                        Value::String(s) => Some(s.clone()),
                        _ => return bad(),
                    };
                    let field = match k.as_str() {
                        "givenName" => &mut next.given_name,
                        "surname" => &mut next.surname,
                        "jobTitle" => &mut next.job_title,
                        "department" => &mut next.department,
                        "companyName" => &mut next.company_name,
                        "mobilePhone" => &mut next.mobile_phone,
                        "officeLocation" => &mut next.office_location,
                        "preferredLanguage" => &mut next.preferred_language,
                        _ => &mut next.usage_location,
                    };
                    *field = value;
                }
                // Graph holds one business phone number per user.
                "businessPhones" => match serde_json::from_value::<Vec<String>>(v.clone()) {
                    Ok(list) if list.len() <= 1 => next.business_phones = Some(list),
                    _ => return bad(),
                },
                "passwordProfile" => {
                    if old.on_premises_sync_enabled == Some(true) {
                        return ctx.err(
                            400,
                            "Request_BadRequest",
                            "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.",
                        );
                    }
                    match super::credentials::password_of(v) {
                        Ok(p) => password = Some(p),
                        Err(msg) => return ctx.err(400, "Request_BadRequest", msg),
                    }
                }
                other => return ctx.err(400, "BadRequest", format!("Invalid property '{other}'.")),
            }
        }
        let at = self
            .wall(req.now)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        if let Some(password) = password {
            next.last_password_change_date_time = Some(at.clone());
            st.secrets
                .push(json!({"userId": old.id, "password": password, "at": at}));
        }
        let (before, after) = (
            serde_json::to_value(&old).unwrap_or(Value::Null),
            serde_json::to_value(&next).unwrap_or(Value::Null),
        );
        for k in body.keys() {
            // Never the password, not even in the emulator's own log: `/_emulator/secrets`
            // is the one place tests look for it.
            let (was, now_is) = if k == "passwordProfile" {
                (Value::Null, json!("set"))
            } else {
                (
                    before.get(k).cloned().unwrap_or(Value::Null),
                    after.get(k).cloned().unwrap_or(Value::Null),
                )
            };
            st.patches.push(json!({
                "userId": old.id,
                "property": k,
                "old": was,
                "new": now_is,
                "at": at,
            }));
        }
        st.set_user(pos, next);
        Reply::empty(204)
    }

    pub(super) fn invite(&self, st: &mut State, call: &Call, ctx: &Ctx, now: Duration) -> Reply {
        if self.config.block_invitations {
            return ctx.err(
                403,
                "Authorization_RequestDenied",
                "Invitations are blocked for this directory due to suspicious activity. Please contact Microsoft support to restore invitations.",
            );
        }
        let mut raw: Value = match serde_json::from_slice(&call.body) {
            Ok(v) => v,
            Err(e) => return ctx.err(400, "BadRequest", body_error(&e.to_string())),
        };
        if let Err(msg) = take_invitation_odata_types(&mut raw) {
            return ctx.err(400, "BadRequest", msg);
        }
        let req: InvitationRequest = match serde_json::from_value(raw) {
            Ok(r) => r,
            Err(e) => return ctx.err(400, "BadRequest", body_error(&e.to_string())),
        };
        let email = req.invited_user_email_address.trim().to_string();
        let redirect_ok = url::Url::parse(&req.invite_redirect_url)
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .unwrap_or(false);
        if !redirect_ok {
            return ctx.err(
                400,
                "BadRequest",
                "The inviteRedirectUrl is missing or invalid: it must be an absolute http or https URL.",
            );
        }
        if !valid_email(&email) {
            return ctx.err(
                400,
                "BadRequest",
                format!("The email address '{email}' is not valid."),
            );
        }
        let verified = st.tenant.verified_domains();
        let domain = email.rsplit('@').next().unwrap_or("").to_lowercase();
        let in_verified = verified.contains(&domain);
        const VERIFIED_MSG: &str = "User's email address cannot be in a verified domain. Please change the user's email to enable conversion to a B2B user.";
        let reset = req.reset_redemption.unwrap_or(false);
        let stamp = self
            .wall(now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let user_pos = match &req.invited_user {
            None => {
                if reset {
                    return ctx.err(400, "BadRequest", "resetRedemption requires invitedUser.id to name the user whose redemption is reset.");
                }
                // Only `invitedUser.id` converts: an address that a user already holds (mail,
                // otherMails, proxyAddresses or UPN) is refused, and nobody changes.
                let holder = st
                    .index
                    .address_owner(&email, None)
                    .or_else(|| st.index.by_upn.get(&email.to_lowercase()).copied());
                if let Some(pos) = holder {
                    return ctx.err(
                        400,
                        "BadRequest",
                        format!(
                            "The invited user already exists in the directory as objectID: {}",
                            st.tenant.users[pos].id
                        ),
                    );
                }
                if in_verified {
                    return ctx.err(400, "BadRequest", VERIFIED_MSG);
                }
                let id = uuid::Uuid::new_v4().to_string();
                let upn = format!(
                    "{}#EXT#@{}",
                    email.replace('@', "_"),
                    st.tenant.initial_domain()
                );
                let user = User {
                    id,
                    display_name: Some(
                        req.invited_user_display_name
                            .clone()
                            .unwrap_or_else(|| email.clone()),
                    ),
                    user_principal_name: Some(upn),
                    mail: Some(email.clone()),
                    other_mails: Some(vec![email.clone()]),
                    proxy_addresses: Some(vec![format!("SMTP:{email}")]),
                    account_enabled: Some(true),
                    user_type: Some(
                        req.invited_user_type
                            .clone()
                            .unwrap_or_else(|| "Guest".into()),
                    ),
                    creation_type: Some("Invitation".into()),
                    created_date_time: Some(stamp.clone()),
                    ..Default::default()
                };
                st.add_user(user)
            }
            Some(r) => {
                let Some(&pos) = st.index.by_id.get(&r.id.to_lowercase()) else {
                    return ctx.not_found(&r.id);
                };
                let u = &st.tenant.users[pos];
                if u.external_user_converted_on.is_some() {
                    return ctx.err(
                        412,
                        "PreconditionFailed",
                        "The user was converted to an internal user and can't be converted back to external.",
                    );
                }
                let converted = u.external_user_state.is_some()
                    || u.creation_type
                        .as_deref()
                        .is_some_and(|c| c.eq_ignore_ascii_case("Invitation"));
                if converted && !reset {
                    return ctx.err(
                        400,
                        "BadRequest",
                        "User invitation failed. The user is already a B2B collaboration user; set resetRedemption to true to reset its redemption status.",
                    );
                }
                if reset {
                    if !converted {
                        return ctx.err(
                            400,
                            "BadRequest",
                            "User invitation failed. resetRedemption applies only to a user who has been invited before; invite the user without it first.",
                        );
                    }
                    let known = u
                        .mail
                        .iter()
                        .chain(u.other_mails.iter().flatten())
                        .any(|m| m.eq_ignore_ascii_case(&email));
                    if !known {
                        return ctx.err(
                            400,
                            "BadRequest",
                            "The email you're using to invite this user doesn't match any emails on the user object. Use the user's mail or one of its otherMails.",
                        );
                    }
                } else if let Some(refused) = conversion_refusal(ctx, u, &email) {
                    return refused;
                }
                if in_verified {
                    return ctx.err(400, "BadRequest", VERIFIED_MSG);
                }
                if st.index.address_owner(&email, Some(pos)).is_some() {
                    return ctx.conflict();
                }
                pos
            }
        };
        self.accept_invitation(st, &req, &email, user_pos, reset, &stamp)
    }

    /// Answer 201 for an invitation that passed every check: the user becomes
    /// `PendingAcceptance` (unless `--not-applied-rate` drops the change) and the invitation is
    /// logged for `/_emulator/invitations`.
    fn accept_invitation(
        &self,
        st: &mut State,
        req: &InvitationRequest,
        email: &str,
        user_pos: usize,
        reset: bool,
        stamp: &str,
    ) -> Reply {
        let applied = !(self.config.not_applied_rate > 0.0
            && st.rng.random::<f64>() < self.config.not_applied_rate);
        if applied {
            if self.config.lagging_read_rate > 0.0
                && st.rng.random::<f64>() < self.config.lagging_read_rate
            {
                let before = st.tenant.users[user_pos].clone();
                st.lagging.insert(user_pos, before);
            }
            let mut next = st.tenant.users[user_pos].clone();
            next.external_user_state = Some("PendingAcceptance".into());
            next.external_user_state_change_date_time = Some(stamp.to_string());
            st.set_user(user_pos, next);
        }
        let user = &st.tenant.users[user_pos];
        let user_id = user.id.clone();
        let user_type = user.user_type.clone();
        let invitation = Invitation {
            id: uuid::Uuid::new_v4().to_string(),
            invited_user_email_address: email.to_string(),
            invited_user_display_name: req.invited_user_display_name.clone(),
            invited_user_type: req.invited_user_type.clone().or(user_type),
            invite_redeem_url: Some(format!(
                "https://login.microsoftonline.com/redeem?rd=https%3a%2f%2finvitations.microsoft.com%2fredeem%2f%3ftenant%3d{}%26user%3d{}%26ticket%3d{}%26ver%3d2.0",
                st.tenant.tenant_id,
                user_id,
                random_b64(96)
            )),
            invite_redirect_url: Some(req.invite_redirect_url.clone()),
            send_invitation_message: Some(req.send_invitation_message.unwrap_or(false)),
            reset_redemption: Some(reset),
            status: "PendingAcceptance".into(),
            invited_user: Some(InvitedUserRef { id: user_id.clone() }),
            invited_user_message_info: Some(req.invited_user_message_info.clone().unwrap_or(InvitedUserMessageInfo {
                message_language: None,
                cc_recipients: Some(vec![]),
                customized_message_body: None,
            })),
        };
        st.invitations.push(json!({
            "id": invitation.id,
            "userId": user_id,
            "invitedUserEmailAddress": email,
            "sendInvitationMessage": req.send_invitation_message.unwrap_or(false),
            "createdDateTime": stamp,
            "resetRedemption": reset,
            "applied": applied,
        }));
        let mut body = serde_json::to_value(&invitation).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut body {
            m.insert(
                "@odata.context".into(),
                json!("https://graph.microsoft.com/v1.0/$metadata#invitations/$entity"),
            );
        }
        Reply::json(201, body)
    }
}

/// Set `mail` as Entra does for a cloud user: the new address becomes the primary SMTP proxy
/// address and the old primary stays as a secondary one.
pub(super) fn set_mail(u: &mut User, old: Option<&str>, new: &str) {
    let mut proxies: Vec<String> = u
        .proxy_addresses
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !smtp_bare(p).is_some_and(|a| a.eq_ignore_ascii_case(new)))
        .map(|p| match p.strip_prefix("SMTP:") {
            Some(a) => format!("smtp:{a}"),
            None => p,
        })
        .collect();
    if let Some(old) = old.filter(|o| !o.eq_ignore_ascii_case(new)) {
        if !proxies
            .iter()
            .any(|p| smtp_bare(p).is_some_and(|a| a.eq_ignore_ascii_case(old)))
        {
            proxies.push(format!("smtp:{old}"));
        }
    }
    proxies.insert(0, format!("SMTP:{new}"));
    u.proxy_addresses = Some(proxies);
    u.mail = Some(new.to_string());
}

/// The address of an `smtp:`/`SMTP:` proxy address.
fn smtp_bare(p: &str) -> Option<&str> {
    p.get(..5)
        .filter(|k| k.eq_ignore_ascii_case("smtp:"))
        .and_then(|_| p.get(5..))
}

/// The instant of a filter `externalUserConvertedOn ge <RFC 3339 instant>` (property name
/// case-insensitive); `None` for any other filter.
fn converted_back_since(filter: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let mut words = filter.split_whitespace();
    let (prop, op, value) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some()
        || !prop.eq_ignore_ascii_case("externalUserConvertedOn")
        || !op.eq_ignore_ascii_case("ge")
    {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(value.trim_matches('\'')).ok()
}

/// Drop the `@odata.type` Microsoft's SDKs put in request bodies when it names `expected`
/// (`#microsoft.graph.user` in a user's PATCH); another type is refused, as Graph refuses an
/// object of the wrong type.
fn take_odata_type(obj: &mut Map<String, Value>, expected: &str) -> Result<(), String> {
    let Some(t) = obj.remove("@odata.type") else {
        return Ok(());
    };
    let name = t.as_str().unwrap_or("").trim();
    let bare = name.trim_start_matches('#');
    if bare.eq_ignore_ascii_case(&format!("microsoft.graph.{expected}")) {
        Ok(())
    } else {
        Err(format!(
            "A type named '{name}' could not be resolved by the model: expected '#microsoft.graph.{expected}'."
        ))
    }
}

/// [`take_odata_type`] over an invitation body and the objects it holds, so that what is left
/// is the invitation as modelled.
fn take_invitation_odata_types(body: &mut Value) -> Result<(), String> {
    let Value::Object(inv) = body else {
        return Ok(());
    };
    take_odata_type(inv, "invitation")?;
    if let Some(Value::Object(user)) = inv.get_mut("invitedUser") {
        take_odata_type(user, "user")?;
    }
    if let Some(Value::Object(info)) = inv.get_mut("invitedUserMessageInfo") {
        take_odata_type(info, "invitedUserMessageInfo")?;
        if let Some(Value::Array(cc)) = info.get_mut("ccRecipients") {
            for r in cc.iter_mut() {
                if let Value::Object(r) = r {
                    take_odata_type(r, "recipient")?;
                    if let Some(Value::Object(a)) = r.get_mut("emailAddress") {
                        take_odata_type(a, "emailAddress")?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// serde's message about an invitation body, in Graph's words.
fn body_error(serde_msg: &str) -> String {
    let quoted = || serde_msg.split('`').nth(1).unwrap_or("").to_string();
    if serde_msg.starts_with("unknown field") {
        format!("Invalid property '{}'.", quoted())
    } else if serde_msg.starts_with("missing field") {
        format!("Property '{}' is required.", quoted())
    } else {
        "The request body is not a valid invitation: check property names and value types.".into()
    }
}

/// Email syntax as the invitation API checks it: the product's own rule (`crate::email`), so
/// the emulator and the validator never disagree.
pub fn valid_email(s: &str) -> bool {
    crate::email::email_syntax_error(s).is_none()
}

/// Why Graph refuses to convert the internal user `u` by inviting `email` (a first invitation,
/// not a reset): synced UPN, an Exchange mailbox, or an address that is not the user's mail.
fn conversion_refusal(ctx: &Ctx, u: &User, email: &str) -> Option<Reply> {
    let message = if u.on_premises_user_principal_name.is_some() {
        "User invitation failed. Invalid request input."
    } else if u.has_enabled_exchange_plan() {
        "B2B users having a mailbox is not supported. Remove the Exchange Online mailbox before converting the user."
    } else if !u
        .mail
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case(email))
    {
        "User invitation failed. The invited user email address must match the user's mail property; update mail before converting."
    } else {
        return None;
    };
    Some(ctx.err(400, "BadRequest", message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_syntax() {
        for ok in [
            "a@b.com",
            "first.last@fabrikam.com",
            "a_b-c@x.example",
            "_x_@a.b",
        ] {
            assert!(valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@b.com",
            "a@b",
            ".a@b.com",
            "a.@b.com",
            "-a@b.com",
            "a-@b.com",
            "a(b@c.com",
            "a,b@c.com",
            "a b@c.com",
            "a@b@c.com",
            "a@-b.com",
            "a#b@c.com",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn serde_messages_become_graph_messages() {
        assert_eq!(
            body_error("unknown field `bogus`, expected one of `a`"),
            "Invalid property 'bogus'."
        );
        assert_eq!(
            body_error("missing field `inviteRedirectUrl` at line 1"),
            "Property 'inviteRedirectUrl' is required."
        );
    }
}
