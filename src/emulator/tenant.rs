//! The simulated tenant's data: users, groups, domains and registered apps, as read from a tenant
//! file (`sample-data/tenant.json` is the shipped one) or generated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::model::{Domain, User};

/// A whole tenant. The JSON form is the tenant file format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    pub tenant_id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub apps: Vec<App>,
    #[serde(default)]
    pub domains: Vec<Domain>,
    #[serde(default)]
    pub groups: Vec<TenantGroup>,
    #[serde(default)]
    pub users: Vec<User>,
    /// User id → the address an input CSV names for that user when it is not the user's `mail`
    /// (generated tenants: users whose mail `--set-mail` must set, or cannot). `write_csv` uses
    /// it as `externalEmail`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_emails: BTreeMap<String, String>,
    /// User id → directory roles the user holds (display names or role template ids): a
    /// password reset of such a user needs Privileged Authentication Administrator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub directory_roles: BTreeMap<String, Vec<String>>,
    /// How partners redeem: the email one-time passcode and cross-tenant access settings.
    #[serde(default, skip_serializing_if = "Policies::is_default")]
    pub policies: Policies,
}

/// The tenant's redemption policies, Entra's defaults unless the tenant file says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Policies {
    /// `state` of the email one-time passcode method: `enabled` or `disabled`.
    pub email_otp_state: String,
    /// `allowExternalIdToUseEmailOtp`: `default`, `enabled` or `disabled`.
    pub allow_external_id_to_use_email_otp: String,
    /// The default cross-tenant access policy blocks inbound B2B collaboration.
    pub b2b_collaboration_inbound_blocked: bool,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            email_otp_state: "enabled".into(),
            allow_external_id_to_use_email_otp: "default".into(),
            b2b_collaboration_inbound_blocked: false,
        }
    }
}

impl Policies {
    fn is_default(&self) -> bool {
        *self == Policies::default()
    }
}

/// An app registration allowed to get tokens.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub client_id: String,
    #[serde(default)]
    pub display_name: String,
    pub client_secret: Option<String>,
    #[serde(default)]
    pub certificates: Vec<AppCertificate>,
    /// When the client secret expires (RFC 3339); past it the token endpoint answers AADSTS7000222.
    pub secret_expires: Option<String>,
    /// Application permissions granted (admin consent); `None`: the emulator's `--app-roles`.
    pub roles: Option<Vec<String>>,
    /// Workload identity federation: external tokens accepted as client assertions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federated_credentials: Vec<FederatedCredential>,
}

/// A federated identity credential: the issuer and subject of accepted external tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
}

/// A certificate credential of an app: its SHA-256 thumbprint (base64url, as in `x5t#S256`) and
/// its public key.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppCertificate {
    pub thumbprint_sha256: String,
    /// The SHA-1 thumbprint (base64url, as in `x5t`), which MSAL's assertions name.
    pub thumbprint_sha1: Option<String>,
    pub public_key_pem: String,
    /// When the certificate expires (RFC 3339); past it the token endpoint answers AADSTS1000502.
    pub expires: Option<String>,
}

/// A group: members are ids of users or of other groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantGroup {
    pub id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

impl Tenant {
    /// The shipped sample tenant.
    pub fn sample() -> Tenant {
        serde_json::from_str(include_str!("../../sample-data/tenant.json"))
            .expect("sample-data/tenant.json is a valid tenant file")
    }

    pub fn load(path: &Path) -> anyhow::Result<Tenant> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading tenant file {}", path.display()))?;
        let tenant: Tenant = serde_json::from_str(&text)
            .with_context(|| format!("parsing tenant file {}", path.display()))?;
        tenant
            .check()
            .with_context(|| format!("tenant file {}", path.display()))?;
        Ok(tenant)
    }

    /// Refuse files the emulator could not serve sensibly.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.tenant_id.is_empty(), "tenantId is empty");
        let mut ids = HashSet::new();
        for u in &self.users {
            anyhow::ensure!(
                ids.insert(u.id.to_lowercase()),
                "duplicate user id {}",
                u.id
            );
        }
        for g in &self.groups {
            anyhow::ensure!(
                ids.insert(g.id.to_lowercase()),
                "duplicate object id {}",
                g.id
            );
        }
        Ok(())
    }

    /// True when the user holds a directory role other than Guest Inviter.
    pub fn holds_admin_role(&self, user_id: &str) -> bool {
        let roles = self.directory_roles.get(user_id).or_else(|| {
            self.directory_roles
                .iter()
                .find(|(id, _)| id.eq_ignore_ascii_case(user_id))
                .map(|(_, r)| r)
        });
        roles.into_iter().flatten().any(|r| {
            super::identity::role_template_id(r)
                .is_none_or(|id| id != super::identity::GUEST_INVITER_ROLE)
        })
    }

    /// An input CSV over every user: `id,userPrincipalName,externalEmail` (the address from
    /// `external_emails`, else the user's `mail`).
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        writeln!(w, "id,userPrincipalName,externalEmail")?;
        for u in &self.users {
            writeln!(
                w,
                "{},{},{}",
                csv_field(&u.id),
                csv_field(u.user_principal_name.as_deref().unwrap_or("")),
                csv_field(
                    self.external_emails
                        .get(&u.id)
                        .or(u.mail.as_ref())
                        .map(String::as_str)
                        .unwrap_or("")
                )
            )?;
        }
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Lower-cased verified domain names.
    pub fn verified_domains(&self) -> HashSet<String> {
        self.domains
            .iter()
            .filter(|d| d.is_verified)
            .map(|d| d.id.to_lowercase())
            .collect()
    }

    /// The initial `*.onmicrosoft.com` domain, or the default one, for new guests' UPNs.
    pub fn initial_domain(&self) -> String {
        self.domains
            .iter()
            .find(|d| d.id.to_lowercase().ends_with(".onmicrosoft.com"))
            .or_else(|| self.domains.iter().find(|d| d.is_default))
            .map(|d| d.id.clone())
            .unwrap_or_else(|| "tenant.onmicrosoft.com".into())
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Lookup structures over a tenant's users and groups.
#[derive(Debug, Default)]
pub struct Index {
    /// Lower-cased id → position in `users`.
    pub by_id: HashMap<String, usize>,
    /// Lower-cased UPN → position in `users`.
    pub by_upn: HashMap<String, usize>,
    /// Lower-cased group id → position in `groups`.
    pub groups: HashMap<String, usize>,
    /// Lower-cased address (from `mail`, `otherMails`, `proxyAddresses` without `smtp:`) →
    /// positions of the users holding it. Kept so the uniqueness check of every invitation and
    /// PATCH is a look-up instead of a scan of the tenant.
    by_address: HashMap<String, Vec<usize>>,
}

impl Index {
    pub fn build(t: &Tenant) -> Index {
        let mut ix = Index::default();
        for (i, u) in t.users.iter().enumerate() {
            ix.add_user(i, u);
        }
        for (i, g) in t.groups.iter().enumerate() {
            ix.groups.insert(g.id.to_lowercase(), i);
        }
        ix
    }

    pub fn add_user(&mut self, pos: usize, u: &User) {
        self.by_id.insert(u.id.to_lowercase(), pos);
        if let Some(upn) = &u.user_principal_name {
            self.by_upn.insert(upn.to_lowercase(), pos);
        }
        for a in addresses(u) {
            let holders = self.by_address.entry(a).or_default();
            if !holders.contains(&pos) {
                holders.push(pos);
            }
        }
    }

    /// Forget every key of the user at `pos` (as it was: `u`).
    pub fn remove_user(&mut self, pos: usize, u: &User) {
        self.by_id.remove(&u.id.to_lowercase());
        if let Some(upn) = &u.user_principal_name {
            self.by_upn.remove(&upn.to_lowercase());
        }
        for a in addresses(u) {
            if let Some(holders) = self.by_address.get_mut(&a) {
                holders.retain(|&p| p != pos);
                if holders.is_empty() {
                    self.by_address.remove(&a);
                }
            }
        }
    }

    /// The user at `pos` changed from `old` to `new`.
    pub fn update_user(&mut self, pos: usize, old: &User, new: &User) {
        self.remove_user(pos, old);
        self.add_user(pos, new);
    }

    /// A user other than `except` holding `address` in `mail`, `otherMails` or
    /// `proxyAddresses` (case-insensitive, `smtp:` prefix ignored).
    pub fn address_owner(&self, address: &str, except: Option<usize>) -> Option<usize> {
        self.by_address
            .get(&address.trim().to_lowercase())?
            .iter()
            .copied()
            .find(|&p| Some(p) != except)
    }

    /// A user by object id or UPN.
    pub fn user(&self, key: &str) -> Option<usize> {
        let k = key.to_lowercase();
        self.by_id.get(&k).or_else(|| self.by_upn.get(&k)).copied()
    }
}

/// Every address a user holds, lower-cased, `smtp:` stripped from proxy addresses. Proxy
/// addresses of other kinds (`sip:`, `x500:`) are not email addresses and are left out.
fn addresses(u: &User) -> Vec<String> {
    let mut out: Vec<String> = u
        .mail
        .iter()
        .chain(u.other_mails.iter().flatten())
        .map(|m| m.trim().to_lowercase())
        .collect();
    for p in u.proxy_addresses.iter().flatten() {
        let p = p.trim().to_lowercase();
        if let Some(a) = p.strip_prefix("smtp:") {
            out.push(a.to_string());
        }
    }
    out.retain(|a| !a.is_empty());
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_index_follows_changes() {
        let mut t = Tenant::sample();
        let ix_pos = |t: &Tenant, name: &str| {
            t.users
                .iter()
                .position(|u| u.display_name.as_deref() == Some(name))
                .unwrap()
        };
        let megan = ix_pos(&t, "Megan Bowen");
        let liam = ix_pos(&t, "Liam Murphy (Fourth Coffee)");
        let mut ix = Index::build(&t);
        // otherMails, proxyAddresses (any case, prefix stripped) and mail all count.
        assert_eq!(
            ix.address_owner("LIAM.MURPHY@fourthcoffee.example", Some(liam)),
            Some(megan)
        );
        assert_eq!(
            ix.address_owner("megan.bowen@contoso.com", None),
            Some(megan)
        );
        assert_eq!(
            ix.address_owner("megan.bowen@contoso.com", Some(megan)),
            None
        );
        assert_eq!(ix.address_owner("nobody@fabrikam.com", None), None);
        let old = t.users[megan].clone();
        t.users[megan].other_mails = Some(vec![]);
        t.users[megan].proxy_addresses = Some(vec!["smtp:mb@fabrikam.com".into()]);
        ix.update_user(megan, &old, &t.users[megan]);
        assert_eq!(
            ix.address_owner("liam.murphy@fourthcoffee.example", Some(liam)),
            None
        );
        assert_eq!(ix.address_owner("MB@fabrikam.com", None), Some(megan));
        assert_eq!(
            ix.address_owner("megan.bowen@contoso.com", None),
            Some(megan),
            "mail still counts"
        );
    }

    #[test]
    fn sample_tenant_loads_and_is_consistent() {
        let t = Tenant::sample();
        t.check().unwrap();
        assert!(t.users.len() >= 50);
        assert!(t.apps[0].client_secret.is_some());
        assert_eq!(t.apps[0].certificates.len(), 1);
        let ix = Index::build(&t);
        for g in &t.groups {
            for m in &g.members {
                assert!(
                    ix.by_id.contains_key(&m.to_lowercase())
                        || ix.groups.contains_key(&m.to_lowercase()),
                    "dangling member {m}"
                );
            }
        }
    }
}
