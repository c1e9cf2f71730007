//! The read budget: Graph's resource units (RU), spent by reads, apart from the write pace.
//!
//! Graph throttles an app's reads on a token bucket of resource units per app+tenant and 10 s
//! (8,000 for a tenant above 500 users), each read costing by what it asks for (`GET users` 2,
//! 1 with `$select`; group members 3; transitive members 5; a `$batch` the sum of its
//! sub-requests), and its writes on other buckets (the write limit, the `/invitations` limit).
//! Pacing reads at the write ceiling made a dry run of 10,000 users take 22 s of a budget it
//! could spend in one; a write limiter that also carried reads gave their capacity away in live
//! runs. So reads wait here, on a bucket of the same shape as Graph's (full at the start,
//! refilled continuously at budget / 10 s), writes wait on [`super::Limiter`], and a 429 stops
//! only the side its `x-ms-throttle-scope` names. Writes cost 1 RU too: they are charged here
//! without waiting, so the reads they leave room for never overdraw the bucket.
//!
//! Time is tokio's clock, so tests run under `start_paused`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use url::Url;

use super::limiter::{pause_in_force, sleep_through_pauses};

/// The window Graph states its resource-unit limits over.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Weight of the newest round trip in [`ReadBudget::latency`].
const LATENCY_WEIGHT: f64 = 0.2;
/// Longest pause chosen without a `Retry-After` (as for writes).
const MAX_DEFAULT_PAUSE: Duration = Duration::from_secs(60);

/// What Graph charges for one read of `url` (resource units), from the throttling-limits page:
/// users 2 (1 with `$select`), group members 3, transitive members 5, anything else 1.
pub fn read_cost(url: &Url) -> u32 {
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| {
            s.skip_while(|s| *s != "v1.0" && *s != "beta")
                .skip(1)
                .collect()
        })
        .unwrap_or_default();
    let select = url.query_pairs().any(|(k, _)| k == "$select");
    match segments.as_slice() {
        ["groups", _, "transitiveMembers", ..] => 5,
        ["groups", _, "members", ..] => 3,
        ["users", ..] if select => 1,
        ["users", ..] => 2,
        _ => 1,
    }
}

/// Which of an app's limits a 429 names (`x-ms-throttle-scope`: `{Tenant_Application|Tenant|
/// Application}/{Read|Write|ReadWrite}/{appId}/{tenantId}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    /// Both, or not said: a 429 without the header stops both sides, never neither.
    ReadWrite,
}

impl Scope {
    /// The scope a 429's header names; [`Scope::ReadWrite`] when absent or unreadable.
    pub fn parse(header: Option<&str>) -> Scope {
        let kind = header.and_then(|h| h.split('/').nth(1)).map(str::trim);
        match kind {
            Some(k) if k.eq_ignore_ascii_case("Read") => Scope::Read,
            Some(k) if k.eq_ignore_ascii_case("Write") => Scope::Write,
            _ => Scope::ReadWrite,
        }
    }

    pub fn pauses_reads(self) -> bool {
        matches!(self, Scope::Read | Scope::ReadWrite)
    }

    pub fn pauses_writes(self) -> bool {
        matches!(self, Scope::Write | Scope::ReadWrite)
    }
}

/// The run's resource-unit bucket, shared by every read.
#[derive(Debug)]
pub struct ReadBudget {
    /// Resource units per [`WINDOW`]: the bucket's size.
    capacity: f64,
    /// Refill, resource units per second.
    per_second: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Resource units left; below zero when reads have reserved what the refill has not paid
    /// yet (each such read waits until it is paid).
    tokens: f64,
    refilled_at: Instant,
    paused_until: Option<Instant>,
    /// Read 429s without a read going through in between: the default pause grows with them.
    consecutive_throttles: u32,
    /// Round trip of recent reads (moving average), once one was measured.
    latency: Option<Duration>,
}

impl ReadBudget {
    /// A full bucket of `ru_per_window` resource units per 10 s (at least 1).
    pub fn new(ru_per_window: f64) -> Arc<ReadBudget> {
        let capacity = if ru_per_window.is_finite() && ru_per_window >= 1.0 {
            ru_per_window
        } else {
            1.0
        };
        Arc::new(ReadBudget {
            capacity,
            per_second: capacity / WINDOW.as_secs_f64(),
            state: Mutex::new(State {
                tokens: capacity,
                refilled_at: Instant::now(),
                paused_until: None,
                consecutive_throttles: 0,
                latency: None,
            }),
        })
    }

    /// Resource units per 10 s.
    pub fn budget(&self) -> f64 {
        self.capacity
    }

    /// The refill: resource units per second the budget sustains.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    fn refill(&self, s: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.per_second).min(self.capacity);
        s.refilled_at = now;
    }

    /// Waits for any read pause, then until `cost` resource units are paid. Reads are served in
    /// the order they ask: each reserves its cost at once and waits for the refill to cover it.
    pub async fn acquire(&self, cost: u32) {
        let cost = f64::from(cost.max(1)).min(self.capacity);
        sleep_through_pauses(|| self.paused_until()).await;
        let wait = {
            let mut s = self.state.lock().expect("read budget");
            let now = Instant::now();
            self.refill(&mut s, now);
            s.tokens -= cost;
            (s.tokens < 0.0).then(|| Duration::from_secs_f64(-s.tokens / self.per_second))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
            // A 429 while waiting: the reservation stands, the pause comes first.
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
            }
        }
    }

    /// A write's resource unit: charged without waiting (writes wait on the write limiter), so
    /// the reads that follow leave it room in Graph's bucket.
    pub fn spend(&self, cost: u32) {
        let mut s = self.state.lock().expect("read budget");
        self.refill(&mut s, Instant::now());
        s.tokens -= f64::from(cost);
    }

    /// A read's answer said Graph's bucket is `share` used (`x-ms-throttle-limit-percentage`,
    /// sent above 0.8): when ours thinks more is left, believe Graph (another client of the same
    /// app, or an earlier command, spent it).
    pub fn pressure(&self, share: f64) {
        if !share.is_finite() || share <= super::limiter::PRESSURE_THRESHOLD {
            return;
        }
        let mut s = self.state.lock().expect("read budget");
        self.refill(&mut s, Instant::now());
        let left = self.capacity * (1.0 - share.min(1.0));
        if s.tokens > left {
            s.tokens = left;
        }
    }

    /// A 429 for reads: every read waits for `retry_after` (exponential from 1 s when Graph
    /// gave none) and the bucket is taken as empty. Writes are not touched.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut s = self.state.lock().expect("read budget");
        self.refill(&mut s, now);
        s.consecutive_throttles = s.consecutive_throttles.saturating_add(1);
        let pause = retry_after.unwrap_or_else(|| {
            let exp = s.consecutive_throttles.saturating_sub(1).min(16);
            Duration::from_secs(1u64 << exp).min(MAX_DEFAULT_PAUSE)
        });
        let until = now + pause;
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        s.tokens = s.tokens.min(0.0);
        tracing::debug!(
            pause_ms = pause.as_millis() as u64,
            "reads throttled: pausing reads"
        );
    }

    /// A read went through, answered `round_trip` after it left.
    pub fn succeeded(&self, round_trip: Duration) {
        let mut s = self.state.lock().expect("read budget");
        s.consecutive_throttles = 0;
        s.latency = Some(match s.latency {
            None => round_trip,
            Some(avg) => avg.mul_f64(1.0 - LATENCY_WEIGHT) + round_trip.mul_f64(LATENCY_WEIGHT),
        });
    }

    /// The round trip of recent reads (a moving average), once one went through: what it takes
    /// to spend the budget is how many reads are in flight at this latency.
    pub fn latency(&self) -> Option<Duration> {
        self.state.lock().expect("read budget").latency
    }

    /// The end of the current read pause, if one is in force.
    pub fn paused_until(&self) -> Option<Instant> {
        pause_in_force(&mut self.state.lock().expect("read budget").paused_until)
    }

    /// Resource units left now (negative while reserved reads wait for the refill).
    pub fn available(&self) -> f64 {
        let mut s = self.state.lock().expect("read budget");
        self.refill(&mut s, Instant::now());
        s.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Limiter;

    fn url(s: &str) -> Url {
        Url::parse(&format!("https://graph.microsoft.com{s}")).unwrap()
    }

    #[test]
    fn reads_cost_what_graph_charges() {
        assert_eq!(read_cost(&url("/v1.0/users/u1")), 2);
        assert_eq!(read_cost(&url("/v1.0/users/u1?$select=id,mail")), 1);
        assert_eq!(
            read_cost(&url(
                "/v1.0/users?$filter=id%20in%20('a')&$select=id&$top=999"
            )),
            1
        );
        assert_eq!(read_cost(&url("/v1.0/users?$top=999")), 2);
        assert_eq!(read_cost(&url("/v1.0/users/delta?$select=id")), 1);
        assert_eq!(
            read_cost(&url(
                "/v1.0/groups/g1/members/microsoft.graph.user?$select=id"
            )),
            3
        );
        assert_eq!(
            read_cost(&url(
                "/v1.0/groups/g1/transitiveMembers/microsoft.graph.user?$select=id"
            )),
            5
        );
        assert_eq!(read_cost(&url("/v1.0/domains")), 1);
        assert_eq!(read_cost(&url("/beta/users?$select=id")), 1);
    }

    #[test]
    fn the_scope_header_names_the_side_to_pause() {
        let read = Scope::parse(Some("Tenant_Application/Read/app/tenant"));
        assert_eq!(read, Scope::Read);
        assert!(read.pauses_reads() && !read.pauses_writes());
        let write = Scope::parse(Some("Tenant/Write/app/tenant"));
        assert_eq!(write, Scope::Write);
        assert!(!write.pauses_reads() && write.pauses_writes());
        for both in [
            Some("Application/ReadWrite/app/tenant"),
            None,
            Some("garbled"),
        ] {
            let s = Scope::parse(both);
            assert_eq!(s, Scope::ReadWrite, "{both:?}");
            assert!(s.pauses_reads() && s.pauses_writes());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_goes_at_once_then_reads_wait_for_the_refill() {
        let budget = ReadBudget::new(100.0);
        assert_eq!(budget.per_second(), 10.0);
        let start = Instant::now();
        for _ in 0..50 {
            budget.acquire(2).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "100 RU of burst");
        // 20 more RU: two seconds of a 10 RU/s refill.
        budget.acquire(20).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Refilled while idle, never above the budget.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(budget.available(), 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reads_share_the_refill_in_order() {
        let budget = ReadBudget::new(10.0);
        budget.acquire(10).await;
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..5 {
            let b = budget.clone();
            handles.push(tokio::spawn(async move {
                b.acquire(1).await;
                Instant::now()
            }));
        }
        let mut at: Vec<Duration> = Vec::new();
        for h in handles {
            at.push(h.await.unwrap() - start);
        }
        at.sort();
        // 1 RU/s: one read a second, none together.
        let secs: Vec<u64> = at.iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(secs, vec![1000, 2000, 3000, 4000, 5000]);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_spend_without_waiting_and_reads_pay_for_them() {
        let budget = ReadBudget::new(10.0);
        for _ in 0..10 {
            budget.spend(1);
        }
        assert_eq!(budget.available(), 0.0);
        let start = Instant::now();
        budget.acquire(1).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[test]
    fn latency_is_a_moving_average_of_round_trips() {
        let budget = ReadBudget::new(8000.0);
        assert_eq!(budget.latency(), None);
        budget.succeeded(Duration::from_millis(100));
        assert_eq!(budget.latency(), Some(Duration::from_millis(100)));
        budget.succeeded(Duration::from_millis(200));
        assert_eq!(budget.latency(), Some(Duration::from_millis(120)));
    }

    #[tokio::test(start_paused = true)]
    async fn pressure_believes_graph_when_graph_has_less_left() {
        let budget = ReadBudget::new(1000.0);
        budget.pressure(0.8);
        assert_eq!(budget.available(), 1000.0, "the header starts above 0.8");
        budget.pressure(0.9);
        assert!((budget.available() - 100.0).abs() < 1e-9);
        budget.pressure(0.85);
        assert!(
            (budget.available() - 100.0).abs() < 1e-9,
            "never gives back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_429_pauses_reads_and_leaves_writes_alone() {
        let budget = ReadBudget::new(8000.0);
        let writes = Limiter::pacing(30.0, 19.6);
        let start = Instant::now();
        // What the transport does with a 429 whose scope names reads.
        let scope = Scope::parse(Some("Tenant_Application/Read/app/tenant"));
        if scope.pauses_reads() {
            budget.throttled(Some(Duration::from_secs(3)));
        }
        if scope.pauses_writes() {
            writes.throttled(Some(Duration::from_secs(3)));
        }
        assert_eq!(writes.paused_until(), None);
        assert_eq!(writes.current_rate(), 30.0);
        writes.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "a write goes at once");
        assert_eq!(budget.paused_until(), Some(start + Duration::from_secs(3)));
        budget.acquire(1).await;
        assert!(start.elapsed() >= Duration::from_secs(3));

        // Without Retry-After, the read pause grows: 1 s, then 2 s.
        let budget = ReadBudget::new(8000.0);
        let t = Instant::now();
        budget.throttled(None);
        assert_eq!(budget.paused_until(), Some(t + Duration::from_secs(1)));
        budget.throttled(None);
        assert_eq!(budget.paused_until(), Some(t + Duration::from_secs(2)));
        budget.succeeded(Duration::from_millis(80));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = Instant::now();
        budget.throttled(None);
        assert_eq!(budget.paused_until(), Some(t + Duration::from_secs(1)));
    }
}
