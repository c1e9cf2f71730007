//! Spawned runs: bounded waits on counts, signals, and kills asserted to be kills.

use std::path::Path;
use std::time::Duration;

use b2b_convert::emulator::Emulator;

use super::{command, Ran, COMMAND_TIMEOUT};

/// Polls `reached` every `every`, at most `polls` times, until it holds. Bounded, and not an
/// assertion: the caller checks what it needs afterwards.
pub async fn poll_until(mut reached: impl FnMut() -> bool, every: Duration, polls: u32) {
    for _ in 0..polls {
        if reached() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits (bounded) until the emulator accepted `n` invitations in all, and asserts it did.
pub async fn wait_for_invitations(emu: &Emulator, n: usize) {
    poll_until(
        || emu.invitations().len() >= n,
        Duration::from_millis(10),
        6_000,
    )
    .await;
    assert!(emu.invitations().len() >= n, "the run got going");
}

/// SIGKILLs `child` and asserts it died of the signal (`context` names the moment).
pub async fn sigkill(child: &mut tokio::process::Child, context: &str) {
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_died_of_sigkill(&status, context);
}

/// Starts `run_args`, SIGKILLs it once the tenant accepted the first of `targets` invitations,
/// then a `resume --yes` killed at each next target in turn.
pub async fn kill_at_invitation_counts(
    emu: &Emulator,
    db: &Path,
    run_args: &[&str],
    targets: &[usize],
) {
    for (i, &target) in targets.iter().enumerate() {
        let args = if i == 0 {
            run_args
        } else {
            &["resume", "--yes"][..]
        };
        let mut child = command(emu, db, args).spawn().unwrap();
        poll_until(
            || emu.invitations().len() >= target,
            Duration::from_millis(10),
            12_000,
        )
        .await;
        sigkill(&mut child, "killed mid-run, not ended").await;
    }
}

/// Sends `signal` (`-TERM`, `-STOP`, `-CONT`, …) to a process, through kill(1): no unsafe code
/// in tests.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// A spawned command's outcome once it ends, within [`COMMAND_TIMEOUT`].
pub async fn output_of(child: tokio::process::Child) -> Ran {
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("the command ends")
        .unwrap();
    Ran::from(out)
}

/// Asserts that a child stopped with `start_kill` died of SIGKILL, not of its own accord just
/// before it (a run that had already ended would make a crash test pass without crashing
/// anything). Unix only: elsewhere `start_kill` is `TerminateProcess`, whose exit code a process
/// could also have chosen, so there is nothing to tell apart.
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
