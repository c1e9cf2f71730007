//! The one rate limiter of a run, shared by every worker.
//!
//! Two layers: governor enforces the configured ceiling (with a small burst); on top, an
//! adaptive pace slows everyone down after a 429 and ramps back up cautiously. A 429 also sets
//! a global pause: Graph's buckets are per app+tenant, so when one worker is throttled, all are.
//!
//! Pressure before a 429: Graph answers with `x-ms-throttle-limit-percentage` once a bucket is
//! above 80% used. A run starts at its ceiling (by default the `/invitations` limit, using the
//! write bucket's burst) and, on the first such answer, settles at the settle pace (just under
//! the write bucket's refill), which an emptied bucket sustains without refusals; it climbs back
//! only after answers have come without the header for [`PRESSURE_HOLD`].
//! Time is tokio's clock throughout, so tests run under `start_paused`.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

/// Governor's clock over `tokio::time::Instant`, so the ceiling follows a paused test clock.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            start: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

/// Rate cut applied by a 429.
const CUT_FACTOR: f64 = 0.5;
/// Share of the ceiling regained per ramp step.
const RAMP_STEP: f64 = 0.05;
/// Longest global pause chosen without a `Retry-After`.
const MAX_DEFAULT_PAUSE: Duration = Duration::from_secs(60);
/// Graph sends `x-ms-throttle-limit-percentage` only above this share of a limit.
pub const PRESSURE_THRESHOLD: f64 = 0.8;
/// How long after the last pressure signal the pace stays at the settle rate: the header stops
/// as soon as a bucket falls back under 80%, and climbing back at once would just refill it.
pub const PRESSURE_HOLD: Duration = Duration::from_secs(30);

type Governor = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

pub struct Limiter {
    ceiling: f64,
    /// The pace under pressure (at most the ceiling).
    settle: f64,
    floor: f64,
    /// Successes needed for one ramp step: about a second's worth at the ceiling.
    ramp_every: u64,
    governor: Governor,
    clock: TokioClock,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: f64,
    paused_until: Option<Instant>,
    /// Next free slot of the adaptive pace (only used below the ceiling).
    next_slot: Instant,
    /// 429s without a success in between: drives the default pause (1 s, 2 s, 4 s, …).
    consecutive_throttles: u32,
    successes_since_step: u64,
    /// End of the pause set by the last rate cut: 429s arriving before it answer requests sent
    /// before the cut, so they do not cut again.
    cut_episode_end: Option<Instant>,
    /// Until when the pace may not climb above the settle rate (the last pressure signal plus
    /// [`PRESSURE_HOLD`]).
    pressure_until: Option<Instant>,
}

impl Limiter {
    /// A limiter allowing at most `rate_per_second` requests per second (a small burst aside),
    /// which pressure signals do not slow down (only 429s do).
    pub fn new(rate_per_second: f64) -> Arc<Limiter> {
        Limiter::pacing(rate_per_second, rate_per_second)
    }

    /// A limiter starting at `start` requests per second that settles at `settle` (at most
    /// `start`) on the first answer saying a bucket is above 80% used.
    pub fn pacing(start: f64, settle: f64) -> Arc<Limiter> {
        let ceiling = if start.is_finite() && start > 0.0 {
            start
        } else {
            1.0
        };
        let settle = if settle.is_finite() && settle > 0.0 {
            settle.min(ceiling)
        } else {
            ceiling
        };
        let burst = ((ceiling / 4.0).floor() as u32).max(1);
        let period = Duration::from_secs_f64(1.0 / ceiling).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("period is positive")
            .allow_burst(NonZeroU32::new(burst).expect("burst is at least 1"));
        let clock = TokioClock::new();
        Arc::new(Limiter {
            ceiling,
            settle,
            floor: ceiling.min(1.0),
            ramp_every: (ceiling.ceil() as u64).max(10),
            governor: RateLimiter::direct_with_clock(quota, clock),
            clock,
            state: Mutex::new(State {
                rate: ceiling,
                paused_until: None,
                next_slot: Instant::now(),
                consecutive_throttles: 0,
                successes_since_step: 0,
                cut_episode_end: None,
                pressure_until: None,
            }),
        })
    }

    /// The pace the limiter settles at under pressure.
    pub fn settle_rate(&self) -> f64 {
        self.settle
    }

    /// An answer's `x-ms-throttle-limit-percentage` (a share of a limit, 0.8–1.8): above 0.8,
    /// settle now, before the bucket runs out and Graph starts answering 429.
    pub fn pressure(&self, share: f64) {
        if share.is_nan() || share <= PRESSURE_THRESHOLD {
            return;
        }
        let now = Instant::now();
        let mut s = self.state.lock().expect("limiter state");
        s.pressure_until = Some(now + PRESSURE_HOLD);
        if s.rate > self.settle {
            s.rate = self.settle;
            s.successes_since_step = 0;
            tracing::debug!(share, rate = s.rate, "Graph signals pressure: settling");
        }
    }

    /// The configured ceiling (requests per second).
    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// The burst governor allows at the ceiling.
    pub fn burst(&self) -> u32 {
        ((self.ceiling / 4.0).floor() as u32).max(1)
    }

    /// Waits for any global pause, then for a slot at the current (adaptive) rate.
    pub async fn acquire(&self) {
        loop {
            sleep_through_pauses(|| self.paused_until()).await;
            let slot = {
                let mut s = self.state.lock().expect("limiter state");
                if s.rate < self.ceiling {
                    let now = Instant::now();
                    let slot = s.next_slot.max(now);
                    s.next_slot = slot + Duration::from_secs_f64(1.0 / s.rate);
                    Some(slot)
                } else {
                    None
                }
            };
            if let Some(slot) = slot {
                tokio::time::sleep_until(slot).await;
                // A 429 during the wait: the slot belongs to the old pace, start over.
                if self.paused_until().is_some() {
                    continue;
                }
            }
            loop {
                match self.governor.check() {
                    Ok(()) => return,
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        tokio::time::sleep(wait.max(Duration::from_micros(1))).await;
                    }
                }
            }
        }
    }

    /// A 429 anywhere: pause everyone until `retry_after` has passed (or an exponential default
    /// when Graph gave none) and halve the pace, once per throttling episode.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut s = self.state.lock().expect("limiter state");
        s.consecutive_throttles = s.consecutive_throttles.saturating_add(1);
        s.successes_since_step = 0;
        let pause = retry_after.unwrap_or_else(|| {
            let exp = s.consecutive_throttles.saturating_sub(1).min(16);
            Duration::from_secs(1u64 << exp).min(MAX_DEFAULT_PAUSE)
        });
        let until = now + pause;
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        let new_episode = s.cut_episode_end.is_none_or(|end| now >= end);
        if new_episode {
            s.rate = (s.rate * CUT_FACTOR).max(self.floor);
            s.cut_episode_end = s.paused_until;
        }
        s.next_slot = s.next_slot.max(until);
        tracing::debug!(
            pause_ms = pause.as_millis() as u64,
            rate = s.rate,
            "throttled: pausing all workers"
        );
    }

    /// A request went through: after enough of them, step the pace back toward the ceiling.
    pub fn succeeded(&self) {
        let mut s = self.state.lock().expect("limiter state");
        s.consecutive_throttles = 0;
        let cap = match s.pressure_until {
            Some(until) if until > Instant::now() => self.settle,
            _ => self.ceiling,
        };
        if s.rate >= cap {
            return;
        }
        s.successes_since_step += 1;
        if s.successes_since_step >= self.ramp_every {
            s.successes_since_step = 0;
            s.rate = (s.rate + self.ceiling * RAMP_STEP).min(cap);
        }
    }

    /// The pace requests are currently let through at (requests per second).
    pub fn current_rate(&self) -> f64 {
        self.state.lock().expect("limiter state").rate
    }

    /// The end of the current global pause, if one is in force.
    pub fn paused_until(&self) -> Option<Instant> {
        pause_in_force(&mut self.state.lock().expect("limiter state").paused_until)
    }
}

/// Sleeps until `paused_until` says no pause is in force (a pause extended meanwhile is slept
/// through too). Shared by the write limiter and the read budget.
pub(super) async fn sleep_through_pauses(paused_until: impl Fn() -> Option<Instant>) {
    while let Some(until) = paused_until() {
        tokio::time::sleep_until(until).await;
    }
}

/// The end of the pause `paused_until` records while it lasts; an ended one is cleared. Shared
/// by the write limiter and the read budget.
pub(super) fn pause_in_force(paused_until: &mut Option<Instant>) -> Option<Instant> {
    *paused_until = paused_until.filter(|&until| until > Instant::now());
    *paused_until
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("ceiling", &self.ceiling)
            .field("state", &self.state.lock().ok())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pace after `n` more requests went through.
    fn rate_after_successes(limiter: &Limiter, n: usize) -> f64 {
        for _ in 0..n {
            limiter.succeeded();
        }
        limiter.current_rate()
    }

    async fn acquire_n(limiter: &Arc<Limiter>, n: usize, tasks: usize) {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let l = limiter.clone();
            let share = n / tasks + usize::from(t < n % tasks);
            handles.push(tokio::spawn(async move {
                for _ in 0..share {
                    l.acquire().await;
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ceiling_is_respected() {
        let limiter = Limiter::new(20.0);
        assert_eq!(limiter.burst(), 5);
        let start = Instant::now();
        acquire_n(&limiter, 105, 8).await;
        let took = start.elapsed();
        // 105 requests, 5 of them in the initial burst: at least 100 / 20 = 5 s.
        assert!(took >= Duration::from_millis(4990), "{took:?}");
        assert!(took < Duration::from_millis(5200), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn burst_goes_through_at_once() {
        let limiter = Limiter::new(40.0);
        let start = Instant::now();
        acquire_n(&limiter, 10, 1).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_pauses_everyone_until_retry_after() {
        let limiter = Limiter::new(100.0);
        let start = Instant::now();
        limiter.throttled(Some(Duration::from_secs(7)));
        assert_eq!(limiter.paused_until(), Some(start + Duration::from_secs(7)));
        assert_eq!(limiter.current_rate(), 50.0);
        let mut handles = Vec::new();
        for _ in 0..4 {
            let l = limiter.clone();
            handles.push(tokio::spawn(async move {
                l.acquire().await;
                Instant::now()
            }));
        }
        for h in handles {
            let at = h.await.unwrap();
            assert!(at >= start + Duration::from_secs(7), "{:?}", at - start);
        }
        assert_eq!(limiter.paused_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn simultaneous_429s_cut_once_and_default_pause_grows() {
        let limiter = Limiter::new(100.0);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.throttled(Some(Duration::from_secs(2)));
        }
        assert_eq!(limiter.current_rate(), 50.0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        // No Retry-After: the default grows with consecutive 429s (6th here → capped at 32 s).
        limiter.throttled(None);
        assert_eq!(limiter.current_rate(), 25.0);
        assert_eq!(
            limiter.paused_until(),
            Some(start + Duration::from_secs(3 + 32))
        );
        limiter.succeeded();
        limiter.throttled(None);
        assert_eq!(
            limiter.paused_until(),
            Some(start + Duration::from_secs(3 + 32)),
            "a shorter pause does not shorten the current one"
        );
        tokio::time::sleep(Duration::from_secs(40)).await;
        limiter.throttled(None);
        assert_eq!(
            limiter.paused_until(),
            Some(start + Duration::from_secs(43 + 2))
        );
        // Floor of 1 request per second.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(61)).await;
            limiter.throttled(None);
        }
        assert_eq!(limiter.current_rate(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn reduced_rate_paces_and_ramps_back() {
        let limiter = Limiter::new(20.0);
        limiter.throttled(Some(Duration::from_secs(1)));
        assert_eq!(limiter.current_rate(), 10.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        acquire_n(&limiter, 21, 4).await;
        // 21 slots at 10/s: the last starts 2 s after the first.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1990), "{took:?}");
        assert!(took < Duration::from_millis(2200), "{took:?}");

        assert_eq!(rate_after_successes(&limiter, 20 * 10), 20.0);
        assert_eq!(rate_after_successes(&limiter, 1), 20.0);
    }

    #[tokio::test(start_paused = true)]
    async fn ramp_is_gradual() {
        let limiter = Limiter::new(100.0);
        limiter.throttled(Some(Duration::ZERO));
        assert_eq!(limiter.current_rate(), 50.0);
        assert_eq!(rate_after_successes(&limiter, 99), 50.0);
        assert_eq!(rate_after_successes(&limiter, 1), 55.0);
    }

    #[tokio::test(start_paused = true)]
    async fn pressure_settles_before_any_429_and_holds_while_it_lasts() {
        let limiter = Limiter::pacing(30.0, 19.6);
        assert_eq!(limiter.settle_rate(), 19.6);
        limiter.pressure(0.5);
        limiter.pressure(0.8);
        assert_eq!(
            limiter.current_rate(),
            30.0,
            "Graph's header starts above 0.8"
        );
        limiter.pressure(0.93);
        assert_eq!(limiter.current_rate(), 19.6);
        limiter.pressure(1.2);
        assert_eq!(
            limiter.current_rate(),
            19.6,
            "settling is not a cut: it never compounds"
        );

        // Paced at the settle rate: 99 slots after the first take 99 / 19.6 s.
        let start = Instant::now();
        acquire_n(&limiter, 100, 8).await;
        let took = start.elapsed().as_secs_f64();
        assert!((took - 99.0 / 19.6).abs() < 0.05, "{took}");

        // Successes under pressure do not climb above the settle rate.
        assert_eq!(rate_after_successes(&limiter, 1_000), 19.6);
        // Quiet for the hold: the burst is used again, step by step.
        tokio::time::sleep(PRESSURE_HOLD).await;
        assert_eq!(rate_after_successes(&limiter, 30), 19.6 + 30.0 * RAMP_STEP);
        assert_eq!(rate_after_successes(&limiter, 30 * 10), 30.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_under_pressure_still_cuts_and_the_ramp_stops_at_the_settle_rate() {
        let limiter = Limiter::pacing(30.0, 20.0);
        limiter.pressure(0.9);
        limiter.throttled(Some(Duration::from_secs(1)));
        assert_eq!(limiter.current_rate(), 10.0);
        assert_eq!(rate_after_successes(&limiter, 30 * 20), 20.0);
        let plain = Limiter::new(20.0);
        plain.pressure(1.5);
        assert_eq!(
            plain.current_rate(),
            20.0,
            "without a settle rate, pressure changes nothing"
        );
        assert_eq!(Limiter::pacing(10.0, 20.0).settle_rate(), 10.0);
    }
}
