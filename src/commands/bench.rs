//! `bench`: measurements written up in docs/performance.md. Never run by the tests.
//!
//! - `ingest`: a generated CSV of N rows into a fresh queue: rows per second and peak RSS, at N
//!   and N/10 rows so flat memory shows as two equal figures.
//! - `convert`: a live run over a generated tenant against Graph-shaped buckets scaled by
//!   `--scale`: invitations per second as a share of the write-bucket ceiling, the share of
//!   requests that drew a 429, and Graph requests per converted user.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;

use super::common::Endpoints;
use super::run::{self, NewRun};
use crate::cli::{BenchArgs, BenchKind};
use crate::emulator::{self, EmulatorConfig, Tenant};
use crate::exit::ExitStatus;
use crate::graph::{Credentials, Secret};
use crate::item::{ItemState, RunMode, RunOptions, SourceSpec};
use crate::queue::Queue;

pub async fn bench(args: BenchArgs) -> anyhow::Result<ExitStatus> {
    let tmp;
    let dir: PathBuf = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempdir()?;
            tmp.clone()
        }
    };
    match args.kind {
        BenchKind::Ingest => ingest(&dir, args.users),
        BenchKind::Convert => convert(&dir, args.users, args.scale).await,
    }
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("b2b-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn write_rows(path: &Path, rows: usize) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "id,userPrincipalName,externalEmail")?;
    for i in 0..rows {
        writeln!(
            w,
            "{:08x}-0000-4000-8000-{:012x},partner{i}@contoso.com,partner{i}@fabrikam{}.example",
            i,
            i,
            i % 97
        )?;
    }
    Ok(())
}

fn ingest(dir: &Path, rows: usize) -> anyhow::Result<ExitStatus> {
    println!("| rows | seconds | rows/s | peak RSS after (MiB) |");
    println!("|---:|---:|---:|---:|");
    for n in [rows / 10, rows] {
        let csv = dir.join(format!("rows-{n}.csv"));
        write_rows(&csv, n)?;
        let db = dir.join(format!("ingest-{n}.db"));
        let _ = std::fs::remove_file(&db);
        let queue = Queue::open(&db)?;
        let run_id = queue.create_run(
            &SourceSpec::Csv {
                path: csv.to_string_lossy().into_owned(),
            },
            RunMode::DryRun,
            &RunOptions::default(),
            None,
            "https://graph.microsoft.com",
        )?;
        let started = Instant::now();
        crate::source::ingest::ingest_csv(&queue, run_id, &csv)?;
        queue.finish_ingest(run_id)?;
        let secs = started.elapsed().as_secs_f64();
        let total = queue.counts(run_id)?.total;
        anyhow::ensure!(total == n as u64, "ingested {total} of {n} rows");
        println!(
            "| {n} | {secs:.2} | {:.0} | {:.1} |",
            n as f64 / secs,
            peak_rss_mib().unwrap_or(f64::NAN)
        );
    }
    Ok(ExitStatus::Success)
}

async fn convert(dir: &Path, users: usize, scale: f64) -> anyhow::Result<ExitStatus> {
    let tenant = Tenant::generate(users, 42);
    let csv = dir.join("bench-users.csv");
    tenant.write_csv(&csv)?;
    let mut config = EmulatorConfig::new(tenant);
    config.bucket_scale = scale;
    config.latency = std::time::Duration::from_millis(20);
    let emu = emulator::start(config, "127.0.0.1:0".parse()?).await?;
    let env: std::collections::HashMap<String, String> = emu.client_env().into_iter().collect();
    let credentials = Credentials::ClientSecret {
        tenant_id: env["AZURE_TENANT_ID"].clone(),
        client_id: env["AZURE_CLIENT_ID"].clone(),
        secret: Secret::new(env["AZURE_CLIENT_SECRET"].clone()),
    };
    // The write bucket (3,000 per 150 s) sustains 20 writes/s; scaled with the emulator.
    let ceiling = 20.0 * scale;
    let db = dir.join("bench-convert.db");
    let _ = std::fs::remove_file(&db);
    let started = Instant::now();
    run::start(
        &db,
        NewRun {
            source: SourceSpec::Csv {
                path: csv.to_string_lossy().into_owned(),
            },
            mode: RunMode::Live,
            options: RunOptions {
                silent: true,
                rate: ceiling,
                concurrency: 32,
                ..Default::default()
            },
            endpoints: Endpoints {
                graph_url: emu.base_url(),
                login_url: emu.base_url(),
            },
            yes: true,
            report: None,
        },
        credentials,
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let queue = Queue::open(&db)?;
    let run = queue.latest_run()?.context("bench run missing")?;
    let counts = queue.counts(run.id)?;
    let converted = counts.state(ItemState::Converted);
    let stats = emu.stats();
    let throttled = stats["throttled"].as_u64().unwrap_or(0);
    let requests: u64 = stats["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.contains("/v1.0/"))
                .flat_map(|(_, v)| v.as_object().into_iter().flatten())
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let invitations = emu.invitations().len();
    emu.shutdown().await;
    let rate = converted as f64 / secs;
    println!("| users | converted | invitations | seconds | invitations/s | ceiling/s | share of ceiling | 429 share | requests/converted user |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {users} | {converted} | {invitations} | {secs:.1} | {rate:.1} | {ceiling:.0} | {:.1}% | {:.2}% | {:.3} |",
        100.0 * rate / ceiling,
        100.0 * throttled as f64 / requests.max(1) as f64,
        counts.graph_requests as f64 / converted.max(1) as f64,
    );
    Ok(ExitStatus::Success)
}
