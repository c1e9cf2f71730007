//! The tenant facts index: who holds which address in `mail`, `otherMails` or (SMTP)
//! `proxyAddresses`, per tenant, and where the next delta round starts. SQL for the
//! `tenant_sync` and `tenant_addresses` tables only.
//!
//! The index is kept per tenant in the database file, not per run: a pilot, a second run or a
//! resume of the same tenant reuses it and reads only what changed since. It is queried per
//! chunk of items (a few hundred index look-ups) instead of being loaded: a 1M-user tenant's
//! addresses would take hundreds of MiB as a `HashMap`.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};

use super::{now, Queue, Result};

/// Which user property an address was read from. Stored per property because a delta entry may
/// carry only the properties that changed: an absent property keeps its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressSource {
    Mail = 0,
    OtherMails = 1,
    ProxyAddresses = 2,
}

/// Where a tenant's index stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The last complete round's `@odata.deltaLink`: the next round starts there.
    pub delta_link: Option<String>,
    /// The `@odata.nextLink` of a round that was interrupted: it goes on from there.
    pub round_link: Option<String>,
    /// A full round is under way (the index is incomplete until it ends).
    pub full_round: bool,
    /// A full round by listing: the delta link it adopts when the listing ends (`round_link`
    /// is then a listing page).
    pub listing_delta: Option<String>,
    pub synced_at: Option<String>,
}

/// One user's entry of a delta page, reduced to what the index stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChange {
    pub user_id: String,
    /// `@removed`: the user is gone (deleted or out of scope); its addresses go with it.
    pub removed: bool,
    /// The properties the entry carried, each with its (trimmed, lowercase) addresses; a
    /// property present but empty or null clears that property's addresses.
    pub properties: Vec<(AddressSource, Vec<String>)>,
}

/// How a page ends its round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundLink {
    /// More pages: the round goes on at this `@odata.nextLink`.
    Next(String),
    /// The round is complete: the next one starts at this `@odata.deltaLink`.
    Delta(String),
}

impl Queue {
    /// Where the tenant's index stands; `None` when it was never built.
    pub fn facts_sync_state(&self, tenant: &str) -> Result<Option<SyncState>> {
        self.conn()
            .prepare_cached(
                "SELECT delta_link, round_link, full_round, listing_delta, synced_at
                 FROM tenant_sync WHERE tenant = ?1",
            )
            .and_then(|mut s| {
                s.query_row([tenant], |r| {
                    Ok(SyncState {
                        delta_link: r.get(0)?,
                        round_link: r.get(1)?,
                        full_round: r.get(2)?,
                        listing_delta: r.get(3)?,
                        synced_at: r.get(4)?,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Starts a full round: the tenant's addresses are dropped (the round lists every user
    /// again) and no delta link is kept, so an interrupted full round is never mistaken for a
    /// complete index. `listing_delta`: the round lists users instead of reading a delta round,
    /// and adopts this delta link when the listing ends.
    pub fn facts_start_full_round(&self, tenant: &str, listing_delta: Option<&str>) -> Result<()> {
        self.write_tx(|tx| {
            tx.execute("DELETE FROM tenant_addresses WHERE tenant = ?1", [tenant])
                .map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO tenant_sync
                     (tenant, delta_link, round_link, full_round, listing_delta, synced_at)
                 VALUES (?1, NULL, NULL, 1, ?2, NULL)
                 ON CONFLICT (tenant) DO UPDATE SET
                     delta_link = NULL, round_link = NULL, full_round = 1, listing_delta = ?2,
                     synced_at = NULL",
                params![tenant, listing_delta],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Applies one delta page and records where the round goes on, in ONE transaction: a
    /// process killed between pages resumes at the next page, never applying one twice or
    /// skipping one.
    pub fn facts_apply_page(
        &self,
        tenant: &str,
        changes: &[UserChange],
        link: &RoundLink,
    ) -> Result<()> {
        self.write_tx(|tx| {
            let mut drop_user = tx
                .prepare_cached("DELETE FROM tenant_addresses WHERE tenant = ?1 AND user_id = ?2")
                .map_err(|e| self.err(e))?;
            let mut drop_property = tx
                .prepare_cached(
                    "DELETE FROM tenant_addresses
                     WHERE tenant = ?1 AND user_id = ?2 AND source = ?3",
                )
                .map_err(|e| self.err(e))?;
            let mut add = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO tenant_addresses (tenant, user_id, source, address)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| self.err(e))?;
            for change in changes {
                if change.removed {
                    drop_user
                        .execute(params![tenant, change.user_id])
                        .map_err(|e| self.err(e))?;
                    continue;
                }
                for (source, addresses) in &change.properties {
                    let source = *source as i64;
                    drop_property
                        .execute(params![tenant, change.user_id, source])
                        .map_err(|e| self.err(e))?;
                    for address in addresses {
                        add.execute(params![tenant, change.user_id, source, address])
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            let (delta, round) = match link {
                RoundLink::Next(next) => (None, Some(next.as_str())),
                RoundLink::Delta(delta) => (Some(delta.as_str()), None),
            };
            tx.execute(
                "INSERT INTO tenant_sync (tenant, delta_link, round_link, full_round, synced_at)
                 VALUES (?1, ?2, ?3, 0, ?4)
                 ON CONFLICT (tenant) DO UPDATE SET
                     delta_link = coalesce(excluded.delta_link, tenant_sync.delta_link),
                     round_link = excluded.round_link,
                     full_round = CASE WHEN excluded.delta_link IS NULL
                                       THEN tenant_sync.full_round ELSE 0 END,
                     listing_delta = CASE WHEN excluded.delta_link IS NULL
                                          THEN tenant_sync.listing_delta ELSE NULL END,
                     synced_at = CASE WHEN excluded.delta_link IS NULL
                                      THEN tenant_sync.synced_at ELSE excluded.synced_at END",
                params![tenant, delta, round, now()],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// The holders of each of `addresses` (trimmed, lowercase) that anyone holds: one index
    /// look-up per address.
    pub fn address_owners(
        &self,
        tenant: &str,
        addresses: &[String],
    ) -> Result<HashMap<String, Vec<String>>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT user_id FROM tenant_addresses
                 WHERE tenant = ?1 AND address = ?2 ORDER BY user_id",
            )
            .map_err(|e| self.err(e))?;
        let mut owners = HashMap::new();
        for address in addresses {
            if owners.contains_key(address) {
                continue;
            }
            let ids = stmt
                .query_map(params![tenant, address], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| self.err(e))?;
            if !ids.is_empty() {
                owners.insert(address.clone(), ids);
            }
        }
        Ok(owners)
    }

    /// Addresses indexed for the tenant (for the log line at the start of a pass).
    pub fn indexed_addresses(&self, tenant: &str) -> Result<u64> {
        self.conn()
            .prepare_cached("SELECT count(*) FROM tenant_addresses WHERE tenant = ?1")
            .and_then(|mut s| s.query_row([tenant], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::queue::testing::temp_queue as queue;

    fn change(id: &str, props: &[(AddressSource, &[&str])]) -> UserChange {
        UserChange {
            user_id: id.into(),
            removed: false,
            properties: props
                .iter()
                .map(|(s, a)| (*s, a.iter().map(|x| x.to_string()).collect()))
                .collect(),
        }
    }

    fn owners(q: &Queue, address: &str) -> Vec<String> {
        q.address_owners("t", &[address.to_string()])
            .unwrap()
            .remove(address)
            .unwrap_or_default()
    }

    #[test]
    fn a_round_is_resumable_page_by_page_and_ends_with_its_delta_link() {
        let (_d, q) = queue();
        assert_eq!(q.facts_sync_state("t").unwrap(), None);
        q.facts_start_full_round("t", Some("https://g/latest"))
            .unwrap();
        q.facts_apply_page(
            "t",
            &[change("u1", &[(AddressSource::Mail, &["a@f.com"])])],
            &RoundLink::Next("https://g/next1".into()),
        )
        .unwrap();
        let s = q.facts_sync_state("t").unwrap().unwrap();
        assert_eq!(s.round_link.as_deref(), Some("https://g/next1"));
        assert_eq!(s.delta_link, None);
        assert!(
            s.full_round,
            "an interrupted full round is not a complete index"
        );
        q.facts_apply_page(
            "t",
            &[change(
                "u2",
                &[(AddressSource::OtherMails, &["a@f.com", "b@f.com"])],
            )],
            &RoundLink::Delta("https://g/delta1".into()),
        )
        .unwrap();
        let s = q.facts_sync_state("t").unwrap().unwrap();
        assert_eq!(s.delta_link.as_deref(), Some("https://g/delta1"));
        assert_eq!(s.round_link, None);
        assert!(!s.full_round);
        assert_eq!(s.listing_delta, None);
        assert!(s.synced_at.is_some());
        assert_eq!(owners(&q, "a@f.com"), vec!["u1", "u2"]);
        assert_eq!(q.indexed_addresses("t").unwrap(), 3);
        assert!(q
            .address_owners("other", &["a@f.com".into()])
            .unwrap()
            .is_empty());

        // An incremental round interrupted half-way keeps the old delta link until it ends.
        q.facts_apply_page("t", &[], &RoundLink::Next("https://g/next2".into()))
            .unwrap();
        let s = q.facts_sync_state("t").unwrap().unwrap();
        assert_eq!(s.delta_link.as_deref(), Some("https://g/delta1"));
        assert_eq!(s.round_link.as_deref(), Some("https://g/next2"));
        assert!(!s.full_round);
    }

    #[test]
    fn changes_replace_only_the_properties_they_carry_and_removals_drop_the_user() {
        let (_d, q) = queue();
        let done = RoundLink::Delta("https://g/d".into());
        q.facts_apply_page(
            "t",
            &[change(
                "u1",
                &[
                    (AddressSource::Mail, &["old@f.com"]),
                    (AddressSource::ProxyAddresses, &["old@f.com", "alias@f.com"]),
                ],
            )],
            &done,
        )
        .unwrap();
        // Only mail changed: the proxy addresses stay.
        q.facts_apply_page(
            "t",
            &[change("u1", &[(AddressSource::Mail, &["new@f.com"])])],
            &done,
        )
        .unwrap();
        assert_eq!(owners(&q, "new@f.com"), vec!["u1"]);
        assert_eq!(owners(&q, "old@f.com"), vec!["u1"], "still a proxy address");
        assert_eq!(owners(&q, "alias@f.com"), vec!["u1"]);
        // proxyAddresses emptied.
        q.facts_apply_page(
            "t",
            &[change("u1", &[(AddressSource::ProxyAddresses, &[])])],
            &done,
        )
        .unwrap();
        assert!(owners(&q, "old@f.com").is_empty());
        q.facts_apply_page(
            "t",
            &[UserChange {
                user_id: "u1".into(),
                removed: true,
                properties: Vec::new(),
            }],
            &done,
        )
        .unwrap();
        assert!(owners(&q, "new@f.com").is_empty());
        assert_eq!(q.indexed_addresses("t").unwrap(), 0);
    }

    #[test]
    fn a_full_round_starts_from_an_empty_index() {
        let (_d, q) = queue();
        q.facts_apply_page(
            "t",
            &[change("u1", &[(AddressSource::Mail, &["a@f.com"])])],
            &RoundLink::Delta("https://g/d".into()),
        )
        .unwrap();
        q.facts_start_full_round("t", None).unwrap();
        let s = q.facts_sync_state("t").unwrap().unwrap();
        assert_eq!(s.delta_link, None);
        assert_eq!(s.listing_delta, None);
        assert!(s.full_round);
        assert_eq!(q.indexed_addresses("t").unwrap(), 0);
    }
}
