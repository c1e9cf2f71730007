//! The run lease: one process at a time works a run (docs/usage.md, "Command line").
//!
//! A lease is a row of `run_leases` (holder's pid, host, token, heartbeat). It is taken in one
//! `BEGIN IMMEDIATE` transaction, so two processes racing for the same run serialise on
//! SQLite's write lock and exactly one wins. The winner's background thread heart-beats through
//! its own connection (so a busy worker pool never delays it) and deletes the row when the
//! guard is dropped. A lease is taken over when its holder is gone: on the same host at once
//! when the pid no longer runs (a SIGKILLed run is resumed without waiting), and on any host
//! when the heartbeat is older than [`STALE_AFTER`] (another host's holder, or a reused pid).
//! As in River's leader table and effectum's heartbeats, every write of the holder names its
//! token, so a holder that was taken over finds out (the heartbeat changes no row) instead of
//! extending someone else's lease.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, sqlite_err, Queue, QueueError, Result};

/// How often the holder proves it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A heartbeat older than this is a holder that is gone (crashed host, suspended machine, pid
/// reused by another program). Twelve missed heartbeats: generous for a database busy with a
/// large ingest, and well beyond the clock skew of hosts that share one database file.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Shortens the stale window (milliseconds, 1,000 to 60,000; anything else is ignored), the
/// heartbeat following at a twelfth of it. For the test suite, which freezes a holder with
/// SIGSTOP to see it taken over: with 60 s every such test would mostly wait. Not a flag on
/// purpose: between real hosts the default is right.
pub const LEASE_STALE_ENV: &str = "B2B_LEASE_STALE_MS";

/// The stale window in force: [`STALE_AFTER`] unless [`LEASE_STALE_ENV`] shortens it.
pub fn stale_after() -> Duration {
    static STALE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *STALE.get_or_init(|| {
        std::env::var(LEASE_STALE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| (1_000..=60_000).contains(ms))
            .map(Duration::from_millis)
            .unwrap_or(STALE_AFTER)
    })
}

/// The heartbeat in force: twelve per stale window, as [`HEARTBEAT_EVERY`] is to [`STALE_AFTER`].
fn heartbeat_every() -> Duration {
    stale_after() / 12
}

/// Who holds (or wants) a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
}

impl Holder {
    /// This process on this machine.
    pub fn current() -> Holder {
        Holder {
            pid: std::process::id(),
            host: host_name(),
        }
    }
}

/// The stored lease of a run, as another process sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub pid: u32,
    pub host: String,
    pub acquired_at: String,
    pub heartbeat_ms: i64,
}

/// Whether a stored lease still binds a process that wants the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The holder is alive: refuse.
    Held,
    /// Same host, and the holder's pid no longer runs.
    HolderDead,
    /// The holder has not heart-beaten for [`STALE_AFTER`].
    Stale,
}

/// Decides over a stored lease. Pure except for `alive`, the pid probe, which is only asked
/// about pids of this host.
pub fn judge(row: &LeaseRow, me: &Holder, now_ms: i64, alive: impl Fn(u32) -> bool) -> Verdict {
    if row.host == me.host && !alive(row.pid) {
        return Verdict::HolderDead;
    }
    if now_ms.saturating_sub(row.heartbeat_ms) > stale_after().as_millis() as i64 {
        return Verdict::Stale;
    }
    Verdict::Held
}

/// A held lease. Dropping it stops the heartbeat and releases the run.
pub struct RunLease {
    run_id: i64,
    check: Arc<LeaseCheck>,
    lost: Arc<AtomicBool>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl RunLease {
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// True once a heartbeat found the lease taken over by another process: this process must
    /// stop writing to the run.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The flag behind [`RunLease::is_lost`], for a task that watches it.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    /// What a request asks just before it leaves the process.
    pub fn check(&self) -> Arc<LeaseCheck> {
        self.check.clone()
    }
}

/// Whether the lease is still this process's, asked before every request leaves. A heartbeat
/// younger than half the stale window proves it without a query (nobody may take over a lease
/// heart-beaten that recently); after a longer silence — a process frozen by SIGSTOP, a
/// suspended laptop: the monotonic clock keeps counting — the stored lease decides, and a lost
/// one is flagged for the whole process.
pub struct LeaseCheck {
    run_id: i64,
    token: String,
    path: std::path::PathBuf,
    born: Instant,
    /// Milliseconds from `born` to the last heartbeat that found the lease ours.
    last_beat_ms: AtomicU64,
    lost: Arc<AtomicBool>,
    conn: Mutex<Option<Connection>>,
}

impl LeaseCheck {
    fn beat_ok(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_beat_ms.store(ms, Ordering::SeqCst);
    }

    /// `Ok` while the lease is ours; else why not.
    pub fn still_ours(&self) -> std::result::Result<(), String> {
        let lost = || {
            format!(
                "run {} was taken over by another process: this one sends nothing more",
                self.run_id
            )
        };
        if self.lost.load(Ordering::SeqCst) {
            return Err(lost());
        }
        let since_beat = (self.born.elapsed().as_millis() as u64)
            .saturating_sub(self.last_beat_ms.load(Ordering::SeqCst));
        if u128::from(since_beat) < stale_after().as_millis() / 2 {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_none() {
            *conn = open_side_connection(&self.path).ok();
        }
        let ours = conn.as_ref().map(|c| {
            c.prepare_cached("SELECT 1 FROM run_leases WHERE run_id = ?1 AND token = ?2")
                .and_then(|mut s| s.exists(params![self.run_id, self.token]))
        });
        match ours {
            Some(Ok(true)) => Ok(()),
            Some(Ok(false)) => {
                self.lost.store(true, Ordering::SeqCst);
                Err(lost())
            }
            // The database cannot say: do not send on an unproven lease.
            Some(Err(e)) => Err(format!("cannot check the run's lease: {e}")),
            None => Err("cannot check the run's lease: the database does not open".into()),
        }
    }
}

impl Drop for RunLease {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Queue {
    /// Takes the lease on `run_id` for this process, or fails with [`QueueError::Leased`]
    /// having changed nothing.
    pub fn take_lease(&self, run_id: i64) -> Result<RunLease> {
        let token = self.acquire(run_id, &Holder::current(), pid_alive)?;
        self.start_heartbeat(run_id, token)
    }

    /// The lease part of taking: one immediate transaction that reads the current row, judges
    /// it and writes ours. Returns our token.
    pub(crate) fn acquire(
        &self,
        run_id: i64,
        me: &Holder,
        alive: impl Fn(u32) -> bool,
    ) -> Result<String> {
        self.write_tx(|tx| acquire_in(tx, run_id, me, alive).map_err(|e| self.lease_err(run_id, e)))
    }

    pub(crate) fn lease_err(&self, run_id: i64, e: LeaseFailure) -> QueueError {
        match e {
            LeaseFailure::Sql(e) => self.err(e),
            LeaseFailure::Held(row) => QueueError::Leased {
                run_id,
                pid: row.pid,
                host: row.host,
                since: row.acquired_at,
            },
        }
    }

    /// The stored lease of a run, if any (for `status` and tests).
    pub fn lease(&self, run_id: i64) -> Result<Option<LeaseRow>> {
        read_row(&self.conn(), run_id).map_err(|e| self.err(e))
    }

    pub(crate) fn start_heartbeat(&self, run_id: i64, token: String) -> Result<RunLease> {
        let conn = open_side_connection(self.path())?;
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = Some((run_id, token.clone()));
        let lost = Arc::new(AtomicBool::new(false));
        let check = Arc::new(LeaseCheck {
            run_id,
            token: token.clone(),
            path: self.path().to_path_buf(),
            born: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            lost: lost.clone(),
            conn: Mutex::new(None),
        });
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let (lost, stop, check) = (lost.clone(), stop.clone(), check.clone());
            std::thread::Builder::new()
                .name(format!("lease-{run_id}"))
                .spawn(move || heartbeat_loop(conn, run_id, token, lost, stop, &check))
                .map_err(|e| QueueError::Io {
                    path: self.path().to_path_buf(),
                    message: format!("cannot start the lease heartbeat: {e}"),
                })?
        };
        Ok(RunLease {
            run_id,
            check,
            lost,
            stop,
            thread: Some(thread),
        })
    }
}

pub(crate) enum LeaseFailure {
    Sql(rusqlite::Error),
    Held(LeaseRow),
}

impl From<rusqlite::Error> for LeaseFailure {
    fn from(e: rusqlite::Error) -> Self {
        LeaseFailure::Sql(e)
    }
}

/// Takes the lease inside a write transaction the caller commits (also used when a new run is
/// created, so the run never exists unleased).
pub(crate) fn acquire_in(
    conn: &Connection,
    run_id: i64,
    me: &Holder,
    alive: impl Fn(u32) -> bool,
) -> std::result::Result<String, LeaseFailure> {
    let now_ms = unix_ms();
    if let Some(row) = read_row(conn, run_id)? {
        match judge(&row, me, now_ms, alive) {
            Verdict::Held => return Err(LeaseFailure::Held(row)),
            verdict => tracing::warn!(
                run_id,
                pid = row.pid,
                host = %row.host,
                ?verdict,
                "taking over the lease of a holder that is gone"
            ),
        }
    }
    let token = uuid::Uuid::new_v4().to_string();
    conn.prepare_cached(
        "INSERT INTO run_leases (run_id, token, pid, host, acquired_at, heartbeat_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (run_id) DO UPDATE SET token = excluded.token, pid = excluded.pid,
            host = excluded.host, acquired_at = excluded.acquired_at,
            heartbeat_ms = excluded.heartbeat_ms",
    )?
    .execute(params![run_id, token, me.pid, me.host, now(), now_ms])?;
    Ok(token)
}

fn read_row(conn: &Connection, run_id: i64) -> rusqlite::Result<Option<LeaseRow>> {
    conn.prepare_cached(
        "SELECT pid, host, acquired_at, heartbeat_ms FROM run_leases WHERE run_id = ?1",
    )?
    .query_row([run_id], |r| {
        Ok(LeaseRow {
            pid: r.get(0)?,
            host: r.get(1)?,
            acquired_at: r.get(2)?,
            heartbeat_ms: r.get(3)?,
        })
    })
    .optional()
}

fn open_side_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| sqlite_err(path, e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| sqlite_err(path, e))?;
    Ok(conn)
}

fn heartbeat_loop(
    conn: Connection,
    run_id: i64,
    token: String,
    lost: Arc<AtomicBool>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    check: &LeaseCheck,
) {
    let (lock, cv) = &*stop;
    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (guard, _) = cv
            .wait_timeout_while(stopped, heartbeat_every(), |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        stopped = guard;
        if *stopped {
            break;
        }
        match beat(&conn, run_id, &token) {
            Ok(true) => check.beat_ok(),
            Ok(false) => {
                tracing::error!(run_id, "the run's lease was taken over by another process");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // A busy database delays one heartbeat; the stale bound allows for many.
            Err(e) => tracing::warn!(run_id, error = %e, "lease heartbeat failed"),
        }
    }
    drop(stopped);
    if let Err(e) = conn.execute(
        "DELETE FROM run_leases WHERE run_id = ?1 AND token = ?2",
        params![run_id, token],
    ) {
        tracing::warn!(run_id, error = %e, "could not release the run's lease");
    }
}

/// One heartbeat, fenced by the token: false when the lease is no longer ours.
fn beat(conn: &Connection, run_id: i64, token: &str) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached("UPDATE run_leases SET heartbeat_ms = ?3 WHERE run_id = ?1 AND token = ?2")?
        .execute(params![run_id, token, unix_ms()])?;
    Ok(changed == 1)
}

pub(crate) fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// This machine's name, as the lease records it.
pub fn host_name() -> String {
    os::host_name()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether a process of this host with this pid still runs. A zombie (killed, not yet reaped by
/// its parent) no longer runs.
pub fn pid_alive(pid: u32) -> bool {
    os::pid_alive(pid)
}

/// The two questions the lease asks the operating system, one implementation per platform: a
/// build for a platform without one fails to compile here instead of judging every holder dead.
#[cfg(unix)]
mod os {
    use std::path::Path;

    pub(super) fn host_name() -> Option<String> {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success
        // within it.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return None;
        }
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    /// `/proc` where there is one (it tells a zombie from a live process), else `kill(pid, 0)`.
    pub(super) fn pid_alive(pid: u32) -> bool {
        if Path::new("/proc/self").exists() {
            return match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // The state follows the command name in parentheses, which may itself hold spaces.
                Ok(stat) => !matches!(
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.trim_start().chars().next()),
                    Some('Z' | 'X')
                ),
                Err(_) => false,
            };
        }
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

/// Windows: the NetBIOS-independent DNS host name, and a process handle's exit code. Compiled
/// only on Windows, which CI does not build (README, "Where it is tested").
#[cfg(windows)]
mod os {
    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_ACCESS_DENIED, STILL_ACTIVE};
    use windows_sys::Win32::System::SystemInformation::{
        ComputerNameDnsHostname, GetComputerNameExW,
    };
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };

    pub(super) fn host_name() -> Option<String> {
        let mut buf = [0u16; 256];
        let mut len = buf.len() as u32;
        // SAFETY: `buf` is valid for `len` UTF-16 units; on success `len` is the count written
        // (without the terminating NUL).
        let ok = unsafe { GetComputerNameExW(ComputerNameDnsHostname, buf.as_mut_ptr(), &mut len) };
        if ok == 0 {
            return None;
        }
        Some(String::from_utf16_lossy(&buf[..len as usize]))
    }

    /// A pid that cannot be opened for lack of rights still runs (another user's process); one
    /// that cannot be opened otherwise does not exist.
    pub(super) fn pid_alive(pid: u32) -> bool {
        // SAFETY: OpenProcess takes plain values and returns null or a handle we own.
        let handle = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if handle.is_null() {
            return std::io::Error::last_os_error().raw_os_error()
                == Some(ERROR_ACCESS_DENIED as i32);
        }
        let mut code = 0u32;
        // SAFETY: `handle` is a valid process handle opened above; `code` is ours to write.
        let ok = unsafe { GetExitCodeProcess(handle, &mut code) };
        // SAFETY: the handle is ours and closed exactly once.
        unsafe { CloseHandle(handle) };
        ok != 0 && code == STILL_ACTIVE as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{ItemState, RunMode};
    use crate::queue::{testing, ItemWrite, Trace};

    fn queue_with_run() -> (tempfile::TempDir, Arc<Queue>, i64) {
        testing::queue_with_run(RunMode::DryRun)
    }

    fn holder(pid: u32, host: &str) -> Holder {
        Holder {
            pid,
            host: host.into(),
        }
    }

    fn backdate(q: &Queue, run: i64, by: Duration) {
        q.conn()
            .execute(
                "UPDATE run_leases SET heartbeat_ms = heartbeat_ms - ?2 WHERE run_id = ?1",
                params![run, by.as_millis() as i64],
            )
            .unwrap();
    }

    #[test]
    fn a_live_holder_refuses_a_second_process_and_nothing_changes() {
        let (_d, q, run) = queue_with_run();
        q.acquire(run, &holder(10, "h1"), |_| true).unwrap();
        let before = q.lease(run).unwrap().unwrap();
        let err = q.acquire(run, &holder(11, "h1"), |_| true).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "run {run} is being worked by pid 10 on h1 since {}",
                before.acquired_at
            )),
            "{msg}"
        );
        assert_eq!(q.lease(run).unwrap().unwrap(), before);
    }

    #[test]
    fn a_dead_pid_on_the_same_host_is_taken_over_at_once() {
        let (_d, q, run) = queue_with_run();
        q.acquire(run, &holder(10, "h1"), |_| true).unwrap();
        q.acquire(run, &holder(11, "h1"), |pid| pid != 10).unwrap();
        assert_eq!(q.lease(run).unwrap().unwrap().pid, 11);
    }

    #[test]
    fn another_hosts_pid_is_never_probed_only_its_heartbeat_counts() {
        let (_d, q, run) = queue_with_run();
        q.acquire(run, &holder(10, "h1"), |_| true).unwrap();
        // Pid 10 does not run here, but it is another host's pid: still held.
        assert!(matches!(
            q.acquire(run, &holder(11, "h2"), |_| false),
            Err(QueueError::Leased { pid: 10, .. })
        ));
        backdate(&q, run, STALE_AFTER + Duration::from_secs(1));
        q.acquire(run, &holder(11, "h2"), |_| false).unwrap();
        let row = q.lease(run).unwrap().unwrap();
        assert_eq!((row.pid, row.host.as_str()), (11, "h2"));
    }

    #[test]
    fn a_fresh_heartbeat_on_another_host_is_held() {
        let row = LeaseRow {
            pid: 1,
            host: "h1".into(),
            acquired_at: "t".into(),
            heartbeat_ms: 1_000_000,
        };
        let me = holder(2, "h2");
        let stale = STALE_AFTER.as_millis() as i64;
        assert_eq!(
            judge(&row, &me, 1_000_000 + stale, |_| false),
            Verdict::Held
        );
        assert_eq!(
            judge(&row, &me, 1_000_001 + stale, |_| false),
            Verdict::Stale
        );
        assert_eq!(
            judge(&row, &holder(2, "h1"), 1_000_000, |_| false),
            Verdict::HolderDead
        );
    }

    #[test]
    fn the_guard_releases_and_a_taken_over_holder_notices() {
        let (_d, q, run) = queue_with_run();
        let lease = q.take_lease(run).unwrap();
        assert_eq!(q.lease(run).unwrap().unwrap().pid, std::process::id());
        drop(lease);
        assert_eq!(q.lease(run).unwrap(), None);

        let token = q.acquire(run, &holder(10, "h1"), |_| true).unwrap();
        let lease = q.start_heartbeat(run, token).unwrap();
        backdate(&q, run, STALE_AFTER + Duration::from_secs(1));
        q.acquire(run, &holder(11, "h2"), |_| true).unwrap();
        // The old holder's release must not drop the new holder's lease.
        drop(lease);
        assert_eq!(q.lease(run).unwrap().unwrap().pid, 11);
    }

    #[test]
    fn a_heartbeat_after_a_takeover_changes_nothing_and_reports_the_loss() {
        let (_d, q, run) = queue_with_run();
        let token = q.acquire(run, &holder(10, "h1"), |_| true).unwrap();
        assert!(beat(&q.conn(), run, &token).unwrap());
        backdate(&q, run, STALE_AFTER + Duration::from_secs(1));
        q.acquire(run, &holder(11, "h2"), |_| true).unwrap();
        let theirs = q.lease(run).unwrap().unwrap();
        assert!(!beat(&q.conn(), run, &token).unwrap());
        assert_eq!(q.lease(run).unwrap().unwrap(), theirs);
    }

    /// One pending item of the run, and its id.
    fn one_item(q: &Queue, run: i64) -> i64 {
        let row = testing::row(2, Some(crate::item::UserKey::Id("u1".into())), None);
        q.insert_items(run, &[row], None).unwrap();
        q.pending_items(run, 0, 1).unwrap()[0].id
    }

    #[test]
    fn a_holder_taken_over_can_write_nothing() {
        let (_d, q, run) = queue_with_run();
        let item = one_item(&q, run);
        let token = q.acquire(run, &holder(10, "h1"), |_| true).unwrap();
        let lease = q.start_heartbeat(run, token).unwrap();
        q.mark_in_flight(item, "a@fabrikam.com").unwrap();
        q.plan_steps(item, None, true).unwrap();
        assert!(lease.check().still_ours().is_ok());
        backdate(&q, run, STALE_AFTER + Duration::from_secs(1));
        q.acquire(run, &holder(11, "h2"), |_| true).unwrap();

        let lost =
            |r: Result<()>| matches!(r, Err(QueueError::LeaseLost { run_id }) if run_id == run);
        assert!(lost(q.charge_attempt(item)));
        let note = ItemWrite::NoteError {
            code: "E".into(),
            message: "late".into(),
            trace: Trace::default(),
        };
        assert!(lost(q.item_writes(item, &[note])));
        assert!(lost(q.step_done(item, "invite")));
        assert!(lost(q.record_converted(item, None, None, None)));
        assert!(lost(q.back_to_pending(item)));
        assert!(lost(q.mark_in_flight(item, "a@fabrikam.com")));
        let now = q.item(item).unwrap().unwrap();
        assert_eq!(
            (now.state, now.attempts, now.error_code),
            (ItemState::InFlight, 0, None)
        );
        assert!(!q.steps(item).unwrap().unwrap().invited);
    }

    #[test]
    fn attempts_are_counted_per_step_and_over_the_life_of_the_item() {
        let (_d, q, run) = queue_with_run();
        let item = one_item(&q, run);
        q.plan_steps(item, None, true).unwrap();
        q.mark_in_flight(item, "a@fabrikam.com").unwrap();
        q.charge_attempt(item).unwrap();
        q.charge_attempt(item).unwrap();
        assert_eq!(q.steps(item).unwrap().unwrap().attempts, 2);
        q.step_done(item, "invite").unwrap();
        q.charge_attempt(item).unwrap();
        assert_eq!(q.steps(item).unwrap().unwrap().attempts, 1);
        assert_eq!(q.item(item).unwrap().unwrap().attempts, 3);
    }

    #[test]
    fn pid_probe_sees_this_process_and_not_a_reaped_child() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(!host_name().is_empty());
    }
}
