//! The credential side of a converted user, as Graph serves it (Graph's documentation, "Passwords,
//! sessions and directory roles" and "Converting back"): the permission and role checks of a
//! `passwordProfile` PATCH, Entra's password complexity rules, `revokeSignInSessions`, the beta
//! `convertExternalToInternalMemberUser`, the two policies that decide how partners redeem, who
//! holds which directory role (`GET /v1.0/directoryRoles`), and the administrator's
//! `POST /_emulator/users/{id}`.
//!
//! Refusals of a `passwordProfile` PATCH (403 `Authorization_RequestDenied` "Insufficient
//! privileges to complete the operation." unless said otherwise), in order:
//! - no `User-PasswordProfile.ReadWrite.All`, `User.ReadWrite.All` or `Directory.ReadWrite.All`
//!   (other properties in the same body still need `User.ReadWrite.All`);
//! - app-only without a directory role that may reset passwords (User Administrator, Helpdesk
//!   Administrator, Authentication Administrator, Privileged Authentication Administrator, Global
//!   Administrator) in the token's `wids`; delegated, the signed-in user holds only Guest Inviter;
//! - a target holding an admin role, unless the caller holds Privileged Authentication
//!   Administrator or Global Administrator;
//! - a synced target: 400 "…on-premises mastered Directory Sync objects…";
//! - a password outside Entra's rules (8–256 printable ASCII characters, three of lower, upper,
//!   digit, symbol): 400 `Request_BadRequest`.
//!
//! Conversion back: only a redeemed B2B user (`externalUserState` `Accepted`) is eligible; a
//! user holding a directory role is refused (the earlier documentation's rule: never kinder);
//! synced users take no UPN or password; cloud users need a UPN on a verified domain and a valid
//! password.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::handlers::valid_email;
use super::identity::{
    role_template_id, Grant, DIRECTORY_ROLES, GLOBAL_ADMINISTRATOR_ROLE,
    PRIVILEGED_AUTHENTICATION_ADMINISTRATOR_ROLE, USER_ADMINISTRATOR_ROLE,
};
use super::routes::{Call, Ctx, Reply, Shared, State, UserCall};
use crate::model::User;

/// Roles whose holders may reset a non-admin user's password.
const PASSWORD_RESET_ROLES: &[&str] = &[
    USER_ADMINISTRATOR_ROLE,
    "729827e3-9c14-49f7-bb1b-9608f156bbb8",
    "c4e39bd9-1100-46d3-8c65-fb160da0071f",
    PRIVILEGED_AUTHENTICATION_ADMINISTRATOR_ROLE,
    GLOBAL_ADMINISTRATOR_ROLE,
];
/// Roles whose holders may reset an admin's password.
const ADMIN_RESET_ROLES: &[&str] = &[
    PRIVILEGED_AUTHENTICATION_ADMINISTRATOR_ROLE,
    GLOBAL_ADMINISTRATOR_ROLE,
];
const COMPLEXITY_MSG: &str = "The specified password does not comply with password complexity requirements. Please provide a different password.";
const SYNCED_MSG: &str = "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.";

/// Entra's rules for a cloud password: 8–256 characters, printable ASCII (space included), at
/// least three of lower case, upper case, digits and symbols.
pub fn password_complex_enough(p: &str) -> bool {
    let n = p.chars().count();
    if !(8..=256).contains(&n) || !p.chars().all(|c| (' '..='~').contains(&c)) {
        return false;
    }
    let classes = [
        p.chars().any(|c| c.is_ascii_lowercase()),
        p.chars().any(|c| c.is_ascii_uppercase()),
        p.chars().any(|c| c.is_ascii_digit()),
        p.chars().any(|c| !c.is_ascii_alphanumeric()),
    ];
    classes.iter().filter(|c| **c).count() >= 3
}

/// The password of a `passwordProfile` value, or Graph's message refusing it.
pub fn password_of(v: &Value) -> Result<String, String> {
    let Value::Object(profile) = v else {
        return Err(
            "Invalid value specified for property 'passwordProfile' of resource 'User'.".into(),
        );
    };
    for (k, v) in profile {
        let ok = match k.as_str() {
            "password" => v.is_string(),
            "forceChangePasswordNextSignIn" | "forceChangePasswordNextSignInWithMfa" => {
                v.is_boolean()
            }
            "@odata.type" => true,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "Invalid value specified for property '{k}' of resource 'PasswordProfile'."
            ));
        }
    }
    let password = profile
        .get("password")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !password_complex_enough(password) {
        return Err(COMPLEXITY_MSG.into());
    }
    Ok(password.to_string())
}

fn stamp(shared: &Shared, now: Duration) -> String {
    shared
        .wall(now)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Shared {
    /// The permission check of `PATCH /v1.0/users/{id}`: `passwordProfile` has its own
    /// permissions and roles; every other property needs `User.ReadWrite.All`.
    pub(super) fn authorize_patch(
        &self,
        st: &State,
        grant: &Grant,
        call: &Call,
        ctx: &Ctx,
        key: &str,
    ) -> Option<Reply> {
        let denied = || {
            Some(ctx.err(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ))
        };
        let body = serde_json::from_slice::<Map<String, Value>>(&call.body).unwrap_or_default();
        let general = ["User.ReadWrite.All", "Directory.ReadWrite.All"];
        let other_properties = body
            .keys()
            .any(|k| k != "passwordProfile" && k != "@odata.type");
        if (other_properties || body.is_empty()) && !grant.has_any(&general) {
            return denied();
        }
        if !body.contains_key("passwordProfile") {
            return None;
        }
        if !grant.has_any(&[
            "User-PasswordProfile.ReadWrite.All",
            "User.ReadWrite.All",
            "Directory.ReadWrite.All",
        ]) {
            return denied();
        }
        if !grant.holds_role(PASSWORD_RESET_ROLES) {
            return denied();
        }
        let target_is_admin = st
            .index
            .user(key)
            .is_some_and(|pos| st.tenant.holds_admin_role(&st.tenant.users[pos].id));
        if target_is_admin && !grant.holds_role(ADMIN_RESET_ROLES) {
            return denied();
        }
        None
    }

    /// `POST /v1.0/users/{id}/revokeSignInSessions` → 200 `{"value": true}`; moves
    /// `signInSessionsValidFromDateTime`.
    pub(super) fn revoke_sessions(&self, st: &mut State, req: UserCall) -> Reply {
        let at = stamp(self, req.now);
        let pos = req.pos;
        let mut next = st.tenant.users[pos].clone();
        next.sign_in_sessions_valid_from_date_time = Some(at.clone());
        st.revocations.push(json!({"userId": next.id, "at": at}));
        st.set_user(pos, next);
        Reply::json(
            200,
            json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean",
                "value": true,
            }),
        )
    }

    /// `POST /beta/users/{id}/convertExternalToInternalMemberUser` (Graph's documentation).
    pub(super) fn convert_back(&self, st: &mut State, req: UserCall) -> Reply {
        let (pos, ctx) = (req.pos, req.ctx);
        let body: Map<String, Value> = if req.call.body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice(&req.call.body) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return ctx.err(
                        400,
                        "BadRequest",
                        "Invalid request body: a JSON object or no body is expected.",
                    )
                }
            }
        };
        let bad = |msg: &str| ctx.err(400, "BadRequest", msg.to_string());
        for k in body.keys() {
            if !matches!(
                k.as_str(),
                "userPrincipalName" | "passwordProfile" | "mail" | "@odata.type"
            ) {
                return bad(&format!("Invalid property '{k}'."));
            }
        }
        let user = &st.tenant.users[pos];
        if user.external_user_state.as_deref() != Some("Accepted") {
            return bad(
                "The user authentication is already internal and isn't eligible for conversion.",
            );
        }
        if st.tenant.holds_admin_role(&user.id) {
            return bad("A user can't be converted if they have a role assigned to them.");
        }
        let present = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
        let synced = user.on_premises_sync_enabled == Some(true);
        let mut next = user.clone();
        let mut password = None;
        if synced {
            if present("userPrincipalName") || present("passwordProfile") {
                return bad("For users synchronized from on-premises, userPrincipalName and passwordProfile must be empty");
            }
            if present("mail") {
                return ctx.err(400, "Request_BadRequest", SYNCED_MSG);
            }
        } else {
            let upn = body
                .get("userPrincipalName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_string();
            if upn.is_empty() {
                return bad("The provided UPN can't be empty.");
            }
            let domain = upn.rsplit_once('@').map(|(_, d)| d.to_lowercase());
            let local_ok = upn
                .rsplit_once('@')
                .is_some_and(|(l, _)| !l.is_empty() && !l.contains('#'));
            if !local_ok || !domain.is_some_and(|d| st.tenant.verified_domains().contains(&d)) {
                return bad("The provided UPN doesn't have a valid domain.");
            }
            if st.index.user(&upn).is_some_and(|p| p != pos) {
                return ctx.err(
                    400,
                    "Request_BadRequest",
                    "Another object with the same value for property userPrincipalName already exists.",
                );
            }
            match body.get("passwordProfile").map(password_of) {
                Some(Ok(p)) => password = Some(p),
                _ => return bad("The provided password isn't valid."),
            }
            if let Some(mail) = body.get("mail").filter(|v| !v.is_null()) {
                let Some(mail) = mail.as_str().filter(|m| valid_email(m)) else {
                    return bad("Invalid value specified for property 'mail' of resource 'User'.");
                };
                if st.index.address_owner(mail, Some(pos)).is_some() {
                    return ctx.conflict();
                }
                super::handlers::set_mail(&mut next, user.mail.as_deref(), mail);
            }
            if let Some(id) = next.identities.as_mut().and_then(|ids| {
                ids.iter_mut()
                    .find(|i| i.sign_in_type.as_deref() == Some("userPrincipalName"))
            }) {
                id.issuer_assigned_id = Some(upn.clone());
            }
            next.user_principal_name = Some(upn);
        }
        let at = stamp(self, req.now);
        next.user_type = Some("Member".into());
        next.external_user_state = None;
        next.external_user_state_change_date_time = None;
        next.creation_type = None;
        next.external_user_converted_on = Some(at.clone());
        let tenant_issuers = st.tenant.verified_domains();
        let initial = st.tenant.initial_domain().to_lowercase();
        if let Some(ids) = next.identities.as_mut() {
            ids.retain(|i| {
                i.issuer
                    .as_deref()
                    .map(str::to_lowercase)
                    .is_some_and(|iss| iss == initial || tenant_issuers.contains(&iss))
            });
        }
        let mut logged = Value::Object(body.clone());
        if let Some(p) = password {
            next.last_password_change_date_time = Some(at.clone());
            st.secrets
                .push(json!({"userId": next.id, "password": p, "at": at}));
            logged["passwordProfile"]["password"] = json!("set");
        }
        st.conversions_back
            .push(json!({"userId": next.id, "at": at, "body": logged}));
        let answer = json!({
            "@odata.context": "https://graph.microsoft.com/beta/$metadata#microsoft.graph.conversionUserDetails",
            "displayName": next.display_name,
            "userPrincipalName": next.user_principal_name,
            "convertedToInternalUserDateTime": at,
            "mail": next.mail,
        });
        st.set_user(pos, next);
        Reply::json(200, answer)
    }

    /// `GET /v1.0/policies/authenticationMethodsPolicy/authenticationMethodConfigurations/email`:
    /// the tenant's email one-time passcode setting (on by default).
    pub(super) fn email_otp_policy(&self, st: &State) -> Reply {
        let p = &st.tenant.policies;
        Reply::json(
            200,
            json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#policies/authenticationMethodsPolicy/authenticationMethodConfigurations/$entity",
                "@odata.type": "#microsoft.graph.emailAuthenticationMethodConfiguration",
                "id": "Email",
                "state": p.email_otp_state,
                "allowExternalIdToUseEmailOtp": p.allow_external_id_to_use_email_otp,
                "excludeTargets": [],
                "includeTargets": [{"targetType": "group", "id": "all_users", "isRegistrationRequired": false}],
            }),
        )
    }

    /// `GET /v1.0/policies/crossTenantAccessPolicy/default`: the inbound B2B collaboration
    /// setting partners meet when they redeem.
    pub(super) fn cross_tenant_default(&self, st: &State) -> Reply {
        let access = if st.tenant.policies.b2b_collaboration_inbound_blocked {
            "blocked"
        } else {
            "allowed"
        };
        Reply::json(
            200,
            json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#policies/crossTenantAccessPolicy/default/$entity",
                "isServiceDefault": true,
                "inboundTrust": {"isMfaAccepted": false, "isCompliantDeviceAccepted": false, "isHybridAzureADJoinedDeviceAccepted": false},
                "b2bCollaborationInbound": {
                    "usersAndGroups": {"accessType": access, "targets": [{"target": "AllUsers", "targetType": "user"}]},
                    "applications": {"accessType": access, "targets": [{"target": "AllApplications", "targetType": "application"}]},
                },
                "b2bCollaborationOutbound": {
                    "usersAndGroups": {"accessType": "allowed", "targets": [{"target": "AllUsers", "targetType": "user"}]},
                    "applications": {"accessType": "allowed", "targets": [{"target": "AllApplications", "targetType": "application"}]},
                },
            }),
        )
    }
}

impl Shared {
    /// `GET /v1.0/directoryRoles`: the activated roles (those someone holds), each with its
    /// `roleTemplateId`; with `$expand=members`, their user members. A role's object id is
    /// derived from its template id, stable across starts as a tenant's is.
    pub(super) fn directory_roles(&self, st: &State, call: &Call, ctx: &Ctx) -> Reply {
        let expand = match call.q("expand").map(str::trim) {
            None => false,
            Some(e)
                if e.eq_ignore_ascii_case("members")
                    || e.to_lowercase().starts_with("members(") =>
            {
                true
            }
            Some(e) => {
                return ctx.err(
                    400,
                    "Request_BadRequest",
                    format!(
                        "Expansion of navigation property '{e}' is not supported on directoryRole."
                    ),
                )
            }
        };
        let mut roles: Vec<Value> = Vec::new();
        for (name, template) in DIRECTORY_ROLES {
            let holders: Vec<&User> = st
                .tenant
                .users
                .iter()
                .enumerate()
                .filter(|(i, u)| {
                    !st.removed.contains(i)
                        && st
                            .tenant
                            .directory_roles
                            .iter()
                            .filter(|(id, _)| id.eq_ignore_ascii_case(&u.id))
                            .flat_map(|(_, r)| r)
                            .any(|r| role_template_id(r) == Some(*template))
                })
                .map(|(_, u)| u)
                .collect();
            if holders.is_empty() {
                continue;
            }
            let mut role = json!({
                "id": role_object_id(template),
                "displayName": name,
                "description": "",
                "roleTemplateId": template,
            });
            if expand {
                role["members"] = Value::Array(
                    holders
                        .iter()
                        .map(|u| {
                            json!({
                                "@odata.type": "#microsoft.graph.user",
                                "id": u.id,
                                "displayName": u.display_name,
                                "userPrincipalName": u.user_principal_name,
                            })
                        })
                        .collect(),
                );
            }
            roles.push(role);
        }
        Reply::json(
            200,
            json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryRoles",
                "value": roles,
            }),
        )
    }
}

/// A directory role's object id in this tenant: its template id with the bytes turned, so the
/// two differ (as in Graph) and the id is the same at every start.
fn role_object_id(template: &str) -> String {
    let bytes = uuid::Uuid::parse_str(template)
        .map(|u| *u.as_bytes())
        .unwrap_or_default()
        .map(|b| b ^ 0x5a);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// `POST /_emulator/users/{id}` with a JSON object: set those properties as an administrator
/// would in the portal (any modelled property but `id`; `null` clears). 400 for anything else.
pub(super) fn admin_set(st: &mut State, pos: usize, body: &[u8]) -> Reply {
    let refuse = |msg: String| {
        Reply::json(
            400,
            json!({"error": {"code": "BadRequest", "message": msg}}),
        )
    };
    let Ok(Value::Object(changes)) = serde_json::from_slice::<Value>(body) else {
        return refuse("Send a JSON object of user properties.".into());
    };
    let mut user = serde_json::to_value(&st.tenant.users[pos]).unwrap_or(Value::Null);
    let modelled = serde_json::to_value(User {
        id: String::new(),
        ..every_property()
    })
    .unwrap_or(Value::Null);
    for (k, v) in changes {
        if k == "id" || modelled.get(&k).is_none() {
            return refuse(format!("'{k}' is not a property the emulator can set."));
        }
        user[k.as_str()] = v;
    }
    match serde_json::from_value::<User>(user) {
        Ok(next) => {
            st.set_user(pos, next);
            Reply::json(
                200,
                serde_json::to_value(&st.tenant.users[pos]).unwrap_or(Value::Null),
            )
        }
        Err(e) => refuse(format!("The properties do not fit a user: {e}.")),
    }
}

/// A user with every optional property present, so its JSON names every modelled property. A
/// struct literal without `..`: a property added to [`User`] fails to compile here until the
/// administrator's endpoint can set it too.
fn every_property() -> User {
    let s = || Some(String::new());
    User {
        id: String::new(),
        display_name: s(),
        user_principal_name: s(),
        mail: s(),
        other_mails: Some(vec![]),
        proxy_addresses: Some(vec![]),
        account_enabled: Some(true),
        user_type: s(),
        external_user_state: s(),
        external_user_state_change_date_time: s(),
        creation_type: s(),
        on_premises_sync_enabled: Some(true),
        on_premises_user_principal_name: s(),
        assigned_plans: Some(vec![]),
        identities: Some(vec![]),
        last_password_change_date_time: s(),
        sign_in_sessions_valid_from_date_time: s(),
        external_user_converted_on: s(),
        on_premises_security_identifier: s(),
        on_premises_sam_account_name: s(),
        created_date_time: s(),
        given_name: s(),
        surname: s(),
        job_title: s(),
        department: s(),
        company_name: s(),
        business_phones: Some(vec![]),
        mobile_phone: s(),
        office_location: s(),
        preferred_language: s(),
        usage_location: s(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complexity_rules() {
        for ok in ["Abcdef1!", "abcdefg1!", "ABCDEFG1a", "Passw0rd with space"] {
            assert!(password_complex_enough(ok), "{ok}");
        }
        let long = "Aa1!".repeat(65);
        for bad in [
            "Ab1!",
            "abcdefgh",
            "abcdefg1",
            "ABCDEFGH!",
            "Abcdéfg1!",
            long.as_str(),
        ] {
            assert!(!password_complex_enough(bad), "{bad}");
        }
    }

    #[test]
    fn password_profile_shape() {
        assert_eq!(
            password_of(&json!({"password": "Abcdef1!", "forceChangePasswordNextSignIn": false})),
            Ok("Abcdef1!".to_string())
        );
        assert!(password_of(&json!({"password": "Abcdef1!", "bogus": 1})).is_err());
        assert!(password_of(&json!("Abcdef1!")).is_err());
        assert_eq!(password_of(&json!({})), Err(COMPLEXITY_MSG.to_string()));
    }
}
