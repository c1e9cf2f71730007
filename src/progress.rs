//! Progress of long work: an indicatif bar on stderr when it is a terminal; otherwise a tracing
//! line every few seconds, so a run under a scheduler still shows it is alive.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: ProgressBar,
    label: &'static str,
    interactive: bool,
    last_log: Mutex<Instant>,
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
            ProgressStyle::with_template("{spinner} {prefix:>9} {pos} {msg} [{elapsed}]")
        } else {
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:32}] {pos}/{len} ({per_sec}, eta {eta}) {msg}",
            )
        }
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label);
        Progress {
            bar,
            label,
            interactive,
            last_log: Mutex::new(Instant::now()),
        }
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if !self.interactive {
            let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                tracing::info!(
                    stage = self.label,
                    done = self.bar.position(),
                    total = self.bar.length().unwrap_or(0),
                    per_second = format!("{:.1}", self.bar.per_sec()),
                    "progress"
                );
            }
        }
    }

    pub fn set_message(&self, msg: impl Into<std::borrow::Cow<'static, str>>) {
        self.bar.set_message(msg);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
