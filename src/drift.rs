//! `apply`: has a user changed since the approved dry run? A pure comparison of the plan's
//! snapshot with the user as read just before sending.
//!
//! The board approved what the dry run saw. A user whose decisive properties moved since (an
//! address changed, a mailbox licensed, the account synced or disabled, someone else invited
//! them) is no longer the user the board decided on, whatever the checks say now: such a user
//! ends `blocked` `changed_since_plan`, and the detail names each change.

use crate::model::User;
use crate::validate::Verdict;

/// Each decisive property that differs, in words ("mail was a@fabrikam.com at the plan, now
/// b@fabrikam.com"), in a fixed order; empty when none does.
pub fn property_changes(plan: &User, now: &User) -> Vec<String> {
    fn text(v: Option<&str>) -> String {
        v.filter(|s| !s.is_empty()).unwrap_or("(none)").to_string()
    }
    fn flag(v: Option<bool>) -> String {
        v.map_or_else(|| "(none)".to_string(), |b| b.to_string())
    }
    let mut changes = Vec::new();
    let mut differ = |name: &str, before: String, after: String| {
        // Graph compares names and addresses case-insensitively; so does the plan.
        if !before.eq_ignore_ascii_case(&after) {
            changes.push(format!("{name} was {before} at the plan, now {after}"));
        }
    };
    differ(
        "mail",
        text(plan.mail.as_deref()),
        text(now.mail.as_deref()),
    );
    differ(
        "userType",
        text(plan.user_type.as_deref()),
        text(now.user_type.as_deref()),
    );
    differ(
        "accountEnabled",
        flag(plan.account_enabled),
        flag(now.account_enabled),
    );
    differ(
        "onPremisesSyncEnabled",
        flag(plan.on_premises_sync_enabled),
        flag(now.on_premises_sync_enabled),
    );
    differ(
        "onPremisesUserPrincipalName",
        text(plan.on_premises_user_principal_name.as_deref()),
        text(now.on_premises_user_principal_name.as_deref()),
    );
    let exchange = |u: &User| {
        if u.has_enabled_exchange_plan() {
            "enabled".to_string()
        } else {
            "not enabled".to_string()
        }
    };
    differ("the Exchange Online plan", exchange(plan), exchange(now));
    differ(
        "externalUserState",
        text(plan.external_user_state.as_deref()),
        text(now.external_user_state.as_deref()),
    );
    changes
}

/// Why a user the plan would convert must not be converted now, or `None` when nothing that
/// matters changed: the decisive properties first, then the verdict (the plan's was "convert"),
/// then the address the invitation would go to.
pub fn changed_since_plan(
    plan: &User,
    plan_email: Option<&str>,
    now: &User,
    verdict: &Verdict,
) -> Option<String> {
    let changes = property_changes(plan, now);
    if !changes.is_empty() {
        return Some(changes.join("; "));
    }
    match verdict {
        Verdict::Block { reason, detail } | Verdict::Skip { reason, detail } => Some(format!(
            "the plan would convert this user; now {} {reason}: {detail}",
            reason.state()
        )),
        Verdict::Convert { email, .. } => match plan_email {
            Some(planned) if !planned.eq_ignore_ascii_case(email) => Some(format!(
                "the invitation address was {planned} at the plan, now {email}"
            )),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Reason;
    use crate::model::AssignedPlan;

    fn planned() -> User {
        User {
            id: "u1".into(),
            mail: Some("a@fabrikam.com".into()),
            user_type: Some("Member".into()),
            account_enabled: Some(true),
            on_premises_sync_enabled: None,
            assigned_plans: Some(vec![AssignedPlan {
                assigned_date_time: None,
                capability_status: "Deleted".into(),
                service: "exchange".into(),
                service_plan_id: None,
            }]),
            ..User::default()
        }
    }

    fn convert(email: &str) -> Verdict {
        Verdict::Convert {
            email: email.into(),
            notes: vec![],
            mail_change: None,
        }
    }

    /// One row per decisive property, then the verdict and the address.
    #[test]
    fn each_decisive_change_is_named() {
        type Change = fn(&mut User);
        let rows: Vec<(&str, Change, &str)> = vec![
            (
                "mail",
                |u| u.mail = Some("b@fabrikam.com".into()),
                "mail was a@fabrikam.com at the plan, now b@fabrikam.com",
            ),
            (
                "userType",
                |u| u.user_type = Some("Guest".into()),
                "userType was Member at the plan, now Guest",
            ),
            (
                "accountEnabled",
                |u| u.account_enabled = Some(false),
                "accountEnabled was true at the plan, now false",
            ),
            (
                "onPremisesSyncEnabled",
                |u| u.on_premises_sync_enabled = Some(true),
                "onPremisesSyncEnabled was (none) at the plan, now true",
            ),
            (
                "onPremisesUserPrincipalName",
                |u| u.on_premises_user_principal_name = Some("a@corp.local".into()),
                "onPremisesUserPrincipalName was (none) at the plan, now a@corp.local",
            ),
            (
                "assignedPlans",
                |u| u.assigned_plans.as_mut().unwrap()[0].capability_status = "Enabled".into(),
                "the Exchange Online plan was not enabled at the plan, now enabled",
            ),
            (
                "externalUserState",
                |u| u.external_user_state = Some("PendingAcceptance".into()),
                "externalUserState was (none) at the plan, now PendingAcceptance",
            ),
        ];
        for (property, change, want) in rows {
            let mut now = planned();
            change(&mut now);
            assert_eq!(
                changed_since_plan(
                    &planned(),
                    Some("a@fabrikam.com"),
                    &now,
                    &convert("a@fabrikam.com")
                ),
                Some(want.to_string()),
                "{property}"
            );
        }
    }

    #[test]
    fn unchanged_users_pass_and_other_changes_are_named() {
        let plan = planned();
        // Case of the address, and properties that decide nothing, are not drift.
        let mut now = planned();
        now.mail = Some("A@Fabrikam.com".into());
        now.display_name = Some("Anna (renamed)".into());
        assert_eq!(
            changed_since_plan(
                &plan,
                Some("a@fabrikam.com"),
                &now,
                &convert("a@fabrikam.com")
            ),
            None
        );
        let blocked = Verdict::Block {
            reason: Reason::MailConflict,
            detail: "b@x.com also holds it".into(),
        };
        assert_eq!(
            changed_since_plan(&plan, Some("a@fabrikam.com"), &planned(), &blocked),
            Some(
                "the plan would convert this user; now blocked mail_conflict: b@x.com also holds it"
                    .into()
            )
        );
        assert_eq!(
            changed_since_plan(
                &plan,
                Some("a@fabrikam.com"),
                &planned(),
                &convert("c@x.com")
            ),
            Some("the invitation address was a@fabrikam.com at the plan, now c@x.com".into())
        );
        let mut two = planned();
        two.mail = None;
        two.account_enabled = Some(false);
        assert_eq!(
            property_changes(&plan, &two),
            vec![
                "mail was a@fabrikam.com at the plan, now (none)".to_string(),
                "accountEnabled was true at the plan, now false".to_string(),
            ]
        );
    }
}
