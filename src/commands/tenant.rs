//! Runs belong to their tenant: which tenant the signed-in token is for, and the one check every
//! command that works an existing run makes before any request beyond sign-in and domains.
//!
//! A run's items are object ids and UPNs of one directory. Worked with another tenant's
//! credentials they are 404s at best, and with UPN keys or a service provider's look-alike
//! tenants a conversion in the wrong customer's directory, so the environment never silently
//! wins over the run's record.

use crate::exit::ExitError;
use crate::graph::GraphClient;
use crate::item::{RunRecord, TenantIdentity};
use crate::queue::Queue;

/// The tenant the current sign-in is for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignedIn {
    /// `None` when neither the token (not a JWT, no `tid`) nor the credentials name a tenant id.
    pub identity: Option<TenantIdentity>,
    /// Every domain name of the tenant, lower case.
    pub domains: Vec<String>,
}

/// Reads who the token is for: its `tid` claim (or the credentials' tenant id when the token is
/// opaque and the credentials name one by id) and the tenant's domains (`GET /v1.0/domains`).
pub async fn signed_in(
    graph: &GraphClient,
    credentials_tenant: Option<&str>,
) -> anyhow::Result<SignedIn> {
    let claims = graph.token_claims().await?;
    let tid = claims
        .get("tid")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| {
            credentials_tenant
                .filter(|t| is_tenant_id(t))
                .map(str::to_string)
        })
        .map(|t| t.to_ascii_lowercase());
    // Without Domain.Read.All (track and resend need nothing else) the tenant is still known
    // by its id; only its names are missing.
    let domains = match graph.domains().await {
        Ok(domains) => domains,
        Err(crate::graph::GraphError::Api { status: 403, .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let pick = |f: fn(&crate::model::Domain) -> bool| {
        domains.iter().find(|d| f(d)).map(|d| d.id.to_lowercase())
    };
    let identity = tid.map(|id| TenantIdentity {
        id,
        initial_domain: pick(|d| d.is_initial)
            .or_else(|| pick(|d| d.id.to_lowercase().ends_with(".onmicrosoft.com"))),
        default_domain: pick(|d| d.is_default),
    });
    Ok(SignedIn {
        identity,
        domains: domains.iter().map(|d| d.id.to_lowercase()).collect(),
    })
}

/// What comparing a run's tenant with the sign-in found.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantCheck {
    Same,
    /// A run made before runs recorded their tenant names it by a domain the signed-in tenant
    /// holds: the same tenant, now recorded in full.
    Adopt(TenantIdentity),
    /// Another tenant: refused.
    Different {
        run: String,
        signed_in: String,
    },
    /// The comparison could not be made; says why.
    NotMade(String),
}

/// Compares the run's tenant with the sign-in. Pure: the table test below has a row per case.
pub fn judge(run: &RunRecord, now: &SignedIn) -> TenantCheck {
    let signed_in = |s: &TenantIdentity| s.to_string();
    match (&run.tenant, &now.identity) {
        (Some(r), Some(s)) if r.id.eq_ignore_ascii_case(&s.id) => TenantCheck::Same,
        (Some(r), Some(s)) => TenantCheck::Different {
            run: r.to_string(),
            signed_in: signed_in(s),
        },
        (Some(r), None) => TenantCheck::NotMade(format!(
            "run {} belongs to tenant {r}, and the sign-in names no tenant id (a token without \
             a `tid` claim)",
            run.id
        )),
        (None, now_id) => match (run.tenant_id.as_deref(), now_id) {
            (Some(name), Some(s)) if is_tenant_id(name) => {
                if name.eq_ignore_ascii_case(&s.id) {
                    TenantCheck::Adopt(s.clone())
                } else {
                    TenantCheck::Different {
                        run: name.to_ascii_lowercase(),
                        signed_in: signed_in(s),
                    }
                }
            }
            (Some(name), Some(s)) => {
                if now.domains.iter().any(|d| d.eq_ignore_ascii_case(name)) {
                    TenantCheck::Adopt(s.clone())
                } else {
                    TenantCheck::Different {
                        run: name.to_lowercase(),
                        signed_in: signed_in(s),
                    }
                }
            }
            (Some(name), None) => TenantCheck::NotMade(format!(
                "run {} was made for tenant {name}, and the sign-in names no tenant id",
                run.id
            )),
            (None, _) => TenantCheck::NotMade(format!(
                "run {} was made before runs recorded their tenant, and its stored options name \
                 none",
                run.id
            )),
        },
    }
}

/// The check `resume`, `retry`, `track`, `resend`, `apply` (and every later command that works
/// an existing run) make right after signing in: another tenant is refused (exit 1, one line
/// naming both); a check that cannot be made is said on stderr, never passed silently.
pub async fn check_run_tenant(
    graph: &GraphClient,
    queue: &Queue,
    run: &RunRecord,
    credentials_tenant: Option<&str>,
) -> anyhow::Result<()> {
    let now = signed_in(graph, credentials_tenant).await?;
    match judge(run, &now) {
        TenantCheck::Same => Ok(()),
        TenantCheck::Adopt(identity) => {
            queue.adopt_run_tenant(run.id, &identity)?;
            tracing::info!(run_id = run.id, tenant = %identity, "run bound to its tenant");
            Ok(())
        }
        TenantCheck::Different {
            run: theirs,
            signed_in,
        } => Err(ExitError::fatal(format!(
            "run {} belongs to tenant {theirs}; you are signed in to {signed_in}: sign in to the \
             run's tenant, or start a new run",
            run.id
        ))
        .into()),
        TenantCheck::NotMade(why) => {
            crate::progress::suspend(|| {
                eprintln!("warning: tenant check not made: {why}; make sure you are signed in to the run's tenant")
            });
            Ok(())
        }
    }
}

/// A directory id as `AZURE_TENANT_ID` may give it: a GUID, not a domain name.
pub fn is_tenant_id(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{RunMode, RunOptions, SourceSpec};

    const A: &str = "a2600000-0000-4000-8000-000000000001";
    const B: &str = "9f100000-0000-4000-8000-000000000002";

    fn identity(id: &str, domain: &str) -> TenantIdentity {
        TenantIdentity {
            id: id.into(),
            initial_domain: Some(domain.into()),
            default_domain: None,
        }
    }

    fn run(tenant: Option<TenantIdentity>, tenant_id: Option<&str>) -> RunRecord {
        RunRecord {
            id: 7,
            source: SourceSpec::Csv {
                path: "u.csv".into(),
            },
            mode: RunMode::Live,
            options: RunOptions::default(),
            tenant_id: tenant_id.map(str::to_string),
            graph_url: "https://graph.microsoft.com".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
            status: "interrupted".into(),
            ingest_complete: true,
            tenant,
            plan_run_id: None,
        }
    }

    fn signed(id: Option<&str>, domain: &str) -> SignedIn {
        SignedIn {
            identity: id.map(|i| identity(i, domain)),
            domains: vec![domain.into(), "fabrikam.com".into()],
        }
    }

    #[test]
    fn every_case_of_the_comparison() {
        let contoso = identity(A, "contoso.onmicrosoft.com");
        let rows: Vec<(RunRecord, SignedIn, TenantCheck)> = vec![
            (
                run(Some(contoso.clone()), Some(A)),
                signed(Some(A), "contoso.onmicrosoft.com"),
                TenantCheck::Same,
            ),
            (
                run(Some(contoso.clone()), Some(A)),
                signed(Some(B), "fabrikam.onmicrosoft.com"),
                TenantCheck::Different {
                    run: format!("contoso.onmicrosoft.com ({A})"),
                    signed_in: format!("fabrikam.onmicrosoft.com ({B})"),
                },
            ),
            (
                run(Some(contoso.clone()), None),
                signed(None, "contoso.onmicrosoft.com"),
                TenantCheck::NotMade(format!(
                    "run 7 belongs to tenant contoso.onmicrosoft.com ({A}), and the sign-in names \
                     no tenant id (a token without a `tid` claim)"
                )),
            ),
            // Runs made before the migration: by id, by domain, or not at all.
            (
                run(None, Some(&A.to_uppercase())),
                signed(Some(A), "contoso.onmicrosoft.com"),
                TenantCheck::Adopt(identity(A, "contoso.onmicrosoft.com")),
            ),
            (
                run(None, Some(A)),
                signed(Some(B), "fabrikam.onmicrosoft.com"),
                TenantCheck::Different {
                    run: A.into(),
                    signed_in: format!("fabrikam.onmicrosoft.com ({B})"),
                },
            ),
            (
                run(None, Some("Fabrikam.com")),
                signed(Some(B), "fabrikam.onmicrosoft.com"),
                TenantCheck::Adopt(identity(B, "fabrikam.onmicrosoft.com")),
            ),
            (
                run(None, Some("contoso.com")),
                signed(Some(B), "fabrikam.onmicrosoft.com"),
                TenantCheck::Different {
                    run: "contoso.com".into(),
                    signed_in: format!("fabrikam.onmicrosoft.com ({B})"),
                },
            ),
            (
                run(None, None),
                signed(Some(B), "fabrikam.onmicrosoft.com"),
                TenantCheck::NotMade(
                    "run 7 was made before runs recorded their tenant, and its stored options \
                     name none"
                        .into(),
                ),
            ),
        ];
        for (i, (r, s, want)) in rows.into_iter().enumerate() {
            assert_eq!(judge(&r, &s), want, "row {i}");
        }
    }

    #[test]
    fn tenant_ids_are_guids_not_domains() {
        assert!(is_tenant_id(A));
        assert!(!is_tenant_id("contoso.onmicrosoft.com"));
        assert!(!is_tenant_id("a26"));
    }
}
