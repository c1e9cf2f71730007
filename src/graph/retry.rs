//! Backoff and `Retry-After`: how long to wait before trying again.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: attempt `n` (1-based) waits a uniformly random time in
/// `[0, min(cap, base·2^(n-1))]`, which spreads retries of many workers instead of syncing them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The upper bound of the wait before retry number `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random wait for retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        let nanos = rand::rng().random_range(0..=ceiling.as_nanos() as u64);
        Duration::from_nanos(nanos)
    }
}

/// Longest `Retry-After` we obey; anything longer is treated as this (a misbehaving proxy must
/// not stall a migration weekend for hours).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Parses a `Retry-After` value: delay seconds (Graph may send fractions) or an HTTP date.
/// Garbage and negative values give `None`, so the caller falls back to its own backoff.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs).min(MAX_RETRY_AFTER));
        }
        return None;
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// `Retry-After` of a header map, if present and readable.
pub fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("99999", now), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
        let parsed = parse_retry_after(&later, now).unwrap();
        // HTTP dates have whole-second precision.
        assert!(
            parsed <= Duration::from_secs(10) && parsed > Duration::from_secs(8),
            "{parsed:?}"
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        for garbage in ["", "soon", "-1", "NaN", "inf", "1s", "Mon, 99 Foo 2020"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn backoff_stays_within_bounds() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_millis(500));
        assert_eq!(b.ceiling(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(4), Duration::from_secs(4));
        assert_eq!(b.ceiling(7), Duration::from_secs(30));
        assert_eq!(b.ceiling(1000), Duration::from_secs(30));
        for attempt in 1..20 {
            for _ in 0..50 {
                let d = b.delay(attempt);
                assert!(d <= b.ceiling(attempt), "{attempt}: {d:?}");
            }
        }
        // Full jitter actually spreads the waits.
        let samples: Vec<_> = (0..50).map(|_| b.delay(6)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_secs(8)));
        assert!(samples.iter().any(|d| *d > Duration::from_secs(8)));
        let zero = Backoff {
            base: Duration::ZERO,
            cap: Duration::ZERO,
        };
        assert_eq!(zero.delay(3), Duration::ZERO);
    }
}
