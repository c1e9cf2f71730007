//! `preflight`: before the weekend, prove the run will work — sign in, read the permissions the
//! token carries (`roles` app-only, `scp` delegated), read the tenant's invitation policy, and make
//! one cheap read — and say what to grant or change. `run`, `resume` and `retry` go through the
//! same checks (`require_ready`) before their first write.
//!
//! `--retire` adds what retiring the internal credentials needs ([`retire_findings`], from the
//! token alone: `roles`/`scp` and the directory roles in `wids`); `retire` runs the same check
//! ([`require_retire_ready`]) and stops with exit 4 before any write. With Policy.Read.All,
//! preflight also reads how partners will redeem: the email one-time passcode method and the
//! default cross-tenant access policy's inbound B2B collaboration.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::common::{self, Endpoints};
use crate::cli::PreflightArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::graph::{Credentials, GraphClient, GraphError};
use crate::item::{RunMode, RunOptions};

/// Directory role template ids allowed to invite when the policy says `adminsAndGuestInviters`.
const INVITING_ROLES: &[(&str, &str)] = &[
    ("95e79109-95c0-4d8e-aee3-d01accf2d47b", "Guest Inviter"),
    ("fe930be7-5e62-47db-91af-98c3a49a38b1", "User Administrator"),
    (
        "62e90394-69f5-4237-9190-012177145e10",
        "Global Administrator",
    ),
];

/// Directory roles whose holders may reset a non-admin user's password (template ids), and
/// those that may reset an admin's too.
const PASSWORD_RESET_ROLES: &[(&str, &str)] = &[
    ("fe930be7-5e62-47db-91af-98c3a49a38b1", "User Administrator"),
    (
        "729827e3-9c14-49f7-bb1b-9608f156bbb8",
        "Helpdesk Administrator",
    ),
    (
        "c4e39bd9-1100-46d3-8c65-fb160da0071f",
        "Authentication Administrator",
    ),
    (
        "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
        "Privileged Authentication Administrator",
    ),
    (
        "62e90394-69f5-4237-9190-012177145e10",
        "Global Administrator",
    ),
];
const ADMIN_RESET_ROLES: &[&str] = &[
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
    "62e90394-69f5-4237-9190-012177145e10",
];

/// What the planned run will do, hence which permissions it needs.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// Sends invitations (not a dry run).
    pub invite: bool,
    /// Reads group members (`--group`).
    pub group: bool,
    /// Writes `mail` or `userType` after the invitation.
    pub write_users: bool,
    /// A custom invitation message was asked for (or may be: `preflight` cannot know).
    pub custom_message: bool,
    /// Retires the internal credentials (`retire`): passwords, sessions, the directory role.
    pub retire: bool,
}

/// One line of the checklist.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    /// `ok`, `warning` (the run works, but read this) or `missing` (the run will not work).
    pub status: &'static str,
    pub detail: String,
}

impl Finding {
    fn new(check: &str, status: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            status,
            detail: detail.into(),
        }
    }

    fn blocking(&self) -> bool {
        self.status == "missing"
    }
}

/// One permission a run may need, with the ones that also cover it.
struct Permission {
    what: &'static str,
    grant: &'static str,
    covered_by: &'static [&'static str],
    /// Whether the run described by the needs asks for it.
    needed: fn(&Needs) -> bool,
}

/// Every permission a run may need, in the checklist's order.
const PERMISSIONS: &[Permission] = &[
    Permission {
        what: "read users",
        grant: "User.Read.All",
        covered_by: &[
            "User.Read.All",
            "User.ReadWrite.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ],
        needed: |_| true,
    },
    Permission {
        what: "read verified domains",
        grant: "Domain.Read.All",
        covered_by: &[
            "Domain.Read.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ],
        needed: |_| true,
    },
    Permission {
        what: "send invitations",
        grant: "User.Invite.All",
        covered_by: &["User.Invite.All", "Directory.ReadWrite.All"],
        needed: |needs| needs.invite,
    },
    Permission {
        what: "read group members",
        grant: "GroupMember.Read.All",
        covered_by: &[
            "GroupMember.Read.All",
            "Group.Read.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ],
        needed: |needs| needs.group,
    },
    Permission {
        what: "set mail / userType",
        grant: "User.ReadWrite.All",
        covered_by: &["User.ReadWrite.All", "Directory.ReadWrite.All"],
        needed: |needs| needs.write_users,
    },
];

/// The permissions `retire` needs (with `--retire`, after the run's): setting passwords and
/// revoking sessions. [`retire_findings`] checks them all (each is `needed` whenever it is
/// asked): it is asked only when retiring.
const RETIRE_PERMISSIONS: &[Permission] = &[
    Permission {
        what: "set passwords",
        grant: "User-PasswordProfile.ReadWrite.All",
        covered_by: &[
            "User-PasswordProfile.ReadWrite.All",
            "User.ReadWrite.All",
            "Directory.ReadWrite.All",
        ],
        needed: |_| true,
    },
    Permission {
        what: "revoke sessions",
        grant: "User.RevokeSessions.All",
        covered_by: &[
            "User.RevokeSessions.All",
            "User.ReadWrite.All",
            "Directory.ReadWrite.All",
        ],
        needed: |_| true,
    },
];

/// The permissions the run needs, in the checklist's order.
fn permissions(needs: &Needs) -> impl Iterator<Item = &'static Permission> + '_ {
    PERMISSIONS.iter().filter(|p| (p.needed)(needs))
}

/// Every check, in the order a person reads them. Never fails: problems are findings.
pub async fn check(graph: &GraphClient, needs: &Needs) -> Vec<Finding> {
    let mut out = Vec::new();
    let claims = match graph.token_claims().await {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::new("sign-in", "missing", sign_in_problem(&e)));
            return out;
        }
    };
    let grants = Grants::of(&claims);
    let delegated = grants.delegated;
    let who = if delegated {
        format!(
            "signed in as {} (delegated)",
            claims["upn"].as_str().unwrap_or("a user")
        )
    } else if claims.is_object() {
        format!(
            "signed in as app {} (app-only)",
            claims["appid"].as_str().unwrap_or("?")
        )
    } else {
        "signed in (the token is not a JWT: permissions cannot be read from it)".into()
    };
    out.push(Finding::new("sign-in", "ok", who));
    if claims.is_object() {
        out.extend(permissions(needs).map(|p| grants.finding(p)));
    }
    if needs.retire {
        out.extend(retire_findings(&claims));
    }
    let roles = directory_roles(&claims);
    let inviting_role = INVITING_ROLES
        .iter()
        .find(|(id, _)| roles.contains(id))
        .map(|(_, name)| *name);
    if needs.invite {
        // Read the policy only with the permission to: a refused read is a wasted request.
        let can_read = !claims.is_object()
            || grants.granted.iter().any(|g| {
                g.eq_ignore_ascii_case("Policy.Read.All")
                    || g.eq_ignore_ascii_case("Policy.ReadWrite.Authorization")
            });
        out.push(if can_read {
            policy_finding(graph, delegated, inviting_role).await
        } else {
            Finding::new("invitation policy", "warning", POLICY_NOT_CHECKED)
        });
        if delegated && inviting_role.is_none() && !roles.is_empty() {
            out.push(Finding::new(
                "directory role",
                "warning",
                "the signed-in user holds no Guest Inviter, User Administrator or Global Administrator role: invitations may be refused",
            ));
        }
        if !delegated && needs.custom_message {
            out.push(Finding::new(
                "custom message",
                "warning",
                "app-only sign-in: Graph drops customizedMessageBody, so invitations go out with Microsoft's standard text; sign in with --auth device-code to deliver a custom message",
            ));
        }
    }
    out
}

/// What a token grants: its permissions, and whether a user delegated them.
struct Grants {
    delegated: bool,
    granted: Vec<String>,
}

impl Grants {
    fn of(claims: &Value) -> Grants {
        Grants {
            delegated: claims.get("scp").is_some(),
            granted: granted_permissions(claims),
        }
    }

    /// `ok` naming the first granted permission that covers `p`, else `missing` with what to
    /// grant.
    fn finding(&self, p: &Permission) -> Finding {
        let kind = if self.delegated {
            "delegated permission"
        } else {
            "application permission"
        };
        let has = self
            .granted
            .iter()
            .find(|g| p.covered_by.iter().any(|c| c.eq_ignore_ascii_case(g)));
        match has {
            Some(g) => Finding::new(p.what, "ok", format!("{g} granted")),
            None => Finding::new(
                p.what,
                "missing",
                format!(
                    "grant the Microsoft Graph {kind} {} (API permissions > Add a permission, then Grant admin consent)",
                    p.grant
                ),
            ),
        }
    }
}

/// The directory role template ids in the token's `wids`.
fn directory_roles(claims: &Value) -> Vec<&str> {
    claims["wids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The permissions a token carries: `scp` (delegated) or `roles` (app-only).
fn granted_permissions(claims: &Value) -> Vec<String> {
    match claims.get("scp").and_then(Value::as_str) {
        Some(scp) => scp.split_whitespace().map(str::to_string).collect(),
        None => claims["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect(),
    }
}

/// What retiring the internal credentials needs, read from the token alone (no request): a
/// permission to set passwords, one to revoke sessions, and a directory role that may reset
/// passwords (app-only: the app's service principal; delegated: the signed-in user). Without
/// Privileged Authentication Administrator, users holding an admin role are refused by Graph:
/// a warning, so `retire` reports them instead of failing them blindly.
pub fn retire_findings(claims: &Value) -> Vec<Finding> {
    if !claims.is_object() {
        return vec![Finding::new(
            "retire",
            "missing",
            "not checked: the token is not a JWT, so its permissions and roles cannot be read; sign in with a method that gives Graph tokens (not B2B_ACCESS_TOKEN of another kind) before retiring",
        )];
    }
    let grants = Grants::of(claims);
    let delegated = grants.delegated;
    let mut out: Vec<Finding> = RETIRE_PERMISSIONS
        .iter()
        .map(|p| grants.finding(p))
        .collect();
    let wids = directory_roles(claims);
    let holder = if delegated {
        "the signed-in user"
    } else {
        "the app's service principal"
    };
    let role = PASSWORD_RESET_ROLES
        .iter()
        .find(|(id, _)| wids.iter().any(|w| w.eq_ignore_ascii_case(id)))
        .map(|(_, name)| *name);
    out.push(match role {
        None => Finding::new(
            "password reset role",
            "missing",
            format!("{holder} holds no directory role that may reset passwords: assign it User Administrator (Entra ID > Roles and administrators > User Administrator > Add assignments{})", if delegated { "" } else { ", select the app" }),
        ),
        Some(name) if wids.iter().any(|w| ADMIN_RESET_ROLES.iter().any(|a| w.eq_ignore_ascii_case(a))) => {
            Finding::new("password reset role", "ok", format!("{holder} holds {name}: every user, admins included"))
        }
        Some(name) => Finding::new(
            "password reset role",
            "warning",
            format!("{holder} holds {name}: users holding an admin role need Privileged Authentication Administrator; Graph refuses them, and retire reports them by name"),
        ),
    });
    out
}

/// What `retire` needs, read from the signed-in token (`retire --dry-run` lists it).
pub async fn retire_findings_of(graph: &GraphClient) -> Vec<Finding> {
    match graph.token_claims().await {
        Ok(claims) => retire_findings(&claims),
        Err(e) => vec![Finding::new("sign-in", "missing", sign_in_problem(&e))],
    }
}

/// `retire` before its first write: the same checks as `preflight --retire`; exit 4 with the
/// checklist when a permission or the role is missing, so nothing is written.
pub async fn require_retire_ready(graph: &GraphClient) -> anyhow::Result<Vec<Finding>> {
    let findings = retire_findings_of(graph).await;
    refuse_if_blocked(
        &findings,
        "retire cannot work yet: nothing was written; grant what the checklist says, then run again (`preflight --retire` re-checks)",
    )?;
    Ok(findings)
}

/// Exit 4 with the checklist on stderr when a finding blocks; `message` says what was not done.
fn refuse_if_blocked(findings: &[Finding], message: &str) -> anyhow::Result<()> {
    if findings.iter().any(Finding::blocking) {
        eprint!("{}", render(findings));
        return Err(ExitError {
            status: ExitStatus::TenantRefused,
            message: message.into(),
        }
        .into());
    }
    Ok(())
}

const REDEMPTION_NOT_CHECKED: &str = "not checked: reading it needs Policy.Read.All (optional)";

/// How partners will redeem, where Policy.Read.All allows reading it: the email one-time
/// passcode method and the default cross-tenant access policy's inbound B2B collaboration.
/// Never blocking: a partner organization can have settings of its own.
async fn redemption_findings(graph: &GraphClient, claims: &Value) -> Vec<Finding> {
    const OTP: &str = "email one-time passcode";
    const INBOUND: &str = "inbound B2B collaboration";
    let can_read = granted_permissions(claims)
        .iter()
        .any(|g| g.eq_ignore_ascii_case("Policy.Read.All"));
    if claims.is_object() && !can_read {
        return vec![
            Finding::new(OTP, "warning", format!("{REDEMPTION_NOT_CHECKED}; check Entra ID > External Identities > All identity providers > Email one-time passcode by hand")),
            Finding::new(INBOUND, "warning", format!("{REDEMPTION_NOT_CHECKED}; check Entra ID > External Identities > Cross-tenant access settings > Default settings by hand")),
        ];
    }
    let not_checked = |check: &str, e: GraphError| match e {
        GraphError::Api { status: 403, .. } | GraphError::TenantRefused { status: 403, .. } => {
            Finding::new(check, "warning", REDEMPTION_NOT_CHECKED)
        }
        e => Finding::new(check, "warning", format!("not checked: {e}")),
    };
    let mut out = Vec::new();
    out.push(match graph.email_otp_policy().await {
        Err(e) => not_checked(OTP, e),
        Ok(p) => {
            let state = p["state"].as_str().unwrap_or("enabled");
            let external = p["allowExternalIdToUseEmailOtp"].as_str().unwrap_or("default");
            if state.eq_ignore_ascii_case("enabled") && !external.eq_ignore_ascii_case("disabled") {
                Finding::new(OTP, "ok", "on: a partner with no Entra, Microsoft or federated account redeems with a code sent to their address; one who redeems that way keeps using codes until their redemption is reset (resend)")
            } else {
                Finding::new(OTP, "warning", format!("off (state {state}, allowExternalIdToUseEmailOtp {external}): a partner with no Entra, Microsoft or federated account cannot redeem until they create a Microsoft account; turn it on under Entra ID > External Identities > All identity providers > Email one-time passcode"))
            }
        }
    });
    out.push(match graph.cross_tenant_default_policy().await {
        Err(e) => not_checked(INBOUND, e),
        Ok(p) => {
            let inbound = &p["b2bCollaborationInbound"];
            let users = inbound["usersAndGroups"]["accessType"].as_str().unwrap_or("allowed");
            let apps = inbound["applications"]["accessType"].as_str().unwrap_or("allowed");
            if users.eq_ignore_ascii_case("allowed") && apps.eq_ignore_ascii_case("allowed") {
                Finding::new(INBOUND, "ok", "the default cross-tenant access policy lets partners' users in (users and groups: allowed, applications: allowed)")
            } else {
                Finding::new(INBOUND, "warning", format!("the default cross-tenant access policy blocks inbound B2B collaboration (users and groups: {users}, applications: {apps}): a partner organization without a setting of its own is refused (\"blocked by cross-tenant access settings\", sign-in AADSTS500213); allow it under Entra ID > External Identities > Cross-tenant access settings, by default or per partner organization"))
            }
        }
    });
    out
}

const POLICY_NOT_CHECKED: &str = "not checked: reading the authorization policy needs Policy.Read.All (optional); check External collaboration settings > Guest invite settings by hand";

/// One cheap read proving Graph answers this sign-in (`preflight` only: a run's own first
/// reads prove it).
async fn graph_answers(graph: &GraphClient) -> Finding {
    match graph.verified_domains().await {
        Ok(d) => Finding::new(
            "Graph answers",
            "ok",
            format!("{} verified domains read", d.len()),
        ),
        Err(GraphError::Api { status: 403, .. })
        | Err(GraphError::TenantRefused { status: 403, .. }) => Finding::new(
            "Graph answers",
            "ok",
            "Graph answered (403 on /domains: see above)",
        ),
        Err(e) => Finding::new(
            "Graph answers",
            "missing",
            format!("reading /v1.0/domains failed: {e}"),
        ),
    }
}

async fn policy_finding(graph: &GraphClient, delegated: bool, role: Option<&str>) -> Finding {
    const CHECK: &str = "invitation policy";
    let policy = match graph.authorization_policy().await {
        Ok(p) => p,
        Err(GraphError::Api { status: 403, .. })
        | Err(GraphError::TenantRefused { status: 403, .. }) => {
            return Finding::new(CHECK, "warning", POLICY_NOT_CHECKED)
        }
        Err(e) => return Finding::new(CHECK, "warning", format!("not checked: {e}")),
    };
    let value = policy["allowInvitesFrom"].as_str().unwrap_or("everyone");
    let fix = "change Entra ID > External Identities > External collaboration settings > Guest invite settings";
    match (value, delegated) {
        ("none", _) => Finding::new(
            CHECK,
            "missing",
            format!("allowInvitesFrom is none: nobody may invite; {fix}"),
        ),
        ("adminsAndGuestInviters", false) => Finding::new(
            CHECK,
            "missing",
            format!("allowInvitesFrom is adminsAndGuestInviters: an app cannot invite; {fix} to at least member users, or sign in with --auth device-code as a Guest Inviter"),
        ),
        ("adminsAndGuestInviters", true) => match role {
            Some(r) => Finding::new(CHECK, "ok", format!("adminsAndGuestInviters; you hold {r}")),
            None => Finding::new(
                CHECK,
                "missing",
                "allowInvitesFrom is adminsAndGuestInviters: assign the signed-in user the Guest Inviter role",
            ),
        },
        (v, _) => Finding::new(CHECK, "ok", format!("allowInvitesFrom is {v}")),
    }
}

fn sign_in_problem(e: &GraphError) -> String {
    match e {
        GraphError::Auth { code, message } if !message.starts_with(code.as_str()) => {
            format!("{code}: {message}")
        }
        GraphError::Auth { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The checklist a person reads in ten seconds.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let mark = match f.status {
            "ok" => "[ok]  ",
            "warning" => "[warn]",
            _ => "[FIX] ",
        };
        s.push_str(&format!("{mark} {}: {}\n", f.check, f.detail));
    }
    let missing = findings.iter().filter(|f| f.blocking()).count();
    // A check that could not be made is never reported as "will work".
    let unchecked = findings
        .iter()
        .filter(|f| f.status == "warning" && f.detail.starts_with("not checked"))
        .count();
    if missing == 0 && unchecked > 0 {
        s.push_str(&format!(
            "ready, {unchecked} check{} not made (see \"not checked\" above)\n",
            if unchecked == 1 { "" } else { "s" }
        ));
    } else if missing == 0 {
        s.push_str("ready: the run will work\n");
    } else {
        s.push_str(&format!("not ready: {missing} thing(s) to fix first\n"));
    }
    s
}

/// `run`/`resume`/`retry` before their first write: stop with exit 4 and the checklist when
/// the run cannot work, rather than failing every user with 403.
pub async fn require_ready(graph: &GraphClient, needs: &Needs) -> anyhow::Result<()> {
    let findings = check(graph, needs).await;
    refuse_if_blocked(
        &findings,
        "the run cannot work yet: nothing was sent; fix what the checklist says, then run again (`preflight` re-checks)",
    )?;
    for f in findings.iter().filter(|f| f.status == "warning") {
        if f.detail == POLICY_NOT_CHECKED {
            // Policy.Read.All is optional: most runs go without it.
            tracing::info!(check = %f.check, "{}", f.detail);
        } else {
            tracing::warn!(check = %f.check, "{}", f.detail);
        }
    }
    Ok(())
}

/// What a stored run needs.
pub fn needs_of(mode: RunMode, options: &RunOptions, group: bool) -> Needs {
    Needs {
        invite: mode == RunMode::Live,
        group,
        write_users: mode == RunMode::Live && (options.set_mail || options.set_guest),
        custom_message: options.message_body.is_some(),
        retire: false,
    }
}

pub async fn preflight(_db: &Path, args: PreflightArgs) -> anyhow::Result<ExitStatus> {
    let needs = Needs {
        invite: true,
        group: args.group.is_some(),
        write_users: args.set_mail || args.set_guest,
        // Preflight cannot know whether the run will carry a message: say it whenever it applies.
        custom_message: true,
        retire: args.retire,
    };
    let endpoints = Endpoints::new(
        args.sign_in.endpoints.graph_url(),
        args.sign_in.endpoints.login_url(),
    );
    let credentials = Credentials::resolve(args.sign_in.auth)?;
    let graph = common::connect(
        &endpoints,
        credentials,
        &RunOptions::default(),
        RunMode::DryRun,
    )?;
    let mut findings = check(&graph, &needs).await;
    if !findings
        .iter()
        .any(|f| f.check == "sign-in" && f.blocking())
    {
        findings.push(graph_answers(&graph).await);
    }
    // After a refused sign-in, asking for the token again would only repeat the refusal.
    let signed_in = !findings
        .iter()
        .any(|f| f.check == "sign-in" && f.blocking());
    if signed_in {
        if let Ok(claims) = graph.token_claims().await {
            findings.extend(redemption_findings(&graph, &claims).await);
        }
    }
    if let (Some(group), false) = (&args.group, findings.iter().any(Finding::blocking)) {
        findings.push(match graph.group_members_page(group, false, None).await {
            Ok(_) => Finding::new("group", "ok", format!("group {group} readable")),
            Err(e) => Finding::new("group", "missing", format!("group {group}: {e}")),
        });
    }
    if args.json {
        let ready = !findings.iter().any(Finding::blocking);
        println!(
            "{}",
            serde_json::json!({"ready": ready, "checks": findings})
        );
    } else {
        print!("{}", render(&findings));
    }
    Ok(if findings.iter().any(Finding::blocking) {
        ExitStatus::NeedsAttention
    } else {
        ExitStatus::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UA: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";
    const PAA: &str = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13";

    fn statuses(claims: Value) -> Vec<(String, &'static str)> {
        retire_findings(&claims)
            .into_iter()
            .map(|f| (f.check, f.status))
            .collect()
    }

    /// One row per outcome of the retire check: what is missing is named, roles come from `wids`.
    #[test]
    fn retire_check_reads_roles_and_wids() {
        let ok = |c: &str| (c.to_string(), "ok");
        let missing = |c: &str| (c.to_string(), "missing");
        let rows: Vec<(Value, Vec<(String, &str)>)> = vec![
            (
                json!({"roles": ["User-PasswordProfile.ReadWrite.All", "User.RevokeSessions.All"], "wids": [PAA]}),
                vec![
                    ok("set passwords"),
                    ok("revoke sessions"),
                    ok("password reset role"),
                ],
            ),
            (
                json!({"roles": ["User.ReadWrite.All"], "wids": [UA]}),
                vec![
                    ok("set passwords"),
                    ok("revoke sessions"),
                    ("password reset role".into(), "warning"),
                ],
            ),
            (
                json!({"roles": ["User.Read.All", "User.Invite.All"]}),
                vec![
                    missing("set passwords"),
                    missing("revoke sessions"),
                    missing("password reset role"),
                ],
            ),
            (
                json!({"roles": ["User-PasswordProfile.ReadWrite.All"], "wids": ["95e79109-95c0-4d8e-aee3-d01accf2d47b"]}),
                vec![
                    ok("set passwords"),
                    missing("revoke sessions"),
                    missing("password reset role"),
                ],
            ),
            (
                json!({"scp": "User.ReadWrite.All openid", "wids": [UA, PAA]}),
                vec![
                    ok("set passwords"),
                    ok("revoke sessions"),
                    ok("password reset role"),
                ],
            ),
            (Value::Null, vec![missing("retire")]),
        ];
        for (claims, want) in rows {
            assert_eq!(statuses(claims.clone()), want, "{claims}");
        }
        let f = retire_findings(&json!({"roles": []}));
        assert!(f[0]
            .detail
            .contains("application permission User-PasswordProfile.ReadWrite.All"));
        assert!(f[1].detail.contains("User.RevokeSessions.All"));
        assert!(f[2].detail.contains("User Administrator"));
        let f = retire_findings(&json!({"scp": "User.Read"}));
        assert!(f[0].detail.contains("delegated permission"));
        assert!(f[2].detail.contains("the signed-in user"));
    }

    #[test]
    fn a_check_not_made_is_never_will_work() {
        let ok = Finding::new("sign-in", "ok", "signed in");
        let unchecked = Finding::new("invitation policy", "warning", POLICY_NOT_CHECKED);
        let other = Finding::new("custom message", "warning", "app-only sign-in");
        assert!(render(&[ok.clone(), other.clone()]).ends_with("ready: the run will work\n"));
        assert!(render(&[ok.clone(), unchecked.clone(), other])
            .ends_with("ready, 1 check not made (see \"not checked\" above)\n"));
        let otp = Finding::new("email one-time passcode", "warning", REDEMPTION_NOT_CHECKED);
        assert!(render(&[ok, unchecked, otp])
            .ends_with("ready, 2 checks not made (see \"not checked\" above)\n"));
    }

    /// What `retire` will call before its first write: without the role it stops with exit 4
    /// having sent nothing but the sign-in; with it, it goes on.
    #[tokio::test]
    async fn retire_stops_with_exit_4_before_any_write_without_the_role() {
        use crate::emulator::{directory_role_ids, EmulatorConfig, Tenant};
        for (wids, ready) in [("", false), ("User Administrator", true)] {
            let config = EmulatorConfig {
                app_roles: vec![
                    "User.ReadWrite.All".into(),
                    "User.RevokeSessions.All".into(),
                ],
                app_directory_roles: directory_role_ids(wids).unwrap(),
                ..EmulatorConfig::new(Tenant::sample())
            };
            let emu = crate::emulator::start(config, "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let env: std::collections::HashMap<String, String> =
                emu.client_env().into_iter().collect();
            let credentials = Credentials::from_lookup(|k| env.get(k).cloned()).unwrap();
            let base = emu.base_url();
            let graph = common::connect(
                &Endpoints::new(base.clone(), base),
                credentials,
                &RunOptions::default(),
                RunMode::Live,
            )
            .unwrap();
            let result = require_retire_ready(&graph).await;
            if ready {
                let findings = result.unwrap();
                assert!(findings.iter().all(|f| !f.blocking()), "{findings:?}");
            } else {
                let err = result.unwrap_err();
                let exit = err.downcast_ref::<ExitError>().unwrap();
                assert_eq!(exit.status, ExitStatus::TenantRefused);
                assert!(exit.message.contains("nothing was written"));
            }
            let stats = emu.stats();
            let graph_requests: Vec<&String> = stats["requests"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| !k.contains("oauth2"))
                .collect();
            assert!(
                graph_requests.is_empty(),
                "only the sign-in: {graph_requests:?}"
            );
            emu.shutdown().await;
        }
    }
}
