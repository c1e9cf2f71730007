//! Synthetic tenants for benchmarks: `Tenant::generate(n, seed)` is reproducible and mixes the
//! reasons a real tenant has (about 85% convertible partner accounts).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tenant::{App, AppCertificate, Tenant, TenantGroup};
use crate::model::{AssignedPlan, Domain, ObjectIdentity, User};

const FIRST: &[&str] = &[
    "Aisha", "Bruno", "Chen", "Dana", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kwame",
    "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor",
    "Wen", "Ximena", "Yusuf", "Zofia",
];
const LAST: &[&str] = &[
    "Almeida",
    "Berg",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Gupta",
    "Haddad",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Larsen",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quispe",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Underwood",
    "Varga",
    "Weber",
    "Xu",
    "Yilmaz",
    "Zimmermann",
];
const PARTNER_DOMAINS: &[&str] = &[
    "fabrikam.com",
    "northwind.example",
    "adatum.example",
    "tailspintoys.example",
    "wingtiptoys.example",
    "litware.example",
    "proseware.example",
    "fourthcoffee.example",
    "woodgrovebank.example",
    "alpineskihouse.example",
];

/// The sample app's certificate (`tests/fixtures/app-cert.pem`), so generated tenants accept the test fixture's assertions too.
const FIXTURE_THUMBPRINT: &str = "3ZcT_pzF8xw56ABJIDtWObceKQbedF0W6pd0dPn46wA";
/// The same certificate's SHA-1 thumbprint, which MSAL's assertions name in `x5t`.
const FIXTURE_THUMBPRINT_SHA1: &str = "qlyuyb4yULe5ytCWNSNT1CrgQM4";
const FIXTURE_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/app-pub.pem");

fn guid(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

fn secret(rng: &mut StdRng) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~._-";
    (0..40)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// What a generated user is made to be.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Convertible,
    AlreadyB2b,
    Disabled,
    OnPrem,
    Exchange,
    MailMissing,
    DomainVerified,
    Conflict,
    /// Cloud-only, no mailbox, `mail` empty; the CSV names a fresh partner address:
    /// `--set-mail` can fix it.
    SetMailMissing,
    /// Cloud-only, no mailbox, `mail` an older partner address; the CSV names a fresh one:
    /// `--set-mail` can fix it.
    SetMailMismatch,
    /// Synced from on-premises (mail is mastered there) and the CSV names another address:
    /// `--set-mail` cannot fix it.
    SyncedMismatch,
    /// An Exchange mailbox and the CSV names another address: `--set-mail` cannot fix it.
    MailboxMismatch,
}

/// The ranks of the convertible (0..85) and conflict (98..100) shares are the ones they always
/// had, and only `Conflict` draws again, so a seed yields the same convertible users whatever
/// kinds share the rest.
fn pick_kind(rng: &mut StdRng) -> Kind {
    match rng.random_range(0..100u32) {
        0..85 => Kind::Convertible,
        85..87 => Kind::AlreadyB2b,
        87..88 => Kind::Disabled,
        88..89 => Kind::OnPrem,
        89..90 => Kind::Exchange,
        90..91 => Kind::MailMissing,
        91..92 => Kind::DomainVerified,
        92..94 => Kind::SetMailMissing,
        94..96 => Kind::SetMailMismatch,
        96..97 => Kind::SyncedMismatch,
        97..98 => Kind::MailboxMismatch,
        _ => Kind::Conflict,
    }
}

impl Tenant {
    /// A synthetic tenant of `n` users; the same `(n, seed)` always gives the same tenant.
    pub fn generate(n: usize, seed: u64) -> Tenant {
        let mut rng = StdRng::seed_from_u64(seed);
        let tenant_id = guid(&mut rng);
        let app = App {
            client_id: guid(&mut rng),
            display_name: "b2b-convert (generated)".into(),
            client_secret: Some(secret(&mut rng)),
            certificates: vec![AppCertificate {
                thumbprint_sha256: FIXTURE_THUMBPRINT.into(),
                thumbprint_sha1: Some(FIXTURE_THUMBPRINT_SHA1.into()),
                public_key_pem: FIXTURE_PUBLIC_KEY.into(),
                expires: None,
            }],
            ..App::default()
        };
        let issuer = "contoso.onmicrosoft.com";
        let mut users: Vec<User> = Vec::with_capacity(n);
        let mut external_emails = std::collections::BTreeMap::new();
        let mut directory_roles = std::collections::BTreeMap::new();
        // The domain part of every synced user's SID, from the tenant id (no draw of the RNG, so
        // a seed's users are the same as before synced users carried SIDs).
        let domain_sid = {
            let b = uuid::Uuid::parse_str(&tenant_id)
                .map(|u| *u.as_bytes())
                .unwrap_or_default();
            let part = |k: usize| u32::from_le_bytes([b[k], b[k + 1], b[k + 2], b[k + 3]]);
            format!("S-1-5-21-{}-{}-{}", part(0), part(4), part(8))
        };
        let exchange_plan = || {
            vec![AssignedPlan {
                assigned_date_time: Some("2023-01-10T08:00:00Z".into()),
                capability_status: "Enabled".into(),
                service: "exchange".into(),
                service_plan_id: Some("9aaf7827-d63c-4b61-89c3-182f06f82e5c".into()),
            }]
        };
        for i in 0..n {
            let first = FIRST[rng.random_range(0..FIRST.len())];
            let last = LAST[rng.random_range(0..LAST.len())];
            let local = format!("{}.{}{}", first.to_lowercase(), last.to_lowercase(), i);
            let upn = format!("{local}@contoso.com");
            let partner = PARTNER_DOMAINS[rng.random_range(0..PARTNER_DOMAINS.len())];
            let kind = pick_kind(&mut rng);
            let guest = rng.random_bool(0.6);
            let mut u = User {
                id: guid(&mut rng),
                display_name: Some(format!(
                    "{first} {last} ({})",
                    partner.split('.').next().unwrap_or(partner)
                )),
                user_principal_name: Some(upn.clone()),
                mail: Some(format!("{local}@{partner}")),
                other_mails: Some(vec![]),
                proxy_addresses: Some(vec![]),
                account_enabled: Some(true),
                user_type: Some(if guest { "Guest" } else { "Member" }.into()),
                on_premises_sync_enabled: None,
                assigned_plans: Some(vec![]),
                identities: Some(vec![ObjectIdentity {
                    sign_in_type: Some("userPrincipalName".into()),
                    issuer: Some(issuer.into()),
                    issuer_assigned_id: Some(upn.clone()),
                }]),
                ..Default::default()
            };
            match kind {
                Kind::Convertible => {}
                Kind::AlreadyB2b => {
                    u.external_user_state = Some("PendingAcceptance".into());
                    u.external_user_state_change_date_time = Some("2024-03-01T09:00:00Z".into());
                    u.creation_type = Some("Invitation".into());
                }
                Kind::Disabled => u.account_enabled = Some(false),
                Kind::OnPrem => {
                    u.on_premises_sync_enabled = Some(true);
                    u.on_premises_user_principal_name = Some(upn.clone());
                }
                Kind::Exchange => u.assigned_plans = Some(exchange_plan()),
                Kind::MailMissing => u.mail = None,
                Kind::DomainVerified => u.mail = Some(upn.clone()),
                Kind::Conflict => {
                    // An earlier user already lists this address among its otherMails.
                    if let (Some(mail), false) = (u.mail.clone(), users.is_empty()) {
                        let j = rng.random_range(0..users.len());
                        users[j].other_mails.get_or_insert_with(Vec::new).push(mail);
                    }
                }
                Kind::SetMailMissing => {
                    external_emails.insert(u.id.clone(), u.mail.take().unwrap_or_default());
                }
                Kind::SetMailMismatch | Kind::SyncedMismatch | Kind::MailboxMismatch => {
                    // The CSV's address is fresh (the index `i` makes it unique); the user
                    // still carries an older one.
                    if let Some(mail) = u.mail.replace(format!("{local}.old@{partner}")) {
                        external_emails.insert(u.id.clone(), mail);
                    }
                    match kind {
                        Kind::SyncedMismatch => u.on_premises_sync_enabled = Some(true),
                        Kind::MailboxMismatch => u.assigned_plans = Some(exchange_plan()),
                        _ => {}
                    }
                }
            }
            if u.on_premises_sync_enabled == Some(true) {
                u.on_premises_security_identifier = Some(format!("{domain_sid}-{}", 1100 + i));
                u.on_premises_sam_account_name = Some(local.chars().take(20).collect());
            }
            // One user in a hundred holds an admin role: resetting their password needs
            // Privileged Authentication Administrator, and they cannot be converted back.
            if i % 100 == 7 {
                directory_roles.insert(u.id.clone(), vec!["User Administrator".to_string()]);
            }
            users.push(u);
        }
        let mut groups = Vec::new();
        if n > 0 {
            let nested_id = guid(&mut rng);
            let mut partners = TenantGroup {
                id: guid(&mut rng),
                display_name: "Partners".into(),
                members: users.iter().step_by(10).map(|u| u.id.clone()).collect(),
            };
            partners.members.push(nested_id.clone());
            groups.push(partners);
            groups.push(TenantGroup {
                id: nested_id,
                display_name: "Partners-Nested".into(),
                members: users.iter().step_by(7).map(|u| u.id.clone()).collect(),
            });
        }
        Tenant {
            tenant_id,
            display_name: format!("Contoso (generated, {n} users)"),
            apps: vec![app],
            domains: vec![
                Domain {
                    id: "contoso.com".into(),
                    is_verified: true,
                    is_default: true,
                    is_initial: false,
                },
                Domain {
                    id: "contoso.onmicrosoft.com".into(),
                    is_verified: true,
                    is_default: false,
                    is_initial: true,
                },
            ],
            groups,
            users,
            external_emails,
            directory_roles,
            policies: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_reproducible_and_mostly_convertible() {
        let a = Tenant::generate(2000, 7);
        let b = Tenant::generate(2000, 7);
        assert_eq!(a, b);
        assert_ne!(a, Tenant::generate(2000, 8));
        a.check().unwrap();
        let plain = a
            .users
            .iter()
            .filter(|u| {
                u.external_user_state.is_none()
                    && u.account_enabled == Some(true)
                    && u.on_premises_user_principal_name.is_none()
                    && !u.has_enabled_exchange_plan()
                    && u.mail
                        .as_deref()
                        .is_some_and(|m| !m.ends_with("@contoso.com"))
            })
            .count();
        let share = plain as f64 / 2000.0;
        assert!((0.8..0.93).contains(&share), "{share}");
    }

    #[test]
    fn write_csv_lists_every_user() {
        let t = Tenant::generate(30, 1);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.csv");
        t.write_csv(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "id,userPrincipalName,externalEmail");
        assert_eq!(lines.len(), 31);
        assert!(lines[1].starts_with(&t.users[0].id));
    }
}
