//! Shared harness: an in-process emulator on 127.0.0.1:0 and the real binary pointed at it.
#![allow(dead_code)]

pub mod html;
pub mod raw;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use b2b_convert::emulator::{self, Emulator, EmulatorConfig, Tenant};
use b2b_convert::item::{ItemRecord, ItemState};
use b2b_convert::queue::Queue;

pub const BIN: &str = env!("CARGO_BIN_EXE_b2b-convert");

/// Hard ceiling on any one command of a test, so a hung run fails instead of stalling CI.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub async fn start(config: EmulatorConfig) -> Emulator {
    emulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("emulator starts on loopback")
}

pub async fn start_sample() -> Emulator {
    start(EmulatorConfig::new(Tenant::sample())).await
}

/// The binary with the emulator's client environment and nothing inherited that could point
/// it elsewhere.
pub fn command(emu: &Emulator, db: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(emu.client_env())
        .env("RUST_LOG", "b2b_convert=info")
        // The emulator injects faults by the thousand: back off from 20 ms rather than Graph's
        // 500 ms so fault tests do not mostly sleep (same policy, same attempt limits).
        .env("B2B_BACKOFF_BASE_MS", "20")
        // A SQLite call on a thread that drives async tasks is a defect: make it fail the test.
        .env("B2B_THREAD_CHECK", "panic")
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn run_id(&self) -> i64 {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("run-id: "))
            .unwrap_or_else(|| {
                panic!(
                    "no run-id line in stdout:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
            .trim()
            .parse()
            .unwrap()
    }
}

fn ran(out: Output) -> Ran {
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn run(emu: &Emulator, db: &Path, args: &[&str]) -> Ran {
    let child = command(emu, db, args).output();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child)
        .await
        .unwrap_or_else(|_| panic!("b2b-convert {args:?} did not finish in {COMMAND_TIMEOUT:?}"))
        .expect("binary runs");
    ran(out)
}

/// Runs the binary without an emulator environment (usage and input errors).
pub async fn run_plain(db: &Path, args: &[&str]) -> Ran {
    let out = tokio::process::Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(Stdio::null())
        .output();
    ran(tokio::time::timeout(COMMAND_TIMEOUT, out)
        .await
        .unwrap()
        .unwrap())
}

pub fn items(db: &Path, run_id: i64) -> Vec<ItemRecord> {
    Queue::open(db).unwrap().items(run_id).unwrap()
}

pub fn count(items: &[ItemRecord], state: ItemState) -> usize {
    items.iter().filter(|i| i.state == state).count()
}

/// `{"<METHOD> <template>": {"<status>": n}}` summed over statuses.
pub fn requests_to(stats: &serde_json::Value, key: &str) -> u64 {
    stats["requests"][key]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

/// Every invitation the emulator accepted, as (userId, count).
pub fn invitations_per_user(emu: &Emulator) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for inv in emu.invitations() {
        *m.entry(inv["userId"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    m
}

/// Asserts that a child stopped with `start_kill` died of SIGKILL, not of its own accord just
/// before it (a run that had already ended would make a crash test pass without crashing
/// anything). Unix only: elsewhere `start_kill` is `TerminateProcess`, whose exit code a process
/// could also have chosen, so there is nothing to tell apart.
/// Sends `signal` (`-TERM`, `-STOP`, `-CONT`, …) to a process, through kill(1): no unsafe code
/// in tests.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// A spawned command's output once it ends, within [`COMMAND_TIMEOUT`].
pub async fn output_of(child: tokio::process::Child) -> std::process::Output {
    tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("the command ends")
        .unwrap()
}

pub fn assert_died_of_sigkill(status: &std::process::ExitStatus, context: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(9), "{context}: {status:?}");
    }
    #[cfg(not(unix))]
    let _ = (status, context);
}

/// Kills `child` (SIGKILL) once its run has stored some items but not finished ingesting, by
/// polling the queue read-only (the test must not take part in creating the database). Bounded
/// to 30 s of polling; returns whether the kill happened mid-ingestion.
pub async fn kill_mid_ingest(child: &mut tokio::process::Child, db: &Path) -> bool {
    let mut killed = false;
    for _ in 0..6_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Ok(conn) =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        else {
            continue;
        };
        let Ok((complete, stored)) = conn.query_row(
            "SELECT ingest_complete, (SELECT count(*) FROM items) FROM runs ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, bool>(0)?, r.get::<_, i64>(1)?)),
        ) else {
            continue;
        };
        if complete {
            break;
        }
        if stored > 0 {
            child.start_kill().unwrap();
            killed = true;
            break;
        }
    }
    let status = child.wait().await.unwrap();
    if killed {
        // The process died of the signal, not of its own accord just before it.
        assert_died_of_sigkill(&status, "killed mid-ingest");
    }
    killed
}
