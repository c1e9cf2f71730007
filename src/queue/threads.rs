//! Which threads may call SQLite: never one that drives async tasks while a pass runs.
//!
//! A SQLite call holds its thread for as long as the statement takes (a writer's lock, a WAL
//! checkpoint, a page read from a cold cache). On a runtime worker, or on the main thread while
//! it drives a pass, that stalls every task scheduled there: look-ups in flight, invitations,
//! the request log. So the passes hand their database work to tokio's blocking pool through
//! [`blocking`], and every use of a connection [`check`]s where it runs.
//!
//! The runtime marks each of its threads when it starts ([`runtime_thread_started`]); a pass
//! marks the thread that drives it for as long as it runs ([`driving_tasks`]); [`blocking`]
//! marks its closures as the one place a marked thread may use SQLite. Threads of our own
//! (the progress bar's, the lease heartbeat's) and command set-up before or after a pass are
//! not marked. A call from a marked thread is a defect: it is reported once on stderr, and
//! panics where `B2B_THREAD_CHECK=panic` (the integration tests set it).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

use super::Queue;

/// The variable that makes a SQLite call on a task-driving thread panic instead of warn.
pub const THREAD_CHECK_ENV: &str = "B2B_THREAD_CHECK";

thread_local! {
    /// This thread runs async tasks (a runtime worker) or drives a pass.
    static DRIVES_TASKS: Cell<bool> = const { Cell::new(false) };
    /// This thread is inside a [`blocking`] closure.
    static IN_BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// For the runtime builder's `on_thread_start`: worker and blocking-pool threads alike.
pub fn runtime_thread_started() {
    DRIVES_TASKS.with(|d| d.set(true));
}

/// Marks the current thread as driving tasks until the guard is dropped.
pub fn driving_tasks() -> DrivingTasks {
    DrivingTasks {
        before: DRIVES_TASKS.with(|d| d.replace(true)),
    }
}

/// See [`driving_tasks`].
#[must_use = "the thread is marked only while the guard lives"]
pub struct DrivingTasks {
    before: bool,
}

impl Drop for DrivingTasks {
    fn drop(&mut self) {
        DRIVES_TASKS.with(|d| d.set(self.before));
    }
}

/// Runs `f` on tokio's blocking pool, where it may use SQLite.
pub async fn blocking<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let _inside = Inside::enter();
        f()
    })
    .await
}

/// Runs a queue operation on the blocking pool: what an async pass calls instead of the queue.
pub async fn db<T, F>(queue: &Arc<Queue>, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Queue) -> super::Result<T> + Send + 'static,
{
    let queue = queue.clone();
    Ok(blocking(move || {
        if let Err(e) = queue.flush_request_log_if_due() {
            tracing::warn!(error = %e, "could not write Graph requests to the log");
        }
        f(&queue)
    })
    .await
    .context("a database task panicked")??)
}

/// Marks a [`blocking`] closure for as long as it runs, panics included.
struct Inside {
    before: bool,
}

impl Inside {
    fn enter() -> Inside {
        Inside {
            before: IN_BLOCKING.with(|b| b.replace(true)),
        }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        IN_BLOCKING.with(|b| b.set(self.before));
    }
}

/// Whether a SQLite call here would stall async tasks.
pub(super) fn misplaced() -> bool {
    DRIVES_TASKS.with(Cell::get) && !IN_BLOCKING.with(Cell::get)
}

/// Called on every use of a connection: reports a call from a task-driving thread.
pub(super) fn check() {
    if !misplaced() {
        return;
    }
    if std::env::var(THREAD_CHECK_ENV).as_deref() == Ok("panic") {
        panic!(
            "a SQLite call on a thread that drives async tasks (use queue::threads::blocking):\n{}",
            std::backtrace::Backtrace::force_capture()
        );
    }
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "a database call ran on a thread that drives async tasks: the run goes on, slower; \
             please report it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_marked_thread_outside_blocking_is_misplaced() {
        assert!(!misplaced(), "an unmarked thread may call SQLite");
        {
            let _driving = driving_tasks();
            assert!(misplaced());
            let _inside = Inside::enter();
            assert!(!misplaced(), "inside a blocking closure");
        }
        assert!(!misplaced(), "the guard restores the thread");
    }

    #[test]
    fn a_blocking_closure_is_allowed_on_a_marked_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(runtime_thread_started)
            .build()
            .unwrap();
        let (on_worker, in_blocking) = rt.block_on(async {
            let on_worker = tokio::spawn(async { misplaced() }).await.unwrap();
            let in_blocking = blocking(misplaced).await.unwrap();
            (on_worker, in_blocking)
        });
        assert!(on_worker, "a runtime worker drives tasks");
        assert!(!in_blocking, "a blocking closure may call SQLite");
    }

    #[test]
    fn a_panic_in_a_blocking_closure_leaves_the_pool_thread_marked_as_before() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .on_thread_start(runtime_thread_started)
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(blocking(|| panic!("boom")).await.is_err());
            // The one blocking thread is reused: outside a closure it is misplaced again.
            let after = tokio::task::spawn_blocking(misplaced).await.unwrap();
            assert!(after, "the closure's mark did not outlive it");
        });
    }
}
