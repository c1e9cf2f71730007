//! `preflight`: before the weekend, prove the run will work — sign in, read the permissions the
//! token carries (`roles` app-only, `scp` delegated), read the tenant's invitation policy, and make
//! one cheap read — and say what to grant or change. `run`, `resume` and `retry` go through the
//! same checks (`require_ready`) before their first write.

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

/// One permission the run needs, with the ones that also cover it.
struct Permission {
    what: &'static str,
    grant: &'static str,
    covered_by: &'static [&'static str],
}

fn permissions(needs: &Needs) -> Vec<Permission> {
    let mut out = vec![
        Permission {
            what: "read users",
            grant: "User.Read.All",
            covered_by: &[
                "User.Read.All",
                "User.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
        },
        Permission {
            what: "read verified domains",
            grant: "Domain.Read.All",
            covered_by: &[
                "Domain.Read.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
        },
    ];
    if needs.invite {
        out.push(Permission {
            what: "send invitations",
            grant: "User.Invite.All",
            covered_by: &["User.Invite.All", "Directory.ReadWrite.All"],
        });
    }
    if needs.group {
        out.push(Permission {
            what: "read group members",
            grant: "GroupMember.Read.All",
            covered_by: &[
                "GroupMember.Read.All",
                "Group.Read.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
        });
    }
    if needs.write_users {
        out.push(Permission {
            what: "set mail / userType",
            grant: "User.ReadWrite.All",
            covered_by: &["User.ReadWrite.All", "Directory.ReadWrite.All"],
        });
    }
    out
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
    let delegated = claims.get("scp").is_some();
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
    let granted: Vec<String> = if delegated {
        claims["scp"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    } else {
        claims["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect()
    };
    let kind = if delegated {
        "delegated permission"
    } else {
        "application permission"
    };
    if claims.is_object() {
        for p in permissions(needs) {
            let has = granted
                .iter()
                .find(|g| p.covered_by.iter().any(|c| c.eq_ignore_ascii_case(g)));
            out.push(match has {
                Some(g) => Finding::new(p.what, "ok", format!("{g} granted")),
                None => Finding::new(
                    p.what,
                    "missing",
                    format!(
                        "grant the Microsoft Graph {kind} {} (API permissions > Add a permission, then Grant admin consent)",
                        p.grant
                    ),
                ),
            });
        }
    }
    let roles: Vec<&str> = claims["wids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let inviting_role = INVITING_ROLES
        .iter()
        .find(|(id, _)| roles.contains(id))
        .map(|(_, name)| *name);
    if needs.invite {
        // Read the policy only with the permission to: a refused read is a wasted request.
        let can_read = !claims.is_object()
            || granted.iter().any(|g| {
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
    if missing == 0 {
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
    if findings.iter().any(Finding::blocking) {
        eprint!("{}", render(&findings));
        return Err(ExitError {
            status: ExitStatus::TenantRefused,
            message: "the run cannot work yet: nothing was sent; fix what the checklist says, then run again (`preflight` re-checks)".into(),
        }
        .into());
    }
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
    }
}

pub async fn preflight(_db: &Path, args: PreflightArgs) -> anyhow::Result<ExitStatus> {
    let needs = Needs {
        invite: true,
        group: args.group.is_some(),
        write_users: args.set_mail || args.set_guest,
        // Preflight cannot know whether the run will carry a message: say it whenever it applies.
        custom_message: true,
    };
    let endpoints = Endpoints::new(args.endpoints.graph_url(), args.endpoints.login_url());
    let credentials = Credentials::resolve(args.auth)?;
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
