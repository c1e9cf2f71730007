//! The simulated tenant's data: users, groups, domains and registered apps, as read from a tenant
//! file (`sample-data/tenant.json` is the shipped one) or generated.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

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
}

/// An app registration allowed to get tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub client_id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub certificates: Vec<AppCertificate>,
    /// When the client secret expires (RFC 3339); past it the token endpoint answers AADSTS7000222.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_expires: Option<String>,
    /// Application permissions granted (admin consent); `None`: the emulator's `--app-roles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppCertificate {
    pub thumbprint_sha256: String,
    pub public_key_pem: String,
    /// When the certificate expires (RFC 3339); past it the token endpoint answers AADSTS1000502.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

    /// An input CSV over every user: `id,userPrincipalName,externalEmail` (the user's `mail`).
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
                csv_field(u.mail.as_deref().unwrap_or(""))
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
    }

    /// A user by object id or UPN.
    pub fn user(&self, key: &str) -> Option<usize> {
        let k = key.to_lowercase();
        self.by_id.get(&k).or_else(|| self.by_upn.get(&k)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
