//! The SQLite work queue: the only module with SQL.
//!
//! One file per deployment (WAL, `synchronous=NORMAL`, created 0600) holds runs, their items and
//! an append-only log of Graph requests. Every state change is its own small transaction, so a
//! process killed at any instant leaves a consistent checkpoint; state changes name the state they
//! leave (`… WHERE id = ? AND state = ?`) and fail loudly when the row moved under them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

use crate::item::{
    ItemRecord, ItemState, NewItem, Overrides, Reason, RequestRecord, RunCounts, RunMode,
    RunOptions, RunRecord, RunStatus, SourceSpec, TenantIdentity, UserKey,
};
use crate::model::{Invitation, User};

pub mod backout;
mod facts;
mod ingest;
mod items;
mod lease;
mod log;
pub mod pass;
mod redemption;
mod report;
pub mod report_facts;
mod resend;
mod retire;
mod spans;
#[cfg(test)]
pub(crate) mod testing;
pub mod threads;

pub use log::{LOG_FLUSH_AFTER, LOG_FLUSH_ROWS};
mod runs;
mod select;
mod steps;

pub use facts::{AddressSource, RoundLink, SyncState, UserChange};
pub use items::{ItemWrite, Trace, VerdictRecord};
pub use lease::{
    host_name, pid_alive, stale_after, Holder, LeaseCheck, LeaseRow, RunLease, HEARTBEAT_EVERY,
    LEASE_STALE_ENV, STALE_AFTER,
};
pub use retire::{
    CredentialFacts, OnPremisesCounts, RetireChange, RetireEntry, RetirePass, RetireState,
    RetireSummary, RetiredCounts, SeenState, SkipKind,
};
pub use runs::{NewRun, OptionChange, PlannedUser};
pub use select::Selection;
pub use spans::WorkSpan;
pub use steps::{FollowUps, StepRow};
pub mod track;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path}: schema migration failed: {message}")]
    Migration { path: PathBuf, message: String },
    #[error("database {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("item {item_id} is not {expected} (it moved under us: {actual})")]
    Moved {
        item_id: i64,
        expected: &'static str,
        actual: String,
    },
    /// Another live process holds the run's lease (docs/usage.md: exit 1, nothing changed).
    #[error("run {run_id} is being worked by pid {pid} on {host} since {since}")]
    Leased {
        run_id: i64,
        pid: u32,
        host: String,
        since: String,
    },
    /// The run's lease is no longer this process's (it was frozen past the stale window and
    /// another process took the run over): the write was refused so the new holder's records
    /// stay as it wrote them.
    #[error("run {run_id} was taken over by another process: this one writes nothing more")]
    LeaseLost { run_id: i64 },
    #[error("stored JSON in column {column} is unreadable: {message}")]
    Corrupt {
        column: &'static str,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, QueueError>;

/// The schema's migrations, in order; a database's `user_version` is how many it has had.
const MIGRATION_SQL: [&str; 13] = [
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_run_lease.sql"),
    include_str!("../migrations/0003_work_spans.sql"),
    include_str!("../migrations/0004_steps.sql"),
    include_str!("../migrations/0005_redemption.sql"),
    include_str!("../migrations/0006_ingest.sql"),
    include_str!("../migrations/0007_tenant_facts.sql"),
    include_str!("../migrations/0008_step_attempts.sql"),
    include_str!("../migrations/0009_run_tenant_plan.sql"),
    include_str!("../migrations/0010_backout.sql"),
    include_str!("../migrations/0011_retire.sql"),
    include_str!("../migrations/0012_run_counts.sql"),
    include_str!("../migrations/0013_count_inserts_per_statement.sql"),
];

/// How many migrations there are: a database at this `user_version` is current.
const MIGRATIONS: usize = MIGRATION_SQL.len();

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATION_SQL.iter().map(|sql| M::up(sql)).collect())
}

/// What ingestion stored: `insert_items` counts `pending` and `bad_input` per batch (a later
/// duplicate is stored `pending` until `finish_ingest` settles it), `finish_ingest` fills in
/// `duplicate_user` and takes those rows off `pending`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InsertStats {
    pub pending: u64,
    pub bad_input: u64,
    pub duplicate_user: u64,
}

/// What `finish_ingest` settled over the whole run (rows stored by earlier processes too).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FinishStats {
    pub duplicate_user: u64,
    pub duplicate_email: u64,
}

/// What `record_lookup` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupOutcome {
    /// Snapshot stored; the item goes on to validation.
    Found,
    NotFound,
    /// Another item of the run already resolved to this user.
    DuplicateOf(i64),
}

pub struct Queue {
    path: PathBuf,
    conn: Mutex<Connection>,
    log: Mutex<log::LogBuffer>,
    /// The lease this process holds (run id, token), set when it takes one: every write to the
    /// run's items names the token, so a holder that lost the lease changes nothing.
    fence: Mutex<Option<(i64, String)>>,
    /// Write transactions committed on this connection (SQLite's commit hook), so tests and the
    /// bench count what a converted user costs instead of timing it.
    writes: Arc<AtomicU64>,
}

/// The condition a fenced write adds, `?{run}`/`?{token}` being the bound fence: true when the
/// process holds no lease, or when the lease it holds is still its own.
fn fence_sql(run: usize, token: usize) -> String {
    format!(
        "(?{run} IS NULL OR EXISTS (SELECT 1 FROM run_leases WHERE run_id = ?{run} AND token = ?{token}))"
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The schema version the migrations left in the database (`PRAGMA user_version`).
fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

impl Queue {
    /// Opens (creating 0600 if absent) and migrates the database.
    ///
    /// An existing file is checked before anything is written to it or its mode is touched: a
    /// directory, a file that is not SQLite, a database that fails `PRAGMA quick_check`, or a
    /// SQLite database of some other program is refused with a one-line cause.
    pub fn open(path: &Path) -> Result<Queue> {
        let existed = path.exists();
        if existed {
            check_file(path)?;
        } else {
            create_private(path)?;
        }
        let mut conn = Connection::open(path).map_err(|e| sqlite_err(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| sqlite_err(path, e))?;
        if existed {
            check_database(path, &conn)?;
            tighten(path).map_err(|e| QueueError::Io {
                path: path.to_path_buf(),
                message: format!("cannot make it private (0600): {e}"),
            })?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| sqlite_err(path, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| sqlite_err(path, e))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| sqlite_err(path, e))?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| QueueError::Migration {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let writes = Arc::new(AtomicU64::new(0));
        let counter = writes.clone();
        conn.commit_hook(Some(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            false
        }))
        .map_err(|e| sqlite_err(path, e))?;
        Ok(Queue::on(path, conn, writes))
    }

    /// The queue of `path` over its open `conn`, holding no lease yet; `writes` counts its
    /// commits.
    fn on(path: &Path, conn: Connection, writes: Arc<AtomicU64>) -> Queue {
        Queue {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            log: Mutex::new(log::LogBuffer::default()),
            fence: Mutex::new(None),
            writes,
        }
    }

    /// A second, read-only connection to a database this process already opened with
    /// [`Queue::open`] (so it exists and is migrated): the progress bar's once-a-second counts
    /// read through it, beside the writer, as WAL allows, and can never write by mistake.
    pub fn open_read_only(path: &Path) -> Result<Queue> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_err(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| sqlite_err(path, e))?;
        Ok(Queue::on(path, conn, Arc::new(AtomicU64::new(0))))
    }

    /// Opens an existing database only; reading commands must not create one by accident.
    pub fn open_existing(path: &Path) -> Result<Queue> {
        if !path.exists() {
            return Err(QueueError::Io {
                path: path.to_path_buf(),
                message: "no such database (run `b2b-convert run …` first, or pass --db)".into(),
            });
        }
        Queue::open(path)
    }

    /// Opens an existing database to read it only (`status`, `report`): beside a run in
    /// progress it never takes the writer's lock, and it can never write by mistake. A database
    /// an older version left behind is migrated once, by [`Queue::open_existing`], as before.
    pub fn open_existing_read_only(path: &Path) -> Result<Queue> {
        if !path.exists() {
            return Queue::open_existing(path);
        }
        check_file(path)?;
        let reader = Queue::open_read_only(path)?;
        let current = {
            let conn = reader.conn();
            check_database(path, &conn)?;
            user_version(&conn).map_err(|e| sqlite_err(path, e))? == MIGRATIONS as i64
        };
        if current {
            return Ok(reader);
        }
        drop(reader);
        Queue::open_existing(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write transactions this queue has committed since it was opened (the lease heartbeat's
    /// own connection not included): what a step costs, counted rather than timed.
    pub fn write_transactions(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        threads::check();
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> QueueError {
        sqlite_err(&self.path, e)
    }

    /// Runs `work` in ONE write transaction (`BEGIN IMMEDIATE`) and commits what it did; an
    /// error from `work` rolls all of it back.
    fn write_tx<T>(&self, work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let out = work(&tx)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// The lease this process holds, bound into fenced writes as `(run id, token)`.
    fn fence(&self) -> (Option<i64>, Option<String>) {
        let fence = self.fence.lock().unwrap_or_else(|p| p.into_inner());
        match &*fence {
            Some((run, token)) => (Some(*run), Some(token.clone())),
            None => (None, None),
        }
    }

    /// After a fenced write changed no row: `LeaseLost` when the lease is no longer ours.
    fn check_fence(&self, conn: &Connection) -> Result<()> {
        let (Some(run_id), Some(token)) = self.fence() else {
            return Ok(());
        };
        let ours: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM run_leases WHERE run_id = ?1 AND token = ?2)",
            )
            .and_then(|mut s| s.query_row(rusqlite::params![run_id, token], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        if ours {
            Ok(())
        } else {
            Err(QueueError::LeaseLost { run_id })
        }
    }
}

/// States, reasons, modes and run statuses are bound as parameters and read back typed: no state
/// is ever spelled inside SQL text built from Rust.
macro_rules! sql_text_enum {
    ($($t:ty),*) => {$(
        impl rusqlite::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }
        impl rusqlite::types::FromSql for $t {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|m: String| rusqlite::types::FromSqlError::Other(m.into()))
            }
        }
    )*};
}

sql_text_enum!(
    ItemState,
    Reason,
    RunMode,
    RunStatus,
    resend::ResendState,
    retire::RetireState,
    retire::SkipKind
);

fn corrupt(column: &'static str) -> impl Fn(rusqlite::Error) -> QueueError {
    move |e| QueueError::Corrupt {
        column,
        message: e.to_string(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("queue types serialise to JSON")
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, column: &'static str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| QueueError::Corrupt {
        column,
        message: e.to_string(),
    })
}

fn sqlite_err(path: &Path, source: rusqlite::Error) -> QueueError {
    QueueError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// The 16 bytes every SQLite database file starts with.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// An existing `--db` path must be a regular file that is empty (a database not yet written)
/// or starts like a SQLite database. Only reads: a wrong path keeps its content and its mode.
fn check_file(path: &Path) -> Result<()> {
    use std::io::Read as _;
    let refuse = |message: String| QueueError::Io {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    if meta.is_dir() {
        return Err(refuse("is a directory, not a database file".into()));
    }
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let mut head = [0u8; 16];
    let read = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| refuse(format!("cannot read it: {e}")));
    if read.is_err() || &head != SQLITE_MAGIC {
        return Err(refuse(
            "is not a b2b-convert database (not SQLite at all); nothing was changed".into(),
        ));
    }
    Ok(())
}

/// An existing SQLite file must pass `PRAGMA quick_check` and be this tool's (its schema version
/// set by our migrations, or no tables at all) before anything is written to it: a damaged
/// database could otherwise answer `status` with nothing, and a foreign one would be migrated.
fn check_database(path: &Path, conn: &Connection) -> Result<()> {
    let refuse = |message: String| QueueError::Io {
        path: path.to_path_buf(),
        message,
    };
    let damaged = |e: rusqlite::Error| {
        refuse(format!(
            "cannot be read as a database ({e}); nothing was changed: if the disk is full make room, \
             else restore it from a copy or pass another --db"
        ))
    };
    let problems: Vec<String> = {
        let mut stmt = conn.prepare("PRAGMA quick_check(5)").map_err(damaged)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(damaged)?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(damaged)?
    };
    if problems.first().map(String::as_str) != Some("ok") {
        // SQLite's report can run over several lines ("*** in database main ***", then one
        // line per problem): the first problem is the cause worth one line.
        let first = problems
            .iter()
            .flat_map(|p| p.lines())
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("***"))
            .unwrap_or("unreadable");
        let first: String = first.chars().take(200).collect();
        return Err(refuse(format!(
            "is damaged (PRAGMA quick_check: {first}); nothing was changed: restore it from a copy or pass another --db"
        )));
    }
    let version = user_version(conn).map_err(damaged)?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )
        .map_err(damaged)?;
    let ours: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'runs'",
            [],
            |r| r.get(0),
        )
        .map_err(damaged)?;
    if tables > 0 && (version == 0 || ours == 0) {
        return Err(refuse(
            "is a SQLite database of another program, not b2b-convert's; nothing was changed"
                .into(),
        ));
    }
    Ok(())
}

/// Creates the database file readable by its owner only: it holds the users' snapshots and the
/// invitations' redeem links. An existing database that others can read (made by an older
/// version, or copied with a loose umask) is tightened to 0600 by [`Queue::open`] once it is
/// known to be one; SQLite gives its `-wal`/`-shm` files the database file's mode.
fn create_private(path: &Path) -> Result<()> {
    let io_err = |what: &str, e: std::io::Error| QueueError::Io {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_err(&format!("cannot create folder {}", dir.display()), e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("cannot create", e)),
    }
}

#[cfg(unix)]
fn tighten(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Writes a file that only its owner can read (reports and exports name users and addresses),
/// replacing any earlier file of that name and tightening its mode if it was looser.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = open_private(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Creates (or truncates) `path` readable by its owner only, tightening a file that already
/// existed with looser permissions: reports and exports name every user of the tenant.
pub fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(path)?;
    tighten(path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    use testing::{row, temp_queue as queue};

    fn csv_run(q: &Queue) -> i64 {
        testing::csv_run(q, RunMode::DryRun, Some("t"))
    }

    /// A database in a fresh directory, written by `make` through a queue closed again before
    /// it returns: the directory's guard, the database's path and what `make` returned.
    fn closed_database<T>(make: impl FnOnce(&Queue) -> T) -> (tempfile::TempDir, PathBuf, T) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let made = make(&Queue::open(&path).unwrap());
        (dir, path, made)
    }

    /// A CSV run of one pending user, `u1` on line 2: its id and the item's.
    fn one_pending(q: &Queue) -> (i64, i64) {
        let run = csv_run(q);
        q.insert_items(run, &[row(2, Some(UserKey::Id("u1".into())), None)], None)
            .unwrap();
        (run, q.pending_items(run, 0, 1).unwrap()[0].id)
    }

    /// A CSV run naming `u1` by id (line 2) and by UPN (line 3), and `zz`, whom the tenant does
    /// not have (line 4): its pending items in line order.
    fn u1_twice_and_a_stranger(q: &Queue) -> Vec<ItemRecord> {
        let run = csv_run(q);
        let rows = [
            row(2, Some(UserKey::Id("u1".into())), None),
            row(
                3,
                Some(UserKey::UserPrincipalName("u1@contoso.com".into())),
                None,
            ),
            row(4, Some(UserKey::Id("zz".into())), None),
        ];
        q.insert_items(run, &rows, None).unwrap();
        q.pending_items(run, 0, 10).unwrap()
    }

    /// Ends the run's ingestion and asserts what it blocked: rows of a repeated user, rows of a
    /// shared address.
    #[track_caller]
    fn assert_finished(q: &Queue, run: i64, duplicate_user: u64, duplicate_email: u64) {
        let stats = FinishStats {
            duplicate_user,
            duplicate_email,
        };
        assert_eq!(q.finish_ingest(run).unwrap(), stats);
    }

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            user_principal_name: Some(format!("{id}@contoso.com")),
            mail: Some(format!("{id}@fabrikam.com")),
            ..Default::default()
        }
    }

    /// The run's counts as `count(*)` over its items: the reference `run_counts` must equal.
    fn counted(q: &Queue, run: i64) -> Vec<(ItemState, u64)> {
        let conn = q.conn();
        let mut stmt = conn
            .prepare(
                "SELECT state, count(*) FROM items WHERE run_id = ?1 GROUP BY state ORDER BY state",
            )
            .unwrap();
        let rows = stmt
            .query_map([run], |r| {
                Ok((r.get::<_, ItemState>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .unwrap();
        rows.map(|r| r.unwrap()).collect()
    }

    /// Every state change the queue makes, in a bounded random order over two runs, keeps the
    /// trigger-kept `run_counts` equal to `count(*)` after each change: a change refused because
    /// the item is elsewhere changes neither.
    #[test]
    fn run_counts_equal_count_star_over_random_transitions() {
        let (_d, q) = queue();
        let runs = [csv_run(&q), csv_run(&q)];
        for (r, run) in runs.iter().enumerate() {
            let rows: Vec<NewItem> = (0..120)
                .map(|i| {
                    let mut row = row(i + 2, Some(UserKey::Id(format!("u{r}-{}", i % 110))), None);
                    if i == 5 {
                        row.bad_input = Some(format!("line {}: no key", i + 2));
                    }
                    row
                })
                .collect();
            q.insert_items(*run, &rows, None).unwrap();
            q.finish_ingest(*run).unwrap();
            assert_eq!(q.state_counts(*run).unwrap(), counted(&q, *run));
        }
        let ids: Vec<i64> = runs
            .iter()
            .flat_map(|r| q.items(*r).unwrap().into_iter().map(|i| i.id))
            .collect();
        // A fixed-seed xorshift: the same transitions on every run of the test.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut changed = 0;
        let mut seen = std::collections::BTreeSet::new();
        for step in 0..3_000 {
            let id = ids[next(ids.len() as u64) as usize];
            let u = user(&format!("x{id}"));
            let done = match next(9) {
                0 => q.record_lookup(id, Some(&u)).map(drop),
                1 => q.record_lookup(id, None).map(drop),
                2 => q.record_verdict(id, ItemState::WouldConvert, None, None, None),
                3 => q.record_verdict(id, ItemState::Skipped, Some(Reason::AlreadyB2b), None, None),
                4 => q.mark_in_flight(id, "a@fabrikam.com"),
                5 => q.charge_attempt(id),
                6 => q.record_converted(id, None, None, None),
                7 => q.record_failed(id, "BadRequest", "no", None, None),
                _ => q.back_to_pending(id),
            };
            changed += usize::from(done.is_ok());
            if step % 20 == 19 {
                for run in runs {
                    q.requeue_failed(run).unwrap();
                }
            }
            for run in runs {
                let counts = q.state_counts(run).unwrap();
                seen.extend(counts.iter().map(|c| c.0));
                assert_eq!(counts, counted(&q, run), "after step {step}");
            }
        }
        assert!(changed > 200, "the walk changes states ({changed} changes)");
        assert_eq!(
            seen.len(),
            ItemState::ALL.len(),
            "every state reached: {seen:?}"
        );
        let c = q.counts(runs[0]).unwrap();
        assert_eq!(c.total, 120);
        q.discard_run(runs[0]).unwrap();
        assert!(q.state_counts(runs[0]).unwrap().is_empty());
        assert_eq!(q.state_counts(runs[1]).unwrap(), counted(&q, runs[1]));
    }

    /// A database written before migration 0012 gets its counts computed once when it is
    /// opened, and kept from then on.
    #[test]
    fn an_older_database_is_counted_once_by_the_migration() {
        let (_dir, path, run) = closed_database(|q| {
            let run = csv_run(q);
            let rows: Vec<NewItem> = (0..10)
                .map(|i| row(i + 2, Some(UserKey::Id(format!("u{i}"))), None))
                .collect();
            q.insert_items(run, &rows, None).unwrap();
            let id = q.pending_items(run, 0, 1).unwrap()[0].id;
            q.record_lookup(id, None).unwrap();
            q.conn()
                .execute_batch(
                    "DROP TRIGGER IF EXISTS items_count_insert; DROP TRIGGER items_count_delete;
                     DROP TRIGGER items_count_update; DROP TABLE run_counts;
                     PRAGMA user_version = 11;",
                )
                .unwrap();
            run
        });
        let q = Queue::open(&path).unwrap();
        assert_eq!(
            q.state_counts(run).unwrap(),
            vec![(ItemState::Blocked, 1), (ItemState::Pending, 9)]
        );
        assert_eq!(q.state_counts(run).unwrap(), counted(&q, run));
    }

    /// The progress bar's connection reads what the writer committed and refuses to write.
    #[test]
    fn a_read_only_queue_reads_beside_the_writer_and_never_writes() {
        let (_d, q) = queue();
        let (run, id) = one_pending(&q);
        let ro = Queue::open_read_only(q.path()).unwrap();
        assert_eq!(ro.state_counts(run).unwrap(), vec![(ItemState::Pending, 1)]);
        assert!(ro.set_run_status(run, RunStatus::Finished).is_err());
        q.record_lookup(id, None).unwrap();
        assert_eq!(ro.state_counts(run).unwrap(), vec![(ItemState::Blocked, 1)]);
    }

    #[test]
    fn the_migration_count_is_the_last_migration() {
        let (_dir, q) = queue();
        let version = user_version(&q.conn()).unwrap();
        assert_eq!(version, MIGRATIONS as i64);
    }

    #[test]
    fn a_current_database_is_read_without_writing_and_an_older_one_is_migrated_first() {
        let (_dir, path, run) = closed_database(csv_run);
        let reader = Queue::open_existing_read_only(&path).unwrap();
        assert!(reader.run(run).unwrap().is_some());
        assert!(
            reader.discard_run(run).is_err(),
            "a read-only queue refuses to write"
        );
        drop(reader);
        // As the version before the last migration left it.
        let older = tempfile::tempdir().unwrap();
        let path = older.path().join("q.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let all_but_last = &MIGRATION_SQL[..MIGRATIONS - 1];
            Migrations::new(all_but_last.iter().map(|sql| M::up(sql)).collect())
                .to_latest(&mut conn)
                .unwrap();
        }
        let q = Queue::open_existing_read_only(&path).unwrap();
        let version = user_version(&q.conn()).unwrap();
        assert_eq!(version, MIGRATIONS as i64, "migrated once by the writer");
        assert!(q.list_runs().unwrap().is_empty());
    }

    #[test]
    fn migrations_validate() {
        migrations().validate().unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _q) = queue();
        let mode = std::fs::metadata(dir.path().join("q.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_loose_database_and_report_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let db = dir.path().join("loose.db");
        std::fs::write(&db, b"").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        Queue::open(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let report = dir.path().join("r.csv");
        std::fs::write(&report, b"old").unwrap();
        std::fs::set_permissions(&report, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&report, b"new").unwrap();
        assert_eq!(mode(&report), 0o600);
        assert_eq!(std::fs::read(&report).unwrap(), b"new");
        write_private(&dir.path().join("fresh.md"), b"x").unwrap();
        assert_eq!(mode(&dir.path().join("fresh.md")), 0o600);
    }

    /// A path that is not this tool's database is refused with a one-line cause, and neither its
    /// content nor its mode changes.
    #[cfg(unix)]
    #[test]
    fn a_foreign_damaged_or_non_database_path_is_refused_untouched() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let refuse = |p: &Path, want: &str| {
            let before = (mode(p), std::fs::read(p).ok());
            let e = Queue::open(p).err().expect("refused").to_string();
            assert!(e.contains(want), "{}: {e}", p.display());
            assert!(!e.contains('\n'), "one line: {e}");
            assert_eq!((mode(p), std::fs::read(p).ok()), before, "untouched");
        };

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"my notes, not a database\n").unwrap();
        std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o644)).unwrap();
        refuse(&text, "not SQLite at all");

        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
        refuse(&folder, "is a directory");

        let foreign = dir.path().join("other.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('x');")
            .unwrap();
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o644)).unwrap();
        refuse(&foreign, "another program");

        let garbled = dir.path().join("garbled.db");
        {
            let q = Queue::open(&garbled).unwrap();
            let run = csv_run(&q);
            let rows: Vec<NewItem> = (0..2_000)
                .map(|i| {
                    let upn = UserKey::UserPrincipalName(format!("u{i}@contoso.com"));
                    row(i + 2, Some(upn), Some(&format!("u{i}@fabrikam.com")))
                })
                .collect();
            q.insert_items(run, &rows, None).unwrap();
            let conn = q.conn();
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
        }
        let mut bytes = std::fs::read(&garbled).unwrap();
        assert!(bytes.len() > 4096 * 8, "several pages to damage");
        for page in 2..6 {
            for b in &mut bytes[page * 4096..page * 4096 + 4096] {
                *b = 0xA5;
            }
        }
        std::fs::write(&garbled, &bytes).unwrap();
        std::fs::set_permissions(&garbled, std::fs::Permissions::from_mode(0o640)).unwrap();
        refuse(&garbled, "nothing was changed");
    }

    #[test]
    fn duplicates_are_blocked_at_ingest() {
        let (_d, q) = queue();
        let run = csv_run(&q);
        let stats = q
            .insert_items(
                run,
                &[
                    row(2, Some(UserKey::Id("A".into())), Some("x@p.com")),
                    row(3, Some(UserKey::Id("a".into())), None),
                    row(4, Some(UserKey::Id("b".into())), Some("X@P.com")),
                    row(5, Some(UserKey::Id("c".into())), Some("c@p.com")),
                ],
                Some("5"),
            )
            .unwrap();
        assert_eq!(stats.pending, 4);
        assert_finished(&q, run, 1, 2);
        let items = q.items(run).unwrap();
        let got: Vec<_> = items.iter().map(|i| (i.line, i.state, i.reason)).collect();
        assert_eq!(
            got,
            vec![
                (Some(2), ItemState::Blocked, Some(Reason::DuplicateEmail)),
                (Some(3), ItemState::Blocked, Some(Reason::DuplicateUser)),
                (Some(4), ItemState::Blocked, Some(Reason::DuplicateEmail)),
                (Some(5), ItemState::Pending, None),
            ]
        );
        assert_eq!(q.ingest_cursor(run).unwrap().as_deref(), Some("5"));
        assert!(q.run(run).unwrap().unwrap().ingest_complete);
    }

    /// Duplicates are settled after the load, across batches (a resumed ingestion stores the
    /// rest of the file in later batches) and across the 100-row statements of one batch: the
    /// first row that is not `bad_input` keeps `pending`, every later one names its line.
    #[test]
    fn duplicates_across_batches_are_settled_by_finish() {
        let (_d, q) = queue();
        let run = csv_run(&q);
        let mut bad = row(2, Some(UserKey::Id("x".into())), None);
        bad.bad_input = Some("line 2: externalEmail: not an address".into());
        let mut first: Vec<NewItem> = vec![bad, row(3, Some(UserKey::Id("A".into())), None)];
        // 250 distinct users: two full multi-row statements and a shorter one.
        first.extend((0..250).map(|i| row(10 + i, Some(UserKey::Id(format!("u{i}"))), None)));
        let stats = q.insert_items(run, &first, Some("259")).unwrap();
        assert_eq!((stats.pending, stats.bad_input), (251, 1));
        let second = [
            row(300, Some(UserKey::Id("X".into())), None),
            row(301, Some(UserKey::Id("a".into())), None),
            row(302, Some(UserKey::Id("U249".into())), None),
            row(303, Some(UserKey::Id("a".into())), None),
        ];
        q.insert_items(run, &second, Some("303")).unwrap();
        assert_finished(&q, run, 3, 0);
        let items = q.items(run).unwrap();
        assert_eq!(items.len(), 256);
        assert!(items.iter().zip(&items[1..]).all(|(a, b)| a.line < b.line));
        let by_line = |l: u64| items.iter().find(|i| i.line == Some(l)).unwrap();
        assert_eq!(by_line(2).reason, Some(Reason::BadInput));
        // The bad row never counts as the first: line 300 is user x's first valid row.
        assert_eq!(by_line(300).state, ItemState::Pending);
        for (line, first) in [(301, 3), (302, 259), (303, 3)] {
            let item = by_line(line);
            assert_eq!(item.state, ItemState::Blocked, "line {line}");
            assert_eq!(item.reason, Some(Reason::DuplicateUser), "line {line}");
            assert_eq!(
                item.detail.as_deref(),
                Some(format!("same user as line {first}").as_str())
            );
        }
        assert_eq!(q.counts(run).unwrap().state(ItemState::Pending), 252);
        // Idempotent: a resumed process that finishes again changes nothing.
        let before = q.items(run).unwrap();
        assert_eq!(q.finish_ingest(run).unwrap(), FinishStats::default());
        assert_eq!(q.items(run).unwrap(), before);
    }

    /// A repeated user's email is not a second user's email; listed users have no line.
    #[test]
    fn duplicate_user_rows_do_not_make_a_duplicate_email() {
        let (_d, q) = queue();
        let run = csv_run(&q);
        q.insert_items(
            run,
            &[
                row(2, Some(UserKey::Id("A".into())), Some("e@p.com")),
                row(3, Some(UserKey::Id("a".into())), Some("E@p.com")),
            ],
            Some("3"),
        )
        .unwrap();
        let mut listed = row(0, Some(UserKey::Id("b".into())), None);
        listed.line = None;
        q.insert_items(run, &[listed.clone(), listed], None)
            .unwrap();
        assert_finished(&q, run, 2, 0);
        let got: Vec<_> = q
            .items(run)
            .unwrap()
            .into_iter()
            .map(|i| (i.line, i.state, i.detail))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(2), ItemState::Pending, None),
                (
                    Some(3),
                    ItemState::Blocked,
                    Some("same user as line 2".into())
                ),
                (None, ItemState::Pending, None),
                (
                    None,
                    ItemState::Blocked,
                    Some("same user as an earlier entry".into())
                ),
            ]
        );
    }

    /// A chunk's look-ups in one transaction settle as one call per item would, in order.
    #[test]
    fn lookups_of_a_chunk_are_stored_together() {
        let (_d, q) = queue();
        let items = u1_twice_and_a_stranger(&q);
        let u = user("u1");
        let outcomes = q
            .record_lookups(&[
                (items[0].id, Some(&u)),
                (items[1].id, Some(&u)),
                (items[2].id, None),
            ])
            .unwrap();
        assert_eq!(
            outcomes,
            vec![
                LookupOutcome::Found,
                LookupOutcome::DuplicateOf(items[0].id),
                LookupOutcome::NotFound
            ]
        );
        let dup = q.item(items[1].id).unwrap().unwrap();
        assert_eq!(dup.reason, Some(Reason::DuplicateUser));
        assert_eq!(dup.detail.as_deref(), Some("same user (u1) as line 2"));
        assert_eq!(q.item(items[0].id).unwrap().unwrap().snapshot, Some(u));
        // A moved item fails the whole chunk: nothing of it is stored.
        assert!(q
            .record_lookups(&[(items[0].id, None), (items[2].id, None)])
            .is_err());
        assert_eq!(
            q.item(items[0].id).unwrap().unwrap().state,
            ItemState::Pending
        );
    }

    #[test]
    fn lookup_spots_same_user_under_two_keys() {
        let (_d, q) = queue();
        let items = u1_twice_and_a_stranger(&q);
        let u = user("u1");
        assert_eq!(
            q.record_lookup(items[0].id, Some(&u)).unwrap(),
            LookupOutcome::Found
        );
        assert_eq!(
            q.record_lookup(items[1].id, Some(&u)).unwrap(),
            LookupOutcome::DuplicateOf(items[0].id)
        );
        assert_eq!(
            q.record_lookup(items[2].id, None).unwrap(),
            LookupOutcome::NotFound
        );
        let counts = q.counts(items[0].run_id).unwrap();
        assert_eq!(counts.state(ItemState::Pending), 1);
        assert_eq!(counts.reasons["duplicate_user"], 1);
        assert_eq!(counts.reasons["user_not_found"], 1);
        assert_eq!(q.item(items[0].id).unwrap().unwrap().snapshot, Some(u));
    }

    #[test]
    fn state_changes_name_the_state_they_leave() {
        let (_d, q) = queue();
        let (run, id) = one_pending(&q);
        // Converting an item that never went in flight is a bug and must be loud.
        assert!(matches!(
            q.record_converted(id, None, None, None),
            Err(QueueError::Moved { .. })
        ));
        q.mark_in_flight(id, "u1@fabrikam.com").unwrap();
        assert_eq!(q.in_flight_items(run).unwrap().len(), 1);
        // A checkpoint is not an attempt: only a request that may have reached Graph is.
        assert_eq!(q.item(id).unwrap().unwrap().attempts, 0);
        q.charge_attempt(id).unwrap();
        let inv = Invitation {
            id: "inv1".into(),
            status: "PendingAcceptance".into(),
            invite_redeem_url: Some("https://redeem/secret".into()),
            ..Default::default()
        };
        q.record_converted(id, Some(&inv), Some("req-1"), Some("crid-1"))
            .unwrap();
        let item = q.item(id).unwrap().unwrap();
        assert_eq!(item.state, ItemState::Converted);
        assert_eq!(item.attempts, 1);
        assert_eq!(item.request_id.as_deref(), Some("req-1"));
        assert!(!item.reconciled);
        assert!(q.mark_in_flight(id, "x").is_err());
    }

    #[test]
    fn retry_requeues_failed_items() {
        let (_d, q) = queue();
        let (run, id) = one_pending(&q);
        q.mark_in_flight(id, "a@b.com").unwrap();
        q.record_failed(id, "BadRequest", "nope", Some("r"), None)
            .unwrap();
        assert_eq!(q.requeue_failed(run).unwrap(), 1);
        let item = q.item(id).unwrap().unwrap();
        assert_eq!((item.state, item.attempts), (ItemState::Pending, 0));
    }

    #[test]
    fn a_discarded_run_leaves_nothing_to_resume() {
        let (_d, q) = queue();
        let (run, _) = one_pending(&q);
        q.discard_run(run).unwrap();
        assert!(q.latest_run().unwrap().is_none());
        assert!(q.items(run).unwrap().is_empty());
    }

    #[test]
    fn retry_forgets_the_snapshot_so_the_user_is_read_again() {
        let (_d, q) = queue();
        let (run, id) = one_pending(&q);
        q.record_lookup(id, Some(&user("u1"))).unwrap();
        q.mark_in_flight(id, "stale@fabrikam.com").unwrap();
        q.record_failed(id, "BadRequest", "nope", None, None)
            .unwrap();
        q.requeue_failed(run).unwrap();
        let item = q.item(id).unwrap().unwrap();
        assert_eq!((item.snapshot, item.external_email), (None, None));
    }

    #[test]
    fn counts_include_every_state_and_requests() {
        let (_d, q) = queue();
        let run = csv_run(&q);
        q.log_request(
            &RequestRecord {
                run_id: run,
                item_id: None,
                method: "GET".into(),
                path: "/v1.0/domains".into(),
                status: Some(429),
                client_request_id: "c".into(),
                request_id: None,
                duration_ms: 3,
                error: None,
                at: now(),
            },
            true,
            2,
        )
        .unwrap();
        let c = q.counts(run).unwrap();
        assert_eq!(c.states.len(), ItemState::ALL.len());
        assert_eq!(
            (c.graph_requests, c.throttled_requests, c.retries),
            (1, 1, 1)
        );
    }
}
