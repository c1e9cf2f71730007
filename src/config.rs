//! One resolved configuration: every default and every bound of the settings a run can be
//! given, and the plain option types (`LogFormat`, `ReportFormat`) that `logging`, `report` and
//! the command line share.
//!
//! The bounds are enforced once, by the command line's value parsers (an out-of-range value is a
//! usage error, exit 2, naming the flag), so nothing downstream has to clamp or re-check a
//! value, and `--help` shows the defaults from here. `RunOptions::default()`, the Graph client's
//! defaults and the help texts all read these constants: change a default here and nowhere else.

use std::ops::RangeInclusive;
use std::time::Duration;

use clap::builder::{RangedU64ValueParser, TypedValueParser, ValueParser};
use clap::ValueEnum;

/// `--rate`: requests per second a run starts at: Graph's `/invitations` limit (150 per 5 s
/// per tenant), which a fresh write bucket (3,000 per 150 s) can pay for minutes on end.
pub const DEFAULT_RATE: f64 = 30.0;
/// The pace a run settles at once Graph signals a bucket above 80% used
/// (`x-ms-throttle-limit-percentage`): 98% of the write bucket's refill of 20 per second, so an
/// emptied bucket regains a little and network jitter never meets an empty bucket.
pub const DEFAULT_SETTLE_RATE: f64 = 19.6;
/// Slowest `--rate`: one request per 100 s. Anything slower is a typo, and a rate near zero
/// would make the limiter's interval overflow.
pub const MIN_RATE: f64 = 0.01;
/// Fastest `--rate`: far above anything Graph sustains; beyond it the limiter is meaningless.
pub const MAX_RATE: f64 = 10_000.0;

/// `--read-budget`: resource units per 10 s the reads of a run may spend: Graph's limit per
/// app+tenant for a tenant above 500 users (3,500 below 50, 5,000 up to 500). Reads cost 1
/// with `$select` (2 without, group members 3, transitive 5), so it is ~800 look-ups per second
/// against the write ceiling's 20–30.
pub const DEFAULT_READ_BUDGET: f64 = 8_000.0;
/// Smallest `--read-budget`: a few reads per 10 s still make progress.
pub const MIN_READ_BUDGET: f64 = 10.0;
/// Largest `--read-budget`: Graph's per-app limit across all tenants is 150,000 per 20 s;
/// beyond this the budget is lifted for rehearsals and benchmarks only.
pub const MAX_READ_BUDGET: f64 = 10_000_000.0;

/// `--concurrency`: users worked on at once.
pub const DEFAULT_CONCURRENCY: usize = 8;
pub const CONCURRENCY: RangeInclusive<u64> = 1..=256;

/// `--max-attempts`: requests that may have reached Graph for one user before it ends `failed`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
pub const MAX_ATTEMPTS: RangeInclusive<u64> = 1..=100;

/// `--http-retries`: retries of one HTTP request inside the Graph client (idempotent requests
/// answered 5xx or not sent); 429s wait for `Retry-After` and do not count.
pub const DEFAULT_HTTP_RETRIES: u32 = 5;
pub const HTTP_RETRIES: RangeInclusive<u64> = 0..=20;

/// `--limit`: users converted in this run (0 lifts a pilot's limit on `resume`). Stored in
/// SQLite, hence at most `i64::MAX`.
pub const LIMIT: RangeInclusive<u64> = 0..=i64::MAX as u64;

/// `--http-timeout`: one HTTP attempt, body included. Graph answers an invitation or a 999-user
/// page in seconds, so a server silent for this long is not going to answer.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
pub const HTTP_TIMEOUT_S: RangeInclusive<u64> = 1..=3600;

/// How long a request that cannot even connect (refused, DNS, TLS) is retried before Graph
/// counts as unreachable and the run stops, resumable; also how long Graph and the token
/// endpoint may go without answering anything at all (`graph::retry::Silence`).
pub const DEFAULT_NOT_SENT_RETRY_FOR: Duration = Duration::from_secs(45);

/// Largest `--message-file` (and per-row `customizedMessageBody`) accepted, in bytes. Graph
/// documents no limit of its own below its 4 MB request body; an invitation email's text is a
/// few paragraphs, so 64 KiB leaves room for any real message while a wrong path (`/dev/zero`,
/// a log file) is refused after reading 64 KiB, not gigabytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// `--redirect-url`: where a user lands after redeeming.
pub const DEFAULT_REDIRECT_URL: &str = "https://myapplications.microsoft.com";

/// `--db`.
pub const DEFAULT_DB: &str = "b2b-convert.db";

/// Emulator `--latency-ms`: at most a minute per answer.
pub const EMULATOR_LATENCY_MS: RangeInclusive<u64> = 0..=60_000;
/// Emulator `--token-lifetime-s`: one second to one day.
pub const EMULATOR_TOKEN_LIFETIME_S: RangeInclusive<u64> = 1..=86_400;
/// `bench --scale`: bucket sizes and refill rates multiplied by this.
pub const BENCH_SCALE: RangeInclusive<f64> = 0.01..=1_000.0;

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Format of a written report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Md,
    Html,
    Csv,
    Json,
}

/// The parser of a flag taking a whole number within `range` (one of the ranges above), as a
/// `T` (every range here fits its flag's type).
pub fn ranged<T>(range: RangeInclusive<u64>) -> ValueParser
where
    RangedU64ValueParser<T>: TypedValueParser,
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    RangedU64ValueParser::<T>::new().range(range).into()
}

/// The milliseconds the environment variable `var` gives when it is a whole number within
/// `range`, else `default` (unset, unreadable, out of range): the hidden knobs the tests turn
/// (`B2B_BACKOFF_BASE_MS`), never flags.
pub fn millis_from_env(var: &str, range: RangeInclusive<u64>, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| range.contains(ms))
        .map(Duration::from_millis)
        .unwrap_or(default)
}

/// A count of at least one (`--generate`, `bench --users`).
pub fn at_least_one_parser() -> ValueParser {
    ranged::<usize>(1..=100_000_000)
}

/// A finite number within `range`.
fn float_in(s: &str, range: &RangeInclusive<f64>) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && range.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{s} is not within {} to {}",
            range.start(),
            range.end()
        ))
    }
}

/// `--rate`: requests per second within [`MIN_RATE`, `MAX_RATE`].
pub fn parse_rate(s: &str) -> Result<f64, String> {
    float_in(s, &(MIN_RATE..=MAX_RATE))
}

/// `--read-budget`: resource units per 10 s within [`MIN_READ_BUDGET`, `MAX_READ_BUDGET`].
pub fn parse_read_budget(s: &str) -> Result<f64, String> {
    float_in(s, &(MIN_READ_BUDGET..=MAX_READ_BUDGET))
}

/// A share of requests (emulator faults): within 0 to 1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    float_in(s, &(0.0..=1.0))
}

/// `bench --scale`.
pub fn parse_scale(s: &str) -> Result<f64, String> {
    float_in(s, &BENCH_SCALE)
}

/// The help line of a flag whose default lives here (`--help` shows it; `resume` keeps the
/// run's stored value when the flag is not given).
pub fn with_default(what: &str, default: impl std::fmt::Display) -> String {
    format!("{what} [default: {default}; resume/retry keep the run's value]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_bounds() {
        for ok in ["0.01", "1", "20", "10000", " 300 "] {
            assert!(parse_rate(ok).is_ok(), "{ok}");
        }
        for bad in [
            "0", "-1", "1e-20", "0.001", "10000.5", "1e300", "inf", "NaN", "fast", "",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn read_budget_bounds() {
        for ok in ["10", "3500", "8000", "10000000"] {
            assert!(parse_read_budget(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "9.9", "-8000", "1e8", "inf", "NaN", ""] {
            assert!(parse_read_budget(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shares_are_within_zero_and_one() {
        assert_eq!(parse_share("0"), Ok(0.0));
        assert_eq!(parse_share("1"), Ok(1.0));
        assert!(parse_share("1.5").is_err() && parse_share("-0.1").is_err());
        assert!(parse_scale("0").is_err() && parse_scale("10").is_ok());
    }
}
