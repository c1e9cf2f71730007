//! `demo`: the full rehearsal on the shipped sample tenant — an in-process emulator with some
//! throttling and faults switched on, a dry run of the sample CSV, then the live run, and the
//! reports a change board and a service desk would read.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::common::Endpoints;
use super::run::{self, NewRun};
use crate::cli::DemoArgs;
use crate::emulator::{self, EmulatorConfig, Tenant};
use crate::exit::ExitStatus;
use crate::graph::{Credentials, Secret};
use crate::item::{RunMode, RunOptions, SourceSpec};

const SAMPLE_CSV: &str = include_str!("../../sample-data/users.csv");

pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitStatus> {
    let dir = args.out_dir.unwrap_or_else(|| {
        PathBuf::from("demo-output").join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string())
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let csv = dir.join("users.csv");
    std::fs::write(&csv, SAMPLE_CSV).with_context(|| format!("writing {}", csv.display()))?;
    let db = dir.join("b2b-convert.db");

    // A rehearsal, not a showcase: answers are slow, some are lost or fail, and the invitation
    // bucket is small enough that the run is throttled and has to honour Retry-After.
    let mut config = EmulatorConfig::new(Tenant::sample());
    config.latency = std::time::Duration::from_millis(15);
    config.fault_rate = 0.05;
    config.lost_response_rate = 0.05;
    config.invitations_per_5s = 25;
    config.seed = 7;
    let emu = emulator::start(config, "127.0.0.1:0".parse()?).await?;
    println!(
        "emulator: sample tenant {} at {}",
        emu.tenant_id(),
        emu.base_url()
    );

    let env: std::collections::HashMap<String, String> = emu.client_env().into_iter().collect();
    let credentials = || -> anyhow::Result<Credentials> {
        Ok(Credentials::ClientSecret {
            tenant_id: env
                .get("AZURE_TENANT_ID")
                .context("emulator gave no tenant")?
                .clone(),
            client_id: env
                .get("AZURE_CLIENT_ID")
                .context("emulator gave no app")?
                .clone(),
            secret: Secret::new(
                env.get("AZURE_CLIENT_SECRET")
                    .context("emulator gave no secret")?
                    .clone(),
            ),
        })
    };
    let new_run = |mode: RunMode, report: &Path| NewRun {
        source: SourceSpec::Csv {
            path: csv.to_string_lossy().into_owned(),
        },
        mode,
        options: RunOptions {
            silent: true,
            rate: 40.0,
            concurrency: 8,
            ..Default::default()
        },
        endpoints: Endpoints::new(emu.base_url(), emu.base_url()),
        yes: true,
        report: Some(report.to_path_buf()),
        only: None,
    };

    println!("\n== 1. dry run: validate every user, send nothing ==");
    let dry_report = dir.join("dry-run-report.html");
    run::start(&db, new_run(RunMode::DryRun, &dry_report), credentials()?).await?;

    println!("\n== 2. live run: convert, through throttling, faults and lost answers ==");
    let live_report = dir.join("live-run-report.html");
    run::start(&db, new_run(RunMode::Live, &live_report), credentials()?).await?;

    let invitations = emu.invitations().len();
    println!(
        "\nthe emulator accepted {invitations} invitations (one per converted user, none twice)"
    );
    println!(
        "dry-run report (for the change board): {}",
        dry_report.display()
    );
    println!(
        "live-run report (for the service desk): {}",
        live_report.display()
    );
    // Name the program the way it was started (`target/release/b2b-convert` under `cargo run`),
    // so the hint runs as printed whether or not `b2b-convert` is on PATH.
    let me = std::env::args()
        .next()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "b2b-convert".to_string());
    println!(
        "queue: {} (try `{me} --db {} runs`)",
        db.display(),
        db.display()
    );
    emu.shutdown().await;
    // Blocked users are the point of the sample tenant; the demo itself succeeded.
    Ok(ExitStatus::Success)
}
