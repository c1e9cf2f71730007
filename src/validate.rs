//! Validation: a pure function from a user snapshot and tenant facts to a verdict.
//!
//! Nothing here does I/O. Workers read the user (and, once per run, the tenant's verified domains
//! and address owners), then ask [`validate`] whether the user can be converted. The checks follow
//! the newer seed document (`seeds/000_…`) and Graph's documentation "Conversion rules"; where the older
//! document (`seeds/001_…`) asked for more, its rule becomes a note or a hint in a detail text,
//! never a block.

use std::collections::{HashMap, HashSet};

use crate::item::Reason;
use crate::model::User;

/// What the tenant knows beyond the user itself, gathered once per run.
#[derive(Debug, Default, Clone)]
pub struct TenantFacts {
    /// Verified domains of the tenant, lowercase.
    pub verified_domains: HashSet<String>,
    /// Lowercase address → ids of the users holding it in `mail`, `otherMails` or (as
    /// `smtp:address`) `proxyAddresses`.
    pub address_owners: HashMap<String, Vec<String>>,
    /// Lowercase id → `externalUserConvertedOn` of the users converted back to internal members.
    /// The property is beta-only (v1.0 refuses it in `$select`), so it is listed once per run
    /// and kept here rather than read with each user.
    pub converted_back: HashMap<String, String>,
}

impl TenantFacts {
    /// Indexes the user's `mail`, `otherMails` and SMTP `proxyAddresses` so [`validate`] can spot
    /// a second holder of the address an invitation (or `--set-mail`) would use: Graph refuses
    /// both when another object holds the address in any of the three.
    pub fn add_owner(&mut self, user: &User) {
        let proxies = user
            .proxy_addresses
            .iter()
            .flatten()
            .filter_map(|p| smtp_address(p));
        let addresses = user
            .mail
            .iter()
            .map(String::as_str)
            .chain(user.other_mails.iter().flatten().map(String::as_str))
            .chain(proxies)
            .map(|a| a.trim().to_lowercase())
            .filter(|a| !a.is_empty());
        for address in addresses {
            let owners = self.address_owners.entry(address).or_default();
            if !owners.iter().any(|id| id.eq_ignore_ascii_case(&user.id)) {
                owners.push(user.id.clone());
            }
        }
    }

    /// True when the address's domain is one of the tenant's verified domains.
    ///
    /// Exact domain match only: Graph lists and verifies each domain (subdomains included) on its
    /// own, so `partner.contoso.com` is verified only when it appears in the list itself.
    pub fn is_verified_domain(&self, email: &str) -> bool {
        domain_of(email).is_some_and(|d| self.verified_domains.contains(&d))
    }
}

/// A `mail` change `--set-mail` makes before the invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailChange {
    /// The user's `mail` before the change (`None`: it had none).
    pub from: Option<String>,
    pub to: String,
}

/// The outcome of validating one user.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every check passed: invite `email`. `notes` are warnings for the report (userType,
    /// on-premises source of authority), never reasons to stop.
    Convert {
        email: String,
        notes: Vec<String>,
        /// `--set-mail` will first change `mail` (from, to) so the invitation can go to `email`.
        mail_change: Option<MailChange>,
    },
    /// Nothing to do; only [`Reason::AlreadyB2b`].
    Skip { reason: Reason, detail: String },
    /// A check failed; nothing may be sent.
    Block { reason: Reason, detail: String },
}

/// Decides whether `user` can be converted, inviting `requested_email` (the input's
/// `externalEmail`) or, when absent, the user's `mail`.
///
/// Checks run in a fixed order and the first hit wins (the sample data's expectations rely on
/// it): converted_back, already_b2b, account_disabled, onprem_upn_present, exchange_mailbox, mail_missing,
/// mail_mismatch, address syntax, domain_verified, mail_conflict.
///
/// An effective address that fails [`email_syntax_error`] is blocked as
/// [`Reason::MailMissing`]: by that point the requested address equals `mail` (otherwise
/// `mail_mismatch` fired first), so the unusable address is always the user's `mail` property,
/// and the fix is the same as for a missing one: set `mail` to a usable external address.
/// `bad_input` stays reserved for unusable input rows.
pub fn validate(user: &User, requested_email: Option<&str>, facts: &TenantFacts) -> Verdict {
    validate_with(user, requested_email, facts, false)
}

/// [`validate`], with `--set-mail`: a cloud-only user without a mailbox whose only obstacle is
/// `mail_missing` or `mail_mismatch`, and whose row gives `externalEmail`, converts with a
/// [`MailChange`] to that address, provided the new address passes every later check (syntax,
/// verified domain, conflicts). Synced and mailbox users stay blocked with a hint saying why the
/// tool cannot set their mail.
pub fn validate_with(
    user: &User,
    requested_email: Option<&str>,
    facts: &TenantFacts,
    set_mail: bool,
) -> Verdict {
    let block = |reason: Reason, detail: String| Verdict::Block { reason, detail };

    let converted_on = non_empty(user.external_user_converted_on.as_deref()).or_else(|| {
        facts
            .converted_back
            .get(&user.id.to_lowercase())
            .map(String::as_str)
    });
    if let Some(on) = converted_on {
        return block(
            Reason::ConvertedBack,
            format!(
                "externalUserConvertedOn is {on}: the user was converted back to an internal \
                 member, and Graph refuses to invite such a user again (412)"
            ),
        );
    }

    if let Some(state) = non_empty(user.external_user_state.as_deref()) {
        return Verdict::Skip {
            reason: Reason::AlreadyB2b,
            detail: format!("externalUserState is {state}: the user is already a B2B user"),
        };
    }
    if let Some(ct) = non_empty(user.creation_type.as_deref()) {
        if ct.eq_ignore_ascii_case("Invitation") {
            return Verdict::Skip {
                reason: Reason::AlreadyB2b,
                detail: "creationType is Invitation: the user was created or converted through \
                         the invitation API"
                    .to_string(),
            };
        }
    }

    if user.account_enabled == Some(false) {
        return block(
            Reason::AccountDisabled,
            "accountEnabled is false: the partner could not sign in after conversion".to_string(),
        );
    }

    if let Some(onprem_upn) = non_empty(user.on_premises_user_principal_name.as_deref()) {
        return block(
            Reason::OnpremUpnPresent,
            format!(
                "onPremisesUserPrincipalName is {onprem_upn:?}: Entra Connect's default sync rule \
                 writes this attribute, and Microsoft blocks internal-to-external conversion of \
                 user objects that have it"
            ),
        );
    }

    if user.has_enabled_exchange_plan() {
        let mut detail = "an Exchange Online plan is enabled: the user has a mailbox, so mail \
                          cannot be set to an external address outside the Exchange admin center"
            .to_string();
        if set_mail {
            detail.push_str(
                "; --set-mail cannot do it either: Graph refuses to change a mailbox user's mail",
            );
        }
        return block(Reason::ExchangeMailbox, detail);
    }
    let synced = user.on_premises_sync_enabled == Some(true);
    // Only the mail obstacles --set-mail can remove; every later check still applies.
    let fixable = |requested: Option<&str>| -> Option<String> {
        let to = non_empty(requested)?;
        (set_mail && !synced).then(|| to.to_string())
    };
    let synced_hint = |detail: &mut String| {
        if set_mail && synced {
            detail.push_str(
                "; --set-mail cannot set it: a synced user's mail comes from on-premises Active \
                 Directory, so set it there and let Entra Connect sync it",
            );
        }
    };

    let other_mails: Vec<&str> = user
        .other_mails
        .iter()
        .flatten()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .collect();

    let Some(mail) = non_empty(user.mail.as_deref()) else {
        if let Some(to) = fixable(requested_email) {
            return validate_address(
                user,
                &to,
                facts,
                Some(MailChange {
                    from: None,
                    to: to.clone(),
                }),
            );
        }
        let mut detail = "the user has no mail address; the invitation goes to mail".to_string();
        if !other_mails.is_empty() {
            detail.push_str(&format!(
                "; otherMails holds {}: the older guidance used otherMails for cloud-only users, \
                 the current one requires mail to be the external address",
                other_mails.join(", ")
            ));
        }
        synced_hint(&mut detail);
        return block(Reason::MailMissing, detail);
    };

    let requested = non_empty(requested_email);
    if let Some(requested) = requested {
        if requested.to_lowercase() != mail.to_lowercase() {
            if let Some(to) = fixable(Some(requested)) {
                let change = MailChange {
                    from: Some(mail.to_string()),
                    to: to.clone(),
                };
                return validate_address(user, &to, facts, Some(change));
            }
            let mut detail = format!("externalEmail {requested} is not the user's mail {mail}");
            let cloud_only = user.on_premises_sync_enabled != Some(true);
            if cloud_only
                && other_mails
                    .iter()
                    .any(|a| a.to_lowercase() == requested.to_lowercase())
            {
                detail.push_str(
                    "; it is in otherMails, which the older guidance used for cloud-only users: \
                     the current guidance requires mail to be the external address, so set mail \
                     to it first",
                );
            }
            synced_hint(&mut detail);
            return block(Reason::MailMismatch, detail);
        }
    }

    let email = requested.unwrap_or(mail);
    validate_address(user, email, facts, None)
}

/// The checks on the address the invitation goes to (after `mail` is settled), then the notes.
fn validate_address(
    user: &User,
    email: &str,
    facts: &TenantFacts,
    mail_change: Option<MailChange>,
) -> Verdict {
    let block = |reason: Reason, detail: String| Verdict::Block { reason, detail };
    if let Some(why) = email_syntax_error(email) {
        return block(
            Reason::MailMissing,
            format!("mail {email:?} is not a valid address for an invitation: {why}"),
        );
    }

    if facts.is_verified_domain(email) {
        let domain = domain_of(email).unwrap_or_default();
        return block(
            Reason::DomainVerified,
            format!(
                "{email} is in {domain}, a verified domain of this tenant: a B2B user's email \
                 cannot be in a verified domain"
            ),
        );
    }

    if let Some(owners) = facts.address_owners.get(&email.to_lowercase()) {
        let others: Vec<&str> = owners
            .iter()
            .filter(|id| !id.eq_ignore_ascii_case(&user.id))
            .map(String::as_str)
            .collect();
        if !others.is_empty() {
            return block(
                Reason::MailConflict,
                format!(
                    "{email} is already held in mail, otherMails or proxyAddresses by user {}",
                    others.join(", ")
                ),
            );
        }
    }

    let mut notes = Vec::new();
    if let Some(change) = &mail_change {
        notes.push(match &change.from {
            Some(from) => format!("mail will be set from `{from}` to `{}`", change.to),
            None => format!("mail will be set to `{}` (it has none)", change.to),
        });
    }
    match non_empty(user.user_type.as_deref()) {
        Some(t) if t.eq_ignore_ascii_case("Guest") => {
            notes.push("internal guest (userType Guest): converted, userType stays Guest".into())
        }
        Some(t) if t.eq_ignore_ascii_case("Member") => notes.push(
            "userType Member: conversion does not change userType; set it to Guest separately \
             for External ID monthly-active-user billing"
                .into(),
        ),
        _ => {}
    }
    if user.on_premises_sync_enabled == Some(true) {
        notes.push(
            "synced from on-premises: the on-premises directory stays the source of authority, \
             and the internal password still works on-premises until it is reset (set it to a \
             random unknown value)"
                .into(),
        );
    }
    Verdict::Convert {
        email: email.to_string(),
        notes,
        mail_change,
    }
}

/// The one email-syntax rule, shared with the emulator.
pub use crate::email::{email_syntax_error, FORBIDDEN_LOCAL};

/// Longest `userPrincipalName` Entra accepts, in characters (64 before the `@`, 48 after it,
/// 113 in all).
pub const MAX_UPN_CHARS: usize = 113;

/// Why `upn` cannot be a user principal name by length alone; `None` when it can. Checked at
/// ingestion, so an absurd value is one `bad_input` row and never becomes a Graph request.
pub fn upn_length_error(upn: &str) -> Option<String> {
    let n = upn.chars().count();
    (n > MAX_UPN_CHARS)
        .then(|| format!("{n} characters long; Entra allows at most {MAX_UPN_CHARS}"))
}

/// Longest BCP 47 language tag accepted (RFC 5646 §4.4.1 asks every implementation to handle
/// 35 characters, which covers every tag Microsoft's invitation email offers).
pub const MAX_LANGUAGE_TAG_CHARS: usize = 35;

/// A BCP 47 language tag such as `en-US`, `zh-Hans-CN` or `es-419`: a primary language of 2–8
/// letters, then subtags of 1–8 letters or digits, separated by `-`. Anything else (`en_US`,
/// `../../etc`) is refused before it can reach Graph or a file name.
pub fn is_language_tag(s: &str) -> bool {
    let mut subtags = s.split('-');
    let first_ok = subtags
        .next()
        .is_some_and(|f| (2..=8).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_alphabetic()));
    s.len() <= MAX_LANGUAGE_TAG_CHARS
        && first_ok
        && subtags
            .all(|t| (1..=8).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The address of an SMTP proxy address (`SMTP:` primary, `smtp:` secondary, or no prefix);
/// `None` for other address types (`SIP:`, `X500:`, …), which cannot collide with a mail address.
pub fn smtp_address(proxy: &str) -> Option<&str> {
    let proxy = proxy.trim();
    match proxy.split_once(':') {
        Some((kind, rest)) if kind.eq_ignore_ascii_case("smtp") => Some(rest),
        Some((kind, _)) if !kind.contains('@') => None,
        _ => Some(proxy),
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// Lowercase domain after the last `@`.
fn domain_of(email: &str) -> Option<String> {
    email
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AssignedPlan;

    /// Turns the passing [`good`] user into a test case.
    type Change = fn(&mut User);

    const ME: &str = "11111111-1111-1111-1111-111111111111";
    const OTHER: &str = "22222222-2222-2222-2222-222222222222";

    /// A cloud-only internal guest who passes every check.
    fn good() -> User {
        User {
            id: ME.into(),
            user_principal_name: Some("bob@contoso.com".into()),
            mail: Some("bob@fabrikam.com".into()),
            account_enabled: Some(true),
            user_type: Some("Guest".into()),
            on_premises_sync_enabled: None,
            ..Default::default()
        }
    }

    fn facts() -> TenantFacts {
        let mut f = TenantFacts {
            verified_domains: ["contoso.com", "contoso.onmicrosoft.com"]
                .into_iter()
                .map(String::from)
                .collect(),
            ..Default::default()
        };
        f.add_owner(&good());
        f.add_owner(&User {
            id: OTHER.into(),
            mail: Some("carol@fabrikam.com".into()),
            other_mails: Some(vec!["Shared@Fabrikam.com".into()]),
            proxy_addresses: Some(vec![
                "SMTP:carol@fabrikam.com".into(),
                "smtp:Alias@Fabrikam.com".into(),
                "SIP:voice@fabrikam.com".into(),
            ]),
            ..Default::default()
        });
        f
    }

    fn exchange() -> Option<Vec<AssignedPlan>> {
        Some(vec![AssignedPlan {
            capability_status: "Enabled".into(),
            service: "exchange".into(),
            ..Default::default()
        }])
    }

    fn reason_of(v: &Verdict) -> Option<Reason> {
        match v {
            Verdict::Skip { reason, .. } | Verdict::Block { reason, .. } => Some(*reason),
            Verdict::Convert { .. } => None,
        }
    }

    fn detail_of(v: &Verdict) -> &str {
        match v {
            Verdict::Skip { detail, .. } | Verdict::Block { detail, .. } => detail,
            Verdict::Convert { .. } => "",
        }
    }

    /// [`good`] with one change.
    fn with(change: impl FnOnce(&mut User)) -> User {
        let mut user = good();
        change(&mut user);
        user
    }

    /// [`good`] with another mail.
    fn mailed(mail: &str) -> User {
        with(|u| u.mail = Some(mail.into()))
    }

    /// A row of [`one_row_per_reason`]: the user, the address asked for, the reason expected.
    struct Case {
        name: &'static str,
        user: User,
        requested: Option<&'static str>,
        expected: Option<Reason>,
    }

    fn converts(name: &'static str, user: User) -> Case {
        Case {
            name,
            user,
            requested: None,
            expected: None,
        }
    }

    fn blocked(name: &'static str, user: User, reason: Reason) -> Case {
        Case {
            expected: Some(reason),
            ..converts(name, user)
        }
    }

    /// Already B2B: the one reason that skips the user rather than blocking it.
    fn skipped(name: &'static str, user: User) -> Case {
        blocked(name, user, Reason::AlreadyB2b)
    }

    impl Case {
        fn requesting(self, email: &'static str) -> Self {
            Case {
                requested: Some(email),
                ..self
            }
        }
    }

    /// One row per reason code `validate` can produce, plus the Convert cases.
    #[test]
    fn one_row_per_reason() {
        let cases = [
            converts("guest converts", good()),
            converts(
                "member converts",
                with(|u| u.user_type = Some("Member".into())),
            ),
            converts("requested = mail, other case", good()).requesting(" BOB@fabrikam.com "),
            blocked(
                "converted back (externalUserConvertedOn)",
                with(|u| u.external_user_converted_on = Some("2026-11-02T10:00:00Z".into())),
                Reason::ConvertedBack,
            ),
            skipped(
                "externalUserState",
                with(|u| u.external_user_state = Some("PendingAcceptance".into())),
            ),
            skipped(
                "creationType Invitation",
                with(|u| u.creation_type = Some("invitation".into())),
            ),
            blocked(
                "disabled",
                with(|u| u.account_enabled = Some(false)),
                Reason::AccountDisabled,
            ),
            blocked(
                "onprem upn",
                with(|u| u.on_premises_user_principal_name = Some("bob@corp.local".into())),
                Reason::OnpremUpnPresent,
            ),
            blocked(
                "exchange",
                with(|u| u.assigned_plans = exchange()),
                Reason::ExchangeMailbox,
            ),
            blocked("no mail", with(|u| u.mail = None), Reason::MailMissing),
            blocked(
                "no mail, email requested",
                mailed("  "),
                Reason::MailMissing,
            )
            .requesting("bob@fabrikam.com"),
            blocked("mismatch", good(), Reason::MailMismatch).requesting("robert@fabrikam.com"),
            blocked(
                "mail not a valid address",
                mailed("bob smith@fabrikam.com"),
                Reason::MailMissing,
            ),
            blocked(
                "verified domain",
                mailed("bob@Contoso.com"),
                Reason::DomainVerified,
            ),
            blocked(
                "conflict via mail",
                mailed("carol@fabrikam.com"),
                Reason::MailConflict,
            ),
            blocked(
                "conflict via otherMails",
                mailed("shared@fabrikam.com"),
                Reason::MailConflict,
            ),
            blocked(
                "conflict via proxyAddresses (smtp: stripped, any case)",
                mailed("ALIAS@fabrikam.com"),
                Reason::MailConflict,
            ),
            converts(
                "a SIP proxy address is no mail conflict",
                mailed("voice@fabrikam.com"),
            ),
        ];
        let facts = facts();
        for Case {
            name,
            user,
            requested,
            expected,
        } in cases
        {
            let verdict = validate(&user, requested, &facts);
            assert_eq!(reason_of(&verdict), expected, "{name}: {verdict:?}");
            if let Some(r) = expected {
                let skip = matches!(verdict, Verdict::Skip { .. });
                assert_eq!(skip, r == Reason::AlreadyB2b, "{name}");
                assert!(!detail_of(&verdict).is_empty(), "{name}");
            }
        }
    }

    /// The beta property is listed once per run: a user converted back is blocked from the
    /// tenant facts even when its own snapshot (read through v1.0) cannot carry the property.
    #[test]
    fn converted_back_from_tenant_facts() {
        let mut facts = facts();
        facts
            .converted_back
            .insert(ME.to_string(), "2026-11-02T10:00:00Z".into());
        let v = validate(&good(), None, &facts);
        assert_eq!(reason_of(&v), Some(Reason::ConvertedBack));
        assert!(detail_of(&v).contains("412"), "{v:?}");
        facts.converted_back.clear();
        assert!(matches!(
            validate(&good(), None, &facts),
            Verdict::Convert { .. }
        ));
    }

    #[test]
    fn first_hit_wins() {
        let facts = facts();
        let cases: Vec<(Change, Reason)> = vec![
            (
                |u| {
                    u.external_user_converted_on = Some("2026-11-02T10:00:00Z".into());
                    u.account_enabled = Some(false);
                },
                Reason::ConvertedBack,
            ),
            (
                |u| {
                    u.account_enabled = Some(false);
                    u.external_user_state = Some("Accepted".into());
                },
                Reason::AlreadyB2b,
            ),
            (
                |u| {
                    u.account_enabled = Some(false);
                    u.on_premises_user_principal_name = Some("x@corp.local".into());
                },
                Reason::AccountDisabled,
            ),
            (
                |u| {
                    u.on_premises_user_principal_name = Some("x@corp.local".into());
                    u.assigned_plans = exchange();
                },
                Reason::OnpremUpnPresent,
            ),
            (
                |u| {
                    u.assigned_plans = exchange();
                    u.mail = None;
                },
                Reason::ExchangeMailbox,
            ),
            (
                |u| {
                    u.mail = Some("bob@contoso.com".into());
                    u.assigned_plans = None;
                },
                Reason::DomainVerified,
            ),
        ];
        for (i, (change, expected)) in cases.into_iter().enumerate() {
            let verdict = validate(&with(change), None, &facts);
            assert_eq!(reason_of(&verdict), Some(expected), "case {i}: {verdict:?}");
        }
        // Mismatch is checked before the verified domain of the requested address.
        let verdict = validate(&good(), Some("bob@contoso.com"), &facts);
        assert_eq!(reason_of(&verdict), Some(Reason::MailMismatch));
    }

    #[test]
    fn notes_report_user_type_and_sync() {
        let facts = facts();
        let Verdict::Convert { email, notes, .. } = validate(&good(), None, &facts) else {
            panic!("guest should convert");
        };
        assert_eq!(email, "bob@fabrikam.com");
        assert_eq!(
            notes,
            vec!["internal guest (userType Guest): converted, userType stays Guest"]
        );

        let mut synced = good();
        synced.user_type = Some("Member".into());
        synced.on_premises_sync_enabled = Some(true);
        let Verdict::Convert { notes, .. } = validate(&synced, None, &facts) else {
            panic!("synced member should convert");
        };
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("userType Member"));
        assert!(notes[1].contains("source of authority"));
    }

    /// `--set-mail`: which users get a mail step, which stay blocked, and why.
    #[test]
    fn set_mail_fixes_only_cloud_only_users_without_a_mailbox() {
        type Case = (
            &'static str,
            fn(&mut User),
            Option<&'static str>,
            Result<Option<(Option<&'static str>, &'static str)>, (Reason, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            ("nothing to fix: no mail step", |_| {}, None, Ok(None)),
            (
                "mismatch, cloud-only: set mail",
                |_| {},
                Some("robert@fabrikam.com"),
                Ok(Some((Some("bob@fabrikam.com"), "robert@fabrikam.com"))),
            ),
            (
                "missing, cloud-only: set mail",
                |u| u.mail = None,
                Some("robert@fabrikam.com"),
                Ok(Some((None, "robert@fabrikam.com"))),
            ),
            (
                "missing and no externalEmail: nothing to set",
                |u| u.mail = None,
                None,
                Err((Reason::MailMissing, "no mail")),
            ),
            (
                "synced: stays blocked with a hint",
                |u| u.on_premises_sync_enabled = Some(true),
                Some("robert@fabrikam.com"),
                Err((Reason::MailMismatch, "on-premises Active Directory")),
            ),
            (
                "synced, missing: stays blocked with a hint",
                |u| {
                    u.on_premises_sync_enabled = Some(true);
                    u.mail = None
                },
                Some("robert@fabrikam.com"),
                Err((Reason::MailMissing, "on-premises Active Directory")),
            ),
            (
                "mailbox: stays blocked with a hint",
                |u| u.assigned_plans = exchange(),
                Some("robert@fabrikam.com"),
                Err((Reason::ExchangeMailbox, "Graph refuses")),
            ),
            (
                "new address in a verified domain",
                |_| {},
                Some("robert@contoso.com"),
                Err((Reason::DomainVerified, "verified domain")),
            ),
            (
                "new address held by another user's proxyAddresses",
                |_| {},
                Some("alias@fabrikam.com"),
                Err((Reason::MailConflict, "proxyAddresses")),
            ),
            (
                "on-premises UPN still blocks first",
                |u| u.on_premises_user_principal_name = Some("bob@corp.local".into()),
                Some("robert@fabrikam.com"),
                Err((Reason::OnpremUpnPresent, "onPremisesUserPrincipalName")),
            ),
        ];
        let facts = facts();
        for (name, change, requested, want) in cases {
            let verdict = validate_with(&with(change), requested, &facts, true);
            match (want, &verdict) {
                (
                    Ok(expected),
                    Verdict::Convert {
                        email,
                        mail_change,
                        notes,
                    },
                ) => {
                    let got = mail_change
                        .as_ref()
                        .map(|m| (m.from.as_deref(), m.to.as_str()));
                    assert_eq!(got, expected, "{name}");
                    if let Some((_, to)) = expected {
                        assert_eq!(email, to, "{name}: the invitation goes to the new mail");
                        assert!(
                            notes[0].starts_with("mail will be set"),
                            "{name}: {notes:?}"
                        );
                    }
                }
                (Err((reason, hint)), _) => {
                    assert_eq!(reason_of(&verdict), Some(reason), "{name}: {verdict:?}");
                    assert!(detail_of(&verdict).contains(hint), "{name}: {verdict:?}");
                }
                (Ok(_), other) => panic!("{name}: expected a conversion, got {other:?}"),
            }
        }
        // Without --set-mail the same users stay blocked, with no --set-mail hint.
        let v = validate_with(&good(), Some("robert@fabrikam.com"), &facts, false);
        assert_eq!(reason_of(&v), Some(Reason::MailMismatch));
        assert!(!detail_of(&v).contains("--set-mail"));
        let Verdict::Convert { notes, .. } =
            validate_with(&good(), Some("robert@fabrikam.com"), &facts, true)
        else {
            panic!("fixable");
        };
        assert_eq!(
            notes[0],
            "mail will be set from `bob@fabrikam.com` to `robert@fabrikam.com`"
        );
    }

    #[test]
    fn details_carry_older_guidance_hints() {
        let facts = facts();
        let mut user = good();
        user.mail = None;
        user.other_mails = Some(vec!["bob@fabrikam.com".into()]);
        let v = validate(&user, None, &facts);
        assert!(detail_of(&v).contains("otherMails"), "{v:?}");

        let mut user = good();
        user.other_mails = Some(vec!["robert@fabrikam.com".into()]);
        let v = validate(&user, Some("robert@fabrikam.com"), &facts);
        let d = detail_of(&v);
        assert!(d.contains("robert@fabrikam.com") && d.contains("bob@fabrikam.com"));
        assert!(d.contains("otherMails"), "{d}");

        // A synced user gets no otherMails hint: the older guidance used mail for them too.
        user.on_premises_sync_enabled = Some(true);
        let v = validate(&user, Some("robert@fabrikam.com"), &facts);
        assert!(!detail_of(&v).contains("otherMails"), "{v:?}");
    }

    #[test]
    fn own_address_is_not_a_conflict_and_domains_match_exactly() {
        let facts = facts();
        assert!(matches!(
            validate(&good(), None, &facts),
            Verdict::Convert { .. }
        ));
        assert!(facts.is_verified_domain("a@CONTOSO.com"));
        assert!(!facts.is_verified_domain("a@sub.contoso.com"));
        assert!(!facts.is_verified_domain("no-at-sign"));
    }

    #[test]
    fn email_syntax_table() {
        for ok in [
            "bob@fabrikam.com",
            "bob.smith@fabrikam.co.uk",
            "_bob_@fabrikam.com",
            "b-o.b@x-y.example",
            "o'neil@fabrikam.com",
            "BOB@FABRIKAM.COM",
            "1@2.io",
        ] {
            assert_eq!(email_syntax_error(ok), None, "{ok}");
        }
        let long = format!("{}@fabrikam.com", "a".repeat(250));
        let mut bad: Vec<String> = [
            "",
            "bob",
            "bob@@fabrikam.com",
            "bob@x@fabrikam.com",
            "@fabrikam.com",
            "bob@",
            "bob smith@fabrikam.com",
            "bob\t@fabrikam.com",
            ".bob@fabrikam.com",
            "bob.@fabrikam.com",
            "-bob@fabrikam.com",
            "bob-@fabrikam.com",
            "bob@fabrikam",
            "bob@fabrikam..com",
            "bob@.fabrikam.com",
            "bob@fabrikam.com.",
            "bob@-fabrikam.com",
            "bob@fabrikam-.com",
            "bob@fab_rikam.com",
            "bob@fab rikam.com",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        bad.push(long);
        for c in FORBIDDEN_LOCAL {
            bad.push(format!("bo{c}b@fabrikam.com"));
        }
        for b in &bad {
            assert!(email_syntax_error(b).is_some(), "{b:?} should be refused");
        }
        assert!(email_syntax_error("bo#b@fabrikam.com")
            .unwrap()
            .contains('#'));
    }

    #[test]
    fn add_owner_indexes_each_holder_once() {
        let mut f = TenantFacts::default();
        let u = User {
            id: ME.into(),
            mail: Some("Bob@Fabrikam.com".into()),
            other_mails: Some(vec!["bob@fabrikam.com".into(), "".into()]),
            ..Default::default()
        };
        f.add_owner(&u);
        f.add_owner(&u);
        assert_eq!(f.address_owners.len(), 1);
        assert_eq!(f.address_owners["bob@fabrikam.com"], vec![ME.to_string()]);
    }
}
