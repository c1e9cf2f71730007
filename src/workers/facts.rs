//! The tenant facts a pass validates against, kept up to date cheaply.
//!
//! Verified domains are read every pass (one request). The address index (who holds which
//! address in `mail`, `otherMails` or SMTP `proxyAddresses`) is stored per tenant in the
//! database and refreshed with Graph's delta query: the first pass on a tenant takes a delta
//! link for "from now" (`$deltatoken=latest`) and lists every user once (999 a page, a fifth of
//! the pages of a delta round), or, where that link is refused, reads a full delta round
//! (`GET /v1.0/users/delta`, following `@odata.nextLink`); it stores the
//! `@odata.deltaLink`; every later pass — a resume, a pilot, the next run — reads only the users
//! changed since, so its first invitation leaves after a page or two whatever the tenant's
//! size. A link Graph no longer knows (410 `syncStateNotFound`, an expired token) starts a full
//! round again.
//!
//! Validation reads the index per chunk of items ([`Facts::for_chunk`]): a few hundred indexed
//! look-ups instead of a map of every address of the tenant in memory.

use std::collections::HashSet;
use std::sync::Arc;

use crate::graph::{GraphClient, GraphError};
use crate::item::ItemRecord;
use crate::queue::{AddressSource, Queue, QueueError, RoundLink, UserChange};
use crate::validate::{smtp_address, TenantFacts};

/// Why the facts could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("a delta page from Graph has neither @odata.nextLink nor @odata.deltaLink")]
    NoLink,
    #[error("a database task panicked: {0}")]
    Panicked(String),
}

/// What a pass knows about its tenant: the verified domains, and the key of its stored index.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Names the tenant's rows in the database: Graph's root and the tenant's domains.
    pub tenant: String,
    /// Verified domains, lowercase.
    pub verified_domains: HashSet<String>,
    /// Lowercase id → `externalUserConvertedOn` of the users converted back (one beta listing
    /// per pass): validation blocks them `converted_back` instead of drawing Graph's 412.
    pub converted_back: std::collections::HashMap<String, String>,
}

/// What one refresh did, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refresh {
    pub pages: u64,
    pub changes: u64,
    /// A full round (first pass on the tenant, or the stored link was refused).
    pub full: bool,
}

impl Facts {
    /// The facts validation needs for these items: every domain, and the holders of the
    /// addresses the items could be invited at (their `mail` and requested `externalEmail`).
    pub fn for_chunk(
        &self,
        queue: &Queue,
        items: &[ItemRecord],
    ) -> crate::queue::Result<TenantFacts> {
        let addresses = normalize(items.iter().flat_map(|i| {
            let mail = i.snapshot.as_ref().and_then(|u| u.mail.clone());
            [mail, i.external_email.clone()].into_iter().flatten()
        }));
        Ok(TenantFacts {
            verified_domains: self.verified_domains.clone(),
            address_owners: queue.address_owners(&self.tenant, &addresses)?,
            converted_back: self.converted_back.clone(),
        })
    }
}

/// Names a tenant's stored index: Graph's root, then the tenant's initial `*.onmicrosoft.com`
/// domain (unique and permanent), or every verified domain when none is listed. A different
/// key only costs a full round, never a wrong answer.
pub fn tenant_key(root: &str, verified: &HashSet<String>) -> String {
    let mut domains: Vec<&str> = verified.iter().map(String::as_str).collect();
    domains.sort_unstable();
    let initial = domains
        .iter()
        .find(|d| d.ends_with(".onmicrosoft.com"))
        .map(|d| d.to_string());
    format!("{root} {}", initial.unwrap_or_else(|| domains.join(",")))
}

/// Reads the verified domains and brings the tenant's stored address index up to date.
pub async fn refresh(
    graph: &GraphClient,
    queue: &Arc<Queue>,
) -> Result<(Facts, Refresh), FactsError> {
    let verified_domains: HashSet<String> = graph
        .verified_domains()
        .await?
        .iter()
        .filter(|d| d.is_verified)
        .map(|d| d.id.to_ascii_lowercase())
        .collect();
    let tenant = tenant_key(graph.root(), &verified_domains);
    // A beta listing Graph refuses (beta changes without notice) must not stop a run: Graph
    // then refuses such users itself with 412, which only fails them.
    let converted_back = match graph.converted_back_users().await {
        Ok(users) => users
            .into_iter()
            .filter_map(|u| Some((u.id.to_lowercase(), u.external_user_converted_on?)))
            .collect(),
        Err(e @ GraphError::Api { .. }) => {
            tracing::warn!(
                "could not list the users converted back (Graph beta): {e}; such users are \
                 refused by Graph (412) instead of blocked converted_back"
            );
            Default::default()
        }
        Err(e) => return Err(e.into()),
    };
    let facts = Facts {
        tenant: tenant.clone(),
        verified_domains,
        converted_back,
    };

    let key = tenant.clone();
    let state = blocking(queue, move |q| q.facts_sync_state(&key)).await?;
    let resumed = match state {
        Some(s) if s.full_round && s.listing_delta.is_some() => Some(Round::Listing {
            link: s.round_link,
            delta: s.listing_delta.unwrap_or_default(),
        }),
        Some(s) if s.round_link.is_some() => Some(Round::Delta(s.round_link)),
        Some(s) if !s.full_round && s.delta_link.is_some() => Some(Round::Delta(s.delta_link)),
        _ => None,
    };
    let mut done = Refresh {
        full: resumed.is_none() || matches!(resumed, Some(Round::Listing { .. })),
        ..Default::default()
    };
    let mut round = match resumed {
        Some(round) => round,
        None => start_full_round(graph, queue, &tenant).await?,
    };
    let mut restarted = false;
    // The page before is written while the next one is fetched: on a first round of a large
    // tenant, writing a page costs about as much as fetching it. Pages still commit in order
    // (the next write starts only once the one before has committed).
    let mut writing: Option<tokio::task::JoinHandle<Result<(), FactsError>>> = None;
    loop {
        let answer = match &round {
            Round::Delta(link) => graph.users_delta_page(link.as_deref()).await,
            Round::Listing { link, .. } => graph.users_addresses_page(link.as_deref()).await,
        };
        if let Some(write) = writing.take() {
            write
                .await
                .map_err(|e| FactsError::Panicked(e.to_string()))??;
        }
        let page = match answer {
            Ok(page) => page,
            Err(e) if !restarted && round.has_link() && link_refused(&e, &round) => {
                tracing::warn!(
                    error = %e,
                    "Graph no longer knows the stored link; reading every user's addresses again"
                );
                restarted = true;
                done.full = true;
                round = start_full_round(graph, queue, &tenant).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let changes: Vec<UserChange> = page.value.iter().filter_map(change_of).collect();
        let next = match (&round, page.next_link, page.delta_link) {
            (_, Some(next), _) => RoundLink::Next(next),
            (Round::Listing { delta, .. }, None, _) => RoundLink::Delta(delta.clone()),
            (Round::Delta(_), None, Some(delta)) => RoundLink::Delta(delta),
            (Round::Delta(_), None, None) => return Err(FactsError::NoLink),
        };
        done.pages += 1;
        done.changes += changes.len() as u64;
        let key = tenant.clone();
        let stored = next.clone();
        let write = tokio::spawn({
            let queue = queue.clone();
            async move { blocking(&queue, move |q| q.facts_apply_page(&key, &changes, &stored)).await }
        });
        match (next, &mut round) {
            (RoundLink::Next(next), Round::Delta(link) | Round::Listing { link, .. }) => {
                *link = Some(next);
                writing = Some(write);
            }
            (RoundLink::Delta(_), _) => {
                write
                    .await
                    .map_err(|e| FactsError::Panicked(e.to_string()))??;
                return Ok((facts, done));
            }
        }
    }
}

/// The round a refresh is reading.
enum Round {
    /// A delta round: from the stored delta link (changes only), a page link of an
    /// interrupted round, or `None` for a full delta round.
    Delta(Option<String>),
    /// A full round by listing every user; `delta` is adopted when the listing ends.
    Listing { link: Option<String>, delta: String },
}

impl Round {
    fn has_link(&self) -> bool {
        match self {
            Round::Delta(link) | Round::Listing { link, .. } => link.is_some(),
        }
    }
}

/// Starts a full round: takes a delta link for "from now" (`$deltatoken=latest`) and lists
/// every user, 999 a page; changes made during the listing come back in the next round, and
/// applying a user twice is harmless. Where `latest` is refused, a full delta round.
async fn start_full_round(
    graph: &GraphClient,
    queue: &Arc<Queue>,
    tenant: &str,
) -> Result<Round, FactsError> {
    let round = match graph.users_delta_latest().await {
        Ok(page) if page.next_link.is_none() && page.delta_link.is_some() => Round::Listing {
            link: None,
            delta: page.delta_link.unwrap_or_default(),
        },
        Ok(_) | Err(GraphError::Api { .. }) => {
            tracing::info!("no delta link for \"from now\": reading a full delta round instead");
            Round::Delta(None)
        }
        Err(e) => return Err(e.into()),
    };
    let key = tenant.to_string();
    let listing_delta = match &round {
        Round::Listing { delta, .. } => Some(delta.clone()),
        Round::Delta(_) => None,
    };
    blocking(queue, move |q| {
        q.facts_start_full_round(&key, listing_delta.as_deref())
    })
    .await?;
    Ok(round)
}

/// Whether a refused stored link calls for a new full round: a delta link Graph no longer
/// holds state for, or a listing page link that is no longer valid (4xx other than 429).
fn link_refused(e: &GraphError, round: &Round) -> bool {
    match round {
        Round::Delta(_) => sync_state_lost(e),
        Round::Listing { .. } => {
            matches!(
                e,
                GraphError::Api { status, .. } if (400..500).contains(status) && *status != 429
            ) || sync_state_lost(e)
        }
    }
}

/// Graph's answer to a delta or page link it no longer holds state for: 410 Gone
/// (`syncStateNotFound`, `resyncRequired`), or a code naming the sync state.
fn sync_state_lost(e: &GraphError) -> bool {
    match e {
        GraphError::Api { status, code, .. } => {
            let code = code.to_ascii_lowercase();
            *status == 410 || code.contains("syncstate") || code.contains("resync")
        }
        _ => false,
    }
}

/// One delta entry as the index stores it; `None` for an entry without an id.
fn change_of(entry: &serde_json::Value) -> Option<UserChange> {
    let user_id = entry.get("id")?.as_str()?.to_string();
    if entry.get("@removed").is_some() {
        return Some(UserChange {
            user_id,
            removed: true,
            properties: Vec::new(),
        });
    }
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut properties = Vec::new();
    if let Some(mail) = entry.get("mail") {
        properties.push((AddressSource::Mail, normalize(mail.as_str())));
    }
    if let Some(other) = entry.get("otherMails") {
        let list = strings(other);
        properties.push((AddressSource::OtherMails, normalize(&list)));
    }
    if let Some(proxies) = entry.get("proxyAddresses") {
        let list = strings(proxies);
        properties.push((
            AddressSource::ProxyAddresses,
            normalize(list.iter().filter_map(|p| smtp_address(p))),
        ));
    }
    Some(UserChange {
        user_id,
        removed: false,
        properties,
    })
}

/// Addresses as the index compares them: trimmed, lowercase, none empty, sorted, each once.
fn normalize<A: AsRef<str>>(addresses: impl IntoIterator<Item = A>) -> Vec<String> {
    let mut out: Vec<String> = addresses
        .into_iter()
        .map(|a| a.as_ref().trim().to_lowercase())
        .filter(|a| !a.is_empty())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Runs a queue operation on the blocking pool.
async fn blocking<T, F>(queue: &Arc<Queue>, f: F) -> Result<T, FactsError>
where
    T: Send + 'static,
    F: FnOnce(&Queue) -> crate::queue::Result<T> + Send + 'static,
{
    let queue = queue.clone();
    crate::queue::threads::blocking(move || f(&queue))
        .await
        .map_err(|e| FactsError::Panicked(e.to_string()))?
        .map_err(FactsError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_keep_only_the_properties_they_carry() {
        let c = change_of(&json!({
            "id": "u1",
            "mail": " A@F.com ",
            "proxyAddresses": ["SMTP:a@f.com", "smtp:Alias@F.com", "SIP:a@f.com", "X500:/o=x"]
        }))
        .unwrap();
        assert!(!c.removed);
        assert_eq!(
            c.properties,
            vec![
                (AddressSource::Mail, vec!["a@f.com".to_string()]),
                (
                    AddressSource::ProxyAddresses,
                    vec!["a@f.com".to_string(), "alias@f.com".to_string()]
                ),
            ],
            "otherMails was not in the entry: it must not be cleared"
        );
        let cleared = change_of(&json!({"id": "u1", "mail": null, "otherMails": []})).unwrap();
        assert_eq!(
            cleared.properties,
            vec![
                (AddressSource::Mail, vec![]),
                (AddressSource::OtherMails, vec![])
            ]
        );
        let gone = change_of(&json!({"id": "u2", "@removed": {"reason": "changed"}})).unwrap();
        assert!(gone.removed);
        assert!(change_of(&json!({"mail": "x@y.com"})).is_none());
    }

    #[test]
    fn only_refused_sync_state_restarts_a_round() {
        let api = |status, code: &str| GraphError::Api {
            status,
            code: code.into(),
            message: String::new(),
            meta: Default::default(),
        };
        assert!(sync_state_lost(&api(410, "syncStateNotFound")));
        assert!(sync_state_lost(&api(410, "Gone")));
        assert!(sync_state_lost(&api(400, "resyncRequired")));
        assert!(!sync_state_lost(&api(400, "BadRequest")));
        assert!(!sync_state_lost(&GraphError::NotSent {
            message: String::new()
        }));
    }

    #[test]
    fn the_tenant_key_prefers_the_initial_domain() {
        let set = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        assert_eq!(
            tenant_key(
                "https://g",
                &set(&["contoso.com", "contoso.onmicrosoft.com"])
            ),
            "https://g contoso.onmicrosoft.com"
        );
        assert_eq!(
            tenant_key("https://g", &set(&["b.com", "a.com"])),
            "https://g a.com,b.com"
        );
    }
}
