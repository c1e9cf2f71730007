//! Running the binary: its command line, environment and outcome.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Output, Stdio};

use b2b_convert::emulator::Emulator;
use b2b_convert::item::ItemState;
use serde_json::Value;

use super::{items, user_ids, BIN, COMMAND_TIMEOUT};

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
    /// Asserts the exit code, showing both outputs when it differs.
    pub fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.code, code,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
    }

    /// Asserts the command finished: exit 0, or 3 when some users need attention.
    pub fn assert_finished(&self) {
        assert!(
            [0, 3].contains(&self.code),
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
    }

    /// Asserts stdout contains `text`, showing stdout when it does not.
    pub fn assert_stdout_has(&self, text: &str) {
        assert!(
            self.stdout.contains(text),
            "no {text:?} in stdout:\n{}",
            self.stdout
        );
    }

    /// Asserts stderr contains `text`, showing stderr when it does not.
    pub fn assert_stderr_has(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "no {text:?} in stderr:\n{}",
            self.stderr
        );
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

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

impl From<Output> for Ran {
    fn from(out: Output) -> Ran {
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` to its end, within [`COMMAND_TIMEOUT`].
pub async fn run_command(mut cmd: tokio::process::Command) -> Ran {
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish in {COMMAND_TIMEOUT:?}"))
        .expect("binary runs");
    Ran::from(out)
}

pub async fn run(emu: &Emulator, db: &Path, args: &[&str]) -> Ran {
    run_command(command(emu, db, args)).await
}

/// `run --csv CSV FLAGS…`, the flags written as typed on a command line: split at white space,
/// so none may hold any (pass paths and values with spaces to [`run`] as arguments).
pub fn run_args<'a>(csv: &'a Path, flags: &'a str) -> Vec<&'a str> {
    let mut args = vec!["run", "--csv", csv.to_str().unwrap()];
    args.extend(flags.split_whitespace());
    args
}

/// Runs `run --csv CSV FLAGS…` (see [`run_args`]).
pub async fn run_csv(emu: &Emulator, db: &Path, csv: &Path, flags: &str) -> Ran {
    run(emu, db, &run_args(csv, flags)).await
}

/// Asserts `text` contains `part`, showing `text` when it does not.
pub fn assert_has(text: &str, part: &str) {
    assert!(text.contains(part), "no {part:?} in:\n{text}");
}

/// The sample tenant's dry run (`run --csv sample-data/users.csv --dry-run`), which exits 3: the
/// sample has blocked users.
pub async fn sample_dry_run(emu: &Emulator, db: &Path) -> Ran {
    let out = run_csv(emu, db, &super::sample_csv(), "--dry-run").await;
    out.assert_exit(3);
    out
}

/// Runs `run --csv CSV FLAGS…` (see [`run_args`]), which must finish (exit 0, or 3 when some users
/// need attention), and returns its run id.
pub async fn finished_run(emu: &Emulator, db: &Path, csv: &Path, flags: &str) -> i64 {
    let out = run_csv(emu, db, csv, flags).await;
    out.assert_finished();
    out.run_id()
}

/// `status [RUN] --json` (the latest run without one), which must exit 0, parsed.
pub async fn status_json(emu: &Emulator, db: &Path, run_id: Option<i64>) -> Value {
    let id = run_id.map(|id| id.to_string());
    let mut args = vec!["status"];
    args.extend(id.as_deref());
    args.push("--json");
    let out = run(emu, db, &args).await;
    out.assert_exit(0);
    out.json()
}

/// Writes `report RUN --out PATH extra…` (which must exit 0 and name the file) and returns the
/// report's text.
pub async fn report(emu: &Emulator, db: &Path, run_id: i64, path: &Path, extra: &[&str]) -> String {
    let id = run_id.to_string();
    let mut args = vec!["report", id.as_str(), "--out", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(emu, db, &args).await;
    out.assert_exit(0);
    assert!(
        out.stdout.contains(&path.display().to_string()),
        "{}",
        out.stdout
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The binary with only `env` in its environment (besides `PATH`).
pub fn command_with_env(
    env: &[(String, String)],
    db: &Path,
    args: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary without an emulator environment (usage and input errors).
pub async fn run_plain(db: &Path, args: &[&str]) -> Ran {
    run_command(command_with_env(&[], db, args)).await
}

/// Starts `b2b-convert emulator ARGS… --listen 127.0.0.1:0` and reads the five `NAME=value`
/// lines of the client environment it prints.
pub async fn spawn_emulator_command(
    args: &[&str],
) -> (tokio::process::Child, Vec<(String, String)>) {
    use tokio::io::AsyncBufReadExt as _;
    let mut emu = tokio::process::Command::new(BIN)
        .arg("emulator")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(emu.stdout.take().unwrap()).lines();
    let mut env = Vec::new();
    while env.len() < 5 {
        let line = tokio::time::timeout(COMMAND_TIMEOUT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("five NAME=value lines");
        let (k, v) = line.split_once('=').expect("NAME=value");
        env.push((k.to_string(), v.to_string()));
    }
    (emu, env)
}

/// The users a dry run over `csv` (`run --csv CSV --dry-run FLAGS…`) says would convert.
pub async fn would_convert(emu: &Emulator, db: &Path, csv: &Path, flags: &str) -> BTreeSet<String> {
    let out = run_csv(emu, db, csv, &format!("--dry-run {flags}")).await;
    out.assert_finished();
    user_ids(&items(db, out.run_id()), ItemState::WouldConvert)
}
