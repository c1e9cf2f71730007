//! Shared harness: an in-process emulator on 127.0.0.1:0 and the real binary pointed at it.
#![allow(dead_code)]

mod cli;
pub mod html;
mod json;
mod process;
mod queue;
pub mod raw;
mod records;

pub use cli::*;
pub use json::*;
pub use process::*;
pub use queue::*;
pub use records::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

use b2b_convert::emulator::{self, Emulator, EmulatorConfig, Tenant};

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

/// A temporary directory, and the path of a database `q.db` in it.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    (dir, db)
}

/// The sample tenant's input CSV (`sample-data/users.csv`).
pub fn sample_csv() -> PathBuf {
    repo_path("sample-data/users.csv")
}

/// A generated tenant of `n` users and its input CSV, written as `dir/users.csv`.
pub fn generated(n: usize, seed: u64, dir: &Path) -> (Tenant, PathBuf) {
    let tenant = Tenant::generate(n, seed);
    let csv = dir.join("users.csv");
    tenant.write_csv(&csv).unwrap();
    (tenant, csv)
}

/// A generated tenant served by an emulator, with its input CSV (`users.csv`) in a temporary
/// directory that also holds whatever else the test writes.
pub struct Generated {
    pub dir: tempfile::TempDir,
    pub tenant: Tenant,
    pub csv: PathBuf,
    pub emu: Emulator,
}

impl Generated {
    /// `n` users generated from `seed`, served by an emulator whose configuration `change`
    /// adjusts.
    pub async fn start(n: usize, seed: u64, change: impl FnOnce(&mut EmulatorConfig)) -> Generated {
        let dir = tempfile::tempdir().unwrap();
        let (tenant, csv) = generated(n, seed, dir.path());
        let mut config = EmulatorConfig::new(tenant.clone());
        change(&mut config);
        let emu = start(config).await;
        Generated {
            dir,
            tenant,
            csv,
            emu,
        }
    }

    /// As [`Generated::start`], on an emulator whose buckets are Graph's scaled ×`scale`: a test's
    /// `--rate` is then the pace, not Graph's real refill, and no test waits on wall-clock
    /// throttling.
    pub async fn scaled(
        n: usize,
        seed: u64,
        scale: f64,
        change: impl FnOnce(&mut EmulatorConfig),
    ) -> Generated {
        Generated::start(n, seed, |c| {
            c.bucket_scale = scale;
            change(c);
        })
        .await
    }
}
