//! Logging set-up: tracing to stderr, text or JSON. Nothing logged may carry a token, a secret or
//! an invitation redeem URL; call sites log ids and codes only.
//!
//! Every line goes through the progress bar's `suspend` (see [`crate::progress`]), so a log line
//! lands above the bar instead of leaving a stale copy of the bar behind. Text logs are coloured
//! only when stderr is a terminal and `NO_COLOR` is unset (<https://no-color.org>).

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

static JSON: AtomicBool = AtomicBool::new(false);

/// Whether logs are JSON lines (for machines): per-user outcome events are then at info level;
/// on a person's terminal they are debug, so the bar and the warnings stay readable.
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Installs the global subscriber. `RUST_LOG` wins over `-v`/`-q` when set.
pub fn init(format: LogFormat, verbose: u8, quiet: u8) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let level = match i16::from(verbose) - i16::from(quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "b2b_convert={level},b2b_convert::emulator=warn,warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BarWriter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to anything non-empty.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Hands tracing a buffer per event; the whole line is written to stderr at once, with the bar
/// suspended.
struct BarWriter;

impl<'a> MakeWriter<'a> for BarWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::with_capacity(256))
    }
}

struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.0);
        crate::progress::suspend(|| {
            let mut err = io::stderr().lock();
            let _ = err.write_all(&line);
            let _ = err.flush();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
