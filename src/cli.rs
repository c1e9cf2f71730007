//! Command-line surface (SPEC.md, "Command line"). Parsing only: each command's behaviour lives in
//! `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "b2b-convert",
    version,
    about = "Convert a Microsoft Entra tenant's internal partner accounts to B2B collaboration",
    long_about = "Convert internal (member) accounts of a Microsoft Entra tenant to B2B collaboration \
through the Graph invitation API, keeping object id, UPN, groups and app assignments. Work is \
queued in a SQLite file, so a run can be stopped and resumed without losing or repeating anyone."
)]
pub struct Cli {
    /// The SQLite work queue.
    #[arg(long, global = true, default_value = "b2b-convert.db", env = "B2B_DB")]
    pub db: PathBuf,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less log output (repeat for less).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest a source into a new run, then validate and convert.
    Run(RunArgs),
    /// Continue a run that stopped (crash, Ctrl-C, network loss); default the latest run.
    Resume(ResumeArgs),
    /// Put a run's failed items back to pending, then continue it.
    Retry(RetryArgs),
    /// Counts by state and by reason.
    Status(StatusArgs),
    /// List runs.
    Runs,
    /// Write a report of a run.
    Report(ReportArgs),
    /// Re-read every converted user of a run: who redeemed, who has not, and any invitation
    /// Graph answered 201 for that never took effect.
    Track(TrackArgs),
    /// Re-invite converted users still PendingAcceptance (resetRedemption), once each per pass.
    Resend(ResendArgs),
    /// Write the redeem links of a run started with --keep-redeem-links (CSV, created 0600).
    ExportLinks(ExportLinksArgs),
    /// Serve the simulated tenant until stopped.
    Emulator(EmulatorArgs),
    /// Rehearse on the shipped sample tenant: dry run, then live run, against an in-process emulator.
    Demo(DemoArgs),
    /// Measure throughput against the emulator (see docs/performance.md).
    Bench(BenchArgs),
}

/// Exactly one source.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct SourceArgs {
    /// A CSV file naming users by `id` or `userPrincipalName`.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// Users matching a Graph `$filter`.
    #[arg(long, value_name = "ODATA_FILTER")]
    pub filter: Option<String>,
    /// Members of a group.
    #[arg(long, value_name = "GROUP_ID")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cloud {
    Global,
    Usgov,
    China,
}

impl Cloud {
    pub fn graph_url(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    pub fn login_url(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }
}

/// Where Graph and the token endpoint are.
#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    /// Graph base URL (default from --cloud).
    #[arg(long, env = "B2B_GRAPH_URL", value_name = "URL")]
    pub graph_url: Option<String>,
    /// Token endpoint base URL (default from --cloud).
    #[arg(long, env = "B2B_LOGIN_URL", value_name = "URL")]
    pub login_url: Option<String>,
    /// National cloud whose endpoints are the defaults.
    #[arg(long, value_enum, default_value_t = Cloud::Global)]
    pub cloud: Cloud,
}

impl EndpointArgs {
    pub fn graph_url(&self) -> String {
        self.graph_url
            .clone()
            .unwrap_or_else(|| self.cloud.graph_url().to_string())
    }

    pub fn login_url(&self) -> String {
        self.login_url
            .clone()
            .unwrap_or_else(|| self.cloud.login_url().to_string())
    }
}

/// Options of `run` and `resume` that tune how the work is done.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Requests per second ceiling (Graph's write bucket sustains about 20).
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Users worked on at once.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Attempts per user before it ends `failed`.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Convert at most N users of this run (a pilot batch); 0 lifts the limit on resume.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Write a report at the end (format from the extension).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Do not ask for confirmation before a live run.
    #[arg(long)]
    pub yes: bool,
    /// Store each invitation's redeem URL for `export-links` (off: no redeem URL is stored).
    /// Once on for a run, it stays on.
    #[arg(long)]
    pub keep_redeem_links: bool,
    #[command(flatten)]
    pub endpoints: EndpointArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// With --group: nested members too.
    #[arg(long)]
    pub transitive: bool,
    /// Validate only: send nothing; items end `would_convert`.
    #[arg(long)]
    pub dry_run: bool,
    /// sendInvitationMessage=false (a CSV column overrides it per row).
    #[arg(long)]
    pub silent: bool,
    /// Where the user lands after redeeming.
    #[arg(long, value_name = "URL", default_value = crate::item::DEFAULT_REDIRECT_URL)]
    pub redirect_url: String,
    /// Language of the invitation message, e.g. en-US.
    #[arg(long, value_name = "TAG")]
    pub message_language: Option<String>,
    /// File with the customized message body.
    #[arg(long, value_name = "PATH")]
    pub message_file: Option<PathBuf>,
    /// One cc recipient of the invitation message (the API accepts one).
    #[arg(long, value_name = "ADDRESS")]
    pub cc: Option<String>,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// The run to continue; default the latest.
    pub run_id: Option<i64>,
    /// How the work is done; the run keeps its stored mode, source and message options.
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    pub run_id: i64,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Default the latest run.
    pub run_id: Option<i64>,
    /// One JSON object for machines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TrackArgs {
    /// Default the latest run.
    pub run_id: Option<i64>,
    #[command(flatten)]
    pub endpoints: EndpointArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ResendArgs {
    pub run_id: i64,
    /// Only users whose last invitation is at least DAYS old (per the last `track`).
    #[arg(long, value_name = "DAYS", default_value_t = 0)]
    pub older_than: u32,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub endpoints: EndpointArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ExportLinksArgs {
    pub run_id: i64,
    /// The CSV file to create (never overwritten).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Md,
    Html,
    Csv,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    pub run_id: i64,
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Default from the extension of --out.
    #[arg(long, value_enum)]
    pub format: Option<ReportFormat>,
}

#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Tenant file (JSON); default the shipped sample tenant.
    #[arg(long, value_name = "FILE", conflicts_with = "generate")]
    pub tenant: Option<PathBuf>,
    /// A synthetic tenant of N users.
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    /// Seed of --generate.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// With --generate: also write an input CSV over the users.
    #[arg(long, value_name = "PATH", requires = "generate")]
    pub write_csv: Option<PathBuf>,
    /// Loopback address to listen on; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    #[command(flatten)]
    pub knobs: EmulatorKnobs,
}

/// Limits and faults of the emulator (shared by `emulator`, `demo` and `bench`).
#[derive(Debug, Clone, Args)]
pub struct EmulatorKnobs {
    /// Added latency per request.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Resource units per 10 s per app+tenant (0 = unlimited; default by tenant size).
    #[arg(long, value_name = "N")]
    pub ru_per_10s: Option<u64>,
    /// Writes per 150 s per app+tenant (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = 3000)]
    pub writes_per_150s: u64,
    /// Invitations per 5 s per tenant (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = 150)]
    pub invitations_per_5s: u64,
    /// Share of requests answered 500/503/504 without being carried out.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Share of writes carried out whose answer is then lost (connection dropped).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub lost_response_rate: f64,
    /// Share of invitations answered 201 whose change never reaches the user.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub not_applied_rate: f64,
    /// Answer every invitation with 403 "Invitations are blocked for this directory…".
    #[arg(long)]
    pub block_invitations: bool,
    /// Lifetime of issued access tokens.
    #[arg(long, value_name = "S", default_value_t = 3599)]
    pub token_lifetime_s: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its queue and report (default: a fresh folder under ./demo-output).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    pub kind: BenchKind,
    /// Users (or CSV rows) to use.
    #[arg(long, default_value_t = 20_000)]
    pub users: usize,
    /// Scale Graph's bucket sizes and refill rates by this factor so the run takes minutes.
    #[arg(long, default_value_t = 10.0)]
    pub scale: f64,
    /// Where to keep the database and inputs (default a temporary folder).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchKind {
    /// Ingest a generated CSV and report rows/s and peak RSS.
    Ingest,
    /// Live conversion against Graph-shaped buckets: invitations/s vs the ceiling, 429 share.
    Convert,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exactly_one_source_is_required() {
        assert!(Cli::try_parse_from(["b2b-convert", "run"]).is_err());
        assert!(
            Cli::try_parse_from(["b2b-convert", "run", "--csv", "a", "--filter", "x"]).is_err()
        );
        assert!(Cli::try_parse_from(["b2b-convert", "run", "--csv", "a"]).is_ok());
    }
}
