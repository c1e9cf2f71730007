//! Time and token buckets: the emulator's [`Clock`] (system or manual) and the Graph-shaped
//! [`Bucket`]s that decide when a request is answered 429.
//!
//! A bucket of capacity C over a window W starts full and refills continuously at C/W per
//! second, so a client that paces itself at the refill rate is never refused and one that sends
//! faster is refused as soon as the initial burst is spent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The emulator's notion of "now", as a duration since the emulator started. A manual clock only
/// moves when told to, which makes throttling and token expiry testable without sleeping; the
/// system clock follows real time (and can still be pushed forward with [`Clock::advance`]).
#[derive(Clone, Debug)]
pub struct Clock {
    start: Option<Instant>,
    offset_nanos: Arc<AtomicU64>,
}

impl Clock {
    pub fn system() -> Self {
        Clock {
            start: Some(Instant::now()),
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn manual() -> Self {
        Clock {
            start: None,
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn is_manual(&self) -> bool {
        self.start.is_none()
    }

    /// Time since the emulator started.
    pub fn now(&self) -> Duration {
        let offset = Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst));
        match self.start {
            Some(start) => start.elapsed() + offset,
            None => offset,
        }
    }

    /// Move the clock forward (every clone sees it).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

/// Tolerance for floating-point refill so exact pacing is never refused by rounding.
const EPSILON: f64 = 1e-6;

/// One token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    /// Tokens per second.
    rate: f64,
    tokens: f64,
    last: Duration,
}

impl Bucket {
    /// A full bucket of `capacity` tokens refilling `capacity` per `window`.
    pub fn new(capacity: f64, window: Duration, now: Duration) -> Self {
        Bucket {
            capacity,
            rate: capacity / window.as_secs_f64(),
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        if now > self.last {
            let elapsed = (now - self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
            self.last = now;
        }
    }

    /// `Ok` when `cost` tokens are available now (nothing is taken), else how long until they are.
    pub fn check(&mut self, cost: f64, now: Duration) -> Result<(), Duration> {
        self.refill(now);
        if cost <= self.tokens + EPSILON {
            Ok(())
        } else if cost > self.capacity + EPSILON {
            // Can never be paid; answer with a full window.
            Err(Duration::from_secs_f64(self.capacity / self.rate))
        } else {
            Err(Duration::from_secs_f64((cost - self.tokens) / self.rate))
        }
    }

    /// Take `cost` tokens (after a successful [`Bucket::check`]).
    pub fn take(&mut self, cost: f64, now: Duration) {
        self.refill(now);
        self.tokens = (self.tokens - cost).max(0.0);
    }

    /// Share of the bucket a request of `cost` would use, counting what is already in use (above
    /// 1.0 when it does not fit).
    pub fn demand_share(&self, cost: f64) -> f64 {
        if self.capacity <= 0.0 {
            0.0
        } else {
            (self.capacity - self.tokens + cost) / self.capacity
        }
    }

    /// Share of the bucket in use, 0.0 (full) to 1.0 (empty).
    pub fn used_share(&self) -> f64 {
        if self.capacity <= 0.0 {
            0.0
        } else {
            1.0 - self.tokens / self.capacity
        }
    }
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64() - EPSILON).ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_wait() {
        let mut b = Bucket::new(10.0, Duration::from_secs(10), Duration::ZERO);
        for _ in 0..10 {
            assert!(b.check(1.0, Duration::ZERO).is_ok());
            b.take(1.0, Duration::ZERO);
        }
        let wait = b.check(1.0, Duration::ZERO).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9);
        assert_eq!(retry_after_secs(wait), 1);
        assert!(b.check(1.0, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn pacing_at_refill_rate_is_never_refused() {
        let mut b = Bucket::new(3.0, Duration::from_secs(150), Duration::ZERO);
        let step = Duration::from_secs(50);
        let mut now = Duration::ZERO;
        for _ in 0..1000 {
            assert!(b.check(1.0, now).is_ok());
            b.take(1.0, now);
            now += step;
        }
    }

    #[test]
    fn refill_is_capped_at_capacity() {
        let mut b = Bucket::new(2.0, Duration::from_secs(1), Duration::ZERO);
        b.take(2.0, Duration::ZERO);
        assert!(b.check(2.0, Duration::from_secs(100)).is_ok());
        b.take(2.0, Duration::from_secs(100));
        assert!(b.check(1.0, Duration::from_secs(100)).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = Clock::manual();
        assert_eq!(c.now(), Duration::ZERO);
        let c2 = c.clone();
        c2.advance(Duration::from_secs(3));
        assert_eq!(c.now(), Duration::from_secs(3));
    }
}
