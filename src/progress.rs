//! Progress of long work: one indicatif bar on stderr when it is a terminal (counts of converted,
//! blocked, failed and throttled, a rounded rate, elapsed time and ETA), with log lines printed
//! above it through [`crate::logging`]; otherwise no bar and a tracing line every few seconds, so
//! a run under a scheduler still shows it is alive. Also the per-user outcome events and the
//! end-of-run summary event.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::item::{ItemRecord, ItemState};
use crate::queue::Queue;

const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the bar's counts are read back from the queue.
const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// The bar on screen, if any: log lines are printed through it so it never leaves stale copies.
fn active() -> &'static Mutex<Option<(u64, ProgressBar)>> {
    static ACTIVE: OnceLock<Mutex<Option<(u64, ProgressBar)>>> = OnceLock::new();
    ACTIVE.get_or_init(|| Mutex::new(None))
}

/// Runs `f` (which writes to stderr) with the active bar cleared, then redraws the bar.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let bar = active().lock().unwrap_or_else(|p| p.into_inner()).clone();
    match bar {
        Some((_, bar)) => bar.suspend(f),
        None => f(),
    }
}

/// Outcome counts of the run, as last read from the queue.
#[derive(Debug, Default)]
struct Tally {
    converted: AtomicU64,
    would_convert: AtomicU64,
    blocked: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
}

impl Tally {
    fn message(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut m = String::new();
        let done = g(&self.converted).max(g(&self.would_convert));
        let verb = if g(&self.would_convert) > g(&self.converted) {
            "will convert"
        } else {
            "converted"
        };
        let _ = write!(
            m,
            "{done} {verb} · {} blocked · {} failed · {} throttled",
            g(&self.blocked),
            g(&self.failed),
            g(&self.throttled)
        );
        m
    }
}

struct Watcher {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
    run_id: i64,
}

pub struct Progress {
    id: u64,
    bar: ProgressBar,
    /// Position when this session began: items a previous session settled (before a crash or
    /// an interruption) are not this session's work, so rate and ETA leave them out.
    base: Arc<AtomicU64>,
    label: &'static str,
    interactive: bool,
    started: Instant,
    last_log: Mutex<Instant>,
    tally: Arc<Tally>,
    watcher: Mutex<Option<Watcher>>,
}

/// Items per second of this session: what it settled since it began, over its own time. A
/// resume starts with thousands of items done by earlier sessions; counting them would read
/// "166/s · ETA 21s" when the truth is 23/s and two and a half minutes.
fn session_rate(pos: u64, base: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs < 0.5 {
        return 0.0;
    }
    pos.saturating_sub(base) as f64 / secs
}

/// Time left at this session's rate; `None` before the session has a rate.
fn session_eta(pos: u64, len: u64, per_sec: f64) -> Option<Duration> {
    (per_sec.is_finite() && per_sec > 0.0)
        .then(|| Duration::from_secs_f64(len.saturating_sub(pos) as f64 / per_sec))
}

/// "12/s", "0.4/s": whole numbers above 10, one decimal below.
fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "–/s".to_string()
    } else if per_sec >= 10.0 {
        format!("{per_sec:.0}/s")
    } else {
        format!("{per_sec:.1}/s")
    }
}

impl Progress {
    /// A bar of `total` steps (0 = unknown, shown as a spinner).
    pub fn new(label: &'static str, total: u64) -> Progress {
        let interactive = std::io::stderr().is_terminal();
        let target = if interactive {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let style = if total == 0 {
            ProgressStyle::with_template("{spinner} {prefix:>9} {pos} {msg} · {elapsed}")
        } else {
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:25}] {pos}/{len} · {rate} · {elapsed} elapsed · ETA {session_eta} · {msg}",
            )
        }
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let base = Arc::new(AtomicU64::new(0));
        let (rate_base, eta_base) = (base.clone(), base.clone());
        let style = style
            .with_key(
                "rate",
                move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let per_sec =
                        session_rate(s.pos(), rate_base.load(Ordering::Relaxed), s.elapsed());
                    let _ = w.write_str(&rate(per_sec));
                },
            )
            .with_key(
                "session_eta",
                move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let per_sec =
                        session_rate(s.pos(), eta_base.load(Ordering::Relaxed), s.elapsed());
                    let _ = match session_eta(s.pos(), s.len().unwrap_or(0), per_sec) {
                        Some(d) => write!(w, "{}", indicatif::HumanDuration(d)),
                        None => w.write_str("–"),
                    };
                },
            )
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label);
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if interactive {
            bar.enable_steady_tick(Duration::from_millis(250));
            *active().lock().unwrap_or_else(|p| p.into_inner()) = Some((id, bar.clone()));
        }
        Progress {
            id,
            bar,
            base,
            label,
            interactive,
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
            tally: Arc::new(Tally::default()),
            watcher: Mutex::new(None),
        }
    }

    /// Reads the run's outcome counts and 429s from the queue every second for the bar (and the
    /// summary event), on a thread of its own so the workers never wait on it.
    pub fn watch(&self, queue: Arc<Queue>, run_id: i64) {
        let (stop, rx) = mpsc::channel::<()>();
        let tally = self.tally.clone();
        let bar = self.bar.clone();
        // Its own read-only connection: the counts never wait on the workers' writes.
        let q = Queue::open_read_only(queue.path())
            .map(Arc::new)
            .unwrap_or_else(|_| queue.clone());
        let summary = self.tally.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let mut after = 0;
                loop {
                    after = refresh(&q, run_id, after, &tally);
                    bar.set_message(tally.message());
                    match rx.recv_timeout(COUNTS_EVERY) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                }
                // The summary's counts through the writer, which first writes the request
                // rows it still buffers; here, off the threads that drive the pass.
                refresh(&queue, run_id, 0, &summary);
            });
        if let Ok(thread) = thread {
            *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(Watcher {
                stop,
                thread,
                run_id,
            });
        }
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Starts the bar at `done`, the items earlier sessions settled, which rate and ETA leave
    /// out.
    pub fn resume_at(&self, done: u64) {
        self.base.store(done, Ordering::Relaxed);
        self.bar.set_position(done);
        self.bar.reset_eta();
    }

    /// Items per second settled by this session.
    pub fn per_sec(&self) -> f64 {
        session_rate(
            self.bar.position(),
            self.base.load(Ordering::Relaxed),
            self.started.elapsed(),
        )
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if !self.interactive {
            let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
                tracing::info!(
                    stage = self.label,
                    done = self.bar.position(),
                    total = self.bar.length().unwrap_or(0),
                    per_second = round1(self.per_sec()),
                    converted = g(&self.tally.converted),
                    blocked = g(&self.tally.blocked),
                    failed = g(&self.tally.failed),
                    throttled = g(&self.tally.throttled),
                    "progress"
                );
            }
        }
    }

    /// One event per user when the user reaches a final state: info level in JSON mode, debug
    /// on a terminal.
    pub fn outcome(&self, item: &ItemRecord) {
        let reason = item
            .reason
            .map(|r| r.as_str().to_string())
            .or_else(|| item.error_code.clone());
        macro_rules! outcome {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    run_id = item.run_id,
                    item_id = item.id,
                    user_id = item.user_id.as_deref(),
                    state = item.state.as_str(),
                    reason = reason.as_deref(),
                    request_id = item.request_id.as_deref(),
                    "user outcome"
                )
            };
        }
        if crate::logging::is_json() {
            outcome!(tracing::Level::INFO);
        } else {
            outcome!(tracing::Level::DEBUG);
        }
    }

    /// One item reached its end: the bar moves on and, when asked for, its outcome is logged.
    pub fn item_done(&self, queue: &Queue, item_id: i64) {
        self.inc(1);
        self.outcome_of(queue, item_id);
    }

    /// [`Progress::outcome`] of an item by id, read back from the queue after a worker
    /// finished with it. Nothing is read when no one would see the event.
    pub fn outcome_of(&self, queue: &Queue, item_id: i64) {
        if !crate::logging::is_json() && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        if let Ok(Some(item)) = queue.item(item_id) {
            if !matches!(item.state, ItemState::Pending | ItemState::InFlight) {
                self.outcome(&item);
            }
        }
    }

    pub fn set_message(&self, msg: impl Into<std::borrow::Cow<'static, str>>) {
        self.bar.set_message(msg);
    }

    /// Clears the bar and, for a watched run, emits the end-of-run summary event.
    pub fn finish(&self) {
        let watcher = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = watcher {
            drop(w.stop);
            let _ = w.thread.join();
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let elapsed = self.started.elapsed().as_secs_f64();
            let settled = self.bar.position();
            tracing::info!(
                run_id = w.run_id,
                converted = g(&self.tally.converted),
                would_convert = g(&self.tally.would_convert),
                blocked = g(&self.tally.blocked),
                skipped = g(&self.tally.skipped),
                failed = g(&self.tally.failed),
                throttled = g(&self.tally.throttled),
                settled,
                elapsed_seconds = round1(elapsed),
                per_second = round1(self.per_sec()),
                "run summary"
            );
        }
        let mut slot = active().lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|b| b.0 == self.id) {
            *slot = None;
        }
        drop(slot);
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let mut slot = active().lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|b| b.0 == self.id) {
            *slot = None;
        }
    }
}

fn round1(v: f64) -> f64 {
    if v.is_finite() {
        (v * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Reads the state counts and the 429s logged after request `after` into `tally`; returns the
/// last request id seen (`after` = 0 recounts every 429 of the run).
fn refresh(queue: &Queue, run_id: i64, after: i64, tally: &Tally) -> i64 {
    if let Ok(states) = queue.state_counts(run_id) {
        for (state, n) in states {
            let slot = match state {
                ItemState::Converted => &tally.converted,
                ItemState::WouldConvert => &tally.would_convert,
                ItemState::Blocked => &tally.blocked,
                ItemState::Skipped => &tally.skipped,
                ItemState::Failed => &tally.failed,
                ItemState::Pending | ItemState::InFlight => continue,
            };
            slot.store(n, Ordering::Relaxed);
        }
    }
    match queue.throttled_after(run_id, after) {
        Ok((n, last)) => {
            if after == 0 {
                tally.throttled.store(n, Ordering::Relaxed);
            } else {
                tally.throttled.fetch_add(n, Ordering::Relaxed);
            }
            last.max(after)
        }
        Err(_) => after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_count_this_session_only() {
        // The figures: 9,000 of 12,450 done before the resume, 23/s since.
        let elapsed = Duration::from_secs(60);
        let done = 9_000 + 23 * 60;
        let per_sec = session_rate(done, 9_000, elapsed);
        assert!((per_sec - 23.0).abs() < 1e-9, "{per_sec}");
        let eta = session_eta(done, 12_450, per_sec).unwrap();
        assert_eq!(eta.as_secs(), (12_450 - done) / 23);
        assert_eq!(
            session_rate(10, 0, Duration::from_millis(100)),
            0.0,
            "no rate yet"
        );
        assert_eq!(session_eta(10, 20, 0.0), None);

        let p = Progress::new("converting", 12_450);
        p.resume_at(9_000);
        assert_eq!(p.bar.position(), 9_000);
        assert!(
            p.per_sec() < 1.0,
            "the resumed items are not this session's: {}",
            p.per_sec()
        );
    }

    #[test]
    fn rates_are_rounded() {
        assert_eq!(rate(19.6431), "20/s");
        assert_eq!(rate(3.12), "3.1/s");
        assert_eq!(rate(0.0), "–/s");
        assert_eq!(rate(f64::NAN), "–/s");
        assert_eq!(round1(2.345678), 2.3);
    }

    #[test]
    fn tally_reads_like_a_sentence() {
        let t = Tally::default();
        t.converted.store(1234, Ordering::Relaxed);
        t.blocked.store(5, Ordering::Relaxed);
        t.throttled.store(7, Ordering::Relaxed);
        assert_eq!(
            t.message(),
            "1234 converted · 5 blocked · 0 failed · 7 throttled"
        );
    }
}
