//! `bench`: measurements written up in docs/performance.md. Never run by the tests.
//!
//! - `ingest`: a generated CSV of N/10 and of N rows, each ingested into a fresh queue in a
//!   process of its own (peak RSS only grows within a process): rows per second and peak RSS, so
//!   flat memory shows as two close figures.
//! - `pilot`: a 10-user live pilot on a large generated tenant, after a first run built the
//!   tenant's address index: seconds from the start of the run to its first invitation, beside
//!   the reference of the same run — paging through every user's addresses (999 a page at the
//!   former default pace of 20/s), which every pass did before its first invitation until the
//!   index was kept.
//! - `convert`: live runs over a generated tenant against Graph-shaped buckets scaled by
//!   `--scale`, 80 ms latency, the tool's default pacing, two cases: the write bucket full as at
//!   the start of a real run (measured against the burst-aware floor computed from the
//!   buckets), and drained first so the sustained ceiling binds from the start (measured
//!   against the write refill): invitations per second, the share of requests that drew a 429,
//!   and Graph requests per converted user.
//! - `dry-run`: dry runs of a CSV naming every user of a generated tenant (N/5 and N users),
//!   at 0 and 80 ms latency, against Graph-sized buckets: the default limits (`--rate 30`,
//!   `--read-budget 8000`) beside the same run with both lifted (the reference), each reading
//!   the users by key (15 a request, many at once) and by the tool's choice (pages of 999 when
//!   they take fewer requests): seconds, the ratio to the reference, 429s, requests and the
//!   most requests the emulator answered at once.
//! - `resend`: a live run of N users at the default pacing (scaled), a `track`, then `resend`
//!   of every pending user at 80 ms latency: invitations per second against the settle rate.

use std::collections::HashMap;
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
    let (dir, temporary): (PathBuf, bool) = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), false)
        }
        None => (tempdir()?, true),
    };
    let result = match args.kind {
        BenchKind::Ingest => ingest(&dir, args.users),
        BenchKind::Convert => convert(&dir, args.users, args.scale).await,
        BenchKind::Pilot => pilot(&dir, args.users).await,
        BenchKind::DryRun => dry_runs(&dir, args.users).await,
        BenchKind::Resend => resend(&dir, args.users, args.scale).await,
    };
    if temporary {
        // Generated inputs and queues (hundreds of MB at a million rows): not worth keeping.
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
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

/// Whose CPU time [`cpu_secs`] reads.
#[derive(Clone, Copy)]
enum CpuOf {
    /// This process (`RUSAGE_SELF`).
    Process,
    /// Its waited-for children (`RUSAGE_CHILDREN`).
    Children,
}

/// CPU seconds (user + system) of this process or of its waited-for children. On a shared
/// machine wall time drifts with the load; CPU time much less, so the bench shows both beside the
/// reference's.
#[cfg(unix)]
fn cpu_secs(of: CpuOf) -> f64 {
    let who = match of {
        CpuOf::Process => libc::RUSAGE_SELF,
        CpuOf::Children => libc::RUSAGE_CHILDREN,
    };
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes the struct it is given, which is zero-initialised and ours.
    let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: getrusage returned 0, so the struct is filled in.
    let u = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Elsewhere the bench reports no CPU time (NaN prints as such), as it reports no peak RSS
/// without `/proc`.
#[cfg(not(unix))]
fn cpu_secs(_of: CpuOf) -> f64 {
    f64::NAN
}

/// Random GUIDs and addresses, as a real export has: sequential keys would keep every index
/// insert at the right edge of its B-tree and flatter the ingest figure.
fn write_rows(path: &Path, rows: usize) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "id,userPrincipalName,externalEmail")?;
    for _ in 0..rows {
        let id = uuid::Uuid::new_v4();
        let mail = uuid::Uuid::new_v4().simple().to_string();
        writeln!(
            w,
            "{id},p{}@contoso.com,{}@fabrikam{}.example",
            &mail[..12],
            &mail[12..24],
            &mail[24..26]
        )?;
    }
    Ok(())
}

/// Set in the environment of a child `bench ingest` process: ingest exactly `--users` rows and
/// print one table row. Peak RSS (VmHWM) only ever grows within a process, so each size is
/// measured in a process of its own.
const INGEST_CHILD_ENV: &str = "B2B_BENCH_INGEST_CHILD";

fn ingest(dir: &Path, rows: usize) -> anyhow::Result<ExitStatus> {
    if std::env::var_os(INGEST_CHILD_ENV).is_some() {
        return ingest_one(dir, rows);
    }
    println!(
        "| rows | seconds | rows/s | `sqlite3 .import` s | ratio | CPU s | `sqlite3` CPU s | CPU ratio | of which finish s | counts s | RSS before ingest (MiB) | peak RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe().context("locating this executable")?;
    for n in [rows / 10, rows] {
        let out = std::process::Command::new(&exe)
            .args(["bench", "ingest", "--users", &n.to_string(), "--work-dir"])
            .arg(dir)
            .env(INGEST_CHILD_ENV, "1")
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        anyhow::ensure!(out.status.success(), "the {n}-row child failed");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(ExitStatus::Success)
}

/// One size, in this process: generate, ingest into a fresh queue, print a row.
fn ingest_one(dir: &Path, n: usize) -> anyhow::Result<ExitStatus> {
    let csv = dir.join(format!("rows-{n}.csv"));
    write_rows(&csv, n)?;
    let db = fresh_db(dir, &format!("ingest-{n}.db"));
    let queue = Queue::open(&db)?;
    let run_id = queue.create_run(crate::queue::NewRun {
        source: &csv_source(&csv),
        mode: RunMode::DryRun,
        options: &RunOptions::default(),
        tenant_id: None,
        graph_url: "https://graph.microsoft.com",
    })?;
    let before = peak_rss_mib().unwrap_or(f64::NAN);
    let cpu_before = cpu_secs(CpuOf::Process);
    let started = Instant::now();
    crate::source::ingest::ingest_csv(&queue, run_id, &csv)?;
    let finishing = Instant::now();
    queue.finish_ingest(run_id)?;
    let finish_secs = finishing.elapsed().as_secs_f64();
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(CpuOf::Process) - cpu_before;
    let peak = peak_rss_mib().unwrap_or(f64::NAN);
    // What `status` and `runs` read: every count of the run.
    let counted = Instant::now();
    let total = queue.counts(run_id)?.total;
    let counts_secs = counted.elapsed().as_secs_f64();
    anyhow::ensure!(total == n as u64, "ingested {total} of {n} rows");
    let children_before = cpu_secs(CpuOf::Children);
    let (reference, cpu_reference) = match sqlite3_import(dir, &csv, n) {
        Some(r) => {
            let rc = cpu_secs(CpuOf::Children) - children_before;
            (
                format!("{r:.2} | {:.1}×", secs / r),
                format!("{cpu:.2} | {rc:.2} | {:.1}×", cpu / rc),
            )
        }
        None => ("n/a | n/a".into(), format!("{cpu:.2} | n/a | n/a")),
    };
    println!(
        "| {n} | {secs:.2} | {:.0} | {reference} | {cpu_reference} | {finish_secs:.2} | {counts_secs:.3} | {before:.1} | {peak:.1} |",
        n as f64 / secs,
    );
    Ok(ExitStatus::Success)
}

/// The floor: SQLite's own CLI importing the same file into a table without indexes, timed
/// in the same process run. `None` when no `sqlite3` is installed.
fn sqlite3_import(dir: &Path, csv: &Path, n: usize) -> Option<f64> {
    let db = dir.join(format!("reference-{n}.db"));
    let _ = std::fs::remove_file(&db);
    let started = Instant::now();
    let status = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(".mode csv")
        .arg(format!(".import {} users", csv.display()))
        .stdout(std::process::Stdio::null())
        .status()
        .ok()?;
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&db);
    status.success().then_some(secs)
}

/// One `bench convert` case.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// `true`: the run lists its users with a `$filter`; `false`: a CSV over every user.
    filter: bool,
    /// Empty the app's write bucket before the run, so the sustained ceiling binds from the
    /// first invitation instead of after a 3,000 × scale burst.
    drained: bool,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{}, {} bucket",
            if self.filter { "filter" } else { "csv" },
            if self.drained { "drained" } else { "full" }
        )
    }
}

/// The `$filter` of the filter cases: every user (internal partners are Members and Guests), so
/// both sources cover the same population.
const BENCH_FILTER: &str = "userType in ('Member','Guest')";

/// Added by the emulator before each answer: Graph's answers to invitations take about this.
const BENCH_LATENCY: std::time::Duration = std::time::Duration::from_millis(80);

/// The shortest time `users` invitations can take when both buckets start full (the
/// burst-aware floor, docs/report-json.md): the write bucket (3,000 per 150 s) pays
/// 3,000 at once then 20/s, `/invitations` (150 per 5 s) 150 at once then 30/s; all scaled.
pub fn burst_aware_floor_seconds(users: usize, scale: f64) -> f64 {
    let n = users as f64;
    ((n - 3000.0 * scale) / (20.0 * scale))
        .max((n - 150.0 * scale) / (30.0 * scale))
        .max(0.0)
}

async fn convert(dir: &Path, users: usize, scale: f64) -> anyhow::Result<ExitStatus> {
    // The write bucket (3,000 per 150 s per app+tenant) sustains 20 writes/s; /invitations
    // (150 per 5 s) allows 30/s. The run uses the tool's default pacing, both rates scaled:
    // start at the /invitations limit, settle just under the write refill on pressure.
    let ceiling = 20.0 * scale;
    let rate = crate::config::DEFAULT_RATE * scale;
    let settle = crate::config::DEFAULT_SETTLE_RATE * scale;
    let floor = burst_aware_floor_seconds(users, scale);
    let header = format!(
        "users {users}, scale {scale}, latency {} ms: write bucket {:.0} writes refilling \
         {ceiling:.0}/s; /invitations bucket {:.0} per 5 s; client --rate {rate:.1}, settle \
         {settle:.1}/s, --concurrency 32; burst-aware floor with both buckets full {floor:.1} s \
         if every user were invited",
        BENCH_LATENCY.as_millis(),
        3000.0 * scale,
        150.0 * scale
    );
    let cases = [
        Case {
            filter: false,
            drained: false,
        },
        Case {
            filter: false,
            drained: true,
        },
    ];
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for case in cases {
        let r = convert_case(dir, users, scale, rate, settle, case).await?;
        // Full bucket: the invitations' span against the floor; drained: the sustained rate
        // against the write refill.
        let reference = if case.drained {
            format!(
                "{:.1}% of {ceiling:.0}/s",
                100.0 * r.sustained_rate / ceiling
            )
        } else {
            // The floor of the invitations actually sent (the blocked and skipped send none).
            let floor = burst_aware_floor_seconds(r.converted as usize, scale);
            format!(
                "{:.1}% of the floor ({floor:.1} s)",
                100.0 * floor / r.span_seconds.max(1e-3)
            )
        };
        rows.push(format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {reference} | {} | {:.2}% | {:.2}% | {:.3} |",
            case.name(),
            r.converted,
            r.seconds,
            r.span_seconds,
            r.converted as f64 / r.span_seconds.max(1e-3),
            r.sustained_rate,
            r.throttled,
            100.0 * r.throttled as f64 / r.emulator_requests.max(1) as f64,
            100.0 * r.client_throttled as f64 / r.client_requests.max(1) as f64,
            r.client_requests as f64 / r.converted.max(1) as f64,
        ));
        notes.push(format!(
            "- {}: 429s at {} s after the first invitation; invitations per second, second by \
             second: {}",
            case.name(),
            fmt_list(&r.throttled_at_s),
            fmt_list(&r.per_second)
        ));
    }
    println!();
    println!("{header}");
    println!();
    println!(
        "| case | converted | run seconds | first→last invitation s | invitations/s (span) \
         | invitations/s (sustained window) | against the reference | 429s \
         | 429 share (emulator) | 429 share (client) | requests/converted user |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    println!();
    for note in notes {
        println!("{note}");
    }
    Ok(ExitStatus::Success)
}

/// The pilot's users: the first ten the generator made.
const PILOT_USERS: usize = 10;

async fn pilot(dir: &Path, users: usize) -> anyhow::Result<ExitStatus> {
    let t0 = Instant::now();
    let tenant = Tenant::generate(users, 42);
    // Two pilots of different users: the second must not find the first's already converted.
    let mut pilot_csvs = Vec::new();
    for (i, group) in tenant.users.chunks(PILOT_USERS).take(2).enumerate() {
        let path = dir.join(format!("pilot-{i}.csv"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(w, "id")?;
        for u in group {
            writeln!(w, "{}", u.id)?;
        }
        pilot_csvs.push(path);
    }
    let generated = t0.elapsed().as_secs_f64();
    let outsider = tenant
        .users
        .get(3 * PILOT_USERS)
        .map(|u| u.id.clone())
        .context("--users must be more than 30")?;
    let mut config = EmulatorConfig::new(tenant);
    config.latency = BENCH_LATENCY;
    let emu = emulator::start(config, "127.0.0.1:0".parse()?).await?;
    let env = client_env(&emu);
    let credentials = || client_secret(&env);
    let db = fresh_db(dir, "bench-pilot.db");
    let pilot_run = |mode, csv: &Path| new_run(&emu, csv_source(csv), mode);

    // Reference: what every pass did before its first invitation until the index was kept.
    let graph = crate::graph::GraphClient::new(
        crate::graph::GraphConfig::new(emu.base_url(), emu.base_url(), credentials()),
        crate::graph::Limiter::new(20.0),
    )?;
    let started = Instant::now();
    let mut pages = 0u64;
    let mut link: Option<String> = None;
    loop {
        let page = graph.list_user_addresses_page(link.as_deref()).await?;
        pages += 1;
        match page.next_link {
            Some(next) => link = Some(next),
            None => break,
        }
    }
    let listing = started.elapsed().as_secs_f64();

    // The first run on the tenant: a dry-run pilot, which builds the index (a full delta round).
    let listed_before = requests_with(&emu.stats(), "GET /v1.0/users");
    let started = Instant::now();
    run::start(
        &db,
        pilot_run(RunMode::DryRun, &pilot_csvs[0]),
        credentials(),
    )
    .await?;
    let indexing = started.elapsed().as_secs_f64();
    let delta_requests = requests_with(&emu.stats(), "GET /v1.0/users/delta");
    // Listing pages and the pilot's few look-ups (a dry run reads users with plain GETs).
    let listed = requests_with(&emu.stats(), "GET /v1.0/users") - listed_before;

    // The live pilot, then the same after one user changed (a resume reads the same way).
    let mut after = Vec::new();
    for change in [false, true] {
        if change {
            emu.delete_user(&outsider);
        }
        let before_log = request_log(&emu.base_url()).await?.len();
        let at = emu.clock().now();
        let started = Instant::now();
        let csv = &pilot_csvs[usize::from(change)];
        run::start(&db, pilot_run(RunMode::Live, csv), credentials()).await?;
        let whole = started.elapsed().as_secs_f64();
        let log = request_log(&emu.base_url()).await?;
        let first = log
            .get(before_log..)
            .unwrap_or_default()
            .iter()
            .filter(|e| e["method"] == "POST" && e["path"] == "/v1.0/invitations")
            .filter_map(|e| e["atMs"].as_u64())
            .min()
            .context("the pilot sent no invitation")?;
        after.push(((first as f64 - at.as_millis() as f64) / 1000.0, whole));
    }
    let rss = peak_rss_mib().unwrap_or(f64::NAN);
    emu.shutdown().await;

    println!(
        "tenant {users} users (generated in {generated:.1} s), emulator latency {} ms, pilot {PILOT_USERS} users, default pacing",
        BENCH_LATENCY.as_millis()
    );
    println!();
    println!("| figure | seconds |");
    println!("|---|---:|");
    println!("| reference: listing every user's addresses ({pages} pages of 999 at 20/s), what each pass did before its first invitation | {listing:.2} |");
    println!("| first run on the tenant (dry-run pilot, builds the index: {delta_requests} delta request, {listed} user listing and look-up requests) | {indexing:.2} |");
    println!(
        "| live pilot: start → first invitation | {:.2} |",
        after[0].0
    );
    println!("| live pilot: whole run | {:.2} |", after[0].1);
    println!(
        "| live pilot after one user left the tenant: start → first invitation | {:.2} |",
        after[1].0
    );
    println!(
        "| live pilot after one user left the tenant: whole run | {:.2} |",
        after[1].1
    );
    println!();
    println!("peak RSS of the bench process (emulator and tool together): {rss:.0} MiB");
    Ok(ExitStatus::Success)
}

/// `{"<METHOD> <template>": {"<status>": n}}` summed over statuses.
fn requests_with(stats: &serde_json::Value, key: &str) -> u64 {
    stats["requests"][key]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

fn fmt_list(v: &[f64]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    let shown: Vec<String> = v.iter().take(40).map(|x| format!("{x:.1}")).collect();
    let more = if v.len() > 40 {
        format!(" … ({} in all)", v.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

struct CaseResult {
    converted: u64,
    seconds: f64,
    /// From the first to the last successful invitation.
    span_seconds: f64,
    /// Invitations per second over the middle 80% of the span between the first and the last
    /// successful invitation (the emulator's request log, millisecond timestamps).
    sustained_rate: f64,
    /// 429s the emulator answered during the run (the drain's excluded).
    throttled: u64,
    /// Requests to `/v1.0/` the emulator counted during the run, `$batch` sub-requests included.
    emulator_requests: u64,
    /// Requests the run journaled (one per HTTP attempt) and how many of them drew a 429.
    client_requests: u64,
    client_throttled: u64,
    /// When the emulator answered 429, in seconds after the first successful invitation.
    throttled_at_s: Vec<f64>,
    /// Successful invitations in each whole second after the first one.
    per_second: Vec<f64>,
}

/// Sum of the emulator's `/v1.0/` request counts and its 429 count.
fn emulator_counts(stats: &serde_json::Value) -> (u64, u64) {
    let requests = stats["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.contains("/v1.0/"))
                .flat_map(|(_, v)| v.as_object().into_iter().flatten())
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    (requests, stats["throttled"].as_u64().unwrap_or(0))
}

/// `dir/name`, with any file left there by an earlier bench removed.
fn fresh_db(dir: &Path, name: &str) -> PathBuf {
    let db = dir.join(name);
    let _ = std::fs::remove_file(&db);
    db
}

fn csv_source(csv: &Path) -> SourceSpec {
    SourceSpec::Csv {
        path: csv.to_string_lossy().into_owned(),
    }
}

/// A generated tenant of `users` behind Graph-shaped buckets scaled by `scale` and
/// [`BENCH_LATENCY`], its users written to `csv`.
async fn scaled_emulator(
    users: usize,
    csv: &Path,
    scale: f64,
) -> anyhow::Result<emulator::Emulator> {
    let tenant = Tenant::generate(users, 42);
    tenant.write_csv(csv)?;
    let mut config = EmulatorConfig::new(tenant);
    config.bucket_scale = scale;
    config.latency = BENCH_LATENCY;
    emulator::start(config, "127.0.0.1:0".parse()?).await
}

fn client_env(emu: &emulator::Emulator) -> HashMap<String, String> {
    emu.client_env().into_iter().collect()
}

/// The emulator's app signing in with its client secret (from [`client_env`]).
fn client_secret(env: &HashMap<String, String>) -> Credentials {
    Credentials::ClientSecret {
        tenant_id: env["AZURE_TENANT_ID"].clone(),
        client_id: env["AZURE_CLIENT_ID"].clone(),
        secret: Secret::new(env["AZURE_CLIENT_SECRET"].clone()),
    }
}

/// A silent run of `source` against `emu`, confirmed in advance, reporting nothing.
fn new_run(emu: &emulator::Emulator, source: SourceSpec, mode: RunMode) -> NewRun {
    NewRun {
        source,
        mode,
        options: RunOptions {
            silent: true,
            ..Default::default()
        },
        endpoints: Endpoints::new(emu.base_url(), emu.base_url()),
        yes: true,
        report: None,
        only: None,
    }
}

/// The tool's default pacing scaled with the buckets: `rate`, settling at `settle`, 32 at once.
fn paced_live_options(rate: f64, settle: f64) -> RunOptions {
    RunOptions {
        silent: true,
        rate,
        settle_rate: Some(settle),
        concurrency: 32,
        ..Default::default()
    }
}

/// Runs `run` to its end; its wall time in seconds.
async fn timed_run(db: &Path, run: NewRun, credentials: Credentials) -> anyhow::Result<f64> {
    let started = Instant::now();
    run::start(db, run, credentials).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// The emulator's request log (`/_emulator/requests`).
async fn request_log(base_url: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut log: serde_json::Value = reqwest::get(format!("{base_url}/_emulator/requests"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(match log["value"].take() {
        serde_json::Value::Array(v) => v,
        _ => Vec::new(),
    })
}

async fn convert_case(
    dir: &Path,
    users: usize,
    scale: f64,
    rate: f64,
    settle: f64,
    case: Case,
) -> anyhow::Result<CaseResult> {
    let csv = dir.join("bench-users.csv");
    let emu = scaled_emulator(users, &csv, scale).await?;
    let env = client_env(&emu);
    if case.drained {
        let writes = drain_write_bucket(&emu.base_url(), &env).await?;
        eprintln!(
            "bench: {}: drained the write bucket with {writes} writes",
            case.name()
        );
    }
    let logged_before = request_log(&emu.base_url()).await?.len();
    let (requests_before, throttled_before) = emulator_counts(&emu.stats());
    let db = fresh_db(dir, "bench-convert.db");
    let source = if case.filter {
        SourceSpec::Filter {
            filter: BENCH_FILTER.into(),
        }
    } else {
        csv_source(&csv)
    };
    let run = NewRun {
        options: paced_live_options(rate, settle),
        ..new_run(&emu, source, RunMode::Live)
    };
    let seconds = timed_run(&db, run, client_secret(&env)).await?;
    let queue = Queue::open(&db)?;
    let run = queue.latest_run()?.context("bench run missing")?;
    let counts = queue.counts(run.id)?;
    let converted = counts.state(ItemState::Converted);
    let (requests_after, throttled_after) = emulator_counts(&emu.stats());
    let log = request_log(&emu.base_url()).await?;
    let timing = invitation_timing(log.get(logged_before..).unwrap_or_default());
    emu.shutdown().await;
    anyhow::ensure!(converted > 0, "{}: nothing was converted", case.name());
    Ok(CaseResult {
        converted,
        seconds,
        sustained_rate: timing.sustained_rate,
        span_seconds: timing.span_seconds,
        throttled_at_s: timing.throttled_at_s,
        per_second: timing.per_second,
        throttled: throttled_after - throttled_before,
        emulator_requests: requests_after - requests_before,
        client_requests: counts.graph_requests,
        client_throttled: counts.throttled_requests,
    })
}

struct Timing {
    sustained_rate: f64,
    span_seconds: f64,
    throttled_at_s: Vec<f64>,
    per_second: Vec<f64>,
}

/// From the emulator's request log of the run (millisecond timestamps): invitations per second
/// over the middle 80% of the time between the first and the last successful
/// `POST /v1.0/invitations`, when the 429s fell, and the count in each second.
fn invitation_timing(entries: &[serde_json::Value]) -> Timing {
    let mut at: Vec<u64> = entries
        .iter()
        .filter(|e| e["method"] == "POST" && e["path"] == "/v1.0/invitations" && e["status"] == 201)
        .filter_map(|e| e["atMs"].as_u64())
        .collect();
    at.sort_unstable();
    let (Some(&first), Some(&last)) = (at.first(), at.last()) else {
        return Timing {
            sustained_rate: f64::NAN,
            span_seconds: f64::NAN,
            throttled_at_s: Vec::new(),
            per_second: Vec::new(),
        };
    };
    let span = (last - first) as f64;
    let from = first as f64 + 0.1 * span;
    let to = last as f64 - 0.1 * span;
    let inside = at
        .iter()
        .filter(|&&t| (t as f64) >= from && (t as f64) < to)
        .count();
    let throttled_at_s = entries
        .iter()
        .filter(|e| e["status"] == 429)
        .filter_map(|e| e["atMs"].as_u64())
        .map(|t| (t as f64 - first as f64) / 1000.0)
        .collect();
    let mut per_second = vec![0.0; ((last - first) / 1000) as usize + 1];
    for t in &at {
        per_second[((t - first) / 1000) as usize] += 1.0;
    }
    Timing {
        sustained_rate: inside as f64 / ((to - from) / 1000.0).max(1e-3),
        span_seconds: span / 1000.0,
        throttled_at_s,
        per_second,
    }
}

/// Spends the app's write bucket (and the tenant's, by as much) with `PATCH` requests on a user
/// that does not exist, 20 to a `$batch`, until the emulator answers 429: the bucket is empty and
/// refills at the sustained rate. A 404 still costs a write, because throttling is decided before
/// the request is carried out. No user in the tenant is touched.
async fn drain_write_bucket(base_url: &str, env: &HashMap<String, String>) -> anyhow::Result<u64> {
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!(
            "{base_url}/{}/oauth2/v2.0/token",
            env["AZURE_TENANT_ID"]
        ))
        .form(&[
            ("client_id", env["AZURE_CLIENT_ID"].as_str()),
            ("client_secret", env["AZURE_CLIENT_SECRET"].as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = token["access_token"]
        .as_str()
        .context("no access_token from the emulator")?
        .to_string();
    let batch = serde_json::json!({
        "requests": (0..20).map(|i| serde_json::json!({
            "id": i.to_string(),
            "method": "PATCH",
            "url": "/users/00000000-0000-0000-0000-0000000000d0",
            "headers": {"Content-Type": "application/json"},
            "body": {"department": "drain"},
        })).collect::<Vec<_>>()
    });
    let started = Instant::now();
    let mut accepted = 0u64;
    loop {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "the write bucket did not drain within 5 minutes"
        );
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let req = http
                .post(format!("{base_url}/v1.0/$batch"))
                .bearer_auth(&token)
                .json(&batch);
            set.spawn(async move {
                let answer: serde_json::Value =
                    req.send().await?.error_for_status()?.json().await?;
                let statuses: Vec<u64> = answer["responses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["status"].as_u64())
                    .collect();
                anyhow::Ok((
                    statuses.iter().filter(|&&s| s != 429).count() as u64,
                    statuses.contains(&429),
                ))
            });
        }
        let mut throttled = false;
        while let Some(joined) = set.join_next().await {
            let (taken, refused) = joined??;
            accepted += taken;
            throttled |= refused;
        }
        if throttled {
            return Ok(accepted);
        }
    }
}

/// One dry run of the `dry-run` bench.
struct DryCase {
    users: usize,
    latency_ms: u64,
    lifted: bool,
    by_key: bool,
}

struct DryResult {
    seconds: f64,
    requests: u64,
    throttled: u64,
    max_in_flight: u64,
    outcome: String,
}

async fn dry_runs(dir: &Path, users: usize) -> anyhow::Result<ExitStatus> {
    println!(
        "| CSV users | latency ms | reads | default limits s | limits lifted s | ratio | 429s \
         (default) | requests (default) | most in flight (default) | users/s (default) |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for n in [(users / 5).max(1), users] {
        let tenant = Tenant::generate(n, 42);
        let csv = dir.join(format!("dry-{n}.csv"));
        tenant.write_csv(&csv)?;
        for latency_ms in [0, 80] {
            for by_key in [true, false] {
                let mut got = Vec::new();
                for lifted in [true, false] {
                    let case = DryCase {
                        users: n,
                        latency_ms,
                        lifted,
                        by_key,
                    };
                    got.push(dry_case(dir, &tenant, &csv, &case).await?);
                }
                let (lifted, default) = (&got[0], &got[1]);
                println!(
                    "| {n} | {latency_ms} | {} | {:.1} | {:.1} | {:.2}× | {} ({:.2}%) | {} | {} | {:.0} |",
                    if by_key { "by key" } else { "tool's choice" },
                    default.seconds,
                    lifted.seconds,
                    default.seconds / lifted.seconds.max(1e-3),
                    default.throttled,
                    100.0 * default.throttled as f64 / default.requests.max(1) as f64,
                    default.requests,
                    default.max_in_flight,
                    n as f64 / default.seconds.max(1e-3),
                );
                eprintln!(
                    "bench: {n} users, {latency_ms} ms, {}: default {} / lifted {} \
                     ({} requests, {} 429s, {} at once)",
                    if by_key { "by key" } else { "choice" },
                    default.outcome,
                    lifted.outcome,
                    lifted.requests,
                    lifted.throttled,
                    lifted.max_in_flight
                );
            }
        }
    }
    Ok(ExitStatus::Success)
}

async fn dry_case(
    dir: &Path,
    tenant: &Tenant,
    csv: &Path,
    case: &DryCase,
) -> anyhow::Result<DryResult> {
    let mut config = EmulatorConfig::new(tenant.clone());
    config.latency = std::time::Duration::from_millis(case.latency_ms);
    let emu = emulator::start(config, "127.0.0.1:0".parse()?).await?;
    let db = fresh_db(dir, &format!("bench-dry-{}.db", case.users));
    let options = RunOptions {
        rate: if case.lifted {
            crate::config::MAX_RATE
        } else {
            crate::config::DEFAULT_RATE
        },
        read_budget: case.lifted.then_some(crate::config::MAX_READ_BUDGET),
        read_by_key: case.by_key,
        ..Default::default()
    };
    let run = NewRun {
        options,
        ..new_run(&emu, csv_source(csv), RunMode::DryRun)
    };
    let seconds = timed_run(&db, run, client_secret(&client_env(&emu))).await?;
    let queue = Queue::open(&db)?;
    let run = queue.latest_run()?.context("bench run missing")?;
    let counts = queue.counts(run.id)?;
    let settled =
        counts.total - counts.state(ItemState::Pending) - counts.state(ItemState::InFlight);
    anyhow::ensure!(
        settled == case.users as u64,
        "the dry run settled {settled} of {} users",
        case.users
    );
    let (requests, throttled) = emulator_counts(&emu.stats());
    let max_in_flight = emu.take_max_in_flight();
    emu.shutdown().await;
    Ok(DryResult {
        seconds,
        requests,
        throttled,
        max_in_flight,
        outcome: format!(
            "{} would convert, {} blocked",
            counts.state(ItemState::WouldConvert),
            counts.state(ItemState::Blocked)
        ),
    })
}

/// Runs this executable as a child (`track`, `resend`) against the emulator, as an operator
/// would; its wall time.
fn child(emu: &emulator::Emulator, db: &Path, args: &[&str]) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let started = Instant::now();
    let out = std::process::Command::new(&exe)
        .envs(emu.client_env())
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(seconds)
}

async fn resend(dir: &Path, users: usize, scale: f64) -> anyhow::Result<ExitStatus> {
    let rate = crate::config::DEFAULT_RATE * scale;
    let settle = crate::config::DEFAULT_SETTLE_RATE * scale;
    let csv = dir.join("bench-resend.csv");
    let emu = scaled_emulator(users, &csv, scale).await?;
    let db = fresh_db(dir, "bench-resend.db");
    let run = NewRun {
        options: paced_live_options(rate, settle),
        ..new_run(&emu, csv_source(&csv), RunMode::Live)
    };
    let converting = timed_run(&db, run, client_secret(&client_env(&emu))).await?;
    let run_id = Queue::open(&db)?
        .latest_run()?
        .context("bench run missing")?
        .id
        .to_string();
    let invited = emu.invitations().len();
    let tracking = child(&emu, &db, &["track", &run_id])?;
    let (_, throttled_before) = emulator_counts(&emu.stats());
    emu.take_max_in_flight();
    let resending = child(&emu, &db, &["resend", &run_id, "--yes"])?;
    let most = emu.take_max_in_flight();
    let (_, throttled_after) = emulator_counts(&emu.stats());
    let resent = emu
        .invitations()
        .iter()
        .filter(|i| i["resetRedemption"] == true)
        .count();
    emu.shutdown().await;
    let per_second = resent as f64 / resending.max(1e-3);
    println!(
        "users {users}, scale {scale}, latency {} ms, run options --rate {rate:.0}, settle \
         {settle:.0}/s, --concurrency 32",
        BENCH_LATENCY.as_millis()
    );
    println!();
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| live run: {invited} invitations | {converting:.1} s |");
    println!("| track | {tracking:.1} s |");
    println!("| resend: users re-invited | {resent} |");
    println!("| resend: seconds (process start to exit) | {resending:.1} |");
    println!("| resend: invitations/s | {per_second:.1} |");
    println!(
        "| reference: {resent} / settle rate {settle:.0}/s | {:.1} s |",
        resent as f64 / settle
    );
    println!(
        "| resend against the reference | {:.1}% |",
        100.0 * per_second / settle
    );
    println!("| resend: 429s | {} |", throttled_after - throttled_before);
    println!("| resend: most requests answered at once | {most} |");
    Ok(ExitStatus::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_bound_by_invitations_then_by_writes() {
        // docs/report-json.md: 100,000 users take at least 4,850 s.
        assert!((burst_aware_floor_seconds(100_000, 1.0) - 4_850.0).abs() < 1e-9);
        assert!((burst_aware_floor_seconds(5_000, 1.0) - 4_850.0 / 30.0).abs() < 1e-9);
        assert_eq!(burst_aware_floor_seconds(100, 1.0), 0.0);
        // Scaling every bucket and the user count by k keeps the time.
        assert!(
            (burst_aware_floor_seconds(50_000, 10.0) - burst_aware_floor_seconds(5_000, 1.0)).abs()
                < 1e-9
        );
    }
}
