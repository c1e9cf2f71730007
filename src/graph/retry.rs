//! The one retry policy of the client: how long to wait before trying again, and when to stop.
//!
//! Every resend decision goes through [`RetryPolicy::next`] — single requests in `transport`,
//! `$batch` sub-requests in `batch`, and (through [`delay`]) the workers' pause between attempts
//! at one user — so backoff, `Retry-After` and the limits live in one place.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::config::{DEFAULT_HTTP_RETRIES, DEFAULT_NOT_SENT_RETRY_FOR};

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
            base: default_base(),
            cap: Duration::from_secs(30),
        }
    }
}

/// The backoff's first ceiling against Graph.
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);

/// Lowers the backoff's base (milliseconds, 1 to 500; anything else is ignored). For the test
/// suite and rehearsals against the emulator, which inject faults by the thousand: with Graph's
/// 500 ms the suite would mostly sleep. Not a flag on purpose: against Graph the default is right.
pub const BACKOFF_BASE_ENV: &str = "B2B_BACKOFF_BASE_MS";

fn default_base() -> Duration {
    static BASE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        crate::config::millis_from_env(BACKOFF_BASE_ENV, 1..=500, DEFAULT_BACKOFF_BASE)
    })
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

/// The default backoff's wait before retry number `attempt` (1-based): what the workers sleep
/// between two attempts at one user, so they back off exactly like the client does.
pub fn delay(attempt: u32) -> Duration {
    Backoff::default().delay(attempt)
}

/// 429s do not use up attempts (the request was not carried out), but a request throttled this
/// many times in a row is given up, so a run cannot spin forever.
pub const MAX_THROTTLED_RETRIES: u32 = 50;

/// Why an attempt did not succeed, as far as resending is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    /// 429: Graph did not carry the request out. The limiter pauses everyone for `Retry-After`,
    /// so no extra wait is added here.
    Throttled,
    /// The request never left the process (connection refused, DNS, TLS handshake): safe to
    /// resend whatever it is, for a bounded stretch of time.
    NotSent,
    /// A 5xx, a 424, an omitted `$batch` answer, a timeout or a reset after sending: only an
    /// idempotent request may be resent, after `retry_after` if the server gave one.
    Failed { retry_after: Option<Duration> },
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Wait this long (possibly zero), then send again.
    RetryAfter(Duration),
    /// Stop and report the failure.
    GiveUp,
}

/// Limits and backoff for resending one request (or one `$batch` sub-request).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// Resends after [`Failure::Failed`] (so `http_retries + 1` attempts in all).
    pub http_retries: u32,
    /// Resends after [`Failure::Throttled`].
    pub throttled_retries: u32,
    /// How long, on tokio's clock from the first refused connection, a request that never left
    /// is tried again before the client reports Graph unreachable.
    pub not_sent_for: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff: Backoff::default(),
            http_retries: DEFAULT_HTTP_RETRIES,
            throttled_retries: MAX_THROTTLED_RETRIES,
            not_sent_for: DEFAULT_NOT_SENT_RETRY_FOR,
        }
    }
}

/// The failures one request has met so far (a fresh one per request or sub-request).
#[derive(Debug, Clone, Default)]
pub struct Attempts {
    /// [`Failure::Failed`] so far.
    pub failures: u32,
    /// [`Failure::Throttled`] so far.
    pub throttles: u32,
    /// [`Failure::NotSent`] so far.
    pub not_sent: u32,
    /// When the first [`Failure::NotSent`] of the current stretch happened.
    unreachable_since: Option<Instant>,
}

impl RetryPolicy {
    /// Records `failure` in `attempts` and says whether (and after how long) to resend.
    /// `idempotent` is false for requests Graph may have carried out (an invitation): those are
    /// never resent after [`Failure::Failed`].
    pub fn next(&self, attempts: &mut Attempts, failure: Failure, idempotent: bool) -> Verdict {
        match failure {
            Failure::Throttled => {
                attempts.throttles += 1;
                if attempts.throttles > self.throttled_retries {
                    Verdict::GiveUp
                } else {
                    Verdict::RetryAfter(Duration::ZERO)
                }
            }
            Failure::NotSent => {
                attempts.not_sent += 1;
                let now = Instant::now();
                let since = *attempts.unreachable_since.get_or_insert(now);
                let deadline = since + self.not_sent_for;
                if now >= deadline {
                    return Verdict::GiveUp;
                }
                let wait = self.backoff.delay(attempts.not_sent);
                Verdict::RetryAfter(wait.min(deadline - now))
            }
            Failure::Failed { retry_after } => {
                // An answer (or a connection) came: a later refused connection starts afresh.
                attempts.unreachable_since = None;
                attempts.failures += 1;
                if !idempotent || attempts.failures > self.http_retries {
                    return Verdict::GiveUp;
                }
                Verdict::RetryAfter(
                    retry_after.unwrap_or_else(|| self.backoff.delay(attempts.failures)),
                )
            }
        }
    }
}

/// How long Graph and the token endpoint have gone without answering anything, shared by every
/// request of one client.
///
/// A server that refuses connections is caught by [`RetryPolicy::next`]'s not-sent stretch, but
/// one that accepts connections and never answers (a black-holed route, a hung proxy, a token
/// endpoint gone quiet) only produces timeouts, and each item's own retries would wait them out
/// one after another for as long as the queue lasts. Silence is counted from the start of the
/// first request that got no answer, and any answer of any kind (a 2xx, a 4xx, a 5xx, a 429)
/// ends it; once it has lasted `window`, the client starts no more requests and the run stops,
/// resumable.
#[derive(Debug)]
pub struct Silence {
    window: Duration,
    /// Start of the current silence: `Some` only after a request failed without an answer.
    since: std::sync::Mutex<Option<Instant>>,
    /// When the latest answer of any kind arrived.
    last_answer: std::sync::Mutex<Option<Instant>>,
}

impl Silence {
    pub fn new(window: Duration) -> Silence {
        Silence {
            window,
            since: std::sync::Mutex::new(None),
            last_answer: std::sync::Mutex::new(None),
        }
    }

    /// An answer of any kind arrived: the servers are there.
    pub fn answered(&self) {
        *self.last_answer.lock().expect("silence") = Some(Instant::now());
        *self.since.lock().expect("silence") = None;
    }

    /// A request sent at `started` got no answer (timeout, reset, refused connection). The
    /// silence began when it was sent, or at the latest answer if one came in since.
    pub fn unanswered(&self, started: Instant) {
        let last = *self.last_answer.lock().expect("silence");
        let mut since = self.since.lock().expect("silence");
        if since.is_none() {
            *since = Some(last.map_or(started, |l| l.max(started)));
        }
    }

    /// `Some(how long)` once the silence has lasted the whole window.
    pub fn exceeded(&self) -> Option<Duration> {
        let since = (*self.since.lock().expect("silence"))?;
        let silent = Instant::now().saturating_duration_since(since);
        (silent >= self.window).then_some(silent)
    }

    pub fn window(&self) -> Duration {
        self.window
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

/// `x-ms-throttle-limit-percentage` of a header map: the share of a limit in use, which Graph
/// sends only above 0.8 (0.8–1.8). A value written as a percentage (`86`) is read as 0.86.
pub fn limit_percentage_header(headers: &reqwest::header::HeaderMap) -> Option<f64> {
    headers
        .get("x-ms-throttle-limit-percentage")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().trim_end_matches('%').parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| if v > 10.0 { v / 100.0 } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn limit_percentage_forms() {
        let read = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("x-ms-throttle-limit-percentage", v.parse().unwrap());
            limit_percentage_header(&h)
        };
        assert_eq!(read("0.93"), Some(0.93));
        assert_eq!(read(" 1.8 "), Some(1.8));
        assert_eq!(read("86"), Some(0.86));
        assert_eq!(read("90%"), Some(0.9));
        assert_eq!(read("high"), None);
        assert_eq!(
            limit_percentage_header(&reqwest::header::HeaderMap::new()),
            None
        );
    }

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
    fn fractional_retry_after_is_honoured_to_the_millisecond() {
        let now = SystemTime::now();
        // As `$batch` sub-responses carry it, and as the emulator's --fractional-retry-after
        // gives it: below a second, and with the millisecond that matters.
        for (value, ms) in [
            ("0.249", 249),
            ("2.500", 2500),
            ("0.001", 1),
            (" 1.75 ", 1750),
        ] {
            let wait = parse_retry_after(value, now).expect(value);
            // Within a microsecond: the f64 of "0.249" is not exactly 249 ms.
            let off = wait.abs_diff(Duration::from_millis(ms));
            assert!(off < Duration::from_micros(1), "{value:?}: {wait:?}");
            // A 503 with it is resent after that wait, not a rounded or backed-off one.
            let mut attempts = Attempts::default();
            let verdict = RetryPolicy::default().next(
                &mut attempts,
                Failure::Failed {
                    retry_after: Some(wait),
                },
                true,
            );
            assert_eq!(verdict, Verdict::RetryAfter(wait));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "0.249".parse().unwrap());
        let wait = retry_after_header(&headers).unwrap();
        assert!(wait.abs_diff(Duration::from_millis(249)) < Duration::from_micros(1));
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

    fn quick() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(2),
            },
            http_retries: 2,
            throttled_retries: 3,
            not_sent_for: Duration::from_secs(10),
        }
    }

    #[test]
    fn failures_are_resent_only_when_idempotent_and_within_the_retries() {
        let policy = quick();
        let failed = Failure::Failed { retry_after: None };
        let mut a = Attempts::default();
        for n in 1..=2 {
            match policy.next(&mut a, failed, true) {
                Verdict::RetryAfter(w) => assert!(w <= policy.backoff.ceiling(n), "{w:?}"),
                Verdict::GiveUp => panic!("retry {n} is allowed"),
            }
        }
        assert_eq!(policy.next(&mut a, failed, true), Verdict::GiveUp);
        assert_eq!(a.failures, 3);

        // A server's Retry-After wins over the backoff.
        let mut a = Attempts::default();
        let told = Failure::Failed {
            retry_after: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            policy.next(&mut a, told, true),
            Verdict::RetryAfter(Duration::from_millis(1500))
        );

        // What may have been carried out is never resent blind.
        let mut a = Attempts::default();
        assert_eq!(policy.next(&mut a, failed, false), Verdict::GiveUp);
    }

    #[test]
    fn throttling_does_not_use_up_retries_but_is_bounded() {
        let policy = quick();
        let mut a = Attempts::default();
        for _ in 0..3 {
            assert_eq!(
                policy.next(&mut a, Failure::Throttled, false),
                Verdict::RetryAfter(Duration::ZERO),
                "the limiter does the waiting; even a POST is resent after a 429"
            );
        }
        assert_eq!(
            policy.next(&mut a, Failure::Throttled, false),
            Verdict::GiveUp
        );
        assert_eq!(a.failures, 0);
        let failed = Failure::Failed { retry_after: None };
        assert!(matches!(
            policy.next(&mut a, failed, true),
            Verdict::RetryAfter(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_graph_is_retried_for_exactly_the_stretch() {
        let policy = quick();
        let start = Instant::now();
        let mut a = Attempts::default();
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 1000, "bounded");
            // Even a POST: nothing left the process.
            match policy.next(&mut a, Failure::NotSent, false) {
                Verdict::RetryAfter(w) => {
                    assert!(w <= policy.backoff.ceiling(a.not_sent));
                    tokio::time::advance(w).await;
                }
                Verdict::GiveUp => break,
            }
        }
        assert_eq!(
            start.elapsed(),
            policy.not_sent_for,
            "capped at the deadline"
        );
        assert_eq!(a.not_sent, tries);
        assert_eq!(a.failures, 0, "no attempt counted");

        // An answer in between starts a new stretch.
        let mut a = Attempts::default();
        assert!(matches!(
            policy.next(&mut a, Failure::NotSent, true),
            Verdict::RetryAfter(_)
        ));
        tokio::time::advance(Duration::from_secs(9)).await;
        let failed = Failure::Failed { retry_after: None };
        assert!(matches!(
            policy.next(&mut a, failed, true),
            Verdict::RetryAfter(_)
        ));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            policy.next(&mut a, Failure::NotSent, true),
            Verdict::RetryAfter(_)
        ));
    }

    #[test]
    fn workers_back_off_like_the_client() {
        for attempt in 1..40 {
            assert!(delay(attempt) <= Backoff::default().ceiling(attempt));
        }
        assert!(delay(u32::MAX) <= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_lasts_from_the_first_unanswered_request_until_any_answer() {
        let silence = Silence::new(Duration::from_secs(60));
        assert_eq!(silence.exceeded(), None, "no failure yet: never silent");
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(silence.exceeded(), None, "idle is not silent");
        let sent = Instant::now();
        tokio::time::sleep(Duration::from_secs(30)).await;
        silence.unanswered(sent);
        assert_eq!(silence.exceeded(), None);
        tokio::time::sleep(Duration::from_secs(29)).await;
        silence.unanswered(Instant::now());
        assert_eq!(
            silence.exceeded(),
            None,
            "counted from the first request, 59 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(silence.exceeded(), Some(Duration::from_secs(60)));
        silence.answered();
        assert_eq!(silence.exceeded(), None, "any answer ends it");
        // A request sent before the latest answer is silent only from that answer on.
        let early = Instant::now();
        tokio::time::sleep(Duration::from_secs(50)).await;
        silence.answered();
        tokio::time::sleep(Duration::from_secs(20)).await;
        silence.unanswered(early);
        assert_eq!(silence.exceeded(), None, "20 s since the last answer");
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert_eq!(silence.exceeded(), Some(Duration::from_secs(60)));
    }
}
