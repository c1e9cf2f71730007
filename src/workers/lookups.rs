//! How the convert pass reads the users its items name: by key (15 ids or UPNs a request,
//! many requests in flight at once), or, when the items name enough of the tenant to make it
//! cheaper, the whole tenant in 999-user pages read once before the first chunk.
//!
//! Reads change nothing: whichever way a user is read, its snapshot is recorded and the item
//! validated by the same producer code, in the same order, so the exactly-once paths do not
//! depend on how the reads were made. A look-up abandoned by a stopping pass leaves its items
//! `pending`, as if it had never started.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::graph::{GraphClient, GraphError, VALUES_PER_FILTER};
use crate::item::{ItemRecord, UserKey};
use crate::model::User;
use crate::queue::Queue;

use super::convert::db;

/// Fewest chunks looked up at once: the next chunk is read while this one is recorded.
pub const MIN_CHUNKS_AHEAD: usize = 2;
/// Most chunks looked up at once (each up to 300 items in memory): 16 × 20 requests in flight
/// spends Graph's 800 RU/s at a round trip of 400 ms, beyond any latency Graph shows.
pub const MAX_CHUNKS_AHEAD: usize = 16;
/// Users a page of the tenant holds (`$top`, Graph's largest).
pub const PAGE_SIZE: u64 = 999;
/// Most items a pass reads the tenant in pages for: the users they name are held in memory
/// (~2 KB each) from the listing until their chunk is validated.
pub const MAX_PAGED_ITEMS: usize = 200_000;

/// Chunks to keep looked up at once so the read budget, not the round trip, sets the pace:
/// `ru_per_second × latency` resource units are in flight when the budget is being spent as
/// fast as it refills; a chunk's look-ups cost `ru_per_chunk`. Before any read was measured,
/// the fewest.
pub fn chunks_ahead(ru_per_second: f64, latency: Option<Duration>, ru_per_chunk: u32) -> usize {
    let Some(latency) = latency else {
        return MIN_CHUNKS_AHEAD;
    };
    let in_flight = ru_per_second * latency.as_secs_f64() / f64::from(ru_per_chunk.max(1));
    if !in_flight.is_finite() {
        return MAX_CHUNKS_AHEAD;
    }
    (in_flight.ceil() as usize + 1).clamp(MIN_CHUNKS_AHEAD, MAX_CHUNKS_AHEAD)
}

/// What reading the named users costs each way, in requests (each 1 RU with `$select`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCost {
    pub look_ups: u64,
    pub pages: u64,
}

impl ReadCost {
    /// `ids` and `upns` looked up 15 a request, against `tenant_users` read 999 a page.
    pub fn of(ids: usize, upns: usize, tenant_users: u64) -> ReadCost {
        let per = VALUES_PER_FILTER as u64;
        ReadCost {
            look_ups: (ids as u64).div_ceil(per) + (upns as u64).div_ceil(per),
            pages: tenant_users.div_ceil(PAGE_SIZE).max(1),
        }
    }

    /// Pages only when they take fewer requests.
    pub fn pages_win(&self) -> bool {
        self.pages < self.look_ups
    }
}

/// The keys (normalized) of items still to be looked up, split by kind.
#[derive(Debug, Default)]
pub struct Keys {
    pub ids: Vec<String>,
    pub upns: Vec<String>,
}

impl Keys {
    pub fn of<'a>(items: impl IntoIterator<Item = &'a ItemRecord>) -> Keys {
        let mut keys = Keys::default();
        for item in items.into_iter().filter(|i| i.snapshot.is_none()) {
            match &item.key {
                Some(UserKey::Id(v)) => keys.ids.push(v.clone()),
                Some(UserKey::UserPrincipalName(v)) => keys.upns.push(v.clone()),
                None => {}
            }
        }
        keys
    }

    pub fn len(&self) -> usize {
        self.ids.len() + self.upns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The users a chunk names, by normalized key, read by key: ids and UPNs at once, each list
/// 15 a request (in a live run, 20 of those per `$batch`), all in flight together.
pub async fn by_keys(graph: GraphClient, keys: Keys) -> Result<HashMap<String, User>, GraphError> {
    let (by_id, by_upn) = tokio::join!(
        async {
            if keys.ids.is_empty() {
                Ok(Vec::new())
            } else {
                graph.users_by_ids(&keys.ids).await
            }
        },
        async {
            if keys.upns.is_empty() {
                Ok(Vec::new())
            } else {
                graph.users_by_upns(&keys.upns).await
            }
        }
    );
    let mut found = HashMap::new();
    for u in by_id? {
        found.insert(UserKey::Id(u.id.clone()).normalized(), u);
    }
    for u in by_upn? {
        if let Some(upn) = &u.user_principal_name {
            found.insert(UserKey::UserPrincipalName(upn.clone()).normalized(), u);
        }
    }
    Ok(found)
}

/// The tenant read in pages, keeping only the users the pass's items name.
#[derive(Debug, Default)]
pub struct Listing {
    users: HashMap<String, User>,
}

impl Listing {
    /// Reads every page of the tenant's users (everything validation selects) and keeps those
    /// whose id or UPN is in `wanted` (normalized keys).
    pub async fn read(graph: &GraphClient, wanted: &HashSet<String>) -> Result<Self, GraphError> {
        let mut users = HashMap::new();
        let mut link: Option<String> = None;
        loop {
            let page = graph.list_users_page("", link.as_deref()).await?;
            for u in page.value {
                let id = UserKey::Id(u.id.clone()).normalized();
                let upn = u
                    .user_principal_name
                    .clone()
                    .map(|v| UserKey::UserPrincipalName(v).normalized());
                if let Some(upn) = upn.filter(|k| wanted.contains(k)) {
                    users.insert(upn, u.clone());
                }
                if wanted.contains(&id) {
                    users.insert(id, u);
                }
            }
            match page.next_link {
                Some(next) => link = Some(next),
                None => return Ok(Listing { users }),
            }
        }
    }

    /// What the listing found of `items`, as a look-up would answer: by normalized key, absent
    /// users missing.
    pub fn found(&self, items: &[ItemRecord]) -> HashMap<String, User> {
        items
            .iter()
            .filter(|i| i.snapshot.is_none())
            .filter_map(|i| {
                let key = i.key.as_ref()?.normalized();
                let user = self.users.get(&key)?;
                Some((key, user.clone()))
            })
            .collect()
    }
}

/// How a pass reads its users: decided once, before the first chunk.
pub enum Reads {
    ByKey,
    Listed(Listing),
}

/// Counts what the pass's pending items would cost to look up by key against reading the
/// tenant in pages, and reads the tenant when that takes fewer requests. Only dry runs list:
/// a live run validates each user on a read made just before its chunk is invited.
pub async fn choose(
    graph: &GraphClient,
    queue: &Arc<Queue>,
    run_id: i64,
    only: Option<&HashSet<i64>>,
) -> Result<Reads, ChooseError> {
    let mut wanted = HashSet::new();
    let (mut ids, mut upns) = (0usize, 0usize);
    let mut after = 0;
    loop {
        let items = db(queue, move |q| q.pending_items(run_id, after, 5_000))
            .await
            .map_err(ChooseError::Queue)?;
        let Some(last) = items.last() else { break };
        after = last.id;
        for item in items
            .iter()
            .filter(|i| only.is_none_or(|o| o.contains(&i.id)) && i.snapshot.is_none())
        {
            match &item.key {
                Some(k @ UserKey::Id(_)) => {
                    ids += 1;
                    wanted.insert(k.normalized());
                }
                Some(k @ UserKey::UserPrincipalName(_)) => {
                    upns += 1;
                    wanted.insert(k.normalized());
                }
                None => {}
            }
        }
        if wanted.len() > MAX_PAGED_ITEMS {
            tracing::info!(
                run_id,
                items = wanted.len(),
                "looking users up by key: more than {MAX_PAGED_ITEMS} to hold from a listing"
            );
            return Ok(Reads::ByKey);
        }
    }
    if wanted.is_empty() {
        return Ok(Reads::ByKey);
    }
    let Some(tenant_users) = graph.count_users().await.map_err(ChooseError::Graph)? else {
        tracing::info!(
            run_id,
            "looking users up by key: Graph did not say how many users the tenant has"
        );
        return Ok(Reads::ByKey);
    };
    let cost = ReadCost::of(ids, upns, tenant_users);
    let by_key = !cost.pages_win();
    let choice = if by_key {
        "looking users up by key, 15 a request: fewer requests than reading the tenant".to_string()
    } else {
        format!("reading the tenant in pages of {PAGE_SIZE}: fewer requests than looking users up by key")
    };
    tracing::info!(
        run_id,
        users = ids + upns,
        tenant_users,
        look_up_requests = cost.look_ups,
        page_requests = cost.pages,
        "{choice}"
    );
    if by_key {
        return Ok(Reads::ByKey);
    }
    let listing = Listing::read(graph, &wanted)
        .await
        .map_err(ChooseError::Graph)?;
    Ok(Reads::Listed(listing))
}

/// Why [`choose`] could not decide.
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    #[error(transparent)]
    Graph(GraphError),
    #[error("reading the pass's pending items: {0:#}")]
    Queue(anyhow::Error),
}

/// One chunk on its way through the reads: its items and the look-up answering them.
pub struct Chunk {
    pub items: Vec<ItemRecord>,
    answer: Answer,
}

enum Answer {
    Ready(HashMap<String, User>),
    Running(JoinHandle<Result<HashMap<String, User>, GraphError>>),
}

impl Chunk {
    /// Starts reading `items`' users: from the listing at once, or by key in a task of its own.
    pub fn start(reads: &Reads, graph: &GraphClient, items: Vec<ItemRecord>) -> Chunk {
        let answer = match reads {
            Reads::Listed(listing) => Answer::Ready(listing.found(&items)),
            Reads::ByKey => {
                let keys = Keys::of(&items);
                if keys.is_empty() {
                    Answer::Ready(HashMap::new())
                } else {
                    Answer::Running(tokio::spawn(by_keys(graph.clone(), keys)))
                }
            }
        };
        Chunk { items, answer }
    }

    /// The chunk's items and what the reads found of them.
    pub async fn answered(
        mut self,
    ) -> (Vec<ItemRecord>, Result<HashMap<String, User>, GraphError>) {
        let answer = std::mem::replace(&mut self.answer, Answer::Ready(HashMap::new()));
        let found = match answer {
            Answer::Ready(found) => Ok(found),
            Answer::Running(task) => match task.await {
                Ok(found) => found,
                Err(e) => Err(GraphError::Config(format!("a look-up task failed: {e}"))),
            },
        };
        (std::mem::take(&mut self.items), found)
    }
}

impl Drop for Chunk {
    /// A chunk dropped unanswered (the pass stopped) abandons its reads: they change nothing.
    fn drop(&mut self) {
        if let Answer::Running(task) = &self.answer {
            task.abort();
        }
    }
}

/// The chunks whose users are being read, oldest first: answered and recorded in the order
/// the walk read them.
#[derive(Default)]
pub struct Ahead(VecDeque<Chunk>);

impl Ahead {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, chunk: Chunk) {
        self.0.push_back(chunk);
    }

    pub fn pop(&mut self) -> Option<Chunk> {
        self.0.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_chunks_ahead_to_spend_the_budget_at_the_round_trip() {
        // 8,000 RU per 10 s, a dry run's chunk of 20 look-ups: 800 × 0.08 / 20 = 3.2 → 4, +1.
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(chunks_ahead(800.0, ms(80), 20), 5);
        assert_eq!(chunks_ahead(800.0, ms(200), 20), 9);
        assert_eq!(chunks_ahead(800.0, ms(1), 20), MIN_CHUNKS_AHEAD);
        assert_eq!(chunks_ahead(800.0, None, 20), MIN_CHUNKS_AHEAD);
        assert_eq!(chunks_ahead(800.0, ms(5_000), 20), MAX_CHUNKS_AHEAD);
        assert_eq!(chunks_ahead(f64::INFINITY, ms(80), 20), MAX_CHUNKS_AHEAD);
        assert_eq!(chunks_ahead(800.0, ms(80), 0), MAX_CHUNKS_AHEAD);
    }

    #[test]
    fn pages_are_chosen_only_when_they_take_fewer_requests() {
        // A CSV of the whole 100,000-user tenant: 6,667 look-ups or 101 pages.
        let all = ReadCost::of(100_000, 0, 100_000);
        assert_eq!(
            all,
            ReadCost {
                look_ups: 6_667,
                pages: 101
            }
        );
        assert!(all.pages_win());
        // Ids and UPNs are looked up apart: 16 + 1 each round up.
        assert_eq!(ReadCost::of(16, 1, 10).look_ups, 3);
        // 30 users of a 3,000-user tenant: 2 look-ups against 4 pages.
        let few = ReadCost::of(30, 0, 3_000);
        assert_eq!((few.look_ups, few.pages), (2, 4));
        assert!(!few.pages_win());
        // A tie reads by key: those requests run at once, pages one after another.
        assert!(!ReadCost::of(15 * 4, 0, 999 * 4).pages_win());
        // An empty tenant is still one page.
        assert_eq!(ReadCost::of(0, 0, 0).pages, 1);
    }
}
